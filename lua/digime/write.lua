--- Pushing data: to the user's library, or to a provider (doc/protocol.md). A push is never sent
-- twice except after a token refresh, and then only when its data can be sent again.
local json = require "digime.json"
local errors = require "digime.errors"
local validate = require "digime.validate"
local jwt = require "digime.jwt"
local request = require "digime.request"
local signed_call = require "digime.signed_call"
local source = require "digime.source"

local type, tostring, ipairs = type, tostring, ipairs

local _M = {}

local seg = request.encode_segment

local function invalid(field, problem)
  return errors.validation(field, problem)
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


local function push_library(sdk, opts)
  local data = opts.data
  if not validate.is_record(data) then return nil, invalid("data", "must be a table") end
  local ok, err = validate.options(data, validate.set{ "file_data", "file_name", "file_descriptor" }, "data")
  if not ok then return nil, err end
  ok, err = validate.data_source(data.file_data, "data.file_data")
  if not ok then return nil, err end
  ok, err = validate.string(data.file_name, "data.file_name")
  if not ok then return nil, err end
  ok, err = check_descriptor(data.file_descriptor)
  if not ok then return nil, err end
  local _, jerr = json.encode(data.file_descriptor)
  if jerr then return nil, invalid("data.file_descriptor", "cannot be sent as JSON: " .. tostring(jerr)) end
  local key, kerr = jwt.contract_key(opts.contract)
  if not key then return nil, kerr end
  -- FILEDESC: the descriptor as given, signed once per push (doc/protocol.md "Request JWTs").
  local descriptor_jwt, derr = jwt.sign(key, nil, json.object_of("metadata", data.file_descriptor))
  if not descriptor_jwt then return nil, derr end
  -- The data streams from its source into the request: memory stays bounded whatever its size.
  local src, serr = source.data_source(data.file_data, "data.file_data", sdk.config.limits.body)
  if not src then return nil, serr end
  local body = source.streamed_body(src)
  local tries = 0
  local res, rerr = signed_call.user(sdk, opts.contract, opts.user_access_token, function()
    -- A resend after a token refresh: only data that can be read again from its start. A
    -- one-shot source fails even if the refused attempt took none of it (the server may
    -- answer 401 before it asks for the body): whether it did is a race, the error is not.
    tries = tries + 1
    if tries > 1 and not src.rewindable then return nil, src.not_rewindable end
    return {
      method = "POST", url = sdk.config.base_url .. "permission-access/import",
      headers = { ["content-type"] = "application/octet-stream", filedescriptor = descriptor_jwt },
      body = body.read, body_length = src.length, on_attempt = body.on_attempt,
      what = "permission-access/import",
    }
  end, function() return {} end)
  body.close()
  if not res then return nil, source.body_error(body, rerr) end
  return res
end

local function push_provider(sdk, opts)
  if not validate.is_record(opts.data) then return nil, invalid("data", "must be a table") end
  if opts.version ~= "stu3" and opts.version ~= "3.0.2" then
    return nil, invalid("version", 'must be "stu3" or "3.0.2"')
  end
  if opts.standard ~= "fhir" then return nil, invalid("standard", 'must be "fhir"') end
  local ok, err = validate.header_string(opts.account_id, "account_id")
  if not ok then return nil, err end
  local body, jerr = json.encode(opts.data)
  if not body then return nil, invalid("data", "cannot be encoded as JSON: " .. jerr) end
  return signed_call.user(sdk, opts.contract, opts.user_access_token, {
    method = "POST",
    url = sdk.config.base_url .. "permission-access/import/h:accountId/" .. seg(opts.standard) ..
          "/" .. seg(opts.version),
    headers = { ["content-type"] = "application/json", accountid = opts.account_id },
    body = body, what = "provider push",
  }, function() return {} end)
end

local function check_type(v, field)
  if v == "library" or v == "provider" then return true end
  return nil, invalid(field, 'must be "library" or "provider"')
end

-- data, version, standard and account_id are checked by push_library or push_provider, by type.
local check_push = validate.checker("push_data", validate.USER_CALL, {
  { "type", check_type },
  { "data" }, { "version" }, { "standard" }, { "account_id" },
})

--- sdk:push_data{ contract, user_access_token, type = "library", data = { file_data,
--   file_name, file_descriptor = { mimeType, accounts, reference?, tags? } } }
-- sdk:push_data{ contract, user_access_token, type = "provider", data = <JSON table>,
--   version = "stu3"|"3.0.2", standard = "fhir", account_id }
-- -> { user_access_token }. file_data: a string, a file handle (rewound if a token refresh
-- needs a resend) or a reader function (one-shot: a resend fails with StreamNotRewindable).
function _M.push_data(sdk, opts)
  local ok, err = check_push(opts)
  if not ok then return nil, err end
  if opts.type == "provider" then return push_provider(sdk, opts) end
  -- The provider-only options have no meaning here: given, they are a mistake to report.
  for _, k in ipairs{ "account_id", "standard", "version" } do
    if opts[k] ~= nil then return nil, invalid(k, 'applies only to type = "provider"') end
  end
  return push_library(sdk, opts)
end

return _M
