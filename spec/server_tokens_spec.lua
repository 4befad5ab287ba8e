-- Server tokens (doc/protocol.md "Server tokens"): every hostile token the
-- sandbox can forge is refused with a typed error, never a crash; a jku off the allow-list is
-- never fetched; broken JWKS answers; the JWKS cache (warm, ttl = 0, unknown kid and cooldown).
local flow = require "flow"
local sandbox_hooks = require "sandbox_hooks"
local cjson = require "cjson"

local KINDS = { "alg_none", "hs512", "rs512", "pss_salt32", "wrong_kid", "no_kid", "foreign_jku",
                "lookalike_jku", "tampered_payload", "tampered_signature", "expired",
                "not_yet_valid", "not_json", "two_parts", "oversized", "wrong_alg_header" }

local TOKEN_CODES = { InvalidServerToken = true, JWKSError = true }

local function assert_token_refused(ok, res, err, what)
  assert.is_true(ok, what .. ": the call raised: " .. tostring(res))
  assert.is_nil(res, what .. ": a hostile token was accepted")
  assert.is_table(err, what .. ": no error")
  assert.are.equal("DigiMeSDKError", err.kind, what .. ": " .. tostring(err))
  assert.is_true(TOKEN_CODES[err.code] == true, what .. ": code " .. tostring(err.code))
  assert.is_string(err.message)
end

describe("server tokens", function()
  local sb, sdk

  lazy_setup(function()
    sb = flow.start()
    sdk = assert(flow.sdk(sb))
  end)

  sandbox_hooks.stop_and_reset(function() return sb end)

  local function token_fault(path, kind)
    return sb:fault{ method = "POST", path = path, match = "exact", action = "token", token = kind }
  end

  local function assert_fault_used()
    assert.are.same({}, sb:faults(), "the token fault was not used: the test proved nothing")
  end

  it("knows every hostile kind the sandbox forges", function()
    local forged = sb:info_().token_faults
    local set = {}
    for _, k in ipairs(forged) do set[k] = true end
    for _, k in ipairs(KINDS) do
      assert.is_true(set[k] == true, "the sandbox does not forge " .. k)
      set[k] = nil
    end
    assert.are.same({}, set, "kinds this spec does not test")
  end)

  for _, kind in ipairs(KINDS) do
    it("refuses a " .. kind .. " token on POST oauth/token (warm and cold JWKS cache)", function()
      -- warm: the sdk has fetched the JWKS for the authorize call just before
      local code, verifier = flow.code(sdk)
      token_fault("/v1.7/oauth/token", kind)
      local ok, res, err = pcall(sdk.exchange_code_for_token, sdk, { contract = flow.contract(),
        authorization_code = code, code_verifier = verifier })
      assert_token_refused(ok, res, err, kind .. " (warm)")
      assert_fault_used()
      -- cold: a new sdk that has never fetched the JWKS
      code, verifier = flow.code(sdk)
      local cold = assert(flow.sdk(sb))
      token_fault("/v1.7/oauth/token", kind)
      ok, res, err = pcall(cold.exchange_code_for_token, cold, { contract = flow.contract(),
        authorization_code = code, code_verifier = verifier })
      assert_token_refused(ok, res, err, kind .. " (cold)")
      assert_fault_used()
      assert.are.equal(0, sb:stats().foreign_jwks_fetches, "a foreign JWKS was fetched")
    end)

    it("refuses a " .. kind .. " token on POST oauth/authorize", function()
      token_fault("/v1.7/oauth/authorize", kind)
      local ok, res, err = pcall(sdk.get_authorize_url, sdk, flow.authorize_opts())
      assert_token_refused(ok, res, err, kind)
      assert_fault_used()
      token_fault("/v1.7/oauth/authorize", kind)
      local cold = assert(flow.sdk(sb))
      ok, res, err = pcall(cold.get_authorize_url, cold, flow.authorize_opts())
      assert_token_refused(ok, res, err, kind .. " (cold)")
      assert_fault_used()
      assert.are.equal(0, sb:stats().foreign_jwks_fetches, "a foreign JWKS was fetched")
    end)
  end

  it("refuses hostile tokens on the refresh and reauthorize answers too", function()
    local calls = 0
    local s2 = assert(flow.sdk(sb, { on_token_refresh = function() calls = calls + 1 end }))
    for _, kind in ipairs{ "alg_none", "foreign_jku", "tampered_payload", "expired" } do
      local token = flow.login(s2)
      token_fault("/v1.7/oauth/token", kind)
      local ok, res, err = pcall(s2.refresh_token, s2, { contract = flow.contract(),
                                                         user_access_token = token })
      assert_token_refused(ok, res, err, "refresh " .. kind)
      assert_fault_used()
      token_fault("/v1.7/oauth/token/reference", kind)
      ok, res, err = pcall(s2.get_reauthorize_url, s2, { contract = flow.contract(),
        callback = flow.CALLBACK, user_access_token = token })
      assert_token_refused(ok, res, err, "reauthorize " .. kind)
      assert_fault_used()
    end
    assert.are.equal(0, calls, "on_token_refresh was called with a refused token")
  end)

  it("never fetches a foreign or lookalike jku, and is not poisoned by one", function()
    local fresh = assert(flow.sdk(sb))
    for _, kind in ipairs{ "foreign_jku", "lookalike_jku", "foreign_jku" } do
      token_fault("/v1.7/oauth/authorize", kind)
      local res, err = fresh:get_authorize_url(flow.authorize_opts())
      assert.is_nil(res)
      assert.are.equal("InvalidServerToken", err.code)
      -- a genuine token right after still verifies (the genuine key is still the one used)
      assert(fresh:get_authorize_url(flow.authorize_opts()))
    end
    -- a jku naming the evil host explicitly
    sb:fault{ method = "POST", path = "/v1.7/oauth/authorize", action = "token",
              token = "foreign_jku", jku = sb.origin .. "/evil/jwks?x=" .. sb.base_url }
    local res = fresh:get_authorize_url(flow.authorize_opts())
    assert.is_nil(res)
    local stats = sb:stats()
    assert.are.equal(0, stats.foreign_jwks_fetches)
    assert.is_nil(stats.by_path["/evil/jwks"])
    assert.is_nil(stats.by_path["/v1.7/jwks/oauth.evil.example"])
  end)

  describe("JWKS answers", function()
    local function jwks_fault(spec)
      spec.method = "GET"
      spec.path = "/v1.7/jwks/oauth"
      spec.match = "exact"
      spec.action = spec.action or "status"
      return sb:fault(spec)
    end

    local function broken(spec, codes, opts)
      jwks_fault(spec)
      local fresh = assert(flow.sdk(sb, opts))
      local ok, res, err = pcall(fresh.get_authorize_url, fresh, flow.authorize_opts())
      assert.is_true(ok, tostring(res))
      assert.is_nil(res)
      assert.are.equal("DigiMeSDKError", err.kind, tostring(err))
      assert.is_true((codes or { JWKSError = true })[err.code] == true, tostring(err))
      -- and the next call, the JWKS answering again, works: nothing bad was cached
      local again, aerr = fresh:get_authorize_url(flow.authorize_opts())
      assert.is_nil(aerr)
      assert.is_string(again.url)
      return err, fresh
    end

    it("refuses a JWKS that is not JSON", function()
      broken{ status = 200, body = "this is not JSON {", headers = { ["content-type"] = "application/json" } }
    end)

    it('refuses {"keys":"x"}', function()
      broken{ status = 200, body = { keys = "x" } }
    end)

    it("refuses {}", function()
      broken{ status = 200, body = "{}", headers = { ["content-type"] = "application/json" } }
    end)

    it("refuses a JSON array, null, and keys that hold no usable key", function()
      broken{ status = 200, body = "[1,2]" }
      broken{ status = 200, body = "null" }
      -- a JWKS without the kid is cached like any other; with cooldown = 0 the next token's
      -- kid makes the SDK fetch again at once (the default cooldown would refuse for 30 s)
      local now = { jwks = { cooldown = 0 } }
      broken({ status = 200, body = { keys = { {} } } }, TOKEN_CODES, now)
      local kid = sb:info_().kid
      broken({ status = 200, body = { keys = { { kid = kid, pem = "not a pem" } } } }, TOKEN_CODES, now)
      broken({ status = 200, body = { keys = { { kid = kid, kty = "RSA", n = "AQAB", e = "AQAB",
                                                 alg = "RS256" } } } }, TOKEN_CODES, now)
    end)

    it("refuses a JWKS over jwks.max_size without parsing it", function()
      local big = { keys = {}, padding = string.rep("A", 64 * 1024) }
      local err, fresh = broken({ status = 200, body = big }, nil, { jwks = { max_size = 4096 } })
      assert.is_truthy(tostring(err):find("JWKS", 1, true))
      assert.are.equal(1, fresh.stats.jwks_fetches)   -- the good one after, only
    end)

    it("reports a JWKS error answer (404, not retried)", function()
      local err = broken{ status = 404, body = { error = { code = "NotFound", message = "gone" } } }
      assert.are.equal("ServerError", err.cause.kind)
      assert.are.equal(404, err.cause.status)
      assert.are.equal(2, flow.count(sb, "/v1.7/jwks/oauth"))   -- the 404 (once) and the next call
    end)

    it("retries a JWKS fetch that got a 500, then succeeds", function()
      jwks_fault{ status = 500, body = "oops" }
      local fresh = assert(flow.sdk(sb))
      local res, err = fresh:get_authorize_url(flow.authorize_opts())
      assert.is_nil(err)
      assert.is_string(res.url)
      assert.are.equal(2, flow.count(sb, "/v1.7/jwks/oauth"))   -- both attempts arrived
      assert.are.equal(1, fresh.stats.jwks_fetches)               -- one JWKS obtained
    end)
  end)

  describe("JWKS cache", function()
    it("makes no JWKS request for the second token while warm; sdk.stats agrees", function()
      local fresh = assert(flow.sdk(sb))
      assert.are.equal(0, fresh.stats.jwks_fetches)
      assert(fresh:get_authorize_url(flow.authorize_opts()))
      assert.are.equal(1, sb:stats().jwks_fetches)
      assert.are.equal(1, fresh.stats.jwks_fetches)
      local token = flow.login(fresh)             -- authorize + exchange
      assert(fresh:refresh_token{ contract = flow.contract(), user_access_token = token })
      assert.are.equal(1, sb:stats().jwks_fetches)
      assert.are.equal(1, fresh.stats.jwks_fetches)
      -- the cache is per sdk object
      local other = assert(flow.sdk(sb))
      assert(other:get_authorize_url(flow.authorize_opts()))
      assert.are.equal(2, sb:stats().jwks_fetches)
      assert.are.equal(1, other.stats.jwks_fetches)
    end)

    it("re-fetches on every call with ttl = 0", function()
      local fresh = assert(flow.sdk(sb, { jwks = { ttl = 0 } }))
      for i = 1, 3 do
        assert(fresh:get_authorize_url(flow.authorize_opts()))
        assert.are.equal(i, sb:stats().jwks_fetches)
        assert.are.equal(i, fresh.stats.jwks_fetches)
      end
    end)

    it("re-fetches on an unknown kid at most once per cooldown #timing", function()
      local fresh = assert(flow.sdk(sb, { jwks = { cooldown = 0.5 } }))
      local function wrong_kid()
        sb:fault{ method = "POST", path = "/v1.7/oauth/authorize", action = "token", token = "wrong_kid" }
        local res, err = fresh:get_authorize_url(flow.authorize_opts())
        assert.is_nil(res)
        assert.are.equal("InvalidServerToken", err.code)
      end
      -- cold: one fetch is needed anyway
      wrong_kid()
      assert.are.equal(1, sb:stats().jwks_fetches)
      wrong_kid()
      wrong_kid()
      assert.are.equal(1, sb:stats().jwks_fetches)
      assert(fresh:get_authorize_url(flow.authorize_opts()))
      assert.are.equal(1, sb:stats().jwks_fetches)
      flow.sandbox.sleep(0.6)
      wrong_kid()                                   -- cooldown over: one re-fetch
      assert.are.equal(2, sb:stats().jwks_fetches)
      wrong_kid()
      wrong_kid()                                   -- within the new cooldown: none
      assert.are.equal(2, sb:stats().jwks_fetches)
      assert.are.equal(2, fresh.stats.jwks_fetches)
      -- a known kid never needs a fetch while the entry is fresh
      assert(fresh:get_authorize_url(flow.authorize_opts()))
      assert.are.equal(2, sb:stats().jwks_fetches)
    end)

    it("fetches the JWKS once for concurrent verifications inside digime.run", function()
      local fresh = assert(flow.sdk(sb))
      local results = flow.digime.run(function()
        local tasks = {}
        for i = 1, 4 do
          tasks[i] = flow.digime.spawn(fresh.get_authorize_url, fresh, flow.authorize_opts())
        end
        local out = {}
        for i = 1, 4 do out[i] = { tasks[i]:wait() } end
        return out
      end)
      for i = 1, 4 do
        assert.is_nil(results[i][2])
        assert.is_string(results[i][1].url)
      end
      assert.are.equal(1, sb:stats().jwks_fetches)
    end)
  end)

  it("keeps the token error text free of token contents", function()
    -- a hostile token's payload: the codes the sandbox put in it must not be echoed
    token_fault("/v1.7/oauth/token", "tampered_payload")
    local code, verifier = flow.code(sdk)
    local _, err = sdk:exchange_code_for_token{ contract = flow.contract(),
      authorization_code = code, code_verifier = verifier }
    assert.is_table(err)
    assert.is_falsy(tostring(err):find("attacker", 1, true))
    assert.is_falsy(tostring(err):find(verifier, 1, true))
    flow.assert_no_secrets()
    assert.is_string(cjson.encode{ message = err.message })
  end)
end)
