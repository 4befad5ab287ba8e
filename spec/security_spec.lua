-- The security suite (SECURITY.md points here). Table-driven, over real HTTP on
-- loopback, against the sandbox and small scripted servers (spec/support/security_server.lua):
--
--   1. ATTACKS: every hostile server token, one row each with its expected outcome, tried on
--      every path that verifies a server token (exchange, refresh, authorize, reauthorize and
--      onboard references, the automatic refresh of a user call) with a warm JWKS cache, and
--      on the exchange with a cold one. For every row: the refusal's error code and message,
--      how many JWKS fetches a cold SDK may make (0: refused before any network I/O), and that
--      no foreign host, no lookalike address and no JWKS beyond the allowed one was asked.
--      Besides the sandbox (whose hostile kinds are rows too), a "trusted" JWKS host is on the
--      allow-list with a key the spec holds, so that the spec can make tokens with a genuine
--      signature and any header; a "foreign" host serves a JWKS that would make the forged
--      tokens verify, and must never be asked for anything.
--   2. LIMITS: header blocks, JSON bodies, other bodies and JWKS answers over their caps.
--   3. REDIRECTS: 301/302/303/307/308 to a foreign host on API calls, a JWKS fetch and a file.
--   4. TLS (curl transport): right CA, wrong CA, no CA, expired certificate, wrong host name.
--   5. SECRETS: a logger and every error of this file (attacks, faults, refreshes, a full
--      authorize/exchange/refresh/read flow, file decryption failures, arguments in the wrong
--      place) are scanned for any piece of the contract private key, any token value, code
--      verifier, authorization code or AES file key, and any compact JWS. The last test.
local flow = require "flow"
local sec = require "security_util"
local shell = require "shell"
local cjson = require "cjson"
local core = require "digime.core"
local jwt = require "digime.jwt"

local demo = flow.demo
local NULL = {}                -- in a header/payload override: remove the member
local KID = "sec-kid-1"        -- the trusted JWKS host's key id
local DEFAULT_CODE = "InvalidServerToken"

-- Shared state, set in lazy_setup.
local sb, trusted, foreign, dir, ledger
local c = {}                   -- the attack context: URLs, keys, token makers
local W                        -- the warm SDK (JWKS of both allowed hosts cached, long ttl)
local hooks = 0                -- on_token_refresh calls
local login_token              -- a real token of the sandbox user (for reference calls)

local function contract() return { id = demo.contract_id, private_key = demo.private_key } end

-- Calls ----------------------------------------------------------------------------------------

-- Every call of this file goes through here: its error is kept for the leak scan, its secrets
-- (verifiers, tokens) become known. A raise is a failure of its own.
local function call(sdk, name, opts)
  local ok, res, err = pcall(sdk[name], sdk, opts)
  assert(ok, name .. " raised: " .. tostring(res))
  ledger:error(err, name)
  if type(res) == "table" then
    ledger:secret(res.code_verifier, "code verifier")
    ledger:token(res)
    ledger:token(res.user_access_token)
  end
  if type(err) == "table" then ledger:token(err.user_access_token) end
  return res, err
end

local function new_sdk(extra)
  local o = {
    jwks = { allowed = { sb.base_url .. "jwks/oauth", c.T } },
    logger = function(level, message, fields) ledger:line(level, message, fields) end,
    on_token_refresh = function(new)
      hooks = hooks + 1
      ledger:token(new)
    end,
  }
  for k, v in pairs(extra or {}) do o[k] = v end
  local sdk, err = flow.sdk(sb, o)
  ledger:error(err, "init")
  return assert(sdk, tostring(err))
end

-- authorize -> consent: -> code, verifier (both secret)
local function code_for(sdk)
  local res, err = call(sdk, "get_authorize_url", flow.authorize_opts())
  assert(res, "get_authorize_url: " .. tostring(err))
  local cb = flow.consent(res.url)
  assert(cb.query.success == "true", "consent failed: " .. tostring(cb.location))
  ledger:secret(cb.query.code, "authorization code")
  return cb.query.code, res.code_verifier
end

local function login(sdk)
  local code, verifier = code_for(sdk)
  local token, err = call(sdk, "exchange_code_for_token", { contract = contract(),
    authorization_code = code, code_verifier = verifier })
  assert(token, "exchange: " .. tostring(err))
  return token
end

-- A token of the SDK's shape with made-up values (the answers that matter are faults).
local function fake_token(expired)
  local now = os.time()
  local t = { access_token = { value = "sec-at-" .. core.random_alnum(24),
                               expiry = expired and 1 or now + 3600 },
              refresh_token = { value = "sec-rt-" .. core.random_alnum(24), expiry = now + 86400 },
              user = { id = "sec-user" }, consent_id = "sec-consent" }
  ledger:token(t)
  return t
end

local function expired_copy(t)
  return { access_token = { value = t.access_token.value, expiry = 1 },
           refresh_token = t.refresh_token, user = t.user, consent_id = t.consent_id }
end

-- Server tokens made by the spec ---------------------------------------------------------------

local function merge(base, over)
  local out = {}
  for k, v in pairs(base) do out[k] = v end
  for k, v in pairs(over or {}) do
    if v == NULL then out[k] = nil else out[k] = v end
  end
  return out
end

-- A valid oauth/token + authorize + reference payload; token values are secrets.
local function payload(over)
  local now = os.time()
  local p = {
    access_token = { value = "sec-at-" .. core.random_alnum(24), expires_on = now + 3600 },
    refresh_token = { value = "sec-rt-" .. core.random_alnum(24), expires_on = now + 86400 },
    sub = "sec-user", consentid = "sec-consent", identifier = { id = "sec-user" },
    token_type = "Bearer",
    preauthorization_code = "sec-pre-" .. core.random_alnum(12),
    reference_code = "sec-ref-" .. core.random_alnum(12),
    iat = now, exp = now + 300,
  }
  ledger:secret(p.access_token.value, "access token")
  ledger:secret(p.refresh_token.value, "refresh token")
  return merge(p, over)
end

-- tok(header overrides, payload overrides, key, signature kind) -> compact JWS; header or
-- payload may also be a JSON text.
local function tok(h, p, key, sig)
  local header = type(h) == "string" and h
    or merge({ alg = "PS512", typ = "JWT", jku = c.T, kid = KID }, h)
  local body = type(p) == "string" and p or payload(p)
  return sec.jws(header, body, key or c.trusted_key, sig)
end

-- A token signed by the foreign key (whose JWKS the foreign host serves under the same kid).
local function evil(h, p) return tok(h, p, c.evil_key) end

local function b64(s) return core.b64url_encode(s) end

-- Each call takes the next variant of a list, so that a row's six calls try them all.
local turn = 0
local function pick(list)
  turn = turn + 1
  return list[(turn - 1) % #list + 1]
end

local B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

-- The attack table ---------------------------------------------------------------------------
--
-- A row: { name, make = function() -> token (any Lua value: it goes into {"token": ...}) |
--          forge = a hostile kind of the sandbox (lua/digime/sandbox/tokens.lua), or "none"
--          for a genuine sandbox token; jku = for forge rows, a URL override;
--          accept = true for the control rows; code (default InvalidServerToken); msg = a
--          pattern the message must match; cold = JWKS fetches a cold SDK makes (0 = refused
--          before any network I/O) }

local ATTACKS = {
  -- controls: the harness accepts what must be accepted
  { "a genuine token of the trusted JWKS host (control)", accept = true, cold = 1,
    make = function() return tok() end },
  { "a genuine sandbox token (control)", accept = true, cold = 1, forge = "none" },
  { "exp 20 s ago, within clock_leeway (control)", accept = true, cold = 1,
    make = function() return tok(nil, { exp = os.time() - 20 }) end },

  -- algorithms
  { "alg none, empty signature", msg = "three%-part", cold = 0,
    make = function() return tok({ alg = "none" }, nil, nil, "none") end },
  { "alg none with a signature", msg = "algorithm", cold = 0,
    make = function() return tok{ alg = "none" } end },
  { "alg None / NONE", msg = "algorithm", cold = 0,
    make = function() return tok{ alg = pick{ "None", "NONE" } } end },
  { "no alg", msg = "algorithm", cold = 0, make = function() return tok{ alg = NULL } end },
  { 'alg ["PS512"] (an array)', msg = "algorithm", cold = 0,
    make = function() return tok{ alg = { "PS512" } } end },
  { "alg ps512 (lower case) over a genuine PS512 signature", msg = "algorithm", cold = 0,
    make = function() return tok{ alg = "ps512" } end },
  { 'alg "PS512 " (trailing space)', msg = "algorithm", cold = 0,
    make = function() return tok{ alg = "PS512 " } end },
  { "HS512 keyed with the JWKS public key PEM (RS/HS confusion)", msg = "algorithm", cold = 0,
    make = function() return tok({ alg = "HS512" }, nil, nil, c.hs512_pem) end },
  { "HS256 keyed with the JWKS public key PEM", msg = "algorithm", cold = 0,
    make = function() return tok({ alg = "HS256" }, nil, nil, c.hs512_pem) end },
  { "an HMAC keyed with the public key PEM under a PS512 header", msg = "signature", cold = 1,
    make = function() return tok(nil, nil, nil, c.hs512_pem) end },
  { "RS512 (PKCS#1 v1.5) by the genuine key", msg = "algorithm", cold = 0,
    make = function() return tok({ alg = "RS512" }, nil, nil, c.rs512) end },
  { "an RS512 signature by the genuine key under a PS512 header", msg = "signature", cold = 1,
    make = function() return tok(nil, nil, nil, c.rs512) end },
  { "PS512 with PSS salt length 32 by the genuine key", msg = "signature", cold = 1,
    make = function() return tok(nil, nil, nil, "salt32") end },
  { "PS256 / ES512 / EdDSA headers", msg = "algorithm", cold = 0,
    make = function() return tok{ alg = pick{ "PS256", "ES512", "EdDSA" } } end },

  -- the sandbox's own hostile tokens (signed with its genuine key where the attack needs it)
  { "sandbox alg_none", forge = "alg_none", msg = "three%-part", cold = 0 },
  { "sandbox hs512 (HMAC keyed with its JWKS PEM)", forge = "hs512", msg = "algorithm", cold = 0 },
  { "sandbox rs512 (PKCS#1 v1.5, genuine key)", forge = "rs512", msg = "algorithm", cold = 0 },
  { "sandbox pss_salt32 (genuine key)", forge = "pss_salt32", msg = "signature", cold = 1 },
  { "sandbox wrong_alg_header (RS256 over a PS512 signature)", forge = "wrong_alg_header",
    msg = "algorithm", cold = 0 },
  { "sandbox wrong_kid", forge = "wrong_kid", msg = "no key", cold = 1 },
  { "sandbox no_kid", forge = "no_kid", msg = "no kid or jku", cold = 0 },
  { "sandbox foreign_jku (its /evil/jwks)", forge = "foreign_jku", msg = "allow%-list", cold = 0 },
  { "sandbox lookalike_jku (jwks/oauth.evil.example)", forge = "lookalike_jku",
    msg = "allow%-list", cold = 0 },
  { "sandbox foreign_jku naming the foreign host", forge = "foreign_jku", msg = "allow%-list",
    cold = 0, jku = function() return c.F .. "/jwks/oauth" end },
  { "sandbox tampered_payload", forge = "tampered_payload", msg = "signature", cold = 1 },
  { "sandbox tampered_signature", forge = "tampered_signature", msg = "signature", cold = 1 },
  { "sandbox expired", forge = "expired", msg = "expired", cold = 1 },
  { "sandbox not_yet_valid", forge = "not_yet_valid", msg = "not valid yet", cold = 1 },
  { "sandbox not_json (signed payload that is not JSON)", forge = "not_json", msg = "JSON object",
    cold = 1 },
  { "sandbox two_parts", forge = "two_parts", msg = "three%-part", cold = 0 },
  { "sandbox oversized (> 64 KiB)", forge = "oversized", msg = "64 KiB", cold = 0 },

  -- jku: the foreign host (it serves the foreign key under the genuine kid, so a fetch would
  -- make the token verify) and lookalikes of the allowed URL
  { "jku on a foreign host, same path", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.F .. "/jwks/oauth" } end },
  { "no jku", msg = "no kid or jku", cold = 0, make = function() return evil{ jku = NULL } end },
  { "jku a number / an array / an object", msg = "no kid or jku", cold = 0,
    make = function() return evil{ jku = pick{ 1, { c.T }, { url = c.T } } } end },
  { "jku with a query (?x)", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.T .. "?x" } end },
  { "jku with a fragment (#x)", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.T .. "#x" } end },
  { "jku with a trailing slash", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.T .. "/" } end },
  { "jku /jwks/oauth/../oauth (path traversal)", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.T .. "/../oauth" } end },
  { "jku /jwks/x/../oauth (traversal to the allowed path)", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.TO .. "/jwks/x/../oauth" } end },
  { "jku //jwks/oauth (double slash)", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.TO .. "//jwks/oauth" } end },
  { "jku /jwks/%6Fauth (percent-encoded)", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.TO .. "/jwks/%6Fauth" } end },
  { "jku in upper case (path)", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.TO .. "/JWKS/OAUTH" } end },
  { "jku with an upper-case scheme", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = "HTTP://127.0.0.1:" .. c.TP .. "/jwks/oauth" } end },
  { "jku with a trailing dot on the host", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = "http://127.0.0.1.:" .. c.TP .. "/jwks/oauth" } end },
  { "jku naming the host as localhost", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = "http://localhost:" .. c.TP .. "/jwks/oauth" } end },
  { "jku with a leading zero in the port", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = "http://127.0.0.1:0" .. c.TP .. "/jwks/oauth" } end },
  { "jku with the host as a decimal number", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = "http://2130706433:" .. c.TP .. "/jwks/oauth" } end },
  { "jku with an IPv4-mapped IPv6 host", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = "http://[::ffff:127.0.0.1]:" .. c.TP .. "/jwks/oauth" } end },
  { "jku https instead of http", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = "https://127.0.0.1:" .. c.TP .. "/jwks/oauth" } end },
  { "jku allowed@foreign (userinfo)", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = "http://127.0.0.1:" .. c.TP .. "@127.0.0.1:" .. c.FP .. "/jwks/oauth" } end },
  { "jku foreign#@allowed", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.F .. "#@127.0.0.1:" .. c.TP .. "/jwks/oauth" } end },
  { "jku foreign\\@allowed", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.F .. "\\@127.0.0.1:" .. c.TP .. "/jwks/oauth" } end },
  { "jku allowed URL followed by @foreign", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.T .. "@127.0.0.1:" .. c.FP .. "/" } end },
  { "jku foreign with the allowed URL in its query", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.F .. "/jwks/oauth?u=" .. c.T } end },
  { "jku foreign with the allowed URL as its path", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.F .. "/" .. c.T } end },
  { "jku the allowed URL + .evil.example", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.T .. ".evil.example" } end },
  { "jku with CR LF and a header after it", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.T .. "\r\nHost: evil.example" } end },
  { "jku with a NUL byte after the allowed URL", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.T .. "\0" .. c.F } end },
  { "jku with spaces around it", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = " " .. c.T .. " " } end },
  { "jku relative (/jwks/oauth) and scheme-relative (//host/jwks/oauth)", msg = "allow%-list",
    cold = 0, make = function()
      return evil{ jku = pick{ "/jwks/oauth", "//127.0.0.1:" .. c.TP .. "/jwks/oauth" } }
    end },
  { "jku file:///etc/passwd", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = "file:///etc/passwd" } end },
  { "jku of 20 KiB", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.T .. "?" .. ("x"):rep(20 * 1024) } end },
  { "jku the sandbox's genuine URL with a query", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.SBJ .. "?x", kid = c.SBKID } end },
  { "jku the sandbox's genuine URL with /../oauth", msg = "allow%-list", cold = 0,
    make = function() return evil{ jku = c.SBJ .. "/../oauth", kid = c.SBKID } end },
  { "x5u naming the foreign host (jku genuine, foreign key)", msg = "signature", cold = 1,
    make = function() return evil{ x5u = c.F .. "/cert.pem" } end },
  { "an embedded jwk header with the foreign key and its own kid", msg = "no key", cold = 1,
    make = function()
      local n, e = c.evil_key:jwk()
      return evil{ kid = "sec-embedded", jwk = { kty = "RSA", n = n, e = e, kid = "sec-embedded" } }
    end },

  -- kid injection (the kid is only ever a table key; the message shows it cut and printable)
  { "no kid", msg = "no kid or jku", cold = 0, make = function() return evil{ kid = NULL } end },
  { "kid a number / false / an array", msg = "no kid or jku", cold = 0,
    make = function() return evil{ kid = pick{ 1, false, { KID } } } end },
  { "kid empty", msg = "no key", cold = 1, make = function() return evil{ kid = "" } end },
  { "kid path traversal ../../../../etc/passwd", msg = "no key", cold = 1,
    make = function() return evil{ kid = "../../../../etc/passwd" } end },
  { "kid naming a URL of the foreign host", msg = "no key", cold = 1,
    make = function() return evil{ kid = c.F .. "/jwks/oauth" } end },
  { "kid SQL injection", msg = "no key", cold = 1,
    make = function() return evil{ kid = "' OR '1'='1' --" } end },
  { "kid with CR LF and a forged log line", msg = "no key", cold = 1,
    make = function() return evil{ kid = KID .. "\r\nERROR forged log line" } end },
  { "kid the genuine kid with a NUL and more", msg = "no key", cold = 1,
    make = function() return evil{ kid = KID .. "\0x" } end },
  { "kid the genuine kid in another case", msg = "no key", cold = 1,
    make = function() return evil{ kid = KID:upper() } end },
  { "kid of 40 KiB", msg = "no key", cold = 1,
    make = function() return evil{ kid = ("k"):rep(40 * 1024) } end },
  { "kid __index / constructor (table keys)", msg = "no key", cold = 1,
    make = function() return evil{ kid = pick{ "__index", "constructor", "__proto__" } } end },

  -- sizes and shapes
  { "a token over 64 KiB (genuine signature)", msg = "64 KiB", cold = 0,
    make = function() return tok(nil, { padding = ("A"):rep(64 * 1024) }) end },
  { "a token of 64 KiB + 1 byte", msg = "64 KiB", cold = 0,
    make = function()
      local t = tok()
      return t .. "." .. ("A"):rep(64 * 1024 + 1 - #t - 1)
    end },
  { "a token of 1000 KiB", msg = "64 KiB", cold = 0,   -- the sandbox's control API takes 1 MiB
    make = function() return ("A"):rep(1000 * 1024) end },
  { "a header nested 5000 deep", msg = "JSON object", cold = 0,
    make = function()
      return tok('{"alg":"PS512","jku":' .. cjson.encode(c.T) .. ',"kid":"' .. KID .. '","x":'
                 .. ("["):rep(5000) .. ("]"):rep(5000) .. "}")
    end },
  { "a genuinely signed payload nested 5000 deep", msg = "JSON object", cold = 1,
    make = function()
      local p = cjson.encode(payload())
      return tok(nil, p:sub(1, -2) .. ',"x":' .. ("["):rep(5000) .. ("]"):rep(5000) .. "}")
    end },
  { "a genuinely signed payload nested 65 deep (one past the limit)", msg = "JSON object", cold = 1,
    make = function()
      local p = cjson.encode(payload())
      return tok(nil, p:sub(1, -2) .. ',"x":' .. ("["):rep(64) .. ("]"):rep(64) .. "}")
    end },
  { "a header of 40 KiB of members, foreign jku", msg = "allow%-list", cold = 0,
    make = function()
      local h = { alg = "PS512", jku = c.F .. "/jwks/oauth", kid = KID }
      for i = 1, 2500 do h[("m%05d"):format(i)] = i end
      return tok(h, nil, c.evil_key)
    end },
  { "a header that is not JSON", msg = "JSON object", cold = 0,
    make = function() return tok("{alg:PS512") end },
  { "a header that is a JSON array / string / null", msg = "JSON object", cold = 0,
    make = function() return tok(pick{ "[1,2]", '"PS512"', "null" }) end },
  { "a genuinely signed payload that is a JSON array", msg = "JSON object", cold = 1,
    make = function() return tok(nil, "[1,2,3]") end },
  { "a genuinely signed payload with exp as a string", msg = "not a number", cold = 1,
    make = function() return tok(nil, { exp = tostring(os.time() + 300) }) end },
  { "a genuinely signed payload, exp past the leeway", msg = "expired", cold = 1,
    make = function() return tok(nil, { exp = os.time() - 120 }) end },
  { "a genuinely signed payload, nbf in the future", msg = "not valid yet", cold = 1,
    make = function() return tok(nil, { nbf = os.time() + 3600 }) end },
  { "a genuinely signed payload, iat in the future", msg = "future", cold = 1,
    make = function() return tok(nil, { iat = os.time() + 3600 }) end },
  { "base64 (not base64url) characters + and /", msg = "three%-part", cold = 0,
    make = function() return (tok():gsub("^(..)", "%1+/")) end },
  { "base64 padding =", msg = "three%-part", cold = 0,
    make = function() local h, rest = tok():match("^([^.]+)(.*)$") return h .. "==" .. rest end },
  { "a header segment of impossible length (mod 4 = 1)", msg = "base64url", cold = 0,
    make = function() local _, rest = tok():match("^([^.]+)(.*)$") return b64('{"alg":"PS512"}') .. "A" .. rest end },
  { "non-zero trailing bits in the header segment", msg = "base64url", cold = 0,
    make = function()
      local hj = cjson.encode{ alg = "PS512", jku = c.T, kid = KID }
      while #hj % 3 == 0 do hj = hj .. " " end        -- a partial last quantum
      local h, rest = tok(hj):match("^([^.]+)(.*)$")
      local i = B64URL:find(h:sub(-1), 1, true)       -- its unused bits are zero: set one
      return h:sub(1, -2) .. B64URL:sub(i + 1, i + 1) .. rest
    end },
  { "whitespace and a newline inside the token", msg = "three%-part", cold = 0,
    make = function() local t = tok() return t:sub(1, 20) .. "\n " .. t:sub(21) end },
  { "four segments", msg = "three%-part", cold = 0, make = function() return tok() .. ".AAAA" end },
  { "five segments (JWE-like)", msg = "three%-part", cold = 0,
    make = function() return tok() .. ".AAAA.BBBB" end },
  { "two segments", msg = "three%-part", cold = 0,
    make = function() return (tok():match("^(.+)%.[^.]+$")) end },
  { "empty segments (..)", msg = "three%-part", cold = 0, make = function() return ".." end },
  { "a truncated signature (one byte short)", msg = "signature", cold = 1,
    make = function()
      local input, s = tok():match("^(.+)%.([^.]+)$")
      return input .. "." .. b64(core.b64url_decode(s):sub(1, -2))
    end },
  { "a signature from another token", msg = "signature", cold = 1,
    make = function()
      local input = tok():match("^(.+)%.[^.]+$")
      local s = tok():match("%.([^.]+)$")
      return input .. "." .. s
    end },
  { "no token member in the answer", code = "InvalidResponse", msg = "no token", cold = 0,
    make = function() return nil end },
  { "an empty token", code = "InvalidResponse", msg = "no token", cold = 0,
    make = function() return "" end },
  { "a token that is a number / an object / an array", code = "InvalidResponse", msg = "no token",
    cold = 0, make = function() return pick{ 12345, { alg = "none" }, { "x" } } end },
}

-- Under ASan and valgrind (DIGIME_SANITIZED) a row runs the exchange, warm and cold, only: the
-- other paths reach the same C code with the same bytes, and valgrind is slow.
local ENDPOINTS = os.getenv("DIGIME_SANITIZED") == "1" and { "exchange", "exchange, cold" }
  or { "exchange", "refresh", "authorize", "reference", "onboard", "auto refresh", "exchange, cold" }

local PATH = { exchange = "/v1.7/oauth/token", refresh = "/v1.7/oauth/token",
               authorize = "/v1.7/oauth/authorize", reference = "/v1.7/oauth/token/reference",
               onboard = "/v1.7/oauth/token/reference",
               ["auto refresh"] = "/v1.7/oauth/token", ["exchange, cold"] = "/v1.7/oauth/token" }

-- Puts the row's token on the endpoint's next answer.
local function arm(row, ep)
  local path = PATH[ep]
  if row.forge == "none" then return end
  if row.forge then
    sb:fault{ method = "POST", path = path, match = "exact", action = "token", token = row.forge,
              jku = row.jku and row.jku() or nil }
    return
  end
  local now = os.time()
  sb:fault{ method = "POST", path = path, match = "exact", action = "status", status = 200,
            body = { token = row.make(), session = { expiry = (now + 1800) * 1000, key = "sec-session" } } }
end

-- Runs one endpoint: -> res, err
local function run(row, ep)
  local cold = ep == "exchange, cold" and new_sdk() or nil
  local sdk = cold or W
  if ep == "exchange" or ep == "exchange, cold" then
    local code, verifier
    if row.forge then
      code, verifier = code_for(W)      -- warm: no JWKS fetch
    else
      code, verifier = "sec-code-" .. core.random_alnum(16), core.b64url_encode(core.random_alnum(32))
      ledger:secret(code, "authorization code")
      ledger:secret(verifier, "code verifier")
    end
    arm(row, ep)
    return call(sdk, "exchange_code_for_token", { contract = contract(),
      authorization_code = code, code_verifier = verifier })
  elseif ep == "refresh" then
    local t = row.forge and login(W) or fake_token()
    arm(row, ep)
    return call(sdk, "refresh_token", { contract = contract(), user_access_token = t })
  elseif ep == "authorize" then
    arm(row, ep)
    return call(sdk, "get_authorize_url", flow.authorize_opts())
  elseif ep == "reference" then
    arm(row, ep)
    return call(sdk, "get_reauthorize_url", { contract = contract(), callback = flow.CALLBACK,
      state = "sec", user_access_token = row.forge and login_token or fake_token() })
  elseif ep == "onboard" then
    arm(row, ep)
    return call(sdk, "get_onboard_service_url", { contract = contract(), callback = flow.CALLBACK,
      user_access_token = row.forge and login_token or fake_token() })
  elseif ep == "auto refresh" then
    local t = row.forge and expired_copy(login(W)) or fake_token(true)
    arm(row, ep)
    return call(sdk, "read_accounts", { contract = contract(), user_access_token = t })
  end
  error("no endpoint " .. ep)
end

local function snapshot()
  local st = sb:stats()
  return { sbj = st.jwks_fetches, sbf = st.foreign_jwks_fetches,
           trusted = #trusted:requests(), foreign = #foreign:requests(),
           warm = W.stats.jwks_fetches }
end

local function assert_clear_error(err, what)
  local text = tostring(err)
  assert.is_falsy(text:find("[%c]"), what .. ": the error text has control characters: " .. text:sub(1, 200))
  assert.is_true(#text <= 320, what .. ": an error text of " .. #text .. " bytes")
end

describe("security", function()
  lazy_setup(function()
    dir = shell.tmpdir()
    ledger = sec.ledger()
    ledger:pem(demo.private_key)
    ledger:pem(assert(core.private_key(demo.private_key)):private_pem("pkcs1"), "private key (PKCS#1)")

    sb = flow.start()
    trusted = sec.server()
    foreign = sec.server()

    local trusted_pem, trusted_file = sec.rsa_key(dir, "trusted")
    local evil_pem = sec.rsa_key(dir, "evil")
    c.small_pem = sec.rsa_key(dir, "small", 1024)
    ledger:pem(c.small_pem, "private key (1024 bits)")
    c.trusted_key = assert(core.private_key(trusted_pem))
    c.evil_key = assert(core.private_key(evil_pem))
    local function jwk(key, kid)
      local n, e = key:jwk()
      return { kid = kid, kty = "RSA", alg = "PS512", use = "sig", n = n, e = e,
               pem = key:public_pem("spki") }
    end
    c.trusted_pub_pem = c.trusted_key:public_pem("spki")
    c.TO, c.TP = trusted.origin, trusted.port
    c.T = trusted.origin .. "/jwks/oauth"
    c.F, c.FP = foreign.origin, foreign.port
    c.SBJ = sb.base_url .. "jwks/oauth"
    c.SBKID = sb:info_().kid
    c.rs512 = sec.rs512(dir, trusted_file)
    c.hs512_pem = sec.hs512(dir, c.trusted_pub_pem)
    trusted:script{ { method = "GET", path = "/jwks/oauth", count = -1,
                      body = { keys = { jwk(c.trusted_key, KID) } } } }
    -- The foreign host would make a forged token verify, if it were ever asked.
    foreign:script{ { path = "/", count = -1,
                      body = { keys = { jwk(c.evil_key, KID), jwk(c.evil_key, c.SBKID) } } } }

    W = new_sdk{ jwks = { allowed = { c.SBJ, c.T }, ttl = 3600, cooldown = 3600 } }
    login_token = login(W)                                     -- warms the sandbox's JWKS
    hooks = 0
    arm({ make = function() return tok() end }, "authorize")
    local res, err = call(W, "get_authorize_url", flow.authorize_opts())   -- and the trusted one
    assert(res, "warming the trusted JWKS: " .. tostring(err))
    assert.are.equal(2, W.stats.jwks_fetches)
  end)

  lazy_teardown(function()
    if sb then sb:stop() end
    if trusted then trusted:stop() end
    if foreign then foreign:stop() end
    shell.rmdir(dir)
  end)

  describe("server-token attacks", function()
    for _, row in ipairs(ATTACKS) do
      local expect = row.accept and "accepted"
        or ("refused: " .. (row.code or DEFAULT_CODE) .. ", " .. row.cold .. " JWKS fetch when cold")
      it(row[1] .. " -> " .. expect, function()
        local before = snapshot()
        for _, ep in ipairs(ENDPOINTS) do
          local what = row[1] .. " [" .. ep .. "]"
          local hooks_before = hooks
          local res, err = run(row, ep)
          if row.accept then
            if ep == "auto refresh" then
              -- the refresh succeeded (on_token_refresh saw it); what the read did after is
              -- not the point here
              assert.are.equal(hooks_before + 1, hooks, what .. ": " .. tostring(err))
            else
              assert.is_nil(err, what .. ": " .. tostring(err))
              assert.is_table(res, what)
            end
          else
            assert.is_nil(res, what .. ": a hostile token was accepted")
            assert.is_table(err, what .. ": no error")
            assert.are.equal("DigiMeSDKError", err.kind, what .. ": " .. tostring(err))
            assert.are.equal(row.code or DEFAULT_CODE, err.code, what .. ": " .. tostring(err))
            assert.is_truthy(err.message:find(row.msg), what .. ": message: " .. err.message)
            assert_clear_error(err, what)
            assert.are.equal(hooks_before, hooks, what .. ": on_token_refresh got a refused token")
          end
        end
        assert.are.same({}, sb:faults(), "a hostile answer was not used: the row proved nothing")
        local after = snapshot()
        assert.are.equal(0, after.foreign - before.foreign, "the foreign host was contacted")
        assert.are.equal(0, after.sbf - before.sbf, "the sandbox's foreign JWKS was fetched")
        assert.are.equal(before.warm, after.warm, "the warm SDK fetched a JWKS")
        local fetches_trusted, fetches_sandbox = after.trusted - before.trusted, after.sbj - before.sbj
        if row.forge then
          assert.are.equal(row.cold, fetches_sandbox, "JWKS fetches by the cold SDK")
          assert.are.equal(0, fetches_trusted, "the trusted host was contacted")
        else
          assert.are.equal(row.cold, fetches_trusted, "JWKS fetches by the cold SDK")
          assert.are.equal(0, fetches_sandbox, "the sandbox's JWKS was fetched")
        end
        for i = before.trusted + 1, after.trusted do
          local r = trusted:requests()[i]
          assert.are.equal("GET /jwks/oauth", r.method .. " " .. r.target)
        end
      end)
    end

    it("leaves the warm SDK unpoisoned: genuine tokens still verify, with no JWKS fetch", function()
      local fetches = W.stats.jwks_fetches
      arm({ make = function() return tok() end }, "authorize")
      assert(call(W, "get_authorize_url", flow.authorize_opts()))
      assert(login(W))
      assert.are.equal(fetches, W.stats.jwks_fetches)
      assert.are.equal(0, #foreign:requests())
      assert.are.equal(0, sb:stats().foreign_jwks_fetches)
    end)

    it("caps a server token at 64 KiB (jwt.MAX_TOKEN)", function()
      assert.are.equal(64 * 1024, jwt.MAX_TOKEN)
    end)
  end)

  -- Limits ---------------------------------------------------------------------------------
  describe("limits", function()
    local host, S

    lazy_setup(function()
      host = sec.server()
      S = new_sdk{ base_url = host.origin .. "/v1.7/", onboard_url = host.origin .. "/apps/saas/",
                   jwks = { allowed = { host.origin .. "/jwks/oauth" } } }
    end)
    lazy_teardown(function() if host then host:stop() end end)
    before_each(function() host:clear() end)

    local KIB, MIB = 1024, 1024 * 1024

    it("has sane defaults: headers 256 KiB, JSON 16 MiB, a file list 128 MiB, JWKS 1 MiB, "
       .. "server token 64 KiB", function()
      local plain = assert(flow.digime.init{ application_id = "x" })
      assert.are.same({ json = 16 * MIB, file_list = 128 * MIB, headers = 256 * KIB, body = 1024 * MIB },
                      plain.config.limits)
      assert.are.equal(MIB, plain.config.jwks.max_size)
      assert.are.equal(64 * KIB, jwt.MAX_TOKEN)
    end)

    -- { name, answer (security_server script entry), call, expected: kind, code|network,
    --   message pattern, sdk options }
    local LIMITS = {
      { "a header block over the default cap (7000 headers, ~290 KB) on a GET",
        answer = { path = "/v1.7/permission-access/accounts", filler_headers = 7000, body = { accounts = {} } },
        call = "accounts", kind = "NetworkError", network = "too_large", msg = "headers larger" },
      { "a header block over the default cap on the token exchange (POST)",
        answer = { path = "/v1.7/oauth/token", filler_headers = 7000, body = {} },
        call = "exchange", kind = "NetworkError", network = "too_large", msg = "headers larger" },
      { "a header block just under the default cap (5000 headers, ~205 KB) (control)",
        answer = { path = "/v1.7/permission-access/accounts", filler_headers = 5000, body = { accounts = {} } },
        call = "accounts", ok = true },
      { "a JSON answer over the default cap (16 MiB + 1 KiB), refused before it is all read",
        answer = { path = "/v1.7/permission-access/accounts", pad = 16 * MIB + KIB },
        call = "accounts", kind = "NetworkError", network = "too_large" },
      { "a JSON answer over a configured cap (limits.json = 64 KiB, answer 100 KiB)",
        answer = { path = "/v1.7/permission-access/accounts", pad = 100 * KIB },
        call = "accounts", kind = "NetworkError", network = "too_large",
        opts = { limits = { json = 64 * KIB } } },
      { "a JSON answer under its cap (control: 1 MiB)",
        answer = { path = "/v1.7/permission-access/accounts", headers = { { "Content-Type", "application/json" } },
                   body = '{"accounts":[],"pad":"' .. ("x"):rep(MIB) .. '"}' },
        call = "accounts", ok = true },
      { "a text body over limits.body (64 KiB, answer 100 KiB)",
        answer = { path = "/v1.7/export/", body = ("r"):rep(100 * KIB) },
        call = "report", kind = "NetworkError", network = "too_large",
        opts = { limits = { body = 64 * KIB } } },
      { "an error body over limits.body (64 KiB, a 500 of 100 KiB, not retried)",
        answer = { path = "/v1.7/permission-access/accounts", status = 500, body = ("e"):rep(100 * KIB) },
        call = "accounts", kind = "NetworkError", network = "too_large",
        opts = { limits = { body = 64 * KIB } } },
      { "a JWKS over the default cap (1 MiB + 1 KiB), refused before it is all read",
        answer = { path = "/jwks/oauth", pad = MIB + KIB },
        call = "jwks", kind = "DigiMeSDKError", code = "JWKSError", msg = "JWKS", cause_network = "too_large" },
      { "a JWKS over a configured cap (jwks.max_size = 4 KiB, answer 8 KiB)",
        answer = { path = "/jwks/oauth", pad = 8 * KIB },
        call = "jwks", kind = "DigiMeSDKError", code = "JWKSError", msg = "JWKS", cause_network = "too_large",
        opts = { jwks = { allowed = "host", max_size = 4 * KIB } } },
    }

    local function limit_call(sdk, what, row)
      if what == "accounts" then
        return call(sdk, "read_accounts", { contract = contract(), user_access_token = fake_token() })
      elseif what == "report" then
        return call(sdk, "get_portability_report", { contract = contract(), format = "xml",
          service_type = "medmij", user_access_token = fake_token() })
      elseif what == "exchange" then
        return call(sdk, "exchange_code_for_token", { contract = contract(),
          authorization_code = "sec-code-x", code_verifier = core.b64url_encode(core.random_alnum(32)) })
      elseif what == "jwks" then
        -- the host answers the authorize call with a token whose jku is its own JWKS
        host:script{ { method = "POST", path = "/v1.7/oauth/authorize", body = {
          token = tok{ jku = host.origin .. "/jwks/oauth" },
          session = { expiry = (os.time() + 600) * 1000, key = "s" } } } }
        return call(sdk, "get_authorize_url", flow.authorize_opts())
      end
      error(row[1])
    end

    for _, row in ipairs(LIMITS) do
      it(row[1] .. (row.ok and " -> accepted" or " -> refused, not parsed"), function()
        local sdk = S
        if row.opts then
          local o = { base_url = host.origin .. "/v1.7/",
                      jwks = { allowed = { host.origin .. "/jwks/oauth" } } }
          for k, v in pairs(row.opts) do o[k] = v end
          if o.jwks.allowed == "host" then o.jwks.allowed = { host.origin .. "/jwks/oauth" } end
          sdk = new_sdk(o)
        end
        host:script{ row.answer }
        local res, err = limit_call(sdk, row.call, row)
        if row.ok then
          assert.is_nil(err, tostring(err))
          assert.is_table(res)
          return
        end
        assert.is_nil(res)
        assert.is_table(err, "no error")
        assert.are.equal(row.kind, err.kind, tostring(err))
        if row.network then assert.are.equal(row.network, err.network, tostring(err)) end
        if row.code then assert.are.equal(row.code, err.code, tostring(err)) end
        if row.msg then assert.is_truthy(tostring(err):find(row.msg, 1, true), tostring(err)) end
        if row.cause_network then
          assert.is_table(err.cause, tostring(err))
          assert.are.equal(row.cause_network, err.cause.network, tostring(err.cause))
        end
        assert_clear_error(err, row[1])
        -- one request for the refused answer: nothing retried
        local n = 0
        for _, r in ipairs(host:requests()) do
          if r.target:sub(1, #row.answer.path) == row.answer.path then n = n + 1 end
        end
        assert.are.equal(1, n, "requests to " .. row.answer.path)
      end)
    end
  end)

  -- Redirects --------------------------------------------------------------------------------
  describe("redirects", function()
    local STATUSES = { 301, 302, 303, 307, 308 }
    -- { name, method, path, run(sdk) -> res, err, jwks = the error wraps the JWKS fetch's }
    local CALLS = {
      { "POST oauth/token (exchange)", "POST", "/v1.7/oauth/token", function(sdk)
        return call(sdk, "exchange_code_for_token", { contract = contract(),
          authorization_code = "sec-code-r", code_verifier = core.b64url_encode(core.random_alnum(32)) })
      end },
      { "POST oauth/authorize", "POST", "/v1.7/oauth/authorize", function(sdk)
        return call(sdk, "get_authorize_url", flow.authorize_opts())
      end },
      { "GET permission-access/accounts", "GET", "/v1.7/permission-access/accounts", function(sdk)
        return call(sdk, "read_accounts", { contract = contract(), user_access_token = fake_token() })
      end },
      { "GET a file (piped body)", "GET", "/v1.7/permission-access/query/sec-session/f1", function(sdk)
        return call(sdk, "read_file", { contract = contract(), user_access_token = fake_token(),
          session_key = "sec-session", file_name = "f1" })
      end },
      { "GET the JWKS (a cold SDK)", "GET", "/v1.7/jwks/oauth", jwks = true, function(sdk)
        return call(sdk, "get_authorize_url", flow.authorize_opts())
      end },
    }
    for _, cl in ipairs(CALLS) do
      for _, status in ipairs(STATUSES) do
        it(("%d to a foreign host on %s -> refused, not followed"):format(status, cl[1]), function()
          local before = #foreign:requests()
          local sdk = new_sdk()                  -- cold: the JWKS is fetched when needed
          sb:fault{ method = cl[2], path = cl[3], match = "exact", action = "status", status = status,
                    headers = { Location = foreign.origin .. cl[3] .. "?from=redirect" } }
          local res, err = cl[4](sdk)
          assert.is_nil(res)
          assert.is_table(err, "no error")
          assert.are.same({}, sb:faults(), "the redirect was not served")
          local e = err
          if cl.jwks then
            assert.are.equal("JWKSError", err.code, tostring(err))
            e = err.cause
          end
          assert.are.equal("ServerError", e.kind, tostring(e))
          assert.are.equal(status, e.status, tostring(e))
          assert.is_truthy(tostring(e):find("redirect", 1, true), tostring(e))
          assert.are.equal(1, e.attempts, "a redirect was retried")
          assert.is_falsy(tostring(err):find("from=redirect", 1, true), "the Location is echoed")
          assert_clear_error(err, cl[1])
          assert.are.equal(before, #foreign:requests(), "the redirect was followed to the foreign host")
        end)
      end
    end

    it("a same-host redirect (relative Location) is refused too", function()
      sb:fault{ method = "GET", path = "/v1.7/permission-access/accounts", match = "exact",
                action = "status", status = 302, headers = { Location = "/v1.7/permission-access/accounts" } }
      local res, err = call(new_sdk(), "read_accounts", { contract = contract(), user_access_token = fake_token() })
      assert.is_nil(res)
      assert.are.equal(302, err.status)
      assert.are.same({}, sb:faults())
    end)
  end)

  -- TLS ---------------------------------------------------------------------------------------
  describe("TLS (curl transport)", function()
    local pki, servers = nil, {}

    lazy_setup(function()
      local pdir = dir .. "/pki"
      os.execute("mkdir -p " .. shell.quote(pdir))
      pki = sec.pki(pdir)
      for _, name in ipairs{ "good", "expired", "wrong_host" } do
        servers[name] = flow.start{ args = { "--tls", "--cert", pki[name], "--key", pki.key } }
        assert(servers[name].base_url:match("^https://127%.0%.0%.1:"))
      end
    end)
    lazy_teardown(function()
      for _, s in pairs(servers) do s:stop() end
    end)

    local TLS = {
      { "the right CA -> the whole call works (API and JWKS over https)", cert = "good", ca = "ca", ok = true },
      { "a wrong CA -> refused", cert = "good", ca = "other_ca", msg = "certificate" },
      { "no CA file (the system store does not know the test CA) -> refused", cert = "good",
        msg = "certificate" },
      { "an expired certificate -> refused", cert = "expired", ca = "ca", msg = "expired" },
      { "a certificate for another host name -> refused", cert = "wrong_host", ca = "ca",
        msg = "subject name" },
      { "verify = false with the expired certificate -> works (control: it is the check that refuses)",
        cert = "expired", verify = false, ok = true },
    }
    for _, row in ipairs(TLS) do
      it(row[1], function()
        local s = servers[row.cert]
        local sdk = new_sdk{ base_url = s.base_url, onboard_url = s.onboard_url,
                             cloud_base_url = s.cloud_base_url, jwks = false,
                             tls = { cafile = row.ca and pki[row.ca] or nil, verify = row.verify } }
        local res, err = call(sdk, "get_authorize_url", flow.authorize_opts())
        if row.ok then
          assert.is_nil(err, tostring(err))
          assert.is_truthy(res.url:match("^https://"))
          assert.are.equal(1, sdk.stats.jwks_fetches)
          return
        end
        assert.is_nil(res)
        assert.are.equal("NetworkError", err.kind, tostring(err))
        assert.are.equal("tls", err.network, tostring(err))
        -- one shape for a TLS failure in both transports (ngx_transport_spec checks nginx's)
        assert.are.equal("TLSError", err.code, tostring(err))
        assert.is_false(err.retryable, "a TLS failure is said to be retryable")
        assert.is_truthy(err.message:find(row.msg, 1, true), err.message)
        assert.are.equal(1, err.attempts, "a TLS failure was retried")
        assert_clear_error(err, row[1])
      end)
    end
  end)

  -- Secrets -------------------------------------------------------------------------------------
  describe("secrets", function()
    it("a full flow with faults: authorize, consent, exchange, refresh, session, file list, "
       .. "all files, accounts, automatic refresh, a dead refresh token, replays", function()
      local sdk = new_sdk()
      local res = assert(call(sdk, "get_authorize_url", flow.authorize_opts()))
      local cb = flow.consent(res.url)
      local code = assert(cb.query.code)
      ledger:secret(code, "authorization code")
      local token = assert(call(sdk, "exchange_code_for_token", { contract = contract(),
        authorization_code = code, code_verifier = res.code_verifier }))
      -- the code again, and a wrong verifier: refused
      local _, err = call(sdk, "exchange_code_for_token", { contract = contract(),
        authorization_code = code, code_verifier = res.code_verifier })
      assert.is_table(err)
      local c2, v2 = code_for(sdk)
      _, err = call(sdk, "exchange_code_for_token", { contract = contract(),
        authorization_code = c2, code_verifier = v2:reverse() })
      assert.is_table(err)
      -- a refresh (rotates), then a refresh with the rotated-away token: refused
      local fresh = assert(call(sdk, "refresh_token", { contract = contract(), user_access_token = token }))
      _, err = call(sdk, "refresh_token", { contract = contract(), user_access_token = token })
      assert.is_table(err)
      token = fresh
      -- a session and its file list, with a 500 and a reset on the way (retried, logged)
      local session = assert(call(sdk, "read_session", { contract = contract(), user_access_token = token }))
      token = session.user_access_token
      local key = session.session.key
      sb:fault{ method = "GET", path = "/v1.7/permission-access/query/" .. key, match = "exact",
                action = "status", status = 503, headers = { ["Retry-After"] = "0" } }
      sb:fault{ method = "GET", path = "/v1.7/permission-access/query/" .. key, match = "exact",
                action = "reset" }
      local list = assert(call(sdk, "read_file_list", { contract = contract(),
        user_access_token = token, session_key = key }))
      token = list.user_access_token
      -- all files; one download cut short (an error the sync reports and retries)
      sb:fault{ method = "GET", path = "/v1.7/permission-access/query/" .. key .. "/", action = "truncate" }
      local failures = {}
      local all, aerr = call(sdk, "read_all_files", { contract = contract(), user_access_token = token,
        session_key = key, poll_interval = 0.1, max_time = 60,
        on_file_data = function() end,
        on_file_error = function(f) failures[#failures + 1] = f; ledger:error(f.error, "on_file_error") end })
      assert(all, tostring(aerr))
      assert.is_true(all.files > 0)
      token = all.user_access_token
      -- the access token expires: the next call refreshes by itself
      local n = hooks
      sb:expire("access")
      local acc = assert(call(sdk, "read_accounts", { contract = contract(), user_access_token = token }))
      assert.are.equal(n + 1, hooks)
      token = acc.user_access_token
      -- both expire: the call fails with InvalidToken (the caller must reauthorize)
      sb:expire("both")
      _, err = call(sdk, "read_accounts", { contract = contract(), user_access_token = token })
      assert.are.equal("InvalidToken", err.code, tostring(err))
      -- reauthorize with the dead token
      local re = assert(call(sdk, "get_reauthorize_url", { contract = contract(),
        callback = flow.CALLBACK, state = "re", user_access_token = login(sdk) }))
      assert.is_string(re.code_verifier)
    end)

    it("file decryption: a good file, bad padding, a wrong key, a mislabelled compression; the "
       .. "AES keys are known to the ledger", function()
      local files = sec.server()
      local ok, perr = pcall(function()
        local sdk = new_sdk{ base_url = files.origin .. "/v1.7/" }
        local key = assert(core.private_key(demo.private_key))
        local function encrypt(k, plain)
          local e = core.file_encryptor(k)
          local out = e:update(plain) .. e:finish()
          e:close()
          return out
        end
        local function hex(s) return (s:gsub(".", function(ch) return ("%02x"):format(ch:byte()) end)) end
        local function xor(a, b)
          local r, bit = 0, 1
          while a > 0 or b > 0 do
            if a % 2 ~= b % 2 then r = r + bit end
            a, b, bit = (a - a % 2) / 2, (b - b % 2) / 2, bit * 2
          end
          return r
        end
        local plain = "twenty bytes of data"                  -- 20 bytes: pad value 12
        local good = encrypt(key, plain)
        ledger:bytes(assert(key:oaep_decrypt(good:sub(1, key:size()))), "AES file key")
        -- bad padding, for sure: the last plaintext byte (12) becomes 0 through the block before
        local bad = encrypt(key, plain)
        ledger:bytes(assert(key:oaep_decrypt(bad:sub(1, key:size()))), "AES file key")
        local i = #bad - 16
        bad = bad:sub(1, i - 1) .. string.char(xor(bad:byte(i), 12)) .. bad:sub(i + 1)
        local foreign_key = encrypt(c.evil_key, plain)
        ledger:bytes(assert(c.evil_key:oaep_decrypt(foreign_key:sub(1, c.evil_key:size()))), "AES file key")
        local gz = encrypt(key, plain)
        ledger:bytes(assert(key:oaep_decrypt(gz:sub(1, key:size()))), "AES file key")
        local function meta(compression)
          return core.b64url_encode(cjson.encode{ metadata = { mimetype = "text/plain" },
                                                  compression = compression })
        end
        local base = "/v1.7/permission-access/query/sec-session/"
        files:script{
          { path = base .. "good", body_hex = hex(good), headers = { { "x-metadata", meta("none") } } },
          { path = base .. "bad", body_hex = hex(bad), headers = { { "x-metadata", meta("none") } } },
          { path = base .. "foreign", body_hex = hex(foreign_key), headers = { { "x-metadata", meta("none") } } },
          { path = base .. "gz", body_hex = hex(gz), headers = { { "x-metadata", meta("gzip") } } },
        }
        local function read(name)
          return call(sdk, "read_file", { contract = contract(), user_access_token = fake_token(),
            session_key = "sec-session", file_name = name })
        end
        local r = assert(read("good"))
        assert.are.equal(plain, r.file_data)
        for _, name in ipairs{ "bad", "foreign", "gz" } do
          local res, err = read(name)
          assert.is_nil(res, name)
          assert.are.equal("FileDecryptionError", err.kind, name .. ": " .. tostring(err))
          assert_clear_error(err, name)
          assert.are.equal(1, err.attempts, name .. ": a bad file was downloaded again")
        end
      end)
      files:stop()
      assert(ok, perr)
    end)

    -- Secrets handed to the wrong parameter: refused without being echoed.
    local WRONG = {
      { "a token as contract.private_key", "get_authorize_url", function(t)
        return { contract = { id = demo.contract_id, private_key = t.access_token.value },
                 callback = flow.CALLBACK, state = "" }
      end },
      { "the private key PEM as an option name", "get_authorize_url", function()
        return { contract = contract(), callback = flow.CALLBACK, state = "", [demo.private_key] = true }
      end },
      { "a token as an option name of contract", "refresh_token", function(t)
        return { contract = { id = demo.contract_id, private_key = demo.private_key,
                              [t.refresh_token.value .. "." .. t.access_token.value] = 1 },
                 user_access_token = t }
      end },
      { "the private key PEM as contract", "get_authorize_url", function()
        return { contract = demo.private_key, callback = flow.CALLBACK, state = "" }
      end },
      { "a token table as contract", "read_accounts", function(t)
        return { contract = t, user_access_token = t }
      end },
      { "the access token string as user_access_token", "read_accounts", function(t)
        return { contract = contract(), user_access_token = t.access_token.value }
      end },
      { "the refresh token string as user_access_token", "refresh_token", function(t)
        return { contract = contract(), user_access_token = t.refresh_token.value }
      end },
      { "the PEM as a token value, with an expiry that is not a number", "read_accounts", function()
        return { contract = contract(), user_access_token = {
          access_token = { value = demo.private_key, expiry = "never" },
          refresh_token = { value = demo.private_key, expiry = 0 } } }
      end },
      { "the PEM as authorization_code and a token as code_verifier", "exchange_code_for_token",
        function(t)
          return { contract = contract(), authorization_code = { demo.private_key },
                   code_verifier = t.access_token.value }
        end },
      { "the private key as contract.id", "get_authorize_url", function()
        return { contract = { id = { demo.private_key }, private_key = demo.private_key },
                 callback = flow.CALLBACK, state = "" }
      end },
      { "a contract key of 1024 bits", "get_authorize_url", function()
        return { contract = { id = demo.contract_id, private_key = c.small_pem },
                 callback = flow.CALLBACK, state = "" }
      end },
    }

    for _, row in ipairs(WRONG) do
      it("refuses " .. row[1] .. " without echoing it", function()
        local sdk = W
        local t = fake_token()
        local res, err = call(sdk, row[2], row[3](t))
        assert.is_nil(res)
        assert.are.equal("TypeValidationError", err.kind, tostring(err))
        assert_clear_error(err, row[1])
        local leak = ledger:leak(sec.error_text(err))
        assert.is_nil(leak, row[1] .. ": " .. tostring(leak))
      end)
    end

    it("a misconfigured init does not echo what it was given", function()
      for _, o in ipairs{
        { application_id = "x", [demo.private_key] = 1 },
        { application_id = "x", logger = demo.private_key },
        { application_id = "x", jwks = { allowed = { demo.private_key } } },
        { application_id = demo.private_key, base_url = demo.private_key },
      } do
        local sdk, err = flow.digime.init(o)
        assert.is_nil(sdk)
        ledger:error(err, "init")
        assert.are.equal("TypeValidationError", err.kind)
        assert.is_nil(ledger:leak(sec.error_text(err)), tostring(err))
      end
    end)
  end)

  -- Last: everything the SDK said across this file ------------------------------------------------
  it("no error text and no log line of this whole file carries a secret", function()
    local n = ledger:check()
    assert.is_true(n > 300, "too few texts checked (" .. n .. "): the ledger missed the suite")
    for _, kind in ipairs{ "private key", "access token", "refresh token", "code verifier",
                           "authorization code", "AES file key" } do
      assert.is_true((ledger.counts[kind] or 0) > 0, "no " .. kind .. " was ever seen")
    end
    -- the errors and lines flow.sdk recorded too
    flow.assert_no_secrets()
  end)
end)
