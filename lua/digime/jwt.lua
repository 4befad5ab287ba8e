--- JWTs: the client's request JWTs (PS512, claims in the Node SDK's order) and verification of
-- the tokens digi.me signs (PS512 only, jku pinned to an allow-list; the keys: digime.jwks).
local core = require "digime.core"
local json = require "digime.json"
local errors = require "digime.errors"
local jwks = require "digime.jwks"

local type, pairs = type, pairs
local match, format = string.match, string.format
local concat = table.concat

local _M = {}

_M.MAX_TOKEN = 64 * 1024

local API_HEADER = core.b64url_encode('{"alg":"PS512","typ":"JWT"}')

-- Parsed contract keys, by PEM text. Held strongly: parsing a PEM and setting up a fresh key
-- (its Montgomery contexts and RSA blinding) costs twice a signature, and a weak cache loses
-- its keys at every garbage collection, which a sync triggers many times a second. Bounded:
-- past KEY_CACHE_SIZE contracts, the one parsed longest ago goes first.
local KEY_CACHE_SIZE = 32
local key_cache, key_order = {}, {}

local function remember_key(pem, key)
  if #key_order >= KEY_CACHE_SIZE then
    key_cache[table.remove(key_order, 1)] = nil
  end
  key_order[#key_order + 1] = pem
  key_cache[pem] = key
end

--- The contract's private key object, or nil, TypeValidationError.
function _M.contract_key(contract)
  local pem = contract.private_key
  local key = key_cache[pem]
  if key then return key end
  local k, err = core.private_key(pem)
  if not k then
    return nil, errors.validation("contract.private_key", "is not a usable RSA private key: " .. err)
  end
  if k:bits() < 2048 then
    return nil, errors.validation("contract.private_key", "must be an RSA key of at least 2048 bits")
  end
  remember_key(pem, k)
  return k
end

--- Signs a compact JWS with the given header text (already JSON) and an ordered claims object.
function _M.sign(key, header_json, claims)
  local payload, err = json.encode(claims)
  if not payload then
    return nil, errors.sdk("JWTError", "cannot encode the JWT claims: " .. err)
  end
  local h64 = header_json and core.b64url_encode(header_json) or API_HEADER
  local input = h64 .. "." .. core.b64url_encode(payload)
  local sig, serr = key:sign_ps512(input)
  if not sig then
    return nil, errors.sdk("JWTError", "signing failed: " .. serr)
  end
  return input .. "." .. core.b64url_encode(sig)
end

--- A fresh nonce and millisecond timestamp, for every attempt.
function _M.nonce()
  return core.random_alnum(32)
end

function _M.now_ms()
  local t = core.time()
  return t * 1000 - (t * 1000) % 1
end

local shown = errors.shown

local function token_error(message)
  return errors.sdk("InvalidServerToken", message)
end

local function decode_segment(seg, what)
  local raw, err = core.b64url_decode(seg)
  if not raw then return nil, token_error(what .. " is not base64url: " .. err) end
  local v, jerr = json.decode(raw)
  if type(v) ~= "table" or v[1] ~= nil then    -- an object, not an array
    return nil, token_error(what .. " is not a JSON object" .. (jerr and (": " .. jerr) or ""))
  end
  return v
end

local function check_times(sdk, payload)
  local now = core.time()
  local leeway = sdk.config.clock_leeway
  local exp, nbf, iat = payload.exp, payload.nbf, payload.iat
  for name, v in pairs{ exp = exp, nbf = nbf, iat = iat } do
    if v ~= nil and type(v) ~= "number" then
      return nil, token_error("claim " .. name .. " is not a number")
    end
  end
  if exp and now >= exp + leeway then
    return nil, token_error("the token has expired")
  end
  if nbf and nbf > now + leeway then
    return nil, token_error("the token is not valid yet")
  end
  if iat and iat > now + leeway then
    return nil, token_error("the token was issued in the future")
  end
  return true
end

--- The `token` of a JSON answer `{ "token": "..." }`, or nil and an InvalidResponse error.
function _M.token_of(body, what)
  if type(body) ~= "table" or body[1] ~= nil then
    return nil, errors.sdk("InvalidResponse", what .. ": the answer is not a JSON object")
  end
  if type(body.token) ~= "string" or body.token == "" then
    return nil, errors.sdk("InvalidResponse", what .. ": the answer carries no token")
  end
  return body.token
end

--- Verifies a token digi.me signed; returns its payload table, or nil, err.
function _M.verify_server_token(sdk, token)
  if type(token) ~= "string" or token == "" then
    return nil, token_error("the answer carries no token")
  end
  if #token > _M.MAX_TOKEN then
    return nil, token_error("the token is larger than 64 KiB")
  end
  local h64, p64, s64 = match(token, "^([%w_%-]+)%.([%w_%-]+)%.([%w_%-]+)$")
  if not h64 then
    return nil, token_error("the token is not a three-part compact JWS")
  end
  local header, err = decode_segment(h64, "the token header")
  if not header then return nil, err end
  if header.alg ~= "PS512" then
    return nil, token_error(format("algorithm %s is not accepted (PS512 only)", shown(header.alg)))
  end
  if type(header.kid) ~= "string" or type(header.jku) ~= "string" then
    return nil, token_error("the token header has no kid or jku")
  end
  -- Never fetch a URL on the token's own say: the jku must be one we trust already.
  if not jwks.is_allowed(sdk, header.jku) then
    -- both named, each cut short: an error line stays one readable line
    local list, allowed = sdk.config.jwks.allowed, {}
    for i = 1, math.min(#list, 2) do allowed[i] = shown(list[i], 56) end
    if #list > 2 then allowed[3] = format("and %d more", #list - 2) end
    return nil, token_error(format("the token's jku %s is not on the allow-list (jwks.allowed: %s)",
                                   shown(header.jku, 64), concat(allowed, ", ")))
  end
  local key, kerr = jwks.key(sdk, header.jku, header.kid)
  if not key then return nil, kerr end
  local sig = core.b64url_decode(s64)
  if not sig or not key:verify_ps512(h64 .. "." .. p64, sig) then
    return nil, token_error("the token's signature does not verify")
  end
  local payload, perr = decode_segment(p64, "the token payload")
  if not payload then return nil, perr end
  local ok, terr = check_times(sdk, payload)
  if not ok then return nil, terr end
  return payload
end

--- The payload of the token an answer carries (`{ "token": "..." }`), verified: the one way
-- every call that gets a token from digi.me reads it. -> payload | nil, err
function _M.verified_payload(sdk, body, what)
  local token, terr = _M.token_of(body, what)
  if not token then return nil, terr end
  return _M.verify_server_token(sdk, token)
end

--- The client_id of a contract's JWTs: "<application id>_<contract id>".
function _M.client_id(sdk, contract)
  return sdk.config.application_id .. "_" .. contract.id
end

return _M
