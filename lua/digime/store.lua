--- Where the SDK keeps the state several tasks, workers or hosts must share: the JWKS cache,
-- the lock taken around a token refresh, and the hand-off of a finished refresh's new token
-- (refresh tokens rotate: two refreshes of one token end a session). doc/store.md has more.
--
-- A store is any object with four methods; values are strings, ttl is in seconds (> 0):
--   store:get(key)                -> value | nil (absent)                 | nil, message
--   store:set(key, value, ttl)    -> true                                 | nil, message
--   store:add(key, value, ttl)    -> true (set) | false (key exists)      | nil, message
--   store:delete_if(key, value)   -> true (deleted) | false (other value) | nil, message
-- `add` is atomic (set if absent, with expiry) and `delete_if` is an atomic
-- compare-and-delete: the lock of a single Redis instance as Redis documents it
-- (https://redis.io/docs/latest/develop/use/patterns/distributed-locks/). The SDK builds the
-- rest on them (digime.store.shared).
--
-- `digime.init{ store = ... }` picks one:
--   nil or { type = "memory" }                    in-process (default): one SDK object
--   { type = "ngx_shared", dict = "digime" }      the workers of one nginx
--   { type = "redis", host, port, socket, user, password, database, prefix,
--     connect_timeout, timeout, tls, pool_size }  every host using that Redis
--   an object with the four methods               anything else (digime.store.resty_redis)
-- `prefix` (every type; default "digime:") starts every key the SDK writes.
local errors = require "digime.errors"
local validate = require "digime.validate"
local shared = require "digime.store.shared"

local type, rawget, ipairs, pairs, require = type, rawget, ipairs, pairs, require

local _M = {}

local invalid = errors.validation

local KNOWN = {
  memory = { "type", "prefix" },
  ngx_shared = { "type", "dict", "prefix" },
  redis = { "type", "host", "port", "socket", "user", "password", "database", "prefix",
            "connect_timeout", "timeout", "tls", "pool_size" },
}

--- Whether v is a store object (the four methods).
function _M.is_store(v)
  if type(v) ~= "table" then return false end
  for _, m in ipairs{ "get", "set", "add", "delete_if" } do
    if type(v[m]) ~= "function" then return false end
  end
  return true
end

local function check_tls(tls)
  if tls == nil or tls == true or tls == false then return true end
  local ok, err = validate.options(tls, validate.set{ "verify", "ca_file", "server_name" },
                                   "store.tls")
  if not ok then return nil, err end
  ok, err = validate.boolean(tls.verify, "store.tls.verify", true)
  if not ok then return nil, err end
  ok, err = validate.string(tls.ca_file, "store.tls.ca_file", true)
  if not ok then return nil, err end
  return validate.string(tls.server_name, "store.tls.server_name", true)
end

local function check_redis(s)
  local ok, err
  for _, k in ipairs{ "host", "socket", "user", "password" } do
    ok, err = validate.string(s[k], "store." .. k, true)
    if not ok then return nil, err end
  end
  if s.host and s.socket then return nil, invalid("store.socket", "give host/port or socket, not both") end
  if s.user and not s.password then return nil, invalid("store.user", "needs store.password") end
  local ranges = { port = { 1, 65535 }, database = { 0, 1000 }, connect_timeout = { 0.001, 3600 },
                   timeout = { 0.001, 3600 }, pool_size = { 1, 10000 } }
  for k, r in pairs(ranges) do
    ok, err = validate.number(s[k], "store." .. k, true, r[1], r[2])
    if not ok then return nil, err end
  end
  for _, k in ipairs{ "port", "database", "pool_size" } do
    if s[k] ~= nil and not validate.is_integer(s[k]) then
      return nil, invalid("store." .. k, "must be an integer")
    end
  end
  return check_tls(s.tls)
end

--- Checks the `store` option (and its clash with the older `jwks.shared_dict`).
-- -> true | nil, TypeValidationError
function _M.check(s, jwks)
  if s == nil then return true end
  if type(jwks) == "table" and jwks.shared_dict ~= nil then
    return nil, invalid("jwks.shared_dict", "cannot be given with store (write store = "
      .. '{ type = "ngx_shared", dict = "..." } alone)')
  end
  if _M.is_store(s) then return true end
  if type(s) ~= "table" or not KNOWN[s.type] then
    return nil, invalid("store", 'must be { type = "memory" | "ngx_shared" | "redis", ... } or '
      .. "an object with get, set, add and delete_if methods")
  end
  local ok, err = validate.options(s, validate.set(KNOWN[s.type]), "store")
  if not ok then return nil, err end
  ok, err = validate.string(s.prefix, "store.prefix", true)
  if not ok then return nil, err end
  if s.type == "ngx_shared" then return validate.string(s.dict, "store.dict") end
  if s.type == "redis" then return check_redis(s) end
  return true
end

local function in_nginx()
  local ngx = rawget(_G, "ngx")
  return type(ngx) == "table" and ngx.get_phase ~= nil
end

--- The SDK's shared state for a checked config (cfg.store, cfg.jwks.shared_dict), or nil
-- and a TypeValidationError. hold: seconds a lock is held at most and waited for.
function _M.new(cfg, hold)
  local s = cfg.store
  -- the older option: a shared dict inside nginx, ignored elsewhere as it always was
  if s == nil and cfg.jwks.shared_dict and in_nginx() then
    s = { type = "ngx_shared", dict = cfg.jwks.shared_dict }
  end
  local prim, err
  if _M.is_store(s) then
    prim = s
  elseif s == nil or s.type == "memory" then
    prim = require("digime.store.memory").new()
  elseif s.type == "ngx_shared" then
    prim, err = require("digime.store.ngx_shared").new(s.dict)
    if not prim then
      return nil, invalid(cfg.store and "store.dict" or "jwks.shared_dict", err)
    end
  else
    prim = require("digime.store.redis").new(s)
  end
  local prefix = type(s) == "table" and not _M.is_store(s) and s.prefix or "digime:"
  return shared.new(prim, prefix, hold)
end

return _M
