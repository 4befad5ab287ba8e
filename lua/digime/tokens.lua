--- User access tokens: the shape the SDK hands out, refresh (single-flight: refresh tokens
-- rotate, so a second refresh with the same token would end the user's session), and the
-- refresh-and-retry-once wrapper of user-scoped calls.
local core = require "digime.core"
local json = require "digime.json"
local errors = require "digime.errors"
local request = require "digime.request"
local jwt = require "digime.jwt"
local scheduler = require "digime.scheduler"
local flight = require "digime.store.flight"

local type, tostring, pairs = type, tostring, pairs

local _M = {}

local function bad_token(message)
  return errors.sdk("InvalidResponse", "the token answer is malformed: " .. message)
end

--- The SDK's token table from a verified oauth/token payload (doc/protocol.md, strict:
-- a token without values is an error, not a token of empty strings).
function _M.from_payload(p)
  local at, rt = p.access_token, p.refresh_token
  if type(at) ~= "table" or type(at.value) ~= "string" or at.value == "" then
    return nil, bad_token("no access_token.value")
  end
  if type(rt) ~= "table" or type(rt.value) ~= "string" or rt.value == "" then
    return nil, bad_token("no refresh_token.value")
  end
  if type(at.expires_on) ~= "number" or type(rt.expires_on) ~= "number" then
    return nil, bad_token("no expires_on")
  end
  local consent = p.consentid
  return {
    access_token = { value = at.value, expiry = json.integer(at.expires_on) or at.expires_on },
    refresh_token = { value = rt.value, expiry = json.integer(rt.expires_on) or rt.expires_on },
    user = { id = type(p.sub) == "string" and p.sub or nil },
    consent_id = type(consent) == "string" and consent or nil,
  }
end

--- POSTs oauth/token with the given claims and returns the verified, formatted token.
-- Not sent again once it may have been carried out, except when a kept-alive connection
-- closed under it without an answer (single_use: the server refuses a code or a refresh
-- token the second time, so a repeat can never carry out a second exchange).
function _M.token_call(sdk, key, claims_fn)
  local res, err = request.send(sdk, {
    method = "POST", url = sdk.config.base_url .. "oauth/token", single_use = true,
    headers = claims_fn.headers, json = true, what = "oauth/token",
    sign = function() return jwt.sign(key, nil, claims_fn.claims()) end,
  })
  if not res then return nil, err end
  local payload, perr = jwt.verified_payload(sdk, res.json, "oauth/token")
  if not payload then return nil, perr end
  return _M.from_payload(payload)
end

local function refresh_claims(sdk, contract, token)
  return {
    headers = { ["content-type"] = "application/json" },
    claims = function()
      return json.object_of(
        "client_id", jwt.client_id(sdk, contract),
        "grant_type", "refresh_token",
        "nonce", jwt.nonce(),
        "refresh_token", token.refresh_token.value,
        "timestamp", jwt.now_ms())
    end,
  }
end

-- How long a finished refresh is remembered: a call that began with the old token and hears
-- 401 after the refresh ended gets the new token instead of presenting a rotated one.
local DONE_TTL = 300

--- Refreshes a token once for all concurrent callers holding the same refresh token; the
-- new token goes to on_token_refresh. With `reuse` (the automatic path), a refresh of the
-- same token finished less than DONE_TTL ago is reused. Returns the new token, or nil, err.
function _M.refresh(sdk, contract, token, reuse)
  local key, kerr = jwt.contract_key(contract)
  if not key then return nil, kerr end
  local flight_key = "refresh:" .. core.b64url_encode(core.sha256(token.refresh_token.value))
  local now = core.time()
  local done_refreshes = sdk.refreshed
  local done = done_refreshes[flight_key]
  if reuse and done and now - done.at < DONE_TTL then
    return done.token     -- refreshed already: this refresh token has rotated
  end
  return scheduler.single_flight(flight_key, function()
    -- One refresh for every worker and host sharing the store (digime.store.flight).
    local new, err, handed = flight.run(sdk, flight_key, reuse, DONE_TTL, function()
      return _M.token_call(sdk, key, refresh_claims(sdk, contract, token))
    end, now)
    if not new then return nil, err end
    if handed then return new end   -- another worker or host refreshed (and ran its hook)
    for k, d in pairs(done_refreshes) do
      if now - d.at >= DONE_TTL then done_refreshes[k] = nil end
    end
    done_refreshes[flight_key] = { token = new, at = now }
    local hook = sdk.config.on_token_refresh
    if hook then
      local ok, herr = scheduler.pcall(hook, new, token)
      if not ok then
        sdk:log("error", "on_token_refresh raised", { error = tostring(herr) })
      end
    end
    return new
  end)
end

--- Whether an error answer asks for a token refresh: 401 with InvalidToken, or a 401 that
-- carries no code at all (HEAD answers have no body to say why).
function _M.is_expired_token_error(err)
  return err.kind == "ServerError" and err.status == 401
     and (err.code == "InvalidToken" or err.code == "DigiMeServerError")
end

--- Runs call(token) for a user-scoped operation: refreshes first when the access token's
-- expiry has passed, and on a 401 InvalidToken refreshes once and retries once.
-- Returns the call's result with `user_access_token` set to the token in force.
function _M.with_token(sdk, contract, token, call)
  if token.access_token.expiry and token.access_token.expiry > 0
     and token.access_token.expiry <= core.time() then
    local new, err = _M.refresh(sdk, contract, token, true)
    if not new then
      if type(err) == "table" then err.user_access_token = token end
      return nil, err
    end
    token = new
  end
  local res, err = call(token)
  if not res and _M.is_expired_token_error(err) then
    local new, rerr = _M.refresh(sdk, contract, token, true)
    if not new then
      if type(rerr) == "table" then rerr.user_access_token = token end
      return nil, rerr
    end
    token = new
    res, err = call(token)
  end
  if not res then
    if type(err) == "table" then err.user_access_token = token end
    return nil, err
  end
  res.user_access_token = token
  return res
end

return _M
