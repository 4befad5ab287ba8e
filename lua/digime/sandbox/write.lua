-- Pushes (doc/protocol.md "Pushing data"), USER claims:
--
--   POST permission-access/import                       push to the user's library: raw bytes,
--        content-type application/octet-stream, a FileDescriptor header (a PS512 JWT signed
--        with the contract key, {"metadata": {mimeType, accounts, reference?, tags?, ...}}),
--        Content-Length or chunked, at most --push-limit bytes (413 past it). The bytes
--        become a file of the user's library with raw metadata (mimetype, accounts
--        [{accountid}], reference, tags, created, appid, contractid, and any other key of the
--        descriptor lower-cased); the next sync lists it and serves it encrypted like any
--        other file. -> 200 {"status": "delivered", "expires": <ms>}
--   POST permission-access/import/h:accountId/fhir/{stu3|3.0.2}    push to a provider: the
--        accountId header names one of the user's accounts, content-type application/json,
--        a JSON object body. Recorded (GET /sandbox/pushes, the portability report), never
--        readable back. -> 200 {}; another version -> 404
--
-- Refusals: 401 InvalidToken for an access token that is not live; 400 ValidationErrors
-- (with the reason after "Parameter validation errors: ") for a wrong content-type, a missing
-- or bad FileDescriptor, a missing accountId header or a body that is not a JSON object; 404
-- AccountNotFound for an accountId that is not the user's; 413 PayloadTooLarge.

local cjson = require "cjson.safe"
local api = require "digime.sandbox.api"
local wire = require "digime.sandbox.wire"
local util = require "digime.sandbox.util"
local tokens = require "digime.sandbox.tokens"
local library = require "digime.sandbox.library"
local view = require "digime.sandbox.library_view"
local bodies = require "digime.sandbox.body"

local type, tostring, pairs, ipairs = type, tostring, pairs, ipairs

local _M = {}

local RETENTION_MS = 30 * 86400 * 1000    -- "expires" of a delivered push: 30 days on

local bad = wire.invalid_params
local now_ms = util.now_ms

-- The media type of the request, lower-cased, without parameters.
function _M.media_type(req)
  local ct = req.headers["content-type"]
  local t = type(ct) == "string" and ct:match("^%s*([^;%s]+)")
  return t and t:lower()
end

function _M.too_large(limit, close)
  local res = wire.error(413, "PayloadTooLarge",
                         "The body is larger than the limit of " .. limit .. " bytes")
  if close then
    res.headers.connection = "close"
  end
  return res
end

-- Reads a push body into memory: -> blob | nil, response
function _M.read_body(app, req)
  local limit = app.cfg.push_limit
  if bodies.too_large(req, limit) then
    return nil, _M.too_large(limit, true)
  end
  local blob, why = bodies.receive(req, { limit = limit })
  if blob then
    return blob
  end
  if why == "too_large" then
    return nil, _M.too_large(limit)
  elseif why == "too_large_closed" then
    return nil, _M.too_large(limit, true)
  end
  local res = bad(tostring(why))
  res.headers.connection = "close"
  return nil, res
end

local is_object, is_list = util.is_object, util.is_list

local function string_list(v)
  if not is_list(v) then
    return false
  end
  for _, s in ipairs(v) do
    if type(s) ~= "string" then
      return false
    end
  end
  return true
end

-- The FileDescriptor header: -> metadata | nil, response
local function file_descriptor(req, auth)
  local h = req.headers["filedescriptor"]
  if type(h) ~= "string" or h:match("^%s*$") then
    return nil, bad("the FileDescriptor header is missing")
  end
  local parsed, why = tokens.decode((h:match("^%s*(.-)%s*$")))
  if not parsed or not parsed.payload then
    return nil, bad("the FileDescriptor header is not a JWT with a JSON payload ("
                    .. tostring(why) .. ")")
  end
  if parsed.header.alg ~= "PS512" or parsed.header.typ ~= "JWT" then
    return nil, bad('the FileDescriptor JWT header must be {"alg":"PS512","typ":"JWT"}')
  end
  if not tokens.verify_ps512(parsed, auth.contract.key) then
    return nil, bad("the FileDescriptor signature does not verify with the contract's key")
  end
  local m = parsed.payload.metadata
  if not is_object(m) then
    return nil, bad("the FileDescriptor payload needs a metadata object")
  end
  if type(m.mimeType) ~= "string" or m.mimeType == "" then
    return nil, bad("metadata.mimeType must be a non-empty string")
  end
  if not is_list(m.accounts) then
    return nil, bad("metadata.accounts must be an array")
  end
  for _, a in ipairs(m.accounts) do
    if not is_object(a) or type(a.accountId) ~= "string" or a.accountId == "" then
      return nil, bad("each of metadata.accounts must be {\"accountId\": \"...\"}")
    end
  end
  for _, k in ipairs{ "reference", "tags" } do
    if m[k] ~= nil and not string_list(m[k]) then
      return nil, bad("metadata." .. k .. " must be an array of strings")
    end
  end
  return m
end

local EXT = {
  ["application/json"] = "json", ["text/plain"] = "txt", ["text/csv"] = "csv",
  ["application/xml"] = "xml", ["text/xml"] = "xml", ["text/html"] = "html",
  ["application/pdf"] = "pdf", ["image/png"] = "png", ["image/jpeg"] = "jpg",
  ["image/gif"] = "gif", ["application/fhir+json"] = "json",
}

local function copy_list(list)
  local out = wire.array{}
  for i, v in ipairs(list) do
    out[i] = v
  end
  return out
end

-- The raw metadata a pushed file is read back with (doc/protocol.md "Pushing data").
local function raw_metadata(m, contract, created)
  local out = {}
  for k, v in pairs(m) do
    if type(k) == "string" and k ~= "mimeType" and k ~= "accounts" and k ~= "reference"
       and k ~= "tags" then
      out[k:lower()] = v
    end
  end
  local accounts = wire.array{}
  for i, a in ipairs(m.accounts) do
    accounts[i] = { accountid = a.accountId }
  end
  out.mimetype = m.mimeType
  out.accounts = accounts
  if m.reference ~= nil then
    out.reference = copy_list(m.reference)
  end
  if m.tags ~= nil then
    out.tags = copy_list(m.tags)
  end
  out.created = created
  out.appid = contract.application_id
  out.contractid = contract.contract_id
  return out
end

local function push_name(st, mime)
  local ext = EXT[(mime:match("^%s*([^;%s]+)") or ""):lower()] or "bin"
  return "push-" .. os.date("!%Y%m%dT%H%M%SZ") .. "-" .. st.random(10):lower() .. "." .. ext
end

-- POST permission-access/import
local function import(app, req, auth)
  local rec, user = api.user(app, auth)
  if not rec then
    return user
  end
  if _M.media_type(req) ~= "application/octet-stream" then
    return bad("the content-type must be application/octet-stream")
  end
  local m, err = file_descriptor(req, auth)
  if not m then
    return err
  end
  local blob
  blob, err = _M.read_body(app, req)
  if not blob then
    return err
  end
  local st = app.state
  local created = now_ms()
  local metadata = raw_metadata(m, auth.contract, created)
  local ids = {}
  for i, a in ipairs(m.accounts) do
    ids[i] = a.accountId
  end
  local name = push_name(st, m.mimeType)
  while user.pushed_by_name and user.pushed_by_name[name] do
    name = push_name(st, m.mimeType)
  end
  local file = library.pushed_file(name, blob.data, metadata, ids)
  user.pushed = user.pushed or {}
  user.pushed_by_name = user.pushed_by_name or {}
  user.pushed[#user.pushed + 1] = file
  user.pushed_by_name[name] = file
  st.pushes[#st.pushes + 1] = {
    kind = "library", user = user.id, client_id = auth.client_id, name = name,
    size = blob.size, sha256 = blob.sha256, mimetype = m.mimeType, accounts = copy_list(ids),
    time = created,
  }
  st.stats.pushes = st.stats.pushes + 1
  st.stats.push_bytes = st.stats.push_bytes + blob.size
  return wire.json(200, { status = "delivered", expires = created + RETENTION_MS })
end

-- The token's user and the account of the accountId header, if the user has it:
-- -> user, account | nil, response
function _M.user_account(app, req, auth)
  local rec, user = api.user(app, auth)
  if not rec then
    return nil, user
  end
  local id = req.headers["accountid"]
  if type(id) ~= "string" or id == "" then
    return nil, bad("the accountId header is missing")
  end
  for _, a in ipairs(view.user_accounts(app, user)) do
    if a.id == id then
      return user, a
    end
  end
  return nil, wire.error(404, "AccountNotFound", "The account (" .. id .. ") does not exist")
end

local FHIR_VERSIONS = { stu3 = true, ["3.0.2"] = true }

-- POST permission-access/import/h:accountId/fhir/{version}
local function provider(app, req, auth)
  local version = api.path_decode(req.path:match("/fhir/([^/]+)$"))
  if not FHIR_VERSIONS[version] then
    return wire.error(404, "NotFound", "FHIR version " .. version
                      .. " is not supported (stu3 or 3.0.2)")
  end
  local user, account = _M.user_account(app, req, auth)
  if not user then
    return account
  end
  if _M.media_type(req) ~= "application/json" then
    return bad("the content-type must be application/json")
  end
  local blob, err = _M.read_body(app, req)
  if not blob then
    return err
  end
  local data = cjson.decode(blob.data)
  if not is_object(data) or blob.data:match("^%s*%[") then
    return bad("the body must be a JSON object")
  end
  local st = app.state
  st.pushes[#st.pushes + 1] = {
    kind = "provider", user = user.id, client_id = auth.client_id, account = account.id,
    standard = "fhir", version = version, size = blob.size, sha256 = blob.sha256,
    resourceType = type(data.resourceType) == "string" and data.resourceType or nil,
    time = now_ms(),
  }
  st.stats.provider_pushes = st.stats.provider_pushes + 1
  st.stats.push_bytes = st.stats.push_bytes + blob.size
  return wire.json(200, {})
end

-- The endpoints (routes.lua maps them).
_M.import = import
_M.provider = provider

return _M
