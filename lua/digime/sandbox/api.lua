-- The digi.me API under /v1.7/ (doc/protocol.md "Endpoints"): JWKS, oauth/authorize,
-- oauth/token/reference, oauth/token; the Bearer check every other endpoint shares; the agent
-- check; and the foreign JWKS used to catch clients that fetch a jku off their allow-list.
--
-- The other families of endpoints under /v1.7/ live in write.lua (pushes), manage.lua
-- (references, deletion, revoke, reports, sample data, contract), discovery.lua and storage.lua;
-- routes.lua maps each path to its handler.

local core = require "digime.core"
local tokens = require "digime.sandbox.tokens"
local wire = require "digime.sandbox.wire"
local util = require "digime.sandbox.util"
local view = require "digime.sandbox.library_view"

local type, tostring, ipairs = type, tostring, ipairs
local os_time = os.time
local math_abs = math.abs

local _M = {}

-- Errors ------------------------------------------------------------------------------------

local function validation(status)
  return wire.error(status or 400, "ValidationErrors", "Parameter validation errors")
end
_M.validation_error = validation

local function invalid_token(kind)
  return wire.error(401, "InvalidToken", "The token (" .. kind .. ") is invalid")
end
_M.invalid_token = invalid_token

-- Bearer check (doc/protocol.md "How the server checks a request") ---------------------------

-- The server time of the timestamp check, in whole seconds (precise enough against a window of
-- minutes); not util.now_ms on purpose: the window is checked on os.time's clock.
local function whole_second_ms()
  return os_time() * 1000
end

local is_integer = util.is_integer

-- -> auth | nil, response. auth = { claims, client_id, contract, header }
function _M.authenticate(app, req)
  local h = req.headers["authorization"]
  local jwt = type(h) == "string" and h:match("^[Bb][Ee][Aa][Rr][Ee][Rr] +(%S+)%s*$")
  if not jwt then
    return nil, validation(406)
  end
  local parsed, _, what = tokens.decode(jwt)
  if not parsed then
    return nil, validation(406)
  end
  if parsed.header.alg ~= "PS512" then
    return nil, validation(406)
  end
  if what == "payload" then
    return nil, validation(400)
  end
  local claims = parsed.payload
  req.log.client_id = type(claims.client_id) == "string" and claims.client_id or nil
  req.log.nonce = type(claims.nonce) == "string" and claims.nonce or nil
  if type(claims.client_id) ~= "string" then
    return nil, validation(400)
  end
  local contract = app.contracts[claims.client_id]
  if not contract then
    return nil, wire.error(401, "InvalidClient",
                           "The client_id (" .. claims.client_id .. ") is invalid")
  end
  if not tokens.verify_ps512(parsed, contract.key) then
    return nil, validation(406)
  end
  local nonce = claims.nonce
  if type(nonce) ~= "string" or nonce == "" then
    return nil, validation(400)
  end
  local ts = claims.timestamp
  if not is_integer(ts) then
    return nil, validation(400)
  end
  local now = whole_second_ms()
  local window = app.cfg.timestamp_window * 1000
  if math_abs(ts - now) > window then
    return nil, wire.error(406, "ValidationErrors",
      "Parameter validation errors: the timestamp provided in JWT payload ("
      .. string.format("%d", ts) .. ") is outside the accepted window of "
      .. app.cfg.timestamp_window .. " s around the server time (milliseconds expected)")
  end
  if app.state:nonce_used(nonce) then
    app.state.stats.nonce_replays = app.state.stats.nonce_replays + 1
    return nil, wire.error(406, "InvalidRequest",
      "The nonce provided in JWT payload (" .. nonce .. ") has already been used")
  end
  app.state:remember_nonce(nonce, ts, now)
  return { claims = claims, client_id = claims.client_id, contract = contract,
           header = parsed.header }
end

-- Agent check (doc/protocol.md "The agent object"): only when the config lists the accepted agents.
function _M.check_agent(app, body)
  local agents = app.cfg.agents
  if not agents then
    return true
  end
  local sdk = type(body.agent) == "table" and body.agent.sdk
  local name = type(sdk) == "table" and sdk.name
  local version = type(sdk) == "table" and sdk.version
  for _, a in ipairs(agents) do
    if a.name == name then
      if a.versions == nil then
        return true
      end
      for _, v in ipairs(a.versions) do
        if v == version or v == "*" then
          return true
        end
      end
      return nil, wire.error(403, "SDKVersionInvalid", "This SDK version is no longer supported.")
    end
  end
  return nil, wire.error(400, "SDKInvalid", "The SDK is invalid: " .. tostring(name or "undefined"))
end

-- The JSON body of an agent-carrying endpoint, agent checked. -> body | nil, response
local function agent_body(app, req)
  local body = wire.decode_object(req:body())
  if not body then
    return nil, validation(400)
  end
  local ok, res = _M.check_agent(app, body)
  if not ok then
    return nil, res
  end
  return body
end

-- Server tokens: genuine, or hostile when a "token" fault matches this request.
function _M.token_answer(app, req, payload)
  local f = app.state:take_fault(req.method, req.path, true)
  if f then
    req.log.fault = f.id
    return assert(tokens.hostile(f.token, app.signer, payload, f))
  end
  return tokens.server_token(app.signer, payload)
end

local function str(v)
  return type(v) == "string" and v ~= "" and v
end

local function code_challenge_ok(v)
  -- RFC 7636: 43..128 characters of the unreserved set.
  return type(v) == "string" and #v >= 43 and #v <= 128 and v:match("^[%w%-%._~]+$") ~= nil
end

-- Endpoints ---------------------------------------------------------------------------------

function _M.jwks(app)
  return wire.json(200, { keys = { app.signer.jwk } })
end

function _M.foreign_jwks(app)
  return wire.json(200, { keys = { app.signer.evil_jwk } })
end

-- POST oauth/authorize (AUTHZ claims).
function _M.authorize(app, req, auth)
  local c = auth.claims
  if not code_challenge_ok(c.code_challenge) or c.code_challenge_method ~= "S256"
     or not str(c.redirect_uri) or c.response_mode ~= "query" or c.response_type ~= "code"
     or type(c.state) ~= "string"
     or (c.access_token ~= nil and type(c.access_token) ~= "string") then
    return validation(400)
  end
  local user_id
  if c.access_token ~= nil then
    local rec = app.state:access_token(c.access_token)
    if not rec then
      return invalid_token("access_token")
    end
    user_id = rec.user_id
  end
  local body, err = agent_body(app, req)
  if not body then
    return err
  end
  local st = app.state
  local session = st:new_session(auth.client_id, user_id, body.actions)
  local code = st.random(32)
  st.page_codes[code] = {
    kind = "authorize", client_id = auth.client_id, code_challenge = c.code_challenge,
    state = c.state, redirect_uri = c.redirect_uri, user_id = user_id, actions = body.actions,
    session_key = session.key, expires = os_time() + app.cfg.code_ttl,
  }
  return wire.json(201, { token = _M.token_answer(app, req, { preauthorization_code = code }),
                          session = session })
end

-- POST oauth/token/reference: REAUTHZ (has code_challenge), ONBOARD or ACCREAUTH.
function _M.token_reference(app, req, auth)
  local c = auth.claims
  if not str(c.access_token) or not str(c.redirect_uri)
     or (c.state ~= nil and type(c.state) ~= "string") then
    return validation(400)
  end
  local reauth = c.code_challenge ~= nil or c.code_challenge_method ~= nil
  if reauth and (not code_challenge_ok(c.code_challenge) or c.code_challenge_method ~= "S256") then
    return validation(400)
  end
  local st = app.state
  -- Reauthorization exists for users whose refresh token died, so an expired access token
  -- is fine there, as long as the sandbox issued it to this contract. The other pages need
  -- a live one (a 401 InvalidToken makes the client refresh).
  local rec, user = st:access_token(c.access_token, reauth)
  if not rec or rec.client_id ~= auth.client_id then
    return invalid_token("access_token")
  end
  local body, err = agent_body(app, req)
  if not body then
    return err
  end
  local session = st:new_session(auth.client_id, user.id, body.actions)
  local code = st.random(32)
  st.page_codes[code] = {
    kind = reauth and "reauth" or "reference", client_id = auth.client_id,
    code_challenge = c.code_challenge, state = c.state, redirect_uri = c.redirect_uri,
    user_id = user.id, actions = body.actions, session_key = session.key,
    expires = os_time() + app.cfg.code_ttl,
  }
  return wire.json(201, { token = _M.token_answer(app, req, { reference_code = code }),
                          session = session })
end

local function exchange(app, req, auth)
  local c = auth.claims
  if not str(c.code) or not str(c.code_verifier) then
    return validation(400)
  end
  local st = app.state
  local rec = st.auth_codes[c.code]
  if not rec or rec.used or rec.client_id ~= auth.client_id or rec.expires <= os_time()
     or core.b64url_encode(core.sha256(c.code_verifier)) ~= rec.code_challenge then
    return invalid_token("authorization_code")
  end
  local user = st.users[rec.user_id]
  if not user then
    return invalid_token("authorization_code")
  end
  rec.used = true
  return wire.json(201, { token = _M.token_answer(app, req, st:issue_tokens(user, auth.client_id)) })
end

local function refresh(app, req, auth)
  local c = auth.claims
  if not str(c.refresh_token) then
    return validation(400)
  end
  local st = app.state
  local rec = st.refresh[c.refresh_token]
  local user = rec and st.users[rec.user_id]
  if not user or not rec.current or rec.client_id ~= auth.client_id
     or rec.expires_on <= os_time() then
    return invalid_token("refresh_token")
  end
  -- Rotation: the presented refresh token is dead from now on.
  rec.current = false
  st.stats.refreshes = st.stats.refreshes + 1
  return wire.json(201, { token = _M.token_answer(app, req, st:issue_tokens(user, auth.client_id)) })
end

-- POST oauth/token: EXCHANGE or REFRESH claims; the SDK sends no body.
function _M.token(app, req, auth)
  local grant = auth.claims.grant_type
  req.log.grant = type(grant) == "string" and grant or nil
  if grant == "authorization_code" then
    return exchange(app, req, auth)
  elseif grant == "refresh_token" then
    return refresh(app, req, auth)
  end
  return validation(400)
end


-- Reading (doc/protocol.md "Reading a library") ---------------------------------------------

-- The USER claim set: access_token must be a live token this client holds for its user.
-- -> rec, user | nil, response (401 InvalidToken: the SDK refreshes on exactly that)
function _M.user(app, auth)
  local rec, user = app.state:access_token(auth.claims.access_token)
  if not rec or rec.client_id ~= auth.client_id then
    return nil, invalid_token("access_token")
  end
  return rec, user
end

-- %XX only: "+" is a plus sign in a path.
local function path_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
_M.path_decode = path_decode

-- The session of a read call, if it is this user's: -> session | nil, response
local function user_session(app, key, auth, user)
  local s = app.state.sessions[key]
  if not s or s.expiry <= os_time() * 1000 then
    return nil, wire.error(404, "SessionNotFound",
                           "The session (" .. key .. ") does not exist or has expired")
  end
  if s.client_id ~= auth.client_id or s.user_id ~= user.id then
    return nil, wire.error(403, "InvalidSession",
                           "The session (" .. key .. ") does not belong to this user")
  end
  return s
end

local is_object = util.is_object

-- Pull session options (doc/protocol.md "Reading a library"), as far as their shape goes.
local function pull_options_ok(body)
  if body.scope ~= nil and not is_object(body.scope) then
    return false
  end
  if body.limits ~= nil and not is_object(body.limits) then
    return false
  end
  if body.sourceFetch ~= nil and type(body.sourceFetch) ~= "boolean" then
    return false
  end
  local f = body.sourceFetchFilter
  if f ~= nil and (not is_object(f) or not is_object(f.account)
                   or (f.account.id ~= nil and type(f.account.id) ~= "table")) then
    return false
  end
  return true
end

-- POST permission-access/trigger: a new session; (re)starts the user's sync.
function _M.trigger(app, req, auth)
  local rec, user = _M.user(app, auth)
  if not rec then
    return user
  end
  local body, err = agent_body(app, req)
  if not body then
    return err
  end
  if not pull_options_ok(body) then
    return validation(400)
  end
  local options = {}
  for k, v in pairs(body) do
    if k ~= "agent" then
      options[k] = v
    end
  end
  local session = app.state:new_session(auth.client_id, user.id, options)
  -- sourceFetch false: no refresh from the sources, only what the library has.
  view.start_sync(app, user.id, body.sourceFetch == false)
  return wire.json(202, { session = session })
end

local QUERY = "/v1.7/permission-access/query/"

-- GET permission-access/query/{sessionKey}: the sync status and file list.
function _M.file_list(app, req, auth)
  local rec, user = _M.user(app, auth)
  if not rec then
    return user
  end
  local key = path_decode(req.path:sub(#QUERY + 1))
  local s, err = user_session(app, key, auth, user)
  if not s then
    return err
  end
  return { status = 200, headers = { ["content-type"] = "application/json" },
           body = view.sync_answer(app, user.id) }
end

-- GET and HEAD permission-access/query/{sessionKey}/{fileName}: one file, encrypted to the
-- contract's key for this request.
function _M.file_get(app, req, auth)
  local rec, user = _M.user(app, auth)
  if not rec then
    return user
  end
  local key, name = req.path:sub(#QUERY + 1):match("^([^/]+)/(.+)$")
  key, name = path_decode(key), path_decode(name)
  local s, err = user_session(app, key, auth, user)
  if not s then
    return err
  end
  local file = view.user_file(app, user, name)
  if not file then
    return wire.error(404, "FileNotFound", "The file (" .. name .. ") does not exist")
  end
  return app.library:serve(file, auth.contract.key, req.method == "HEAD")
end

-- GET permission-access/accounts: the library's accounts, a bare array.
function _M.accounts(app, _, auth)
  local rec, user = _M.user(app, auth)
  if not rec then
    return user
  end
  return wire.json(200, view.account_records_of(app, user), nil, true)
end

-- Is this request a file download (for the inflight_downloads stats)?
function _M.is_download(method, path)
  return method == "GET" and path:sub(1, #QUERY) == QUERY
         and path:find("/", #QUERY + 1, true) ~= nil
end

-- The foreign key's JWKS, and lookalike addresses of the genuine one that serve it too.
_M.foreign_paths = { "/evil/jwks", "/v1.7/jwks/oauth.evil.example" }

-- Counts JWKS fetches when a request arrives, before any fault: the point is to see every
-- attempt (above all, any fetch of the foreign JWKS).
function _M.count_fetch(app, req)
  local stats = app.state.stats
  if req.path == "/v1.7/jwks/oauth" then
    stats.jwks_fetches = stats.jwks_fetches + 1
    return
  end
  for _, p in ipairs(_M.foreign_paths) do
    if req.path == p then
      stats.foreign_jwks_fetches = stats.foreign_jwks_fetches + 1
    end
  end
end

return _M
