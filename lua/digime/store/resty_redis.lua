--- A digime.store backed by lua-resty-redis (bundled with OpenResty; not a Debian package, so
-- untested here): the application connects, this adapter sends the four commands.
--
--   local redis = require "resty.redis"
--   local store = require("digime.store.resty_redis").new{
--     connect = function()                       -- -> a connected resty.redis object | nil, err
--       local red = redis:new()
--       red:set_timeouts(1000, 1000, 1000)
--       local ok, err = red:connect("10.0.0.5", 6379)
--       if not ok then return nil, err end
--       if red:get_reused_times() == 0 then      -- AUTH and SELECT once per connection
--         ok, err = red:auth("secret")
--         if not ok then return nil, err end
--       end
--       return red
--     end,
--     keepalive = 60000, pool_size = 32,         -- set_keepalive arguments (optional)
--   }
--   digime.init{ ..., store = store }
local type, tostring, setmetatable, rawget = type, tostring, setmetatable, rawget
local floor = math.floor

local _M = {}
local mt = { __index = _M }

local DELETE_IF = "if redis.call('get', KEYS[1]) == ARGV[1] then "
  .. "return redis.call('del', KEYS[1]) else return 0 end"

function _M.new(opts)
  if type(opts) ~= "table" or type(opts.connect) ~= "function" then
    return nil, "digime.store.resty_redis.new: expected { connect = function }"
  end
  return setmetatable({ connect = opts.connect, keepalive = opts.keepalive or 60000,
                        pool_size = opts.pool_size or 32 }, mt)
end

-- Runs fn(red) on a connection, which goes back to the pool unless it failed.
local function with(self, fn)
  local red, err = self.connect()
  if not red then return nil, "cannot connect to Redis: " .. tostring(err) end
  local v, cerr = fn(red)
  if v == nil then
    red:close()
    return nil, "Redis: " .. tostring(cerr)
  end
  red:set_keepalive(self.keepalive, self.pool_size)
  return v
end

local function is_null(v)
  local ngx = rawget(_G, "ngx")
  return v == nil or (ngx and v == ngx.null)
end

local function ms(ttl)
  local n = floor(ttl * 1000 + 0.5)
  return n > 0 and n or 1
end

function _M:get(key)
  local v, err = with(self, function(red) return red:get(key) end)
  if v == nil then return nil, err end
  if is_null(v) then return nil end
  return v
end

function _M:set(key, value, ttl)
  local v, err = with(self, function(red) return red:set(key, value, "px", ms(ttl)) end)
  if v == nil then return nil, err end
  return true
end

function _M:add(key, value, ttl)
  local v, err = with(self, function(red) return red:set(key, value, "nx", "px", ms(ttl)) end)
  if v == nil then return nil, err end
  return not is_null(v)
end

function _M:delete_if(key, value)
  local v, err = with(self, function(red) return red:eval(DELETE_IF, 1, key, value) end)
  if v == nil then return nil, err end
  return v == 1
end

return _M
