--- The keys that sign digi.me's tokens: JWKS documents fetched only from the allow-list
-- (`jwks.allowed`), cached per address for `jwks.ttl`, re-fetched on an unknown kid at most once
-- per `jwks.cooldown`, one fetch at a time per address for everyone sharing the SDK's store
-- (workers of an nginx, hosts sharing Redis: lua/digime/store.lua).
local core = require "digime.core"
local json = require "digime.json"
local errors = require "digime.errors"
local request = require "digime.request"
local scheduler = require "digime.scheduler"

local type, ipairs, tostring = type, ipairs, tostring
local format = string.format

local _M = {}

local shown = errors.shown

local function token_error(message)
  return errors.sdk("InvalidServerToken", message)
end

local function jwks_error(message, cause)
  return errors.sdk("JWKSError", message, { cause = cause })
end

--- Whether jku is on the allow-list (never fetch a URL on a token's own say).
function _M.is_allowed(sdk, jku)
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
    cache[jku] = { keys = keys, body = body, from_store = true,
                   fetched = core.monotonic() - (core.time() - fetched_at) }
  end
end

-- A store's fetch time is kept to the millisecond, and read back through the wall clock: a
-- copy another process stored that seems up to this much older than our look at the store
-- may be one made after it. (This process's own copies carry the exact time.)
local CLOCK_SLACK = 0.002

-- A fetch once for all sharing the store: the lock holder fetches and shares; the others read
-- its copy. When the store fails, this process fetches on its own (a JWKS is public).
local function fetch_shared(sdk, jku, looked)
  local cfg = sdk.config.jwks
  local lock = sdk.shared:lock("jwks:" .. jku)
  local ok, waited = lock:acquire()
  if not ok and waited.kind == "StoreError" and waited.code == "StoreError" then
    sdk:log("warn", "JWKS: the shared store failed; fetching without it", { error = tostring(waited) })
  end
  if ok then
    -- Another holder may have fetched between our look at the store and our taking the lock
    -- (we waited for it, or it had just finished): its copy, fetched after we looked, is what
    -- a fetch of ours would bring, however long it took.
    from_shared(sdk, jku)
    local entry = sdk.jwks_cache[jku]
    local slack = entry and entry.from_store and CLOCK_SLACK or 0
    if entry and (entry.fetched >= looked - slack
                  or (waited and core.monotonic() - entry.fetched < cfg.cooldown)) then
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
function _M.key(sdk, jku, kid)
  local cfg = sdk.config.jwks
  local cache = sdk.jwks_cache
  local entry = cache[jku]
  local looked = core.monotonic()   -- what the store holds from here on is new enough
  -- the store is asked only when this copy will not do (a round trip with Redis)
  if not (entry and looked - entry.fetched < cfg.ttl and entry.keys[kid]) then
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
    return fetch_shared(sdk, jku, looked)
  end)
  if not keys then return nil, body end
  cache[jku] = { keys = keys, body = body, fetched = core.monotonic() }
  local key = keys[kid]
  if not key then
    return nil, token_error(format("no key %s in the JWKS", shown(kid)))
  end
  return key
end

return _M
