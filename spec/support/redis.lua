-- Test helper: runs the machine's redis-server (Debian's package; scripts/deps.sh installs
-- it) on a free loopback port, without persistence, as a child of the spec.
--
--   local redis = require "redis"                -- busted's lpath has ./spec/support/?.lua
--   local r = redis.start()                      -- r.port, r.pid
--   r:command("FLUSHALL"); r:stop(); r:start()   -- stop and start again on the same port
--   r:cli("-n", 3, "GET", "k")                    -- redis-cli against it: -> output
local socket = require "socket"
local sh = require "shell"

local _M = {}

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local Redis = {}
Redis.__index = Redis

-- One command over a fresh connection (RESP, as digime.store.resp speaks it). -> reply | nil, err
function Redis:command(...)
  local resp = require "digime.store.resp"
  local c = socket.tcp()
  c:settimeout(2)
  local ok, err = c:connect("127.0.0.1", self.port)
  if not ok then return nil, err end
  c:send(resp.encode{ ... })
  local v, rerr, server = resp.read(c)
  c:close()
  return v, rerr, server
end

function Redis:cli(...)
  local args = {}
  for i, a in ipairs{ ... } do args[i] = sh.quote(a) end
  local _, out = sh.run("redis-cli -p " .. self.port .. " " .. table.concat(args, " "))
  return (out:gsub("%s+$", ""))
end

function Redis:start()
  self.log = self.log or os.tmpname()
  local inner = ("exec redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no "
    .. "--daemonize no %s >>%s 2>&1"):format(self.port, self.args or "", sh.quote(self.log))
  local p = assert(io.popen("sh -c " .. sh.quote(inner) .. " & echo $!"))
  self.pid = assert(tonumber(p:read("*l")), "no pid")
  p:close()
  local deadline = socket.gettime() + 10
  while socket.gettime() < deadline do
    local v, _, server = self:command("PING")
    if v == "PONG" or server then return self end   -- answered (NOAUTH with requirepass)
    socket.sleep(0.02)
  end
  local text = sh.read(self.log)
  self:stop()
  error("redis-server did not start (is it installed? scripts/deps.sh): " .. text)
end

-- SIGTERM, and wait until the port is closed.
function Redis:stop()
  if not self.pid then return end
  os.execute("kill " .. self.pid .. " 2>/dev/null")
  local deadline = socket.gettime() + 5
  while socket.gettime() < deadline do
    local v, _, server = self:command("PING")
    if not (v or server) then break end
    socket.sleep(0.02)
  end
  os.execute("kill -9 " .. self.pid .. " 2>/dev/null")
  self.pid = nil
end

-- opts.port (default: a free one), opts.args (more redis-server arguments, shell text)
function _M.start(opts)
  opts = opts or {}
  local self = setmetatable({ port = opts.port or free_port(), args = opts.args }, Redis)
  return self:start()
end

_M.free_port = free_port

return _M
