-- --tls: an HTTPS context for the sandbox.
--
-- Without --cert/--key a throw-away CA is made at start (luaossl), with a server certificate
-- for 127.0.0.1, ::1, localhost and the listening host; the CA certificate is written to a
-- temporary file that clients pass as their CA file (reported as ca_file) and that is removed
-- when the sandbox stops. With --cert/--key those files are served, and the certificate file
-- is reported as ca_file (right for a self-signed certificate; otherwise give clients your CA).
--
-- Only HTTP/1.1 is offered (no ALPN h2): the connection faults (reset, truncate) act on the
-- HTTP/1.1 connection.

local x509 = require "openssl.x509"
local name = require "openssl.x509.name"
local altname = require "openssl.x509.altname"
local extension = require "openssl.x509.extension"
local pkey = require "openssl.pkey"
local bignum = require "openssl.bignum"
local rand = require "openssl.rand"
local http_tls = require "http.tls"
local util = require "digime.sandbox.util"

local os_time = os.time

local _M = {}

local function new_key()
  -- EC keys: quick to make, and every TLS client takes them.
  return pkey.new{ type = "EC", curve = "prime256v1" }
end

local function serial()
  return bignum.fromBinary(rand.bytes(16))
end

-- A version 3 certificate of a new key, with a random serial and this common name.
local function new_cert(cn)
  local key = new_key()
  local crt = x509.new()
  crt:setVersion(3)
  crt:setSerial(serial())
  local dn = name.new()
  dn:add("CN", cn)
  crt:setSubject(dn)
  return crt, key, dn
end

local function make_ca()
  local crt, key, dn = new_cert("digi.me sandbox throw-away CA")
  crt:setIssuer(dn)
  crt:setLifetime(os_time() - 3600, os_time() + 7 * 86400)
  crt:setBasicConstraints{ CA = true, pathLen = 0 }
  crt:setBasicConstraintsCritical(true)
  crt:addExtension(extension.new("keyUsage", "critical,keyCertSign,cRLSign"))
  crt:setPublicKey(key)
  assert(crt:sign(key))
  return crt, key
end

local function make_server_cert(ca, ca_key, host)
  local crt, key = new_cert("localhost")
  crt:setIssuer(ca:getSubject())
  local alt = altname.new()
  alt:add("DNS", "localhost")
  alt:add("IP", "127.0.0.1")
  alt:add("IP", "::1")
  if host and host ~= "localhost" and host ~= "127.0.0.1" and host ~= "::1" then
    if host:match("^[%d%.]+$") or host:find(":", 1, true) then
      alt:add("IP", host)
    else
      alt:add("DNS", host)
    end
  end
  crt:setSubjectAlt(alt)
  crt:setLifetime(os_time() - 3600, os_time() + 7 * 86400)
  crt:setBasicConstraints{ CA = false }
  crt:setBasicConstraintsCritical(true)
  crt:addExtension(extension.new("keyUsage", "critical,digitalSignature,keyEncipherment"))
  crt:addExtension(extension.new("extendedKeyUsage", "serverAuth"))
  crt:setPublicKey(key)
  assert(crt:sign(ca_key))
  return crt, key
end

local read_file = util.read_file

-- -> { ctx, ca_file, cleanup = function } | nil, err
function _M.setup(cfg)
  local ctx = http_tls.new_server_context()
  if ctx.setGroups then
    -- lua-http offers P-521 first and no X25519: a client whose key share is X25519 (curl,
    -- OpenSSL's default) would pay a HelloRetryRequest, one more round trip, on every
    -- full handshake. Real servers take X25519.
    ctx:setGroups("X25519:P-256:P-384:P-521")
  end
  if cfg.cert then
    local cert_pem, err = read_file(cfg.cert)
    if not cert_pem then
      return nil, "--cert: " .. tostring(err)
    end
    local key_pem, err2 = read_file(cfg.key)
    if not key_pem then
      return nil, "--key: " .. tostring(err2)
    end
    local ok_c, crt = pcall(x509.new, cert_pem)
    local ok_k, key = pcall(pkey.new, key_pem)
    if not ok_c or not ok_k then
      return nil, "--cert/--key: not a PEM certificate and key"
    end
    assert(ctx:setCertificate(crt))
    assert(ctx:setPrivateKey(key))
    return { ctx = ctx, ca_file = cfg.cert, cleanup = function() end }
  end

  local ca, ca_key = make_ca()
  local crt, key = make_server_cert(ca, ca_key, cfg.host)
  assert(ctx:setCertificate(crt))
  assert(ctx:setPrivateKey(key))
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(ca:toPEM())
  f:close()
  return {
    ctx = ctx,
    ca_file = path,
    cleanup = function()
      os.remove(path)
    end,
  }
end

return _M
