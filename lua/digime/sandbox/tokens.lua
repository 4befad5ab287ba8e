-- The sandbox's own JWT code: reading client JWTs, signing server tokens, and forging the
-- hostile tokens of the "token" fault. It uses digime.core, cjson, luaossl and the sandbox's
-- own helpers only, never the SDK's Lua (doc/sandbox.md: a misunderstanding in the SDK must
-- not be mirrored here).

local cjson = require "cjson.safe"
local core = require "digime.core"
local wire = require "digime.sandbox.wire"
local util = require "digime.sandbox.util"

local b64e, b64d = core.b64url_encode, core.b64url_decode
local type, tostring, os_time = type, tostring, os.time
local concat = table.concat

local _M = {}

local encode = wire.encode
local is_object = util.is_object

-- Splits and decodes a compact JWS without verifying it.
-- -> { header =, payload =, signing_input =, signature = } | nil, err, what
-- `what` says which part failed: "format" | "header" | "payload".
function _M.decode(jwt)
  if type(jwt) ~= "string" then
    return nil, "not a string", "format"
  end
  local h64, p64, s64 = jwt:match("^([%w%-_]+)%.([%w%-_]*)%.([%w%-_]*)$")
  if not h64 then
    return nil, "not a three-part compact JWS", "format"
  end
  local htext = b64d(h64)
  local header = htext and cjson.decode(htext)
  if not is_object(header) then
    return nil, "header is not a JSON object", "header"
  end
  local sig = b64d(s64)
  if not sig then
    return nil, "signature is not base64url", "format"
  end
  local ptext = b64d(p64)
  local payload = ptext and cjson.decode(ptext)
  if not is_object(payload) then
    return { header = header, signing_input = h64 .. "." .. p64, signature = sig },
           "payload is not a JSON object", "payload"
  end
  return { header = header, payload = payload, signing_input = h64 .. "." .. p64,
           signature = sig }
end

-- PS512 (salt 64, pinned in the core) against a contract key.
function _M.verify_ps512(parsed, key)
  return key:verify_ps512(parsed.signing_input, parsed.signature)
end

function _M.sign_ps512(key, header, payload)
  local input = b64e(encode(header)) .. "." .. b64e(encode(payload))
  return input .. "." .. b64e(key:sign_ps512(input))
end

-- The signer of server tokens: { key, kid, jku, pem, evil_key, evil_jku, lookalike_jku, origin }
local function header_for(signer, extra)
  local h = { alg = "PS512", typ = "JWT", jku = signer.jku, kid = signer.kid }
  for k, v in pairs(extra or {}) do
    if v == false then
      h[k] = nil
    else
      h[k] = v
    end
  end
  return h
end

local function stamp(payload, now)
  local p = {}
  for k, v in pairs(payload) do
    p[k] = v
  end
  now = now or os_time()
  p.iat = p.iat or now
  p.exp = p.exp or now + 300
  return p
end

-- A genuine server token: PS512, jku/kid of the sandbox JWKS, iat and exp (now + 300 s).
function _M.server_token(signer, payload)
  return _M.sign_ps512(signer.key, header_for(signer), stamp(payload))
end

-- luaossl helpers, loaded only when a hostile token needs them.
local function hmac_sha512(key, data)
  local hmac = require "openssl.hmac"
  return hmac.new(key, "sha512"):final(data)
end

local function rs512(private_pem, data)
  local pkey = require "openssl.pkey"
  local digest = require "openssl.digest"
  local k = pkey.new(private_pem)
  local d = digest.new("sha512")
  d:update(data)
  return k:sign(d)   -- PKCS#1 v1.5: luaossl has no PSS option, which is what we want here
end

local function flip_last_bit(s)
  local last = s:byte(-1)
  last = (last % 2 == 0) and last + 1 or last - 1
  return s:sub(1, -2) .. string.char(last)
end

-- Hostile variants of a server token, for testing the client's verification.
-- opts: the fault's fields (opts.jku overrides the jku of foreign_jku/lookalike_jku).
local forgers = {}

forgers.alg_none = function(signer, payload)
  local h = header_for(signer, { alg = "none" })
  return b64e(encode(h)) .. "." .. b64e(encode(stamp(payload))) .. "."
end

forgers.hs512 = function(signer, payload)
  -- The classic key-confusion attack: HMAC keyed with the public key PEM the JWKS serves.
  local input = b64e(encode(header_for(signer, { alg = "HS512" }))) .. "."
                .. b64e(encode(stamp(payload)))
  return input .. "." .. b64e(hmac_sha512(signer.pem, input))
end

forgers.rs512 = function(signer, payload)
  local input = b64e(encode(header_for(signer, { alg = "RS512" }))) .. "."
                .. b64e(encode(stamp(payload)))
  return input .. "." .. b64e(rs512(signer.key:private_pem(), input))
end

forgers.pss_salt32 = function(signer, payload)
  local input = b64e(encode(header_for(signer))) .. "." .. b64e(encode(stamp(payload)))
  return input .. "." .. b64e(signer.key:sign_ps512(input, 32))
end

forgers.wrong_kid = function(signer, payload)
  return _M.sign_ps512(signer.key, header_for(signer, { kid = "unknown-" .. core.random_alnum(8) }),
                       stamp(payload))
end

forgers.no_kid = function(signer, payload)
  return _M.sign_ps512(signer.key, header_for(signer, { kid = false }), stamp(payload))
end

forgers.foreign_jku = function(signer, payload, opts)
  -- Signed with the foreign key that /evil/jwks serves, under the genuine kid: a client that
  -- fetched the jku would find a matching key (and might cache it under that kid).
  return _M.sign_ps512(signer.evil_key,
                       header_for(signer, { jku = opts.jku or signer.evil_jku }), stamp(payload))
end

forgers.lookalike_jku = function(signer, payload, opts)
  -- A URL that starts with the genuine jku; the sandbox serves the foreign JWKS there too.
  return _M.sign_ps512(signer.evil_key,
                       header_for(signer, { jku = opts.jku or signer.lookalike_jku }),
                       stamp(payload))
end

forgers.tampered_payload = function(signer, payload)
  local jwt = _M.server_token(signer, payload)
  local h64, _, s64 = jwt:match("^([^.]+)%.([^.]+)%.([^.]+)$")
  local p = stamp(payload)
  p.tampered = true
  if p.sub then
    p.sub = "attacker"
  end
  return h64 .. "." .. b64e(encode(p)) .. "." .. s64
end

forgers.tampered_signature = function(signer, payload)
  local jwt = _M.server_token(signer, payload)
  local input, s64 = jwt:match("^(.+)%.([^.]+)$")
  return input .. "." .. b64e(flip_last_bit(b64d(s64)))
end

forgers.expired = function(signer, payload)
  local now = os_time()
  local p = stamp(payload, now - 3600 - 300)   -- exp = now - 3600
  return _M.sign_ps512(signer.key, header_for(signer), p)
end

forgers.not_yet_valid = function(signer, payload)
  local p = stamp(payload)
  p.nbf = os_time() + 3600
  return _M.sign_ps512(signer.key, header_for(signer), p)
end

forgers.not_json = function(signer)
  local input = b64e(encode(header_for(signer))) .. "." .. b64e("this is not JSON {")
  return input .. "." .. b64e(signer.key:sign_ps512(input))
end

forgers.two_parts = function(signer, payload)
  local jwt = _M.server_token(signer, payload)
  return (jwt:match("^(.+)%.[^.]+$"))
end

forgers.oversized = function(signer, payload)
  local p = stamp(payload)
  p.padding = string.rep("A", 70 * 1024)
  return _M.sign_ps512(signer.key, header_for(signer), p)
end

forgers.wrong_alg_header = function(signer, payload)
  return _M.sign_ps512(signer.key, header_for(signer, { alg = "RS256" }), stamp(payload))
end

_M.hostile_kinds = {}
for k in pairs(forgers) do
  _M.hostile_kinds[#_M.hostile_kinds + 1] = k
end
table.sort(_M.hostile_kinds)

function _M.is_hostile_kind(kind)
  return forgers[kind] ~= nil
end

function _M.hostile(kind, signer, payload, opts)
  local f = forgers[kind]
  if not f then
    return nil, "unknown token fault " .. tostring(kind) .. " (one of "
                .. concat(_M.hostile_kinds, ", ") .. ")"
  end
  return f(signer, payload, opts or {})
end

return _M
