-- The first-time flow and the reauthorize flow against the sandbox (doc/protocol.md
-- "Authorization and onboarding URLs", "User access tokens"): authorize -> consent -> exchange_code_for_token,
-- rotating refresh tokens, on_token_refresh, a dead refresh token -> reauthorize -> consent ->
-- exchange, a wrong code verifier, a declined consent.
local flow = require "flow"
local leak_check = require "leak_check"
local sandbox_hooks = require "sandbox_hooks"

local function is_integer(n)
  if type(n) ~= "number" then return false end
  local math_type = rawget(math, "type")   -- Lua 5.3+
  if math_type then return math_type(n) == "integer" end
  return n == math.floor(n)
end

local function assert_token_shape(t)
  assert.is_table(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  assert.are.same({ "access_token", "consent_id", "refresh_token", "user" }, keys)
  for _, part in ipairs{ "access_token", "refresh_token" } do
    assert.is_string(t[part].value)
    assert.is_true(#t[part].value > 0)
    assert.is_true(is_integer(t[part].expiry), part .. ".expiry is not an integer")
    assert.is_true(t[part].expiry > os.time() - 5, part .. ".expiry is not in the future (seconds)")
    assert.is_true(t[part].expiry < os.time() + 10 * 365 * 86400, part .. ".expiry looks like ms")
  end
  assert.is_string(t.user.id)
  assert.is_string(t.consent_id)
end

describe("token exchange and refresh", function()
  local sb, sdk, refreshed

  lazy_setup(function()
    sb = flow.start()
    refreshed = {}
    sdk = assert(flow.sdk(sb, { on_token_refresh = flow.refresh_recorder(function() return refreshed end) }))
  end)

  sandbox_hooks.stop_and_reset(function() return sb end)

  before_each(function()
    refreshed = {}
  end)

  local function refresh(token)
    return sdk:refresh_token{ contract = flow.contract(), user_access_token = token }
  end

  it("runs the first-time flow: authorize, consent (302), exchange", function()
    local res, err = sdk:get_authorize_url(flow.authorize_opts{ state = "first & only" })
    assert.is_nil(err)
    local cb = flow.consent(res.url)
    assert.are.equal(302, cb.status)
    assert.is_truthy(cb.location:find(flow.CALLBACK .. "?", 1, true), cb.location)
    assert.are.equal("true", cb.query.success)
    assert.are.equal("first & only", cb.query.state)
    assert.is_string(cb.query.code)
    assert.is_string(cb.query.accountReference)
    local token, terr = sdk:exchange_code_for_token{ contract = flow.contract(),
      authorization_code = cb.query.code, code_verifier = res.code_verifier }
    assert.is_nil(terr)
    assert_token_shape(token)
    -- the code works once
    local again, aerr = sdk:exchange_code_for_token{ contract = flow.contract(),
      authorization_code = cb.query.code, code_verifier = res.code_verifier }
    assert.is_nil(again)
    assert.are.equal("ServerError", aerr.kind)
    assert.are.equal("InvalidToken", aerr.code)
    assert.are.equal(401, aerr.status)
    -- the consent page works once too
    local cb2 = flow.consent(res.url)
    assert.are.equal(400, cb2.status)
  end)

  it("sends the EXCHANGE claims without a body", function()
    local cap = flow.capture(sb)
    local ok, e = pcall(function()
      local csdk = assert(flow.sdk(cap, { jwks = { allowed = { sb.base_url .. "jwks/oauth" } } }))
      local code, verifier = flow.code(csdk)
      cap:clear()
      local token = assert(csdk:exchange_code_for_token{ contract = flow.contract(),
        authorization_code = code, code_verifier = verifier })
      assert_token_shape(token)
      local reqs = cap:requests_to("/v1.7/oauth/token")
      assert.are.equal(1, #reqs)
      assert.are.equal("POST", reqs[1].method)
      assert.are.equal("", reqs[1].body)
      local ok, d = flow.verify_client_jwt(reqs[1].headers.authorization:match("^Bearer (%S+)$"))
      assert.is_true(ok)
      assert.are.same({ "client_id", "code", "code_verifier", "grant_type", "nonce", "timestamp" },
                      flow.key_order(d.payload_json))
      assert.are.equal(code, d.payload.code)
      assert.are.equal(verifier, d.payload.code_verifier)
      assert.are.equal("authorization_code", d.payload.grant_type)
      -- and the REFRESH claims
      cap:clear()
      assert(csdk:refresh_token{ contract = flow.contract(), user_access_token = token })
      reqs = cap:requests_to("/v1.7/oauth/token")
      assert.are.equal(1, #reqs)
      assert.are.equal("", reqs[1].body)
      ok, d = flow.verify_client_jwt(reqs[1].headers.authorization:match("^Bearer (%S+)$"))
      assert.is_true(ok)
      assert.are.same({ "client_id", "grant_type", "nonce", "refresh_token", "timestamp" },
                      flow.key_order(d.payload_json))
      assert.are.equal(token.refresh_token.value, d.payload.refresh_token)
      assert.are.equal("refresh_token", d.payload.grant_type)
    end)
    cap:stop()
    assert(ok, e)
  end)

  it("rotates refresh tokens: the old one is then refused with InvalidToken (401)", function()
    local token = flow.login(sdk)
    local new, err = refresh(token)
    assert.is_nil(err)
    assert_token_shape(new)
    assert.are_not.equal(token.access_token.value, new.access_token.value)
    assert.are_not.equal(token.refresh_token.value, new.refresh_token.value)
    assert.are.equal(token.user.id, new.user.id)
    assert.are.equal(token.consent_id, new.consent_id)
    local dead, derr = refresh(token)
    assert.is_nil(dead)
    assert.are.equal("ServerError", derr.kind)
    assert.are.equal("InvalidToken", derr.code)
    assert.are.equal(401, derr.status)
    assert.is_string(derr.reference)
    -- the new one still refreshes
    local newer = assert(refresh(new))
    assert_token_shape(newer)
  end)

  it("calls on_token_refresh with (new, old) on every refresh", function()
    local token = flow.login(sdk)
    assert.are.equal(0, #refreshed)
    local new = assert(refresh(token))
    assert.are.equal(1, #refreshed)
    assert.are.same(new, refreshed[1].new)
    assert.are.same(token, refreshed[1].old)
    local newer = assert(refresh(new))
    assert.are.equal(2, #refreshed)
    assert.are.same(newer, refreshed[2].new)
    assert.are.same(new, refreshed[2].old)
    -- not on a failed refresh
    assert.is_nil(refresh(token))
    assert.are.equal(2, #refreshed)
  end)

  it("survives an on_token_refresh that raises", function()
    local lines = {}
    local s2 = flow.sdk_with_failing_refresh_hook(sb, lines)
    local token = flow.login(s2)
    local new, err = s2:refresh_token{ contract = flow.contract(), user_access_token = token }
    assert.is_nil(err)
    assert_token_shape(new)
    assert.is_truthy(table.concat(lines, "\n"):find("on_token_refresh", 1, true))
  end)

  it("reauthorizes after the refresh token expired, with the kept code verifier", function()
    local token = flow.login(sdk)
    assert.is_true(sb:expire("refresh", token.user.id).expired >= 1)
    local res, err = refresh(token)
    assert.is_nil(res)
    assert.are.equal("ServerError", err.kind)
    assert.are.equal("InvalidToken", err.code)
    assert.are.equal(401, err.status)

    local re, rerr = sdk:get_reauthorize_url{ contract = flow.contract(), callback = flow.CALLBACK,
      user_access_token = token, state = "re-1", locale = "nl", trigger_query = true }
    assert.is_nil(rerr)
    local path = re.url:match("^https?://[^/]+(/[^?]*)")
    assert.are.equal("/apps/saas/user-reauth", path)
    assert.are.same({ "code", "lng", "triggerQuery" }, flow.param_names(re.url))
    assert.are.equal("nl", flow.query_of(re.url).lng)
    assert.are.equal("true", flow.query_of(re.url).triggerQuery)

    local cb = flow.consent(re.url)
    assert.are.equal(302, cb.status)
    assert.are.equal("true", cb.query.success)
    assert.are.equal("re-1", cb.query.state)
    assert.is_string(cb.query.code)

    local new, nerr = sdk:exchange_code_for_token{ contract = flow.contract(),
      authorization_code = cb.query.code, code_verifier = re.code_verifier }
    assert.is_nil(nerr)
    assert_token_shape(new)
    assert.are.equal(token.user.id, new.user.id)
    local newer, ferr = refresh(new)
    assert.is_nil(ferr)
    assert_token_shape(newer)
  end)

  it("refuses a wrong code verifier (and the right one still works)", function()
    local res = assert(sdk:get_authorize_url(flow.authorize_opts()))
    local cb = flow.consent(res.url)
    local other = assert(sdk:get_authorize_url(flow.authorize_opts())).code_verifier
    local token, err = sdk:exchange_code_for_token{ contract = flow.contract(),
      authorization_code = cb.query.code, code_verifier = other }
    assert.is_nil(token)
    assert.are.equal("ServerError", err.kind)
    assert.are.equal("InvalidToken", err.code)
    assert.are.equal(401, err.status)
    token = assert(sdk:exchange_code_for_token{ contract = flow.contract(),
      authorization_code = cb.query.code, code_verifier = res.code_verifier })
    assert_token_shape(token)
  end)

  it("a reauthorize code needs the reauthorize verifier, not an older one", function()
    local token, info = flow.login(sdk)
    local re = assert(sdk:get_reauthorize_url{ contract = flow.contract(), callback = flow.CALLBACK,
                                               user_access_token = token })
    local cb = flow.consent(re.url)
    local bad, err = sdk:exchange_code_for_token{ contract = flow.contract(),
      authorization_code = cb.query.code, code_verifier = info.code_verifier }
    assert.is_nil(bad)
    assert.are.equal("InvalidToken", err.code)
  end)

  it("reports a declined consent as success=false with an errorCode", function()
    sb:consent("decline", "UserCancelled")
    local res = assert(sdk:get_authorize_url(flow.authorize_opts{ state = "declined" }))
    local cb = flow.consent(res.url)
    sb:consent("accept")
    assert.are.equal(302, cb.status)
    assert.are.equal("false", cb.query.success)
    assert.are.equal("UserCancelled", cb.query.errorCode)
    assert.are.equal("declined", cb.query.state)
    assert.is_nil(cb.query.code)
    -- another error code, on the reauthorize page
    local token = flow.login(sdk)
    sb:consent("decline", "ConsentRevoked")
    local re = assert(sdk:get_reauthorize_url{ contract = flow.contract(), callback = flow.CALLBACK,
                                               user_access_token = token })
    cb = flow.consent(re.url)
    sb:consent("accept")
    assert.are.equal("false", cb.query.success)
    assert.are.equal("ConsentRevoked", cb.query.errorCode)
  end)

  it("refuses a token answer that is not JSON", function()
    local code, verifier = flow.code(sdk)
    sb:fault{ method = "POST", path = "/v1.7/oauth/token", match = "exact", action = "status",
              status = 201, body = "{not json" }
    local res, err = sdk:exchange_code_for_token{ contract = flow.contract(),
      authorization_code = code, code_verifier = verifier }
    assert.is_nil(res)
    assert.are.equal("DigiMeSDKError", err.kind)
    assert.are.equal("InvalidResponse", err.code)
    -- a 2xx answer, however malformed, is not asked for again
    assert.are.equal(1, flow.count(sb, "/v1.7/oauth/token"))
  end)

  leak_check.it_leaks_nothing()
end)
