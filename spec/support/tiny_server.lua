-- A tiny HTTP/1.1 test server on 127.0.0.1, run as a child process by the specs.
--
--   lua5.4 spec/support/tiny_server.lua [--tls CERT KEY] [--ttl SECONDS]
--
-- Prints the port it listens on as the first line of its output, then serves many
-- connections at once (coroutines over socket.select) until killed, or until the ttl
-- (default 300 s) runs out so that a crashed spec leaves nothing behind.
--
-- Routes:
--   /ok                   200, a small JSON body
--   /echo                 the request as JSON: method, path, headers, body, the client's
--                         port and how many requests this connection has carried
--   /delay?ms=N           /ok after N ms, without holding up other connections
--   /reset                closes right after reading the request (?partial=1: after half a
--                         status line and headers)
--   /truncate             content-length 1000, sends 10 bytes, closes
--   /big?n=N              N bytes of body (&chunked=1: chunked, no content-length)
--   /status?code=N        status N
--   /redirect             302 to /ok
--   /headers              repeated and mixed-case headers (?n=N: N extra 40-byte headers)
--   /continue             a 100 Continue with its own header, then /ok
--   /file?path=P          the bytes of file P (only under /tmp/), streamed in 64 KiB pieces with
--                         a content-length (&status=N: with status N; &chunked=1: chunked, no
--                         content-length; &cut=N: only the first N bytes, then close)
local socket = require "socket"
local cjson = require "cjson"

local tls_params
local ttl = 300
do
  local i = 1
  while arg[i] do
    if arg[i] == "--tls" then
      tls_params = { mode = "server", protocol = "any", certificate = arg[i + 1], key = arg[i + 2],
                     options = { "all", "no_sslv3" } }
      i = i + 3
    elseif arg[i] == "--ttl" then
      ttl = assert(tonumber(arg[i + 1]), "--ttl takes seconds")
      i = i + 2
    else
      error("unknown argument " .. arg[i])
    end
  end
end
local ssl = tls_params and require "ssl"

local server = assert(socket.bind("127.0.0.1", 0))
server:settimeout(0)
local _, port = server:getsockname()
io.stdout:write(port, "\n")
io.stdout:flush()

-- ---- coroutine I/O: a handler yields "r"/"w" with its socket, or "sleep" with a time ----

local function wait_io(err, conn)
  if err == "timeout" or err == "wantread" then
    coroutine.yield("r", conn)
  elseif err == "wantwrite" then
    coroutine.yield("w", conn)
  else
    error({ closed = err })
  end
end

local function receive(conn, pattern)
  local partial = ""
  while true do
    local data, err, part = conn:receive(pattern, partial)
    if data then return data end
    partial = part or ""
    wait_io(err, conn)
  end
end

local function send(conn, data)
  local i = 1
  while i <= #data do
    local last, err, lastpart = conn:send(data, i)
    if last then return end
    i = (lastpart or i - 1) + 1
    -- a plain socket says "timeout" when its send buffer is full: wait until it is writable
    wait_io(err == "timeout" and "wantwrite" or err, conn)
  end
end

local function sleep(seconds)
  coroutine.yield("sleep", socket.gettime() + seconds)
end

-- ---- HTTP ----

local reasons = { [100] = "Continue", [200] = "OK", [201] = "Created", [204] = "No Content",
  [302] = "Found", [400] = "Bad Request", [404] = "Not Found", [500] = "Internal Server Error",
  [503] = "Service Unavailable" }

local function respond(conn, req, status, headers, body)
  local lines = { ("HTTP/1.1 %d %s\r\n"):format(status, reasons[status] or "Status") }
  for _, h in ipairs(headers) do lines[#lines + 1] = h[1] .. ": " .. h[2] .. "\r\n" end
  lines[#lines + 1] = "Content-Length: " .. #body .. "\r\n\r\n"
  if req.method ~= "HEAD" then lines[#lines + 1] = body end
  send(conn, table.concat(lines))
end

local function json(conn, req, status, value)
  respond(conn, req, status, { { "Content-Type", "application/json" } }, cjson.encode(value))
end

local function query(path)
  local q = {}
  for k, v in (path:match("%?(.*)") or ""):gmatch("([^&=]+)=([^&]*)") do q[k] = v end
  return q
end

local routes = {}

function routes.ok(conn, req)
  json(conn, req, 200, { ok = true })
end

function routes.echo(conn, req, state)
  json(conn, req, 200, { method = req.method, path = req.path, headers = req.headers,
    body = req.body, client_port = state.client_port, requests = state.requests })
end

function routes.delay(conn, req)
  sleep((tonumber(req.query.ms) or 0) / 1000)
  json(conn, req, 200, { ok = true, delayed = tonumber(req.query.ms) })
end

function routes.reset(conn, req)
  if req.query.partial then send(conn, "HTTP/1.1 200 OK\r\nContent-Ty") end
  return "close"
end

function routes.truncate(conn)
  send(conn, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
  return "close"
end

function routes.big(conn, req)
  local n = tonumber(req.query.n) or 0
  if not req.query.chunked then
    return respond(conn, req, 200, {}, ("x"):rep(n))
  end
  send(conn, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
  local chunk = ("x"):rep(16384)
  while n > 0 do
    local len = math.min(n, #chunk)
    send(conn, ("%x\r\n%s\r\n"):format(len, chunk:sub(1, len)))
    n = n - len
  end
  send(conn, "0\r\n\r\n")
end

function routes.status(conn, req)
  json(conn, req, tonumber(req.query.code) or 200, { status = tonumber(req.query.code) })
end

function routes.redirect(conn, req)
  respond(conn, req, 302, { { "Location", "/ok" } }, "")
end

function routes.headers(conn, req)
  local h = { { "Set-Cookie", "a=1" }, { "X-Multi", "one" }, { "Set-Cookie", "b=2" },
              { "X-Mixed-Case", "Value" }, { "X-Multi", "two" } }
  for i = 1, tonumber(req.query.n) or 0 do
    h[#h + 1] = { ("X-Filler-%05d"):format(i), ("f"):rep(24) }
  end
  respond(conn, req, 200, h, "headers")
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

function routes.file(conn, req)
  local path = req.query.path and unescape(req.query.path)
  if not path or not path:match("^/tmp/") or path:match("%.%.") then
    return json(conn, req, 400, { error = "path must be a file under /tmp/" })
  end
  local f = io.open(path, "rb")
  if not f then return json(conn, req, 404, { error = "no such file" }) end
  local size = f:seek("end")
  f:seek("set")
  local status, cut, chunked = tonumber(req.query.status) or 200, tonumber(req.query.cut), req.query.chunked
  send(conn, ("HTTP/1.1 %d %s\r\n%s\r\n"):format(status, reasons[status] or "Status",
    chunked and "Transfer-Encoding: chunked\r\n" or "Content-Length: " .. size .. "\r\n"))
  local sent = 0
  while true do
    local n = cut and math.min(65536, cut - sent) or 65536
    local data = n > 0 and f:read(n)
    if not data then break end
    send(conn, chunked and ("%x\r\n%s\r\n"):format(#data, data) or data)
    sent = sent + #data
  end
  f:close()
  if cut then return "close" end
  if chunked then send(conn, "0\r\n\r\n") end
end

routes["continue"] = function(conn, req)
  send(conn, "HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n")
  json(conn, req, 200, { ok = true })
end

-- Reads one request; nil when the client has closed the connection.
local function read_request(conn)
  local ok, line = pcall(receive, conn, "*l")
  if not ok then
    if type(line) == "table" then return nil end
    error(line, 0)
  end
  local method, path = line:match("^(%S+) (%S+) HTTP/1%.%d$")
  if not method then error({ closed = "bad request line" }) end
  local req = { method = method, path = path, headers = {}, query = query(path) }
  while true do
    local h = receive(conn, "*l")
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    name = name:lower()
    req.headers[name] = req.headers[name] and req.headers[name] .. ", " .. value or value
  end
  local len = tonumber(req.headers["content-length"] or 0)
  req.body = len > 0 and receive(conn, len) or ""
  return req
end

local function handle(client)
  local state = { requests = 0 }
  state.client_port = select(2, client:getpeername())
  local conn = client
  conn:settimeout(0)
  if tls_params then
    conn = assert(ssl.wrap(client, tls_params))
    conn:settimeout(0)
    while true do
      local ok, err = conn:dohandshake()
      if ok then break end
      if err ~= "wantread" and err ~= "wantwrite" then return conn:close() end
      coroutine.yield(err == "wantread" and "r" or "w", conn)
    end
  end
  local ok, err = pcall(function()
    while true do
      local req = read_request(conn)
      if not req then return end
      state.requests = state.requests + 1
      local route = routes[req.path:match("^/([%w_]*)")]
      local after
      if route then
        after = route(conn, req, state)
      else
        json(conn, req, 404, { error = "no route " .. req.path })
      end
      if after == "close" or (req.headers.connection or ""):lower() == "close" then return end
    end
  end)
  if not ok and type(err) ~= "table" then io.stderr:write("handler error: ", tostring(err), "\n") end
  conn:close()
end

-- ---- the loop ----

local waiting = {}   -- coroutine -> { what, socket or time }
local deadline = socket.gettime() + ttl

local function resume(co)
  local ok, what, x = coroutine.resume(co)
  if not ok then
    io.stderr:write("coroutine error: ", tostring(what), "\n")
    waiting[co] = nil
  elseif coroutine.status(co) == "dead" then
    waiting[co] = nil
  else
    waiting[co] = { what, x }
  end
end

while socket.gettime() < deadline do
  local recvt, sendt, by_socket = { server }, {}, {}
  local timeout, now, ready = 1, socket.gettime(), {}
  for co, w in pairs(waiting) do
    if w[1] == "sleep" then
      if w[2] <= now then ready[#ready + 1] = co else timeout = math.min(timeout, w[2] - now) end
    else
      -- data already buffered inside luasocket/luasec is invisible to select
      if w[1] == "r" and w[2].dirty and w[2]:dirty() then ready[#ready + 1] = co end
      by_socket[w[2]] = co
      local list = w[1] == "r" and recvt or sendt
      list[#list + 1] = w[2]
    end
  end
  if #ready > 0 then timeout = 0 end
  local readable, writable = socket.select(recvt, sendt, timeout)
  for _, s in ipairs(readable) do
    if s == server then
      local client = server:accept()
      if client then resume(coroutine.create(function() handle(client) end)) end
    elseif by_socket[s] then
      ready[#ready + 1] = by_socket[s]
    end
  end
  for _, s in ipairs(writable) do
    if by_socket[s] then ready[#ready + 1] = by_socket[s] end
  end
  local done = {}
  for _, co in ipairs(ready) do
    if not done[co] and waiting[co] then
      done[co] = true
      resume(co)
    end
  end
end
