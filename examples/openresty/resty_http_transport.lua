--- lua-resty-http as the SDK's transport: how to plug in an HTTP client of your own.
--
-- NOT RUN HERE: lua-resty-http is not among Debian's packages and this project installs
-- nothing from outside them, so no spec loads this file (luacheck reads it). Written against
-- lua-resty-http 0.17 (connect{} with TLS options, request{}, body_reader); install it with
-- `opm get ledgetech/lua-resty-http` or `luarocks install lua-resty-http`.
--
-- The SDK has its own cosocket client (lua/digime/transport/ngx.lua), picked by default inside
-- nginx; use this when you want lua-resty-http's connection handling instead:
--
--   local digime = require "digime"
--   local sdk = assert(digime.init{
--     application_id = "my-app",
--     transport = require("resty_http_transport").new{ ssl_verify = true },
--   })
--
-- The interface a transport implements is doc/architecture.md "The transport contract". In
-- short:
--
--   transport:request(req) -> res | nil, message, kind
--   req = { method, url, headers = { name = value },
--           body          a string, or a reader function (returns pieces, then nil)
--           body_length   the reader's total length when known
--           timeout       seconds without progress before the attempt fails
--           max_body      the largest body to accept, bytes
--           body_filter   where a 2xx body goes (a downloaded file): filter:headers(status,
--                         headers), then filter:write(piece) for each piece, filter:finish(),
--                         and filter:close() in every case; each returns true or nil, err,
--                         kind, a failure to report as it is. Answer `piped = true` instead
--                         of a body.
--           cancel        a table: put an object with a :cancel() method in it while the
--                         request runs, remove it after (a stopped sync cancels downloads) }
--   res  = { status, headers = { lower-case name = value }, body | piped = true }
--   kind = "connect" | "resolve" (nothing was sent: even a POST may be retried), "tls",
--          "timeout", "reset", "too_large", "cancelled", "other", a filter's own kind,
--          "stale": a pooled connection closed before any answer; the transport must not send
--          the request again itself (the SDK decides, with a new signature)
--
-- The SDK does the rest (signing, retries, error mapping, token refresh), whatever the
-- transport. The CA file for TLS comes from nginx's lua_ssl_trusted_certificate, as for every
-- cosocket.
local http = require "resty.http"

local setmetatable, tostring, pairs, type, tonumber = setmetatable, tostring, pairs, type, tonumber
local find, lower, format = string.find, string.lower, string.format
local concat = table.concat
local floor, max, min = math.floor, math.max, math.min

local _M = {}
local mt = { __index = _M }

local PIECE = 64 * 1024

--- opts: ssl_verify (default true), connect_timeout (s, 10), keepalive_timeout (ms, 2000:
-- below the server's own keep-alive timeout),
-- keepalive_pool (32), max_body (bytes, 1 GiB).
function _M.new(opts)
  opts = opts or {}
  return setmetatable({
    ssl_verify = opts.ssl_verify ~= false,
    connect_timeout = opts.connect_timeout or 10,
    keepalive_timeout = opts.keepalive_timeout or 2000,
    keepalive_pool = opts.keepalive_pool or 32,
    max_body = opts.max_body or 1024 * 1024 * 1024,
  }, mt)
end

-- lua-resty-http passes the cosocket's error strings through: map them to the SDK's kinds.
local function kind_of(err, stage)
  err = lower(tostring(err))
  if find(err, "timeout", 1, true) then return "timeout" end
  if stage == "connect" then
    if find(err, "resolve", 1, true) or find(err, "resolver", 1, true) then return "resolve" end
    if find(err, "handshake", 1, true) or find(err, "certificate", 1, true)
       or find(err, "ssl", 1, true) then
      return "tls"
    end
    return "connect"
  end
  if err == "closed" or find(err, "reset", 1, true) or find(err, "broken pipe", 1, true) then
    return "reset"
  end
  return "other"
end

-- Header names lower-cased, repeated headers joined (lua-resty-http gives them as arrays).
local function lower_headers(h)
  local out = {}
  for k, v in pairs(h or {}) do
    out[lower(k)] = type(v) == "table" and concat(v, ", ") or v
  end
  return out
end

function _M:request(req)
  local method = req.method or "GET"
  local httpc = http.new()
  local total = floor((req.timeout or 30) * 1000)
  httpc:set_timeouts(min(total, floor(self.connect_timeout * 1000)), total, total)

  local uri, uerr = httpc:parse_uri(req.url)   -- { scheme, host, port, path (with query) }
  if not uri then return nil, "cannot request " .. tostring(req.url) .. ": " .. tostring(uerr), "other" end
  local scheme, host, port, path = uri[1], uri[2], uri[3], uri[4]

  local pool = format("digime-resty-http:%s:%s:%d:%s", scheme, host, port,
                      self.ssl_verify and "verify" or "noverify")
  local ok, cerr = httpc:connect{
    scheme = scheme, host = host, port = port,
    ssl_verify = self.ssl_verify, ssl_server_name = host,
    pool = pool, pool_size = self.keepalive_pool,
  }
  if not ok then
    return nil, format("cannot connect to %s:%d: %s", host, port, tostring(cerr)), kind_of(cerr, "connect")
  end

  -- While it runs, the request can be cancelled between two pieces of its body.
  local handle = { cancelled = false }
  function handle.cancel(h) h.cancelled = true end
  local cancel = req.cancel
  if cancel then cancel[handle] = true end
  local filter = req.body_filter
  local function done(...)
    if cancel then cancel[handle] = nil end
    if filter then filter:close() end
    return ...
  end
  local function fail(msg, kind)
    httpc:close()
    return done(nil, msg, kind)
  end

  local headers = {}
  for k, v in pairs(req.headers or {}) do headers[k] = v end
  if type(req.body) == "function" and req.body_length then
    headers["Content-Length"] = tostring(req.body_length)   -- else: sent chunked
  end
  local res, rerr = httpc:request{ method = method, path = path, headers = headers, body = req.body }
  if not res then
    local kind = kind_of(rerr)
    -- A pooled connection that closed before any answer: never resent here (the SDK decides).
    if kind == "reset" and (httpc:get_reused_times() or 0) > 0 then kind = "stale" end
    return fail(format("%s %s failed: %s", method, path, tostring(rerr)), kind)
  end

  local status = res.status
  local rh = lower_headers(res.headers)
  local out = { status = status, headers = rh }

  -- Where the body goes: through the body filter, or into a string.
  local emit, finish
  local max_body = req.max_body or self.max_body
  if filter and status >= 200 and status < 300 and method ~= "HEAD" then
    local okh, herr, hkind = filter:headers(status, rh)
    if not okh then return fail(herr, hkind) end
    emit = function(piece) return filter:write(piece) end
    finish = function()
      local okf, ferr, fkind = filter:finish()
      if okf then out.piped = true end
      return okf, ferr, fkind
    end
  else
    local parts, got = {}, 0
    local cl = tonumber(rh["content-length"] or "")
    if cl and cl > max_body then
      return fail(format("the response body (%d bytes) exceeds the limit of %d bytes", cl, max_body), "too_large")
    end
    emit = function(piece)
      got = got + #piece
      if got > max_body then
        return nil, format("the response body exceeds the limit of %d bytes", max_body), "too_large"
      end
      parts[#parts + 1] = piece
      return true
    end
    finish = function()
      out.body = concat(parts)
      return true
    end
  end

  local reader = res.body_reader
  while reader do
    if handle.cancelled then return fail("the request was cancelled", "cancelled") end
    local piece, berr = reader(PIECE)
    if berr then return fail("reading the answer failed: " .. tostring(berr), kind_of(berr)) end
    if not piece then break end
    local okp, perr, pkind = emit(piece)
    if not okp then return fail(perr, pkind) end
  end
  local okf, ferr, fkind = finish()
  if not okf then return fail(ferr, fkind) end

  -- Pooled again (lua-resty-http closes it itself when the answer said so).
  httpc:set_keepalive(max(1, self.keepalive_timeout), self.keepalive_pool)
  return done(out)
end

return _M
