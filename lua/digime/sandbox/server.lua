-- digime-sandbox: a local digi.me API served with lua-http on cqueues (doc/sandbox.md).
--
-- This file owns the process: flags, keys, the listening socket, the first line on stdout,
-- signals, and the life of one request (faults, dispatch, writing the answer, stats, log).
-- Which file answers which endpoint is routes.lua's table.

local cqueues = require "cqueues"
local signal = require "cqueues.signal"
local http_server = require "http.server"
local http_headers = require "http.headers"
local cjson = require "cjson.safe"
local core = require "digime.core"

local config = require "digime.sandbox.config"
local state_mod = require "digime.sandbox.state"
local wire = require "digime.sandbox.wire"
local util = require "digime.sandbox.util"
local api = require "digime.sandbox.api"
local library = require "digime.sandbox.library"
local demo_contract = require "digime.sandbox.demo_contract"
local bodies = require "digime.sandbox.body"
local storage = require "digime.sandbox.storage"
local conns = require "digime.sandbox.conns"
local relay = require "digime.sandbox.relay"
local tls_peek = require "digime.sandbox.tls_peek"
local routes = require "digime.sandbox.routes"

local monotime = cqueues.monotime
local pairs, ipairs, type, tostring = pairs, ipairs, type, tostring
local math_floor = math.floor
local stderr = io.stderr

local _M = {}

local BODY_TIMEOUT = 60        -- seconds to receive a request body
local WRITE_TIMEOUT = 60       -- seconds to write an answer

local finish_body     -- below: what is left of a request body after the answer
local accept          -- below: a new connection

local function log_err(...)
  stderr:write("digime-sandbox: ", ...)
  stderr:write("\n")
end

-- Setup --------------------------------------------------------------------------------------

local read_file = util.read_file

local function load_contracts(cfg)
  local list = cfg.contracts
  if #list == 0 then
    list = { { application_id = demo_contract.application_id,
               contract_id = demo_contract.contract_id,
               public_key = demo_contract.public_key } }
  end
  local contracts = {}
  for _, c in ipairs(list) do
    local pem = c.public_key
    if not pem then
      local err
      pem, err = read_file(c.public_key_file)
      if not pem then
        return nil, "contract " .. c.application_id .. "_" .. c.contract_id .. ": "
                    .. tostring(err)
      end
    end
    -- A private key file works too: verification only needs its public half.
    local key = core.public_key(pem) or core.private_key(pem)
    if not key then
      return nil, "contract " .. c.application_id .. "_" .. c.contract_id
                  .. ": not an RSA public key PEM"
    end
    contracts[c.application_id .. "_" .. c.contract_id] = {
      application_id = c.application_id, contract_id = c.contract_id, key = key,
    }
  end
  return contracts
end

local function jwk_of(key, kid)
  local n, e = key:jwk()
  return { kid = kid, kty = "RSA", alg = "PS512", use = "sig", n = n, e = e,
           pem = key:public_pem("spki") }
end

-- The JWKS signing key, and the foreign one whose JWKS a well-behaved client never fetches.
local function make_signer()
  local key = core.generate_key(2048)
  local pem = key:public_pem("spki")
  local kid = "sandbox-" .. core.b64url_encode(core.sha256(pem)):sub(1, 16)
  local evil_key = core.generate_key(2048)
  return {
    key = key, pem = pem, kid = kid, jwk = jwk_of(key, kid),
    -- Same kid as the genuine key: a client that fetched the foreign JWKS would find a match.
    evil_key = evil_key, evil_jwk = jwk_of(evil_key, kid),
  }
end

local function url_host(host)
  if host == "0.0.0.0" then
    return "127.0.0.1"
  elseif host == "::" then
    return "[::1]"
  elseif host:find(":", 1, true) then
    return "[" .. host .. "]"
  end
  return host
end

-- Builds the sandbox (no socket yet): -> app | nil, err
function _M.new(cfg)
  local contracts, err = load_contracts(cfg)
  if not contracts then
    return nil, err
  end
  local lib
  lib, err = library.new(cfg)
  if not lib then
    return nil, err
  end
  local app = {
    cfg = cfg,
    contracts = contracts,
    signer = make_signer(),
    state = state_mod.new(cfg),
    library = lib,
    urls = {},
  }
  conns.init(app)
  return app
end

local function set_urls(app, scheme, host, port)
  local origin = scheme .. "://" .. url_host(host) .. ":" .. port
  app.urls = {
    origin = origin,
    base_url = origin .. "/v1.7/",
    onboard_url = origin .. "/apps/saas/",
    cloud_base_url = origin .. "/cloud/v1/",
    control_url = origin .. "/sandbox/",
  }
  local s = app.signer
  s.origin = origin
  s.jku = app.urls.base_url .. "jwks/oauth"
  s.evil_jku = origin .. "/evil/jwks"
  s.lookalike_jku = origin .. "/v1.7/jwks/oauth.evil.example"
end

-- One request ------------------------------------------------------------------------------

local function header_table(h)
  local t = {}
  for name, value in h:each() do
    if name:sub(1, 1) ~= ":" then
      local old = t[name]
      t[name] = old and (old .. ", " .. value) or value
    end
  end
  return t
end

local function read_body(self)
  if self._body == nil then
    bodies.continue(self)
    self._body = self.stream:get_body_as_string(BODY_TIMEOUT) or ""
  end
  return self._body
end

-- Closes the connection without (the rest of) an answer.
local function drop(stream)
  local conn = stream.connection
  local sock = conn and conn.take_socket and conn:take_socket()
  if sock then
    sock:flush("n", 1)
    sock:close()
  else
    stream:shutdown()
  end
end

-- After the answer: a request body the handler left unread (a refusal before the body, a
-- 413) is read and thrown away when little of it is left, and otherwise, or when the answer
-- says "connection: close", the connection is closed. lua-http's own clean-up would spin
-- without yielding on a body whose client has gone away.
local DRAIN_AFTER = 1024 * 1024

local function unread(stream)
  return stream.state == "open" or stream.state == "half closed (local)"
end

function finish_body(stream, res, failed)
  if not unread(stream) then
    return
  end
  local close = failed or (res.headers and res.headers.connection == "close")
  local got = 0
  while not close and got <= DRAIN_AFTER and unread(stream) do
    local chunk = stream:get_next_chunk(0.2)
    if not chunk then
      break
    end
    got = got + #chunk
  end
  if unread(stream) then
    drop(stream)
  end
end

-- Waits until the client gives up (closes its end), or ms when given, answering nothing.
local function hang(stream, ms)
  local deadline = ms and monotime() + ms / 1000
  local conn = stream.connection
  while conn and conn.socket do
    if deadline and monotime() >= deadline then
      break
    end
    local sock = conn.socket
    local ok, _, errno = sock:fill(1, 0.25)
    if not ok and errno ~= 110 --[[ETIMEDOUT]] then
      break   -- EOF or error: the client is gone
    end
    if ok then
      -- Bytes (a pipelined request) are waiting; they stay buffered. Just wait.
      cqueues.sleep(0.25)
    end
  end
  drop(stream)
end

-- Writes a streamed body (res.stream() gives chunks, nil at the end; res.content_length
-- bytes in all). With truncate, half of them, then the connection closes.
-- -> ok, err, bytes written
local function write_stream(stream, res, truncate)
  local limit = truncate and math_floor(res.content_length / 2) or math.huge
  local sent = 0
  local since_gc = 0
  while true do
    local chunk = res.stream()
    if chunk == nil then
      break
    end
    if #chunk > 0 then
      if sent + #chunk > limit then
        chunk = chunk:sub(1, limit - sent)
      end
      local ok, err = stream:write_chunk(chunk, false, WRITE_TIMEOUT)
      if not ok then
        return nil, err, sent
      end
      sent = sent + #chunk
      since_gc = since_gc + #chunk
      if sent >= limit then
        drop(stream)
        return true, nil, sent
      end
      if since_gc >= 8 * 1024 * 1024 then
        -- Chunks are garbage at once; keep the heap near its working size.
        collectgarbage("step", 0)
        since_gc = 0
      end
    end
  end
  if truncate then
    drop(stream)
    return true, nil, sent
  end
  local ok, err = stream:write_chunk("", true, WRITE_TIMEOUT)
  return ok, err, sent
end

-- -> ok, err, body bytes written
local function write_answer(stream, req, res, truncate)
  local h = http_headers.new()
  h:append(":status", tostring(math_floor(res.status)))
  for k, v in pairs(res.headers or {}) do
    h:append(k:lower(), tostring(v))
  end
  local body = res.body or ""
  if type(body) == "table" then
    body = wire.encode(body)
  end
  -- HEAD answers carry the length the GET would have (content_length); streams always do.
  h:upsert("content-length", tostring(res.content_length or #body))
  if req.method == "HEAD" then
    return stream:write_headers(h, true, WRITE_TIMEOUT)
  end
  if res.stream then
    local ok, err = stream:write_headers(h, false, WRITE_TIMEOUT)
    if not ok then
      return nil, err, 0
    end
    return write_stream(stream, res, truncate)
  end
  if truncate then
    -- Full content-length, half the body, then the connection closes.
    local ok = stream:write_headers(h, false, WRITE_TIMEOUT)
    local half = math_floor(#body / 2)
    if ok and #body > 1 then
      stream:write_chunk(body:sub(1, half), false, WRITE_TIMEOUT)
    end
    drop(stream)
    return true, nil, half
  end
  local ok, err = stream:write_headers(h, body == "", WRITE_TIMEOUT)
  if ok and body ~= "" then
    ok, err = stream:write_chunk(body, true, WRITE_TIMEOUT)
  end
  return ok, err, ok and #body or 0
end

local function fault_answer(f)
  local body = f.body
  local headers = {}
  for k, v in pairs(f.headers or {}) do
    headers[k:lower()] = v
  end
  if type(body) == "table" then
    body = wire.encode(body)
    headers["content-type"] = headers["content-type"] or "application/json"
  end
  return { status = f.status, headers = headers, body = body or "" }
end

-- A fault taken for a request: -> res, outcome, truncate, reset_after (any may be nil)
local function apply_fault(f)
  local a = f.action
  if a == "delay" then
    cqueues.sleep(f.ms / 1000)
  elseif a == "status" then
    return fault_answer(f)
  elseif a == "reset" then
    if f.after then
      return nil, nil, nil, true
    end
    return nil, "reset"
  elseif a == "hang" then
    return nil, "hang"
  elseif a == "truncate" then
    return nil, nil, true
  elseif a == "close_after_answer" then
    return nil, "closed after answer"
  end
end

-- The request table the routes see, from the stream's headers.
local function new_request(stream, rh)
  local method = rh:get(":method")
  local target = rh:get(":path") or "/"
  local path, query = target:match("^([^?]*)%??(.*)$")
  local crec = conns.of(stream)
  local peer_ip = crec and crec.peer_ip
  if not peer_ip then
    local _
    _, peer_ip = stream:peername()
  end
  local req = {
    stream = stream, method = method, path = path, raw_query = query,
    query = wire.parse_query(query), headers = header_table(rh), peer_ip = peer_ip,
    authority = rh:get(":authority"),   -- the Host header (lua-http names it so)
    body = read_body,
    -- Never put token values or the Authorization header here.
    log = { method = method, path = path, conn = crec and crec.id,
            conn_request = crec and crec.requests },
  }
  return req, crec
end

-- An API request arrives: the in-flight counts and their peaks, fetch and connection counts.
local function count_arrival(app, req, crec, download)
  local stats = app.state.stats
  stats.inflight = stats.inflight + 1
  if stats.inflight > stats.max_inflight then
    stats.max_inflight = stats.inflight
  end
  if download then
    -- From arrival to the last byte, faults (a delay, a hang) included.
    stats.inflight_downloads = stats.inflight_downloads + 1
    if stats.inflight_downloads > stats.max_inflight_downloads then
      stats.max_inflight_downloads = stats.inflight_downloads
    end
  end
  api.count_fetch(app, req)
  conns.api_request(app, crec)
end

-- The route's answer, unless a fault has already decided it: a handler that throws or
-- returns no answer gives a 500.
local function route_answer(app, req)
  local ok, r = xpcall(routes.dispatch, debug.traceback, app, req)
  if ok and type(r) == "table" and r.status then
    return r
  end
  log_err("handler error: ", tostring(r))
  return wire.error(500, "InternalError", "The sandbox failed on this request (see its stderr)")
end

-- Writes the answer (whole or truncated) and counts downloads: -> the outcome.
local function send_answer(app, stream, req, res, outcome, truncate, download)
  if truncate then
    outcome = "truncated"
  end
  local wok, ok, err, sent = pcall(write_answer, stream, req, res, truncate)
  if not wok then
    log_err("writing an answer: ", tostring(ok))
    ok, err = nil, ok
    pcall(drop, stream)
  end
  local stats = app.state.stats   -- after the write: a reset may have replaced it meanwhile
  if not ok and err then
    outcome = "write failed: " .. tostring(err)
  elseif ok and download and not truncate and res.status == 200 then
    stats.downloads = stats.downloads + 1
  end
  if download and sent then
    stats.download_bytes = stats.download_bytes + sent
  end
  if not truncate then
    pcall(finish_body, stream, res, not (wok and ok))
  end
  if outcome == "closed after answer" then
    -- No "connection: close": the client finds out on its next request.
    pcall(drop, stream)
  end
  return outcome
end

-- An API request is over: the in-flight counts go down and the log gets its entry.
local function count_departure(app, req, res, outcome, download, t0)
  local st = app.state
  -- st.stats afresh: a reset may have replaced it meanwhile.
  st.stats.inflight = st.stats.inflight - 1
  if download then
    st.stats.inflight_downloads = st.stats.inflight_downloads - 1
  end
  local e = req.log
  e.status = res and res.status or nil
  e.outcome = outcome
  e.ms = math_floor((monotime() - t0) * 1000 + 0.5)
  e.time = os.time()
  st:record(e)
end

local function handle(app, stream)
  local t0 = monotime()
  local rh = stream:get_headers(BODY_TIMEOUT)
  if not rh then
    return
  end
  local req, crec = new_request(stream, rh)
  local method, path = req.method, req.path

  local st = app.state
  local control_req = path:sub(1, 9) == "/sandbox/"
  local download = not control_req and api.is_download(method, path)
  if not control_req then
    count_arrival(app, req, crec, download)
  end

  local f = not control_req and st:take_fault(method, path, false)
  local res, outcome, truncate, reset_after
  if f then
    req.log.fault = f.id
    res, outcome, truncate, reset_after = apply_fault(f)
  end

  if (outcome == nil or outcome == "closed after answer") and res == nil then
    res = route_answer(app, req)
  end

  if outcome == "reset" or reset_after then
    outcome = "reset"
    drop(stream)
  elseif outcome == "hang" then
    hang(stream, f.ms)
  else
    outcome = send_answer(app, stream, req, res, outcome, truncate, download)
  end

  if not control_req then
    count_departure(app, req, res, outcome, download, t0)
  end
end

-- The process ------------------------------------------------------------------------------

-- A client's connection: served directly, or through the latency relay.
function accept(app, cq, socket)
  local _, ip = socket:peername()
  local rec = { peer_ip = ip }
  if relay.wanted(app.cfg) then
    rec.relay = true
    socket = relay.join(cq, app.cfg, socket)
  end
  cq:wrap(conns.serve, app, cq, socket, rec, handle)
end

-- Listens and returns the running server: -> srv, info | nil, err
function _M.listen(app)
  local cfg = app.cfg
  local tls_setup
  if cfg.tls then
    local tls = require "digime.sandbox.tls"
    local err
    tls_setup, err = tls.setup(cfg)
    if not tls_setup then
      return nil, err
    end
  end
  if tls_setup then
    app.tls_ctx = tls_setup.ctx
    app.tls_info = tls_peek.new_info(tls_setup.ctx)
  end
  -- TLS and the connections are conns.lua's (accept() below): lua-http only accepts.
  local srv, err = http_server.listen{
    host = cfg.host,
    port = cfg.port,
    reuseaddr = true,
    tls = false,
    version = 1.1,
    onstream = function(_, stream)
      handle(app, stream)
    end,
    onerror = function(_, context, op, e)
      -- Client-side trouble (a reset, a bad request) must never stop the sandbox.
      log_err(tostring(op), ": ", tostring(e), " (", tostring(context), ")")
    end,
  }
  if not srv then
    return nil, "cannot listen on " .. tostring(cfg.host) .. ":" .. tostring(cfg.port) .. ": "
                .. tostring(err)
  end
  local ok, lerr = srv:listen()
  if not ok then
    return nil, "cannot listen on " .. tostring(cfg.host) .. ":" .. tostring(cfg.port) .. ": "
                .. tostring(lerr)
  end
  srv.add_socket = function(self, socket)
    accept(app, self.cq, socket)
    return true
  end
  local _, _, port = srv:localname()
  set_urls(app, tls_setup and "https" or "http", cfg.host, port)
  local info = {
    base_url = app.urls.base_url,
    onboard_url = app.urls.onboard_url,
    cloud_base_url = app.urls.cloud_base_url,
    control_url = app.urls.control_url,
    ca_file = tls_setup and tls_setup.ca_file or nil,
  }
  local tls_cleanup = tls_setup and tls_setup.cleanup
  app.cleanup = function()
    storage.clear(app)      -- stored objects spilled to temporary files
    if tls_cleanup then
      tls_cleanup()
    end
  end
  return srv, info
end

local function stop(app, code)
  pcall(app.cleanup)
  io.stdout:flush()
  os.exit(code or 0)
end

-- Exits when the process that started us is gone (DIGIME_SANDBOX_PARENT_PID), so a crashed
-- test run leaves no sandbox behind.
local function watch_parent(app, srv, pid)
  srv.cq:wrap(function()
    while true do
      cqueues.sleep(1)
      local f = io.open("/proc/" .. pid .. "/stat", "r")
      if not f then
        stop(app, 0)
      end
      local stat = f:read("*l") or ""
      f:close()
      if stat:match("^%d+ %b() Z") then   -- a zombie parent is gone too
        stop(app, 0)
      end
    end
  end)
end

function _M.main(argv)
  argv = argv or {}
  local args = {}
  for i = 1, #argv do
    args[i] = argv[i]
  end
  local cfg, err = config.parse(args)
  if not cfg then
    stderr:write("digime-sandbox: ", err, "\n", config.usage)
    os.exit(2)
  end
  if cfg.help then
    io.stdout:write(config.usage)
    os.exit(0)
  end

  -- Signals go through a signalfd (cqueues.signal): block them before anything else runs.
  signal.block(signal.SIGTERM, signal.SIGINT)

  local app
  app, err = _M.new(cfg)
  if not app then
    log_err(err)
    os.exit(1)
  end
  local srv, info = _M.listen(app)
  if not srv then
    log_err(info)
    os.exit(1)
  end

  local listener = signal.listen(signal.SIGTERM, signal.SIGINT)
  srv.cq:wrap(function()
    while true do
      if listener:wait() then
        stop(app, 0)
      end
    end
  end)
  if app.library.big then
    -- The manifest's hash of big.bin, ahead of the first GET /sandbox/manifest.
    srv.cq:wrap(function()
      app.library:big_sha256(app.library.big)
    end)
  end
  local ppid = tonumber(os.getenv("DIGIME_SANDBOX_PARENT_PID") or "")
  if ppid then
    watch_parent(app, srv, math_floor(ppid))
  end

  -- cjson writes "/" as "\/"; the first line is read by people too.
  io.stdout:write((assert(cjson.encode(info)):gsub("\\/", "/")), "\n")
  io.stdout:flush()

  while true do
    local ok, lerr = srv:loop()
    if not ok then
      log_err("loop: ", tostring(lerr))
    end
  end
end

return _M
