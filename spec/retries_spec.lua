-- Retries, timeouts and error answers (doc/protocol.md "Retries", "Errors") against the
-- sandbox's faults: which requests are retried and which are
-- never replayed, a fresh nonce and JWT per attempt, Retry-After, limit and max_time, timeouts
-- and servers that never answer, the mapping of error answers and of malformed 2xx answers.
local flow = require "flow"
local leak_check = require "leak_check"
local sandbox_hooks = require "sandbox_hooks"
local cjson = require "cjson"

local JWKS = "/v1.7/jwks/oauth"
local AUTHORIZE = "/v1.7/oauth/authorize"
local TOKEN = "/v1.7/oauth/token"

describe("retries", function()
  local sb

  lazy_setup(function()
    sb = flow.start()
  end)

  sandbox_hooks.stop_and_reset(function() return sb end)

  local function fault(method, path, spec)
    spec.method, spec.path, spec.match = method, path, "exact"
    spec.action = spec.action or "status"
    return sb:fault(spec)
  end

  -- The sandbox records a request when its answer is done: wait for slow ones to finish.
  local function settled_count(path, n, seconds)
    local deadline = flow.now() + (seconds or 3)
    while flow.count(sb, path) < n and flow.now() < deadline do
      flow.sandbox.sleep(0.05)
    end
    flow.sandbox.sleep(0.1)
    return flow.count(sb, path)
  end

  local function elapsed(fn)
    local t0 = flow.now()
    local a, b = fn()
    return flow.now() - t0, a, b
  end

  describe("of a GET (the JWKS fetch)", function()
    for _, status in ipairs{ 500, 502, 503, 504, 429 } do
      it("retries on " .. status .. " and then succeeds", function()
        fault("GET", JWKS, { status = status, body = { error = { code = "Busy", message = "busy" } } })
        local sdk = assert(flow.sdk(sb))
        local res, err = sdk:get_authorize_url(flow.authorize_opts())
        assert.is_nil(err)
        assert.is_string(res.url)
        assert.are.equal(2, flow.count(sb, JWKS))
        assert.are.equal(1, sdk.stats.jwks_fetches)
      end)
    end

    for _, action in ipairs{ "reset", "truncate" } do
      it("retries after a " .. action .. " and then succeeds", function()
        -- two faults: whatever the transport does on its own, the SDK sees a failed attempt
        fault("GET", JWKS, { action = action, count = 2 })
        local failed = {}
        local sdk = assert(flow.sdk(sb, { logger = function(_, message, fields)
          if message == "request failed" and fields.path == JWKS then failed[#failed + 1] = fields end
        end }))
        local res, err = sdk:get_authorize_url(flow.authorize_opts())
        assert.is_nil(err)
        assert.is_string(res.url)
        assert.is_true(#failed >= 1, "the SDK saw no failed attempt")
        assert.are.equal(3, flow.count(sb, JWKS))
        assert.are.same({}, sb:faults())
      end)
    end

    it("does not retry a 4xx", function()
      for _, status in ipairs{ 400, 401, 403, 404 } do
        sb:reset()
        fault("GET", JWKS, { status = status, count = 5 })
        local sdk = assert(flow.sdk(sb))
        local res, err = sdk:get_authorize_url(flow.authorize_opts())
        assert.is_nil(res)
        assert.are.equal("JWKSError", err.code)
        assert.are.equal(status, err.cause.status)
        assert.are.equal(1, flow.count(sb, JWKS), "status " .. status)
      end
    end)

    it("respects retry_options.limit", function()
      for _, limit in ipairs{ 0, 1, 2, 4 } do
        sb:reset()
        fault("GET", JWKS, { status = 503, count = 10 })
        local sdk = assert(flow.sdk(sb, { retry_options = { limit = limit, backoff = 0.01 } }))
        local res, err = sdk:get_authorize_url(flow.authorize_opts())
        assert.is_nil(res)
        assert.are.equal("DigiMeSDKError", err.kind)
        assert.are.equal("JWKSError", err.code)
        assert.are.equal("ServerError", err.cause.kind)
        assert.are.equal(503, err.cause.status)
        assert.are.equal(limit + 1, flow.count(sb, JWKS), "limit " .. limit)
        assert.are.equal(limit + 1, err.cause.attempts)
      end
    end)

    it("gives up on network failures after the limit too", function()
      fault("GET", JWKS, { action = "reset", count = 10 })
      local sdk = assert(flow.sdk(sb))
      local res, err = sdk:get_authorize_url(flow.authorize_opts())
      assert.is_nil(res)
      assert.are.equal("JWKSError", err.code)
      assert.are.equal("NetworkError", err.cause.kind)
      assert.are.equal(3, flow.count(sb, JWKS))
    end)

    it("honours Retry-After #timing", function()
      fault("GET", JWKS, { status = 429, headers = { ["Retry-After"] = "1" } })
      local sdk = assert(flow.sdk(sb))
      local t, res, err = elapsed(function() return sdk:get_authorize_url(flow.authorize_opts()) end)
      assert.is_nil(err)
      assert.is_string(res.url)
      assert.is_true(t >= 0.95, "Retry-After: 1 was not waited for (" .. t .. " s)")
      assert.is_true(t < 3, "took " .. t .. " s")
      assert.are.equal(2, flow.count(sb, JWKS))
    end)

    it("gives up at once when Retry-After is beyond retry_options.max_time #timing", function()
      fault("GET", JWKS, { status = 429, headers = { ["Retry-After"] = "30" } })
      local sdk = assert(flow.sdk(sb, { retry_options = { max_time = 2, backoff = 0.01 } }))
      local t, res, err = elapsed(function() return sdk:get_authorize_url(flow.authorize_opts()) end)
      assert.is_nil(res)
      assert.is_true(t < 1, "waited " .. t .. " s")
      assert.are.equal("JWKSError", err.code)
      assert.are.equal(429, err.cause.status)
      assert.are.equal(1, flow.count(sb, JWKS))
    end)

    it("stays within max_time across backoffs #timing", function()
      fault("GET", JWKS, { status = 503, count = 20 })
      local sdk = assert(flow.sdk(sb, { retry_options = { limit = 20, max_time = 0.5, backoff = 0.1,
                                                         max_backoff = 0.2 } }))
      local t, res = elapsed(function() return sdk:get_authorize_url(flow.authorize_opts()) end)
      assert.is_nil(res)
      assert.is_true(t < 1.2, "took " .. t .. " s")
      assert.is_true(flow.count(sb, JWKS) < 21)
    end)

    it("retries a GET that timed out #timing", function()
      fault("GET", JWKS, { action = "delay", ms = 1000 })
      local sdk = assert(flow.sdk(sb, { timeout = 0.4 }))
      local t, res, err = elapsed(function() return sdk:get_authorize_url(flow.authorize_opts()) end)
      assert.is_nil(err)
      assert.is_string(res.url)
      assert.is_true(t >= 0.35 and t < 1, "took " .. t .. " s")
      assert.are.equal(2, settled_count(JWKS, 2))
    end)
  end)

  describe("with a fresh nonce and JWT on every attempt", function()
    local request = require "digime.request"
    local jwt = require "digime.jwt"
    local json = require "digime.json"

    -- A signed GET as the read calls make it (USER claims), through the SDK's request layer.
    local function signed_get(sdk, url, access_token)
      local key = assert(jwt.contract_key(flow.contract()))
      return request.send(sdk, {
        method = "GET", url = url, headers = { accept = "application/json" }, json = true,
        sign = function()
          return jwt.sign(key, nil, json.object_of("access_token", access_token,
            "client_id", flow.CLIENT_ID, "nonce", jwt.nonce(), "timestamp", jwt.now_ms()))
        end,
      })
    end

    it("signs each attempt anew (the wire, through a capture proxy)", function()
      local cap = flow.capture(sb)
      local ok, e = pcall(function()
        cap:script{ { method = "GET", path = "/v1.7/anything", status = 503, count = 2 },
                    { method = "GET", path = "/v1.7/anything", status = 200, body = { ok = true } } }
        local sdk = assert(flow.sdk(cap))
        local res, err = signed_get(sdk, cap.base_url .. "anything", "at-value")
        assert.is_nil(err)
        assert.are.equal(200, res.status)
        local reqs = cap:requests_to("/v1.7/anything")
        assert.are.equal(3, #reqs)
        local jwts, nonces = {}, {}
        for _, r in ipairs(reqs) do
          local token = r.headers.authorization:match("^Bearer (%S+)$")
          assert.is_nil(jwts[token], "a JWT was sent twice")
          jwts[token] = true
          local vok, d = flow.verify_client_jwt(token)
          assert.is_true(vok)
          assert.is_nil(nonces[d.payload.nonce], "a nonce was sent twice")
          nonces[d.payload.nonce] = true
        end
      end)
      cap:stop()
      assert(ok, e)
    end)

    it("signs each attempt anew (the sandbox's log: nonces checked and recorded)", function()
      local sdk = assert(flow.sdk(sb))
      local token = flow.login(sdk)
      local path = "/v1.7/permission-access/accounts"
      -- Does the sandbox serve a signed GET yet?
      local probe = signed_get(sdk, sb.base_url .. "permission-access/accounts",
                               token.access_token.value)
      if not probe then
        pending("the sandbox has no signed GET endpoint (permission-access/accounts) yet")
        return
      end
      sb:reset()
      token = flow.login(sdk)
      -- the connection is reset after the sandbox processed each request: it saw the JWT
      fault("GET", path, { action = "reset", after = true, count = 2 })
      local res, err
      if type(sdk.read_accounts) == "function" then
        res, err = sdk:read_accounts{ contract = flow.contract(), user_access_token = token }
      else
        res, err = signed_get(sdk, sb.base_url .. "permission-access/accounts",
                              token.access_token.value)
      end
      assert.is_nil(err)
      assert.is_table(res)
      local entries = {}
      for _, e in ipairs(sb:log()) do
        if e.path == path then entries[#entries + 1] = e end
      end
      assert.are.equal(3, #entries)
      local seen = {}
      for _, e in ipairs(entries) do
        assert.is_string(e.nonce)
        assert.is_nil(seen[e.nonce], "nonce replayed on a retry")
        seen[e.nonce] = true
      end
      assert.are.equal(200, entries[3].status)
    end)
  end)

  -- A code exchange over sdk with the fault f on its token POST: it fails as a NetworkError
  -- (the outcome is unknown) and is sent once.
  local function exchange_not_replayed(sdk, f)
    local code, verifier = flow.code(sdk)
    fault("POST", TOKEN, f)
    local res, err = sdk:exchange_code_for_token{ contract = flow.contract(),
      authorization_code = code, code_verifier = verifier }
    assert.is_nil(res)
    assert.are.equal("NetworkError", err.kind)
    assert.are.equal(1, flow.count(sb, TOKEN))
  end

  describe("of a token POST whose answer was lost", function()
    -- With a connection of its own (keepalive = false), a token POST that may have reached
    -- the server is never sent again: a NetworkError says the outcome is unknown.
    for _, f in ipairs{ { action = "reset" }, { action = "reset", after = true }, { action = "truncate" } } do
      local name = f.action .. (f.after and " after processing" or "")
      it("never replays the code exchange (" .. name .. ", no keep-alive)", function()
        exchange_not_replayed(assert(flow.sdk(sb, { keepalive = false })),
                              { action = f.action, after = f.after })
      end)

      it("never replays a refresh (" .. name .. ", no keep-alive)", function()
        local calls = 0
        local sdk = assert(flow.sdk(sb, { keepalive = false,
                                          on_token_refresh = function() calls = calls + 1 end }))
        local token = flow.login(sdk)
        local before = flow.count(sb, TOKEN)
        fault("POST", TOKEN, { action = f.action, after = f.after })
        local res, err = sdk:refresh_token{ contract = flow.contract(), user_access_token = token }
        assert.is_nil(res)
        assert.are.equal("NetworkError", err.kind)
        assert.are.equal(before + 1, flow.count(sb, TOKEN))
        assert.are.equal(0, calls)
        if f.after or f.action == "truncate" then
          -- the server rotated the token: a replay would have presented a dead one
          local again, aerr = sdk:refresh_token{ contract = flow.contract(), user_access_token = token }
          assert.is_nil(again)
          assert.are.equal("InvalidToken", aerr.code)
        end
      end)
    end

    -- On a kept-alive connection that closes without any answer (the server closed it as the
    -- request left, or acted on it and died), the SDK sends a token POST once more, newly
    -- signed: the server carries out a code or a refresh token once at most, so the repeat
    -- either does the work the first did not, or is refused. Never the same JWT twice.

    -- Since mark: two token POSTs, no JWT presented twice, and one token issued.
    local function sent_twice_issued_once(mark, issued)
      local posts = flow.log_since(sb, mark, TOKEN)
      assert.are.equal(2, #posts)
      flow.assert_distinct_nonces(posts)
      assert.are.equal(1, sb:stats().tokens_issued - issued)
    end

    it("sends a code exchange again when its kept-alive connection closed before the server read it", function()
      local sdk = assert(flow.sdk(sb))
      local code, verifier = flow.code(sdk)       -- leaves a connection in the pool
      local issued = sb:stats().tokens_issued
      local mark = #sb:log()
      fault("POST", TOKEN, { action = "reset" })
      local res, err = sdk:exchange_code_for_token{ contract = flow.contract(),
        authorization_code = code, code_verifier = verifier }
      assert.is_nil(err)
      assert.is_table(res.access_token)
      sent_twice_issued_once(mark, issued)
    end)

    it("carries out a code exchange once when the server acted on it and closed the kept-alive connection", function()
      local sdk = assert(flow.sdk(sb))
      local code, verifier = flow.code(sdk)
      local issued = sb:stats().tokens_issued
      local mark = #sb:log()
      fault("POST", TOKEN, { action = "reset", after = true })
      local res, err = sdk:exchange_code_for_token{ contract = flow.contract(),
        authorization_code = code, code_verifier = verifier }
      assert.is_nil(res)
      assert.are.equal("ServerError", err.kind)     -- the code was spent by the first
      sent_twice_issued_once(mark, issued)
    end)

    it("refreshes once when the server acted on a refresh and closed the kept-alive connection", function()
      local calls = 0
      local sdk = assert(flow.sdk(sb, { on_token_refresh = function() calls = calls + 1 end }))
      local token = flow.login(sdk)
      local issued = sb:stats().tokens_issued
      local mark = #sb:log()
      fault("POST", TOKEN, { action = "reset", after = true })
      local res, err = sdk:refresh_token{ contract = flow.contract(), user_access_token = token }
      assert.is_nil(res)
      assert.are.equal("InvalidToken", err.code)    -- rotated by the first; its answer was lost
      sent_twice_issued_once(mark, issued)
      assert.are.equal(0, calls)
    end)

    it("never sends a token POST again once any answer came (truncate)", function()
      exchange_not_replayed(assert(flow.sdk(sb)), { action = "truncate" })
    end)

    it("does not retry an authorize POST that got a 503 (it reached the server)", function()
      local sdk = assert(flow.sdk(sb))
      fault("POST", AUTHORIZE, { status = 503 })
      local res, err = sdk:get_authorize_url(flow.authorize_opts())
      assert.is_nil(res)
      assert.are.equal("ServerError", err.kind)
      assert.are.equal(503, err.status)
      assert.is_true(err.retryable)
      assert.are.equal(1, flow.count(sb, AUTHORIZE))
    end)

    it("does not replay an authorize POST whose connection was reset", function()
      local sdk = assert(flow.sdk(sb))
      assert(sdk:get_authorize_url(flow.authorize_opts()))   -- a warm keep-alive connection
      sb:reset()
      fault("POST", AUTHORIZE, { action = "reset", after = true })
      local res, err = sdk:get_authorize_url(flow.authorize_opts())
      assert.is_nil(res)
      assert.are.equal("NetworkError", err.kind)
      local nonces = {}
      for _, e in ipairs(sb:log()) do
        if e.path == AUTHORIZE then nonces[#nonces + 1] = e.nonce end
      end
      assert.are.equal(1, #nonces, "the same signed POST arrived " .. #nonces .. " times")
    end)
  end)

  describe("of a POST that never reached the server", function()
    it("retries on connection refused, up to the limit", function()
      local port = flow.closed_port()
      local attempts = {}
      local sdk = assert(flow.sdk(nil, {
        base_url = "http://127.0.0.1:" .. port .. "/v1.7/",
        onboard_url = "http://127.0.0.1:" .. port .. "/apps/saas/",
        logger = function(_, message, fields)
          if message == "request failed" then attempts[#attempts + 1] = fields end
        end,
      }))
      local res, err = sdk:get_authorize_url(flow.authorize_opts())
      assert.is_nil(res)
      assert.are.equal("NetworkError", err.kind)
      assert.are.equal("connect", err.network)
      assert.are.equal(3, #attempts)
      for i, a in ipairs(attempts) do
        assert.are.equal(i, a.attempt)
        assert.are.equal("POST", a.method)
        assert.are.equal("/v1.7/oauth/authorize", a.path)
        assert.are.equal("connect", a.error)
      end
      -- the token exchange too: it certainly was not processed
      attempts = {}
      res, err = sdk:exchange_code_for_token{ contract = flow.contract(), authorization_code = "c",
                                              code_verifier = string.rep("v", 43) }
      assert.is_nil(res)
      assert.are.equal("connect", err.network)
      assert.are.equal(3, #attempts)
      -- and no more than the limit says
      attempts = {}
      local once = assert(flow.sdk(nil, {
        base_url = "http://127.0.0.1:" .. port .. "/v1.7/",
        retry_options = { limit = 0 },
        logger = function(_, message, fields)
          if message == "request failed" then attempts[#attempts + 1] = fields end
        end,
      }))
      once:get_authorize_url(flow.authorize_opts())
      assert.are.equal(1, #attempts)
    end)
  end)

  describe("timeouts", function()
    it("gives a NetworkError timeout for an answer slower than the timeout #timing", function()
      fault("POST", AUTHORIZE, { action = "delay", ms = 1000 })
      local sdk = assert(flow.sdk(sb, { timeout = 0.4 }))
      local t, res, err = elapsed(function() return sdk:get_authorize_url(flow.authorize_opts()) end)
      assert.is_nil(res)
      assert.are.equal("NetworkError", err.kind)
      assert.are.equal("timeout", err.network)
      assert.is_true(t >= 0.35 and t < 1, "took " .. t .. " s")
      -- a POST that may have reached the server is not sent again
      assert.are.equal(1, settled_count(AUTHORIZE, 1))
    end)

    it("gives a NetworkError timeout, within the timeout, for a server that never answers #timing", function()
      fault("POST", AUTHORIZE, { action = "hang" })
      local sdk = assert(flow.sdk(sb, { timeout = 0.4 }))
      local t, res, err = elapsed(function() return sdk:get_authorize_url(flow.authorize_opts()) end)
      assert.is_nil(res)
      assert.are.equal("NetworkError", err.kind)
      assert.are.equal("timeout", err.network)
      assert.is_true(t < 1.5, "took " .. t .. " s")
      -- a GET that keeps hanging: every attempt times out, then the error
      fault("GET", JWKS, { action = "hang", count = 3 })
      local fresh = assert(flow.sdk(sb, { timeout = 0.3 }))
      t, res, err = elapsed(function() return fresh:get_authorize_url(flow.authorize_opts()) end)
      assert.is_nil(res)
      assert.are.equal("JWKSError", err.code)
      assert.are.equal("timeout", err.cause.network)
      assert.is_true(t < 0.3 * 3 + 1.5, "took " .. t .. " s")
    end)
  end)

  describe("error answers", function()
    local sdk

    before_each(function()
      sdk = assert(flow.sdk(sb))
    end)

    local function authorize_error(spec)
      fault("POST", AUTHORIZE, spec)
      local res, err = sdk:get_authorize_url(flow.authorize_opts())
      assert.is_nil(res)
      assert.is_table(err)
      return err
    end

    it("maps an API error body: code, message, reference, status", function()
      local err = authorize_error{ status = 404, body = { error = { code = "InvalidRedirectUri",
        message = "The redirect_uri (" .. flow.CALLBACK .. ") is invalid",
        reference = "3Wb9vDEsv4ODYKaoP6lQKCbZu9rnJ6UH" } } }
      assert.are.equal("ServerError", err.kind)
      assert.are.equal("InvalidRedirectUri", err.code)
      assert.are.equal("The redirect_uri (" .. flow.CALLBACK .. ") is invalid", err.message)
      assert.are.equal("3Wb9vDEsv4ODYKaoP6lQKCbZu9rnJ6UH", err.reference)
      assert.are.equal(404, err.status)
      assert.are.equal("Not Found", err.status_message)
      assert.is_falsy(err.retryable)
    end)

    it("maps an error answer without a body to DigiMeServerError", function()
      local err = authorize_error{ status = 404 }
      assert.are.equal("ServerError", err.kind)
      assert.are.equal("DigiMeServerError", err.code)
      assert.are.equal(404, err.status)
      assert.is_nil(err.reference)
      assert.is_string(err.message)
      err = authorize_error{ status = 500, body = "<html>oops</html>" }
      assert.are.equal("DigiMeServerError", err.code)
      assert.are.equal(500, err.status)
      assert.are.equal(2, flow.count(sb, AUTHORIZE))   -- one each: a POST's 500 is not retried
    end)

    it("reads the X-Error-* headers when there is no body", function()
      local err = authorize_error{ status = 400, headers = { ["X-Error-Code"] = "ValidationErrors",
        ["X-Error-Message"] = "Parameter validation errors", ["X-Error-Reference"] = "ref-from-header" } }
      assert.are.equal("ServerError", err.kind)
      assert.are.equal("ValidationErrors", err.code)
      assert.are.equal("Parameter validation errors", err.message)
      assert.are.equal("ref-from-header", err.reference)
      assert.are.equal(400, err.status)
    end)

    it("maps the storage error shape, and an API error with a top-level message", function()
      local err = authorize_error{ status = 409, body = { error = "StorageConflict", message = "in use" } }
      assert.are.equal("StorageConflict", err.code)
      assert.are.equal("in use", err.message)
      err = authorize_error{ status = 400, body = { error = { code = "Real", message = "inner" },
                                                    message = "outer" } }
      assert.are.equal("Real", err.code)
      assert.are.equal(400, err.status)
    end)

    it("maps SDKInvalid and SDKVersionInvalid to SDKInvalidError", function()
      local err = authorize_error{ status = 400, body = { error = { code = "SDKInvalid",
                                                                   message = "The SDK is invalid: x" } } }
      assert.are.equal("SDKInvalidError", err.kind)
      assert.are.equal("SDKInvalid", err.code)
      err = authorize_error{ status = 403, body = { error = { code = "SDKVersionInvalid",
                                                             message = "no longer supported" } } }
      assert.are.equal("SDKInvalidError", err.kind)
      assert.are.equal("SDKVersionInvalid", err.code)
      assert.are.equal(403, err.status)
    end)

    it("maps the sandbox's own error answers (a bad client JWT is refused with 406)", function()
      local other = assert(flow.sdk(sb, { application_id = "not-the-demo-app" }))
      local res, err = other:get_authorize_url(flow.authorize_opts())
      assert.is_nil(res)
      assert.are.equal("ServerError", err.kind)
      assert.are.equal("InvalidClient", err.code)
      assert.are.equal(401, err.status)
      assert.is_string(err.reference)
    end)
  end)

  describe("malformed 2xx answers", function()
    local sdk

    before_each(function()
      sdk = assert(flow.sdk(sb))
    end)

    local function invalid_response(res, err, what)
      assert.is_nil(res, what)
      assert.is_table(err, what)
      assert.are.equal("DigiMeSDKError", err.kind, what)
      assert.are.equal("InvalidResponse", err.code, what .. ": " .. tostring(err))
    end

    it("refuses a body that is not JSON", function()
      for _, body in ipairs{ "not json", "{\"token\":", "" } do
        fault("POST", AUTHORIZE, { status = 201, body = body })
        local res, err = sdk:get_authorize_url(flow.authorize_opts())
        invalid_response(res, err, "authorize body " .. body)
      end
      local code, verifier = flow.code(sdk)
      fault("POST", TOKEN, { status = 200, body = "<html></html>" })
      local res, err = sdk:exchange_code_for_token{ contract = flow.contract(),
        authorization_code = code, code_verifier = verifier }
      invalid_response(res, err, "token body html")
    end)

    it("refuses JSON that is not an object", function()
      for _, body in ipairs{ "\"token\"", "5", "null", "true" } do
        fault("POST", AUTHORIZE, { status = 201, body = body })
        local res, err = sdk:get_authorize_url(flow.authorize_opts())
        invalid_response(res, err, "authorize body " .. body)
      end
    end)

    it("refuses JSON of the wrong shape: {} or [] without token, token not a string", function()
      for _, body in ipairs{ "{}", "[]", cjson.encode{ token = 5, session = { key = "k", expiry = 1 } },
                             cjson.encode{ token = { "a", "b" } } } do
        fault("POST", AUTHORIZE, { status = 201, body = body })
        local res, err = sdk:get_authorize_url(flow.authorize_opts())
        invalid_response(res, err, "authorize body " .. body)
      end
      local code, verifier = flow.code(sdk)
      for _, body in ipairs{ "{}", cjson.encode{ token = false } } do
        fault("POST", TOKEN, { status = 200, body = body })
        local res, err = sdk:exchange_code_for_token{ contract = flow.contract(),
          authorization_code = code, code_verifier = verifier }
        invalid_response(res, err, "token body " .. body)
      end
    end)

    it("refuses an authorize answer whose session is missing or malformed", function()
      local cap = flow.capture(sb)
      local ok, e = pcall(function()
        local csdk = assert(flow.sdk(cap, { jwks = { allowed = { sb.base_url .. "jwks/oauth" } } }))
        for _, edit in ipairs{ { drop = { "session" } }, { set = { session = "s" } },
                               { set = { session = { key = 5, expiry = 1 } } } } do
          cap:script{ { method = "POST", path = AUTHORIZE, forward = true, drop = edit.drop, set = edit.set } }
          local res, err = csdk:get_authorize_url(flow.authorize_opts())
          invalid_response(res, err, "session edit " .. cjson.encode(edit))
        end
        -- the unedited answer is fine
        assert(csdk:get_authorize_url(flow.authorize_opts()))
      end)
      cap:stop()
      assert(ok, e)
    end)
  end)

  leak_check.it_leaks_nothing()
end)
