--- JWTs: the client's request JWTs (PS512, claims in the Node SDK's order) and verification of
-- the tokens digi.me signs (PS512 only, jku pinned to an allow-list, JWKS cached).
local core = require "digime.core"
local json = require "digime.json"
local errors = require "digime.errors"
local request = require "digime.request"
local scheduler = require "digime.scheduler"

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
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

-- An attacker-chosen header value as error text: short, printable, one line (a kid may be
-- 40 KiB of anything, newlines included).
local function shown(v, max)
  max = max or 40
  if type(v) ~= "string" then return "<" .. type(v) .. ">" end
  local s = v:sub(1, max):gsub("[^\32-\126]", "?")
  return '"' .. s .. '"' .. (#v > max and format("... (%d bytes)", #v) or "")
end

local function token_error(message)
  return errors.sdk("InvalidServerToken", message)
end

local function jwks_error(message, cause)
  return errors.sdk("JWKSError", message, { cause = cause })
end

local function is_allowed(sdk, jku)
  for _, u in ipairs(sdk.config.jwks.allowed) do
    if u == jku then return true end
  end
  return false
end

local function key_from_jwk(jwk)
  if type(jwk.pem) == "string" then
    return core.public_key(jwk.pem)
  end
  if jwk.kty == "RSA" and type(jwk.n) == "string" and type(jwk.e) == "string" then
    return core.public_key_jwk(jwk.n, jwk.e)
  end
  return nil, "no usable key material"
end

-- The usable keys of a JWKS document: { kid -> key object }, or nil if it is not a JWKS.
local function keys_of(doc)
  if type(doc) ~= "table" or type(doc.keys) ~= "table" then return nil end
  local keys = {}
  for _, jwk in ipairs(doc.keys) do
    if type(jwk) == "table" and type(jwk.kid) == "string" and keys[jwk.kid] == nil
       and (jwk.alg == nil or jwk.alg == "PS512") and (jwk.use == nil or jwk.use == "sig") then
      local key = key_from_jwk(jwk)
      if key then keys[jwk.kid] = key end
    end
  end
  return keys
end

-- Fetches and parses a JWKS: { kid -> key object }, and its body as served.
local function fetch_jwks(sdk, jku)
  local res, err = request.send(sdk, {
    method = "GET", url = jku, headers = { accept = "application/json" },
    -- The cap bounds the download itself, not only the parse.
    json = true, max_json = sdk.config.jwks.max_size, max_body = sdk.config.jwks.max_size,
    what = "JWKS",
  })
  if not res then
    return nil, jwks_error("could not fetch the JWKS: " .. err.message, err)
  end
  local keys = keys_of(res.json)
  if not keys then
    return nil, jwks_error("the server returned a non-JWKS answer")
  end
  sdk.stats.jwks_fetches = sdk.stats.jwks_fetches + 1
  return keys, res.body
end

-- The store's copy (digime.store: other workers or hosts may have fetched it) replaces this
-- SDK's when it is another one (parsed once per process and body). A store that fails
-- leaves this SDK's copy as it is.
local function from_shared(sdk, jku)
  local body, fetched_at = sdk.shared:jwks_get(jku)
  local cache = sdk.jwks_cache
  if not body then
    if fetched_at then
      sdk:log("warn", "JWKS: the shared store failed; using this process's cache", { error = tostring(fetched_at) })
      return
    end
    cache[jku] = nil
    return
  end
  local entry = cache[jku]
  if entry and entry.body == body then return end
  local keys = keys_of(json.decode(body, sdk.config.jwks.max_size))
  if keys then
    cache[jku] = { keys = keys, body = body,
                   fetched = core.monotonic() - (core.time() - fetched_at) }
  end
end

-- A fetch once for all sharing the store: the lock holder fetches and shares; the others read
-- its copy. When the store fails, this process fetches on its own (a JWKS is public).
local function fetch_shared(sdk, jku)
  local cfg = sdk.config.jwks
  local lock = sdk.shared:lock("jwks:" .. jku)
  local asked = core.monotonic()
  local ok, waited = lock:acquire()
  if not ok and waited.kind == "StoreError" and waited.code == "StoreError" then
    sdk:log("warn", "JWKS: the shared store failed; fetching without it", { error = tostring(waited) })
  end
  if ok and waited then
    from_shared(sdk, jku)
    local entry = sdk.jwks_cache[jku]
    -- fetched by the holder we waited for (after we asked), or recently enough: however long
    -- that holder took, its copy is what a fetch of ours would bring
    if entry and (entry.fetched >= asked or core.monotonic() - entry.fetched < cfg.cooldown) then
      lock:release()
      return entry.keys, entry.body
    end
  end
  local keys, body = fetch_jwks(sdk, jku)
  if keys then
    local put, perr = sdk.shared:jwks_put(jku, body, cfg.ttl)
    if not put then sdk:log("warn", "JWKS: not shared", { error = tostring(perr) }) end
  end
  if ok then lock:release() end
  return keys, body
end

-- The key for (jku, kid): from the cache while fresh; re-fetched when stale, or on an unknown
-- kid at most once per cooldown. One fetch at a time per address for all sharing the store.
local function jwks_key(sdk, jku, kid)
  local cfg = sdk.config.jwks
  local cache = sdk.jwks_cache
  local entry = cache[jku]
  -- the store is asked only when this copy will not do (a round trip with Redis)
  if not (entry and core.monotonic() - entry.fetched < cfg.ttl and entry.keys[kid]) then
    from_shared(sdk, jku)
    entry = cache[jku]
  end
  local now = core.monotonic()
  if entry and now - entry.fetched < cfg.ttl then
    local key = entry.keys[kid]
    if key then return key end
    if now - entry.fetched < cfg.cooldown then
      return nil, token_error(format("no key %s in the JWKS (re-fetch on cooldown)", shown(kid)))
    end
  end
  local keys, body = scheduler.single_flight("jwks:" .. jku, function()
    return fetch_shared(sdk, jku)
  end)
  if not keys then return nil, body end
  cache[jku] = { keys = keys, body = body, fetched = core.monotonic() }
  local key = keys[kid]
  if not key then
    return nil, token_error(format("no key %s in the JWKS", shown(kid)))
  end
  return key
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
  if not is_allowed(sdk, header.jku) then
    -- both named, each cut short: an error line stays one readable line
    local list, allowed = sdk.config.jwks.allowed, {}
    for i = 1, math.min(#list, 2) do allowed[i] = shown(list[i], 56) end
    if #list > 2 then allowed[3] = format("and %d more", #list - 2) end
    return nil, token_error(format("the token's jku %s is not on the allow-list (jwks.allowed: %s)",
                                   shown(header.jku, 64), concat(allowed, ", ")))
  end
  local key, kerr = jwks_key(sdk, header.jku, header.kid)
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

return _M
