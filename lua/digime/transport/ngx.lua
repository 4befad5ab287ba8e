--- The transport inside nginx: HTTP/1.1 over cosockets (ngx.socket.tcp), so a request waits
-- without blocking the worker. The SDK's own client (lua-resty-http is not a Debian package).
--
-- It keeps the contract of doc/architecture.md "The transport contract" (what a request
-- carries, request bodies, body filters, results and failure kinds, keep-alive and `stale`,
-- cancelling). What is its own:
--
-- * Keep-alive pools named by scheme, host, port, TLS verification and SNI name, so a
--   connection made for one trust setting never serves another.
-- * TLS with SNI; certificates verified against nginx's `lua_ssl_trusted_certificate`.
-- * Bodies by content-length, chunked, or up to the close; a response's header block and
--   body are bounded (limits.headers, limits.body); a non-2xx body is cut at 64 KiB and its
--   connection closed (only the error is wanted of it).
-- * Per-attempt deadline over connect, send and every read, pushed on by every byte that
--   moves: the `timeout` of a request is a stall limit, not a cap on the whole transfer.
-- * A body filter gets a 2xx body in the pieces it arrives in (up to 64 KiB), in Lua.
-- * A request whose pooled connection closes before any byte of an answer ends with kind
--   "stale"; none is ever sent twice here.
local scheduler = require "digime.scheduler"

local ngx = ngx
local tcp, now, update_time = ngx.socket.tcp, ngx.now, ngx.update_time
local type, pairs, tostring, tonumber, setmetatable = type, pairs, tostring, tonumber, setmetatable
local find, sub, lower, match, gmatch = string.find, string.sub, string.lower, string.match, string.gmatch
local format = string.format
local concat = table.concat
local min, max, floor = math.min, math.max, math.floor

local _M = {}
local mt = { __index = _M }

local PIECE = 64 * 1024          -- bytes asked of the socket per read
local SLICE = 1                  -- seconds per read wait, so a cancelled request notices
local POOL_SIZE = 32             -- connections kept per pool
local MAX_CHUNK_LINE = 1024      -- bytes of a chunk-size line (hex size and extensions)
local MAX_TRAILERS = 16 * 1024
local MAX_ERROR_BODY = 64 * 1024 -- bytes kept of a non-2xx body (what the error parser reads)
local DEFAULT_PORT = { http = 80, https = 443 }

local YIELDABLE = scheduler.YIELDABLE

-- TLS sessions by pool, resumed by the next handshake to the same place.
local sessions = {}

--- opts: the SDK configuration (tls, timeouts, limits).
function _M.new(opts)
  return setmetatable({ opts = opts }, mt)
end

--- Whether this transport can run here: true, or nil and a message naming the phase.
function _M.available()
  local phase = ngx.get_phase()
  if YIELDABLE[phase] then return true end
  return nil, format("the ngx transport cannot make requests in nginx's %q phase (cosockets "
    .. "are not allowed there); call the SDK from a rewrite, access or content handler, or from "
    .. "a timer (ngx.timer.at) started here", phase)
end

local function parse_url(url)
  local scheme, rest = match(url, "^(https?)://(.*)$")
  if not scheme then return nil, "not an http(s) URL" end
  local authority, path = match(rest, "^([^/?#]*)(.*)$")
  if find(authority, "@", 1, true) then return nil, "user information in the URL" end
  local host, port = match(authority, "^%[([%x:.]+)%]:?(%d*)$")
  if not host then
    host, port = match(authority, "^([^:]+):?(%d*)$")
  end
  if not host or host == "" then return nil, "no host in the URL" end
  port = port ~= "" and tonumber(port) or DEFAULT_PORT[scheme]
  if port < 1 or port > 65535 then return nil, "bad port in the URL" end
  path = match(path, "^[^#]*")
  if path == "" then path = "/" elseif sub(path, 1, 1) == "?" then path = "/" .. path end
  -- "localhost" is loopback by definition (RFC 6761): no resolver needed for it. The name
  -- stays the one TLS verifies (nginx checks names only: an IP literal never matches).
  local address = lower(host) == "localhost" and "127.0.0.1" or host
  return { scheme = scheme, host = host, address = address, port = port, path = path,
           host_header = authority }
end

-- What kind of failure a cosocket error message is (kinds as digime.core's engine names them).
local function kind_of(err, stage)
  err = tostring(err)
  if err == "timeout" then return "timeout" end
  if stage == "connect" then
    if find(err, "resolve", 1, true) or find(err, "resolver", 1, true) then return "resolve" end
    return "connect"
  end
  if stage == "tls" then return "tls" end
  if err == "closed" or find(err, "reset", 1, true) or find(err, "broken pipe", 1, true) then
    return "reset"
  end
  return "other"
end

-- A request in flight: its socket, its read buffer, its deadline and its cancel flag.
local conn_mt = {}
conn_mt.__index = conn_mt

--- Cancels the request: its next read (within SLICE seconds) ends with kind "cancelled".
function conn_mt:cancel()
  self.cancelled = true
end

-- The timeout is a stall limit: every byte that moves (either way) pushes the deadline on.
local function moved(c)
  update_time()
  c.deadline = now() + c.stall
end

local function remaining(c)
  update_time()
  return c.deadline - now()
end

-- Reads more bytes into the buffer; false, message, kind on failure or past the deadline.
function conn_mt:fill()
  while true do
    if self.cancelled then return false, "the request was cancelled", "cancelled" end
    local left = remaining(self)
    if left <= 0 then return false, "the request timed out", "timeout" end
    self.sock:settimeout(max(1, floor(min(left, SLICE) * 1000)))
    local data, err = self.sock:receiveany(PIECE)
    if data then
      moved(self)
      self.got = self.got + #data
      self.buf = self.pos > #self.buf and data or sub(self.buf, self.pos) .. data
      self.pos = 1
      return true
    end
    if err ~= "timeout" then
      if err == "closed" then self.eof = true end
      return false, "the connection failed while reading: " .. tostring(err), kind_of(err, "read")
    end
  end
end

-- Up to n buffered bytes (reading more when none are buffered); nil at the end of input.
function conn_mt:take(n)
  if self.pos > #self.buf then
    local ok, err, kind = self:fill()
    if not ok then return nil, err, kind end
  end
  local out = sub(self.buf, self.pos, self.pos + n - 1)
  self.pos = self.pos + #out
  return out
end

-- The text up to `delim` (not included), reading at most `cap` bytes for it.
function conn_mt:until_delim(delim, cap, what)
  local from = self.pos
  while true do
    local s = find(self.buf, delim, from, true)
    if s and s - self.pos <= cap then
      local text = sub(self.buf, self.pos, s - 1)
      self.pos = s + #delim
      return text
    end
    local have = #self.buf - self.pos + 1
    if s or have > cap then
      return nil, format("%s exceeds %d bytes", what, cap), "too_large"
    end
    -- a delimiter may straddle what is here and what comes next
    local resume = max(0, have - #delim + 1)
    local ok, err, kind = self:fill()
    if not ok then return nil, err, kind end
    from = self.pos + resume
  end
end

local function send_all(c, data)
  if c.cancelled then return nil, "the request was cancelled", "cancelled" end
  local left = remaining(c)
  if left <= 0 then return nil, "the request timed out", "timeout" end
  c.sock:settimeout(max(1, floor(left * 1000)))
  local ok, err = c.sock:send(data)
  if not ok then
    return nil, "the connection failed while sending: " .. tostring(err), kind_of(err, "send")
  end
  moved(c)
  return true
end

local function valid_header(name, value)
  return type(name) == "string" and match(name, "^[%w!#$%%&'*+%-.^_`|~]+$") ~= nil
     and type(value) == "string" and not find(value, "[\r\n%z]")
end

-- The request head; nil, message if a header could split the request.
local function request_head(req, u, body_length, chunked)
  local lines = { format("%s %s HTTP/1.1", req.method or "GET", u.path), "Host: " .. u.host_header }
  local headers = req.headers or {}
  for name, value in pairs(headers) do
    if type(name) == "number" then   -- "Name: value" form
      name, value = match(tostring(value), "^([^:]+):%s*(.*)$")
    end
    value = value ~= nil and tostring(value) or nil
    if not valid_header(name, value) then
      return nil, "a request header is malformed or contains a line break: " .. tostring(name)
    end
    local l = lower(name)
    if l ~= "host" and l ~= "content-length" and l ~= "transfer-encoding" and l ~= "connection" then
      lines[#lines + 1] = name .. ": " .. value
    end
  end
  if chunked then
    lines[#lines + 1] = "Transfer-Encoding: chunked"
  elseif body_length then
    lines[#lines + 1] = "Content-Length: " .. body_length
  end
  lines[#lines + 1] = "\r\n"
  return concat(lines, "\r\n")
end

-- Sends the body: a string, or a reader function (chunks until nil) with or without a known
-- length (chunked encoding without one).
local function send_body(c, req, chunked)
  local body = req.body
  if type(body) == "string" then
    if body == "" then return true end
    return send_all(c, body)
  end
  local sent, want = 0, req.body_length
  while true do
    local chunk, rerr = body()
    if chunk == nil then
      if rerr ~= nil then return nil, "the body reader failed: " .. tostring(rerr), "body" end
      break
    end
    if type(chunk) ~= "string" then
      return nil, "the body reader gave a " .. type(chunk) .. ", not a string", "body"
    end
    if chunk ~= "" then
      sent = sent + #chunk
      if want and sent > want then
        return nil, format("the body is longer than its declared length (%d bytes)", want), "body"
      end
      local ok, err, kind = send_all(c, chunked and format("%x\r\n%s\r\n", #chunk, chunk) or chunk)
      if not ok then return nil, err, kind end
    end
  end
  if want and sent ~= want then
    return nil, format("the body is shorter than its declared length (%d of %d bytes)", sent, want), "body"
  end
  if chunked then return send_all(c, "0\r\n\r\n") end
  return true
end

-- Parses a header block: status, headers (lower-case names, repeats joined with ", ").
local function parse_head(block)
  local version, status = match(block, "^HTTP/(1%.[01]) (%d%d%d)[^\r\n]*")
  if not version then return nil, "not an HTTP/1.x status line" end
  local headers = {}
  local first = true
  for line in gmatch(block, "([^\n]*)\n?") do
    if first then
      first = false
    elseif line ~= "" then
      line = match(line, "^(.-)\r?$")
      local name, value = match(line, "^([%w!#$%%&'*+%-.^_`|~]+):[ \t]*(.-)[ \t]*$")
      if not name then return nil, "a malformed response header line" end
      name = lower(name)
      local old = headers[name]
      headers[name] = old and (old .. ", " .. value) or value
    end
  end
  return tonumber(status), headers, version
end

-- Reads the header blocks up to the final (non-1xx) one.
local function read_head(c, cap)
  while true do
    local block, err, kind = c:until_delim("\r\n\r\n", cap, "the response header block")
    if not block then return nil, err, kind end
    local status, headers, version = parse_head(block)
    if not status then return nil, "malformed response: " .. headers, "other" end
    if status >= 200 or status < 100 then return status, headers, version end
  end
end

-- Passes the next n bytes of the answer to emit, piece by piece.
local function pass(c, n, emit)
  while n > 0 do
    local piece, err, kind = c:take(min(n, PIECE))
    if not piece then return nil, err, kind end
    n = n - #piece
    local ok, eerr, ekind = emit(piece)
    if not ok then return nil, eerr, ekind end
  end
  return true
end

-- Calls emit(piece) for each piece of the body as framed by the headers; returns true when
-- the body ended where its framing says (the connection may then be reused).
local function read_body(c, status, headers, method, emit)  -- luacheck: ignore 561
  if method == "HEAD" or status == 204 or status == 304 or status < 200 then return true end
  local te = headers["transfer-encoding"]
  if te then
    if lower(te) ~= "chunked" then
      return nil, "unsupported transfer-encoding: " .. te, "other"
    end
    while true do
      local line, err, kind = c:until_delim("\r\n", MAX_CHUNK_LINE, "a chunk-size line")
      if not line then return nil, err, kind end
      local hex = match(line, "^(%x+)[ \t]*;?")
      if not hex or #hex > 12 then return nil, "a malformed chunk-size line", "other" end
      local size = tonumber(hex, 16)
      if size == 0 then break end
      local ok, perr, pkind = pass(c, size, emit)
      if not ok then return nil, perr, pkind end
      local crlf, cerr, ckind = c:until_delim("\r\n", 2, "a chunk's end")
      if not crlf then return nil, cerr, ckind end
      if crlf ~= "" then return nil, "a chunk does not end with CRLF", "other" end
    end
    -- trailers up to the empty line
    local trailer_bytes = 0
    while true do
      local line, err, kind = c:until_delim("\r\n", MAX_TRAILERS - trailer_bytes, "the trailers")
      if not line then return nil, err, kind end
      if line == "" then return true end
      trailer_bytes = trailer_bytes + #line + 2
    end
  end
  local cl = headers["content-length"]
  if cl then
    if not match(cl, "^%d+$") or #cl > 15 then
      return nil, "a malformed content-length: " .. cl, "other"
    end
    return pass(c, tonumber(cl), emit)
  end
  -- no framing: the body ends when the server closes
  while true do
    local piece, err, kind = c:take(PIECE)
    if not piece then
      if c.eof then return false end
      return nil, err, kind
    end
    local ok, eerr, ekind = emit(piece)
    if not ok then return nil, eerr, ekind end
  end
end

-- Pools are per worker; the name says what a connection in it was verified for. The trusted
-- CAs (lua_ssl_trusted_certificate) may differ per server block, which Lua cannot read: the
-- server block's address is part of the name so that one block's verified connection never
-- serves another (timers have no server block: their own scope).
local function pool_name(u, verify)
  local scope = "timer"
  if ngx.get_phase() ~= "timer" then
    local var = ngx.var
    scope = var.server_addr .. ":" .. var.server_port
  end
  return format("digime:%s:%s:%d:%s:%s", u.scheme, u.host, u.port,
                verify and "verify" or "noverify", scope)
end

-- Connects (from the pool unless `fresh`) and does the TLS handshake on a new connection.
local function connect(c, u, o, fresh)
  local sock = tcp()
  c.sock = sock
  local left = remaining(c)
  if left <= 0 then return nil, "the request timed out", "timeout" end
  local ct = min(left, o.connect_timeout or left)
  sock:settimeout(max(1, floor(ct * 1000)))
  local verify = o.tls.verify ~= false
  local pool = pool_name(u, verify)
  -- A pool nothing is ever returned to: connect() then always makes a new connection.
  c.pool = fresh and pool .. ":once" or pool
  local ok, err = sock:connect(u.address, u.port, { pool = c.pool })
  if not ok then
    return nil, format("cannot connect to %s:%d: %s", u.host, u.port, tostring(err)), kind_of(err, "connect")
  end
  c.reused = (sock:getreusedtimes() or 0) > 0
  if u.scheme == "https" and not c.reused then
    left = remaining(c)
    if left <= 0 then return nil, "the request timed out", "timeout" end
    sock:settimeout(max(1, floor(left * 1000)))
    -- lua-resty-core 0.1.25 (Debian's) can raise "assertion failed!" when nginx finishes a
    -- failed verification at once (lua-resty-core#499, fixed upstream): that is a failed
    -- handshake too, whose reason nginx has written to its error log.
    local ok_call, sess, herr = pcall(sock.sslhandshake, sock, sessions[pool] or nil, u.host, verify)
    if not ok_call then
      sess, herr = nil, "certificate verification failed (OpenSSL's reason is in nginx's error log)"
    end
    if not sess then
      return nil, format("TLS handshake with %s failed: %s (nginx verifies against "
        .. "lua_ssl_trusted_certificate)", u.host, tostring(herr)), "tls"
    end
    if type(sess) ~= "boolean" then sessions[pool] = sess end
  end
  return true
end

-- Sends the request line, the headers and the body. -> true | nil, message, kind
local function send_request(c, req, u)
  local body = req.body
  local method = req.method or "GET"
  local chunked = type(body) == "function" and not req.body_length
  local body_length
  if type(body) == "string" then
    body_length = #body
  elseif type(body) == "function" then
    body_length = req.body_length
  elseif method == "POST" or method == "PUT" or method == "PATCH" then
    body_length = 0
  end
  local head, herr = request_head(req, u, body_length, chunked)
  if not head then return nil, herr, "request" end
  if body == nil or (type(body) == "string" and #body <= PIECE) then
    return send_all(c, body and head .. body or head)
  end
  local ok, err, kind = send_all(c, head)
  if ok then ok, err, kind = send_body(c, req, chunked) end
  return ok, err, kind
end

-- Where the answer's body goes: through the body filter (a 2xx answer, when the request has
-- one), or into chunks, capped at max_body (an error answer's at MAX_ERROR_BODY: the rest is
-- never read). -> emit, filter | nil, chunks | nil, message, kind
local function body_target(c, req, o, status, headers, method)
  local max_body = req.max_body or o.limits.body
  local filter = req.body_filter
  if filter and status >= 200 and status < 300 and method ~= "HEAD" then
    local ok, ferr, fkind = filter:headers(status, headers)
    if not ok then return nil, ferr, fkind end
    -- the filter's own time (a slow sink) is not a stall of the server's
    return function(piece)
      local wok, werr, wkind = filter:write(piece)
      moved(c)
      return wok, werr, wkind
    end, filter
  end
  local cut
  if (status < 200 or status > 299) and MAX_ERROR_BODY < max_body then
    max_body, cut = MAX_ERROR_BODY, true
  end
  local cl = tonumber(headers["content-length"] or "")
  if cl and cl > max_body and not cut then
    return nil, format("the response body (%d bytes) exceeds the limit of %d bytes", cl, max_body), "too_large"
  end
  local chunks, size = {}, 0
  return function(piece)
    if cut and size + #piece > max_body then
      chunks[#chunks + 1] = sub(piece, 1, max_body - size)
      return nil, "cut", "cut"
    end
    size = size + #piece
    if size > max_body then
      return nil, format("the response body exceeds the limit of %d bytes", max_body), "too_large"
    end
    chunks[#chunks + 1] = piece
    return true
  end, nil, chunks
end

-- Back to the pool only when the answer ended where its framing said, nothing more came,
-- and neither side asked to close; closed otherwise.
local function release(c, o, framed, fresh, headers, version)
  local conn_hdr = lower(headers["connection"] or "")
  local reusable = framed and not fresh and c.pos > #c.buf and not find(conn_hdr, "close", 1, true)
    and (version == "1.1" or find(conn_hdr, "keep-alive", 1, true))
  if reusable then
    -- Idle at most keepalive.idle: retired before a server's keep-alive timeout.
    c.sock:setkeepalive(floor(o.keepalive.idle * 1000), POOL_SIZE)
  else
    c.sock:close()
  end
end

-- One exchange on one connection. Returns res | nil, message, kind, answered (true once any
-- byte of an answer came), reused (the connection came from the pool).
local function exchange(self, req, u, fresh)
  local o = self.opts
  local timeout = req.timeout or o.timeout
  update_time()
  local stall = timeout > 0 and timeout or 1e9
  local c = setmetatable({ buf = "", pos = 1, got = 0, stall = stall, deadline = now() + stall },
                         conn_mt)
  local cancel = req.cancel
  if cancel then cancel[c] = true end
  local started = now()

  local function fail(err, kind)
    if c.sock then c.sock:close() end
    if cancel then cancel[c] = nil end
    return nil, err, kind, c.got > 0, c.reused
  end

  local ok, err, kind = connect(c, u, o, fresh)
  if not ok then return fail(err, kind) end
  ok, err, kind = send_request(c, req, u)
  if not ok then return fail(err, kind) end

  local method = req.method or "GET"
  local status, headers, version = read_head(c, (o.limits and o.limits.headers) or 256 * 1024)
  if not status then return fail(headers, version) end
  local res = { status = status, headers = headers, http_version = version }
  local emit, filter, chunks = body_target(c, req, o, status, headers, method)
  if not emit then return fail(filter, chunks) end

  local framed, berr, bkind = read_body(c, status, headers, method, emit)
  if framed == nil and bkind == "cut" then framed = false end   -- closed below
  if framed == nil then return fail(berr, bkind) end
  if filter then
    ok, err, kind = filter:finish()
    if not ok then return fail(err, kind) end
    res.piped = true
  else
    res.body = concat(chunks)
  end

  release(c, o, framed, fresh, headers, version)
  if cancel then cancel[c] = nil end
  update_time()
  res.time = now() - started
  return res
end

--- req and its result: doc/architecture.md "The transport contract".
function _M:request(req)
  local ok, perr = _M.available()
  if not ok then return nil, perr, "unavailable" end
  local u, uerr = parse_url(req.url)
  if not u then return nil, "cannot request " .. tostring(req.url) .. ": " .. uerr, "request" end
  local res, err, kind, answered, reused = exchange(self, req, u, not self.opts.keepalive)
  if req.body_filter then req.body_filter:close() end
  if res then return res end
  if reused and not answered and kind == "reset" then
    return nil, "the reused connection closed before any answer (" .. tostring(err) .. ")", "stale"
  end
  return nil, err, kind
end

return _M
