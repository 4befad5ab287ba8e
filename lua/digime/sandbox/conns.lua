-- The sandbox's connections: accepting them (directly, or through the latency relay),
-- TLS, the keep-alive timeout, closing them on demand, and counting them.
--
-- lua-http's own per-connection loop closes a keep-alive connection whose request has run
-- longer than its idle timeout, and gives no hook to count or close connections; this
-- replaces it (server.lua installs accept() as the server's add_socket). Every request of a
-- connection runs in its own coroutine, so one slow request never holds up another
-- connection.

local cqueues = require "cqueues"
local cc = require "cqueues.condition"
local ce = require "cqueues.errno"
local connection_common = require "http.connection_common"
local h1_connection = require "http.h1_connection"
local http_util = require "http.util"
local tls_peek = require "digime.sandbox.tls_peek"

local monotime = cqueues.monotime
local setmetatable, pairs, tostring = setmetatable, pairs, tostring

local _M = {}

local SETUP_TIMEOUT = 10       -- seconds for a TLS handshake, and for a first request
                               -- (the keep-alive timeout applies between requests)
local RECHECK = 0.5            -- seconds between looks at a busy connection

-- h1 connection -> its record, for the requests (server.lua): weak, so nothing is kept.
local by_conn = setmetatable({}, { __mode = "k" })

local function stats(app)
  return app.state.stats
end

local function opened(app, rec)
  local net = app.net
  net.seq = net.seq + 1
  rec.id = net.seq
  net.open[rec] = true
  local s = stats(app)
  s.connections = s.connections + 1
  s.connections_open = s.connections_open + 1
  if s.connections_open > s.max_connections_open then
    s.max_connections_open = s.connections_open
  end
end

local function closed(app, rec)
  if app.net.open[rec] then
    app.net.open[rec] = nil
    local s = stats(app)
    s.connections_open = s.connections_open - 1
  end
end

-- TLS: the handshake, counted full or resumed. -> true | nil
local function handshake(app, socket, rec)
  local hello = tls_peek.client_hello(socket, SETUP_TIMEOUT)
  local ok = socket:starttls(app.tls_ctx, SETUP_TIMEOUT)
  if not ok then
    return nil
  end
  local ssl = socket:checktls()
  local resumed = ssl and tls_peek.resumed(app.tls_info, ssl, hello)
  local s = stats(app)
  if resumed then
    s.tls_resumed = s.tls_resumed + 1
  else
    s.tls_handshakes = s.tls_handshakes + 1
  end
  rec.tls = { version = ssl and ssl:getVersion(), resumed = resumed or false }
  return true
end

local function run_stream(app, rec, stream, on_stream)
  local ok, err = http_util.yieldable_pcall(on_stream, app, stream)
  stream:shutdown()
  if not ok then
    io.stderr:write("digime-sandbox: onstream: ", tostring(err), "\n")
  end
  rec.streams = rec.streams - 1
  rec.done:signal()
end

-- Reads requests until the client goes, the keep-alive timeout passes on an idle
-- connection, or close() shuts the socket.
local function request_loop(app, cq, rec, conn, on_stream)
  while true do
    local timeout = RECHECK
    if rec.idle then
      local wait = app.cfg.keepalive
      if rec.requests == 0 and wait < SETUP_TIMEOUT then
        wait = SETUP_TIMEOUT
      end
      timeout = rec.idle_since + wait - monotime()
      if timeout <= 0 then
        rec.closed_by = "keepalive"
        return
      end
    end
    local stream, _, errno = conn:get_next_incoming_stream(timeout)
    if stream then
      rec.idle = false
      rec.requests = rec.requests + 1
      rec.streams = rec.streams + 1
      cq:wrap(run_stream, app, rec, stream, on_stream)
    elseif errno ~= ce.ETIMEDOUT then
      return          -- the client went, or close() shut the socket
    end
  end
end

-- Serves one accepted socket (a client's, or the relay's end of a pair).
-- rec = { peer_ip, relay? }
function _M.serve(app, cq, socket, rec, on_stream)
  rec.idle, rec.idle_since, rec.requests, rec.streams = true, monotime(), 0, 0
  rec.done = cc.new()
  rec.socket = socket
  opened(app, rec)
  socket:setmode("b", "b")
  socket:onerror(connection_common.onerror)
  if app.tls_ctx and not handshake(app, socket, rec) then
    socket:close()
    closed(app, rec)
    return
  end
  local conn = h1_connection.new(socket, "server", 1.1)
  rec.conn = conn
  rec.idle_since = monotime()       -- ready now (after a TLS handshake)
  by_conn[conn] = rec
  conn:onidle(function()
    rec.idle, rec.idle_since = true, monotime()
  end)
  request_loop(app, cq, rec, conn, on_stream)
  while rec.streams > 0 do
    rec.done:wait()
  end
  conn:close()
  closed(app, rec)
end

-- A connection's first request outside /sandbox/: counted apart, so that a test's control
-- calls (each on a connection of its own, often) do not blur what a client did.
function _M.api_request(app, rec)
  if rec and not rec.api then
    rec.api = true
    local s = stats(app)
    s.api_connections = s.api_connections + 1
    if rec.tls then
      local k = rec.tls.resumed and "api_tls_resumed" or "api_tls_handshakes"
      s[k] = s[k] + 1
    end
  end
end

-- The record of a request's connection: { id, peer_ip, requests, tls, ... } | nil
function _M.of(stream)
  return stream and by_conn[stream.connection]
end

-- Closes the idle keep-alive connections now (and, with busy, those in a request too),
-- except one (the asking request's).
-- -> how many
function _M.close(app, busy, except)
  local n = 0
  for rec in pairs(app.net.open) do
    if rec.conn and rec ~= except and (rec.idle or busy) then
      rec.closed_by = "control"
      -- Shutting the socket down wakes whatever waits on it (the next request, a hang):
      -- it sees the end. Not the connection's shutdown: that would answer a request 503.
      rec.socket:shutdown("rw")
      n = n + 1
    end
  end
  return n
end

-- The open connections, for GET /sandbox/connections.
function _M.list(app)
  local list = {}
  local now = monotime()
  for rec in pairs(app.net.open) do
    list[#list + 1] = {
      id = rec.id, peer_ip = rec.peer_ip, requests = rec.requests or 0,
      idle = rec.idle or false, idle_ms = rec.idle and math.floor((now - rec.idle_since) * 1000)
                                         or nil,
      tls = rec.tls, relayed = rec.relay ~= nil,
    }
  end
  table.sort(list, function(a, b) return a.id < b.id end)
  return list
end

function _M.init(app)
  app.net = { seq = 0, open = {} }
end

return _M
