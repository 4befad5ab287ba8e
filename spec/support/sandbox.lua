-- Test helper: runs bin/digime-sandbox as a child process and talks to it.
--
--   local sandbox = require "sandbox"            -- busted's lpath has ./spec/support/?.lua
--   local sb = sandbox.start{ args = { "--interactive" } }
--   sb.base_url, sb.onboard_url, sb.cloud_base_url, sb.control_url, sb.ca_file, sb.pid
--   sb:control("POST", "fault", { path = "/v1.7/oauth/token", action = "status", status = 500 })
--   sb:stats(); sb:fault{...}; sb:faults(); sb:clear_faults(); sb:log(); sb:reset()
--   sb:expire("both", user_id); sb:consent("decline", "UserCancelled")
--   sb:call("POST", "oauth/authorize", { claims = {...}, body = {...} })   -- signed API call
--   local code = sb:stop()                       -- SIGTERM; the exit code
--   sb:restart()                                 -- stop, start again on the same port (in place)
--
-- It works under Lua 5.4 and LuaJIT (the child is always lua5.4 through bin/digime-sandbox).
-- HTTP here is plain blocking luasocket/luasec: the sandbox specs must not depend on the SDK
-- or the C HTTP engine. Client JWTs are signed with digime.core directly (sandbox.sign).

local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local _M = {}

local function script_dir()
  local src = debug.getinfo(1, "S").source
  local path = src:sub(1, 1) == "@" and src:sub(2) or "./spec/support/sandbox.lua"
  return path:match("^(.*)/[^/]*$") or "."
end

-- The checkout root: spec/support/.. /..
_M.root = script_dir() .. "/../.."
_M.bin = _M.root .. "/bin/digime-sandbox"

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
_M.sh_quote = sh_quote

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end

local function sleep(s)
  socket.sleep(s)
end
_M.sleep = sleep

function _M.now_ms()
  return math.floor(socket.gettime() * 1000)
end

local function my_pid()
  local stat = read_file("/proc/self/stat")
  return stat and tonumber(stat:match("^(%d+)"))
end

local running = {}

-- Plain HTTP(S) --------------------------------------------------------------------------------

-- One blocking request, redirects not followed.
-- opts = { method, url, headers, body (string | table -> JSON), timeout, cafile }
-- -> { status, headers (lower-case names), body } | nil, err
function _M.request(opts)
  local body = opts.body
  local headers = {}
  for k, v in pairs(opts.headers or {}) do
    headers[k:lower()] = v
  end
  if type(body) == "table" then
    body = cjson.encode(body)
    headers["content-type"] = headers["content-type"] or "application/json"
  end
  if body then
    headers["content-length"] = tostring(#body)
  end
  local chunks = {}
  local req = {
    url = opts.url,
    method = opts.method or "GET",
    headers = headers,
    source = body and ltn12.source.string(body) or nil,
    sink = ltn12.sink.table(chunks),
    redirect = false,
  }
  local mod = http
  if opts.url:match("^https:") then
    mod = require "ssl.https"
    req.protocol = "any"
    req.verify = opts.cafile and "peer" or "none"
    req.cafile = opts.cafile
    req.options = { "all" }
  end
  local old = mod.TIMEOUT
  mod.TIMEOUT = opts.timeout or 30
  local ok, code, rh = mod.request(req)
  mod.TIMEOUT = old
  if not ok then
    return nil, tostring(code)
  end
  return { status = code, headers = rh or {}, body = table.concat(chunks) }
end

-- A sandbox process ----------------------------------------------------------------------------

local Sandbox = {}
Sandbox.__index = Sandbox

-- Starts bin/digime-sandbox with opts.args; waits for its first line (opts.timeout, 10 s).
function _M.start(opts)
  opts = opts or {}
  local base = os.tmpname()
  local files = { out = base .. ".out", err = base .. ".err", pid = base .. ".pid",
                  rc = base .. ".rc", base = base }
  local args = {}
  for i, a in ipairs(opts.args or {}) do
    args[i] = sh_quote(a)
  end
  local env = { "env", "-u", "LUA_PATH", "-u", "LUA_CPATH", "-u", "LUA_INIT" }
  local ppid = my_pid()
  if ppid and opts.watch_parent ~= false then
    env[#env + 1] = "DIGIME_SANDBOX_PARENT_PID=" .. ppid
  end
  for k, v in pairs(opts.env or {}) do
    env[#env + 1] = k .. "=" .. sh_quote(v)
  end
  -- A waiter subshell reaps the sandbox and records its exit code.
  local cmd = string.format(
    "(%s %s %s >%s 2>%s </dev/null & p=$!; echo $p >%s; wait $p; echo $? >%s.tmp; mv %s.tmp %s)"
    .. " >/dev/null 2>&1 &",
    table.concat(env, " "), sh_quote(opts.bin or _M.bin), table.concat(args, " "),
    sh_quote(files.out), sh_quote(files.err), sh_quote(files.pid), sh_quote(files.rc),
    sh_quote(files.rc), sh_quote(files.rc))
  os.execute(cmd)

  local self = setmetatable({ files = files }, Sandbox)
  local deadline = socket.gettime() + (opts.timeout or 10)
  while true do
    if not self.pid then
      local p = read_file(files.pid)
      self.pid = p and tonumber(p:match("^(%d+)\n"))
    end
    local out = read_file(files.out) or ""
    local line = out:match("^([^\n]*)\n")
    if line then
      local ok, info = pcall(cjson.decode, line)
      if not ok or type(info) ~= "table" then
        self:stop()
        error("digime-sandbox: first line is not JSON: " .. line)
      end
      self.info = info
      break
    end
    if read_file(files.rc) then
      local err = read_file(files.err) or ""
      self:cleanup()
      error("digime-sandbox exited before its first line (rc "
            .. (read_file(files.rc) or "?"):gsub("%s", "") .. "): " .. err)
    end
    if socket.gettime() > deadline then
      local err = read_file(files.err) or ""
      self:stop()
      error("digime-sandbox: no first line within " .. (opts.timeout or 10) .. " s: " .. err)
    end
    sleep(0.02)
  end
  for k, v in pairs(self.info) do
    self[k] = v
  end
  self.origin = self.base_url:match("^(https?://[^/]+)")
  self.port = tonumber(self.origin:match(":(%d+)$"))
  self.opts = opts
  running[self] = true
  return self
end

function Sandbox:stderr()
  return read_file(self.files.err) or self.stderr_text or ""
end

-- The exit code, once the process has ended (nil while it runs).
function Sandbox:exit_code()
  local rc = read_file(self.files.rc)
  return rc and tonumber(rc:match("%d+"))
end

function Sandbox:alive()
  return self:exit_code() == nil and self.exit_status == nil
end

-- Sends a signal (default TERM) without waiting.
function Sandbox:kill(sig)
  if self.pid then
    os.execute("kill -" .. (sig or "TERM") .. " " .. self.pid .. " 2>/dev/null")
  end
end

-- Waits up to `timeout` seconds for the process to end: -> exit code | nil
function Sandbox:wait(timeout)
  local deadline = socket.gettime() + (timeout or 5)
  while socket.gettime() < deadline do
    local rc = self:exit_code()
    if rc then
      return rc
    end
    sleep(0.02)
  end
  return nil
end

function Sandbox:cleanup()
  self.stderr_text = read_file(self.files.err)
  for _, k in ipairs{ "out", "err", "pid", "rc", "base" } do
    os.remove(self.files[k])
  end
  running[self] = nil
end

-- SIGTERM, wait for the exit (kill -9 after 5 s): -> exit code
function Sandbox:stop()
  if self.exit_status ~= nil then
    return self.exit_status
  end
  local rc = self:exit_code()
  if not rc and self.pid then
    self:kill("TERM")
    rc = self:wait(5)
    if not rc then
      self:kill("KILL")
      rc = self:wait(5)
    end
  end
  self.exit_status = rc or -1
  self:cleanup()
  return self.exit_status
end

-- Stops the sandbox (SIGTERM, unless it has ended already) and starts it again on the same
-- port with the same options; opts.args (extra arguments) and opts.timeout add to them. The
-- object is updated in place (pid, URLs, ...). The new process remembers nothing: users,
-- tokens, sessions and faults are in memory, and its JWKS signing key is new.
function Sandbox:restart(opts)
  opts = opts or {}
  self:stop()
  local o = {}
  for k, v in pairs(self.opts or {}) do o[k] = v end
  local args, old = {}, self.opts and self.opts.args or {}
  local i = 1
  while i <= #old do
    if old[i] == "--port" then
      i = i + 2
    else
      args[#args + 1] = old[i]
      i = i + 1
    end
  end
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  args[#args + 1] = "--port"
  args[#args + 1] = tostring(self.port)
  o.args = args
  o.timeout = opts.timeout or o.timeout
  local fresh = _M.start(o)
  running[fresh] = nil
  for k in pairs(self) do self[k] = nil end
  for k, v in pairs(fresh) do self[k] = v end   -- opts too: the same, with --port
  running[self] = true
  return self
end

function _M.stop_all()
  for sb in pairs(running) do
    sb:stop()
  end
end

-- HTTP to this sandbox -------------------------------------------------------------------------

-- A URL for `path`: absolute URLs pass, "/x" is on the origin, anything else under base_url.
function Sandbox:url(path, base)
  if path:match("^https?://") then
    return path
  elseif path:sub(1, 1) == "/" then
    return self.origin .. path
  end
  return (base or self.base_url) .. path
end

function Sandbox:request(opts)
  local o = {}
  for k, v in pairs(opts) do
    o[k] = v
  end
  o.url = self:url(opts.url or opts.path)
  o.cafile = o.cafile or self.ca_file
  return _M.request(o)
end

-- Control API: -> decoded JSON (or the raw text), status
function Sandbox:control(method, path, body)
  local res, err = _M.request{
    method = method, url = self:url(path, self.control_url), body = body,
    -- the control API takes JSON bodies only (a table body is sent as JSON anyway)
    headers = type(body) == "string" and { ["content-type"] = "application/json" } or nil,
    cafile = self.ca_file, timeout = 10,
  }
  if not res then
    error("sandbox control " .. method .. " " .. path .. ": " .. tostring(err))
  end
  local ok, value = pcall(cjson.decode, res.body)
  return ok and value or res.body, res.status
end

local function checked(self, method, path, body)
  local v, status = self:control(method, path, body)
  if status ~= 200 then
    error("sandbox control " .. method .. " " .. path .. " answered " .. tostring(status) .. ": "
          .. (type(v) == "table" and cjson.encode(v) or tostring(v)))
  end
  return v
end

function Sandbox:stats() return checked(self, "GET", "stats") end
function Sandbox:log() return checked(self, "GET", "log") end
function Sandbox:faults() return checked(self, "GET", "faults") end
function Sandbox:clear_faults() return checked(self, "DELETE", "faults") end
function Sandbox:reset() return checked(self, "POST", "reset") end
function Sandbox:info_() return checked(self, "GET", "info") end
function Sandbox:fault(spec) return checked(self, "POST", "fault", spec).id end
function Sandbox:expire(what, user) return checked(self, "POST", "expire", { what = what, user = user }) end
function Sandbox:consent(decision, error_code)
  return checked(self, "POST", "consent", { decision = decision, error_code = error_code })
end

-- A signed API call: opts.claims (signed with opts.key / the demo contract key; nonce,
-- timestamp and client_id added when absent) or opts.jwt; opts.body; opts.headers.
function Sandbox:call(method, path, opts)
  opts = opts or {}
  local headers = {}
  for k, v in pairs(opts.headers or {}) do
    headers[k] = v
  end
  local jwt = opts.jwt
  if jwt == nil and opts.claims then
    jwt = _M.sign(_M.claims(opts.claims), opts)
  end
  if jwt then
    headers.authorization = "Bearer " .. jwt
  end
  return self:request{ method = method, path = path, headers = headers, body = opts.body,
                       timeout = opts.timeout }
end

-- Client JWTs (digime.core directly) -------------------------------------------------------

local function core()
  return require "digime.core"
end

function _M.demo()
  return require "digime.sandbox.demo_contract"
end

function _M.client_id(contract)
  contract = contract or _M.demo()
  return contract.application_id .. "_" .. contract.contract_id
end

function _M.nonce()
  return core().random_alnum(32)
end

-- Fills in client_id (demo contract), nonce and timestamp (ms) unless given; a value of
-- false removes a claim.
function _M.claims(t)
  local c = { client_id = _M.client_id(), nonce = _M.nonce(), timestamp = _M.now_ms() }
  for k, v in pairs(t or {}) do
    if v == false then
      c[k] = nil
    else
      c[k] = v
    end
  end
  return c
end

-- claims -> compact JWS. opts.private_key (PEM; default: the demo contract's), opts.key (a
-- digime.key), opts.header (default {"alg":"PS512","typ":"JWT"}), opts.salt (PSS salt length).
function _M.sign(claims, opts)
  opts = opts or {}
  local c = core()
  local key = opts.key or assert(c.private_key(opts.private_key or _M.demo().private_key))
  local header = opts.header or { alg = "PS512", typ = "JWT" }
  local input = c.b64url_encode(cjson.encode(header)) .. "." .. c.b64url_encode(cjson.encode(claims))
  local sig
  if opts.salt then
    sig = key:sign_ps512(input, opts.salt)
  else
    sig = key:sign_ps512(input)
  end
  return input .. "." .. c.b64url_encode(sig)
end

-- PKCE pair as the SDK makes it (doc/protocol.md "PKCE"): -> verifier, challenge
function _M.pkce()
  local c = core()
  local verifier = c.b64url_encode(c.random_alnum(32))
  return verifier, c.b64url_encode(c.sha256(verifier))
end

-- Decodes a compact JWS without verifying: -> header, payload, signing_input, signature
-- (payload nil when it is not JSON).
function _M.decode_jwt(jwt)
  local c = core()
  local h, p, s = jwt:match("^([^.]*)%.([^.]*)%.([^.]*)$")
  if not h then
    return nil
  end
  local hj = c.b64url_decode(h)
  local pj = c.b64url_decode(p)
  local okh, header = pcall(cjson.decode, hj or "")
  local okp, payload = pcall(cjson.decode, pj or "")
  return okh and header or nil, okp and payload or nil, h .. "." .. p, c.b64url_decode(s)
end

-- Parses a query string (for callback URLs).
function _M.parse_query(q)
  local out = {}
  for pair in (q or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    local function un(s)
      return (s:gsub("+", " "):gsub("%%(%x%x)", function(x) return string.char(tonumber(x, 16)) end))
    end
    out[un(k)] = un(v)
  end
  return out
end

-- The raw-HTTP helpers the sandbox's own specs share (no SDK code there, so that a mistake in
-- the SDK cannot hide one in the sandbox): the agent a request carries, JSON answers, the query
-- of a redirect, USER-claims calls.

_M.AGENT = { sdk = { name = "lua-digime", version = "0.1.0", meta = { lua = _VERSION } } }

function _M.json(res)
  return cjson.decode(res.body)
end

function _M.query_of(location)
  return _M.parse_query(location:match("%?([^#]*)"))
end

-- A USER-claims call on sb: token is a token payload or an access token's value.
function _M.ucall(sb, method, path, token, opts)
  opts = opts or {}
  local at = type(token) == "table" and token.access_token.value or token
  return assert(sb:call(method, path, { claims = { access_token = at }, body = opts.body,
                                        headers = opts.headers, timeout = opts.timeout }))
end

-- authorize -> consent -> exchange over raw HTTP, the consent redirecting to callback:
-- -> the token endpoint's payload, the authorize answer's session. opts.storage_ref goes on
-- the consent page; with opts.expect_failure -> the consent redirect's query instead.
function _M.login(sb, callback, opts)
  local luassert = require "luassert"
  opts = opts or {}
  local verifier, challenge = _M.pkce()
  local res = assert(sb:call("POST", "oauth/authorize", {
    claims = { code_challenge = challenge, code_challenge_method = "S256",
               redirect_uri = callback, response_mode = "query", response_type = "code",
               state = "s" },
    body = { agent = _M.AGENT } }))
  luassert.equal(201, res.status, res.body)
  local body = _M.json(res)
  local _, p = _M.decode_jwt(body.token)
  local url = sb.onboard_url .. "authorize?code=" .. p.preauthorization_code
  if opts.storage_ref then
    url = url .. "&storageRef=" .. require("encode").urlencode(opts.storage_ref)
  end
  local page = assert(sb:request{ url = url })
  luassert.equal(302, page.status)
  local q = _M.query_of(page.headers.location)
  if opts.expect_failure then
    return q
  end
  luassert.equal("true", q.success, page.headers.location)
  local tres = assert(sb:call("POST", "oauth/token", {
    claims = { code = q.code, code_verifier = verifier, grant_type = "authorization_code" } }))
  luassert.equal(201, tres.status, tres.body)
  local _, t = _M.decode_jwt(_M.json(tres).token)
  return t, body.session
end

return _M
