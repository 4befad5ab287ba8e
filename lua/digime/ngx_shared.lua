--- What the workers of one nginx share through a `lua_shared_dict` (init option
-- `jwks.shared_dict`): the JWKS the server tokens are checked with, and the refreshes of user
-- tokens, made once for all workers. lua-resty-lock is not a Debian package, so the lock is
-- built here on the dict's atomic `add`.
--
-- Keys: "digime:jwks:<jku>" = the JWKS body (flags: when it was fetched, epoch seconds);
-- "digime:lock:<name>" = the holder's id while held; "digime:done:<name>" = a finished
-- refresh's new token (JSON), kept as long as tokens.lua remembers finished refreshes.
local json = require "digime.json"

local ngx = ngx
local type, tostring, setmetatable = type, tostring, setmetatable
local floor, min = math.floor, math.min

local _M = {}
local mt = { __index = _M }

local holder_seq = 0

--- The shared store for a dict name, or nil and a message (the dict is not declared).
-- hold: seconds a lock is held at most (a holder that died frees it then) and waited for.
function _M.new(name, hold)
  local dict = ngx.shared[name]
  if not dict then
    return nil, "no lua_shared_dict named " .. tostring(name) .. " is declared in nginx.conf"
  end
  return setmetatable({ dict = dict, name = name, hold = hold }, mt)
end

--- The cached JWKS body for jku and when it was fetched (epoch seconds), or nil.
function _M:jwks_get(jku)
  local body, fetched = self.dict:get("digime:jwks:" .. jku)
  if type(body) ~= "string" then return nil end
  return body, fetched or 0
end

function _M:jwks_put(jku, body, ttl)
  -- flags are a 32-bit integer: whole seconds are enough for a ttl and a cooldown
  local ok, err = self.dict:set("digime:jwks:" .. jku, body, ttl, floor(ngx.now()))
  if not ok then return nil, "cannot cache the JWKS in lua_shared_dict " .. self.name .. ": " .. tostring(err) end
  return true
end

local lock_mt = {}
lock_mt.__index = lock_mt

--- A lock shared by the workers, held for at most the store's `hold` seconds.
function _M:lock(name)
  holder_seq = holder_seq + 1
  return setmetatable({ dict = self.dict, key = "digime:lock:" .. name, ttl = self.hold,
    id = ngx.worker.pid() .. ":" .. holder_seq }, lock_mt)
end

--- Waits up to `hold` seconds for the lock. true when held, or nil and a message;
-- `waited` (second value) is true when another holder had it first.
function lock_mt:acquire()
  local timeout = self.ttl
  local dict, key = self.dict, self.key
  local ok, err = dict:add(key, self.id, self.ttl)
  if ok then return true, false end
  if err ~= "exists" then return nil, "cannot take the lock: " .. tostring(err) end
  ngx.update_time()
  local deadline = ngx.now() + timeout
  local step = 0.005
  while true do
    ngx.sleep(step)
    ok, err = dict:add(key, self.id, self.ttl)
    if ok then return true, true end
    if err ~= "exists" then return nil, "cannot take the lock: " .. tostring(err) end
    ngx.update_time()
    if ngx.now() >= deadline then return nil, "timed out waiting for another worker" end
    step = min(step * 2, 0.1)
  end
end

--- Releases the lock if this holder still has it (after its ttl another may hold it).
function lock_mt:release()
  if self.dict:get(self.key) == self.id then self.dict:delete(self.key) end
end

--- A finished refresh's token, if another worker finished it lately.
function _M:done_get(name)
  local text = self.dict:get("digime:done:" .. name)
  if type(text) ~= "string" then return nil end
  return json.decode(text)
end

function _M:done_put(name, token, ttl)
  local text = json.encode(token)
  if text then self.dict:set("digime:done:" .. name, text, ttl) end
end

return _M
