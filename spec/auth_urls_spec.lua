-- get_authorize_url and get_reauthorize_url (doc/protocol.md "Request JWTs", "PKCE",
-- "Authorization and onboarding URLs"): the
-- PKCE verifier, the URL (origin, path, parameters in order, inclusion rules, the double-encoded
-- sourcesScope), the request body (agent, actions) and the request JWT, verified here on its
-- own with the contract's public key. The sandbox logs no JWTs or bodies, so a capture proxy
-- (spec/support/flow.lua) sits between the SDK and the sandbox and records them.
local flow = require "flow"
local leak_check = require "leak_check"
local cjson = require "cjson"
local core = require "digime.core"

local function b64url_sha256(s)
  return core.b64url_encode(core.sha256(s))
end

local function is_integer_text(json_text, key)
  return json_text:match('"' .. key .. '":(%-?%d+)[,}]') ~= nil
end

describe("authorization URLs", function()
  local sb, sdk, cap, csdk, token

  lazy_setup(function()
    sb = flow.start()
    sdk = assert(flow.sdk(sb))
    cap = flow.capture(sb)
    -- through the proxy; the server tokens name the sandbox's JWKS, so allow that one
    csdk = assert(flow.sdk(cap, { jwks = { allowed = { sb.base_url .. "jwks/oauth" } } }))
    token = flow.login(sdk)
  end)

  lazy_teardown(function()
    if cap then cap:stop() end
    if sb then sb:stop() end
  end)

  before_each(function()
    cap:clear()
  end)

  local onboard_origin

  describe("get_authorize_url", function()
    it("returns a 43-character base64url code verifier, a session and the URL", function()
      local res, err = sdk:get_authorize_url(flow.authorize_opts())
      assert.is_nil(err)
      assert.are.equal(43, #res.code_verifier)
      assert.is_truthy(res.code_verifier:match("^[%w_%-]+$"), res.code_verifier)
      assert.is_table(res.session)
      assert.is_string(res.session.key)
      assert.is_number(res.session.expiry)
      local again = assert(sdk:get_authorize_url(flow.authorize_opts()))
      assert.are_not.equal(res.code_verifier, again.code_verifier)
    end)

    it("points at the onboard origin, path /apps/saas/authorize", function()
      local res = assert(sdk:get_authorize_url(flow.authorize_opts()))
      onboard_origin = sb.onboard_url:match("^(https?://[^/]+)")
      local origin, path = res.url:match("^(https?://[^/]+)(/[^?]*)")
      assert.are.equal(onboard_origin, origin)
      assert.are.equal("/apps/saas/authorize", path)
    end)

    it("has only code and sourceType=pull with the minimal options", function()
      local res = assert(sdk:get_authorize_url(flow.authorize_opts()))
      assert.are.same({ "code", "sourceType" }, flow.param_names(res.url))
      local q = flow.query_of(res.url)
      assert.is_truthy(q.code:match("^%w+$"))
      assert.are.equal("pull", q.sourceType)
      assert.is_nil(q.service)
    end)

    it("puts every parameter in the order the Node SDK uses", function()
      local res, err = sdk:get_authorize_url(flow.authorize_opts{
        sources_scope = { dataType = { "gp-data", "vaccinations" }, organizationType = "hospital" },
        trigger_query = true,
        include_sample_data_only_sources = true,
        locale = "nl",
        sample_data = { data_set = "default", auto_onboard = true },
        service_id = 30,
        source_type = "push",
      })
      assert.is_nil(err)
      assert.are.same({ "code", "sourceType", "service", "sampleDataSet", "sampleDataAutoOnboard",
                        "lng", "includeSampleDataOnlySources", "triggerQuery", "sourcesScope" },
                      flow.param_names(res.url))
      local q = flow.query_of(res.url)
      assert.are.equal("push", q.sourceType)
      assert.are.equal("30", q.service)
      assert.are.equal("default", q.sampleDataSet)
      assert.are.equal("true", q.sampleDataAutoOnboard)
      assert.are.equal("nl", q.lng)
      assert.are.equal("true", q.includeSampleDataOnlySources)
      assert.are.equal("true", q.triggerQuery)
    end)

    it("follows the Node SDK's inclusion rules", function()
      local function names(extra)
        local res, err = sdk:get_authorize_url(flow.authorize_opts(extra))
        assert.is_nil(err)
        return flow.param_names(res.url), flow.query_of(res.url)
      end
      -- sampleDataAutoOnboard only when true
      local n = names{ sample_data = { data_set = "default" } }
      assert.are.same({ "code", "sourceType", "sampleDataSet" }, n)
      n = names{ sample_data = { data_set = "default", auto_onboard = false } }
      assert.are.same({ "code", "sourceType", "sampleDataSet" }, n)
      -- the flags are sent as "false" too, when given
      local q
      n, q = names{ include_sample_data_only_sources = false, trigger_query = false }
      assert.are.same({ "code", "sourceType", "includeSampleDataOnlySources", "triggerQuery" }, n)
      assert.are.equal("false", q.includeSampleDataOnlySources)
      assert.are.equal("false", q.triggerQuery)
      -- service 0 is left out, as the Node SDK does
      n = names{ service_id = 0 }
      assert.are.same({ "code", "sourceType" }, n)
      -- lng only with a locale
      n, q = names{ locale = "en-GB" }
      assert.are.same({ "code", "sourceType", "lng" }, n)
      assert.are.equal("en-GB", q.lng)
    end)

    it("form-encodes the parameters as URLSearchParams does", function()
      local res = assert(sdk:get_authorize_url(flow.authorize_opts{
        locale = "a b~c!'()*-._/:", sample_data = { data_set = "x&y=z" } }))
      assert.is_truthy(res.url:find("&sampleDataSet=x%26y%3Dz&", 1, true), res.url)
      assert.is_truthy(res.url:find("&lng=a+b%7Ec%21%27%28%29*-._%2F%3A", 1, true), res.url)
    end)

    it("double-encodes sourcesScope exactly as the doc's example", function()
      local res = assert(sdk:get_authorize_url(flow.authorize_opts{
        sources_scope = { organizationType = "hospital", dataType = { "gp-data", "vaccinations" } } }))
      local want = "sourcesScope=%257B%2522dataType%2522%253A%255B%2522gp-data%2522%252C%2522vaccinations"
                .. "%2522%255D%252C%2522organizationType%2522%253A%2522hospital%2522%257D"
      assert.are.equal(want, res.url:match("sourcesScope=[^&]*$"))
      -- decoding twice gives the JSON back
      local once = flow.query_of(res.url).sourcesScope
      local twice = once:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
      assert.are.same({ dataType = { "gp-data", "vaccinations" }, organizationType = "hospital" },
                      cjson.decode(twice))
    end)

    it("sends storage_id to POST reference and puts storageRef before triggerQuery", function()
      -- The sandbox as it is: does it implement POST /v1.7/reference?
      local res, err = sdk:get_authorize_url(flow.authorize_opts{ storage_id = "storage-1",
                                                                  trigger_query = true })
      if res then
        assert.are.same({ "code", "sourceType", "storageRef", "triggerQuery" },
                        flow.param_names(res.url))
      else
        -- an unknown storage id: a 404 the SDK reports as a ServerError, not a URL without it
        assert.are.equal("ServerError", err.kind)
        assert.are.equal(404, err.status)
        assert.is_truthy(err.code == "StorageNotFound" or err.code == "NotFound", err.code)
      end
      -- With the reference answered by the proxy: the URL, and the reference request itself.
      cap:script{ { method = "POST", path = "/v1.7/reference", status = 200,
                    body = { id = "ref-1234" } } }
      res, err = csdk:get_authorize_url(flow.authorize_opts{ storage_id = "storage-1",
                                                             trigger_query = false, locale = "nl" })
      assert.is_nil(err)
      assert.are.same({ "code", "sourceType", "lng", "storageRef", "triggerQuery" },
                      flow.param_names(res.url))
      assert.are.equal("ref-1234", flow.query_of(res.url).storageRef)
      local refs = cap:requests_to("/v1.7/reference")
      assert.are.equal(1, #refs)
      assert.are.same({ type = "cloudId", value = "storage-1" }, cjson.decode(refs[1].body))
      assert.are.same({ "type", "value" }, flow.key_order(refs[1].body))
      local jwt = refs[1].headers.authorization:match("^Bearer (%S+)$")
      local ok, d = flow.verify_client_jwt(jwt)
      assert.is_true(ok)
      assert.are.same({ "client_id", "nonce", "timestamp" }, flow.key_order(d.payload_json))
      assert.are.equal(flow.CLIENT_ID, d.payload.client_id)
      -- an answer without an id is an error, not a URL with a made-up reference
      cap:script{ { method = "POST", path = "/v1.7/reference", status = 200, body = { other = 1 } } }
      res, err = csdk:get_authorize_url(flow.authorize_opts{ storage_id = "storage-1" })
      assert.is_nil(res)
      assert.are.equal("DigiMeSDKError", err.kind)
      assert.are.equal("InvalidResponse", err.code)
    end)

    it("sends session_options verbatim as actions, after the agent", function()
      for _, so in ipairs{
        { pull = { limits = { duration = { sourceFetch = 6 } }, scope = { timeRanges = { { last = "6y" } } } } },
        { extra = "anything", pull = { sourceFetch = false,
                                       scope = { serviceGroups = { { id = 1, serviceTypes = { { id = 2 } } } } } } },
      } do
        cap:clear()
        local res, err = csdk:get_authorize_url(flow.authorize_opts{ session_options = so })
        assert.is_nil(err)
        assert.is_string(res.url)
        local reqs = cap:requests_to("/v1.7/oauth/authorize")
        assert.are.equal(1, #reqs)
        local body = cjson.decode(reqs[1].body)
        assert.are.same(so, body.actions)
        assert.are.same({ "agent", "actions" }, flow.key_order(reqs[1].body))
        assert.is_truthy(reqs[1].headers["content-type"]:find("application/json", 1, true))
      end
      cap:clear()
      assert(csdk:get_authorize_url(flow.authorize_opts()))
      local body = cjson.decode(cap:requests_to("/v1.7/oauth/authorize")[1].body)
      assert.is_nil(body.actions)
      assert.is_table(body.agent)
    end)

    it("signs a request JWT that verifies, with the AUTHZ claims", function()
      local t0 = flow.now()
      local res, err = csdk:get_authorize_url(flow.authorize_opts{ state = "user-42" })
      assert.is_nil(err)
      local reqs = cap:requests_to("/v1.7/oauth/authorize")
      assert.are.equal(1, #reqs)
      local jwt = reqs[1].headers.authorization:match("^Bearer (%S+)$")
      assert.is_string(jwt)
      local ok, d = flow.verify_client_jwt(jwt)
      assert.is_true(ok, "the request JWT does not verify with the contract's public key")
      assert.are.equal('{"alg":"PS512","typ":"JWT"}', d.header_json)
      local c = d.payload
      assert.are.same({ "client_id", "code_challenge", "code_challenge_method", "nonce",
                        "redirect_uri", "response_mode", "response_type", "state", "timestamp" },
                      flow.key_order(d.payload_json))
      assert.are.equal(flow.CLIENT_ID, c.client_id)
      assert.are.equal("demo-app_demo-contract", c.client_id)
      assert.are.equal(32, #c.nonce)
      assert.is_truthy(c.nonce:match("^%w+$"))
      assert.is_true(is_integer_text(d.payload_json, "timestamp"), d.payload_json)
      assert.is_true(c.timestamp >= math.floor(t0 * 1000) - 2000 and c.timestamp <= flow.now() * 1000 + 2000,
                     "timestamp not near now (milliseconds)")
      assert.is_nil(c.iat)
      assert.is_nil(c.access_token)
      assert.are.equal(b64url_sha256(res.code_verifier), c.code_challenge)
      assert.are.equal("S256", c.code_challenge_method)
      assert.are.equal("user-42", c.state)
      assert.are.equal(flow.CALLBACK, c.redirect_uri)
      assert.are.equal("query", c.response_mode)
      assert.are.equal("code", c.response_type)
    end)

    it("sends an empty state as an empty string", function()
      assert(csdk:get_authorize_url(flow.authorize_opts{ state = "" }))
      local jwt = cap:requests_to("/v1.7/oauth/authorize")[1].headers.authorization:match("^Bearer (%S+)$")
      local _, d = flow.verify_client_jwt(jwt)
      assert.are.equal("", d.payload.state)
    end)

    it("adds access_token first when a user_access_token is given", function()
      local res, err = csdk:get_authorize_url(flow.authorize_opts{ user_access_token = token })
      assert.is_nil(err)
      assert.is_string(res.url)
      local jwt = cap:requests_to("/v1.7/oauth/authorize")[1].headers.authorization:match("^Bearer (%S+)$")
      local ok, d = flow.verify_client_jwt(jwt)
      assert.is_true(ok)
      assert.are.equal(token.access_token.value, d.payload.access_token)
      assert.are.equal("access_token", flow.key_order(d.payload_json)[1])
      assert.is_nil(d.payload.refresh_token)
    end)

    it("uses a new nonce and a new verifier on every call", function()
      local seen_nonce, seen_verifier = {}, {}
      for _ = 1, 3 do
        local res = assert(csdk:get_authorize_url(flow.authorize_opts()))
        assert.is_nil(seen_verifier[res.code_verifier])
        seen_verifier[res.code_verifier] = true
      end
      for _, r in ipairs(cap:requests_to("/v1.7/oauth/authorize")) do
        local _, d = flow.verify_client_jwt(r.headers.authorization:match("^Bearer (%S+)$"))
        assert.is_nil(seen_nonce[d.payload.nonce])
        seen_nonce[d.payload.nonce] = true
      end
    end)

    it("refuses an answer without a session instead of inventing one", function()
      cap:script{ { method = "POST", path = "/v1.7/oauth/authorize", forward = true, drop = { "session" } } }
      local res, err = csdk:get_authorize_url(flow.authorize_opts())
      assert.is_nil(res)
      assert.are.equal("DigiMeSDKError", err.kind)
      assert.are.equal("InvalidResponse", err.code)
    end)
  end)

  describe("get_reauthorize_url", function()
    it("points at /apps/saas/user-reauth with code, lng, triggerQuery in this order", function()
      local res, err = sdk:get_reauthorize_url{ contract = flow.contract(), callback = flow.CALLBACK,
        user_access_token = token, state = "again", locale = "nl", trigger_query = false }
      assert.is_nil(err)
      local origin, path = res.url:match("^(https?://[^/]+)(/[^?]*)")
      assert.are.equal(sb.onboard_url:match("^(https?://[^/]+)"), origin)
      assert.are.equal("/apps/saas/user-reauth", path)
      assert.are.same({ "code", "lng", "triggerQuery" }, flow.param_names(res.url))
      local q = flow.query_of(res.url)
      assert.are.equal("nl", q.lng)
      assert.are.equal("false", q.triggerQuery)
      assert.are.equal(43, #res.code_verifier)
      assert.is_string(res.session.key)
      assert.are.same(token, res.user_access_token)
      res = assert(sdk:get_reauthorize_url{ contract = flow.contract(), callback = flow.CALLBACK,
                                            user_access_token = token })
      assert.are.same({ "code" }, flow.param_names(res.url))
    end)

    it("signs the REAUTHZ claims and sends the agent and actions", function()
      local so = { pull = { scope = { timeRanges = { { last = "1y" } } } } }
      local res, err = csdk:get_reauthorize_url{ contract = flow.contract(), callback = flow.CALLBACK,
        user_access_token = token, state = "st", session_options = so }
      assert.is_nil(err)
      local reqs = cap:requests_to("/v1.7/oauth/token/reference")
      assert.are.equal(1, #reqs)
      local body = cjson.decode(reqs[1].body)
      assert.are.same(so, body.actions)
      assert.are.equal("lua-digime", body.agent.sdk.name)
      local ok, d = flow.verify_client_jwt(reqs[1].headers.authorization:match("^Bearer (%S+)$"))
      assert.is_true(ok)
      assert.are.equal('{"alg":"PS512","typ":"JWT"}', d.header_json)
      assert.are.same({ "access_token", "client_id", "code_challenge", "code_challenge_method",
                        "nonce", "redirect_uri", "state", "timestamp" }, flow.key_order(d.payload_json))
      assert.are.equal(token.access_token.value, d.payload.access_token)
      assert.are.equal(b64url_sha256(res.code_verifier), d.payload.code_challenge)
      assert.are.equal("st", d.payload.state)
      assert.is_true(is_integer_text(d.payload_json, "timestamp"))
      -- no state given: the claim is left out
      cap:clear()
      assert(csdk:get_reauthorize_url{ contract = flow.contract(), callback = flow.CALLBACK,
                                       user_access_token = token })
      local _, d2 = flow.verify_client_jwt(
        cap:requests_to("/v1.7/oauth/token/reference")[1].headers.authorization:match("^Bearer (%S+)$"))
      assert.is_nil(d2.payload.state)
    end)
  end)

  leak_check.it_leaks_nothing()
end)
