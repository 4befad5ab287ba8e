-- Error objects (doc/protocol.md "Errors"): nothing is raised for a bad argument, a
-- server error or a network fault; every error has kind, code, message (status, reference,
-- retryable where known); tostring(err) reads well on one log line; and no error text and no
-- logger line ever carries the private key, a token value or a code verifier.
local flow = require "flow"
local digime = require "digime"
local errors = require "digime.errors"

describe("errors", function()
  local sb, sdk, collected, lines

  lazy_setup(function()
    sb = flow.start()
    lines = {}
    sdk = assert(flow.sdk(sb, { logger = function(level, message, fields)
      lines[#lines + 1] = tostring(level) .. " " .. tostring(message) .. " " .. flow.dump(fields)
    end }))
    collected = {}
  end)

  lazy_teardown(function()
    if sb then sb:stop() end
  end)

  -- Calls sdk[name](sdk, opts) under pcall: it must not raise; returns res, err.
  local function call(s, name, opts)
    local ok, res, err = pcall(s[name], s, opts)
    assert.is_true(ok, name .. " raised: " .. tostring(res))
    if err ~= nil then collected[#collected + 1] = err end
    return res, err
  end

  local function assert_error(err, kind, code)
    assert.is_table(err)
    assert.is_true(errors.is_error(err), "not an SDK error object")
    assert.is_true(errors.kinds[err.kind] == true, "unknown kind " .. tostring(err.kind))
    assert.are.equal(kind, err.kind)
    if code then assert.are.equal(code, err.code) end
    assert.is_string(err.code)
    assert.is_string(err.message)
    assert.is_true(#err.message > 0)
    local text = tostring(err)
    assert.is_falsy(text:find("\n", 1, true), "tostring(err) is more than one line: " .. text)
    assert.are.equal(kind, text:sub(1, #kind), text)
    assert.is_truthy(text:find(err.message, 1, true), text)
    assert.is_falsy(text:find("table: 0x", 1, true), text)
    return text
  end

  it("is a TypeValidationError for a bad argument, naming the field", function()
    local res, err = call(sdk, "get_authorize_url", { contract = flow.contract(), state = "s" })
    assert.is_nil(res)
    local text = assert_error(err, "TypeValidationError", "TypeValidationError")
    assert.is_truthy(text:match("^TypeValidationError: callback "), text)
    assert.are.equal("callback", err.field)
  end)

  it("is a ServerError with status and reference for an error answer", function()
    local token = flow.login(sdk)
    assert(sdk:refresh_token{ contract = flow.contract(), user_access_token = token })
    local res, err = call(sdk, "refresh_token", { contract = flow.contract(), user_access_token = token })
    assert.is_nil(res)
    local text = assert_error(err, "ServerError", "InvalidToken")
    assert.are.equal(401, err.status)
    assert.is_string(err.reference)
    local want = "^ServerError InvalidToken %(HTTP 401%): The token %(refresh_token%) is invalid %[reference %w+%]$"
    assert.is_truthy(text:match(want), text)
    assert.is_falsy(text:find(token.refresh_token.value, 1, true))
  end)

  it("is a ServerError DigiMeServerError for an answer without a code", function()
    sb:fault{ method = "POST", path = "/v1.7/oauth/authorize", action = "status", status = 502 }
    local res, err = call(sdk, "get_authorize_url", flow.authorize_opts())
    assert.is_nil(res)
    local text = assert_error(err, "ServerError", "DigiMeServerError")
    assert.are.equal(502, err.status)
    assert.is_true(err.retryable)
    assert.is_truthy(text:match("^ServerError DigiMeServerError %(HTTP 502%): "), text)
  end)

  it("is an SDKInvalidError for SDKInvalid", function()
    sb:fault{ method = "POST", path = "/v1.7/oauth/authorize", action = "status", status = 400,
              body = { error = { code = "SDKInvalid", message = "The SDK is invalid: lua-digime",
                                 reference = "ref123" } } }
    local res, err = call(sdk, "get_authorize_url", flow.authorize_opts())
    assert.is_nil(res)
    local text = assert_error(err, "SDKInvalidError", "SDKInvalid")
    assert.are.equal("SDKInvalidError SDKInvalid (HTTP 400): The SDK is invalid: lua-digime [reference ref123]",
                     text)
    assert.is_falsy(err.retryable)
  end)

  it("is a NetworkError for a network fault, with the kind of failure", function()
    local port = flow.closed_port()
    local dead = assert(flow.sdk(nil, { base_url = "http://127.0.0.1:" .. port .. "/v1.7/",
                                        retry_options = { limit = 0 } }))
    local res, err = call(dead, "get_authorize_url", flow.authorize_opts())
    assert.is_nil(res)
    local text = assert_error(err, "NetworkError")
    assert.are.equal("connect", err.network)
    assert.is_true(err.retryable)
    assert.is_truthy(text:find("oauth/authorize", 1, true), text)
  end)

  it("is a DigiMeSDKError for a hostile server token or a malformed answer", function()
    sb:fault{ method = "POST", path = "/v1.7/oauth/authorize", action = "token", token = "alg_none" }
    local res, err = call(sdk, "get_authorize_url", flow.authorize_opts())
    assert.is_nil(res)
    local text = assert_error(err, "DigiMeSDKError", "InvalidServerToken")
    assert.is_truthy(text:match("^DigiMeSDKError InvalidServerToken: "), text)
    sb:fault{ method = "POST", path = "/v1.7/oauth/authorize", action = "status", status = 201,
              body = "not json" }
    res, err = call(sdk, "get_authorize_url", flow.authorize_opts())
    assert.is_nil(res)
    assert_error(err, "DigiMeSDKError", "InvalidResponse")
  end)

  describe("never carry secrets", function()
    local SECRET = "SECRET-not-a-key-0123456789-abcdefghijklmnop"

    lazy_setup(function()
      flow.secret(SECRET)
    end)

    it("not the code verifier of a refused exchange", function()
      local res = assert(sdk:get_authorize_url(flow.authorize_opts()))
      local cb = flow.consent(res.url)
      local wrong = assert(sdk:get_authorize_url(flow.authorize_opts())).code_verifier
      local t, err = call(sdk, "exchange_code_for_token", { contract = flow.contract(),
        authorization_code = cb.query.code, code_verifier = wrong })
      assert.is_nil(t)
      assert.is_falsy(flow.error_text(err):find(wrong, 1, true))
      assert.is_falsy(flow.error_text(err):find(res.code_verifier, 1, true))
    end)

    it("not a token value the server refused", function()
      local token = flow.login(sdk)
      local fake = { access_token = { value = "fake-access-" .. SECRET, expiry = os.time() + 60 },
                     refresh_token = { value = "fake-refresh-" .. SECRET, expiry = os.time() + 60 } }
      flow.note_token(fake)
      local res, err = call(sdk, "get_reauthorize_url", { contract = flow.contract(),
        callback = flow.CALLBACK, user_access_token = fake })
      assert.is_nil(res)
      assert_error(err, "ServerError", "InvalidToken")
      res, err = call(sdk, "refresh_token", { contract = flow.contract(), user_access_token = fake })
      assert.is_nil(res)
      assert_error(err, "ServerError", "InvalidToken")
      -- a token with a malformed field: the message names the field, not the value
      res, err = call(sdk, "refresh_token", { contract = flow.contract(), user_access_token = {
        access_token = token.access_token, refresh_token = { value = token.refresh_token.value } } })
      assert.is_nil(res)
      assert_error(err, "TypeValidationError")
    end)

    it("not the private key, however it is broken", function()
      local broken = flow.demo.private_key:gsub("MIIEow", "MIIEoX")
      local truncated = flow.demo.private_key:sub(1, 400)
      flow.secret_pem(broken)
      for _, pem in ipairs{ SECRET, broken, truncated, flow.demo.public_key,
                            "-----BEGIN RSA PRIVATE KEY-----\n" .. SECRET .. "\n-----END RSA PRIVATE KEY-----\n" } do
        for _, name in ipairs{ "get_authorize_url", "exchange_code_for_token" } do
          local opts = name == "get_authorize_url" and flow.authorize_opts() or
            { authorization_code = "c", code_verifier = string.rep("v", 43) }
          opts.contract = { id = flow.demo.contract_id, private_key = pem }
          local res, err = call(sdk, name, opts)
          assert.is_nil(res)
          assert_error(err, "TypeValidationError")
          assert.is_falsy(flow.error_text(err):find(SECRET, 1, true))
          assert.is_falsy(flow.error_text(err):find("MII", 1, true), flow.error_text(err))
        end
      end
    end)

    it("not a secret given under an unknown or malformed option", function()
      local opts = flow.authorize_opts()
      opts.code_verifer = SECRET
      local res, err = call(sdk, "get_authorize_url", opts)
      assert.is_nil(res)
      assert.is_truthy(tostring(err):find("code_verifer", 1, true))
      res, err = call(sdk, "exchange_code_for_token", { contract = flow.contract(),
        authorization_code = { SECRET }, code_verifier = SECRET })
      assert.is_nil(res)
      assert.is_truthy(tostring(err):find("authorization_code", 1, true))
      res, err = call(sdk, "exchange_code_for_token", { contract = flow.contract(),
        authorization_code = "c", code_verifier = SECRET, extra = SECRET })
      assert.is_nil(res)
      assert.is_truthy(tostring(err):find("extra", 1, true))
    end)

    it("not the code verifier of an exchange that failed on the network", function()
      local port = flow.closed_port()
      local dead = assert(flow.sdk(nil, { base_url = "http://127.0.0.1:" .. port .. "/v1.7/",
        logger = function(level, message, fields)
          lines[#lines + 1] = tostring(level) .. " " .. tostring(message) .. " " .. flow.dump(fields)
        end }))
      local res, err = call(dead, "exchange_code_for_token", { contract = flow.contract(),
        authorization_code = "code-" .. SECRET, code_verifier = SECRET })
      assert.is_nil(res)
      assert_error(err, "NetworkError")
      assert.is_falsy(flow.error_text(err):find(SECRET, 1, true))
    end)

    it("and no logger line carries a secret or a JWT", function()
      -- a run with everything: the flow, a refresh, retries, a fault, a hostile token
      local token = flow.login(sdk)
      assert(sdk:refresh_token{ contract = flow.contract(), user_access_token = token })
      sb:fault{ method = "GET", path = "/v1.7/jwks/oauth", action = "status", status = 503 }
      local fresh = assert(flow.sdk(sb, { logger = function(level, message, fields)
        lines[#lines + 1] = tostring(level) .. " " .. tostring(message) .. " " .. flow.dump(fields)
      end }))
      flow.login(fresh)
      sb:fault{ method = "POST", path = "/v1.7/oauth/token", action = "token", token = "tampered_payload" }
      call(fresh, "refresh_token", { contract = flow.contract(), user_access_token = token })
      assert.is_true(#lines > 10, "the logger was hardly called: " .. #lines .. " lines")
      for _, l in ipairs(lines) do
        assert.is_falsy(l:find("eyJhbGci", 1, true), "a JWT in a log line: " .. l)
        assert.is_falsy(l:lower():find("bearer", 1, true), "an Authorization header in a log line: " .. l)
      end
      flow.assert_no_secrets(collected, lines)
    end)
  end)

  it("every error this file and the others produced is free of secrets", function()
    local n_errors, n_lines = flow.assert_no_secrets(collected, lines)
    assert.is_true(n_errors >= 15, "only " .. n_errors .. " errors checked")
    assert.is_true(n_lines >= 10, "only " .. n_lines .. " log lines checked")
    assert.is_true(digime.errors == errors)
  end)
end)
