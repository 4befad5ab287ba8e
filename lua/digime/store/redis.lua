--- The Redis store: the four primitives of digime.store (get, set, add, delete_if) over the
-- project's own RESP client (digime.store.resp), for a fleet of hosts sharing one Redis.
--
-- Sockets: inside nginx, in a phase where cosockets work, every command borrows a connection
-- from nginx's keepalive pool (ngx.socket.tcp; a worker is never blocked; in other phases a
-- command fails, as the ngx transport's requests do). Outside nginx,
-- one luasocket connection per store object, used with a timeout: a command is one blocking
-- round trip (no yield inside it, so the tasks of `digime.run` never interleave on it, and
-- none waits longer than that round trip, at most `timeout` seconds when Redis hangs).
--
-- Every command this store sends is safe to send twice (GET, SET, SET NX, and the
-- compare-and-delete script), so one that fails on a reused connection (Redis restarted, an
-- idle connection closed by the server) is sent once more on a new one.
local resp = require "digime.store.resp"
local core = require "digime.core"

local type, tostring, setmetatable, rawget, floor = type, tostring, setmetatable, rawget, math.floor
local ipairs, pcall, require = ipairs, pcall, require

local _M = {}
local mt = { __index = _M }

-- Deletes the key only while it still holds the caller's value: a lock is released by its
-- holder only (https://redis.io/docs/latest/develop/use/patterns/distributed-locks/).
local DELETE_IF = "if redis.call('get', KEYS[1]) == ARGV[1] then "
  .. "return redis.call('del', KEYS[1]) else return 0 end"

local YIELDABLE = { rewrite = true, server_rewrite = true, access = true, content = true,
                    timer = true, ssl_cert = true, ssl_session_fetch = true,
                    ssl_client_hello = true }

-- Inside nginx: ngx when cosockets work in this phase, or false and the phase; outside: nil.
local function cosockets()
  local ngx = rawget(_G, "ngx")
  if type(ngx) ~= "table" or not ngx.get_phase then return nil end
  local phase = ngx.get_phase()
  if YIELDABLE[phase] then return ngx end
  return false, phase
end

--- A store for options already checked by digime.store.check:
-- { host, port, socket, user, password, database, prefix, connect_timeout, timeout, tls,
--   pool_size }.
function _M.new(o)
  local tls = o.tls
  if tls == true then tls = {} end
  local self = {
    -- integers as text ("6379", not "6379.0": a JSON-decoded option is a float in Lua 5.4)
    host = o.host or "127.0.0.1", port = floor(o.port or 6379), socket = o.socket,
    user = o.user, password = o.password, database = floor(o.database or 0),
    connect_timeout = o.connect_timeout or 1, timeout = o.timeout or 1,
    tls = tls or nil, pool_size = floor(o.pool_size or 32),
  }
  self.where = self.socket and ("unix:" .. self.socket) or (self.host .. ":" .. self.port)
  self.pool = "digime:" .. self.where .. ":" .. self.database .. ":" .. tostring(self.user)
  return setmetatable(self, mt)
end

-- AUTH and SELECT on a new connection. -> true | nil, message
local function handshake(self, sock)
  local cmds = {}
  if self.password then
    cmds[#cmds + 1] = self.user and { "AUTH", self.user, self.password } or { "AUTH", self.password }
  end
  if self.database ~= 0 then cmds[#cmds + 1] = { "SELECT", self.database } end
  for _, cmd in ipairs(cmds) do
    local ok, err = sock:send(resp.encode(cmd))
    if not ok then return nil, "connection: " .. tostring(err) end
    local v, rerr = resp.read(sock)
    if v == nil then return nil, cmd[1] .. ": " .. tostring(rerr) end
  end
  return true
end

-- A luasocket connection (luasec when tls): -> sock | nil, message
local function luasocket_connect(self)
  local ok, socket = pcall(require, "socket")
  if not ok then return nil, "the Redis store needs luasocket outside nginx" end
  local sock, err
  if self.socket then
    local unix = require "socket.unix"
    sock = unix()
  else
    sock, err = socket.tcp()
    if not sock then return nil, tostring(err) end
  end
  sock:settimeout(self.connect_timeout)
  local cok, cerr = sock:connect(self.socket or self.host, not self.socket and self.port or nil)
  if not cok then sock:close() return nil, "cannot connect to " .. self.where .. ": " .. tostring(cerr) end
  if self.tls then
    local ssl = require "ssl"
    local t = self.tls
    local s, werr = ssl.wrap(sock, { mode = "client", protocol = "any", options = "all",
      verify = t.verify == false and "none" or "peer", cafile = t.ca_file,
      capath = not t.ca_file and "/etc/ssl/certs" or nil })
    if not s then sock:close() return nil, "TLS: " .. tostring(werr) end
    sock = s
    sock:sni(t.server_name or self.host)
    local hok, herr = sock:dohandshake()
    if not hok then sock:close() return nil, "TLS handshake with " .. self.where .. ": " .. tostring(herr) end
  end
  sock:settimeout(self.timeout)
  local hok, herr = handshake(self, sock)
  if not hok then sock:close() return nil, herr end
  return sock
end

-- A cosocket from the pool (new ones authenticated). -> sock | nil, message
local function cosocket_connect(self, ngx)
  local sock = ngx.socket.tcp()
  sock:settimeouts(self.connect_timeout * 1000, self.timeout * 1000, self.timeout * 1000)
  local ok, err
  if self.socket then
    ok, err = sock:connect("unix:" .. self.socket, { pool = self.pool })
  else
    ok, err = sock:connect(self.host, self.port, { pool = self.pool })
  end
  if not ok then return nil, "cannot connect to " .. self.where .. ": " .. tostring(err) end
  if sock:getreusedtimes() == 0 then
    if self.tls then
      local t = self.tls
      local s, herr = sock:sslhandshake(nil, t.server_name or self.host, t.verify ~= false)
      if not s then sock:close() return nil, "TLS handshake with " .. self.where .. ": " .. tostring(herr) end
    end
    local hok, herr = handshake(self, sock)
    if not hok then sock:close() return nil, herr end
  end
  return sock
end

-- One command on one connection. -> value | nil, message, fatal (the connection is unusable)
local function roundtrip(sock, cmd)
  local ok, err = sock:send(resp.encode(cmd))
  if not ok then return nil, "connection: " .. tostring(err), true end
  local v, rerr, server = resp.read(sock)
  if v == nil then return nil, rerr, not server end
  return v
end

local function command_ngx(self, ngx, cmd)
  for attempt = 1, 2 do
    local sock, err = cosocket_connect(self, ngx)
    if not sock then return nil, err end
    local reused = sock:getreusedtimes() > 0
    local v, rerr, fatal = roundtrip(sock, cmd)
    if not fatal then
      sock:setkeepalive(60000, self.pool_size)
      if v == nil then return nil, "Redis: " .. rerr end
      return v
    end
    sock:close()
    if not reused or attempt == 2 then return nil, rerr end
  end
end

local function command_plain(self, cmd)
  if self.sock and self.pid ~= core.pid() then self:close() end   -- forked: not ours
  for attempt = 1, 2 do
    local reused = self.sock ~= nil
    if not reused then
      local sock, err = luasocket_connect(self)
      if not sock then return nil, err end
      self.sock, self.pid = sock, core.pid()
    end
    local v, rerr, fatal = roundtrip(self.sock, cmd)
    if not fatal then
      if v == nil then return nil, "Redis: " .. rerr end
      return v
    end
    self.sock:close()
    self.sock = nil
    if not reused or attempt == 2 then return nil, rerr end
  end
end

--- Sends one command: -> reply | nil, message.
function _M:command(cmd)
  local ngx, phase = cosockets()
  if ngx then return command_ngx(self, ngx, cmd) end
  -- never a blocking socket in an nginx worker
  if ngx == false then return nil, "no cosockets in nginx's " .. tostring(phase) .. " phase" end
  return command_plain(self, cmd)
end

local function ms(ttl)
  return tostring(floor(ttl * 1000 + 0.5) > 0 and floor(ttl * 1000 + 0.5) or 1)
end

--- The value, nil when absent; or nil, message.
function _M:get(key)
  local v, err = self:command{ "GET", key }
  if v == nil then return nil, err end
  if v == resp.null then return nil end
  if type(v) ~= "string" then return nil, "Redis: GET answered a " .. type(v) end
  return v
end

--- Sets the value for ttl seconds. -> true | nil, message
function _M:set(key, value, ttl)
  local v, err = self:command{ "SET", key, value, "PX", ms(ttl) }
  if v == nil then return nil, err end
  return true
end

--- Sets the value for ttl seconds only if the key is absent: -> true (set), false (it
-- exists) | nil, message
function _M:add(key, value, ttl)
  local v, err = self:command{ "SET", key, value, "NX", "PX", ms(ttl) }
  if v == nil then return nil, err end
  return v ~= resp.null
end

--- Deletes the key only if its value is `value` (compare-and-delete, atomic in Redis):
-- -> true (deleted), false | nil, message
function _M:delete_if(key, value)
  local v, err = self:command{ "EVAL", DELETE_IF, 1, key, value }
  if v == nil then return nil, err end
  return v == 1
end

--- Closes this store's own connection (plain Lua; nginx pools its own).
function _M:close()
  if self.sock then self.sock:close() self.sock = nil end
end

return _M
