-- The digi.me file format in the core (core.file_decryptor, core.file_encryptor, core.inflater)
-- against the openssl, gzip and brotli command lines, and the HTTP engine feeding response
-- bodies through a decryptor in C (engine:add{ pipeline = ... }) against tiny_server.lua.
local core = require "digime.core"
local socket = require "socket"
local cjson = require "cjson"
local sh = require "shell"
local q = sh.quote

local SANITIZED = os.getenv("DIGIME_SANITIZED") ~= nil
local LUAJIT = rawget(_G, "jit") ~= nil
local FAILED = "file decryption failed (wrong key or corrupt data)"

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- A byte with its bits flipped by mask (no bit operators: this runs under LuaJIT too).
local function flip(s, i, mask)
  local b, r, bit = s:byte(i), 0, 1
  for _ = 1, 8 do
    if (b % 2 == 1) ~= (mask % 2 == 1) then r = r + bit end
    b, mask, bit = math.floor(b / 2), math.floor(mask / 2), bit * 2
  end
  return s:sub(1, i - 1) .. string.char(r) .. s:sub(i + 1)
end

local function run(cmd)
  local ok, out = sh.run(cmd)
  assert(ok, cmd .. "\n" .. out)
  return out
end

-- Text whose every byte is >= 0x20: a block of it never ends in valid PKCS#7 padding.
local function text(n)
  local s = ("The quick brown fox jumps over the lazy dog. "):rep(math.floor(n / 40) + 2)
  return s:sub(1, n)
end

-- Feeds data to a new decryptor in pieces of `step` bytes; returns the plaintext, or nil, err
-- (from whichever call failed first).
local function decrypt(key, data, step, opts)
  local d = assert(core.file_decryptor(key, opts))
  local out = {}
  step = step or #data
  for i = 1, #data, math.max(step, 1) do
    local s, err = d:update(data:sub(i, i + step - 1))
    if not s then d:close() return nil, err end
    out[#out + 1] = s
  end
  local s, err = d:finish()
  d:close()
  if not s then return nil, err end
  out[#out + 1] = s
  return table.concat(out)
end

local function encrypt(key, data, step)
  local e = core.file_encryptor(key)
  local out = {}
  step = step or math.max(#data, 1)
  for i = 1, #data, step do out[#out + 1] = e:update(data:sub(i, i + step - 1)) end
  out[#out + 1] = e:finish()
  e:close()
  return table.concat(out)
end

local function inflate(kind, data, step, opts)
  local z = core.inflater(kind, opts)
  local out = {}
  step = step or math.max(#data, 1)
  for i = 1, #data, step do
    local s, err = z:update(data:sub(i, i + step - 1))
    if not s then return nil, err end
    out[#out + 1] = s
  end
  local s, err = z:finish()
  if not s then return nil, err end
  out[#out + 1] = s
  return table.concat(out)
end

describe("file format", function()
  local dir, keys, brotli_cmd

  -- Encrypts the file at `plain` the way the Node SDK's test helper does, with the
  -- openssl command line only; returns the file's bytes.
  local function openssl_file(pub_path, plain, nopad)
    local aes, iv = dir .. "/aes.bin", dir .. "/iv.bin"
    run(("openssl rand -out %s 32 && openssl rand -out %s 16"):format(q(aes), q(iv)))
    run(("openssl pkeyutl -encrypt -pubin -inkey %s -pkeyopt rsa_padding_mode:oaep"
      .. " -pkeyopt rsa_oaep_md:sha1 -in %s -out %s"):format(q(pub_path), q(aes), q(dir .. "/wrapped.bin")))
    run(("openssl enc -aes-256-cbc %s -K %s -iv %s -in %s -out %s"):format(nopad and "-nopad" or "",
      hex(sh.read(aes)), hex(sh.read(iv)), q(plain), q(dir .. "/body.bin")))
    return sh.read(dir .. "/wrapped.bin") .. sh.read(iv) .. sh.read(dir .. "/body.bin")
  end

  -- Decrypts a file with the openssl command line; returns the plaintext.
  local function openssl_decrypt(key_path, keysize, file)
    sh.write(dir .. "/wrapped.bin", file:sub(1, keysize))
    sh.write(dir .. "/body.bin", file:sub(keysize + 17))
    run(("openssl pkeyutl -decrypt -inkey %s -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1"
      .. " -in %s -out %s"):format(q(key_path), q(dir .. "/wrapped.bin"), q(dir .. "/aes.bin")))
    run(("openssl enc -d -aes-256-cbc -K %s -iv %s -in %s -out %s"):format(hex(sh.read(dir .. "/aes.bin")),
      hex(file:sub(keysize + 1, keysize + 16)), q(dir .. "/body.bin"), q(dir .. "/plain.out")))
    return sh.read(dir .. "/plain.out")
  end

  local function gzip(data)
    sh.write(dir .. "/gz.in", data)
    run(("gzip -c %s > %s"):format(q(dir .. "/gz.in"), q(dir .. "/gz.out")))
    return sh.read(dir .. "/gz.out")
  end

  local function brotli(data)
    sh.write(dir .. "/br.in", data)
    run(("%s < %s > %s"):format(brotli_cmd, q(dir .. "/br.in"), q(dir .. "/br.out")))
    return sh.read(dir .. "/br.out")
  end

  setup(function()
    dir = sh.tmpdir()
    keys = {}
    for _, k in ipairs{ { "k2048", 2048 }, { "k3072", 3072 }, { "k4096", 4096 } } do
      local path = dir .. "/" .. k[1] .. ".pem"
      run(("openssl genrsa -traditional -out %s %d"):format(q(path), k[2]))
      run(("openssl rsa -in %s -pubout -out %s"):format(q(path), q(path .. ".pub")))
      keys[k[1]] = { path = path, pub = path .. ".pub", bits = k[2], size = math.floor(k[2] / 8),
                     key = assert(core.private_key(sh.read(path))) }
    end
    local p8 = dir .. "/k2048.p8.pem"
    run(("openssl pkcs8 -topk8 -nocrypt -in %s -out %s"):format(q(keys.k2048.path), q(p8)))
    assert.matches("BEGIN PRIVATE KEY", sh.read(p8))
    assert.matches("BEGIN RSA PRIVATE KEY", sh.read(keys.k2048.path))
    keys.pkcs8 = { path = p8, pub = keys.k2048.pub, size = 256, key = assert(core.private_key(sh.read(p8))) }
    keys.other = { key = core.generate_key(2048) }
    -- brotli data from the brotli command line (Debian package brotli), or else from a small
    -- C helper built against libbrotlienc
    if sh.run("command -v brotli") then
      brotli_cmd = "brotli -c"
    else
      sh.write(dir .. "/brc.c", [[
#include <stdio.h>
#include <stdlib.h>
#include <brotli/encode.h>
int main(void) {
  size_t cap = 1 << 20, n = 0, r; unsigned char *in = malloc(cap);
  while ((r = fread(in + n, 1, cap - n, stdin)) > 0) { n += r; if (n == cap) in = realloc(in, cap *= 2); }
  size_t outn = BrotliEncoderMaxCompressedSize(n) + 16; unsigned char *out = malloc(outn);
  if (!BrotliEncoderCompress(9, 22, BROTLI_MODE_GENERIC, n, in, &outn, out)) return 1;
  fwrite(out, 1, outn, stdout); return 0;
}]])
      run(("cc -O1 -o %s %s $(pkg-config --cflags --libs libbrotlienc)"):format(q(dir .. "/brc"), q(dir .. "/brc.c")))
      brotli_cmd = q(dir .. "/brc")
    end
  end)

  teardown(function() sh.rmdir(dir) end)

  describe("decryptor", function()
    it("decrypts openssl-made files fed in pieces of 1, 7, 4096 bytes and whole", function()
      local plain = sh.read(sh.write(dir .. "/plain", core.random_bytes(10007)))
      for _, name in ipairs{ "k2048", "pkcs8" } do
        local k = keys[name]
        local file = openssl_file(k.pub, dir .. "/plain")
        assert.equal(k.size + 16 + 10016, #file)
        for _, step in ipairs{ 1, 7, 4096, #file } do
          assert.equal(plain, decrypt(k.key, file, step), name .. " in pieces of " .. step)
        end
      end
    end)

    it("takes the key segment's length from the modulus (3072- and 4096-bit keys)", function()
      sh.write(dir .. "/plain", text(1000))
      for _, name in ipairs{ "k3072", "k4096" } do
        local k = keys[name]
        assert.equal(k.size, k.key:size())
        local file = openssl_file(k.pub, dir .. "/plain")
        assert.equal(k.size + 16 + 1008, #file)
        assert.equal(text(1000), decrypt(k.key, file, 7))
        assert.equal(text(1000), decrypt(k.key, file))
        -- and the size rule moves with it
        local _, err = decrypt(k.key, file:sub(1, 288))
        assert.equal("File size not valid: 288", err)
      end
    end)

    it("applies the size rule: 288 and 304 valid, 200, 290, 250, 287 not (2048-bit key)", function()
      local k = keys.k2048
      -- declared in advance: judged before any decryption, even of random bytes
      for _, n in ipairs{ 288, 304 } do
        assert.is_not_nil(core.file_decryptor(k.key, { size = n }))
      end
      for _, n in ipairs{ 200, 290, 250, 287, 0, 272, 256 } do
        local d, err = core.file_decryptor(k.key, { size = n })
        assert.is_nil(d)
        assert.equal("File size not valid: " .. n, err)
      end
      -- found at the end of real files
      sh.write(dir .. "/plain", text(16))
      local file = openssl_file(k.pub, dir .. "/plain")
      assert.equal(304, #file)
      assert.equal(text(16), decrypt(k.key, file))
      sh.write(dir .. "/plain", "")
      local empty = openssl_file(k.pub, dir .. "/plain")
      assert.equal(288, #empty)
      assert.equal("", decrypt(k.key, empty))
      for _, n in ipairs{ 200, 290, 250, 287 } do
        for _, step in ipairs{ 1, 100, n } do
          local out, err = decrypt(k.key, file:sub(1, n), step)
          assert.is_nil(out)
          assert.equal("File size not valid: " .. n, err)
        end
      end
    end)

    it("gives one message for a wrong key, a corrupt key segment and bad padding", function()
      local k = keys.k2048
      sh.write(dir .. "/plain", text(100))
      local file = openssl_file(k.pub, dir .. "/plain")
      for _, step in ipairs{ 1, 300, #file } do
        assert.same({ nil, FAILED }, { decrypt(keys.other.key, file, step) })
      end
      local flipped = flip(file, 10, 1)
      assert.same({ nil, FAILED }, { decrypt(k.key, flipped) })
      -- a last block that does not end in PKCS#7 padding (openssl enc -nopad of text)
      sh.write(dir .. "/plain", text(64))
      local nopad = openssl_file(k.pub, dir .. "/plain", true)
      assert.equal(256 + 16 + 64, #nopad)
      assert.same({ nil, FAILED }, { decrypt(k.key, nopad) })
      assert.same({ nil, FAILED }, { decrypt(k.key, nopad, 5) })
    end)

    it("never passes a truncated or extended file", function()
      local k = keys.k2048
      sh.write(dir .. "/plain", text(100))
      local file = openssl_file(k.pub, dir .. "/plain")   -- 256 + 16 + 112
      -- cut at a block boundary: the new last block is text, so its padding is invalid
      assert.same({ nil, FAILED }, { decrypt(k.key, file:sub(1, #file - 16)) })
      assert.same({ nil, FAILED }, { decrypt(k.key, file:sub(1, #file - 32), 1) })
      -- cut elsewhere
      assert.same({ nil, "File size not valid: " .. (#file - 5) }, { decrypt(k.key, file:sub(1, #file - 5)) })
      assert.same({ nil, "File size not valid: 100" }, { decrypt(k.key, file:sub(1, 100)) })
      assert.same({ nil, "File size not valid: 0" }, { decrypt(k.key, "") })
      -- the reference SDK's "corrupt length" fixture: 5 bytes "extra" appended
      assert.same({ nil, "File size not valid: " .. (#file + 5) }, { decrypt(k.key, file .. "extra") })
      -- a declared size that the data does not reach, or exceeds
      assert.same({ nil, ("file truncated: %d of %d bytes"):format(#file - 16, #file) },
        { decrypt(k.key, file:sub(1, #file - 16), 50, { size = #file }) })
      assert.same({ nil, ("file longer than its declared size (%d bytes)"):format(#file - 16) },
        { decrypt(k.key, file, 50, { size = #file - 16 }) })
      assert.equal(text(100), decrypt(k.key, file, 50, { size = #file }))
    end)

    it("keeps its own reference to the key", function()
      local file = encrypt(keys.k2048.key, "kept")
      local d = (function()
        local k = assert(core.private_key(sh.read(keys.k2048.path)))
        return core.file_decryptor(k)
      end)()
      collectgarbage()
      collectgarbage()
      assert.equal("kept", d:update(file) .. d:finish())
    end)

    it("stays failed after a failure and hands out no more output", function()
      local k = keys.k2048
      sh.write(dir .. "/plain", text(5000))
      local file = openssl_file(k.pub, dir .. "/plain")
      local d = core.file_decryptor(keys.other.key)
      assert.same({ nil, FAILED }, { d:update(file:sub(1, 300)) })
      assert.same({ nil, FAILED }, { d:update(file:sub(301)) })
      assert.same({ nil, FAILED }, { d:finish() })
      -- padding failure at the end after plaintext was handed out: finish fails
      d = core.file_decryptor(k.key)
      local got = assert(d:update(file:sub(1, #file - 16)))
      assert.is_true(#got > 0)
      assert.same({ nil, FAILED }, { d:finish() })
    end)
  end)

  describe("encryptor", function()
    it("writes files that the openssl command line decrypts, with every key size", function()
      local plain = core.random_bytes(70001)
      for _, name in ipairs{ "k2048", "k3072", "k4096" } do
        local k = keys[name]
        for _, step in ipairs{ 1000, 70001 } do
          local file = encrypt(k.key, plain, step)
          assert.equal(k.size + 16 + 70016, #file)
          assert.equal(plain, openssl_decrypt(k.path, k.size, file), name)
          assert.equal(plain, decrypt(k.key, file, 4096))
        end
      end
    end)

    it("encrypts with a public key too", function()
      local k = keys.k2048
      local pub = assert(core.public_key(sh.read(k.pub)))
      local file = encrypt(pub, "public")
      assert.equal("public", decrypt(k.key, file))
      assert.equal("public", openssl_decrypt(k.path, 256, file))
    end)

    it("turns an empty input into a whole, decryptable file of keysize + 32 bytes", function()
      for _, name in ipairs{ "k2048", "k4096" } do
        local k = keys[name]
        local e = core.file_encryptor(k.key)
        local file = e:finish()
        assert.equal(k.size + 32, #file)
        assert.equal("", decrypt(k.key, file))
        assert.equal("", openssl_decrypt(k.path, k.size, file))
        -- update("") gives the header at once
        e = core.file_encryptor(k.key)
        local head = e:update("")
        assert.equal(k.size + 16, #head)
        assert.equal(16, #e:finish())
      end
    end)

    it("uses a fresh AES key and IV for every file", function()
      local k = keys.k2048
      local a, b = encrypt(k.key, text(64)), encrypt(k.key, text(64))
      assert.not_equal(a:sub(1, 256), b:sub(1, 256))
      assert.not_equal(a:sub(257, 272), b:sub(257, 272))
      assert.not_equal(a:sub(273), b:sub(273))
    end)
  end)

  describe("decompression", function()
    local json = cjson.encode{ objectType = "post", data = text(20000) }

    it("inflates gzip -c and brotli output, whole and in 1-byte pieces", function()
      local gz, br = gzip(json), brotli(json)
      assert.is_true(#gz < #json and #br < #json)
      for _, step in ipairs{ 1, 7, 4096 } do
        assert.equal(json, inflate("gzip", gz, step))
        assert.equal(json, inflate("brotli", br, step))
        assert.equal(json, inflate("none", json, step))
      end
      assert.equal("", inflate("gzip", gzip("")))
      assert.equal("", inflate("brotli", brotli("")))
      assert.equal("", inflate("none", ""))
    end)

    it("decrypts and inflates in one pipeline", function()
      local k = keys.k2048
      for kind, data in pairs{ gzip = gzip(json), brotli = brotli(json), none = json } do
        local file = encrypt(k.key, data)
        for _, step in ipairs{ 1, 4096, #file } do
          assert.equal(json, decrypt(k.key, file, step, { compression = kind }), kind)
        end
      end
    end)

    it("fails on corrupt, truncated or trailing data", function()
      local gz, br = gzip(json), brotli(json)
      local out, err = inflate("gzip", json)
      assert.is_nil(out)
      assert.matches("^gzip: corrupt data", err)
      out, err = inflate("brotli", json)
      assert.is_nil(out)
      assert.matches("^brotli: ", err)
      assert.same({ nil, "gzip: truncated stream" }, { inflate("gzip", gz:sub(1, #gz - 10)) })
      assert.same({ nil, "gzip: truncated stream" }, { inflate("gzip", "") })
      assert.same({ nil, "brotli: truncated stream" }, { inflate("brotli", br:sub(1, math.floor(#br / 2))) })
      assert.same({ nil, "gzip: data after the end of the compressed stream" }, { inflate("gzip", gz .. "x") })
      assert.same({ nil, "gzip: data after the end of the compressed stream" },
        { inflate("gzip", gz .. gz, 100) })
      assert.same({ nil, "brotli: data after the end of the compressed stream" }, { inflate("brotli", br .. "x") })
      local bad = flip(gz, 21, 0xff)
      out, err = inflate("gzip", bad)
      assert.is_nil(out)
      assert.matches("^gzip: ", err)
    end)

    it("refuses a file whose metadata names the wrong compression", function()
      local k = keys.k2048
      local plain = encrypt(k.key, json)
      for _, kind in ipairs{ "gzip", "brotli" } do
        for _, step in ipairs{ 1, #plain } do
          local out, err = decrypt(k.key, plain, step, { compression = kind })
          assert.is_nil(out)
          assert.matches("^" .. kind .. ": ", err)
        end
      end
      local out, err = decrypt(k.key, encrypt(k.key, brotli(json)), nil, { compression = "gzip" })
      assert.is_nil(out)
      assert.matches("^gzip: corrupt data", err)
    end)

    it("stops a decompression bomb at max_output", function()
      local k = keys.k2048
      run(("head -c 104857600 /dev/zero | gzip -c > %s"):format(q(dir .. "/bomb.gz")))
      run(("head -c 104857600 /dev/zero | %s > %s"):format(brotli_cmd, q(dir .. "/bomb.br")))
      local limit = 10 * 1024 * 1024
      for kind, path in pairs{ gzip = dir .. "/bomb.gz", brotli = dir .. "/bomb.br" } do
        local data = sh.read(path)
        assert.is_true(#data < 200 * 1024)
        local want = "decompressed size exceeds max_output (" .. limit .. " bytes)"
        assert.same({ nil, want }, { inflate(kind, data, 65536, { max_output = limit }) })
        assert.same({ nil, want },
          { decrypt(k.key, encrypt(k.key, data), 65536, { compression = kind, max_output = limit }) })
        -- under the cap it passes; exactly at the cap too
        local z = assert(inflate(kind, data, nil, { max_output = 104857600 }))
        assert.equal(104857600, #z)
      end
      assert.same({ nil, "decompressed size exceeds max_output (10 bytes)" },
        { decrypt(k.key, encrypt(k.key, ("x"):rep(11)), nil, { max_output = 10 }) })
      assert.equal(("x"):rep(10), decrypt(k.key, encrypt(k.key, ("x"):rep(10)), nil, { max_output = 10 }))
    end)

    it("decrypts and inflates 50 MiB at a measurable rate #slow", function()
      local k = keys.k2048
      local block = core.random_bytes(1024 * 1024)
      local parts = {}
      for i = 1, 50 do parts[i] = block end
      local plain = table.concat(parts)
      local file = encrypt(k.key, gzip(plain))
      local d = core.file_decryptor(k.key, { compression = "gzip", max_output = math.huge })
      local t0, n, i = core.monotonic(), 0, 1
      while i <= #file do
        n = n + #assert(d:update(file:sub(i, i + 65535)))
        i = i + 65536
      end
      n = n + #assert(d:finish())
      local dt = core.monotonic() - t0
      assert.equal(#plain, n)
      io.stderr:write(("cipher_spec: decrypt+gunzip of a %.1f MiB file: %.0f MB/s (%s)\n")
        :format(#file / 1048576, #file / dt / 1e6, LUAJIT and "luajit" or _VERSION))
    end)
  end)

  describe("misuse raises", function()
    it("on wrong arguments and options", function()
      local k = keys.k2048
      local pub = assert(core.public_key(sh.read(k.pub)))
      assert.has_error(function() core.file_decryptor("pem") end)
      assert.has_error(function() core.file_decryptor(pub) end,
        "bad argument #1 to 'file_decryptor' (a private key is required)")
      assert.has_error(function() core.file_decryptor(k.key, { compression = "zip" }) end)
      assert.has_error(function() core.file_decryptor(k.key, { compression = 1 }) end)
      assert.has_error(function() core.file_decryptor(k.key, { bogus = 1 }) end)
      assert.has_error(function() core.file_decryptor(k.key, { max_output = -1 }) end)
      assert.has_error(function() core.file_decryptor(k.key, { max_output = 1.5 }) end)
      assert.has_error(function() core.file_decryptor(k.key, { size = "288" }) end)
      assert.has_error(function() core.file_decryptor(k.key, "gzip") end)
      assert.has_error(function() core.file_encryptor({}) end)
      assert.has_error(function() core.inflater("zip") end)
      assert.has_error(function() core.inflater() end)
      assert.has_error(function() core.inflater("gzip", { level = 1 }) end)
      assert.has_error(function() core.file_decryptor(k.key):update(42 == 42) end)
    end)

    it("on finished or closed objects", function()
      local k = keys.k2048
      local d = core.file_decryptor(k.key)
      assert(d:update(encrypt(k.key, "x")))
      assert.equal("x", d:finish())
      assert.has_error(function() d:update("") end, "file decryptor is finished")
      assert.has_error(function() d:finish() end, "file decryptor is finished")
      d:close()
      d:close()
      assert.has_error(function() d:update("") end, "file decryptor is closed")
      local e = core.file_encryptor(k.key)
      e:finish()
      assert.has_error(function() e:update("x") end, "file encryptor is finished")
      e:close()
      assert.has_error(function() e:finish() end, "file encryptor is closed")
      local z = core.inflater("none")
      z:close()
      assert.has_error(function() z:update("x") end, "inflater is closed")
      assert.matches("closed", tostring(z))
    end)
  end)
end)

-- ---- the engine feeding a pipeline ----

local function now() return socket.gettime() end

-- Drives one request to its end; with `reader`, read() is called after every step and its
-- chunks go to reader(chunk). Returns what result() returns.
local function drive(engine, req, reader, seconds)
  local deadline = now() + (seconds or 20) * (SANITIZED and 5 or 1)
  local done = false
  while not done do
    engine:perform()
    for _, r in ipairs(engine:finished()) do done = done or r == req end
    local got = false
    if reader then
      local s, err, kind = req:read()
      if not s then return nil, err, kind end
      if #s > 0 then reader(s); got = true end
    end
    if not done then
      assert(now() < deadline, "request did not finish in time")
      if not got then engine:poll(20) end
    end
  end
  if reader then
    while true do
      local s, err, kind = req:read()
      if not s then return nil, err, kind end
      if s == "" then break end
      reader(s)
    end
  end
  return req:result()
end

describe("http engine with a file pipeline", function()
  local dir, pid, base, server_out, key, engine

  local function url_of(path, extra)
    return base .. "/file?path=" .. path .. (extra or "")
  end

  local function put(name, data)
    return sh.write(dir .. "/" .. name, data)
  end

  setup(function()
    dir = sh.tmpdir()
    pid, base, server_out = sh.spawn_port_script("spec/support/tiny_server.lua", { "--ttl", 600 },
                                                 "tiny_server")
    base = "http://127.0.0.1:" .. base
    key = core.generate_key(2048)
  end)

  teardown(function()
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
    if server_out then os.remove(server_out) end
    sh.rmdir(dir)
  end)

  before_each(function() engine = core.http_engine() end)
  after_each(function() engine:close() end)

  local function gzip_file(data)
    local plain = put("gz.in", data)
    run(("gzip -c %s > %s"):format(q(plain), q(dir .. "/gz.out")))
    return sh.read(dir .. "/gz.out")
  end

  local function add(t)
    t.proxy = false
    return engine:add(t)
  end

  it("decrypts and inflates a 2xx body in C, given whole by result()", function()
    local plain = text(300000)
    local path = put("a.enc", encrypt(key, gzip_file(plain)))
    for _, extra in ipairs{ "", "&chunked=1" } do
      local dec = core.file_decryptor(key, { compression = "gzip" })
      local req = add{ url = url_of(path, extra), pipeline = dec }
      local res = assert(drive(engine, req))
      assert.equal(200, res.status)
      assert.equal(plain, res.body)
      -- read() after the end: the body went to result() already
      assert.equal("", req:read())
    end
  end)

  it("lets read() drain the plaintext while the transfer runs", function()
    local plain = core.random_bytes(3 * 1024 * 1024 + 5)
    local path = put("b.enc", encrypt(key, plain))
    for _, mb in ipairs{ 65536, 1000000 } do
      local req = add{ url = url_of(path), pipeline = core.file_decryptor(key), max_buffered = mb }
      local parts, biggest = {}, 0
      local res = assert(drive(engine, req, function(s)
        parts[#parts + 1] = s
        biggest = math.max(biggest, #s)
      end))
      assert.equal(200, res.status)
      assert.equal("", res.body)
      assert.equal(#plain, #table.concat(parts))
      assert.equal(plain, table.concat(parts))
      assert.is_true(#parts > 3)
      assert.is_true(biggest <= mb, ("a read gave %d bytes, max_buffered %d"):format(biggest, mb))
    end
  end)

  it("pauses the transfer while the output is not drained, and goes on when it is", function()
    local plain = core.random_bytes(4 * 1024 * 1024)
    local path = put("p.enc", encrypt(key, plain))
    local req = add{ url = url_of(path), pipeline = core.file_decryptor(key), max_buffered = 65536 }
    -- no read() for a while: the transfer must hold, not fill memory
    local deadline = now() + 0.5
    while now() < deadline do
      engine:perform()
      assert.same({}, engine:finished())
      engine:poll(10)
    end
    local first = req:read()
    assert.is_true(#first > 0 and #first <= 65536, "first read gave " .. #first)
    local parts = { first }
    local res = assert(drive(engine, req, function(s) parts[#parts + 1] = s end))
    assert.equal(200, res.status)
    assert.equal(plain, table.concat(parts))
  end)

  it("without read(), buffers the whole plaintext for result()", function()
    local plain = core.random_bytes(3 * 1024 * 1024 + 1)
    local path = put("q.enc", encrypt(key, plain))
    local req = add{ url = url_of(path), pipeline = core.file_decryptor(key) }
    assert.equal(plain, assert(drive(engine, req)).body)
  end)

  it("buffers a non-2xx body as usual and never decrypts it", function()
    local file = encrypt(key, "secret")
    local path = put("c.enc", file)
    local req = add{ url = url_of(path, "&status=404"), pipeline = core.file_decryptor(key) }
    local res = assert(drive(engine, req, function() error("a 404 body reached read()") end))
    assert.equal(404, res.status)
    assert.equal(file, res.body)
    req = add{ url = base .. "/status?code=503", pipeline = core.file_decryptor(key) }
    res = assert(drive(engine, req))
    assert.equal(503, res.status)
    assert.same({ status = 503 }, cjson.decode(res.body))
    -- max_body still bounds buffered bodies
    req = add{ url = url_of(path, "&status=500"), pipeline = core.file_decryptor(key), max_body = 100 }
    local r2, _, kind = drive(engine, req)
    assert.is_nil(r2)
    assert.equal("too_large", kind)
  end)

  it("applies max_output, not max_body, to piped plaintext", function()
    local plain = text(200000)
    local path = put("d.enc", encrypt(key, gzip_file(plain)))
    local req = add{ url = url_of(path), pipeline = core.file_decryptor(key, { compression = "gzip" }),
                     max_body = 1000 }
    assert.equal(plain, assert(drive(engine, req)).body)
    req = add{ url = url_of(path), pipeline = core.file_decryptor(key, { compression = "gzip",
                                                                          max_output = 100000 }) }
    local res, err, kind = drive(engine, req)
    assert.same({ nil, "decrypt", "decompressed size exceeds max_output (100000 bytes)" }, { res, kind, err })
  end)

  it("reports a file that does not decrypt as kind decrypt", function()
    local file = encrypt(key, text(100000))
    local path = put("e.enc", file)
    local req = add{ url = url_of(path), pipeline = core.file_decryptor(core.generate_key(2048)) }
    assert.same({ nil, FAILED, "decrypt" }, { drive(engine, req) })
    -- the same through read()
    req = add{ url = url_of(path), pipeline = core.file_decryptor(core.generate_key(2048)) }
    assert.same({ nil, FAILED, "decrypt" }, { drive(engine, req, function() end) })
    assert.same({ nil, FAILED, "decrypt" }, { req:result() })
    -- a declared length that breaks the size rule fails before any decryption
    path = put("f.enc", file:sub(1, 290))
    req = add{ url = url_of(path), pipeline = core.file_decryptor(key) }
    assert.same({ nil, "File size not valid: 290", "decrypt" }, { drive(engine, req) })
    -- without a declared length, at the end
    req = add{ url = url_of(path, "&chunked=1"), pipeline = core.file_decryptor(key) }
    assert.same({ nil, "File size not valid: 290", "decrypt" }, { drive(engine, req) })
    -- an empty 2xx body is no file either
    path = put("g.enc", "")
    req = add{ url = url_of(path), pipeline = core.file_decryptor(key) }
    assert.same({ nil, "File size not valid: 0", "decrypt" }, { drive(engine, req) })
  end)

  it("never presents the plaintext of a truncated body as complete", function()
    local plain = text(500000)
    local file = encrypt(key, plain)
    local path = put("h.enc", file)
    for _, extra in ipairs{ "&cut=200000", "&cut=200000&chunked=1" } do
      local req = add{ url = url_of(path, extra), pipeline = core.file_decryptor(key) }
      local res, _, kind = drive(engine, req)
      assert.is_nil(res)
      assert.equal("reset", kind)
      -- and through read(): some plaintext came, then the failure
      req = add{ url = url_of(path, extra), pipeline = core.file_decryptor(key) }
      local got = 0
      res, _, kind = drive(engine, req, function(s) got = got + #s end)
      assert.is_nil(res)
      assert.equal("reset", kind)
      assert.is_true(got < #plain)
      assert.same({ nil, "reset" }, { req:result(), select(3, req:result()) })
    end
    -- a file cut short and served whole: the decryptor refuses it at the end
    path = put("i.enc", file:sub(1, #file - 16))
    local req = add{ url = url_of(path), pipeline = core.file_decryptor(key) }
    assert.same({ nil, FAILED, "decrypt" }, { drive(engine, req) })
  end)

  it("raises on misuse of pipeline options", function()
    local dec = core.file_decryptor(key)
    assert.has_error(function() add{ url = base .. "/ok", pipeline = "x" } end)
    assert.has_error(function() add{ url = base .. "/ok", max_buffered = 100 } end)
    assert.has_error(function() add{ url = base .. "/ok", pipeline = dec, max_buffered = 0 } end)
    assert.has_error(function() add{ url = base .. "/ok", method = "HEAD", pipeline = dec } end)
    assert.has_error(function() add{ url = base .. "/ok", pipeline = dec, headers = { "no colon" } } end)
    local used = core.file_decryptor(key)
    used:update("abc")
    assert.has_error(function() add{ url = base .. "/ok", pipeline = used } end,
      "option 'pipeline': file decryptor already used")
    local req = add{ url = base .. "/ok", pipeline = dec }
    assert.has_error(function() dec:update("x") end, "file decryptor is attached to an http request")
    assert.has_error(function() add{ url = base .. "/ok", pipeline = dec } end)
    assert.has_error(function() add{ url = base .. "/ok" }:read() end, "http request has no pipeline")
    -- closing the decryptor does not pull the pipeline from under the request
    dec:close()
    collectgarbage()
    assert.same({ nil, "File size not valid: 11", "decrypt" }, { drive(engine, req) })
  end)

  it("downloads a 50 MiB file through a pipeline in bounded memory #slow", function()
    -- the plaintext: a random MiB fifty times over (deflate's 32 KiB window cannot shrink it)
    local block = core.random_bytes(1024 * 1024)
    local f = assert(io.open(dir .. "/big.plain", "wb"))
    for _ = 1, 50 do f:write(block) end
    f:close()
    run(("gzip -1 -c %s > %s"):format(q(dir .. "/big.plain"), q(dir .. "/big.gz")))
    local want = run("sha256sum " .. q(dir .. "/big.plain")):match("^(%x+)")
    -- encrypted with the core, streamed to a file
    local enc = core.file_encryptor(key)
    local src, dst = assert(io.open(dir .. "/big.gz", "rb")), assert(io.open(dir .. "/big.enc", "wb"))
    while true do
      local piece = src:read(1024 * 1024)
      if not piece then break end
      dst:write(enc:update(piece))
    end
    dst:write(enc:finish())
    src:close()
    dst:close()
    local size = assert(io.open(dir .. "/big.enc", "rb")):seek("end")
    assert.is_true(size > 50 * 1024 * 1024)
    put("key.pem", key:private_pem())
    -- a child process downloads it, hashing the plaintext as read() drains it
    put("child.lua", [[
local core = require "digime.core"
local digest = require "openssl.digest"
local key = assert(core.private_key(io.open(arg[1]):read("*a")))
local engine = core.http_engine()
local req = engine:add{ url = arg[2], proxy = false, timeout = 300, max_buffered = 1024 * 1024,
  pipeline = core.file_decryptor(key, { compression = "gzip", max_output = math.huge }) }
local md, total, done = digest.new("sha256"), 0, false
local function take()
  local s, err = req:read()
  if not s then error(err) end
  if #s > 0 then md:update(s); total = total + #s end
  return #s
end
while not done do
  engine:perform()
  done = #engine:finished() > 0
  if take() == 0 and not done then engine:poll(20) end
end
while take() > 0 do end
local res = assert(req:result())
assert(res.status == 200 and res.body == "")
local hwm = io.open("/proc/self/status"):read("*a"):match("VmHWM:%s*(%d+) kB")
print(((md:final()):gsub(".", function(c) return ("%02x"):format(c:byte()) end)), total, hwm)
]])
    local interp = LUAJIT and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))  -- this process's Lua
    local cpath  -- the template that found this process's digime.core
    for template in package.cpath:gmatch("[^;]+") do
      local found = io.open((template:gsub("%?", "digime/core")), "rb")
      if found then
        found:close()
        cpath = cpath or template
      end
    end
    local t0 = now()
    local out = run(("LUA_CPATH=%s LUA_CPATH_5_4=%s %s %s %s %s"):format(q(cpath .. ";;"), q(cpath .. ";;"),
      interp, q(dir .. "/child.lua"), q(dir .. "/key.pem"), q(url_of(dir .. "/big.enc"))))
    local dt = now() - t0
    local sum, total, hwm = out:match("(%x+)%s+(%d+)%s+(%d+)")
    assert.equal(want, sum)
    assert.equal(50 * 1024 * 1024, tonumber(total))
    io.stderr:write(("cipher_spec: 50 MiB piped download (%s): peak RSS %.1f MiB, %.1f s\n")
      :format(interp, tonumber(hwm) / 1024, dt))
    assert.is_true(tonumber(hwm) < 60 * 1024, "peak RSS " .. hwm .. " kB")
  end)
end)
