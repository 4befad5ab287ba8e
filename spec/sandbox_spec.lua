-- The sandbox on its own: raw HTTP (luasocket) and digime.core crypto, no SDK code, so that
-- a mistake in the SDK cannot hide a mistake in the server it is tested against.

local sandbox = require "sandbox"
local sandbox_hooks = require "sandbox_hooks"
local cjson = require "cjson"
local core = require "digime.core"
local socket = require "socket"

local AGENT, json, query_of = sandbox.AGENT, sandbox.json, sandbox.query_of
local CALLBACK = "https://app.example/return?from=sandbox"

-- Helpers ------------------------------------------------------------------------------------

local shell = require("shell").status

local function write_tmp(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

-- Asserts the API error shape: JSON body and the X-Error-* headers, both.
local function assert_error(res, status, code, message)
  assert.equal(status, res.status)
  local body = json(res)
  assert.equal(code, body.error.code)
  if message then
    assert.equal(message, body.error.message)
  end
  assert.is_string(body.error.message)
  assert.matches("^%w+$", body.error.reference)
  assert.equal(32, #body.error.reference)
  assert.equal(body.error.code, res.headers["x-error-code"])
  assert.equal(body.error.message, res.headers["x-error-message"])
  assert.equal(body.error.reference, res.headers["x-error-reference"])
  return body
end

-- Server tokens are verified the way a client must: PS512 against the JWKS key named by kid.
local function jwks(sb)
  local res = assert(sb:request{ path = "jwks/oauth" })
  assert.equal(200, res.status)
  return json(res).keys
end

local function verify_server_token(sb, jwt)
  local header, payload, input, sig = sandbox.decode_jwt(jwt)
  assert.equal("PS512", header.alg)
  assert.equal(sb.base_url .. "jwks/oauth", header.jku)
  local key
  for _, k in ipairs(jwks(sb)) do
    if k.kid == header.kid then
      key = k
    end
  end
  assert.is_table(key, "kid not in the JWKS")
  assert.is_true(core.public_key(key.pem):verify_ps512(input, sig))
  assert.is_true(core.public_key_jwk(key.n, key.e):verify_ps512(input, sig))
  return payload, header
end

local function authz_claims(challenge, extra)
  local c = { code_challenge = challenge, code_challenge_method = "S256",
              redirect_uri = CALLBACK, response_mode = "query", response_type = "code",
              state = "state 1/2" }
  for k, v in pairs(extra or {}) do
    c[k] = v
  end
  return c
end

-- POST oauth/authorize -> preauthorization code, verifier, decoded body
local function authorize(sb, extra, sign_opts)
  local verifier, challenge = sandbox.pkce()
  local opts = { claims = authz_claims(challenge, extra), body = { agent = AGENT } }
  for k, v in pairs(sign_opts or {}) do
    opts[k] = v
  end
  local res = assert(sb:call("POST", "oauth/authorize", opts))
  assert.equal(201, res.status, res.body)
  local body = json(res)
  local payload = verify_server_token(sb, body.token)
  return payload.preauthorization_code, verifier, body
end

-- GET an onboarding page -> response, callback query (on a redirect)
local function page(sb, name, code)
  local res = assert(sb:request{ url = sb.onboard_url .. name .. "?code=" .. code .. "&sourceType=pull" })
  local q = res.headers.location and query_of(res.headers.location)
  return res, q
end

local function exchange(sb, code, verifier, sign_opts)
  local opts = { claims = { code = code, code_verifier = verifier, grant_type = "authorization_code" } }
  for k, v in pairs(sign_opts or {}) do
    opts[k] = v
  end
  return assert(sb:call("POST", "oauth/token", opts))
end

local function refresh(sb, refresh_token)
  return assert(sb:call("POST", "oauth/token", {
    claims = { grant_type = "refresh_token", refresh_token = refresh_token },
    headers = { ["content-type"] = "application/json" } }))
end

-- authorize -> consent -> exchange: the token payload
local function login(sb)
  local code, verifier = authorize(sb)
  local res, q = page(sb, "authorize", code)
  assert.equal(302, res.status)
  assert.equal("true", q.success)
  local tres = exchange(sb, q.code, verifier)
  assert.equal(201, tres.status, tres.body)
  return verify_server_token(sb, json(tres).token)
end

local function reauthz(sb, access_token, challenge, extra)
  local c = { access_token = access_token, code_challenge = challenge,
              code_challenge_method = "S256", redirect_uri = CALLBACK, state = "re" }
  for k, v in pairs(extra or {}) do
    c[k] = v
  end
  return assert(sb:call("POST", "oauth/token/reference", { claims = c, body = { agent = AGENT } }))
end

local function onboard_ref(sb, access_token)
  return assert(sb:call("POST", "oauth/token/reference", {
    claims = { access_token = access_token, redirect_uri = CALLBACK },
    body = { agent = AGENT } }))
end

local function jwks_url_fetch(url)
  local res = assert(sandbox.request{ url = url })
  return res
end

-- Specs ---------------------------------------------------------------------------------------

describe("digime-sandbox", function()
  local sb

  setup(function()
    sb = sandbox.start()
  end)

  sandbox_hooks.stop_and_reset(function() return sb end, "teardown")

  describe("process", function()
    it("prints one JSON line with the four URLs first", function()
      local f = assert(io.open(sb.files.out, "rb"))
      local line = f:read("*l")
      f:close()
      local info = cjson.decode(line)
      local keys = {}
      for k in pairs(info) do
        keys[#keys + 1] = k
      end
      table.sort(keys)
      assert.same({ "base_url", "cloud_base_url", "control_url", "onboard_url" }, keys)
      local origin = info.base_url:match("^(http://127%.0%.0%.1:%d+)/v1%.7/$")
      assert.is_string(origin)
      assert.equal(origin .. "/apps/saas/", info.onboard_url)
      assert.equal(origin .. "/cloud/v1/", info.cloud_base_url)
      assert.equal(origin .. "/sandbox/", info.control_url)
    end)

    it("stops with exit code 0 on SIGTERM and on SIGINT", function()
      local a = sandbox.start()
      assert.is_true(a:alive())
      assert.equal(0, a:stop())
      local b = sandbox.start()
      b:kill("INT")
      assert.equal(0, b:wait(5))
      b:stop()
    end)

    it("answers --help with exit 0 and refuses unknown flags with exit 2", function()
      local rc, out = shell(sandbox.sh_quote(sandbox.bin) .. " --help")
      assert.equal(0, rc)
      assert.matches("usage: digime%-sandbox", out)
      rc, out = shell(sandbox.sh_quote(sandbox.bin) .. " --no-such-flag")
      assert.equal(2, rc)
      assert.matches("unknown option: %-%-no%-such%-flag", out)
      rc = shell(sandbox.sh_quote(sandbox.bin) .. " --port")
      assert.equal(2, rc)
      local bad = write_tmp('{"prot": 1}')
      rc, out = shell(sandbox.sh_quote(sandbox.bin) .. " --config " .. bad)
      os.remove(bad)
      assert.equal(2, rc)
      assert.matches("unknown setting prot", out)
    end)

    it("listens on the --port asked for", function()
      local probe = assert(socket.bind("127.0.0.1", 0))
      local _, port = probe:getsockname()
      probe:close()
      local s = sandbox.start{ args = { "--port", tostring(port) } }
      assert.equal("http://127.0.0.1:" .. port .. "/v1.7/", s.base_url)
      s:stop()
    end)

    it("survives a LuaJIT-style LUA_PATH/LUA_CPATH in its environment", function()
      local s = sandbox.start{ env = { LUA_CPATH_5_4 = "./build/luajit/?.so;/usr/local/lib/lua/5.1/?.so;;",
                                       LUA_PATH_5_4 = "/usr/share/lua/5.1/?.lua;;" } }
      assert.equal(200, assert(s:request{ path = "jwks/oauth" }).status)
      s:stop()
    end)
  end)

  describe("JWKS", function()
    it("serves the signing key as PEM and n/e, and counts fetches", function()
      local keys = jwks(sb)
      assert.equal(1, #keys)
      local k = keys[1]
      assert.equal("RSA", k.kty)
      assert.equal("PS512", k.alg)
      assert.equal("sig", k.use)
      assert.is_string(k.kid)
      assert.matches("^%-%-%-%-%-BEGIN PUBLIC KEY%-%-%-%-%-", k.pem)
      local n1, e1 = core.public_key(k.pem):jwk()
      assert.equal(k.n, n1)
      assert.equal(k.e, e1)
      jwks(sb)
      assert.equal(2, sb:stats().jwks_fetches)
      -- an attempt counts even when a fault answers it
      sb:fault{ path = "/v1.7/jwks/oauth", action = "status", status = 500 }
      assert.equal(500, assert(sb:request{ path = "jwks/oauth" }).status)
      assert.equal(3, sb:stats().jwks_fetches)
    end)

    it("serves a foreign key at /evil/jwks and counts those fetches apart", function()
      local evil = json(jwks_url_fetch(sb.origin .. "/evil/jwks")).keys[1]
      assert.are_not.equal(jwks(sb)[1].n, evil.n)
      local st = sb:stats()
      assert.equal(1, st.foreign_jwks_fetches)
      assert.equal(1, st.jwks_fetches)
    end)
  end)

  describe("Bearer check", function()
    local function contract_call(opts)
      return assert(sb:call("POST", "oauth/token", opts))
    end
    local function good_claims()
      return { grant_type = "refresh_token", refresh_token = "nope" }
    end

    it("accepts a good JWT (the request then fails on its merits)", function()
      assert_error(contract_call{ claims = good_claims() }, 401, "InvalidToken",
                   "The token (refresh_token) is invalid")
    end)

    it("refuses a missing or malformed Authorization header with 406", function()
      assert_error(contract_call{}, 406, "ValidationErrors", "Parameter validation errors")
      assert_error(contract_call{ headers = { authorization = "Basic abc" } }, 406, "ValidationErrors")
      assert_error(contract_call{ headers = { authorization = "Bearer" } }, 406, "ValidationErrors")
      assert_error(contract_call{ jwt = "not.a.jwt" }, 406, "ValidationErrors")
    end)

    it("refuses a bad signature", function()
      local other = core.generate_key(2048)
      assert_error(contract_call{ claims = good_claims(), key = other }, 406, "ValidationErrors")
      local jwt = sandbox.sign(sandbox.claims(good_claims()))
      local input, sig = jwt:match("^(.+)%.([^.]+)$")
      local raw = core.b64url_decode(sig)
      local flipped = raw:sub(1, 10) .. string.char((raw:byte(11) + 1) % 256) .. raw:sub(12)
      assert_error(contract_call{ jwt = input .. "." .. core.b64url_encode(flipped) }, 406,
                   "ValidationErrors")
    end)

    it("refuses a PSS signature with salt length 32", function()
      assert_error(contract_call{ claims = good_claims(), salt = 32 }, 406, "ValidationErrors")
    end)

    it("refuses an alg other than PS512, even over a valid PSS signature", function()
      for _, alg in ipairs{ "RS512", "PS256", "none", "HS512" } do
        assert_error(contract_call{ claims = good_claims(), header = { alg = alg, typ = "JWT" } },
                     406, "ValidationErrors")
      end
    end)

    it("refuses an unknown client_id with 401 InvalidClient", function()
      assert_error(contract_call{ claims = { grant_type = "refresh_token", refresh_token = "x",
                                             client_id = "demo-app_other" } },
                   401, "InvalidClient", "The client_id (demo-app_other) is invalid")
    end)

    it("refuses a replayed nonce with 406 InvalidRequest", function()
      local claims = sandbox.claims(good_claims())
      assert.equal(401, contract_call{ jwt = sandbox.sign(claims) }.status)
      claims.timestamp = sandbox.now_ms()   -- a new JWT, the same nonce
      assert_error(contract_call{ jwt = sandbox.sign(claims) }, 406, "InvalidRequest",
        "The nonce provided in JWT payload (" .. claims.nonce .. ") has already been used")
    end)

    it("refuses a timestamp in seconds, or outside the window", function()
      local body = assert_error(contract_call{ claims = { grant_type = "refresh_token",
        refresh_token = "x", timestamp = os.time() } }, 406, "ValidationErrors")
      assert.matches("timestamp", body.error.message)
      assert.matches("window", body.error.message)
      assert_error(contract_call{ claims = { grant_type = "refresh_token", refresh_token = "x",
        timestamp = sandbox.now_ms() - 6 * 60 * 1000 } }, 406, "ValidationErrors")
      assert_error(contract_call{ claims = { grant_type = "refresh_token", refresh_token = "x",
        timestamp = sandbox.now_ms() + 6 * 60 * 1000 } }, 406, "ValidationErrors")
      -- Inside the window either side is fine.
      assert.equal(401, contract_call{ claims = { grant_type = "refresh_token", refresh_token = "x",
        timestamp = sandbox.now_ms() - 4 * 60 * 1000 } }.status)
    end)

    it("answers 400 for a payload without a string nonce or an integer timestamp", function()
      assert_error(contract_call{ claims = { grant_type = "refresh_token", refresh_token = "x",
                                             nonce = false } }, 400, "ValidationErrors")
      assert_error(contract_call{ claims = { grant_type = "refresh_token", refresh_token = "x",
                                             nonce = 42 } }, 400, "ValidationErrors")
      assert_error(contract_call{ claims = { grant_type = "refresh_token", refresh_token = "x",
                                             timestamp = "now" } }, 400, "ValidationErrors")
      -- A payload that is not a JSON object at all.
      local c = core
      local input = c.b64url_encode('{"alg":"PS512","typ":"JWT"}') .. "." .. c.b64url_encode("[1,2]")
      local key = c.private_key(sandbox.demo().private_key)
      assert_error(contract_call{ jwt = input .. "." .. c.b64url_encode(key:sign_ps512(input)) },
                   400, "ValidationErrors")
    end)

    it("is not applied to the JWKS, and unknown endpoints are 404", function()
      assert.equal(200, assert(sb:request{ path = "jwks/oauth" }).status)
      assert_error(assert(sb:call("GET", "no/such/thing", { claims = {} })), 404, "NotFound")
      assert_error(assert(sb:call("GET", "oauth/token", { claims = {} })), 405, "MethodNotAllowed")
    end)
  end)

  describe("authorization flow (raw HTTP + core crypto)", function()
    it("authorize -> consent 302 -> exchange -> refresh with rotation -> reauthorize", function()
      -- authorize
      local code, verifier, body = authorize(sb, { state = "s&t=1 ü" })
      assert.matches("^%w+$", code)
      assert.is_string(body.session.key)
      assert.is_number(body.session.expiry)
      assert.is_true(body.session.expiry > sandbox.now_ms())

      -- onboarding page: auto-consent
      local res, q = page(sb, "authorize", code)
      assert.equal(302, res.status)
      local loc = res.headers.location
      assert.equal(1, select(2, loc:gsub("%?", "")))   -- the callback's own query is kept
      assert.matches("^https://app%.example/return%?from=sandbox&success=true&state=", loc)
      assert.equal("true", q.success)
      assert.equal("s&t=1 ü", q.state)
      assert.equal("sandbox", q.from)
      assert.is_string(q.code)
      assert.is_string(q.accountReference)

      -- the code exchange
      local tres = exchange(sb, q.code, verifier)
      assert.equal(201, tres.status)
      local t1, header = verify_server_token(sb, json(tres).token)
      assert.equal("JWT", header.typ)
      assert.is_string(t1.access_token.value)
      assert.is_string(t1.refresh_token.value)
      local now = os.time()
      assert.is_true(math.abs(t1.access_token.expires_on - (now + 3600)) <= 5)
      assert.is_true(math.abs(t1.refresh_token.expires_on - (now + 30 * 86400)) <= 5)
      assert.is_string(t1.sub)
      assert.is_string(t1.consentid)
      assert.is_string(t1.identifier.id)
      assert.equal("Bearer", t1.token_type)
      assert.is_true(t1.exp > t1.iat)

      -- refresh rotates: the new pair works, the old refresh token is dead
      local r1 = refresh(sb, t1.refresh_token.value)
      assert.equal(201, r1.status)
      local t2 = verify_server_token(sb, json(r1).token)
      assert.equal(t1.sub, t2.sub)
      assert.equal(t1.consentid, t2.consentid)
      assert.are_not.equal(t1.refresh_token.value, t2.refresh_token.value)
      assert.are_not.equal(t1.access_token.value, t2.access_token.value)
      assert_error(refresh(sb, t1.refresh_token.value), 401, "InvalidToken",
                   "The token (refresh_token) is invalid")

      -- the refresh token dies (control), so the user reauthorizes
      assert.equal(1, sb:expire("refresh", t2.sub).expired)
      assert_error(refresh(sb, t2.refresh_token.value), 401, "InvalidToken")
      local v2, c2 = sandbox.pkce()
      local rr = reauthz(sb, t2.access_token.value, c2)
      assert.equal(201, rr.status, rr.body)
      local rbody = json(rr)
      assert.is_string(rbody.session.key)
      local ref = verify_server_token(sb, rbody.token).reference_code
      assert.is_string(ref)
      local pres, pq = page(sb, "user-reauth", ref)
      assert.equal(302, pres.status)
      assert.equal("true", pq.success)
      assert.equal("re", pq.state)
      assert.is_string(pq.code)
      -- the old verifier does not fit the new code; the new one does
      assert_error(exchange(sb, pq.code, verifier), 401, "InvalidToken")
      local t3res = exchange(sb, pq.code, v2)
      assert.equal(201, t3res.status)
      local t3 = verify_server_token(sb, json(t3res).token)
      assert.equal(t1.sub, t3.sub)
      assert.equal(201, refresh(sb, t3.refresh_token.value).status)
    end)

    it("refuses a PKCE mismatch, then a reused code", function()
      local code, verifier = authorize(sb)
      local _, q = page(sb, "authorize", code)
      local wrong = sandbox.pkce()
      assert_error(exchange(sb, q.code, wrong), 401, "InvalidToken",
                   "The token (authorization_code) is invalid")
      assert.equal(201, exchange(sb, q.code, verifier).status)
      assert_error(exchange(sb, q.code, verifier), 401, "InvalidToken",
                   "The token (authorization_code) is invalid")
      assert_error(exchange(sb, "no-such-code", verifier), 401, "InvalidToken")
    end)

    it("answers 400 ValidationErrors for missing or wrong claims", function()
      local _, challenge = sandbox.pkce()
      for _, bad in ipairs{ { code_challenge = false }, { code_challenge_method = "plain" },
                            { redirect_uri = false }, { state = false },
                            { response_type = "token" }, { code_challenge = "short" } } do
        local res = assert(sb:call("POST", "oauth/authorize",
          { claims = authz_claims(challenge, bad), body = { agent = AGENT } }))
        assert_error(res, 400, "ValidationErrors")
      end
      assert_error(assert(sb:call("POST", "oauth/authorize",
        { claims = authz_claims(challenge), body = "{not json" })), 400, "ValidationErrors")
      assert_error(exchange(sb, false, "v"), 400, "ValidationErrors")
      assert_error(assert(sb:call("POST", "oauth/token", { claims = { grant_type = "password" } })),
                   400, "ValidationErrors")
    end)

    it("refuses unknown and used onboarding codes with an HTML page", function()
      local res = page(sb, "authorize", "nope")
      assert.equal(400, res.status)
      assert.matches("text/html", res.headers["content-type"])
      local code = authorize(sb)
      assert.equal(302, page(sb, "authorize", code).status)
      res = page(sb, "authorize", code)
      assert.equal(400, res.status)
      assert.matches("already been used", res.body)
      -- a pre-authorization code is not a reference code
      code = authorize(sb)
      assert.equal(400, page(sb, "user-reauth", code).status)
    end)

    it("links an authorize to the user of a given access token", function()
      local t1 = login(sb)
      local code, verifier = authorize(sb, { access_token = t1.access_token.value })
      local _, q = page(sb, "authorize", code)
      local t2 = verify_server_token(sb, json(exchange(sb, q.code, verifier)).token)
      assert.equal(t1.sub, t2.sub)
      -- without a token, a new user
      local t3 = login(sb)
      assert.are_not.equal(t1.sub, t3.sub)
      -- a forged token is refused
      local _, challenge = sandbox.pkce()
      assert_error(assert(sb:call("POST", "oauth/authorize", { body = { agent = AGENT },
        claims = authz_claims(challenge, { access_token = "forged" }) })), 401, "InvalidToken",
        "The token (access_token) is invalid")
    end)

    it("token/reference: REAUTHZ takes an expired genuine token, ONBOARD a live one", function()
      local t = login(sb)
      local _, challenge = sandbox.pkce()
      assert.equal(201, onboard_ref(sb, t.access_token.value).status)
      local res = onboard_ref(sb, t.access_token.value)
      local ref = verify_server_token(sb, json(res).token).reference_code
      local pres, q = page(sb, "onboard", ref)
      assert.equal(302, pres.status)
      assert.equal("true", q.success)
      sb:expire("both", t.sub)
      assert_error(onboard_ref(sb, t.access_token.value), 401, "InvalidToken",
                   "The token (access_token) is invalid")
      assert.equal(201, reauthz(sb, t.access_token.value, challenge).status)
      assert_error(reauthz(sb, "forged-token", challenge), 401, "InvalidToken",
                   "The token (access_token) is invalid")
      assert_error(reauthz(sb, t.access_token.value, challenge, { code_challenge_method = "plain" }),
                   400, "ValidationErrors")
    end)
  end)

  describe("consent", function()
    it("declines through POST /sandbox/consent, with the error code asked for", function()
      sb:consent("decline")
      local code = authorize(sb, { state = "st" })
      local res, q = page(sb, "authorize", code)
      assert.equal(302, res.status)
      assert.matches("success=false&errorCode=UserCancelled&state=st$", res.headers.location)
      assert.is_nil(q.code)
      sb:consent("decline", "ServiceUnavailable")
      code = authorize(sb, { state = "st" })
      local _
      _, q = page(sb, "authorize", code)
      assert.equal("ServiceUnavailable", q.errorCode)
      sb:consent("accept")
      code = authorize(sb)
      _, q = page(sb, "authorize", code)
      assert.equal("true", q.success)
      local v, status = sb:control("POST", "consent", { decision = "maybe" })
      assert.equal(400, status)
      assert.equal("BadRequest", v.error.code)
    end)

    describe("with --interactive", function()
      local isb
      setup(function()
        isb = sandbox.start{ args = { "--interactive" } }
      end)
      teardown(function()
        isb:stop()
      end)

      it("shows a consent page, and accepting redirects with a code", function()
        local code, verifier = authorize(isb, { state = "i1" })
        local res = page(isb, "authorize", code)
        assert.equal(200, res.status)
        assert.matches("text/html", res.headers["content-type"])
        assert.matches('<form method="get" action="/apps/saas/consent">', res.body, 1, true)
        assert.matches('name="decision" value="accept"', res.body, 1, true)
        assert.matches('name="decision" value="decline"', res.body, 1, true)
        assert.matches('name="code" value="' .. code .. '"', res.body, 1, true)
        local r2 = assert(isb:request{ url = isb.onboard_url .. "consent?code=" .. code
                                              .. "&decision=accept" })
        assert.equal(302, r2.status)
        local q = query_of(r2.headers.location)
        assert.equal("true", q.success)
        assert.equal("i1", q.state)
        assert.equal(201, exchange(isb, q.code, verifier).status)
      end)

      it("declining redirects with success=false and an errorCode", function()
        local code = authorize(isb, { state = "i2" })
        assert.equal(200, page(isb, "authorize", code).status)
        local r = assert(isb:request{ url = isb.onboard_url .. "consent?code=" .. code
                                             .. "&decision=decline" })
        assert.equal(302, r.status)
        local q = query_of(r.headers.location)
        assert.equal("false", q.success)
        assert.equal("UserCancelled", q.errorCode)
        assert.equal("i2", q.state)
        -- the code is spent
        r = assert(isb:request{ url = isb.onboard_url .. "consent?code=" .. code .. "&decision=accept" })
        assert.equal(400, r.status)
      end)
    end)
  end)

  describe("control", function()
    it("expire: access, refresh, both, for one user or all", function()
      local a, b = login(sb), login(sb)
      assert.equal(1, sb:expire("access", a.sub).expired)
      assert.equal(401, onboard_ref(sb, a.access_token.value).status)
      assert.equal(201, onboard_ref(sb, b.access_token.value).status)
      -- the refresh token still works and brings a live access token
      local a2 = verify_server_token(sb, json(refresh(sb, a.refresh_token.value)).token)
      assert.equal(201, onboard_ref(sb, a2.access_token.value).status)
      sb:expire("refresh")
      assert.equal(401, refresh(sb, a2.refresh_token.value).status)
      assert.equal(401, refresh(sb, b.refresh_token.value).status)
      assert.equal(201, onboard_ref(sb, b.access_token.value).status)
      local c = login(sb)
      sb:expire("both", c.sub)
      assert.equal(401, onboard_ref(sb, c.access_token.value).status)
      assert.equal(401, refresh(sb, c.refresh_token.value).status)
      local v, status = sb:control("POST", "expire", { what = "both", user = "nobody" })
      assert.equal(404, status)
      assert.equal("NotFound", v.error.code)
      v, status = sb:control("POST", "expire", { what = "all" })
      assert.equal(400, status)
      assert.equal("BadRequest", v.error.code)
    end)

    it("fault status: the next count matching requests get that answer", function()
      local id = sb:fault{ method = "GET", path = "/v1.7/jwks", action = "status", status = 503,
                           count = 2, body = { error = { code = "Busy", message = "later" } },
                           headers = { ["Retry-After"] = "1" } }
      assert.is_number(id)
      local faults = sb:faults()
      assert.equal(1, #faults)
      assert.equal(id, faults[1].id)
      assert.equal(2, faults[1].count)
      local r = assert(sb:request{ path = "jwks/oauth" })
      assert.equal(503, r.status)
      assert.equal("1", r.headers["retry-after"])
      assert.equal("Busy", json(r).error.code)
      assert.equal(1, sb:faults()[1].count)
      -- another method does not match
      assert.equal(405, assert(sb:request{ method = "POST", path = "jwks/oauth" }).status)
      assert.equal(503, assert(sb:request{ path = "jwks/oauth" }).status)
      assert.same({}, sb:faults())
      assert.equal(200, assert(sb:request{ path = "jwks/oauth" }).status)
      -- a status fault without a body has an empty body
      sb:fault{ path = "/v1.7/jwks/oauth", match = "exact", action = "status", status = 404 }
      r = assert(sb:request{ path = "jwks/oauth" })
      assert.equal(404, r.status)
      assert.equal("", r.body)
    end)

    it("fault reset closes the connection without an answer", function()
      sb:fault{ path = "/v1.7/jwks", action = "reset" }
      local res, err = sb:request{ path = "jwks/oauth" }
      assert.is_nil(res)
      assert.is_string(err)
      assert.equal(200, assert(sb:request{ path = "jwks/oauth" }).status)
      local rc = shell("curl -s -o /dev/null " .. sb.base_url .. "jwks/oauth")
      assert.equal(0, rc)
    end)

    it("fault reset with after=true processes the request, then drops the answer", function()
      local t = login(sb)
      sb:fault{ path = "/v1.7/oauth/token", match = "exact", action = "reset", after = true }
      assert.is_nil(sb:call("POST", "oauth/token", { claims = {
        grant_type = "refresh_token", refresh_token = t.refresh_token.value } }))
      -- the refresh happened: the old refresh token has rotated away
      assert.equal(401, refresh(sb, t.refresh_token.value).status)
    end)

    it("fault delay waits, then answers normally", function()
      sb:fault{ path = "/v1.7/jwks", action = "delay", ms = 400 }
      local t0 = socket.gettime()
      assert.equal(200, assert(sb:request{ path = "jwks/oauth" }).status)
      assert.is_true(socket.gettime() - t0 >= 0.35)
    end)

    it("fault truncate sends the full content-length and half the body", function()
      sb:fault{ path = "/v1.7/jwks", action = "truncate" }
      local rc, out = shell("curl -sS -o /dev/null -w '%{http_code} %{size_download}' "
                            .. sb.base_url .. "jwks/oauth")
      assert.equal(18, rc)   -- CURLE_PARTIAL_FILE
      assert.matches("200 %d+", out)
      assert.equal(200, assert(sb:request{ path = "jwks/oauth" }).status)
    end)

    it("fault hang never answers, and does not block other requests", function()
      sb:fault{ path = "/v1.7/jwks", action = "hang" }
      local out = os.tmpname()
      os.execute("curl -s -o /dev/null -m 2 -w '%{http_code}' " .. sb.base_url .. "jwks/oauth >"
                 .. out .. " 2>&1 &")
      sandbox.sleep(0.3)
      local t0 = socket.gettime()
      local res = assert(sb:request{ path = "jwks/oauth", timeout = 5 })
      assert.equal(200, res.status)
      assert.is_true(socket.gettime() - t0 < 1)
      local st = sb:stats()
      assert.equal(1, st.inflight)   -- the hanging request
      sandbox.sleep(2.5)
      local f = io.open(out)
      local code = f and f:read("*a")
      if f then
        f:close()
      end
      os.remove(out)
      assert.equal("000", code)
      local log = sb:log()
      local hung
      for _, e in ipairs(log) do
        if e.outcome == "hang" then
          hung = e
        end
      end
      assert.is_table(hung)
      assert.is_true(hung.ms >= 1500)
    end)

    it("serves many requests at once", function()
      sb:fault{ path = "/v1.7/jwks", action = "delay", ms = 600, count = 8 }
      local t0 = socket.gettime()
      local rc = shell("seq 8 | xargs -P 8 -I{} curl -s -f -o /dev/null " .. sb.base_url
                       .. "jwks/oauth")
      assert.equal(0, rc)
      assert.is_true(socket.gettime() - t0 < 3, "delayed requests were served one by one")
      assert.is_true(sb:stats().max_inflight >= 4)
    end)

    it("faults never apply to /sandbox/, and bad specs are refused", function()
      local v, status = sb:control("POST", "fault", { path = "/sandbox/stats", action = "status" })
      assert.equal(400, status)
      assert.equal("BadRequest", v.error.code)
      sb:fault{ path = "/", action = "status", status = 500 }
      assert.is_table(sb:stats())
      assert.equal(1, #sb:faults())
      local _
      _, status = sb:control("POST", "fault", { path = "/v1.7/", action = "explode" })
      assert.equal(400, status)
      _, status = sb:control("POST", "fault", { path = "/v1.7/", action = "status", count = 0 })
      assert.equal(400, status)
      _, status = sb:control("POST", "fault", { path = "/v1.7/", action = "token", token = "x" })
      assert.equal(400, status)
      assert.equal(1, sb:clear_faults().cleared)
      assert.same({}, sb:faults())
    end)

    it("stats count requests by path and JWKS fetches; control calls are not counted", function()
      jwks(sb)
      jwks(sb)
      sb:call("POST", "oauth/token", {})
      local st = sb:stats()
      assert.equal(3, st.requests)
      assert.equal(2, st.jwks_fetches)
      assert.equal(0, st.foreign_jwks_fetches)
      assert.equal(2, st.by_path["/v1.7/jwks/oauth"])
      assert.equal(1, st.by_path["/v1.7/oauth/token"])
      assert.equal(0, st.max_inflight_downloads)
    end)

    it("log lists recent requests without secrets", function()
      local code, verifier = authorize(sb)
      local _, q = page(sb, "authorize", code)
      local tres = exchange(sb, q.code, verifier)
      local token_jwt = json(tres).token
      local t = verify_server_token(sb, token_jwt)
      refresh(sb, t.refresh_token.value)
      local log = sb:log()
      local text = cjson.encode(log)
      for _, secret in ipairs{ code, q.code, verifier, t.access_token.value,
                               t.refresh_token.value, token_jwt:sub(-40), "Bearer" } do
        assert.is_nil(text:find(secret, 1, true), "log shows " .. secret)
      end
      local e = log[1]
      assert.equal("POST", e.method)
      assert.equal("/v1.7/oauth/authorize", e.path)
      assert.equal(201, e.status)
      assert.is_number(e.ms)
      assert.equal(sandbox.client_id(), e.client_id)
      assert.equal(32, #e.nonce)
      local seen = {}
      for _, entry in ipairs(log) do
        seen[entry.method .. " " .. entry.path .. " " .. string.format("%d", entry.status or 0)] = true
      end
      assert.is_true(seen["GET /apps/saas/authorize 302"])
      assert.is_true(seen["POST /v1.7/oauth/token 201"])
      assert.is_true(seen["GET /v1.7/jwks/oauth 200"])
    end)

    it("reset forgets users, tokens, faults, nonces, stats and the consent decision", function()
      local t = login(sb)
      local claims = sandbox.claims{ grant_type = "refresh_token", refresh_token = "x" }
      assert.equal(401, sb:call("POST", "oauth/token", { jwt = sandbox.sign(claims) }).status)
      sb:fault{ path = "/v1.7/nothing", action = "status" }
      sb:consent("decline")
      sb:reset()
      assert.same({}, sb:faults())
      assert.same({}, sb:log())
      local st = sb:stats()
      assert.equal(0, st.requests)
      assert.equal(0, st.jwks_fetches)
      assert.equal(401, refresh(sb, t.refresh_token.value).status)
      -- the nonce is forgotten too
      claims.timestamp = sandbox.now_ms()
      assert_error(sb:call("POST", "oauth/token", { jwt = sandbox.sign(claims) }), 401,
                   "InvalidToken")
      local code = authorize(sb)
      local _, q = page(sb, "authorize", code)
      assert.equal("true", q.success)
    end)

    it("info names the contracts and the signing kid", function()
      local info = sb:info_()
      assert.equal(sb.base_url, info.base_url)
      assert.equal(sandbox.client_id(), info.contracts[1].client_id)
      assert.equal(jwks(sb)[1].kid, info.kid)
    end)
  end)

  describe("token faults", function()
    local function faulted(kind, extra)
      local spec = { path = "/v1.7/oauth/authorize", action = "token", token = kind }
      for k, v in pairs(extra or {}) do
        spec[k] = v
      end
      sb:fault(spec)
      local _, challenge = sandbox.pkce()
      local res = assert(sb:call("POST", "oauth/authorize",
        { claims = authz_claims(challenge), body = { agent = AGENT } }))
      assert.equal(201, res.status)
      return json(res).token
    end

    local real_key
    local function genuine(input, sig)
      real_key = real_key or core.public_key(jwks(sb)[1].pem)
      return real_key:verify_ps512(input, sig) == true
    end

    -- openssl dgst as an independent verifier
    local function openssl_verify(pem, input, sig, sigopts)
      local kf, df, sf = write_tmp(pem), write_tmp(input), write_tmp(sig)
      local rc = shell("openssl dgst -sha512 " .. (sigopts or "") .. " -verify " .. kf
                       .. " -signature " .. sf .. " " .. df)
      os.remove(kf)
      os.remove(df)
      os.remove(sf)
      return rc == 0
    end

    it("replace one token, then genuine ones follow", function()
      faulted("alg_none")
      assert.same({}, sb:faults())
      local code = authorize(sb)   -- verifies genuinely
      assert.is_string(code)
    end)

    it("alg_none: alg none, empty signature", function()
      local h, p, _, sig = sandbox.decode_jwt(faulted("alg_none"))
      assert.equal("none", h.alg)
      assert.equal("", sig)
      assert.is_string(p.preauthorization_code)
    end)

    it("hs512: HMAC-SHA512 keyed with the JWKS PEM", function()
      local jwt = faulted("hs512")
      local h, _, input, sig = sandbox.decode_jwt(jwt)
      assert.equal("HS512", h.alg)
      assert.equal(64, #sig)
      local hmac = require "openssl.hmac"
      assert.equal(hmac.new(jwks(sb)[1].pem, "sha512"):final(input), sig)
    end)

    it("rs512: PKCS#1 v1.5 with SHA-512", function()
      local h, _, input, sig = sandbox.decode_jwt(faulted("rs512"))
      assert.equal("RS512", h.alg)
      assert.is_false(genuine(input, sig))
      assert.is_true(openssl_verify(jwks(sb)[1].pem, input, sig))
    end)

    it("pss_salt32: PS512 header, PSS with salt 32", function()
      local h, _, input, sig = sandbox.decode_jwt(faulted("pss_salt32"))
      assert.equal("PS512", h.alg)
      assert.is_false(genuine(input, sig))
      local pss = "-sigopt rsa_padding_mode:pss -sigopt rsa_mgf1_md:sha512 -sigopt rsa_pss_saltlen:"
      assert.is_true(openssl_verify(jwks(sb)[1].pem, input, sig, pss .. "32"))
      assert.is_false(openssl_verify(jwks(sb)[1].pem, input, sig, pss .. "64"))
    end)

    it("wrong_kid and no_kid: genuine signatures under a kid the JWKS lacks, or none", function()
      local h, _, input, sig = sandbox.decode_jwt(faulted("wrong_kid"))
      assert.are_not.equal(jwks(sb)[1].kid, h.kid)
      assert.is_string(h.kid)
      assert.is_true(genuine(input, sig))
      h, _, input, sig = sandbox.decode_jwt(faulted("no_kid"))
      assert.is_nil(h.kid)
      assert.is_true(genuine(input, sig))
    end)

    it("foreign_jku and lookalike_jku: signed with the foreign key the jku serves", function()
      local h, _, input, sig = sandbox.decode_jwt(faulted("foreign_jku"))
      assert.equal(sb.origin .. "/evil/jwks", h.jku)
      assert.is_false(genuine(input, sig))
      local evil = json(jwks_url_fetch(h.jku)).keys[1]
      assert.equal(h.kid, evil.kid)
      assert.is_true(core.public_key(evil.pem):verify_ps512(input, sig))
      h, _, input, sig = sandbox.decode_jwt(faulted("lookalike_jku"))
      local real_jku = sb.base_url .. "jwks/oauth"
      assert.are_not.equal(real_jku, h.jku)
      assert.equal(real_jku, h.jku:sub(1, #real_jku))
      evil = json(jwks_url_fetch(h.jku)).keys[1]
      assert.is_true(core.public_key(evil.pem):verify_ps512(input, sig))
      assert.equal(2, sb:stats().foreign_jwks_fetches)
      h = sandbox.decode_jwt(faulted("foreign_jku", { jku = "https://evil.example/jwks" }))
      assert.equal("https://evil.example/jwks", h.jku)
    end)

    it("tampered_payload and tampered_signature fail verification", function()
      local _, p, input, sig = sandbox.decode_jwt(faulted("tampered_payload"))
      assert.is_string(p.preauthorization_code)
      assert.is_false(genuine(input, sig))
      _, p, input, sig = sandbox.decode_jwt(faulted("tampered_signature"))
      assert.is_string(p.preauthorization_code)
      assert.is_false(genuine(input, sig))
    end)

    it("expired and not_yet_valid carry genuine signatures and bad times", function()
      local _, p, input, sig = sandbox.decode_jwt(faulted("expired"))
      assert.is_true(genuine(input, sig))
      assert.is_true(p.exp <= os.time() - 3500)
      _, p, input, sig = sandbox.decode_jwt(faulted("not_yet_valid"))
      assert.is_true(genuine(input, sig))
      assert.is_true(p.nbf >= os.time() + 3500)
    end)

    it("not_json, two_parts, oversized, wrong_alg_header", function()
      local _, h, p, input, sig
      h, p, input, sig = sandbox.decode_jwt(faulted("not_json"))
      assert.equal("PS512", h.alg)
      assert.is_nil(p)
      assert.is_true(genuine(input, sig))
      local jwt = faulted("two_parts")
      assert.equal(1, select(2, jwt:gsub("%.", "")))
      jwt = faulted("oversized")
      assert.is_true(#jwt > 64 * 1024)
      _, _, input, sig = sandbox.decode_jwt(jwt)
      assert.is_true(genuine(input, sig))
      h, _, input, sig = sandbox.decode_jwt(faulted("wrong_alg_header"))
      assert.equal("RS256", h.alg)
      assert.is_true(genuine(input, sig))
    end)

    it("apply to the token endpoint too, and the exchange still happened", function()
      local code, verifier = authorize(sb)
      local _, q = page(sb, "authorize", code)
      sb:fault{ path = "/v1.7/oauth/token", match = "exact", action = "token", token = "expired" }
      local res = exchange(sb, q.code, verifier)
      assert.equal(201, res.status)
      local _, p = sandbox.decode_jwt(json(res).token)
      assert.is_string(p.refresh_token.value)
      assert.equal(201, refresh(sb, p.refresh_token.value).status)
    end)
  end)

  describe("configuration", function()
    it("agents: unknown SDK 400 SDKInvalid, old version 403 SDKVersionInvalid", function()
      local cfg = write_tmp(cjson.encode{
        agents = { { name = "lua-digime", versions = { "0.1.0" } } } })
      local s = sandbox.start{ args = { "--config", cfg } }
      os.remove(cfg)
      local _, challenge = sandbox.pkce()
      local function try(agent)
        return assert(s:call("POST", "oauth/authorize",
          { claims = authz_claims(challenge), body = { agent = agent } }))
      end
      assert_error(try{ sdk = { name = "nodejs", version = "16.1.5" } }, 400, "SDKInvalid",
                   "The SDK is invalid: nodejs")
      assert_error(try{ sdk = { name = "lua-digime", version = "0.0.1" } }, 403,
                   "SDKVersionInvalid", "This SDK version is no longer supported.")
      assert.equal(201, try(AGENT).status)
      -- the default sandbox accepts any agent
      assert.equal(201, assert(sb:call("POST", "oauth/authorize",
        { claims = authz_claims(challenge), body = { agent = { sdk = { name = "x" } } } })).status)
      s:stop()
    end)

    it("--contract replaces the demo contract; codes belong to their client", function()
      local k1, k2 = core.generate_key(2048), core.generate_key(2048)
      local f1, f2 = write_tmp(k1:public_pem()), write_tmp(k2:public_pem("pkcs1"))
      local s = sandbox.start{ args = { "--contract", "app1:c1:" .. f1, "--contract", "app2:c2:" .. f2 } }
      os.remove(f1)
      os.remove(f2)
      local o1 = { key = k1 }
      local code, verifier = authorize(s, { client_id = "app1_c1" }, o1)
      local _, q = page(s, "authorize", code)
      -- the other contract cannot exchange app1's code
      local res = assert(s:call("POST", "oauth/token", { key = k2, claims = {
        client_id = "app2_c2", code = q.code, code_verifier = verifier,
        grant_type = "authorization_code" } }))
      assert_error(res, 401, "InvalidToken")
      res = assert(s:call("POST", "oauth/token", { key = k1, claims = {
        client_id = "app1_c1", code = q.code, code_verifier = verifier,
        grant_type = "authorization_code" } }))
      assert.equal(201, res.status)
      -- the demo contract is not there
      assert_error(assert(s:call("POST", "oauth/token", { claims = { grant_type = "x" } })),
                   401, "InvalidClient")
      s:stop()
    end)
  end)

  describe("--tls", function()
    it("serves HTTPS that verifies with the reported ca_file only", function()
      local s = sandbox.start{ args = { "--tls" } }
      assert.matches("^https://127%.0%.0%.1:%d+/v1%.7/$", s.base_url)
      assert.is_string(s.ca_file)
      local url = sandbox.sh_quote(s.base_url .. "jwks/oauth")
      local rc, out = shell("curl -sS --cacert " .. sandbox.sh_quote(s.ca_file) .. " " .. url)
      assert.equal(0, rc)
      assert.matches('"keys"', out)
      rc = shell("curl -sS -o /dev/null " .. url)
      assert.equal(60, rc)   -- CURLE_PEER_FAILED_VERIFICATION
      local port = s.base_url:match(":(%d+)/")
      rc = shell("curl -sS -o /dev/null --cacert " .. sandbox.sh_quote(s.ca_file)
                 .. " https://localhost:" .. port .. "/v1.7/jwks/oauth")
      assert.equal(0, rc)
      -- two fetches got through; the helper's own client goes through TLS as well
      assert.equal(2, s:stats().jwks_fetches)
      local ca = s.ca_file
      assert.equal(0, s:stop())
      assert.is_nil(io.open(ca), "the throw-away CA file is removed at exit")
    end)

    it("serves a given --cert/--key", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. dir))
      local rc = shell("openssl req -x509 -newkey rsa:2048 -nodes -keyout " .. dir .. "/k.pem -out "
        .. dir .. "/c.pem -subj /CN=localhost -days 2 -addext subjectAltName=IP:127.0.0.1,DNS:localhost")
      assert.equal(0, rc)
      local s = sandbox.start{ args = { "--tls", "--cert", dir .. "/c.pem", "--key", dir .. "/k.pem" } }
      assert.equal(dir .. "/c.pem", s.ca_file)
      rc = shell("curl -sS -o /dev/null --cacert " .. dir .. "/c.pem " .. s.base_url .. "jwks/oauth")
      assert.equal(0, rc)
      s:stop()
      os.execute("rm -rf " .. dir)
    end)
  end)
end)
