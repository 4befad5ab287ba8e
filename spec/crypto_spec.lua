-- The core's crypto against the openssl command line: signatures, key formats, OAEP,
-- base64url and PKCE vectors, randomness.
local core = require "digime.core"
local sh = require "shell"
local q = sh.quote

local PSS = "-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:%d -sigopt rsa_mgf1_md:sha512"

describe("core crypto", function()
  local dir, pkcs1_path, pkcs8_path, pub_path

  setup(function()
    dir = sh.tmpdir()
    pkcs1_path = dir .. "/pkcs1.pem"
    pkcs8_path = dir .. "/pkcs8.pem"
    pub_path = dir .. "/pub.pem"
    assert(sh.run("openssl genrsa -traditional -out " .. q(pkcs1_path) .. " 2048"))
    assert(sh.run("openssl pkcs8 -topk8 -nocrypt -in " .. q(pkcs1_path) .. " -out " .. q(pkcs8_path)))
    assert(sh.run("openssl rsa -in " .. q(pkcs1_path) .. " -pubout -out " .. q(pub_path)))
  end)

  teardown(function() sh.rmdir(dir) end)

  local function openssl_verify(pub, data, sig, saltlen)
    sh.write(dir .. "/data", data)
    sh.write(dir .. "/sig", sig)
    return sh.run(("openssl dgst -sha512 " .. PSS .. " -verify %s -signature %s %s")
      :format(saltlen, q(pub), q(dir .. "/sig"), q(dir .. "/data")))
  end

  local function openssl_sign(key_path, data, saltlen)
    sh.write(dir .. "/data", data)
    assert(sh.run(("openssl dgst -sha512 " .. PSS .. " -sign %s -out %s %s")
      :format(saltlen, q(key_path), q(dir .. "/osig"), q(dir .. "/data"))))
    return sh.read(dir .. "/osig")
  end

  describe("PS512", function()
    it("signs with a PKCS#1 and a PKCS#8 key, and openssl verifies both with salt 64", function()
      for _, path in ipairs{ pkcs1_path, pkcs8_path } do
        local key = assert(core.private_key(sh.read(path)))
        local data = "eyJhbGciOiJQUzUxMiJ9.payload-" .. path
        local sig = assert(key:sign_ps512(data))
        assert.equal(256, #sig)
        local ok, out = openssl_verify(pub_path, data, sig, 64)
        assert.is_true(ok, out)
        assert.matches("Verified OK", out)
      end
    end)

    it("verifies a signature made by openssl", function()
      local data = "header.payload\0with a NUL"
      local sig = openssl_sign(pkcs1_path, data, 64)
      local pub = assert(core.public_key(sh.read(pub_path)))
      assert.is_true(pub:verify_ps512(data, sig))
      local ok, err = pub:verify_ps512(data .. "x", sig)
      assert.is_false(ok)
      assert.is_string(err)
    end)

    it("refuses a salt-32 PSS signature made by openssl", function()
      local data = "header.payload"
      local sig = openssl_sign(pkcs1_path, data, 32)
      local pub = assert(core.public_key(sh.read(pub_path)))
      local ok, err = pub:verify_ps512(data, sig)
      assert.is_false(ok)
      assert.matches("verification failed", err)
    end)

    it("refuses its own salt-32 signature too (the salt length is pinned on verify)", function()
      local key = assert(core.private_key(sh.read(pkcs1_path)))
      local sig = assert(key:sign_ps512("x", 32))
      assert.is_true((openssl_verify(pub_path, "x", sig, 32)))
      assert.is_false((key:verify_ps512("x", sig)))
    end)

    it("refuses truncated, empty and foreign signatures", function()
      local key = assert(core.private_key(sh.read(pkcs1_path)))
      local other = core.generate_key(2048)
      local sig = key:sign_ps512("data")
      assert.is_false((key:verify_ps512("data", sig:sub(1, 255))))
      assert.is_false((key:verify_ps512("data", "")))
      assert.is_false((other:verify_ps512("data", sig)))
    end)

    it("raises when asked to sign with a public key", function()
      local pub = assert(core.public_key(sh.read(pub_path)))
      assert.has_error(function() pub:sign_ps512("x") end)
    end)

    it("signs again and again with one key object (its context is kept), a salt-32 signature between", function()
      local key = assert(core.private_key(sh.read(pkcs8_path)))
      local salts = { 64, 64, 32, 64 }
      local sigs = {}
      for i, salt in ipairs(salts) do
        sigs[i] = assert(key:sign_ps512("message " .. i, salt))
      end
      for i, salt in ipairs(salts) do
        local ok, out = openssl_verify(pub_path, "message " .. i, sigs[i], salt)
        assert.is_true(ok, "signature " .. i .. ": " .. tostring(out))
      end
      assert.are_not.equal(sigs[1], assert(key:sign_ps512("message 1")))   -- a fresh salt each time
    end)
  end)

  describe("keys", function()
    it("reads public keys as SPKI, PKCS#1, certificate and JWK, all the same key", function()
      local key = assert(core.private_key(sh.read(pkcs1_path)))
      local sig = key:sign_ps512("same key")
      assert(sh.run("openssl rsa -in " .. q(pkcs1_path) .. " -RSAPublicKey_out -out " .. q(dir .. "/rsapub.pem")))
      assert(sh.run("openssl req -x509 -new -key " .. q(pkcs1_path) .. " -subj /CN=test -days 1 -out "
        .. q(dir .. "/cert.pem")))
      local rsapub = sh.read(dir .. "/rsapub.pem")
      assert.matches("BEGIN RSA PUBLIC KEY", rsapub)
      local forms = {
        assert(core.public_key(sh.read(pub_path))),
        assert(core.public_key(rsapub)),
        assert(core.public_key(sh.read(dir .. "/cert.pem"))),
        assert(core.public_key_jwk(key:jwk())),
      }
      for _, pub in ipairs(forms) do
        assert.is_false(pub:is_private())
        assert.equal(2048, pub:bits())
        assert.is_true(pub:verify_ps512("same key", sig))
      end
    end)

    it("gives the modulus openssl reports", function()
      local key = assert(core.private_key(sh.read(pkcs1_path)))
      local _, out = sh.run("openssl rsa -in " .. q(pkcs1_path) .. " -noout -modulus")
      local hex = out:match("Modulus=(%x+)")
      local n = assert(core.b64url_decode((key:jwk())))
      assert.equal(hex:upper(), (n:gsub(".", function(c) return ("%02X"):format(c:byte()) end)))
    end)

    it("writes PEMs that openssl reads back", function()
      local key = assert(core.private_key(sh.read(pkcs8_path)))
      for fmt, label in pairs{ pkcs1 = "BEGIN RSA PRIVATE KEY", pkcs8 = "BEGIN PRIVATE KEY" } do
        local pem = key:private_pem(fmt)
        assert.matches(label, pem, 1, true)
        sh.write(dir .. "/out.pem", pem)
        assert.is_true((sh.run("openssl rsa -check -noout -in " .. q(dir .. "/out.pem"))))
      end
      assert.matches("BEGIN PUBLIC KEY", key:public_pem(), 1, true)
      assert.matches("BEGIN RSA PUBLIC KEY", key:public_pem("pkcs1"), 1, true)
      assert.has_error(function() key:public_pem("der") end)
    end)

    it("returns nil, err for bad keys and never prompts for a passphrase", function()
      assert(sh.run("openssl genrsa -aes128 -passout pass:secret -out " .. q(dir .. "/enc.pem") .. " 2048"))
      assert(sh.run("openssl ecparam -name prime256v1 -genkey -noout -out " .. q(dir .. "/ec.pem")))
      local pub_pem = sh.read(pub_path)
      local bad_private = {
        "", "garbage", sh.read(dir .. "/enc.pem"), sh.read(dir .. "/ec.pem"), pub_pem,
        sh.read(pkcs1_path):sub(1, 400),
        (sh.read(pkcs1_path):gsub("\n[A-Za-z0-9+/]+\n", "\nAAAA\n", 1)),
      }
      for i, pem in ipairs(bad_private) do
        local key, err = core.private_key(pem)
        assert.is_nil(key, "case " .. i)
        assert.is_string(err)
        assert.not_matches("MII", err)  -- no key material in the message
      end
      for _, pem in ipairs{ "", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                            pub_pem:sub(1, 200), sh.read(dir .. "/ec.pem") } do
        local key, err = core.public_key(pem)
        assert.is_nil(key)
        assert.is_string(err)
      end
      for _, ne in ipairs{ { "", "AQAB" }, { "AQAB", "" }, { "!!", "AQAB" }, { "AQAB", "AQAB" },
                           { ("A"):rep(5000), "AQAB" } } do
        local key, err = core.public_key_jwk(ne[1], ne[2])
        assert.is_nil(key)
        assert.is_string(err)
      end
    end)

    it("raises on misuse", function()
      assert.has_error(function() core.private_key(nil) end)
      assert.has_error(function() core.private_key({}) end)
      assert.has_error(function() core.generate_key(100) end)
      local key = assert(core.private_key(sh.read(pkcs1_path)))
      assert.has_error(function() key.bits({}) end)
      assert.has_error(function() key:sign_ps512(nil) end)
    end)
  end)

  describe("RSA-OAEP (SHA-1)", function()
    it("interoperates with openssl pkeyutl both ways", function()
      local key = assert(core.private_key(sh.read(pkcs1_path)))
      local secret = core.random_bytes(32)
      sh.write(dir .. "/ct", key:oaep_encrypt(secret))
      local opts = "-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1"
      assert(sh.run("openssl pkeyutl -decrypt -inkey " .. q(pkcs1_path) .. " " .. opts ..
        " -in " .. q(dir .. "/ct") .. " -out " .. q(dir .. "/pt")))
      assert.equal(secret, sh.read(dir .. "/pt"))
      assert(sh.run("openssl pkeyutl -encrypt -pubin -inkey " .. q(pub_path) .. " " .. opts ..
        " -in " .. q(dir .. "/pt") .. " -out " .. q(dir .. "/ct2")))
      assert.equal(secret, key:oaep_decrypt(sh.read(dir .. "/ct2")))
    end)

    it("decrypts with one key object again and again, before and after a failure", function()
      local key = assert(core.private_key(sh.read(pkcs1_path)))
      local opts = "-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1"
      for i = 1, 3 do
        local secret = core.random_bytes(32)
        sh.write(dir .. "/pt", secret)
        assert(sh.run("openssl pkeyutl -encrypt -pubin -inkey " .. q(pub_path) .. " " .. opts ..
          " -in " .. q(dir .. "/pt") .. " -out " .. q(dir .. "/ct")))
        local ct = sh.read(dir .. "/ct")
        assert.equal(secret, key:oaep_decrypt(ct), "round " .. i)
        assert.is_nil((key:oaep_decrypt(ct:sub(1, 255) .. "\0")))
      end
      local pub = assert(core.public_key(sh.read(pub_path)))
      assert.error_matches(function() pub:oaep_decrypt(("\0"):rep(256)) end, "a private key is required")
    end)

    it("fails with one message for a wrong key or corrupt data", function()
      local key = assert(core.private_key(sh.read(pkcs1_path)))
      local other = core.generate_key(2048)
      local ct = other:oaep_encrypt("secret")
      local _, e1 = key:oaep_decrypt(ct)
      local _, e2 = key:oaep_decrypt(ct:sub(2))
      local _, e3 = key:oaep_decrypt(("\0"):rep(256))
      assert.is_string(e1)
      assert.equal(e1, e2)
      assert.equal(e1, e3)
    end)
  end)

  describe("base64url", function()
    local vectors = { [""] = "", f = "Zg", fo = "Zm8", foo = "Zm9v", foob = "Zm9vYg",
                      fooba = "Zm9vYmE", foobar = "Zm9vYmFy", ["\251\255"] = "-_8" }

    it("encodes and decodes the RFC 4648 vectors", function()
      for plain, encoded in pairs(vectors) do
        assert.equal(encoded, core.b64url_encode(plain))
        assert.equal(plain, core.b64url_decode(encoded))
      end
    end)

    it("matches openssl base64 on random bytes", function()
      for _, n in ipairs{ 1, 2, 3, 31, 32, 33, 100, 1000 } do
        local bytes = core.random_bytes(n)
        sh.write(dir .. "/rnd", bytes)
        local _, out = sh.run("openssl base64 -A -in " .. q(dir .. "/rnd"))
        local expected = out:gsub("%s", ""):gsub("=", ""):gsub("+", "-"):gsub("/", "_")
        assert.equal(expected, core.b64url_encode(bytes))
        assert.equal(bytes, core.b64url_decode(expected))
      end
    end)

    it("is strict: padding, other alphabets, bad lengths and stray bits are errors", function()
      for _, bad in ipairs{ "Zg==", "Zm9v+", "Zm9v/", "Zm 9v", "Z", "Zh", "Zm9", "Zm8=", "é", "Zm\0v" } do
        local v, err = core.b64url_decode(bad)
        assert.is_nil(v, bad)
        assert.is_string(err)
      end
    end)

    it("decodes base64 and base64url with optional padding in lenient mode", function()
      assert.equal("foob", core.b64_decode("Zm9vYg=="))
      assert.equal("foob", core.b64_decode("Zm9vYg"))
      assert.equal("\251\255", core.b64_decode("+/8="))
      assert.equal("\251\255", core.b64_decode("-_8"))
      assert.is_nil((core.b64_decode("Zm9vYg=")))
      assert.is_nil((core.b64_decode("Zm9v!")))
    end)
  end)

  describe("digests and PKCE", function()
    it("gives openssl's SHA-256 and SHA-512", function()
      local data = core.random_bytes(1000)
      sh.write(dir .. "/d", data)
      local _, out = sh.run("openssl dgst -sha256 -r " .. q(dir .. "/d"))
      local hex = core.sha256(data):gsub(".", function(c) return ("%02x"):format(c:byte()) end)
      assert.equal(out:match("^(%x+)"), hex)
      _, out = sh.run("openssl dgst -sha512 -r " .. q(dir .. "/d"))
      hex = core.sha512(data):gsub(".", function(c) return ("%02x"):format(c:byte()) end)
      assert.equal(out:match("^(%x+)"), hex)
    end)

    it("reproduces the PKCE worked example (doc/protocol.md, PKCE)", function()
      local verifier = core.b64url_encode("AbCdEfGhIjKlMnOpQrStUvWxYz012345")
      assert.equal("QWJDZEVmR2hJaktsTW5PcFFyU3RVdld4WXowMTIzNDU", verifier)
      assert.equal("xgldXNRKBKPXZyvsYdm-UEx9blFRAZ_teqEY8jAH3M8",
        core.b64url_encode(core.sha256(verifier)))
    end)

    it("matches the RFC 7636 appendix B S256 vector", function()
      assert.equal("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        core.b64url_encode(core.sha256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")))
    end)
  end)

  describe("random", function()
    it("gives alphanumeric strings of the asked length, all different", function()
      assert.equal(10, #core.random_alnum(10))
      assert.equal(1000, #core.random_alnum(1000))
      assert.matches("^[%w]+$", core.random_alnum(100))
      assert.not_equal(core.random_alnum(32), core.random_alnum(32))
      assert.equal(0, #core.random_bytes(0))
      assert.equal(33, #core.random_bytes(33))
    end)

    it("uses the 62 characters about evenly (chi-square)", function()
      local counts, n = {}, 62 * 2000
      local s = core.random_alnum(n)
      for i = 1, n do
        local c = s:sub(i, i)
        counts[c] = (counts[c] or 0) + 1
      end
      local chi, seen = 0, 0
      for _, c in pairs(counts) do
        seen = seen + 1
        chi = chi + (c - 2000) ^ 2 / 2000
      end
      assert.equal(62, seen)
      -- 61 degrees of freedom: p < 1e-6 beyond about 130. A modulo bias of 256 % 62 would
      -- put 8 characters 25% over and give a chi-square in the thousands.
      assert.is_true(chi < 130, "chi-square " .. chi)
    end)

    it("raises on bad sizes", function()
      assert.has_error(function() core.random_alnum(0) end)
      assert.has_error(function() core.random_alnum(-1) end)
      assert.has_error(function() core.random_bytes(1.5) end)
      assert.has_error(function() core.random_bytes("x") end)
    end)
  end)
end)
