--- Cloud storage (doc/protocol.md "Cloud storage"): a per-application file area, encrypted on the client with
-- the contract key (the digi.me file format), opaque to the server.
local core = require "digime.core"
local json = require "digime.json"
local errors = require "digime.errors"
local validate = require "digime.validate"
local jwt = require "digime.jwt"
local request = require "digime.request"
local signed_call = require "digime.signed_call"
local file_body = require "digime.file_body"
local source = require "digime.source"

local type, ipairs = type, ipairs
local concat, floor = table.concat, math.floor
local find, sub, lower, gsub = string.find, string.sub, string.lower, string.gsub

local _M = {}

local invalid_response = errors.invalid_response
local seg = request.encode_segment

--- Percent-encodes a storage path segment by segment, keeping its "/".
local function encode_path(p)
  return (gsub(p, "[^/]+", seg))
end

--- leadTrail of the Node SDK, but total: "" or nil -> "/", "a//b" -> "/a/b/", "x" -> "/x/".
local function lead_trail(p)
  if p == nil or p == "" then return "/" end
  local parts = {}
  for part in p:gmatch("[^/]+") do parts[#parts + 1] = part end
  if #parts == 0 then return "/" end
  return "/" .. concat(parts, "/") .. "/"
end

--- lead of the Node SDK, but total: a leading "/", duplicate slashes folded.
local function lead(p)
  local trail = sub(p, -1) == "/"
  local s = lead_trail(p)
  if not trail then s = sub(s, 1, -2) end
  return s
end

local function files_url(sdk, storage_id)
  return sdk.config.cloud_base_url .. "clouds/" .. seg(storage_id) .. "/files/apps/" ..
         seg(sdk.config.application_id)
end

local function check_storage(v)
  local s = type(v) == "table" and v
  if not s or type(s.id) ~= "string" or s.id == "" or type(s.kid) ~= "string" then
    return nil
  end
  return { id = s.id, kid = s.kid }
end

local check_create = validate.checker("create_provisional_storage", validate.CONTRACT_CALL)

--- sdk:create_provisional_storage{ contract } -> { storage = { id, kid } }
function _M.create_provisional_storage(sdk, opts)
  local ok, err = check_create(opts)
  if not ok then return nil, err end
  local res, rerr = signed_call.contract(sdk, opts.contract, {
    method = "POST", url = sdk.config.base_url .. "storage",
    headers = { ["content-type"] = "application/json", accept = "application/json" },
    body = "", json = true, what = "storage",
  })
  if not res then return nil, rerr end
  local s = check_storage(res.json)
  if not s then return nil, invalid_response("storage", "no storage { id, kid } in the answer") end
  return { storage = s }
end

local check_user_storage = validate.checker("get_user_storage", validate.USER_CALL)

--- sdk:get_user_storage{ contract, user_access_token } -> { storage = { id, kid },
--   user_access_token }
function _M.get_user_storage(sdk, opts)
  local ok, err = check_user_storage(opts)
  if not ok then return nil, err end
  return signed_call.user(sdk, opts.contract, opts.user_access_token, {
    method = "GET", url = sdk.config.base_url .. "storage",
    headers = { ["content-type"] = "application/json", accept = "application/json" },
    json = true, what = "storage",
  }, function(res)
    local s = check_storage(res.json)
    if not s then return nil, invalid_response("storage", "no storage { id, kid } in the answer") end
    return { storage = s }
  end)
end

-- originalPath/path post-processing (doc/protocol.md "Cloud storage"): the part after "/apps/<id>".
local function strip_marker(value, marker)
  if type(value) ~= "string" then return value end
  local i, j = find(value, marker, 1, true)
  if not i then return value end
  local rest = sub(value, j + 1)
  local k = find(rest, marker, 1, true)
  return k and sub(rest, 1, k - 1) or rest
end

-- The options of the calls on a storage's files: contract and storage_id first.
local IN_STORAGE = { { "contract", validate.contract }, { "storage_id", validate.segment } }
-- A path to a file or folder (required): a non-empty string without "." or ".." segments.
local FILE_PATH = { { "path", validate.string }, { "path", validate.segments } }

local check_list = validate.checker("list_storage_files", IN_STORAGE, {
  { "path", validate.segments, true },
  { "recursive", validate.boolean, true },
})

--- sdk:list_storage_files{ contract, storage_id, path?, recursive? } -> { files, total }
-- files: { id, name, originalName, originalPath, path }, paths relative to the application.
function _M.list_storage_files(sdk, opts)
  local ok, err = check_list(opts)
  if not ok then return nil, err end
  local res, rerr = signed_call.cloud(sdk, opts.contract, {
    method = "GET",
    url = files_url(sdk, opts.storage_id) .. encode_path(lead_trail(opts.path)) ..
          "?recursive=" .. (opts.recursive and "true" or "false"),
    headers = { accept = "application/json" }, json = true, what = "storage files",
  })
  if not res then return nil, rerr end
  local doc = res.json
  if type(doc) ~= "table" or type(doc.files) ~= "table" then
    return nil, invalid_response("storage files", "no files array in the answer")
  end
  local app = sdk.config.application_id
  local files = {}
  for i, f in ipairs(doc.files) do
    if type(f) ~= "table" or type(f.name) ~= "string" or type(f.path) ~= "string" then
      return nil, invalid_response("storage files", "file " .. i .. " has no name or path")
    end
    files[i] = { id = f.id, name = f.name, originalName = f.originalName,
                 originalPath = strip_marker(f.originalPath, "/apps/" .. app),
                 path = strip_marker(f.path, "/apps/" .. lower(app)) }
  end
  return { files = files, total = json.integer(doc.total) or #files }
end

-- The upload body: the plaintext from a string, a file handle or a reader function, encrypted
-- in C chunk by chunk as the request takes it (source.data_source, source.streamed_body), so an
-- upload of any size holds about a chunk and the engine's send buffer in memory. The
-- encryptor always writes the key and IV, so an empty file is a valid object.
local function encrypting(key)
  return function(next_plain)
    local enc = core.file_encryptor(key)
    local ended = false
    local function close() enc:close() end
    return function()
      while not ended do
        local chunk, err = next_plain()
        if chunk == nil then
          if err ~= nil then return nil, err end
          ended = true
          local last = enc:finish()
          close()
          return last
        end
        local out = enc:update(chunk)
        if out ~= "" then return out end
      end
      return nil
    end, close
  end
end

-- The encrypted size of n bytes of plaintext: the key segment, the IV and the PKCS#7-padded
-- AES-CBC data (always at least one block).
local function encrypted_size(key, n)
  return key:size() + 16 + (floor(n / 16) + 1) * 16
end
_M.encrypted_size = encrypted_size

local function no_slash(v, field)
  if find(v, "/", 1, true) then
    return nil, errors.validation(field, "must not contain '/' (use path)")
  end
  return true
end

local check_upload = validate.checker("upload_file_to_storage", IN_STORAGE, {
  { "file_name", validate.segment },
  { "path", validate.segments, true },
  { "file_data", validate.data_source },
  { "file_name", no_slash },
})

--- sdk:upload_file_to_storage{ contract, storage_id, file_name, file_data, path? }
-- -> { uploaded = true, status }. file_data: a string, a file handle or a reader function.
function _M.upload_file_to_storage(sdk, opts)
  local ok, err = check_upload(opts)
  if not ok then return nil, err end
  local key, kerr = jwt.contract_key(opts.contract)
  if not key then return nil, kerr end
  local src, serr = source.data_source(opts.file_data, "file_data", sdk.config.limits.body)
  if not src then return nil, serr end
  local body = source.streamed_body(src, encrypting(key))
  local res, rerr = signed_call.cloud(sdk, opts.contract, {
    method = "POST",
    url = files_url(sdk, opts.storage_id) .. encode_path(lead_trail(opts.path)) .. seg(opts.file_name),
    headers = { ["content-type"] = "application/octet-stream", accept = "application/json" },
    body = body.read, body_length = src.length and encrypted_size(key, src.length),
    on_attempt = body.on_attempt, what = "storage upload",
  })
  body.close()
  if not res then return nil, source.body_error(body, rerr) end
  return { uploaded = true, status = res.status }
end

local check_download = validate.checker("download_storage_file", IN_STORAGE, FILE_PATH, {
  { "sink", validate.sink, true },
})

--- sdk:download_storage_file{ contract, storage_id, path, sink? } -> { file_data | (sink),
--   status }. Decrypted in C as it arrives; an HTTP error is an error, never decrypted.
function _M.download_storage_file(sdk, opts)
  local ok, err = check_download(opts)
  if not ok then return nil, err end
  local key, kerr = jwt.contract_key(opts.contract)
  if not key then return nil, kerr end
  local sink = opts.sink
  -- a cloud file is in the same format as a library file, never compressed
  local body = file_body.new{ key = key, sink = sink, compression = "none",
                              max_output = sink and math.huge or sdk.config.limits.body }
  local res, rerr = signed_call.cloud(sdk, opts.contract, {
    method = "GET", url = files_url(sdk, opts.storage_id) .. encode_path(lead(opts.path)),
    headers = { accept = "application/octet-stream" }, what = "storage download",
    sink_once = sink ~= nil, body_filter = body,
  })
  if not res then return nil, rerr end
  local cok, cerr = body:end_sink()
  if not cok then return nil, errors.sdk("SinkError", cerr) end
  return { file_data = not sink and body:data() or nil, status = res.status }
end

local check_delete = validate.checker("delete_storage_files", IN_STORAGE, FILE_PATH)

--- sdk:delete_storage_files{ contract, storage_id, path } -> { deleted = true, status }
-- A path ending in "/" deletes that folder.
function _M.delete_storage_files(sdk, opts)
  local ok, err = check_delete(opts)
  if not ok then return nil, err end
  local res, rerr = signed_call.cloud(sdk, opts.contract, {
    method = "DELETE", url = files_url(sdk, opts.storage_id) .. encode_path(lead(opts.path)),
    headers = { accept = "application/json" }, what = "storage delete",
  })
  if not res then return nil, rerr end
  return { deleted = true, status = res.status }
end

return _M
