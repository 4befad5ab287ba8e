-- Cloud storage (doc/protocol.md "Cloud storage"): a per-application file area identified by a
-- storage id, created provisionally by a contract (and bound later to the user who consents
-- with its storageRef) or on a user's first GET storage.
--
-- API endpoints (mapped in routes.lua):
--   POST /v1.7/storage   CONTRACT claims -> 201 {"id", "kid"}   a provisional storage
--   GET  /v1.7/storage   USER claims     -> 200 {"id", "kid"}   the user's storage for this
--                                                                contract (made on first use)
--   "kid" is the key id cloud JWTs carry: "<contractId>_<applicationId>_0".
--
-- The cloud API under /cloud/v1/ (its own mount), with the CLOUD JWT: header {"alg":"PS512",
-- "typ":"at+jwt","kid":"<contractId>_<applicationId>_0"}, claims sub = applicationId,
-- iss = contractId, aud = "cloud", iat, exp; signed with the contract key.
--   GET    clouds/{sid}/files/apps/{appId}{/folder/}?recursive=true|false
--            -> 200 {"files": [{"id", "name", "originalName", "originalPath", "path"}], "total"}
--               (a folder that holds nothing lists nothing; recursive defaults to false)
--   POST   clouds/{sid}/files/apps/{appId}{/folder/}{name}   application/octet-stream body,
--            Content-Length or chunked -> 201 {"id", "name", ..., "size"} (replaces a file
--            of the same path)
--   GET    clouds/{sid}/files/apps/{appId}{/path}    -> 200 application/octet-stream
--   DELETE clouds/{sid}/files/apps/{appId}{/path}    -> 200 {"deleted": 1}; a path ending in
--            "/" deletes the folder and everything under it -> 200 {"deleted": n}
-- Paths: "/"-separated segments, each percent-decoded (spaces and any UTF-8 allowed; empty,
-- "." and ".." segments and an encoded "/" refused). Paths are case-insensitive (ASCII): a
-- listing's "path" and "name" are lower-cased, "originalPath" and "originalName" are as
-- uploaded, and paths include "/apps/<appId>/", so originalPath "/apps/<appId>/folder/" goes
-- with path "/apps/<appid lower-cased>/folder/".
-- Objects are stored as sent, never decrypted: up to --storage-limit bytes each (413 past
-- it), in memory up to 1 MiB (while all objects in memory stay under 64 MiB), in a temporary
-- file otherwise; temporary files go with their objects, at reset and at exit.
--
-- Errors have the storage shape {"error": "<code>", "message": "<text>"}:
--   401 Unauthorized (no Bearer), InvalidToken (not a JWT, alg, typ, unknown kid, signature,
--       aud, iss/sub, iat in the future), TokenExpired (exp passed)
--   403 Forbidden (the storage belongs to another contract, or the path's appId is not the
--       token's application)
--   404 NotFound (no such storage, file or folder, or not a storage path)
--   400 BadRequest (a bad path or recursive value), 405 MethodNotAllowed,
--   413 PayloadTooLarge, 415 UnsupportedMediaType (upload not application/octet-stream)

local core = require "digime.core"
local api = require "digime.sandbox.api"
local wire = require "digime.sandbox.wire"
local util = require "digime.sandbox.util"
local tokens = require "digime.sandbox.tokens"
local bodies = require "digime.sandbox.body"

local type, tostring, pairs, ipairs = type, tostring, pairs, ipairs
local concat, sort = table.concat, table.sort
local format = string.format
local math_floor = math.floor
local os_time = os.time

local _M = {}

local PREFIX = "/cloud/v1/"
local IAT_SKEW = 300     -- seconds an iat may be ahead of the sandbox clock
local MEMORY_TOTAL = 64 * 1024 * 1024   -- bytes of objects kept in memory, in all

local now_ms = util.now_ms

local function serr(status, code, message)
  return wire.json(status, { error = code, message = message })
end
_M.error = serr

local function uuid()
  local b = core.random_bytes(16)
  local h = b:gsub(".", function(c) return format("%02x", c:byte()) end)
  -- version 4, variant 10
  local v = format("%x", 8 + (tonumber(h:sub(17, 17), 16) % 4))
  return h:sub(1, 8) .. "-" .. h:sub(9, 12) .. "-4" .. h:sub(14, 16) .. "-" .. v
         .. h:sub(18, 20) .. "-" .. h:sub(21, 32)
end

function _M.kid(contract)
  return contract.contract_id .. "_" .. contract.application_id .. "_0"
end

-- Storages --------------------------------------------------------------------------------

-- A new storage of a contract (client_id), bound to user_id when given.
function _M.create(app, client_id, user_id)
  local c = app.contracts[client_id]
  local s = {
    id = uuid(), kid = _M.kid(c), client_id = client_id, application_id = c.application_id,
    contract_id = c.contract_id, user_id = user_id, created = now_ms(), objects = {},
    count = 0, bytes = 0,
  }
  app.state.storages[s.id] = s
  return s
end

local function drop_object(s, obj)
  bodies.discard(obj.blob)
  s.objects[obj.key] = nil
  s.count = s.count - 1
  s.bytes = s.bytes - obj.size
end

-- Forgets a storage and removes its temporary files.
function _M.drop(app, s)
  for _, obj in pairs(s.objects) do
    bodies.discard(obj.blob)
  end
  s.objects = {}
  app.state.storages[s.id] = nil
end

-- Removes every temporary file (at reset and exit).
function _M.clear(app)
  for _, s in pairs(app.state.storages) do
    for _, obj in pairs(s.objects) do
      bodies.discard(obj.blob)
    end
  end
end

-- Binds a storage to a user as the user's storage of the storage's contract.
function _M.bind(s, user)
  s.user_id = user.id
  user.storages = user.storages or {}
  user.storages[s.client_id] = s.id
end

-- The storages bound to a user go with the user.
function _M.delete_user(app, user)
  for _, sid in pairs(user.storages or {}) do
    local s = app.state.storages[sid]
    if s then
      _M.drop(app, s)
    end
  end
end

-- The user's storage for a contract, made on first use.
function _M.of_user(app, user, client_id)
  local sid = user.storages and user.storages[client_id]
  local s = sid and app.state.storages[sid]
  if not s then
    s = _M.create(app, client_id, user.id)
    _M.bind(s, user)
  end
  return s
end

-- Summary for GET /sandbox/storage.
function _M.summary(app)
  local list = {}
  for _, s in pairs(app.state.storages) do
    local files = {}
    for _, obj in pairs(s.objects) do
      files[#files + 1] = { path = obj.dir .. obj.name, key = obj.key, size = obj.size,
                            sha256 = obj.blob.sha256, on_disk = obj.blob.path ~= nil,
                            file = obj.blob.path, id = obj.id }
    end
    sort(files, function(a, b) return a.key < b.key end)
    list[#list + 1] = { id = s.id, kid = s.kid, client_id = s.client_id, user = s.user_id,
                        provisional = s.user_id == nil, created = s.created,
                        count = s.count, bytes = s.bytes, files = wire.array(files) }
  end
  sort(list, function(a, b) return a.created < b.created or (a.created == b.created and a.id < b.id) end)
  return wire.array(list)
end

-- API endpoints ------------------------------------------------------------------------------

local function storage_answer(status, s)
  return wire.json(status, { id = s.id, kid = s.kid })
end

-- POST storage: a provisional storage of the contract.
local function create(app, _, auth)
  return storage_answer(201, _M.create(app, auth.client_id))
end

-- GET storage: the user's storage.
local function get(app, _, auth)
  local rec, user = api.user(app, auth)
  if not rec then
    return user
  end
  return storage_answer(200, _M.of_user(app, user, auth.client_id))
end

-- The endpoints under /v1.7/ (routes.lua maps them).
_M.post_storage = create
_M.get_storage = get

-- The cloud JWT ------------------------------------------------------------------------------

local is_integer = util.is_integer

-- -> contract | nil, response
local function authenticate(app, req)
  local h = req.headers["authorization"]
  local jwt = type(h) == "string" and h:match("^[Bb][Ee][Aa][Rr][Ee][Rr] +(%S+)%s*$")
  if not jwt then
    return nil, serr(401, "Unauthorized", "An Authorization: Bearer <JWT> header is required")
  end
  local parsed, why = tokens.decode(jwt)
  if not parsed or not parsed.payload then
    return nil, serr(401, "InvalidToken", "The token is not a JWT: " .. tostring(why))
  end
  local header, claims = parsed.header, parsed.payload
  if header.alg ~= "PS512" then
    return nil, serr(401, "InvalidToken", "The token's alg must be PS512")
  end
  if type(header.typ) ~= "string" or header.typ:lower() ~= "at+jwt" then
    return nil, serr(401, "InvalidToken", "The token's typ must be at+jwt")
  end
  local contract
  for _, c in pairs(app.contracts) do
    if header.kid == _M.kid(c) then
      contract = c
    end
  end
  if not contract then
    return nil, serr(401, "InvalidToken", "The token's kid (" .. tostring(header.kid)
                     .. ") names no contract: <contractId>_<applicationId>_0 expected")
  end
  req.log.client_id = contract.application_id .. "_" .. contract.contract_id
  if not tokens.verify_ps512(parsed, contract.key) then
    return nil, serr(401, "InvalidToken", "The token's signature does not verify")
  end
  local aud = claims.aud
  local aud_ok = aud == "cloud"
  if type(aud) == "table" then
    for _, a in ipairs(aud) do
      aud_ok = aud_ok or a == "cloud"
    end
  end
  if not aud_ok then
    return nil, serr(401, "InvalidToken", "The token's aud must be cloud")
  end
  if claims.iss ~= contract.contract_id or claims.sub ~= contract.application_id then
    return nil, serr(401, "InvalidToken",
                     "The token's iss and sub must be the contract id and the application id")
  end
  local now = os_time()
  if not is_integer(claims.exp) then
    return nil, serr(401, "InvalidToken", "The token needs exp (seconds)")
  end
  if claims.exp <= now then
    return nil, serr(401, "TokenExpired", "The token expired at " .. format("%d", claims.exp))
  end
  if not is_integer(claims.iat) or claims.iat > now + IAT_SKEW then
    return nil, serr(401, "InvalidToken", "The token needs iat (seconds), not in the future")
  end
  return contract
end

-- Paths --------------------------------------------------------------------------------------

-- "/a/b%20c/" -> { "a", "b c" }, trailing slash | nil, message
local function split_path(rest)
  if rest == "" then
    return {}, true
  end
  if rest:sub(1, 1) ~= "/" then
    return nil, "the path must start with /"
  end
  local trailing = rest:sub(-1) == "/"
  local body = rest:sub(2, trailing and -2 or -1)
  local segs = {}
  if body == "" then
    return segs, true
  end
  for raw in (body .. "/"):gmatch("([^/]*)/") do
    local seg = api.path_decode(raw)
    if seg == "" then
      return nil, "the path has an empty segment"
    elseif seg == "." or seg == ".." then
      return nil, "the path has a . or .. segment"
    elseif seg:find("[/%z]") then
      return nil, "a path segment holds an encoded / or NUL"
    end
    segs[#segs + 1] = seg
  end
  return segs, trailing
end

local function folder_of(app_id, segs, n)
  local parts = { "/apps/", app_id, "/" }
  for i = 1, n do
    parts[#parts + 1] = segs[i]
    parts[#parts + 1] = "/"
  end
  return concat(parts)
end

local function entry(obj)
  return { id = obj.id, name = obj.name:lower(), originalName = obj.name,
           originalPath = obj.dir, path = obj.dir_key }
end

-- Cloud handlers ----------------------------------------------------------------------------

local function list(_, req, s, dir)
  local recursive = req.query.recursive
  if recursive ~= nil and recursive ~= "true" and recursive ~= "false" then
    return serr(400, "BadRequest", "recursive must be true or false")
  end
  local key = dir:lower()
  local files = {}
  for _, obj in pairs(s.objects) do
    if obj.dir_key == key or (recursive == "true" and obj.dir_key:sub(1, #key) == key) then
      files[#files + 1] = obj
    end
  end
  sort(files, function(a, b) return a.key < b.key end)
  for i, obj in ipairs(files) do
    files[i] = entry(obj)
  end
  return wire.json_doc(200, { files = wire.array(files), total = #files })
end

-- Bytes of stored objects held in memory, over every storage.
local function memory_in_use(app)
  local n = 0
  for _, sto in pairs(app.state.storages) do
    for _, obj in pairs(sto.objects) do
      if obj.blob.data then
        n = n + obj.size
      end
    end
  end
  return n
end
_M.memory_in_use = memory_in_use

local function upload(app, req, s, dir, name)
  local media = req.headers["content-type"]
  media = type(media) == "string" and (media:match("^%s*([^;%s]+)") or ""):lower()
  if media ~= "application/octet-stream" then
    return serr(415, "UnsupportedMediaType", "The content-type must be application/octet-stream")
  end
  local limit = app.cfg.storage_limit
  local too_large = serr(413, "PayloadTooLarge",
                         "The object is larger than the limit of " .. limit .. " bytes")
  if bodies.too_large(req, limit) then
    too_large.headers.connection = "close"
    return too_large
  end
  local spill = app.cfg.storage_memory
  if memory_in_use(app) >= MEMORY_TOTAL then
    spill = 0      -- memory is full: every new object goes to a temporary file
  end
  local blob, why = bodies.receive(req, { limit = limit, spill = spill })
  if not blob then
    if why == "too_large" then
      return too_large
    end
    local res = why == "too_large_closed" and too_large
                or serr(400, "BadRequest", tostring(why))
    res.headers.connection = "close"
    return res
  end
  local key = (dir .. name):lower()
  local old = s.objects[key]
  if old then
    drop_object(s, old)
  end
  local now = now_ms()
  local obj = { id = uuid(), key = key, name = name, dir = dir, dir_key = dir:lower(),
                size = blob.size, blob = blob, created = old and old.created or now,
                updated = now }
  s.objects[key] = obj
  s.count = s.count + 1
  s.bytes = s.bytes + blob.size
  local stats = app.state.stats
  stats.storage_uploads = stats.storage_uploads + 1
  stats.storage_upload_bytes = stats.storage_upload_bytes + blob.size
  local e = entry(obj)
  e.size = blob.size
  return wire.json(201, e)
end

local function download(app, req, s, dir, name)
  local obj = s.objects[(dir .. name):lower()]
  if not obj then
    return serr(404, "NotFound", "The file (" .. dir .. name .. ") does not exist")
  end
  local headers = { ["content-type"] = "application/octet-stream",
                    ["last-modified"] = os.date("!%a, %d %b %Y %H:%M:%S GMT",
                                                math_floor(obj.updated / 1000)) }
  if req.method == "HEAD" then
    return { status = 200, headers = headers, body = "", content_length = obj.size }
  end
  app.state.stats.storage_downloads = app.state.stats.storage_downloads + 1
  if obj.blob.data then
    return { status = 200, headers = headers, body = obj.blob.data }
  end
  local source, err = bodies.source(obj.blob)
  if not source then
    return serr(500, "InternalError", "The stored object cannot be read: " .. tostring(err))
  end
  return { status = 200, headers = headers, stream = source, content_length = obj.size }
end

local function delete(_, _, s, dir, name)
  if name then
    local obj = s.objects[(dir .. name):lower()]
    if not obj then
      return serr(404, "NotFound", "The file (" .. dir .. name .. ") does not exist")
    end
    drop_object(s, obj)
    return wire.json(200, { deleted = 1 })
  end
  local key = dir:lower()
  local gone = {}
  for _, obj in pairs(s.objects) do
    if obj.dir_key:sub(1, #key) == key then
      gone[#gone + 1] = obj
    end
  end
  if #gone == 0 then
    return serr(404, "NotFound", "The folder (" .. dir .. ") holds nothing")
  end
  for _, obj in ipairs(gone) do
    drop_object(s, obj)
  end
  return wire.json(200, { deleted = #gone })
end

function _M.handle(app, req)
  local rest = req.path:sub(#PREFIX + 1)
  local sid_raw, app_raw, tail = rest:match("^clouds/([^/]+)/files/apps/([^/]+)(.*)$")
  if not sid_raw then
    return serr(404, "NotFound", "No such endpoint: " .. req.method .. " " .. req.path)
  end
  local m = req.method
  if m ~= "GET" and m ~= "HEAD" and m ~= "POST" and m ~= "DELETE" then
    return serr(405, "MethodNotAllowed", "Method " .. m .. " is not allowed here")
  end
  local contract, res = authenticate(app, req)
  if not contract then
    return res
  end
  local sid, app_id = api.path_decode(sid_raw), api.path_decode(app_raw)
  local s = app.state.storages[sid]
  if not s then
    return serr(404, "NotFound", "The storage (" .. sid .. ") does not exist")
  end
  if s.contract_id ~= contract.contract_id or s.application_id ~= contract.application_id then
    return serr(403, "Forbidden", "The storage (" .. sid .. ") belongs to another contract")
  end
  if app_id ~= contract.application_id then
    return serr(403, "Forbidden", "The path's application (" .. app_id
                .. ") is not the token's (" .. contract.application_id .. ")")
  end
  local segs, trailing = split_path(tail)
  if not segs then
    return serr(400, "BadRequest", trailing)
  end
  local is_folder = trailing or #segs == 0
  local dir = folder_of(app_id, segs, is_folder and #segs or #segs - 1)
  local name = not is_folder and segs[#segs] or nil
  if m == "POST" then
    if is_folder then
      return serr(400, "BadRequest", "An upload needs a file name after the folder")
    end
    return upload(app, req, s, dir, name)
  elseif m == "DELETE" then
    return delete(app, req, s, dir, name)
  elseif is_folder then
    return list(app, req, s, dir)
  end
  return download(app, req, s, dir, name)
end

return _M
