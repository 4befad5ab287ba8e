--- A contract-scoped API call: signed with the CONTRACT claim set (client_id, nonce,
-- timestamp; doc/protocol.md "Request JWTs"), no user token involved.
local json = require "digime.json"
local jwt = require "digime.jwt"
local request = require "digime.request"

local _M = {}

function _M.claims(sdk, contract)
  return json.object_of(
    "client_id", jwt.client_id(sdk, contract),
    "nonce", jwt.nonce(),
    "timestamp", jwt.now_ms())
end

--- Sends spec (as request.send takes it, without `sign`) for the contract. Returns the
-- response or nil, err.
function _M.send(sdk, contract, spec)
  local key, kerr = jwt.contract_key(contract)
  if not key then return nil, kerr end
  spec.sign = function() return jwt.sign(key, nil, _M.claims(sdk, contract)) end
  return request.send(sdk, spec)
end

return _M
