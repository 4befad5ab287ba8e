--- Reading a user's library: sessions, file lists, file metadata, accounts (doc/protocol.md).
local json = require "digime.json"
local errors = require "digime.errors"
local validate = require "digime.validate"
local request = require "digime.request"
local metadata = require "digime.metadata"
local signed_call = require "digime.signed_call"
local file_body = require "digime.file_body"
local file_list = require "digime.file_list"

local type, pairs, ipairs, next = type, pairs, ipairs, next
local huge = math.huge
local jwt = require "digime.jwt"

local _M = {}

local seg = request.encode_segment

local invalid_response = errors.invalid_response
local USER_CALL = validate.USER_CALL

local check_session = validate.checker("read_session", USER_CALL, {
  { "session_options", validate.pull_options, true },
})

--- sdk:read_session{ contract, user_access_token, session_options? }
-- -> { session = { expiry, key }, user_access_token }
function _M.read_session(sdk, opts)
  local ok, err = check_session(opts)
  if not ok then return nil, err end
  local so = opts.session_options
  -- The options' keys at the top level, then agent (which overrides any agent given).
  local body = {}
  if so then
    for k, v in pairs(so) do body[k] = v end
  end
  body.agent = sdk.config.agent
  local text, jerr = json.encode(body)
  if not text then return nil, errors.validation("session_options", "cannot be encoded: " .. jerr) end
  return signed_call.user(sdk, opts.contract, opts.user_access_token, {
    method = "POST", url = sdk.config.base_url .. "permission-access/trigger",
    headers = { ["content-type"] = "application/json", accept = "application/json" },
    body = text, json = true, what = "permission-access/trigger",
  }, function(res)
    local s = type(res.json) == "table" and res.json.session
    if type(s) ~= "table" or type(s.key) ~= "string" or s.key == "" or type(s.expiry) ~= "number" then
      return nil, invalid_response("permission-access/trigger", "no valid session { expiry, key }")
    end
    return { session = { expiry = json.integer(s.expiry) or s.expiry, key = s.key } }
  end)
end

--- Checks a file list answer (doc/protocol.md "Reading a library"): status.state known, fileList entries with a
-- string name and a numeric updatedDate. Other keys pass through.
function _M.check_file_list(body)
  local what = "permission-access/query"
  local ok, err = file_list.check_status(type(body) == "table" and body.status or nil)
  if not ok then return nil, err end
  local list = body.fileList
  if list ~= nil then
    if type(list) ~= "table" then
      return nil, invalid_response(what, "fileList is not an array")
    end
    for i, f in ipairs(list) do
      if type(f) ~= "table" or type(f.name) ~= "string" or f.name == ""
         or type(f.updatedDate) ~= "number" then
        return nil, invalid_response(what, "fileList[" .. i .. "] needs a name and an updatedDate")
      end
    end
  end
  return body
end

local check_list = validate.checker("read_file_list", USER_CALL, {
  { "session_key", validate.segment },
})

--- sdk:read_file_list{ contract, user_access_token, session_key }
-- -> { status = { state, details? }, fileList = {...}?, user_access_token, ... }
function _M.read_file_list(sdk, opts)
  local ok, err = check_list(opts)
  if not ok then return nil, err end
  return signed_call.user(sdk, opts.contract, opts.user_access_token, {
    method = "GET", url = sdk.config.base_url .. "permission-access/query/" .. seg(opts.session_key),
    headers = { accept = "application/json" }, json = true, what = "permission-access/query",
    max_json = sdk.config.limits.file_list,
  }, function(res)
    local body, berr = _M.check_file_list(res.json)
    if not body then return nil, berr end
    body.userAccessToken = nil  -- the token in force is user_access_token
    return body
  end)
end

local FILE_IN_SESSION = { { "session_key", validate.segment }, { "file_name", validate.segment } }
local check_meta = validate.checker("read_file_metadata", USER_CALL, FILE_IN_SESSION)

--- sdk:read_file_metadata{ contract, user_access_token, session_key, file_name }
-- -> { file_metadata, file_name, compression, user_access_token }
function _M.read_file_metadata(sdk, opts)
  local ok, err = check_meta(opts)
  if not ok then return nil, err end
  return signed_call.user(sdk, opts.contract, opts.user_access_token, {
    method = "HEAD",
    url = sdk.config.base_url .. "permission-access/query/" .. seg(opts.session_key) .. "/" .. seg(opts.file_name),
    headers = { accept = "application/json" }, what = "file metadata",
  }, function(res)
    local meta, compression = metadata.decode(res.headers["x-metadata"])
    if not meta then return nil, compression end
    return { file_metadata = meta, file_name = opts.file_name, compression = compression,
             last_modified = res.headers["last-modified"] }
  end)
end


--- sdk:read_file{ contract, user_access_token, session_key, file_name, sink?, max_size? }
-- -> { file_data, file_name, file_metadata, last_modified, compression, user_access_token }
-- The body is decrypted and decompressed in C as it arrives. With a `sink` (a function
-- called with each chunk and finally with nil, or a file handle) `file_data` is absent and
-- memory stays bounded whatever the file's size.
function _M.read_file(sdk, opts)
  return _M.fetch_file(sdk, opts, nil)
end

local function check_max_size(ms, field)
  if ms ~= nil and not (ms == huge or (validate.is_integer(ms) and ms >= 0)) then
    return nil, errors.validation(field, "must be an integer >= 0 (or math.huge)")
  end
  return true
end

local check_file_opts = validate.checker("read_file", USER_CALL, FILE_IN_SESSION, {
  { "max_size", check_max_size },
  { "sink", validate.sink, true },
})

-- A sync's downloads: the contract, the token and the session key were checked when it began
-- (a token in force since is one the SDK got itself); the file name comes from the server's
-- list and the sink from the caller's factory, so those two are checked for every file.
local check_listed_file = validate.checker("read_all_files", {
  { "contract" }, { "user_access_token" }, { "session_key" },
  { "file_name", validate.segment }, { "sink", validate.sink, true },
})

--- read_file with a table `cancel` that holds the engine request while it runs (so that a
-- sync can cancel its downloads); `listed`: a sync's download (see check_listed_file).
function _M.fetch_file(sdk, opts, cancel, listed)
  local ok, err = (listed and check_listed_file or check_file_opts)(opts)
  if not ok then return nil, err end
  local key, kerr = jwt.contract_key(opts.contract)
  if not key then return nil, kerr end

  local meta, compression, meta_err, started
  local body = file_body.new{
    key = key, sink = opts.sink,
    max_output = opts.max_size or (opts.sink and huge or sdk.config.limits.body),
    -- the file's compression is named in the answer's x-metadata
    compression = function(_, headers)
      started = true
      meta, compression = metadata.decode(headers["x-metadata"])
      if not meta then
        meta_err = compression
        return nil, meta_err.message
      end
      return compression
    end,
  }

  local res, rerr = signed_call.user(sdk, opts.contract, opts.user_access_token, {
    method = "GET",
    url = sdk.config.base_url .. "permission-access/query/" .. seg(opts.session_key) .. "/" .. seg(opts.file_name),
    headers = { accept = "application/octet-stream" }, what = "file",
    on_attempt = function() meta_err, started = nil, false end,
    sink_once = opts.sink ~= nil,
    body_filter = body,
    cancel = cancel,
  }, function(r)
    if not r.piped then
      return nil, invalid_response("file", "the answer was not a file")
    end
    return { r = r }
  end)
  if not res then
    if meta_err and type(rerr) == "table" then
      meta_err.user_access_token = rerr.user_access_token
      return nil, meta_err
    end
    if started and type(rerr) == "table" and rerr.kind == "NetworkError" and rerr.network == "reset" then
      -- The file began to arrive and was cut short (on every attempt): a broken file.
      return nil, errors.new("FileDecryptionError", "FileDecryptionError",
        "file truncated: " .. rerr.message, { user_access_token = rerr.user_access_token,
                                              cause = rerr, attempts = rerr.attempts })
    end
    return nil, rerr
  end
  local sok, serr = body:end_sink()
  if not sok then
    return nil, errors.sdk("SinkError", serr, { user_access_token = res.user_access_token })
  end
  return {
    file_data = not opts.sink and body:data() or nil,
    file_name = opts.file_name,
    file_metadata = meta,
    compression = compression,
    last_modified = res.r.headers["last-modified"],
    user_access_token = res.user_access_token,
  }
end

local check_accounts = validate.checker("read_accounts", USER_CALL)

--- sdk:read_accounts{ contract, user_access_token } -> { accounts = {...}, user_access_token }
-- Accounts are kept as the server sends them; an unknown account `type` is not an error.
function _M.read_accounts(sdk, opts)
  local ok, err = check_accounts(opts)
  if not ok then return nil, err end
  return signed_call.user(sdk, opts.contract, opts.user_access_token, {
    method = "GET", url = sdk.config.base_url .. "permission-access/accounts",
    headers = { accept = "application/json" }, json = true, what = "permission-access/accounts",
  }, function(res)
    local list = res.json
    if type(list) == "table" and type(list.accounts) == "table" then
      list = list.accounts  -- the wrapped shape digi.me's docs show is read too
    end
    if type(list) ~= "table" or not (next(list) == nil or validate.is_array(list)) then
      return nil, invalid_response("permission-access/accounts", "not an array of accounts")
    end
    for i, a in ipairs(list) do
      if type(a) ~= "table" or type(a.id) ~= "string" then
        return nil, invalid_response("permission-access/accounts", "account " .. i .. " has no id")
      end
    end
    return { accounts = list }
  end)
end

return _M
