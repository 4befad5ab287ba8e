--- An example web app in OpenResty (nginx + the lua module): a person connects their digi.me,
-- the app lists the files of their library and shows one.
--
-- Served by examples/openresty/nginx.conf (run.sh starts it against a sandbox). Routes, each a
-- location in locations.conf calling one function here:
--
--   GET /               start page: "Connect your digi.me" (or a link to the files)
--   GET /connect        get_authorize_url, the code verifier kept server side under `state`,
--                       302 to digi.me
--   GET /callback       digi.me sends the person back here: the state is checked (and taken:
--                       it works once), success=false gets a page naming the error code, the
--                       code is exchanged for the user's token, kept server side
--   GET /files          read_session + read_file_list: the library's files
--   GET /file?name=...  read_file: one file
--
-- Where things live:
--   - `state` -> { code verifier, browser session, what to do next } in the shared dict
--     digime_app_states, for 10 minutes: any worker can serve the callback, and the verifier
--     is never in a URL or a cookie. One connection in progress per browser session; a full
--     store refuses new ones (503) rather than dropping those under way.
--   - The user's token -> the shared dict digime_app_sessions, keyed by a random session id
--     that the browser holds in an HttpOnly cookie (a new id at every sign-in). A real app
--     keeps tokens in its database (they outlive an nginx restart there), encrypted at rest.
--   - Every call that used the token returns the token in force (refreshed when it had
--     expired): the app stores it each time, because refresh tokens rotate.
--   - When the refresh token itself is dead (ServerError InvalidToken), the app sends the
--     person through digi.me again: get_reauthorize_url -> redirect -> /callback -> exchange.
--
-- Settings come from the environment (declared with `env` in nginx.conf):
--   DIGIME_APP_URL      the app's public origin, e.g. https://app.example (the callback is
--                       DIGIME_APP_URL .. "/callback"; never taken from the Host header)
--   DIGIME_BASE_URL, DIGIME_ONBOARD_URL   digi.me's URLs (the sandbox's; unset: production)
--   DIGIME_APPLICATION_ID, DIGIME_CONTRACT_ID, DIGIME_PRIVATE_KEY_FILE   your contract; unset:
--                       the sandbox's demo contract (TEST ONLY: its private key is public)
--   DIGIME_TRANSPORT    optional: "curl" forces the blocking libcurl transport
--   DIGIME_REDIS        optional: "host:port" or "unix:/path" of a Redis that several nginx
--                       (hosts behind a load balancer) share: the states, the sessions and
--                       the SDK's store (JWKS, refreshes) live there instead of the shared
--                       dicts, so a connection started on one host can finish on another
local digime = require "digime"
local core = require "digime.core"
local cjson = require "cjson.safe"

local ngx = ngx
local type, tostring, pairs, ipairs = type, tostring, pairs, ipairs
local concat, sort = table.concat, table.sort
local format = string.format

local _M = {}

local STATE_TTL = 600               -- seconds a started connection may take to come back
local SESSION_TTL = 30 * 24 * 3600  -- how long the app remembers a connected browser
local LIST_WAIT = 10                -- seconds /files waits for the library's sync to finish
local SHOW_MAX = 256 * 1024         -- bytes of a file shown on its page
-- The session cookie. Over https it is a "__Host-" cookie (RFC 6265bis §4.1.3.2): Secure,
-- Path=/, no Domain, so a sibling subdomain cannot plant one (and log a victim into the
-- attacker's session). Plain http (a local run) cannot have that prefix.
local COOKIE_NAME = "digime_sid"

local conf        -- init()
local sdk         -- one SDK object per worker, made on first use (sdk_object)

-- Settings -----------------------------------------------------------------------------------

local function env(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then error("cannot read " .. path .. ": " .. tostring(err)) end
  local s = f:read("*a")
  f:close()
  return s
end

--- Reads the settings; called in init_by_lua_block, so that a wrong setting stops nginx
-- at start with a clear message instead of failing the first request.
function _M.init()
  local app_url = env("DIGIME_APP_URL")
  if not app_url or not app_url:match("^https?://[^/]+$") then
    error("examples/openresty: set DIGIME_APP_URL to the app's origin (e.g. http://127.0.0.1:8080,"
          .. " no trailing slash) and declare it with `env DIGIME_APP_URL;` in nginx.conf")
  end
  local contract
  if env("DIGIME_PRIVATE_KEY_FILE") then
    contract = { application_id = env("DIGIME_APPLICATION_ID"), id = env("DIGIME_CONTRACT_ID"),
                 private_key = read_file(env("DIGIME_PRIVATE_KEY_FILE")) }
    if not contract.application_id or not contract.id then
      error("examples/openresty: DIGIME_PRIVATE_KEY_FILE needs DIGIME_APPLICATION_ID and DIGIME_CONTRACT_ID")
    end
  else
    local demo = require "digime.sandbox.demo_contract"   -- TEST ONLY: its private key is public
    contract = { application_id = demo.application_id, id = demo.contract_id,
                 private_key = demo.private_key }
  end
  local redis = env("DIGIME_REDIS")
  for _, name in ipairs{ "digime_app_states", "digime_app_sessions" } do
    if not redis and not ngx.shared[name] then
      error("examples/openresty: nginx.conf needs `lua_shared_dict " .. name .. " ...;`")
    end
  end
  conf = {
    app_url = app_url,
    callback = app_url .. "/callback",
    secure = app_url:match("^https:") ~= nil,
    base_url = env("DIGIME_BASE_URL"),
    onboard_url = env("DIGIME_ONBOARD_URL"),
    application_id = contract.application_id,
    contract = { id = contract.id, private_key = contract.private_key },
    jwks_dict = ngx.shared.digime_jwks and "digime_jwks" or nil,
  }
  if redis then
    local path = redis:match("^unix:(.+)$")
    local host, port = redis:match("^([^:]+):(%d+)$")
    if not path and not host then
      error("examples/openresty: DIGIME_REDIS must be host:port or unix:/path")
    end
    conf.redis = { type = "redis", socket = path, host = host, port = tonumber(port),
                   prefix = "digime-example:" }
  end
end

-- Where the app keeps states and sessions: the shared dicts (one nginx), or Redis (many).
-- kv(ns) -> get, set, add, delete and claim on the namespace "states" or "sessions". set and
-- add never evict anything to make room (a shared dict's safe_set/safe_add; Redis should run
-- with its default maxmemory-policy noeviction): a full store refuses. claim(key) is true
-- for the first caller only, and needs no new room in a shared dict (incr of a key made
-- when the flow was reserved).
local kv_of = {}
local function kv(ns)
  if kv_of[ns] then return kv_of[ns] end
  local k
  if conf.redis then
    local r = require("digime.store.redis").new(conf.redis)
    local pre = conf.redis.prefix .. ns .. ":"
    k = {
      get = function(_, key) return r:get(pre .. key) end,
      set = function(_, key, v, ttl) return r:set(pre .. key, v, ttl) end,
      add = function(_, key, v, ttl) return r:add(pre .. key, v, ttl) end,
      delete = function(_, key)         -- the store deletes a value it names: read it first
        local v = r:get(pre .. key)
        if v then r:delete_if(pre .. key, v) end
      end,
      claim = function(_, key) return r:add(pre .. "claimed:" .. key, "1", STATE_TTL) end,
    }
  else
    local d = ngx.shared["digime_app_" .. ns]
    k = {
      get = function(_, key) return d:get(key) end,
      set = function(_, key, v, ttl) return d:safe_set(key, v, ttl) end,
      add = function(_, key, v, ttl) return d:safe_add(key, v, ttl) end,
      delete = function(_, key) d:delete(key) end,
      claim = function(_, key) return d:incr(key, 1) == 1 end,
    }
  end
  kv_of[ns] = k
  return k
end

-- The SDK object of this worker, made on first use (in a content handler, where cosockets
-- work) rather than in init_by_lua; the SDK's modules are preloaded there all the same.
local function sdk_object()
  if sdk then return sdk end
  local err
  sdk, err = digime.init{
    application_id = conf.application_id,
    base_url = conf.base_url,
    onboard_url = conf.onboard_url,
    -- The JWKS cache and the refresh lock: shared by all workers (the shared dict), or by
    -- every host (Redis).
    store = conf.redis or (conf.jwks_dict and { type = "ngx_shared", dict = conf.jwks_dict }),
    -- Unset: automatic, the cosocket transport (requests wait without blocking the worker).
    -- DIGIME_TRANSPORT=curl forces the blocking libcurl transport (for comparison only).
    transport = env("DIGIME_TRANSPORT"),
  }
  if not sdk then
    ngx.log(ngx.ERR, "digime.init failed: ", tostring(err))
    return nil, err
  end
  return sdk
end

-- Pages --------------------------------------------------------------------------------------

local ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }

--- Every value put into HTML goes through here (text and attribute values alike).
local function esc(v)
  return (tostring(v):gsub("[&<>\"']", ESC))
end
_M.escape_html = esc

local STYLE = [[
body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}
a.button{display:inline-block;padding:.6rem 1.1rem;background:#2b6de8;color:#fff;border-radius:.4rem;
text-decoration:none;font-weight:600}
pre{background:#f4f4f4;padding:1rem;overflow:auto;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse}td,th{padding:.25rem .8rem;border-bottom:1px solid #ddd;text-align:left}
.muted{color:#666}.error{color:#a00}]]

-- Sends a whole HTML page. `title` is text (escaped here); `body` is HTML built with esc().
local function page(status, title, body)
  ngx.status = status
  ngx.header["Content-Type"] = "text/html; charset=utf-8"
  ngx.header["Cache-Control"] = "no-store"
  ngx.header["X-Content-Type-Options"] = "nosniff"
  ngx.header["Referrer-Policy"] = "no-referrer"
  ngx.header["Content-Security-Policy"] =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
  ngx.print("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width\"><title>", esc(title),
            " - digi.me example</title><style>", STYLE, "</style></head><body>\n<h1>",
            esc(title), "</h1>\n", body, "\n</body></html>\n")
  return ngx.exit(ngx.OK)
end

local function redirect(url)
  ngx.header["Cache-Control"] = "no-store"
  ngx.header["Referrer-Policy"] = "no-referrer"
  return ngx.redirect(url, 302)
end

-- A page for an SDK error: its kind, code and message are safe to show (the SDK never puts
-- secrets in them), but are escaped like everything else.
local function error_page(status, title, err)
  local e = type(err) == "table" and err or { message = tostring(err) }
  return page(status, title, format(
    "<p class=\"error\">%s</p><p class=\"muted\">%s %s</p><p><a href=\"/\">Back to the start</a></p>",
    esc(e.message or "unknown error"), esc(e.kind or ""), esc(e.code or "")))
end

-- Sessions -----------------------------------------------------------------------------------

local function random_id()
  return core.random_alnum(32)   -- CSPRNG, 32 characters of [A-Za-z0-9]
end

local function valid_id(s)
  return type(s) == "string" and #s == 32 and not s:find("[^%w]")
end

local function cookie_name()
  return conf.secure and "__Host-" .. COOKIE_NAME or COOKIE_NAME
end

local function session_id()
  local header = ngx.var.http_cookie
  if type(header) ~= "string" then return nil end
  local name = cookie_name()
  for k, v in header:gmatch("([^=;%s]+)=([^;]*)") do
    if k == name and valid_id(v) then return v end
  end
  return nil
end

local function set_session_cookie(sid)
  ngx.header["Set-Cookie"] = cookie_name() .. "=" .. sid .. "; Path=/; HttpOnly; SameSite=Lax"
    .. (conf.secure and "; Secure" or "")
end

local function load_session(sid)
  local raw = sid and kv("sessions"):get(sid)
  return raw and cjson.decode(raw) or nil
end

local function save_session(sid, rec)
  local ok, err = kv("sessions"):set(sid, cjson.encode(rec), SESSION_TTL)
  if not ok then ngx.log(ngx.ERR, "cannot keep the session: ", err) end
end

-- Keeps the token a call returned (or its error carried): the newest token is the one to use.
local function keep_token(sid, rec, token)
  if type(token) == "table" and token.access_token then
    rec.token = token
    save_session(sid, rec)
  end
end

-- Connecting ----------------------------------------------------------------------------------

-- The store of started connections (digime_app_states), per state:
--   state           -> the flow { verifier, sid, kind, ret } (a placeholder until digi.me answers)
--   "claim:" state  -> 0, incremented by the callback: the first to make it 1 finishes the flow
--   "pending:" sid  -> the state of the session's connection in progress (one per session)
-- Nothing is ever evicted to make room (safe_add, safe_set): when the store is full, a new
-- connection is refused (503) and the ones under way are kept. A flood of /connect can then
-- hold up new sign-ins (put the rate limit of nginx.conf in front of it) but cannot end one
-- that has started.
local PLACEHOLDER = ("-"):rep(240)   -- as long as a flow record: replacing it takes no room

local function forget_flow(states, state)
  states:delete(state)
  states:delete("claim:" .. state)
end

-- Reserves the room for a new flow of session sid, dropping the session's previous one:
-- -> true | nil (the store is full: nothing kept)
local function reserve_flow(states, sid, state)
  local previous = states:get("pending:" .. sid)
  if previous then forget_flow(states, previous) end
  if not states:set("pending:" .. sid, state, STATE_TTL) then return nil end
  if states:add("claim:" .. state, 0, STATE_TTL)
     and states:add(state, PLACEHOLDER, STATE_TTL) then
    return true
  end
  forget_flow(states, state)
  states:delete("pending:" .. sid)
  return nil
end

local function busy()
  ngx.header["Retry-After"] = "60"
  return page(503, "Too many connections in progress", "<p>Try again in a minute.</p>")
end

-- Starts a trip through digi.me: kind "authorize" (first time) or "reauthorize" (the refresh
-- token has died). The code verifier stays here, under a random state, for STATE_TTL.
local function start_flow(sid, kind, token, return_to)
  local s, ierr = sdk_object()
  if not s then return error_page(500, "The digi.me SDK is not set up", ierr) end
  local states = kv("states")
  local state = random_id()
  -- Room first: a full store costs no call to digi.me (each call spends the contract's quota).
  if not reserve_flow(states, sid, state) then
    ngx.log(ngx.WARN, "the store of started connections is full: refused")
    return busy()
  end
  local res, err
  if kind == "authorize" then
    res, err = s:get_authorize_url{ contract = conf.contract, callback = conf.callback,
                                    state = state }
  else
    res, err = s:get_reauthorize_url{ contract = conf.contract, callback = conf.callback,
                                      state = state, user_access_token = token }
  end
  if not res then
    forget_flow(states, state)
    if kind == "reauthorize" and type(err) == "table" and err.code == "InvalidToken" then
      -- Not even a reauthorization: the user is gone. Forget them; they can connect anew.
      kv("sessions"):delete(sid)
      return page(200, "Your digi.me connection has ended",
        "<p>digi.me no longer knows this connection.</p>"
        .. "<p><a class=\"button\" href=\"/connect\">Connect your digi.me</a></p>")
    end
    return error_page(502, "Could not reach digi.me", err)
  end
  local flow = cjson.encode{ verifier = res.code_verifier, sid = sid, kind = kind, ret = return_to }
  local ok, derr = states:set(state, flow, STATE_TTL)
  if not ok then
    forget_flow(states, state)
    ngx.log(ngx.ERR, "cannot keep the state: ", derr)
    return busy()
  end
  return redirect(res.url)
end

--- GET /
function _M.home()
  local rec = load_session(session_id())
  if rec then
    return page(200, "Your digi.me is connected",
      "<p>The app holds a token for user <code>" .. esc(rec.token.user and rec.token.user.id or "?")
      .. "</code>.</p><p><a class=\"button\" href=\"/files\">See your files</a></p>")
  end
  return page(200, "A digi.me example app",
    "<p>This app reads your digi.me library, with your consent.</p>"
    .. "<p><a class=\"button\" id=\"connect\" href=\"/connect\">Connect your digi.me</a></p>")
end

--- GET /connect
function _M.connect()
  local sid = session_id()
  if not sid then
    sid = random_id()
    set_session_cookie(sid)
  end
  return start_flow(sid, "authorize", nil, "/files")
end

-- A same-origin path to return to after a reauthorization (nothing else).
local function local_path(p)
  if type(p) == "string" and p:match("^/[^/\\]") or p == "/" then return p end
  return "/files"
end

--- GET /callback?success=...&state=...&code=... (or &errorCode=...)
function _M.callback()
  local args = ngx.req.get_uri_args(20)
  local state = args.state
  local sid = session_id()
  local flow
  if valid_id(state) and sid then
    local states = kv("states")
    local raw = states:get(state)
    flow = raw and raw ~= PLACEHOLDER and cjson.decode(raw)
    -- Only the browser that started the connection may finish it (its session cookie): a
    -- callback link forged or passed on by someone else goes no further, and uses nothing up.
    -- A state works once: the first callback to claim it wins, a replay finds it gone.
    if not (flow and flow.sid == sid and states:claim("claim:" .. state)) then
      flow = nil
    else
      forget_flow(states, state)
      if states:get("pending:" .. sid) == state then states:delete("pending:" .. sid) end
    end
  end
  if not flow then
    -- Unknown, expired, already used, or started in another browser.
    return page(400, "This connection link is not valid",
      "<p>The link digi.me sent you back with is unknown, has already been used, has expired"
      .. " (a connection must be finished within " .. STATE_TTL / 60 .. " minutes), or was"
      .. " started in another browser.</p>"
      .. "<p><a class=\"button\" href=\"/connect\">Start again</a></p>")
  end
  if args.success ~= "true" then
    local code = type(args.errorCode) == "string" and args.errorCode or "none given"
    return page(200, "digi.me was not connected",
      "<p>digi.me did not give access (error code <code id=\"error-code\">" .. esc(code)
      .. "</code>). Nothing was stored.</p><p><a class=\"button\" href=\"/connect\">Try again</a>"
      .. " <a href=\"/\">Back to the start</a></p>")
  end
  local code = args.code
  if type(code) ~= "string" or code == "" then
    return page(400, "This connection link is not valid", "<p>It carries no authorization code.</p>"
      .. "<p><a class=\"button\" href=\"/connect\">Start again</a></p>")
  end
  local s, ierr = sdk_object()
  if not s then return error_page(500, "The digi.me SDK is not set up", ierr) end
  local token, err = s:exchange_code_for_token{ contract = conf.contract,
                                                authorization_code = code,
                                                code_verifier = flow.verifier }
  if not token then return error_page(502, "Could not finish connecting", err) end
  -- A new session id at sign-in; the old one (and any old token under it) is forgotten.
  kv("sessions"):delete(sid)
  local new_sid = random_id()
  save_session(new_sid, { token = token })
  set_session_cookie(new_sid)
  return redirect(local_path(flow.ret))
end

-- Reading ------------------------------------------------------------------------------------

local function not_connected()
  return page(200, "Not connected",
    "<p>This browser has not connected a digi.me yet.</p>"
    .. "<p><a class=\"button\" href=\"/connect\">Connect your digi.me</a></p>")
end

local function is_code(err, code)
  return type(err) == "table" and err.kind == "ServerError" and err.code == code
end

-- The end of a failed call: keep a refreshed token, reauthorize a dead one, show the rest.
local function failed(sid, rec, err, title)
  keep_token(sid, rec, digime.token_of(err))
  if is_code(err, "InvalidToken") then
    -- The SDK already tried a refresh: the refresh token is dead too.
    return start_flow(sid, "reauthorize", rec.token, ngx.var.request_uri)
  end
  return error_page(502, title, err)
end

-- A read session for this user (a new one triggers a sync of their library).
local function new_read_session(s, sid, rec)
  local res, err = s:read_session{ contract = conf.contract, user_access_token = rec.token }
  if not res then return nil, err end
  rec.session_key = res.session.key
  keep_token(sid, rec, res.user_access_token)
  return true
end

-- This browser's session: sid, its record, the SDK (or sdk nil and the error); nil when the
-- browser has not connected.
local function current()
  local sid = session_id()
  local rec = load_session(sid)
  if not rec then return nil end
  local s, err = sdk_object()
  return sid, rec, s, err
end

-- updatedDate is milliseconds since the epoch.
local function when(ms)
  if type(ms) ~= "number" then return "" end
  return os.date("!%Y-%m-%d %H:%M:%S UTC", math.floor(ms / 1000))
end

local function file_link(name)
  return "/file?name=" .. ngx.escape_uri(name)
end

--- GET /files
function _M.files()
  local sid, rec, s, serr = current()
  if not sid then return not_connected() end
  if not s then return error_page(500, "The digi.me SDK is not set up", serr) end
  local ok, err = new_read_session(s, sid, rec)
  if not ok then return failed(sid, rec, err, "Could not open your library") end

  -- The sync runs pending -> running -> completed (or partial); wait a little for it.
  local list
  local deadline = ngx.now() + LIST_WAIT
  while true do
    list, err = s:read_file_list{ contract = conf.contract, user_access_token = rec.token,
                                  session_key = rec.session_key }
    if not list then return failed(sid, rec, err, "Could not list your files") end
    keep_token(sid, rec, list.user_access_token)
    local st = list.status.state
    if st == "completed" or st == "partial" or ngx.now() >= deadline then break end
    ngx.sleep(0.3)
  end

  local files = {}
  for _, f in ipairs(list.fileList or {}) do files[#files + 1] = f end
  sort(files, function(a, b) return a.name < b.name end)
  local rows = {}
  for _, f in ipairs(files) do
    rows[#rows + 1] = format("<tr><td><a href=\"%s\">%s</a></td><td class=\"muted\">%s</td></tr>",
      esc(file_link(f.name)), esc(f.name), esc(when(f.updatedDate)))
  end
  local problems = {}
  for account, d in pairs(list.status.details or {}) do
    if type(d) == "table" and d.state == "partial" then
      problems[#problems + 1] = "<li>account <code>" .. esc(account) .. "</code>: "
        .. esc(type(d.error) == "table" and (d.error.code or d.error.message) or "sync incomplete")
        .. "</li>"
    end
  end
  return page(200, "Your files", format(
    "<p>Library sync: <strong id=\"sync-state\">%s</strong>, <span id=\"file-count\">%d</span> files"
    .. " (<a href=\"/files\">refresh</a>)</p>%s<table><thead><tr><th>file</th><th>updated</th></tr>"
    .. "</thead><tbody id=\"files\">%s</tbody></table>",
    esc(list.status.state), #files,
    #problems > 0 and ("<ul class=\"error\">" .. concat(problems) .. "</ul>") or "",
    concat(rows, "\n")))
end

local function looks_binary(data)
  return data:find("[%z\1-\8\11\12\14-\31\127]") ~= nil
end

--- GET /file?name=...
function _M.file()
  local name = ngx.req.get_uri_args(10).name
  if type(name) ~= "string" or name == "" or #name > 1024 then
    return page(400, "Which file?", "<p>Give a file name: <code>/file?name=...</code>.</p>"
      .. "<p><a href=\"/files\">Your files</a></p>")
  end
  local sid, rec, s, serr = current()
  if not sid then return not_connected() end
  if not s then return error_page(500, "The digi.me SDK is not set up", serr) end
  local err
  if not rec.session_key then
    local ok
    ok, err = new_read_session(s, sid, rec)
    if not ok then return failed(sid, rec, err, "Could not open your library") end
  end
  local function read()
    return s:read_file{ contract = conf.contract, user_access_token = rec.token,
                        session_key = rec.session_key, file_name = name, max_size = 16 * 1024 * 1024 }
  end
  local f
  f, err = read()
  if not f and (is_code(err, "InvalidSession") or is_code(err, "SessionNotFound")) then
    -- Read sessions expire (or another page opened a newer one): get one and try again.
    keep_token(sid, rec, digime.token_of(err))
    local ok, rerr = new_read_session(s, sid, rec)
    if not ok then return failed(sid, rec, rerr, "Could not open your library") end
    f, err = read()
  end
  if not f then
    if type(err) == "table" and err.status == 404 then
      keep_token(sid, rec, digime.token_of(err))
      return page(404, "No such file", "<p>Your library has no file <code>" .. esc(name)
        .. "</code>.</p><p><a href=\"/files\">Your files</a></p>")
    end
    return failed(sid, rec, err, "Could not read the file")
  end
  keep_token(sid, rec, f.user_access_token)

  local data = f.file_data or ""
  local meta = type(f.file_metadata) == "table" and f.file_metadata or {}
  local body
  if looks_binary(data) then
    body = "<p class=\"muted\">(binary data, not shown)</p>"
  else
    local shown = data:sub(1, SHOW_MAX)
    body = "<pre id=\"content\">" .. esc(shown) .. "</pre>"
      .. (#data > SHOW_MAX and "<p class=\"muted\">(the first " .. SHOW_MAX .. " bytes)</p>" or "")
  end
  return page(200, name, format(
    "<p class=\"muted\">%d bytes, %s, compression: %s%s</p>%s<p><a href=\"/files\">All files</a></p>",
    #data, esc(meta.mimetype or "no type given"), esc(f.compression or "none"),
    f.last_modified and (", modified " .. esc(f.last_modified)) or "", body))
end

--- Any other path.
function _M.not_found()
  return page(404, "Not found", "<p>No page here. <a href=\"/\">Start</a></p>")
end

return _M
