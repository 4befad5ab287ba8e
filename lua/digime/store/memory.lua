--- The in-process store (the default): the four primitives of digime.store on a Lua table,
-- shared by the tasks of one process (or one nginx worker) using the same SDK object.
-- Expired entries are dropped when read, and swept now and then.
local core = require "digime.core"

local setmetatable, pairs = setmetatable, pairs

local _M = {}
local mt = { __index = _M }

function _M.new()
  return setmetatable({ data = {}, writes = 0 }, mt)
end

local function live(self, key)
  local e = self.data[key]
  if e and e.expires <= core.monotonic() then
    self.data[key] = nil
    return nil
  end
  return e
end

local function put(self, key, value, ttl)
  self.writes = self.writes + 1
  if self.writes % 256 == 0 then
    local now = core.monotonic()
    for k, e in pairs(self.data) do
      if e.expires <= now then self.data[k] = nil end
    end
  end
  self.data[key] = { value = value, expires = core.monotonic() + ttl }
end

function _M:get(key)
  local e = live(self, key)
  return e and e.value
end

function _M:set(key, value, ttl)
  put(self, key, value, ttl)
  return true
end

function _M:add(key, value, ttl)
  if live(self, key) then return false end
  put(self, key, value, ttl)
  return true
end

function _M:delete_if(key, value)
  local e = live(self, key)
  if not e or e.value ~= value then return false end
  self.data[key] = nil
  return true
end

return _M
