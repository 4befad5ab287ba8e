--- URLs for an authorized user: onboard another service, reauthorize one account, revoke an
-- account's permission (doc/protocol.md, onboarding URLs). All refresh the token as the read calls do.
local json = require "digime.json"
local errors = require "digime.errors"
local validate = require "digime.validate"
local jwt = require "digime.jwt"
local urls = require "digime.urls"
local consent = require "digime.consent"
local signed_call = require "digime.signed_call"

local type = type

local _M = {}

local invalid_response = errors.invalid_response

local header_string = validate.header_string

-- POST oauth/token/reference as a user call, its claims (the current token, the callback and
-- opts.state) built per attempt; finish(code, session) gets the verified reference_code and
-- the session.
local function reference_call(sdk, opts, body, finish)
  local client_id = jwt.client_id(sdk, opts.contract)
  local text, jerr = json.encode(body)
  if not text then return nil, errors.validation("session_options", "cannot be encoded: " .. jerr) end
  return signed_call.user(sdk, opts.contract, opts.user_access_token, {
    method = "POST", url = sdk.config.base_url .. "oauth/token/reference",
    headers = { ["content-type"] = "application/json", accept = "application/json" },
    body = text, json = true, what = "oauth/token/reference",
  }, function(res)
    local payload, perr = jwt.verified_payload(sdk, res.json, "oauth/token/reference")
    if not payload then return nil, perr end
    local code = payload.reference_code
    if type(code) ~= "string" or code == "" then
      return nil, invalid_response("oauth/token/reference", "the token carries no reference_code")
    end
    local s, serr = consent.check_session(res.json.session, "oauth/token/reference")
    if not s then return nil, serr end
    return finish(code, s)
  end, function(token)
    return json.object_of(
      "access_token", token.access_token.value,
      "client_id", client_id,
      "nonce", jwt.nonce(),
      "redirect_uri", opts.callback,
      "state", opts.state,
      "timestamp", jwt.now_ms())
  end)
end

local check_onboard = validate.checker("get_onboard_service_url", {
  { "contract", validate.contract },
  { "callback", validate.string },
  { "user_access_token", validate.user_access_token },
  { "service_id", consent.check_service_id },
  { "source_type", consent.check_source_type },
  { "sample_data", consent.check_sample_data },
  { "session_options", validate.session_options, true },
  { "locale", validate.string, true },
  { "include_sample_data_only_sources", validate.boolean, true },
  { "trigger_query", validate.boolean, true },
  { "sources_scope", validate.sources_scope, true },
  { "state", validate.any_string, true },
})

--- sdk:get_onboard_service_url{ contract, callback, user_access_token, service_id?, ... }
-- -> { url, session, user_access_token }
function _M.get_onboard_service_url(sdk, opts)
  local ok, err = check_onboard(opts)
  if not ok then return nil, err end
  return reference_call(sdk, opts,
    json.object_of("agent", sdk.config.agent, "actions", opts.session_options),
    function(code, session)
      local url = consent.service_url(sdk.config.onboard_url .. "onboard", code, opts)
      return { url = url, session = session }
    end)
end

local check_reauth_account = validate.checker("get_reauthorize_account_url", {
  { "contract", validate.contract },
  { "callback", validate.string },
  { "user_access_token", validate.user_access_token },
  { "account_id", validate.string },
  { "locale", validate.string, true },
})

--- sdk:get_reauthorize_account_url{ contract, callback, user_access_token, account_id, locale? }
-- -> { url, session, user_access_token }
function _M.get_reauthorize_account_url(sdk, opts)
  local ok, err = check_reauth_account(opts)
  if not ok then return nil, err end
  local res, rerr = reference_call(sdk, opts, json.object_of("agent", sdk.config.agent),
    function(code, session) return { code = code, session = session } end)
  if not res then return nil, rerr end
  -- The account reference (a contract call: a 401 here is not about the user's token).
  local account_ref, aerr = consent.reference(sdk, opts.contract, "accountId", opts.account_id)
  if not account_ref then
    aerr.user_access_token = res.user_access_token
    return nil, aerr
  end
  return {
    url = urls.build(sdk.config.onboard_url .. "reauthorize", "code", res.code,
                     "accountRef", account_ref, "lng", opts.locale),
    session = res.session,
    user_access_token = res.user_access_token,
  }
end

local check_revoke = validate.checker("get_revoke_account_permission_url", validate.USER_CALL, {
  { "account_id", header_string },
  { "redirect_uri", header_string },
})

--- sdk:get_revoke_account_permission_url{ contract, user_access_token, account_id,
--   redirect_uri } -> { location, user_access_token }
function _M.get_revoke_account_permission_url(sdk, opts)
  local ok, err = check_revoke(opts)
  if not ok then return nil, err end
  return signed_call.user(sdk, opts.contract, opts.user_access_token, {
    method = "GET", url = sdk.config.base_url .. "permission-access/revoke/h:accountId",
    headers = { accept = "application/json", accountid = opts.account_id,
                redirecturi = opts.redirect_uri },
    json = true, what = "permission-access/revoke",
  }, function(res)
    local loc = type(res.json) == "table" and res.json.location
    if type(loc) ~= "string" or loc == "" then
      return nil, invalid_response("permission-access/revoke", "the answer has no location")
    end
    return { location = loc }
  end)
end

return _M
