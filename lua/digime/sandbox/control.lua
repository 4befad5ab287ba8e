-- The control API under /sandbox/ (doc/sandbox.md "Control API"): loopback only (client, Host
-- and Origin), JSON in and out, request bodies capped at 1 MiB. It is how
-- tests steer the sandbox (expire tokens, inject faults, read stats and the log); faults
-- never apply to it and it is left out of the stats and the log.
--
--   POST   /sandbox/expire   {"what": "access"|"refresh"|"both", "user": id?} -> {"expired": n}
--   POST   /sandbox/fault    {"method"?, "path", "match"?: "prefix"|"exact", "count"?: 1,
--                             "action": "status"|"reset"|"delay"|"truncate"|"hang"|"token"|
--                                       "close_after_answer",
--                             "status"?, "body"?, "headers"?, "ms"?, "token"?, "after"?}
--                             -> {"id": n}
--                             The next `count` requests whose method (any when absent) and
--                             path match fail so:
--                               status   answer status/body/headers instead (body: a string,
--                                        or JSON when a table; empty when absent; status 500)
--                               reset    close the connection without an answer and without
--                                        processing the request; with "after": true the
--                                        request is processed first (then no answer)
--                               close_after_answer  answer normally, then close the
--                                        connection without a "connection: close" header:
--                                        the client's next request on it finds it dead
--                               delay    wait ms (default 1000), then serve normally
--                               truncate serve, but send the full content-length, half the
--                                        body, then close
--                               hang     never answer until the client closes (or, with ms,
--                                        close after ms), without blocking other requests
--                               token    replace the server token of the next matching
--                                        token-bearing answer by a hostile one of kind "token"
--                                        (tokens.lua lists them; "jku" overrides the URL of
--                                        foreign_jku/lookalike_jku); the request itself is
--                                        processed normally
--   POST   /sandbox/fault    {"method"?, "path", "match"?, "probability": 0.1, "seed"?,
--                             "by"?: "path"|"sequence", "count"?, "actions": [{"action",
--                             "weight"?: 1, "status"?, "body"?, "headers"?, "ms"?,
--                             "after"?}, ...]}  -> {"id": n, "seed": s}
--                             Random faults: each matching request fails with the given
--                             probability, with one of the actions (any but token; its fields
--                             as above; chosen in proportion to weight). Without "actions" the
--                             fault's own action fields make the one action. "count": the most
--                             faults it injects (none: no limit). The choice is a pure function
--                             of the seed (an integer or a string; a random one when absent,
--                             returned so a run can be replayed) and of which request this is:
--                               by "path" (default): key = METHOD .. " " .. the path after the
--                                 rule's prefix ("" with match exact), n = 1 for the first
--                                 request with that key, 2 for the second, ...; so the same
--                                 seed fails the same attempts of the same files whatever
--                                 order concurrent requests arrive in
--                               by "sequence": key = "", n = the rule's n-th matching request
--                             h = sha256(seed .. "\n" .. key .. "\n" .. n); u = h's first 4
--                             bytes (big-endian) / 2^32, v = the next 4 so; the request fails
--                             when u < probability, with the first action whose running sum of
--                             weights exceeds v * (sum of weights). A request the rule lets
--                             through goes on to the faults after it. The rule stays listed
--                             (until DELETE /sandbox/faults or reset) with its record:
--                             "matched", "applied", "applied_by" (per action), and by path
--                             "seen" and "faulted" ({key: requests}).
--   GET    /sandbox/faults   -> [{"id", "count" (uses left), ...}]
--   DELETE /sandbox/faults   -> {"cleared": n}
--   GET    /sandbox/stats    -> {"requests", "jwks_fetches", "foreign_jwks_fetches", "by_path",
--                               "by_status", "max_inflight", "downloads" (file GETs answered
--                               200 in full), "download_bytes", "inflight_downloads" and
--                               "max_inflight_downloads" (file GETs in flight at once, from
--                               arrival to last byte, faults included), "connections"
--                               (accepted), "connections_open", "max_connections_open" (the
--                               most open at once), "tls_handshakes" (full), "tls_resumed"
--                               (TLS 1.3: the client offered a ticket of this sandbox; 1.2: a
--                               session's master secret came back), "nonce_replays" (client
--                               JWTs refused for a used nonce), "api_connections",
--                               "api_tls_handshakes", "api_tls_resumed" (the same for the
--                               connections that carried a request outside /sandbox/),
--                               "refreshes", ...}
--   GET    /sandbox/log      -> [{"method", "path", "status", "ms", "client_id", "nonce",
--                               "conn" (the connection's number: equal numbers shared one),
--                               "conn_request" (1 for its first request, ...), "grant"
--                               (oauth/token: "authorization_code" | "refresh_token"),
--                               "outcome"?, "fault"?, ...}]
--   GET    /sandbox/latency  -> {"ms", "bandwidth" (bytes/s, 0 = no cap), "keepalive" (s)}
--   POST   /sandbox/latency  {"ms"?, "bandwidth"? (a number or "2m"), "keepalive"?} -> the
--                            same; applies to connections relayed already and to new ones
--                            (connections accepted at latency 0 and no bandwidth cap are
--                            served directly and stay so)
--   GET    /sandbox/connections  the open connections: [{"id", "peer_ip", "requests", "idle",
--                                "idle_ms"?, "tls"? {"version", "resumed"}, "relayed"}]
--   POST   /sandbox/connections  {"close": "idle"|"all"} -> {"closed": n}: closes the idle
--                                keep-alive connections now (with "all", those in the middle
--                                of a request too, but not the asking one), as a server does
--   POST   /sandbox/reset    forget users, tokens, codes, sessions, syncs, nonces, faults,
--                            stats, log and the consent decision, and undo touches
--                            -> {"reset": true}
--   POST   /sandbox/consent  {"decision": "accept"|"decline", "error_code"?: "UserCancelled"}
--                            the decision of auto mode for the consents that follow
--   GET    /sandbox/info     urls, contracts, signing kid, the library's settings, "limits" (push,
--                            storage_object, storage_in_memory: bytes)
--   GET    /sandbox/manifest     {"count": n, "files": {name: sha256 hex of the plaintext}} of the
--                                library as it is now (big.bin included, hashed by streaming)
--   GET    /sandbox/manifest.txt the same as "sha256  name" lines (sha256sum -c reads them)
--   GET    /sandbox/raw/NAME     the file as a file GET serves it (headers too), without auth,
--                                encrypted to the first contract's key (?client_id= picks one);
--                                not counted in the stats (benchmarks)
--   GET    /sandbox/library      [{"name", "size", "compression", "updatedDate", "account", ...}]
--   POST   /sandbox/library  {"touch": name, "content"?: text} -> {"touched", "updatedDate",
--                            "sha256"}: new content (given, or derived) and a later updatedDate
--   GET    /sandbox/pushes   every push since the last reset, in order:
--                            [{"kind": "library", "user", "client_id", "name" (the file's name
--                              in the user's library), "size", "sha256", "mimetype",
--                              "accounts", "time"} | {"kind": "provider", "user", "client_id",
--                              "account", "standard", "version", "size", "sha256",
--                              "resourceType"?, "time"}]
--   GET    /sandbox/storage  the cloud storages: [{"id", "kid", "client_id", "user"?,
--                            "provisional", "created", "count", "bytes", "files": [{"path"
--                            (as uploaded), "key" (lower-cased), "size", "sha256" (of the
--                            stored bytes), "on_disk", "file" (its temporary file, when on
--                            disk), "id"}]}]
--   GET    /sandbox/users    [{"id", "accounts" (ids the user still has), "removed",
--                            "revoked", "reauthorized" (account ids), "pushed" (file names),
--                            "storages" ({client_id: storage id}), "tokens" (live access
--                            tokens)}]
--   GET    /sandbox/references  [{"id", "type", "value", "client_id"}]
-- POST /sandbox/reset also forgets references, pushes, storages (their temporary files are
-- removed) and every user's library view.

local tokens = require "digime.sandbox.tokens"
local wire = require "digime.sandbox.wire"
local api = require "digime.sandbox.api"
local view = require "digime.sandbox.library_view"
local storage = require "digime.sandbox.storage"
local bodies = require "digime.sandbox.body"
local core = require "digime.core"

local type, tostring, pairs, ipairs = type, tostring, pairs, ipairs
local math_floor = math.floor

local _M = {}

local function bad(message)
  return wire.error(400, "BadRequest", message)
end

local function ok(value)
  return wire.json(200, value)
end

local function is_count(v, min)
  return type(v) == "number" and v == math_floor(v) and v >= min and v < 2 ^ 31
end

local actions = { status = true, reset = true, delay = true, truncate = true, hang = true,
                  token = true, close_after_answer = true }

local function fault_view(f)
  local v = {}
  for k, x in pairs(f) do
    v[k] = x
  end
  return v
end

local handlers = {}

handlers["POST expire"] = function(app, body)
  local what = body.what
  if what ~= "access" and what ~= "refresh" and what ~= "both" then
    return bad("what must be access, refresh or both")
  end
  local user = body.user
  if user ~= nil then
    if type(user) ~= "string" then
      return bad("user must be a user id (the token's sub)")
    end
    if not app.state.users[user] then
      return wire.error(404, "NotFound", "No such user: " .. user)
    end
  end
  return ok{ expired = app.state:expire(what, user) }
end

-- Checks the fields of one action (status, body, headers, ms, token, jku, after) from `spec`
-- into f: -> f | nil, message
local function parse_action(spec, f, random)
  if not actions[spec.action] or (random and spec.action == "token") then
    return nil, random and "action must be one of status, reset, delay, truncate, hang, "
                           .. "close_after_answer (a token fault is never random)"
                or "action must be one of status, reset, delay, truncate, hang, "
                   .. "close_after_answer, token"
  end
  f.action = spec.action
  if f.action == "status" then
    f.status = spec.status or 500
    if not is_count(f.status, 100) or f.status > 599 then
      return nil, "status must be an HTTP status"
    end
    f.status = math_floor(f.status)
    if spec.body ~= nil and type(spec.body) ~= "string" and type(spec.body) ~= "table" then
      return nil, "body must be a string or a JSON value"
    end
    f.body = spec.body
    if spec.headers ~= nil then
      if type(spec.headers) ~= "table" then
        return nil, "headers must be an object"
      end
      for k, v in pairs(spec.headers) do
        if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") then
          return nil, "headers must map names to strings"
        end
      end
    end
    f.headers = spec.headers
  elseif f.action == "delay" then
    f.ms = spec.ms or 1000
    if not is_count(f.ms, 0) then
      return nil, "ms must be a number of milliseconds"
    end
  elseif f.action == "hang" then
    if spec.ms ~= nil and not is_count(spec.ms, 0) then
      return nil, "ms must be a number of milliseconds"
    end
    f.ms = spec.ms
  elseif f.action == "token" then
    if not tokens.is_hostile_kind(spec.token) then
      return nil, "token must be one of " .. table.concat(tokens.hostile_kinds, ", ")
    end
    f.token = spec.token
    if spec.jku ~= nil and type(spec.jku) ~= "string" then
      return nil, "jku must be a string"
    end
    f.jku = spec.jku
  end
  if spec.after ~= nil then
    if f.action ~= "reset" or type(spec.after) ~= "boolean" then
      return nil, "after (boolean) goes with action reset only"
    end
    f.after = spec.after
  end
  return f
end

-- The random part of a fault (probability, seed, by, actions): -> f | nil, message
local function parse_random(body, f)
  local p = body.probability
  if type(p) ~= "number" or not (p >= 0 and p <= 1) then
    return nil, "probability must be a number from 0 to 1"
  end
  f.probability = p
  if body.seed == nil then
    f.seed = core.random_alnum(12)
  elseif type(body.seed) == "string" or is_count(body.seed, 0) then
    f.seed = type(body.seed) == "string" and body.seed or string.format("%d", body.seed)
  else
    return nil, "seed must be a non-negative integer or a string"
  end
  f.by = body.by or "path"
  if f.by ~= "path" and f.by ~= "sequence" then
    return nil, "by must be path or sequence"
  end
  local list = body.actions
  if list == nil then
    list = { body }          -- one action, given with the fault's own fields
  elseif type(list) ~= "table" or list[1] == nil then
    return nil, "actions must be a non-empty array of actions"
  end
  f.actions = {}
  local total = 0
  for i, spec in ipairs(list) do
    if type(spec) ~= "table" then
      return nil, "actions[" .. i .. "] must be an object"
    end
    local w = spec.weight or 1
    if type(w) ~= "number" or not (w > 0 and w < 2 ^ 31) then
      return nil, "actions[" .. i .. "].weight must be a positive number"
    end
    local a, err = parse_action(spec, {}, true)
    if not a then
      return nil, "actions[" .. i .. "]: " .. err
    end
    a.weight = w
    f.actions[i] = a
    total = total + w
  end
  f.total_weight = total
  if body.count ~= nil then
    if not is_count(body.count, 0) then
      return nil, "count must be a non-negative integer"
    end
    f.count = math_floor(body.count)
  end
  f.matched, f.applied = 0, 0
  f.applied_by = {}
  for i = 1, #f.actions do
    f.applied_by[i] = 0
  end
  f.seen, f.faulted = {}, {}
  return f
end

handlers["POST fault"] = function(app, body)
  local f = {}
  if body.method ~= nil then
    if type(body.method) ~= "string" then
      return bad("method must be a string")
    end
    f.method = body.method:upper()
  end
  f.path = body.path or "/"
  if type(f.path) ~= "string" or f.path:sub(1, 1) ~= "/" then
    return bad("path must be an absolute path (a prefix of the request path)")
  end
  if f.path:sub(1, 9) == "/sandbox/" then
    return bad("faults never apply to /sandbox/")
  end
  f.match = body.match or "prefix"
  if f.match ~= "prefix" and f.match ~= "exact" then
    return bad("match must be prefix or exact")
  end
  local err
  if body.probability ~= nil then
    f, err = parse_random(body, f)
    if not f then
      return bad(err)
    end
    return ok{ id = app.state:add_fault(f), seed = f.seed }
  end
  f.count = body.count or 1
  if not is_count(f.count, 1) then
    return bad("count must be a positive integer")
  end
  f.count = math_floor(f.count)
  f, err = parse_action(body, f)
  if not f then
    return bad(err)
  end
  return ok{ id = app.state:add_fault(f) }
end

handlers["GET faults"] = function(app)
  local list = {}
  for i, f in ipairs(app.state.faults) do
    list[i] = fault_view(f)
  end
  return wire.json(200, list, nil, true)
end

handlers["DELETE faults"] = function(app)
  local n = #app.state.faults
  app.state.faults = {}
  return ok{ cleared = n }
end

handlers["GET stats"] = function(app)
  return ok(app.state.stats)
end

handlers["GET log"] = function(app)
  return wire.json(200, app.state.log, nil, true)
end

handlers["POST reset"] = function(app)
  storage.clear(app)
  app.state:reset()
  app.library:reset()
  return ok{ reset = true }
end

handlers["GET manifest"] = function(app)
  return ok(app.library:manifest())
end

handlers["GET manifest.txt"] = function(app)
  return { status = 200, headers = { ["content-type"] = "text/plain; charset=utf-8" },
           body = app.library:manifest_text() }
end

handlers["GET library"] = function(app)
  return wire.json(200, app.library:summary(), nil, true)
end

handlers["POST library"] = function(app, body)
  if type(body.touch) ~= "string" then
    return bad("touch must name a file of the library")
  end
  if body.content ~= nil and type(body.content) ~= "string" then
    return bad("content must be a string")
  end
  local lib = app.library
  if not lib.by_name[body.touch] then
    return wire.error(404, "NotFound", "No such file: " .. body.touch)
  end
  local file, err = lib:touch(body.touch, body.content)
  if not file then
    return bad(err)
  end
  return ok{ touched = file.name, updatedDate = file.updated, sha256 = lib:sha256(file) }
end

handlers["GET pushes"] = function(app)
  return wire.json_doc(200, wire.array(app.state.pushes))
end

handlers["GET storage"] = function(app)
  return wire.json_doc(200, storage.summary(app))
end

local function keys_of(set)
  local out = wire.array{}
  for k, v in pairs(set or {}) do
    if v then
      out[#out + 1] = k
    end
  end
  table.sort(out)
  return out
end

handlers["GET users"] = function(app)
  local st = app.state
  local live = {}
  local now = os.time()
  for _, rec in pairs(st.access) do
    if rec.expires_on > now then
      live[rec.user_id] = (live[rec.user_id] or 0) + 1
    end
  end
  local list = wire.array{}
  for id, user in pairs(st.users) do
    local accounts = wire.array{}
    for i, a in ipairs(view.user_accounts(app, user)) do
      accounts[i] = a.id
    end
    local pushed = wire.array{}
    for i, f in ipairs(user.pushed or {}) do
      pushed[i] = f.name
    end
    list[#list + 1] = { id = id, accounts = accounts, removed = keys_of(user.removed),
                        revoked = keys_of(user.revoked),
                        reauthorized = keys_of(user.reauthorized), pushed = pushed,
                        storages = user.storages or {}, tokens = live[id] or 0 }
  end
  table.sort(list, function(a, b) return a.id < b.id end)
  return wire.json_doc(200, list)
end

handlers["GET references"] = function(app)
  local list = wire.array{}
  for id, r in pairs(app.state.references) do
    list[#list + 1] = { id = id, type = r.type, value = r.value, client_id = r.client_id,
                        created = r.created }
  end
  table.sort(list, function(a, b) return a.created < b.created
                                         or (a.created == b.created and a.id < b.id) end)
  return wire.json_doc(200, list)
end

-- GET /sandbox/raw/NAME[?client_id=]
local function raw(app, req)
  if req.method ~= "GET" and req.method ~= "HEAD" then
    return wire.error(405, "MethodNotAllowed", "Use GET")
  end
  local name = api.path_decode(req.path:sub(#"/sandbox/raw/" + 1))
  local file = app.library.by_name[name]
  if not file then
    return wire.error(404, "NotFound", "No such file: " .. name)
  end
  local contract
  if req.query.client_id then
    contract = app.contracts[req.query.client_id]
    if not contract then
      return bad("no contract " .. req.query.client_id)
    end
  else
    local ids = {}
    for id in pairs(app.contracts) do
      ids[#ids + 1] = id
    end
    table.sort(ids)
    contract = app.contracts[ids[1]]
  end
  return app.library:serve(file, contract.key, req.method == "HEAD")
end

handlers["POST consent"] = function(app, body)
  if body.decision ~= "accept" and body.decision ~= "decline" then
    return bad("decision must be accept or decline")
  end
  if body.error_code ~= nil and (type(body.error_code) ~= "string" or body.error_code == "") then
    return bad("error_code must be a string")
  end
  app.state.consent = { decision = body.decision, error_code = body.error_code or "UserCancelled" }
  return ok(app.state.consent)
end

handlers["GET info"] = function(app)
  local contracts = {}
  for client_id, c in pairs(app.contracts) do
    contracts[#contracts + 1] = { client_id = client_id, application_id = c.application_id,
                                  contract_id = c.contract_id }
  end
  table.sort(contracts, function(a, b) return a.client_id < b.client_id end)
  local info = {}
  for k, v in pairs(app.urls) do
    info[k] = v
  end
  info.contracts = contracts
  info.kid = app.signer.kid
  info.jwks_url = app.signer.jku
  info.interactive = app.cfg.interactive
  info.token_faults = tokens.hostile_kinds
  local cfg = app.cfg
  info.library = { files = #app.library.files, accounts = #app.library.accounts,
                   sync_pace = cfg.sync_pace, partial = cfg.partial, big_file = cfg.big_file,
                   directory = cfg.library }
  info.limits = { push = cfg.push_limit, storage_object = cfg.storage_limit,
                  storage_in_memory = cfg.storage_memory }
  return ok(info)
end

-- GET/POST latency, GET/POST connections (netctl.lua).
for k, h in pairs(require("digime.sandbox.netctl").handlers) do
  handlers[k] = h
end

local function loopback(ip)
  return type(ip) == "string" and (ip:match("^127%.") or ip == "::1" or ip:match("^::ffff:127%."))
end

-- A host (of a Host header or an Origin, port allowed) that names this machine: localhost
-- (RFC 6761, subdomains too), 127.x.y.z, [::1].
local function loopback_host(host)
  if type(host) ~= "string" then return false end
  host = host:lower()
  local v6 = host:match("^%[([^%]]+)%]:?%d*$")
  if v6 then return loopback(v6) and true or false end
  local name = host:match("^([^:]+):?%d*$")
  if not name then return false end
  name = name:gsub("%.$", "")
  return name == "localhost" or name:match("%.localhost$") ~= nil
         or name:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

local MAX_BODY = 1024 * 1024   -- a control request's body (the API endpoints have their own)

-- Who may drive the control API: a loopback client (any web page open in a developer's
-- browser is one), so also a loopback Host (a DNS-rebound name is not), no foreign Origin
-- (a cross-site page), and JSON bodies only (a cross-site form or a "simple" fetch cannot
-- send application/json without a preflight, which this API never answers).
-- -> nil when allowed, or the refusal
local function refuse(req)
  if not loopback(req.peer_ip) then
    return wire.error(403, "Forbidden", "The control API answers loopback clients only")
  end
  local h = req.headers
  if not loopback_host(req.authority or h.host) then
    return wire.error(403, "Forbidden", "The control API answers requests for a loopback host only")
  end
  local origin = h.origin
  if origin ~= nil and not loopback_host(origin:match("^https?://([^/]+)$")) then
    return wire.error(403, "Forbidden", "The control API refuses cross-site requests")
  end
  if h["sec-fetch-site"] == "cross-site" then
    return wire.error(403, "Forbidden", "The control API refuses cross-site requests")
  end
  local has_body = h["transfer-encoding"] ~= nil or (bodies.declared(req) or 0) > 0
  local ctype = (h["content-type"] or ""):lower():match("^%s*([^;%s]+)")
  if has_body and ctype ~= "application/json" then
    return wire.error(415, "UnsupportedMediaType", "The control API takes application/json bodies only")
  end
  if bodies.too_large(req, MAX_BODY) then
    local res = wire.error(413, "PayloadTooLarge", "A control request's body is capped at 1 MiB")
    res.headers.connection = "close"
    return res
  end
end

-- The body of a control request, up to MAX_BODY: -> text | nil, refusal
local function control_body(req)
  local blob, why = bodies.receive(req, { limit = MAX_BODY, drain = MAX_BODY })
  if blob then return blob.data end
  local res
  if why == "too_large" or why == "too_large_closed" then
    res = wire.error(413, "PayloadTooLarge", "A control request's body is capped at 1 MiB")
  else
    res = bad("body: " .. tostring(why))
  end
  if why ~= "too_large" then
    res.headers.connection = "close"
  end
  return nil, res
end

function _M.handle(app, req)
  local refused = refuse(req)
  if refused then return refused end
  if req.path:sub(1, 13) == "/sandbox/raw/" and #req.path > 13 then
    return raw(app, req)
  end
  local name = req.path:match("^/sandbox/([%w_%-%.]+)/?$")
  local h = name and handlers[req.method .. " " .. name]
  if not h then
    return wire.error(404, "NotFound", "No such control entry: " .. req.method .. " " .. req.path)
  end
  local text, refusal = control_body(req)
  if not text then return refusal end
  local body, err = wire.decode_object(text)
  if not body then
    return bad("body: " .. tostring(err))
  end
  return h(app, body, req)
end

return _M
