--- The SDK's shared state on top of a store's four primitives (digime.store): the JWKS cache,
-- locks that expire and are released only by their holder, and the outcome of a refresh
-- (the new token, or that it failed) handed to whoever waited for it. Errors of the store
-- become StoreError; nothing here raises.
--
-- Keys (after the prefix): "jwks:<jku>" = "<fetched at, epoch s>\n<JWKS body>";
-- "lock:<name>" = the holder's random id; "done:<name>" = JSON { token } or { failed }.
local core = require "digime.core"
local json = require "digime.json"
local errors = require "digime.errors"
local scheduler = require "digime.scheduler"

local type, tostring, tonumber, setmetatable = type, tostring, tonumber, setmetatable
local min, format, match = math.min, string.format, string.match

local _M = {}
local mt = { __index = _M }

--- prim: the store; prefix: of every key; hold: seconds a lock is held at most (a holder
-- that died frees it then) and waited for.
function _M.new(prim, prefix, hold)
  return setmetatable({ prim = prim, prefix = prefix, hold = hold }, mt)
end

local function failed(what, err)
  return errors.store("StoreError", "the shared store could not " .. what .. ": " .. tostring(err))
end

--- The cached JWKS body for jku and when it was fetched (epoch seconds); nil when there is
-- none; or nil, StoreError.
function _M:jwks_get(jku)
  local v, err = self.prim:get(self.prefix .. "jwks:" .. jku)
  if v == nil then
    if err then return nil, failed("read the JWKS", err) end
    return nil
  end
  local at, body = match(v, "^([%d%.]+)\n(.*)$")
  if not at then return nil end
  return body, tonumber(at)
end

--- Caches a JWKS body for ttl seconds: true | nil, StoreError
function _M:jwks_put(jku, body, ttl)
  local ok, err = self.prim:set(self.prefix .. "jwks:" .. jku,
                                format("%.3f\n", core.time()) .. body, ttl)
  if not ok then return nil, failed("cache the JWKS", err) end
  return true
end

local lock_mt = {}
lock_mt.__index = lock_mt

--- A lock shared by every user of the store, held for at most `hold` seconds.
function _M:lock(name)
  return setmetatable({ prim = self.prim, key = self.prefix .. "lock:" .. name, ttl = self.hold,
                        id = core.random_alnum(24) }, lock_mt)
end

--- Waits up to `hold` seconds for the lock (polling, from 5 ms to 100 ms apart). A store
-- failure is tried again for up to `grace` seconds (default 0: none), so that a restart of
-- the store does not fail the caller; a lock once seen held still counts as waited for.
-- -> true, waited (true when another holder had it first) | nil, StoreError
-- (code StoreError: the store failed; LockTimeout: still held by another at the end).
function lock_mt:acquire(grace)
  local start = core.monotonic()
  local deadline, grace_end = start + self.ttl, start + (grace or 0)
  local step, waited = 0.005, false
  while true do
    local ok, err = self.prim:add(self.key, self.id, self.ttl)
    if ok then return true, waited end
    local now = core.monotonic()
    if ok == nil then
      if now >= grace_end then return nil, failed("take a lock", err) end
    else
      waited = true
    end
    if now >= deadline then
      return nil, errors.store("LockTimeout", "another holder kept the lock longer than "
        .. self.ttl .. " s")
    end
    scheduler.sleep(step)
    step = min(step * 2, 0.1)
  end
end

--- Releases the lock if this holder still has it (after its ttl another may hold it).
-- -> true | nil, StoreError (the lock then expires by itself)
function lock_mt:release()
  local ok, err = self.prim:delete_if(self.key, self.id)
  if ok == nil then return nil, failed("release a lock", err) end
  return true
end

--- How a refresh (or other one-for-all action) `name` ended lately: { token = ... } or
-- { failed = message }; nil when nothing is known; or nil, StoreError.
function _M:done_get(name)
  local text, err = self.prim:get(self.prefix .. "done:" .. name)
  if text == nil then
    if err then return nil, failed("read a refresh's outcome", err) end
    return nil
  end
  local v = json.decode(text)
  if type(v) ~= "table" then return nil end
  return v
end

local function put_done(self, name, record, ttl)
  local text = json.encode(record)
  if not text then return nil, failed("record a refresh's outcome", "not JSON") end
  local ok, err = self.prim:set(self.prefix .. "done:" .. name, text, ttl)
  if not ok then return nil, failed("record a refresh's outcome", err) end
  return true
end

--- Records the new token of a finished refresh for ttl seconds: true | nil, StoreError
function _M:done_put(name, token, ttl)
  -- `at`: when it was made (epoch s), so that a refresh that began before it takes it
  return put_done(self, name, { token = token, at = core.time() }, ttl)
end

--- Records that a refresh failed (so that who waited does not present the token again
-- without knowing): true | nil, StoreError
function _M:done_fail(name, message, ttl)
  return put_done(self, name, { failed = tostring(message) }, ttl)
end

return _M
