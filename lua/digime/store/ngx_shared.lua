--- The nginx store: the four primitives of digime.store on a `lua_shared_dict`, shared by the
-- workers of one nginx (lua-resty-lock is not a Debian package; the dict's atomic `add` is
-- the lock). Every operation is a shared-memory access: nothing here yields.
local type, tostring, setmetatable, rawget = type, tostring, setmetatable, rawget

local _M = {}
local mt = { __index = _M }

--- The store for a dict name, or nil and a message (not in nginx, or no such dict).
function _M.new(name)
  local ngx = rawget(_G, "ngx")
  local dict = type(ngx) == "table" and ngx.shared and ngx.shared[name]
  if not dict then
    return nil, "no lua_shared_dict named " .. tostring(name) .. " is declared in nginx.conf"
  end
  return setmetatable({ dict = dict, name = name }, mt)
end

function _M:get(key)
  local v = self.dict:get(key)
  if type(v) ~= "string" then return nil end
  return v
end

function _M:set(key, value, ttl)
  local ok, err = self.dict:set(key, value, ttl)
  if not ok then return nil, "lua_shared_dict " .. self.name .. ": " .. tostring(err) end
  return true
end

function _M:add(key, value, ttl)
  local ok, err = self.dict:add(key, value, ttl)
  if ok then return true end
  if err == "exists" then return false end
  return nil, "lua_shared_dict " .. self.name .. ": " .. tostring(err)
end

-- A get and a delete, not one atomic step: while the key holds this value no other worker
-- writes it (they `add`, which fails), so only an expiry landing between the two could let
-- this delete a newer holder's key; the SDK releases well before a lock's expiry.
function _M:delete_if(key, value)
  if self.dict:get(key) ~= value then return false end
  self.dict:delete(key)
  return true
end

return _M
