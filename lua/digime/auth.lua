--- Authorization: the authorize and reauthorize URLs (PKCE), the code exchange, and refresh
-- (doc/protocol.md "Authorization and onboarding URLs", "User access tokens").
local core = require "digime.core"
local json = require "digime.json"
local errors = require "digime.errors"
local signed_call = require "digime.signed_call"
local jwt = require "digime.jwt"
local tokens = require "digime.tokens"
local validate = require "digime.validate"
local urls = require "digime.urls"
local consent = require "digime.consent"

local type = type

local _M = {}

--- A PKCE pair (doc/protocol.md "PKCE"): verifier = base64url of 32 random alphanumerics (43 chars).
local function pkce()
  local verifier = core.b64url_encode(core.random_alnum(32))
  return verifier, core.b64url_encode(core.sha256(verifier))
end

local client_id = jwt.client_id

local invalid_response = errors.invalid_response
local check_session, reference = consent.check_session, consent.reference
local check_sample_data, check_source_type = consent.check_sample_data, consent.check_source_type
local check_service_id = consent.check_service_id
-- POSTs a JSON body signed per attempt by claims(); verifies the answer's token; returns the
-- token payload and the body.
local function signed_post(sdk, contract, path, body, claims, what)
  local text, jerr = json.encode(body)
  if not text then return nil, errors.validation(what, "cannot be encoded as JSON: " .. jerr) end
  local res, err = signed_call.contract(sdk, contract, {
    method = "POST", url = sdk.config.base_url .. path,
    headers = { ["content-type"] = "application/json", accept = "application/json" },
    body = text, json = true, what = path,
  }, claims)
  if not res then return nil, err end
  local payload, perr = jwt.verified_payload(sdk, res.json, path)
  if not payload then return nil, perr end
  return payload, res.json
end

local function actions_body(sdk, session_options)
  return json.object_of("agent", sdk.config.agent, "actions", session_options)
end

local check_authorize = validate.checker("get_authorize_url", {
  { "contract", validate.contract },
  { "callback", validate.string },
  { "state", validate.any_string },
  { "service_id", check_service_id },
  { "user_access_token", validate.user_access_token, true },
  { "session_options", validate.session_options, true },
  { "source_type", check_source_type },
  { "sample_data", check_sample_data },
  { "locale", validate.string, true },
  { "include_sample_data_only_sources", validate.boolean, true },
  { "storage_id", validate.string, true },
  { "trigger_query", validate.boolean, true },
  { "sources_scope", validate.sources_scope, true },
})

-- The signed POST both consent flows start with (call names it): PKCE (a fresh pair per
-- attempt), the user's token when there is one, the callback and state; response_mode and
-- response_type with `response` (the first-time flow). The answer's token must carry
-- code_field and its body a session. -> code, session, code_verifier | nil, err
local function consent_post(sdk, opts, path, code_field, call, response)
  local contract = opts.contract
  local verifier
  local payload, body = signed_post(sdk, contract, path, actions_body(sdk, opts.session_options),
    function()
      -- A new verifier per attempt: the one returned belongs to the attempt that got through.
      local challenge
      verifier, challenge = pkce()
      local token = opts.user_access_token
      return json.object_of(
        "access_token", token and token.access_token.value,
        "client_id", client_id(sdk, contract),
        "code_challenge", challenge,
        "code_challenge_method", "S256",
        "nonce", jwt.nonce(),
        "redirect_uri", opts.callback,
        "response_mode", response and "query",
        "response_type", response and "code",
        "state", opts.state,
        "timestamp", jwt.now_ms())
    end, call)
  if not payload then return nil, body end
  local code = payload[code_field]
  if type(code) ~= "string" or code == "" then
    return nil, invalid_response(path, "the token carries no " .. code_field)
  end
  local session, serr = check_session(body.session, path)
  if not session then return nil, serr end
  return code, session, verifier
end

--- sdk:get_authorize_url{ contract, callback, state, ... } -> { url, code_verifier, session }
function _M.get_authorize_url(sdk, opts)
  local ok, err = check_authorize(opts)
  if not ok then return nil, err end
  local code, session, verifier = consent_post(sdk, opts, "oauth/authorize",
                                               "preauthorization_code", "get_authorize_url", true)
  if not code then return nil, session end

  local storage_ref
  if opts.storage_id then
    local rerr
    storage_ref, rerr = reference(sdk, opts.contract, "cloudId", opts.storage_id)
    if not storage_ref then return nil, rerr end
  end

  local url = consent.service_url(sdk.config.onboard_url .. "authorize", code, opts, storage_ref)
  return { url = url, code_verifier = verifier, session = session }
end

local check_reauthorize = validate.checker("get_reauthorize_url", {
  { "contract", validate.contract },
  { "callback", validate.string },
  { "user_access_token", validate.user_access_token },
  { "state", validate.any_string, true },
  { "locale", validate.string, true },
  { "session_options", validate.session_options, true },
  { "trigger_query", validate.boolean, true },
})

--- sdk:get_reauthorize_url{ contract, callback, user_access_token, state?, locale?,
--   session_options?, trigger_query? } -> { url, code_verifier, session, user_access_token }
function _M.get_reauthorize_url(sdk, opts)
  local ok, err = check_reauthorize(opts)
  if not ok then return nil, err end
  local code, session, verifier = consent_post(sdk, opts, "oauth/token/reference",
                                               "reference_code", "get_reauthorize_url")
  if not code then return nil, session end
  local url = urls.build(sdk.config.onboard_url .. "user-reauth",
    "code", code,
    "lng", opts.locale,
    "triggerQuery", urls.flag(opts.trigger_query))
  return { url = url, code_verifier = verifier, session = session,
           user_access_token = opts.user_access_token }
end

local check_exchange = validate.checker("exchange_code_for_token", validate.CONTRACT_CALL, {
  { "authorization_code", validate.string },
  { "code_verifier", validate.string },
})

--- sdk:exchange_code_for_token{ contract, authorization_code, code_verifier } -> token
function _M.exchange_code_for_token(sdk, opts)
  local ok, err = check_exchange(opts)
  if not ok then return nil, err end
  local contract = opts.contract
  local key, kerr = jwt.contract_key(contract)
  if not key then return nil, kerr end
  return tokens.token_call(sdk, key, {
    claims = function()
      return json.object_of(
        "client_id", client_id(sdk, contract),
        "code", opts.authorization_code,
        "code_verifier", opts.code_verifier,
        "grant_type", "authorization_code",
        "nonce", jwt.nonce(),
        "timestamp", jwt.now_ms())
    end,
  })
end

local check_refresh = validate.checker("refresh_token", validate.USER_CALL)

--- sdk:refresh_token{ contract, user_access_token } -> the new token
function _M.refresh_token(sdk, opts)
  local ok, err = check_refresh(opts)
  if not ok then return nil, err end
  return tokens.refresh(sdk, opts.contract, opts.user_access_token)
end

return _M
