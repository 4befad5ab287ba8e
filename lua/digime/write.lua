--- Pushing data: to the user's library, or to a provider (api doc §10). A push is never sent
-- twice except after a token refresh, and then only when its data can be sent again.
local json = require "digime.json"
local errors = require "digime.errors"
local validate = require "digime.validate"
local jwt = require "digime.jwt"
local request = require "digime.request"
local user_call = require "digime.user_call"

local type, pcall, tostring, ipairs = type, pcall, tostring, ipairs
local concat = table.concat

local _M = {}

local seg = request.encode_segment

local function invalid(field, problem)
  return errors.validation(field, problem)
end

-- The push body as a source that can be read, and re-read when possible.
-- Strings re-read freely; file handles are rewound to where they started; a reader function
-- is one-shot. Returns an object with read() -> data | nil, err; or nil, err.
local function body_source(file_data, limit)
  if type(file_data) == "string" then
    return { read = function() return file_data end }
  end
  if type(file_data) == "function" then
    local used = false
    return { read = function()
      if used then
        return nil, errors.sdk("StreamNotRewindable",
          "data.file_data is a reader function: it cannot be sent again after a token refresh; " ..
          "push again with a fresh reader (nothing was stored by the refused attempt)")
      end
      used = true
      local parts, size = {}, 0
      while true do
        local ok, chunk = pcall(file_data)
        if not ok then return nil, errors.sdk("SinkError", "the reader raised: " .. tostring(chunk)) end
        if chunk == nil or chunk == "" then break end
        if type(chunk) ~= "string" then
          return nil, invalid("data.file_data", "reader returned a " .. type(chunk) .. ", not a string")
        end
        size = size + #chunk
        if size > limit then return nil, invalid("data.file_data", "is larger than limits.body") end
        parts[#parts + 1] = chunk
      end
      return concat(parts)
    end }
  end
  -- a file handle (or anything with read and seek)
  local ok, start = pcall(file_data.seek, file_data, "cur")
  local rewindable = ok and type(start) == "number"
  local used = false
  return { read = function()
    if used then
      if not rewindable then
        return nil, errors.sdk("StreamNotRewindable",
          "data.file_data cannot be rewound, so it cannot be sent again after a token refresh")
      end
      file_data:seek("set", start)
    end
    used = true
    local rok, data = pcall(file_data.read, file_data, "*a")
    if not rok or type(data) ~= "string" then
      return nil, errors.sdk("SinkError", "reading data.file_data failed: " .. tostring(data))
    end
    if #data > limit then return nil, invalid("data.file_data", "is larger than limits.body") end
    return data
  end }
end

local function check_descriptor(d)
  local field = "data.file_descriptor"
  if not validate.is_record(d) then return nil, invalid(field, "must be a table") end
  local ok, err = validate.string(d.mimeType, field .. ".mimeType")
  if not ok then return nil, err end
  if not validate.is_array(d.accounts) then
    return nil, invalid(field .. ".accounts", "must be an array of { accountId = ... }")
  end
  for i, a in ipairs(d.accounts) do
    if type(a) ~= "table" or type(a.accountId) ~= "string" then
      return nil, invalid(field .. ".accounts[" .. i .. "]", "must be { accountId = string }")
    end
  end
  for _, k in ipairs{ "reference", "tags" } do
    if d[k] ~= nil then
      if not validate.is_array(d[k]) then return nil, invalid(field .. "." .. k, "must be an array of strings") end
      for i, v in ipairs(d[k]) do
        if type(v) ~= "string" then return nil, invalid(field .. "." .. k .. "[" .. i .. "]", "must be a string") end
      end
    end
  end
  return true
end

local is_data_source = validate.is_data_source

local PUSH_OPTS = validate.set{ "contract", "user_access_token", "type", "data", "version",
                                "standard", "account_id" }

local function push_library(sdk, opts)
  local data = opts.data
  if not validate.is_record(data) then return nil, invalid("data", "must be a table") end
  local ok, err = validate.options(data, validate.set{ "file_data", "file_name", "file_descriptor" }, "data")
  if not ok then return nil, err end
  if not is_data_source(data.file_data) then
    return nil, invalid("data.file_data", "must be a string, a file handle or a reader function")
  end
  ok, err = validate.string(data.file_name, "data.file_name")
  if not ok then return nil, err end
  ok, err = check_descriptor(data.file_descriptor)
  if not ok then return nil, err end
  local key, kerr = jwt.contract_key(opts.contract)
  if not key then return nil, kerr end
  -- FILEDESC: the descriptor as given, signed once per push (api doc §3.2).
  local descriptor_jwt, derr = jwt.sign(key, nil, json.object_of("metadata", data.file_descriptor))
  if not descriptor_jwt then return nil, derr end
  local source = body_source(data.file_data, sdk.config.limits.body)
  return user_call.send_with(sdk, opts.contract, opts.user_access_token, function()
    local body, berr = source.read()
    if not body then return nil, berr end
    return {
      method = "POST", url = sdk.config.base_url .. "permission-access/import",
      headers = { ["content-type"] = "application/octet-stream", filedescriptor = descriptor_jwt },
      body = body, what = "permission-access/import",
    }
  end, function() return {} end)
end

local function push_provider(sdk, opts)
  if not validate.is_record(opts.data) then return nil, invalid("data", "must be a table") end
  if opts.version ~= "stu3" and opts.version ~= "3.0.2" then
    return nil, invalid("version", 'must be "stu3" or "3.0.2"')
  end
  if opts.standard ~= "fhir" then return nil, invalid("standard", 'must be "fhir"') end
  local ok, err = validate.string(opts.account_id, "account_id")
  if not ok then return nil, err end
  local body, jerr = json.encode(opts.data)
  if not body then return nil, invalid("data", "cannot be encoded as JSON: " .. jerr) end
  return user_call.send(sdk, opts.contract, opts.user_access_token, {
    method = "POST",
    url = sdk.config.base_url .. "permission-access/import/h:accountId/" .. seg(opts.standard) ..
          "/" .. seg(opts.version),
    headers = { ["content-type"] = "application/json", accountid = opts.account_id },
    body = body, what = "provider push",
  }, function() return {} end)
end

--- sdk:push_data{ contract, user_access_token, type = "library", data = { file_data,
--   file_name, file_descriptor = { mimeType, accounts, reference?, tags? } } }
-- sdk:push_data{ contract, user_access_token, type = "provider", data = <JSON table>,
--   version = "stu3"|"3.0.2", standard = "fhir", account_id }
-- -> { user_access_token }. file_data: a string, a file handle (rewound if a token refresh
-- needs a resend) or a reader function (one-shot: a resend fails with StreamNotRewindable).
function _M.push_data(sdk, opts)
  local ok, err = validate.options(opts, PUSH_OPTS, "push_data")
  if not ok then return nil, err end
  ok, err = validate.contract(opts.contract)
  if not ok then return nil, err end
  ok, err = validate.user_access_token(opts.user_access_token, "user_access_token")
  if not ok then return nil, err end
  if opts.type == "library" then
    return push_library(sdk, opts)
  elseif opts.type == "provider" then
    return push_provider(sdk, opts)
  end
  return nil, invalid("type", 'must be "library" or "provider"')
end

return _M
