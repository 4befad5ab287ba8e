--- The source catalogue: query_sources, query_countries, query_platforms, query_categories
-- (doc/protocol.md "Discovery"). Contract-scoped POSTs that only read, so they are retried like GETs.
local json = require "digime.json"
local signed_call = require "digime.signed_call"
local errors = require "digime.errors"
local validate = require "digime.validate"

local type, pairs, ipairs, setmetatable, getmetatable = type, pairs, ipairs, setmetatable, getmetatable

local _M = {}

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = deep_copy(x) end
  return setmetatable(c, getmetatable(v))
end

local function check_include(params, field)
  local q = params.query
  if q == nil then return true end
  if not validate.is_record(q) then
    return nil, errors.validation(field .. ".query", "must be a table")
  end
  if q.include ~= nil then
    if not validate.is_array(q.include) then
      return nil, errors.validation(field .. ".query.include", "must be an array of strings")
    end
    for i, v in ipairs(q.include) do
      if type(v) ~= "string" then
        return nil, errors.validation(field .. ".query.include[" .. i .. "]", "must be a string")
      end
    end
  end
  if q.filter ~= nil and not validate.is_record(q.filter) then
    return nil, errors.validation(field .. ".query.filter", "must be a table")
  end
  return true
end

local function post(sdk, contract, path, params, params_key)
  local body
  if params ~= nil then
    local err
    body, err = json.encode(params)
    if not body then return nil, errors.validation(params_key, "cannot be encoded as JSON: " .. err) end
  end
  local res, rerr = signed_call.contract(sdk, contract, {
    method = "POST", url = sdk.config.base_url .. path, idempotent = true,
    headers = { ["content-type"] = "application/json", accept = "application/json" },
    body = body or "", json = true, what = path,
  })
  if not res then return nil, rerr end
  local doc = res.json
  if type(doc) ~= "table" or type(doc.data) ~= "table" then
    return nil, errors.sdk("InvalidResponse", path .. ": the answer has no data array")
  end
  return doc
end

-- A call's body parameters (optional): a table whose `query`, if any, is { include?, filter? }.
local function check_params(params, field)
  if params == nil then return true end
  if not validate.is_record(params) then
    return nil, errors.validation(field, "must be a table")
  end
  return check_include(params, field)
end

local function make(name, path, params_key, add_defaults)
  local check = validate.checker(name, validate.CONTRACT_CALL, { { params_key, check_params } })
  return function(sdk, opts)
    local ok, err = check(opts)
    if not ok then return nil, err end
    local params = opts[params_key]
    if add_defaults then params = add_defaults(deep_copy(params or {})) end
    return post(sdk, opts.contract, path, params, params_key)
  end
end

-- querySources' defaults (doc/protocol.md "Discovery"): pull sources that are approved, unless asked
-- otherwise.
local function source_defaults(p)
  p.query = p.query or {}
  p.query.filter = p.query.filter or {}
  local f = p.query.filter
  if f.type == nil then f.type = { id = json.array{ 1 } } end
  if f.publishedStatus == nil then f.publishedStatus = json.array{ "approved" } end
  return p
end

--- sdk:query_sources{ contract, sources_body_params? } -> { data, limit, offset, total }
_M.query_sources = make("query_sources", "discovery/sources", "sources_body_params", source_defaults)
--- sdk:query_countries{ contract, countries_body_params? } -> { data }
_M.query_countries = make("query_countries", "discovery/countries", "countries_body_params")
--- sdk:query_platforms{ contract, platforms_body_params? } -> { data }
_M.query_platforms = make("query_platforms", "discovery/platforms", "platforms_body_params")
--- sdk:query_categories{ contract, categories_body_params? } -> { data }
_M.query_categories = make("query_categories", "discovery/categories", "categories_body_params")

return _M
