--- Managing users, accounts and the contract: delete_user, delete_account,
-- get_portability_report, get_service_sample_data_sets, get_contract_details (doc/protocol.md).
-- Results are plain tables of what the caller needs, never transport objects.
local errors = require "digime.errors"
local validate = require "digime.validate"
local request = require "digime.request"
local urls = require "digime.urls"
local signed_call = require "digime.signed_call"

local type = type

local _M = {}

local seg = request.encode_segment

-- Numbers that go into a URL as digits: urls.number prints integers with %d, which has no
-- representation for math.huge or values past 2^63 (Lua 5.4 raises, LuaJIT prints garbage).
local MAX_URL_NUMBER = 2 ^ 53

local header_string = validate.header_string

--- A non-negative integer that goes into a URL path.
local function url_integer(v, field)
  if not validate.is_integer(v) or v < 0 or v > MAX_URL_NUMBER then
    return nil, errors.validation(field, "must be a non-negative integer")
  end
  return true
end

local USER_CALL = validate.USER_CALL
local invalid_response = errors.invalid_response

local check_delete_user = validate.checker("delete_user", USER_CALL)

--- sdk:delete_user{ contract, user_access_token } -> { deleted = true, status }
function _M.delete_user(sdk, opts)
  local ok, err = check_delete_user(opts)
  if not ok then return nil, err end
  return signed_call.user(sdk, opts.contract, opts.user_access_token, {
    method = "DELETE", url = sdk.config.base_url .. "user",
    headers = { accept = "application/json" }, what = "user",
  }, function(res)
    return { deleted = true, status = res.status }
  end)
end

local check_delete_account = validate.checker("delete_account", USER_CALL, {
  { "account_id", header_string },
})

--- sdk:delete_account{ contract, user_access_token, account_id } -> { deleted = true, status }
function _M.delete_account(sdk, opts)
  local ok, err = check_delete_account(opts)
  if not ok then return nil, err end
  return signed_call.user(sdk, opts.contract, opts.user_access_token, {
    method = "DELETE", url = sdk.config.base_url .. "permission-access/service/h:accountId",
    headers = { accept = "application/json", ["content-type"] = "application/json",
                accountid = opts.account_id },
    what = "permission-access/service",
  }, function(res)
    return { deleted = true, status = res.status }
  end)
end

local check_report = validate.checker("get_portability_report", USER_CALL, {
  { "format", validate.string },
  { "service_type", validate.segment },
  { "from", validate.number, true, 0, MAX_URL_NUMBER },
  { "to", validate.number, true, 0, MAX_URL_NUMBER },
})

--- sdk:get_portability_report{ contract, user_access_token, format = "xml",
--   service_type = "medmij", from?, to? } -> { file = <report text>, user_access_token }
-- (absent from/to are left out, not sent as "undefined"; values are encoded.)
function _M.get_portability_report(sdk, opts)
  local ok, err = check_report(opts)
  if not ok then return nil, err end
  local url = urls.build(sdk.config.base_url .. "export/" .. seg(opts.service_type) .. "/report",
    "format", opts.format,
    "from", opts.from and urls.number(opts.from) or nil,
    "to", opts.to and urls.number(opts.to) or nil)
  return signed_call.user(sdk, opts.contract, opts.user_access_token, {
    method = "GET", url = url, headers = { accept = "application/octet-stream" },
    what = "export report",
  }, function(res)
    return { file = res.body }
  end)
end

local check_sample_sets = validate.checker("get_service_sample_data_sets", validate.CONTRACT_CALL, {
  { "source_id", url_integer },
})

--- sdk:get_service_sample_data_sets{ contract, source_id } -> { data_sets = { <id> = { name,
--   description } } }
function _M.get_service_sample_data_sets(sdk, opts)
  local ok, err = check_sample_sets(opts)
  if not ok then return nil, err end
  local res, rerr = signed_call.contract(sdk, opts.contract, {
    method = "GET",
    url = sdk.config.base_url .. "permission-access/sample/datasets/" .. seg(urls.number(opts.source_id)),
    headers = { accept = "application/json" }, json = true, what = "sample datasets",
  })
  if not res then return nil, rerr end
  if type(res.json) ~= "table" then
    return nil, invalid_response("sample datasets", "the answer is not a JSON object")
  end
  return { data_sets = res.json }
end

local check_contract_details = validate.checker("get_contract_details", validate.CONTRACT_CALL)

--- sdk:get_contract_details{ contract } -> the contract as digi.me describes it
-- ({ id, accessType, application = { id, name, ... }, expirationDate, ... }).
function _M.get_contract_details(sdk, opts)
  local ok, err = check_contract_details(opts)
  if not ok then return nil, err end
  local res, rerr = signed_call.contract(sdk, opts.contract, {
    method = "GET", url = sdk.config.base_url .. "permission-access/contract",
    headers = { accept = "application/json", ["content-type"] = "application/json" },
    json = true, what = "permission-access/contract",
  })
  if not res then return nil, rerr end
  local c = res.json
  if type(c) ~= "table" or type(c.id) ~= "string" then
    return nil, invalid_response("permission-access/contract", "the answer is not a contract")
  end
  return c
end

return _M
