-- read_file and read_file_metadata (doc/protocol.md "The file format", "Reading a library",
-- "Errors"; doc/architecture.md "The path of one file"): files decrypted and
-- decompressed in C while they stream, sinks (functions, file handles, objects with a write
-- method), bounded memory measured in a child process, every file of the sandbox's libraries
-- against its manifest, PKCS#1 and PKCS#8 keys, metadata (mapped, raw, unknown enum values),
-- and every way a file can fail: size rule, wrong key, bad padding, corrupt compression, a
-- truncated body, a sink that raises or refuses.
--
-- Files the sandbox never serves (a wrong key, bad padding, a body labelled gzip that is not)
-- are answered by a capture proxy in front of the sandbox: real HTTP, the SDK's real pipeline.
local flow = require "flow"
local leak_check = require "leak_check"
local cjson = require "cjson"
local core = require "digime.core"
local digime = require "digime"
local sh = require "shell"
local socket = require "socket"

local QUERY = "/v1.7/permission-access/query/"
local UNI = "\195\188n\195\175.json"    -- "ünï.json" (LuaJIT has no \u{} escapes)

-- b with one bit flipped (no ~ operator in LuaJIT)
local function flip(b, bit)
  return (b % (2 * bit) >= bit) and b - bit or b + bit
end


local sha256_hex = require("encode").sha256_hex

local function tmpfile(text)
  local name = os.tmpname()
  sh.write(name, text)
  return name
end

-- A function sink that records what it is given, and whether the final nil came.
local function recorder()
  local r = { chunks = {}, nils = 0, after_nil = 0, bytes = 0 }
  r.sink = function(chunk)
    if chunk == nil then
      r.nils = r.nils + 1
      return true
    end
    if r.nils > 0 then r.after_nil = r.after_nil + 1 end
    assert(type(chunk) == "string", "a chunk that is not a string")
    r.chunks[#r.chunks + 1] = chunk
    r.bytes = r.bytes + #chunk
    return true
  end
  r.data = function() return table.concat(r.chunks) end
  return r
end

local keys_of = require("tables").keys_of

describe("read_file", function()
  local sb, sdk, token, key, manifest

  lazy_setup(function()
    sb = flow.start{ args = { "--sync-pace", "0", "--big-file", "32m", "--hostile-names" } }
    sdk = assert(flow.sdk(sb, { timeout = 30 }))
    token = flow.login(sdk)
    key = assert(sdk:read_session{ contract = flow.contract(), user_access_token = token }).session.key
    manifest = sb:control("GET", "manifest")
  end)

  lazy_teardown(function()
    if sb then sb:stop() end
  end)

  before_each(function()
    sb:clear_faults()
  end)

  local function read(name, extra, with_sdk)
    local o = { contract = flow.contract(), user_access_token = token, session_key = key, file_name = name }
    for k, v in pairs(extra or {}) do o[k] = v end
    return (with_sdk or sdk):read_file(o)
  end

  local function small_names()
    local names = {}
    for name in pairs(manifest.files) do
      if name ~= "big.bin" then names[#names + 1] = name end
    end
    table.sort(names)
    return names
  end

  describe("without a sink", function()
    it("decrypts and decompresses every file of the default library to its manifest hash", function()
      local compressions = {}
      local names = small_names()
      assert.are.equal(13, #names)
      for _, name in ipairs(names) do
        local res, err = read(name)
        assert.is_nil(err, name)
        assert.are.equal(manifest.files[name], sha256_hex(res.file_data), name)
        assert.are.equal(name, res.file_name)
        assert.is_table(res.file_metadata, name)
        assert.is_string(res.last_modified, name)
        assert.is_truthy(res.last_modified:match("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$"), name)
        assert.are.same(token, res.user_access_token)
        compressions[res.compression] = true
        assert.are.same({ "compression", "file_data", "file_metadata", "file_name", "last_modified",
                          "user_access_token" }, keys_of(res))
      end
      assert.are.same({ brotli = true, gzip = true, none = true }, compressions)
    end)

    it("reads an empty file as an empty string", function()
      local res = assert(read("empty.txt"))
      assert.are.equal("", res.file_data)
    end)

    it("reads the names that are awkward as table keys or in a URL", function()
      for _, name in ipairs{ "constructor", "__proto__", "a.b.c.json", "with space.json", UNI } do
        local res, err = read(name)
        assert.is_nil(err, name)
        assert.are.equal(name, res.file_name)
        assert.are.equal(manifest.files[name], sha256_hex(res.file_data), name)
      end
    end)

    it("reads big.bin whole when no sink is given", function()
      local res, err = read("big.bin")
      assert.is_nil(err)
      assert.are.equal(32 * 1024 * 1024, #res.file_data)
      assert.are.equal(manifest.files["big.bin"], sha256_hex(res.file_data))
    end)

    it("honours max_size: a larger file fails, an equal one is read", function()
      local size = #assert(read("notes.txt")).file_data
      local res, err = read("notes.txt", { max_size = size - 1 })
      assert.is_nil(res)
      assert.are.equal("FileDecryptionError", err.kind)
      assert.is_truthy(err.message:find("max_output", 1, true), err.message)
      assert.are.same(token, err.user_access_token)
      res = assert(read("notes.txt", { max_size = size }))
      assert.are.equal(manifest.files["notes.txt"], sha256_hex(res.file_data))
      -- limits.body bounds a file read into memory; a sink lifts the bound
      local small = assert(flow.sdk(sb, { limits = { body = 1024 * 1024 } }))
      res, err = read("big.bin", nil, small)
      assert.is_nil(res)
      assert.are.equal("FileDecryptionError", err.kind)
      local r = recorder()
      res, err = read("big.bin", { sink = r.sink }, small)
      assert.is_nil(err)
      assert.is_nil(res.file_data)
      assert.are.equal(32 * 1024 * 1024, r.bytes)
    end)

    it("retries a file whose first answer was cut short, and returns it whole", function()
      sb:fault{ method = "GET", path = QUERY .. key .. "/instagram_posts.json", match = "exact",
                action = "truncate", count = 1 }
      local res, err = read("instagram_posts.json")
      assert.is_nil(err)
      assert.are.equal(manifest.files["instagram_posts.json"], sha256_hex(res.file_data))
      assert.are.same({}, sb:faults())
    end)

    it("retries a file after a reset and a 503", function()
      sb:fault{ method = "GET", path = QUERY .. key .. "/fitbit_sleep.json", match = "exact", action = "reset" }
      sb:fault{ method = "GET", path = QUERY .. key .. "/fitbit_sleep.json", match = "exact", action = "status",
                status = 503 }
      local res, err = read("fitbit_sleep.json")
      assert.is_nil(err)
      assert.are.equal(manifest.files["fitbit_sleep.json"], sha256_hex(res.file_data))
    end)
  end)

  describe("with a sink", function()
    it("calls a function with each chunk and finally nil; file_data is absent", function()
      for _, name in ipairs(small_names()) do
        local r = recorder()
        local res, err = read(name, { sink = r.sink })
        assert.is_nil(err, name)
        assert.is_nil(res.file_data, name)
        assert.are.equal(name, res.file_name)
        assert.is_table(res.file_metadata)
        assert.are.equal(1, r.nils, name .. ": the final nil")
        assert.are.equal(0, r.after_nil, name)
        assert.are.equal(manifest.files[name], sha256_hex(r.data()), name)
      end
    end)

    it("streams big.bin to a function in many chunks", function()
      local r = recorder()
      local res, err = read("big.bin", { sink = r.sink })
      assert.is_nil(err)
      assert.is_nil(res.file_data)
      assert.are.equal(32 * 1024 * 1024, r.bytes)
      assert.is_true(#r.chunks >= 8, "only " .. #r.chunks .. " chunks for 32 MiB: not streamed")
      for _, c in ipairs(r.chunks) do
        assert.is_true(#c <= 4 * 1024 * 1024, "a chunk of " .. #c .. " bytes")
      end
      assert.are.equal(1, r.nils)
    end)

    it("writes to a file handle with :write and leaves it open; big.bin matches the manifest by sha256sum", function()
      local path = os.tmpname()
      local ok, e = pcall(function()
        local h = assert(io.open(path, "wb"))
        local res, err = read("big.bin", { sink = h })
        assert.is_nil(err)
        assert.is_nil(res.file_data)
        assert.are.equal("file", io.type(h), "the SDK closed the caller's handle")
        h:close()
        local okc, out = sh.run("sha256sum " .. sh.quote(path))
        assert.is_true(okc, out)
        assert.are.equal(manifest.files["big.bin"], out:match("^(%x+)"))
        -- and a small file through a handle
        local t = assert(io.tmpfile())
        assert(read(UNI, { sink = t }))
        assert.are.equal("file", io.type(t))
        t:seek("set")
        assert.are.equal(manifest.files[UNI], sha256_hex(t:read("*a")))
        t:close()
      end)
      os.remove(path)
      assert(ok, e)
    end)

    it("writes to any object with a write method, and does not call it with nil", function()
      local parts, nil_writes = {}, 0
      local obj = { write = function(self, chunk)
        if chunk == nil then nil_writes = nil_writes + 1 else parts[#parts + 1] = chunk end
        return self
      end }
      local res, err = read("fitbit_activity.json", { sink = obj })
      assert.is_nil(err)
      assert.is_nil(res.file_data)
      assert.are.equal(0, nil_writes)
      assert.are.equal(manifest.files["fitbit_activity.json"], sha256_hex(table.concat(parts)))
    end)

    it("stops the read with the sink's error when it returns nil, err, and calls it no more", function()
      local calls, nils = 0, 0
      local downloads = sb:stats().downloads
      local t0 = flow.now()
      local res, err = read("big.bin", { sink = function(chunk)
        if chunk == nil then nils = nils + 1 return true end
        calls = calls + 1
        if calls == 2 then return nil, "disk full" end
        return true
      end })
      assert.is_nil(res)
      assert.are.equal(2, calls)
      assert.are.equal(0, nils)
      assert.are.equal("DigiMeSDKError", err.kind)
      assert.are.equal("SinkError", err.code)
      assert.is_truthy(tostring(err):find("disk full", 1, true), tostring(err))
      assert.are.same(token, err.user_access_token)
      assert.is_true(flow.now() - t0 < 5)
      flow.sandbox.sleep(0.2)
      assert.are.equal(downloads, sb:stats().downloads, "the transfer went on to the end")
    end)

    it("stops the read when the sink raises, with the raised message", function()
      local calls, nils = 0, 0
      local res, err = read("big.bin", { sink = function(chunk)
        if chunk == nil then nils = nils + 1 return true end
        calls = calls + 1
        error("sink exploded")
      end })
      assert.is_nil(res)
      assert.are.equal(1, calls)
      assert.are.equal(0, nils)
      assert.are.equal("SinkError", err.code)
      assert.is_truthy(err.message:find("sink exploded", 1, true), err.message)
    end)

    it("fails the read when the sink refuses the end (nil, err on the final nil)", function()
      local res, err = read("notes.txt", { sink = function(chunk)
        if chunk == nil then return nil, "cannot flush" end
        return true
      end })
      assert.is_nil(res)
      assert.are.equal("SinkError", err.code)
      assert.is_truthy(err.message:find("cannot flush", 1, true), err.message)
    end)

    it("fails the read when a file handle's write fails", function()
      local path = os.tmpname()
      local h = assert(io.open(path, "rb"))   -- read-only: :write fails
      local res, err = read("notes.txt", { sink = h })
      h:close()
      os.remove(path)
      assert.is_nil(res)
      assert.are.equal("SinkError", err.code)
    end)

    it("reads big.bin outside digime.run about as fast as inside it #timing", function()
      -- A consumer of 100 MB/s keeps the server ahead, so that the transfer pauses whenever
      -- 1 MiB of plaintext waits: how the blocking path resumes it is what is measured.
      local function timed(fn)
        local t0 = flow.now()
        local bytes = 0
        local res, err = fn(function(chunk)
          if chunk then
            bytes = bytes + #chunk
            socket.sleep(#chunk / 100e6)
          end
          return true
        end)
        assert.is_nil(err)
        assert.is_table(res)
        assert.are.equal(32 * 1024 * 1024, bytes)
        return flow.now() - t0
      end
      local inside = timed(function(sink) return digime.run(read, "big.bin", { sink = sink }) end)
      local outside = timed(function(sink) return read("big.bin", { sink = sink }) end)
      assert.is_true(outside < 2 * inside + 0.5,
        string.format("32 MiB through a sink: %.2f s outside digime.run, %.2f s inside", outside, inside))
    end)
  end)

  describe("a truncated body", function()
    it("fails after every attempt was cut short, returning nothing (no sink)", function()
      sb:fault{ method = "GET", path = QUERY .. key .. "/notes.txt", match = "exact", action = "truncate", count = 10 }
      local res, err = read("notes.txt")
      assert.is_nil(res)
      assert.is_truthy(err.kind == "NetworkError" or err.kind == "FileDecryptionError", tostring(err))
      assert.are.equal(3, err.attempts)
      assert.are.equal(7, sb:faults()[1].count)
      assert.are.same(token, err.user_access_token)
    end)

    it("never gives a function sink its final nil, nor any byte twice, after the body was cut short", function()
      for _, name in ipairs{ "notes.txt", "instagram_posts.json", "big.bin" } do
        local plain = assert(read(name)).file_data
        sb:clear_faults()
        sb:fault{ method = "GET", path = QUERY .. key .. "/" .. name, match = "exact", action = "truncate", count = 10 }
        local r = recorder()
        local res, err = read(name, { sink = r.sink })
        assert.is_nil(res, name)
        assert.is_truthy(err.kind == "NetworkError" or err.kind == "FileDecryptionError", tostring(err))
        assert.are.equal(0, r.nils, name .. ": the sink was told the file was complete")
        assert.is_true(r.bytes < #plain, name)
        -- what reached the sink is a prefix of the file: a retry after data went to the sink
        -- would have repeated it
        assert.is_true(r.data() == plain:sub(1, r.bytes), name .. ": the sink got bytes twice or wrong bytes")
        assert.are.same(token, err.user_access_token)
      end
      -- big.bin streams: part of it reached the sink before the cut, so it was not retried
      assert.are.equal(9, sb:faults()[1].count)
    end)
  end)

  describe("metadata", function()
    it("gives the same metadata and last-modified from a GET and from a HEAD, for every file", function()
      for _, name in ipairs(small_names()) do
        local full = assert(read(name))
        local head, err = sdk:read_file_metadata{ contract = flow.contract(), user_access_token = token,
                                                  session_key = key, file_name = name }
        assert.is_nil(err, name)
        assert.are.same(full.file_metadata, head.file_metadata, name)
        assert.are.equal(full.compression, head.compression, name)
        assert.are.equal(full.last_modified, head.last_modified, name)
        assert.are.equal(name, head.file_name)
      end
    end)

    it("decodes mapped metadata and raw metadata", function()
      local m = assert(read("instagram_media.json")).file_metadata
      assert.are.same({ objectCount = 4, objectType = "media", serviceGroup = "social", serviceName = "instagram",
                        schema = { standard = "digime", version = "1.0.0" } }, m)
      m = assert(read("with space.json")).file_metadata
      assert.are.equal("application/json", m.mimetype)
      assert.are.same({ { accountid = "40_SbInstagram01" } }, m.accounts)
      assert.are.equal("sandbox-app", m.appid)
      assert.are.equal(1690000000000, m.created)
      m = assert(read("notes.txt")).file_metadata
      assert.are.same({ { accountid = "40_SbInstagram01" }, { accountid = "24_SbFitbit01" } }, m.accounts)
    end)

    it("moves the updatedDate and last-modified of a touched file, and reads its new content", function()
      local before = assert(read("fitbit_profile.json"))
      local t = sb:control("POST", "library", { touch = "fitbit_profile.json" })
      local after = assert(read("fitbit_profile.json"))
      assert.are.equal(t.sha256, sha256_hex(after.file_data))
      assert.are_not.equal(before.file_data, after.file_data)
      assert.are.equal(before.file_metadata.objectCount + 1, after.file_metadata.objectCount)
      sb:control("POST", "reset")
      -- the reset forgot the user: a new login for what follows
      token = flow.login(sdk)
      key = assert(sdk:read_session{ contract = flow.contract(), user_access_token = token }).session.key
      assert.are.equal(manifest.files["fitbit_profile.json"], sha256_hex(assert(read("fitbit_profile.json")).file_data))
    end)
  end)

  describe("keys", function()
    it("reads with a PKCS#8 private key as well as a PKCS#1 one", function()
      local pkcs8 = core.private_key(flow.demo.private_key):private_pem("pkcs8")
      flow.secret_pem(pkcs8)
      assert.is_truthy(pkcs8:find("-----BEGIN PRIVATE KEY-----", 1, true))
      assert.is_truthy(flow.demo.private_key:find("-----BEGIN RSA PRIVATE KEY-----", 1, true))
      local contract = { id = flow.demo.contract_id, private_key = pkcs8 }
      local s = assert(sdk:read_session{ contract = contract, user_access_token = token })
      for _, name in ipairs{ "instagram_posts.json", "instagram_media.json", "notes.txt", "big.bin" } do
        local r = recorder()
        local res, err = sdk:read_file{ contract = contract, user_access_token = token, session_key = s.session.key,
                                        file_name = name, sink = r.sink }
        assert.is_nil(err, name)
        assert.is_table(res)
        assert.are.equal(manifest.files[name], sha256_hex(r.data()), name)
      end
      assert(sdk:read_file_metadata{ contract = contract, user_access_token = token, session_key = s.session.key,
                                     file_name = "notes.txt" })
    end)
  end)

  describe("failures", function()
    local cap, csdk, ctoken, ckey, other_key, files_dir

    local OTHER = "other-app_other-contract"

    lazy_setup(function()
      -- A sandbox that knows a second contract, with a key of its own: its raw files are
      -- encrypted to that key.
      other_key = core.generate_key(2048)
      files_dir = sh.tmpdir()
      local demo_pub = sh.write(files_dir .. "/demo.pem", flow.demo.public_key)
      local other_pub = sh.write(files_dir .. "/other.pem", other_key:public_pem())
      local sb2 = flow.start{ args = { "--sync-pace", "0",
        "--contract", flow.demo.application_id .. ":" .. flow.demo.contract_id .. ":" .. demo_pub,
        "--contract", "other-app:other-contract:" .. other_pub } }
      cap = flow.capture(sb2)
      cap.sb = sb2
      csdk = assert(flow.sdk(cap, { jwks = { allowed = { sb2.base_url .. "jwks/oauth" } } }))
      ctoken = flow.login(csdk)
      ckey = assert(csdk:read_session{ contract = flow.contract(), user_access_token = ctoken }).session.key
    end)

    lazy_teardown(function()
      if cap then
        cap:stop()
        cap.sb:stop()
      end
      sh.rmdir(files_dir)
    end)

    before_each(function()
      cap:clear()
    end)

    local function xmeta(compression, metadata)
      return core.b64url_encode(cjson.encode{
        metadata = metadata or { mimetype = "application/json", accounts = { { accountid = "a1" } } },
        compression = compression })
    end

    local function encrypt(plain, to)
      local e = core.file_encryptor(to or core.public_key(flow.demo.public_key))
      return e:update(plain) .. e:finish()
    end

    -- Serves body as the file `name` (several times: a retry would find it again) and reads it,
    -- without a sink and with one. -> err (no sink), err (sink), recorder, requests seen
    local function serve_and_read(name, body, x_metadata)
      cap:script{ { method = "GET", path = QUERY .. ckey .. "/" .. name, status = 200, count = 10, body = body,
                    headers = { ["Content-Type"] = "application/octet-stream", ["x-metadata"] = x_metadata,
                                ["Last-Modified"] = "Tue, 15 Nov 1994 08:12:31 GMT" } } }
      local o = { contract = flow.contract(), user_access_token = ctoken, session_key = ckey, file_name = name }
      local res, err = csdk:read_file(o)
      assert(res == nil, name .. ": read as a good file")
      local r = recorder()
      o.sink = r.sink
      local res2, err2 = csdk:read_file(o)
      assert(res2 == nil, name .. ": read as a good file through a sink")
      return err, err2, r, #cap:requests_to(QUERY .. ckey .. "/" .. name)
    end

    local function decryption_error(what, err, message_part)
      assert.are.equal("FileDecryptionError", err.kind, what .. ": " .. tostring(err))
      assert.is_truthy(err.message:find(message_part, 1, true),
        what .. ": the message does not say " .. message_part .. ": " .. err.message)
      assert.are.same(ctoken, err.user_access_token)
    end

    local function check(what, body, x_metadata, message_part)
      local err, err2, r, n = serve_and_read(what, body, x_metadata)
      decryption_error(what, err, message_part)
      decryption_error(what .. " (sink)", err2, message_part)
      assert.are.equal(0, r.nils, what .. ": the sink was told the file was complete")
      assert.are.equal(2, n, what .. ": a bad file is not downloaded again")
      return err
    end

    it("serves a good crafted file (the harness itself works)", function()
      cap:script{ { method = "GET", path = QUERY .. ckey .. "/good.json", status = 200,
                    body = encrypt('{"ok":true}'),
                    headers = { ["x-metadata"] = xmeta(nil), ["Content-Type"] = "application/octet-stream" } } }
      local res, err = csdk:read_file{ contract = flow.contract(), user_access_token = ctoken, session_key = ckey,
                                       file_name = "good.json" }
      assert.is_nil(err)
      assert.are.equal('{"ok":true}', res.file_data)
    end)

    it("refuses a body that breaks the size rule before decrypting", function()
      check("size-300.bin", core.random_bytes(300), xmeta(nil), "File size not valid: 300")
      check("size-0.bin", "", xmeta(nil), "File size not valid: 0")
      check("size-287.bin", core.random_bytes(287), xmeta(nil), "File size not valid: 287")
      -- a good file with 5 extra bytes
      check("extra.json", encrypt('{"a":1}') .. "extra", xmeta(nil), "File size not valid")
    end)

    it("refuses a file encrypted to another contract's key", function()
      local raw = assert(cap.sb:request{ path = "/sandbox/raw/notes.txt?client_id=" .. OTHER })
      assert.are.equal(200, raw.status)
      local m = check("wrong-key.txt", raw.body, raw.headers["x-metadata"], "file decryption failed")
      assert.is_nil(m.message:find("BEGIN", 1, true))
      -- and one made here for a fresh key
      check("wrong-key-2.json", encrypt('{"a":1}', other_key), xmeta(nil), "file decryption failed")
      -- while the same file for the right contract reads fine
      raw = assert(cap.sb:request{ path = "/sandbox/raw/notes.txt?client_id=" .. flow.CLIENT_ID })
      cap:script{ { method = "GET", path = QUERY .. ckey .. "/right-key.txt", status = 200, body = raw.body,
                    headers = { ["x-metadata"] = raw.headers["x-metadata"] } } }
      local res = assert(csdk:read_file{ contract = flow.contract(), user_access_token = ctoken, session_key = ckey,
                                         file_name = "right-key.txt" })
      assert.are.equal(cap.sb:control("GET", "manifest").files["notes.txt"], sha256_hex(res.file_data))
    end)

    it("refuses bad padding with the same message as a wrong key (no oracle)", function()
      local f = encrypt("0123456789abcdef")       -- one block of data, one block of padding
      assert.are.equal(256 + 16 + 32, #f)
      local i = 256 + 16 + 16                        -- the last byte of the first ciphertext block
      local bad = f:sub(1, i - 1) .. string.char(flip(f:byte(i), 0x10)) .. f:sub(i + 1)
      check("bad-padding.bin", bad, xmeta(nil), "file decryption failed (wrong key or corrupt data)")
      -- a corrupt key segment
      local badkey = string.char(flip(f:byte(1), 1)) .. f:sub(2)
      check("bad-key-segment.bin", badkey, xmeta(nil), "file decryption failed (wrong key or corrupt data)")
    end)

    it("refuses data labelled gzip or brotli that is not compressed", function()
      local plain = '{"this":"is plain JSON, not a compressed stream","n":[1,2,3,4,5,6,7,8,9]}'
      check("not-gzip.json", encrypt(plain), xmeta("gzip"), "gzip:")
      check("not-brotli.json", encrypt(plain), xmeta("brotli"), "brotli:")
    end)

    it("refuses a truncated gzip stream and gzip with data after its end", function()
      local path = tmpfile(string.rep("some text to compress, over and over. ", 200))
      local ok, out = sh.run("gzip -c " .. sh.quote(path) .. " > " .. sh.quote(path .. ".gz"))
      assert.is_true(ok, out)
      local gz = sh.read(path .. ".gz")
      os.remove(path)
      os.remove(path .. ".gz")
      check("cut.json", encrypt(gz:sub(1, math.floor(#gz / 2))), xmeta("gzip"), "gzip:")
      check("trailing.json", encrypt(gz .. "junk"), xmeta("gzip"), "gzip:")
      -- the whole stream reads fine
      cap:script{ { method = "GET", path = QUERY .. ckey .. "/whole.json", status = 200, body = encrypt(gz),
                    headers = { ["x-metadata"] = xmeta("gzip") } } }
      local res = assert(csdk:read_file{ contract = flow.contract(), user_access_token = ctoken, session_key = ckey,
                                         file_name = "whole.json" })
      assert.are.equal(string.rep("some text to compress, over and over. ", 200), res.file_data)
    end)

    it("reads a compression it does not know as none, and metadata with unknown enum values", function()
      local meta = { objectCount = 3, objectType = "hologram", serviceGroup = "tomorrow", serviceName = "futurebook",
                     schema = { standard = "future-standard", version = "9.9.9", id = "x1" }, newField = { 1, 2 } }
      cap:script{ { method = "GET", path = QUERY .. ckey .. "/future.json", status = 200, body = encrypt("as is"),
                    headers = { ["x-metadata"] = xmeta("zstd", meta) } } }
      local res, err = csdk:read_file{ contract = flow.contract(), user_access_token = ctoken, session_key = ckey,
                                       file_name = "future.json" }
      assert.is_nil(err)
      assert.are.equal("as is", res.file_data)
      assert.are.equal("none", res.compression)
      assert.are.same(meta, res.file_metadata)
      assert.are.equal("Tue, 15 Nov 1994 08:12:31 GMT", res.last_modified == nil and
        "Tue, 15 Nov 1994 08:12:31 GMT" or res.last_modified)
    end)

    it("refuses a file without a usable x-metadata header, and does not retry it", function()
      for what, value in pairs{ missing = false, ["not base64"] = "!!!!", ["not JSON"] = core.b64url_encode("nope"),
                                ["no metadata"] = core.b64url_encode('{"compression":"gzip"}') } do
        cap:clear()
        local headers = { ["Content-Type"] = "application/octet-stream" }
        if value then headers["x-metadata"] = value end
        cap:script{ { method = "GET", path = QUERY .. ckey .. "/meta.json", status = 200, count = 5,
                      body = encrypt("{}"), headers = headers } }
        local r = recorder()
        local res, err = csdk:read_file{ contract = flow.contract(), user_access_token = ctoken, session_key = ckey,
                                         file_name = "meta.json", sink = r.sink }
        assert.is_nil(res, what)
        assert.is_table(err, what)
        assert.is_truthy(tostring(err):find("x-metadata", 1, true), what .. ": " .. tostring(err))
        assert.are.equal(0, r.bytes, what)
        assert.are.equal(0, r.nils, what)
        assert.are.same(ctoken, err.user_access_token)
        assert.are.equal(1, #cap:requests_to(QUERY .. ckey .. "/meta.json"), what)
      end
    end)
  end)

  describe("memory", function()
    it("stays bounded in a child reading a 256 MiB file through a sink #slow", function()
      local big = flow.start{ args = { "--sync-pace", "0", "--big-file", "256m" } }
      local ok, e = pcall(function()
        local expected = big:control("GET", "manifest").files["big.bin"]
        for _, mode in ipairs{ { "sha256", "run" }, { "none", "plain" } } do
          local cmd = table.concat({ "cd", sh.quote(flow.sandbox.root), "&&", "lua5.4", "spec/support/big_read.lua",
            sh.quote(big.base_url), sh.quote(big.onboard_url), "big.bin", mode[1], mode[2] }, " ")
          local okc, out = sh.run(cmd)
          assert(okc, mode[1] .. "/" .. mode[2] .. ": " .. out)
          local line = out:match("(bytes=[^\n]*)")
          assert(line, out)
          local bytes = tonumber(line:match("bytes=(%d+)"))
          local hwm = tonumber(line:match(" hwm_kb=(%d+)"))
          assert.are.equal(256 * 1024 * 1024, bytes)
          assert.are.equal("1", line:match("nils=(%d+)"))
          assert.is_true(hwm < 80 * 1024,
            string.format("%s/%s: peak resident set %.1f MiB for a 256 MiB file", mode[1], mode[2], hwm / 1024))
          if mode[1] == "sha256" then
            assert.are.equal(expected, line:match("sha256=(%x+)"))
          end
        end
      end)
      big:stop()
      assert(ok, e)
    end)

    -- `timeout` is a stall limit: a transfer that keeps moving may take far longer than it.
    it("reads a 3 GiB file whole with timeout = 1.5 while bytes keep coming #slow", function()
      local big = flow.start{ args = { "--sync-pace", "0", "--big-file", "3g" } }
      local ok, e = pcall(function()
        local cmd = table.concat({ "cd", sh.quote(flow.sandbox.root), "&&", "lua5.4", "spec/support/big_read.lua",
          sh.quote(big.base_url), sh.quote(big.onboard_url), "big.bin", "none", "run", "1.5" }, " ")
        local okc, out = sh.run(cmd)
        assert(okc, out)
        local line = assert(out:match("(bytes=[^\n]*)"), out)
        assert.are.equal(3 * 1024 * 1024 * 1024, tonumber(line:match("bytes=(%d+)")))
        local seconds = tonumber(line:match("seconds=([%d.]+)"))
        assert.is_true(seconds > 1.5, "the read took " .. seconds .. " s: too short to show anything")
      end)
      big:stop()
      assert(ok, e)
    end)
  end)

  describe("a generated library", function()
    local gen, gsdk, gtoken, gkey

    lazy_setup(function()
      gen = flow.start{ args = { "--sync-pace", "0", "--generate", "50:2k:mixed" } }
      gsdk = assert(flow.sdk(gen))
      gtoken = flow.login(gsdk)
      gkey = assert(gsdk:read_session{ contract = flow.contract(), user_access_token = gtoken }).session.key
    end)

    lazy_teardown(function()
      if gen then gen:stop() end
    end)

    it("reads all 50 files of --generate 50:2k:mixed to their manifest hashes", function()
      local m = gen:control("GET", "manifest")
      assert.are.equal(50, m.count)
      local seen, comps = 0, {}
      for name, h in pairs(m.files) do
        local res, err = gsdk:read_file{ contract = flow.contract(), user_access_token = gtoken,
                                         session_key = gkey, file_name = name }
        assert.is_nil(err, name)
        assert.are.equal(2048, #res.file_data, name)
        assert.are.equal(h, sha256_hex(res.file_data), name)
        comps[res.compression] = true
        seen = seen + 1
      end
      assert.are.equal(50, seen)
      assert.are.same({ brotli = true, gzip = true, none = true }, comps)
    end)
  end)

  describe("a --library directory", function()
    local lib, lsdk, ltoken, lkey, dir

    local FUTURE = { objectCount = 2, objectType = "hologram", serviceGroup = "tomorrow", serviceName = "futurebook",
                     schema = { standard = "future-standard", version = "9.9.9", id = "fs-1" } }
    local RAW = { mimetype = "application/x-unknown", accounts = { { accountid = "77_Mine" } },
                  objecttypes = { { name = "thing", references = { "r1" } } }, tags = { "t" }, extraField = "kept" }

    lazy_setup(function()
      dir = sh.tmpdir()
      sh.write(dir .. "/future.json", '[{"id":1},{"id":2}]')
      sh.write(dir .. "/raw.bin", string.rep("\0\1\2\255", 1000))
      sh.write(dir .. "/plain.txt", "no metadata given\n")
      sh.write(dir .. "/metadata.json", cjson.encode{
        ["future.json"] = { compression = "gzip", metadata = FUTURE },
        ["raw.bin"] = { compression = "brotli", metadata = RAW },
      })
      lib = flow.start{ args = { "--sync-pace", "0", "--library", dir } }
      lsdk = assert(flow.sdk(lib))
      ltoken = flow.login(lsdk)
      lkey = assert(lsdk:read_session{ contract = flow.contract(), user_access_token = ltoken }).session.key
    end)

    lazy_teardown(function()
      if lib then lib:stop() end
      sh.rmdir(dir)
    end)

    local function both(name)
      local full = assert(lsdk:read_file{ contract = flow.contract(), user_access_token = ltoken,
                                          session_key = lkey, file_name = name })
      local head = assert(lsdk:read_file_metadata{ contract = flow.contract(), user_access_token = ltoken,
                                                   session_key = lkey, file_name = name })
      assert.are.same(full.file_metadata, head.file_metadata)
      assert.are.equal(full.last_modified, head.last_modified)
      return full
    end

    it("passes mapped metadata with an unknown schema standard through", function()
      local f = both("future.json")
      assert.are.same(FUTURE, f.file_metadata)
      assert.are.equal("gzip", f.compression)
      assert.are.equal('[{"id":1},{"id":2}]', f.file_data)
    end)

    it("passes raw metadata with unknown mimetype and extra fields through", function()
      local f = both("raw.bin")
      assert.are.same(RAW, f.file_metadata)
      assert.are.equal("brotli", f.compression)
      assert.are.equal(string.rep("\0\1\2\255", 1000), f.file_data)
      f = both("plain.txt")
      assert.are.equal("text/plain", f.file_metadata.mimetype)
      assert.are.equal("no metadata given\n", f.file_data)
    end)
  end)

  leak_check.it_leaks_nothing(true)
end)
