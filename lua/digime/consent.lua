--- What the consent pages and the calls that lead to them share (auth.lua: authorize and
-- reauthorize; onboard.lua: onboarding another service, reauthorizing an account): the session
-- of an answer, the reference call, the query of a consent page, and the checks of the
-- options they take in common (doc/protocol.md "Authorization and onboarding URLs").
local json = require "digime.json"
local signed_call = require "digime.signed_call"
local errors = require "digime.errors"
local validate = require "digime.validate"
local urls = require "digime.urls"

local type = type

local _M = {}

local invalid_response = errors.invalid_response

-- A session as the server sends it: { expiry = number, key = string }.
function _M.check_session(session, what)
  if type(session) ~= "table" or type(session.key) ~= "string" or session.key == ""
     or type(session.expiry) ~= "number" then
    return nil, invalid_response(what, "no valid session { expiry, key } in the answer")
  end
  session.expiry = json.integer(session.expiry) or session.expiry
  return session
end

-- POST reference { type, value } -> id (used for storage and account references).
function _M.reference(sdk, contract, ref_type, value)
  local res, err = signed_call.contract(sdk, contract, {
    method = "POST", url = sdk.config.base_url .. "reference",
    headers = { ["content-type"] = "application/json", accept = "application/json" },
    body = json.encode(json.object_of("type", ref_type, "value", value)),
    json = true, what = "reference",
  })
  if not res then return nil, err end
  local id = type(res.json) == "table" and res.json.id
  if type(id) ~= "string" or id == "" then
    return nil, invalid_response("reference", "the answer has no id")
  end
  return id
end

--- The query of the authorize and onboard pages (doc/protocol.md): the same parameters
-- in the same order; only authorize has a storageRef.
function _M.service_url(page, code, opts, storage_ref)
  local sample = opts.sample_data
  return urls.build(page,
    "code", code,
    "sourceType", opts.source_type or "pull",
    "service", opts.service_id and opts.service_id ~= 0 and urls.number(opts.service_id) or nil,
    "sampleDataSet", sample and sample.data_set or nil,
    "sampleDataAutoOnboard", sample and sample.auto_onboard == true and "true" or nil,
    "lng", opts.locale,
    "includeSampleDataOnlySources", urls.flag(opts.include_sample_data_only_sources),
    "storageRef", storage_ref,
    "triggerQuery", urls.flag(opts.trigger_query),
    "sourcesScope", opts.sources_scope and urls.sources_scope(opts.sources_scope) or nil)
end

function _M.check_sample_data(v)
  if v == nil then return true end
  local ok, err = validate.options(v, validate.set{ "data_set", "auto_onboard" }, "sample_data")
  if not ok then return nil, err end
  ok, err = validate.string(v.data_set, "sample_data.data_set")
  if not ok then return nil, err end
  return validate.boolean(v.auto_onboard, "sample_data.auto_onboard", true)
end

function _M.check_source_type(v)
  if v == nil or v == "pull" or v == "push" then return true end
  return nil, errors.validation("source_type", 'must be "pull" or "push"')
end

function _M.check_service_id(v)
  if v == nil then return true end
  if not validate.is_integer(v) or v < 0 then
    return nil, errors.validation("service_id", "must be a non-negative integer")
  end
  return true
end

return _M
