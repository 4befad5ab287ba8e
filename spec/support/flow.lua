-- Spec helper for the authorization flows: a sandbox, an SDK object for it, the consent page
-- followed by hand, and a capture proxy that records what the SDK puts on the wire.
--
--   local flow = require "flow"
--   local sb = flow.start()                          -- a sandbox (sandbox.start{args=...})
--   local sdk = flow.sdk(sb, { timeout = 2 })        -- digime.init for it; errors recorded
--   local res = assert(sdk:get_authorize_url(flow.authorize_opts()))
--   local cb = flow.consent(res.url)                  -- { status, location, query = {...} }
--   local token, info = flow.login(sdk)               -- authorize -> consent -> exchange
--   local cap = flow.capture(sb)                      -- proxy to the sandbox that records
--   flow.assert_no_secrets()                          -- nothing secret in errors/log lines
--
-- Everything goes over real HTTP on loopback; nothing is mocked. The consent page is fetched
-- with digime.core's own engine (redirects not followed) so that the Location header, the
-- callback with success/state/code, can be read.
local sandbox = require "sandbox"
local shell = require "shell"
local scripted = require "scripted"
local cjson = require "cjson"
local socket = require "socket"
local core = require "digime.core"
local digime = require "digime"
local demo = require "digime.sandbox.demo_contract"

local _M = {}

_M.sandbox = sandbox
_M.demo = demo
_M.digime = digime
_M.CALLBACK = "https://app.example.org/return"
_M.APP_ID = demo.application_id
_M.CLIENT_ID = demo.application_id .. "_" .. demo.contract_id

function _M.now()
  return socket.gettime()
end

function _M.contract()
  return { id = demo.contract_id, private_key = demo.private_key }
end

-- Secrets, errors and log lines ---------------------------------------------------------------
--
-- Every error an SDK made by flow.sdk returns, and every line it logs, is kept here, and so
-- is every secret it handled (private keys, token values, code verifiers). assert_no_secrets
-- checks that no error text and no log line carries any of them (doc/protocol.md "Errors").

_M.secrets = {}
_M.errors = {}
_M.lines = {}

function _M.secret(s)
  if type(s) == "string" and #s >= 16 then
    _M.secrets[s] = true
  end
end

-- A PEM is secret as a whole and line by line (a partial leak counts).
function _M.secret_pem(pem)
  _M.secret(pem)
  for line in pem:gmatch("[^\n]+") do
    if not line:match("^%-%-%-%-%-") and #line >= 32 then
      _M.secret(line)
    end
  end
end
_M.secret_pem(demo.private_key)

local function note_token(t)
  if type(t) == "table" then
    if type(t.access_token) == "table" then _M.secret(t.access_token.value) end
    if type(t.refresh_token) == "table" then _M.secret(t.refresh_token.value) end
  end
end
_M.note_token = note_token

-- A readable, stable dump of a value (for log lines).
local function dump(v, depth)
  depth = depth or 0
  if type(v) ~= "table" or depth > 6 then
    return tostring(v)
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = tostring(k) .. "=" .. dump(v[k], depth + 1)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end
_M.dump = dump

function _M.record_error(err)
  if err ~= nil then
    _M.errors[#_M.errors + 1] = err
  end
end

function _M.record_line(level, message, fields)
  _M.lines[#_M.lines + 1] = tostring(level) .. " " .. tostring(message) .. " " .. dump(fields)
end

-- The text of an error that a user could print or log: tostring, message and causes.
function _M.error_text(err)
  if type(err) ~= "table" then
    return tostring(err)
  end
  local parts, seen, e = {}, {}, err
  while type(e) == "table" and not seen[e] do
    seen[e] = true
    parts[#parts + 1] = tostring(e)
    parts[#parts + 1] = tostring(e.message)
    e = e.cause
  end
  return table.concat(parts, "\n")
end

-- -> the number of errors and lines checked; raises naming the first leak.
function _M.assert_no_secrets(extra_errors, extra_lines)
  local texts = {}
  for _, e in ipairs(_M.errors) do texts[#texts + 1] = _M.error_text(e) end
  for _, e in ipairs(extra_errors or {}) do texts[#texts + 1] = _M.error_text(e) end
  for _, l in ipairs(_M.lines) do texts[#texts + 1] = l end
  for _, l in ipairs(extra_lines or {}) do texts[#texts + 1] = l end
  for _, text in ipairs(texts) do
    for s in pairs(_M.secrets) do
      if text:find(s, 1, true) then
        error("a secret (" .. #s .. " bytes, starting " .. s:sub(1, 6) .. "...) leaked into: "
              .. text:gsub(s:gsub("%p", "%%%0"), "<SECRET>"), 2)
      end
    end
  end
  return #_M.errors + #(extra_errors or {}), #_M.lines + #(extra_lines or {})
end

-- Sandbox and SDK ---------------------------------------------------------------------------

function _M.start(opts)
  return sandbox.start(opts)
end

-- Wraps every public method of an sdk object so that its errors are recorded and the secrets
-- of its results (token values, code verifiers) become known. The wrappers are plain fields
-- on the object, in front of the methods of its metatable.
function _M.track(sdk)
  local methods = getmetatable(sdk).__index
  for name, fn in pairs(methods) do
    if type(fn) == "function" and name ~= "log" and name:sub(1, 1) ~= "_" then
      sdk[name] = function(self, opts)
        local r, e = fn(self, opts)
        if type(r) == "table" then
          _M.secret(r.code_verifier)
          note_token(r)
          note_token(r.user_access_token)
        end
        _M.record_error(e)
        return r, e
      end
    end
  end
  return sdk
end

-- Whether the sandbox sb takes t's refresh token (asked directly, not through an SDK, which may
-- know that a token was refreshed already). It rotates: use it last. -> ok, status
function _M.refresh_works(sb, t)
  local res = assert(sb:call("POST", "oauth/token", {
    claims = { grant_type = "refresh_token", refresh_token = t.refresh_token.value } }))
  return res.status == 201, res.status
end

-- A logger for digime.init that appends "level message" to lines.
function _M.line_logger(lines)
  return function(level, message) lines[#lines + 1] = level .. " " .. message end
end

-- An sdk over sb whose on_token_refresh raises, its log lines into lines: the SDK must go on.
function _M.sdk_with_failing_refresh_hook(sb, lines)
  return assert(_M.sdk(sb, { on_token_refresh = function() error("hook failed") end,
                             logger = _M.line_logger(lines) }))
end

-- The sandbox's log entries after the first mark, only those to path when it is given.
function _M.log_since(sb, mark, path)
  local out = {}
  for i, e in ipairs(sb:log()) do
    if i > mark and (path == nil or e.path == path) then out[#out + 1] = e end
  end
  return out
end

-- No signed JWT presented twice among log entries (a request dropped before the sandbox read
-- it has no nonce in the log).
function _M.assert_distinct_nonces(entries)
  local seen = {}
  for _, e in ipairs(entries) do
    if e.nonce then
      require("luassert").is_nil(seen[e.nonce], "a signed JWT presented twice")
      seen[e.nonce] = true
    end
  end
end

-- The peak resident set of this process (VmHWM), in KiB.
function _M.hwm_kb()
  local f = assert(io.open("/proc/self/status", "rb"))
  local text = f:read("*a")
  f:close()
  return tonumber(text:match("VmHWM:%s*(%d+)"))
end

-- An on_token_refresh callback that appends { new =, old = } to the list get() returns (the
-- spec's own, which it may replace between tests).
function _M.refresh_recorder(get)
  return function(new, old)
    local list = get()
    list[#list + 1] = { new = new, old = old }
  end
end

-- digime.init for the sandbox sb (or for the URLs in extra): small backoffs, a recording
-- logger (in front of extra.logger), tracked methods. extra overrides any option; a key set
-- to false in extra is left out. -> sdk, or nil, err
function _M.sdk(sb, extra)
  extra = extra or {}
  local user_logger = extra.logger
  local opts = {
    application_id = _M.APP_ID,
    base_url = sb and sb.base_url,
    onboard_url = sb and sb.onboard_url,
    cloud_base_url = sb and sb.cloud_base_url,
    retry_options = { backoff = 0.01, max_backoff = 0.05 },
    timeout = 5,
    logger = function(level, message, fields)
      _M.record_line(level, message, fields)
      if user_logger then user_logger(level, message, fields) end
    end,
  }
  for k, v in pairs(extra) do
    if k ~= "logger" then
      -- false removes a default here; keepalive = false is an option value of its own
      if v == false and k ~= "keepalive" then opts[k] = nil else opts[k] = v end
    end
  end
  if type(opts.on_token_refresh) == "function" then
    local hook = opts.on_token_refresh
    opts.on_token_refresh = function(new, old)
      note_token(new)
      return hook(new, old)
    end
  end
  local sdk, err = digime.init(opts)
  if not sdk then
    _M.record_error(err)
    return nil, err
  end
  return _M.track(sdk)
end

function _M.authorize_opts(extra)
  local o = { contract = _M.contract(), callback = _M.CALLBACK, state = "state-1" }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- Raw HTTP through digime.core's engine ----------------------------------------------------

local engine

-- One request, redirects not followed: -> { status, headers, body } | nil, message, kind
function _M.http(t)
  engine = engine or core.http_engine()
  local opts = { method = t.method or "GET", url = t.url, headers = t.headers, body = t.body,
                 follow = false, proxy = false, timeout = t.timeout or 10,
                 cafile = t.cafile or _M.cafile }
  local req = engine:add(opts)
  local deadline = _M.now() + (t.timeout or 10) + 5
  while true do
    engine:perform()
    for _, done in ipairs(engine:finished()) do
      if done == req then
        return req:result()
      end
    end
    assert(_M.now() < deadline, "raw request did not finish: " .. tostring(t.url))
    engine:poll(20)
  end
end

function _M.get(url)
  return _M.http{ url = url }
end

function _M.query_of(url)
  return sandbox.parse_query(url:match("%?([^#]*)") or "")
end

-- The query's parameters in order: { {name, value}, ... } (values decoded).
function _M.ordered_query(url)
  local out = {}
  for pair in (url:match("%?([^#]*)") or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    local function un(s)
      return (s:gsub("+", " "):gsub("%%(%x%x)", function(x) return string.char(tonumber(x, 16)) end))
    end
    out[#out + 1] = { un(k), un(v) }
  end
  return out
end

function _M.param_names(url)
  local names = {}
  for i, p in ipairs(_M.ordered_query(url)) do names[i] = p[1] end
  return names
end

-- Follows a consent page URL once: -> { status, location, query } (query of the Location).
-- Over TLS, set flow.cafile to the sandbox's ca_file first.
function _M.consent(url)
  local res, err = _M.http{ url = url }
  assert(res, "consent page: " .. tostring(err))
  local location = res.headers and res.headers.location
  return { status = res.status, location = location, body = res.body,
           query = location and _M.query_of(location) or {} }
end

-- authorize -> consent -> exchange against whatever the sdk points at.
-- -> token, { code_verifier, code, url, session, callback } (raises on any failure)
function _M.login(sdk, extra)
  local res, err = sdk:get_authorize_url(_M.authorize_opts(extra))
  assert(res, "get_authorize_url: " .. tostring(err))
  local cb = _M.consent(res.url)
  assert(cb.status == 302 and cb.query.success == "true",
         "consent did not succeed: " .. tostring(cb.status) .. " " .. tostring(cb.location))
  local token, terr = sdk:exchange_code_for_token{ contract = _M.contract(),
    authorization_code = cb.query.code, code_verifier = res.code_verifier }
  assert(token, "exchange_code_for_token: " .. tostring(terr))
  note_token(token)
  return token, { code_verifier = res.code_verifier, code = cb.query.code, url = res.url,
                  session = res.session, callback = cb }
end

-- Up to consent, without the exchange: -> code, code_verifier
function _M.code(sdk, extra)
  local res, err = sdk:get_authorize_url(_M.authorize_opts(extra))
  assert(res, "get_authorize_url: " .. tostring(err))
  local cb = _M.consent(res.url)
  assert(cb.query.success == "true", "consent failed: " .. tostring(cb.location))
  return cb.query.code, res.code_verifier
end

-- Sandbox statistics helpers.
function _M.count(sb, path)
  return sb:stats().by_path[path] or 0
end

-- JWTs -----------------------------------------------------------------------------------

-- Splits and decodes a compact JWS: -> { header_json, payload_json, header, payload,
-- signing_input, signature }
function _M.decode_jwt(jwt)
  local h, p, s = jwt:match("^([%w_%-]+)%.([%w_%-]+)%.([%w_%-]+)$")
  assert(h, "not a three-part compact JWS: " .. tostring(jwt))
  local hj = assert(core.b64url_decode(h))
  local pj = assert(core.b64url_decode(p))
  return { header_json = hj, payload_json = pj, header = cjson.decode(hj),
           payload = cjson.decode(pj), signing_input = h .. "." .. p,
           signature = assert(core.b64url_decode(s)) }
end

-- Verifies a client JWT with the demo contract's public key.
function _M.verify_client_jwt(jwt)
  local d = _M.decode_jwt(jwt)
  local key = assert(core.public_key(demo.public_key))
  return key:verify_ps512(d.signing_input, d.signature) == true, d
end

-- The keys of a JSON object text in the order they appear (top level only).
function _M.key_order(json_text)
  local keys, depth, i = {}, 0, 1
  local n = #json_text
  while i <= n do
    local c = json_text:sub(i, i)
    if c == '"' then
      local j = i + 1
      while j <= n do
        local cj = json_text:sub(j, j)
        if cj == "\\" then j = j + 2
        elseif cj == '"' then break
        else j = j + 1 end
      end
      local str = json_text:sub(i + 1, j - 1)
      if depth == 1 and json_text:sub(j + 1):match("^%s*:") then
        keys[#keys + 1] = str
      end
      i = j + 1
    else
      if c == "{" or c == "[" then depth = depth + 1
      elseif c == "}" or c == "]" then depth = depth - 1 end
      i = i + 1
    end
  end
  return keys
end

-- A port nothing listens on.
function _M.closed_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return port
end

-- The capture proxy ------------------------------------------------------------------------
--
-- A child process (lua5.4 + luasocket) that records every request (method, path, headers,
-- body) and either answers from a script or forwards the request to the sandbox and relays
-- the answer (optionally edited). One connection at a time, "Connection: close".
--
--   local cap = flow.capture(sb)          -- cap.base_url, cap.onboard_url (= the sandbox's)
--   cap:script{ { method = "POST", path = "/v1.7/reference", status = 200, body = {id = "r"} },
--               { path = "/v1.7/oauth/authorize", forward = true, drop = { "session" } },
--               { path = "/x", reset = true, count = 2 } }
--   cap:requests()                        -- [{ method, path, headers, body }, ...]
--   cap:clear(); cap:stop()

local CAPTURE_SOURCE = [==[
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"
local upstream = arg[1] ~= "-" and arg[1] or nil
local deadline = socket.gettime() + (tonumber(arg[2]) or 300)
local server = assert(socket.bind("127.0.0.1", 0))
server:settimeout(0.5)
local _, port = server:getsockname()
io.stdout:write(port, "\n")
io.stdout:flush()

local log, script = {}, {}

local function read_request(c)
  local line = assert(c:receive("*l"))
  local method, target = line:match("^(%S+) (%S+) HTTP/1%.%d$")
  assert(method, "bad request line")
  local headers = {}
  while true do
    local h = assert(c:receive("*l"))
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    name = name:lower()
    headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
  end
  local len = tonumber(headers["content-length"] or 0) or 0
  local body = len > 0 and assert(c:receive(len)) or ""
  return { method = method, path = target, headers = headers, body = body }
end

local reasons = { [200] = "OK", [201] = "Created", [302] = "Found", [400] = "Bad Request",
  [401] = "Unauthorized", [404] = "Not Found", [429] = "Too Many Requests",
  [500] = "Internal Server Error", [503] = "Service Unavailable" }

local function respond(c, status, headers, body)
  body = body or ""
  local out = { ("HTTP/1.1 %d %s\r\n"):format(status, reasons[status] or "Status") }
  for k, v in pairs(headers or {}) do
    local lk = k:lower()
    if lk ~= "content-length" and lk ~= "connection" and lk ~= "transfer-encoding" then
      out[#out + 1] = k .. ": " .. tostring(v) .. "\r\n"
    end
  end
  out[#out + 1] = "Content-Length: " .. #body .. "\r\nConnection: close\r\n\r\n"
  out[#out + 1] = body
  c:send(table.concat(out))
end

local function forward(req)
  local chunks = {}
  local headers = {}
  for k, v in pairs(req.headers) do
    if k ~= "host" and k ~= "connection" and k ~= "content-length" and k ~= "expect" then
      headers[k] = v
    end
  end
  if req.body ~= "" then headers["content-length"] = tostring(#req.body) end
  local ok, status, rh = http.request{
    url = upstream .. req.path, method = req.method, headers = headers,
    source = req.body ~= "" and ltn12.source.string(req.body) or nil,
    sink = ltn12.sink.table(chunks), redirect = false,
  }
  if not ok then return 502, {}, "capture proxy: " .. tostring(status) end
  return status, rh or {}, table.concat(chunks)
end

local function handle(c)
  local req = read_request(c)
  if req.path == "/__log" then
    local text = #log == 0 and "[]" or cjson.encode(log)
    return respond(c, 200, { ["Content-Type"] = "application/json" }, text)
  elseif req.path == "/__script" then
    for _, e in ipairs(cjson.decode(req.body)) do script[#script + 1] = e end
    return respond(c, 200, { ["Content-Type"] = "application/json" }, '{"ok":true}')
  elseif req.path == "/__clear" then
    log, script = {}, {}
    return respond(c, 200, { ["Content-Type"] = "application/json" }, '{"ok":true}')
  end
  log[#log + 1] = req
  local entry
  for i, e in ipairs(script) do
    if (e.method == nil or e.method == req.method)
       and req.path:sub(1, #(e.path or "/")) == (e.path or "/") then
      e.count = (e.count or 1) - 1
      if e.count <= 0 then table.remove(script, i) end
      entry = e
      break
    end
  end
  if entry and entry.reset then
    return   -- closed without an answer
  end
  if entry and not entry.forward then
    local body = entry.body
    local headers = entry.headers or {}
    if type(body) == "table" then
      body = cjson.encode(body)
      headers["Content-Type"] = headers["Content-Type"] or "application/json"
    end
    return respond(c, entry.status or 200, headers, body or "")
  end
  if not upstream then
    return respond(c, 404, { ["Content-Type"] = "application/json" }, '{"error":"no upstream"}')
  end
  local status, headers, body = forward(req)
  if entry and (entry.drop or entry.set) then
    local doc = cjson.decode(body)
    for _, k in ipairs(entry.drop or {}) do doc[k] = nil end
    for k, v in pairs(entry.set or {}) do doc[k] = v end
    body = cjson.encode(doc)
  end
  return respond(c, status, headers, body)
end

while socket.gettime() < deadline do
  local c = server:accept()
  if c then
    c:settimeout(10)
    local ok, err = pcall(handle, c)
    if not ok then io.stderr:write("capture: ", tostring(err), "\n") end
    c:close()
  end
end
]==]

local Capture = scripted.class("capture proxy", 10)

-- Starts the capture proxy in front of sb (or with no upstream when sb is nil).
function _M.capture(sb)
  -- the script goes to a temporary file, removed once the child has read it (it has when
  -- it prints its port)
  local source_file = os.tmpname()
  local src = assert(io.open(source_file, "wb"))
  src:write(CAPTURE_SOURCE)
  src:close()
  local ok, pid, port, out = pcall(shell.spawn_port_script, source_file,
                                   { sb and sb.origin or "-", 120 }, "capture proxy")
  os.remove(source_file)
  if not ok then error(pid, 0) end
  local origin = "http://127.0.0.1:" .. port
  return setmetatable({ pid = pid, port = port, out = out, origin = origin,
                        base_url = origin .. "/v1.7/",
                        onboard_url = origin .. "/apps/saas/" }, Capture)
end

-- The recorded requests to a path (exact, query ignored).
function Capture:requests_to(path)
  local out = {}
  for _, r in ipairs(self:requests()) do
    if r.path:match("^[^?]*") == path then out[#out + 1] = r end
  end
  return out
end

return _M
