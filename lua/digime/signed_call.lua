--- Every signed API call goes out from here: the claim sets (doc/protocol.md "Request JWTs"),
-- the key of a contract, and the three ways a call is signed:
--   contract(sdk, contract, spec [, claims])        CONTRACT claims (or the caller's), no user
--   user(sdk, contract, token, spec, on_result [, claims_for])
--                                                   USER claims for the token in force (or the
--                                                   caller's claims_for(token)), inside the token
--                                                   refresh of tokens.with_token
--   cloud(sdk, contract, spec)                      the CLOUD JWT (its own header)
-- A fresh JWT is signed for every attempt (request.send calls spec.sign each time), so no
-- JWT, and no nonce, is ever presented twice. Verifying a token the server sends back is
-- jwt.verified_payload's. oauth/token itself (exchange, refresh) is tokens.token_call's: the
-- token layer sits below this module (user calls refresh through it).
local json = require "digime.json"
local jwt = require "digime.jwt"
local request = require "digime.request"
local tokens = require "digime.tokens"

local type, floor = type, math.floor

local _M = {}

--- CONTRACT claims: client_id, nonce, timestamp.
function _M.contract_claims(sdk, contract)
  return json.object_of(
    "client_id", jwt.client_id(sdk, contract),
    "nonce", jwt.nonce(),
    "timestamp", jwt.now_ms())
end

--- USER claims for a token: access_token, client_id, nonce, timestamp.
function _M.user_claims(sdk, contract, token)
  return json.object_of(
    "access_token", token.access_token.value,
    "client_id", jwt.client_id(sdk, contract),
    "nonce", jwt.nonce(),
    "timestamp", jwt.now_ms())
end

-- The CLOUD JWT: its own header (kid bound to the contract and application), sub, iss, aud,
-- and a life of one minute.
local function cloud_jwt(sdk, key, contract)
  local app = sdk.config.application_id
  local header = '{"alg":"PS512","typ":"at+jwt","kid":' ..
                 assert(json.encode(contract.id .. "_" .. app .. "_0")) .. "}"
  local now_s = floor(jwt.now_ms() / 1000)
  return jwt.sign(key, header, json.object_of(
    "sub", app, "iss", contract.id, "aud", "cloud", "iat", now_s, "exp", now_s + 60))
end

--- Sends spec (as request.send takes it, without `sign`) for the contract, signed with
-- claims() when given, else the CONTRACT claims. -> response | nil, err
function _M.contract(sdk, contract, spec, claims)
  local key, kerr = jwt.contract_key(contract)
  if not key then return nil, kerr end
  claims = claims or function() return _M.contract_claims(sdk, contract) end
  spec.sign = function() return jwt.sign(key, nil, claims()) end
  return request.send(sdk, spec)
end

--- Sends spec for the user of `token`, refreshing the token when needed; the JWT of each
-- attempt carries claims_for(current token) when given, else the USER claims. spec may be a
-- function that builds the request anew for every try (a push re-reads its data after a
-- refresh; it may return nil, err). on_result(res, token) turns a 2xx answer into the call's
-- result. -> result (with user_access_token) | nil, err
function _M.user(sdk, contract, token, spec, on_result, claims_for)
  local key, kerr = jwt.contract_key(contract)
  if not key then return nil, kerr end
  claims_for = claims_for or function(current) return _M.user_claims(sdk, contract, current) end
  return tokens.with_token(sdk, contract, token, function(current)
    local s = spec
    if type(spec) == "function" then
      local err
      s, err = spec()
      if not s then return nil, err end
    end
    s.sign = function() return jwt.sign(key, nil, claims_for(current)) end
    local res, rerr = request.send(sdk, s)
    if not res then return nil, rerr end
    return on_result(res, current)
  end)
end

--- Sends spec to the cloud storage API with the CLOUD JWT. -> response | nil, err
function _M.cloud(sdk, contract, spec)
  local key, kerr = jwt.contract_key(contract)
  if not key then return nil, kerr end
  spec.sign = function() return cloud_jwt(sdk, key, contract) end
  return request.send(sdk, spec)
end

return _M
