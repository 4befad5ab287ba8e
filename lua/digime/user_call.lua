--- A user-scoped API call: signed with the USER claim set (doc/protocol.md), wrapped in the token
-- refresh of tokens.with_token, result carrying the token in force.
local json = require "digime.json"
local jwt = require "digime.jwt"
local request = require "digime.request"
local tokens = require "digime.tokens"

local _M = {}

--- USER claims for a token: access_token, client_id, nonce, timestamp.
function _M.claims(sdk, contract, token)
  return json.object_of(
    "access_token", token.access_token.value,
    "client_id", jwt.client_id(sdk, contract),
    "nonce", jwt.nonce(),
    "timestamp", jwt.now_ms())
end

--- Sends spec (as request.send takes it, without `sign`) for the user of `token`, refreshing
-- the token when needed. on_result(res, token) turns a 2xx answer into the call's result
-- table (or nil, err). Returns result (with user_access_token) or nil, err.
function _M.send(sdk, contract, token, spec, on_result)
  local key, kerr = jwt.contract_key(contract)
  if not key then return nil, kerr end
  return _M.send_signed(sdk, contract, token, spec, function(current)
    return jwt.sign(key, nil, _M.claims(sdk, contract, current))
  end, on_result)
end

--- As send, with the request built anew by make_spec() for every try (a push re-reads its
-- data after a token refresh); make_spec may return nil, err.
function _M.send_with(sdk, contract, token, make_spec, on_result)
  local key, kerr = jwt.contract_key(contract)
  if not key then return nil, kerr end
  return tokens.with_token(sdk, contract, token, function(current)
    local spec, err = make_spec()
    if not spec then return nil, err end
    spec.sign = function() return jwt.sign(key, nil, _M.claims(sdk, contract, current)) end
    local res, rerr = request.send(sdk, spec)
    if not res then return nil, rerr end
    return on_result(res, current)
  end)
end

--- As send, with the JWT made by sign_for(token) on every attempt (for claim sets that add
-- to USER's, such as the onboarding references).
function _M.send_signed(sdk, contract, token, spec, sign_for, on_result)
  return tokens.with_token(sdk, contract, token, function(current)
    spec.sign = function() return sign_for(current) end
    local res, err = request.send(sdk, spec)
    if not res then return nil, err end
    return on_result(res, current)
  end)
end

return _M
