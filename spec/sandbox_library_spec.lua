-- The sandbox's user library (doc/sandbox.md "The library"): trigger, sync progression, file list,
-- file GET/HEAD in the digi.me file format, accounts, the library flags and the control
-- entries that go with them. Raw HTTP (luasocket, curl, the core's HTTP engine) and crypto
-- done here with luaossl and the openssl/gzip/brotli command lines, never the SDK's read code,
-- so a mistake there cannot hide one in the sandbox.

local sandbox = require "sandbox"
local sandbox_hooks = require "sandbox_hooks"
local cjson = require "cjson"
local core = require "digime.core"
local socket = require "socket"

local AGENT, json, ucall = sandbox.AGENT, sandbox.json, sandbox.ucall
local CALLBACK = "https://app.example/return"
local UNI = "\195\188n\195\175.json"    -- "ünï.json"

-- Helpers ------------------------------------------------------------------------------------

local shell = require("shell").status

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local read_file = require("shell").read
local hex = require("encode").hex
local urlencode = require("encode").urlencode

local function assert_error(res, status, code, message)
  assert.equal(status, res.status, res.body)
  local body = json(res)
  assert.equal(code, body.error.code)
  if message then
    assert.equal(message, body.error.message)
  end
  assert.equal(code, res.headers["x-error-code"])
  return body
end

-- authorize -> consent -> exchange: the token endpoint payload (access_token, refresh_token, sub)
-- (the session of the authorize answer as its field session)
local function login(sb)
  local t, session = sandbox.login(sb, CALLBACK)
  t.session = session
  return t
end


local function trigger(sb, token, options)
  local body = { agent = AGENT }
  for k, v in pairs(options or {}) do
    body[k] = v
  end
  local res = ucall(sb, "POST", "permission-access/trigger", token, { body = body })
  assert.equal(202, res.status, res.body)
  local s = json(res).session
  assert.is_string(s.key)
  assert.is_number(s.expiry)
  return s.key
end

local function list(sb, token, key)
  local res = ucall(sb, "GET", "permission-access/query/" .. key, token)
  assert.equal(200, res.status, res.body)
  return json(res)
end

-- Polls until the sync ends: -> every answer, in order
local function poll(sb, token, key, interval)
  local answers = {}
  for _ = 1, 200 do
    local a = list(sb, token, key)
    answers[#answers + 1] = a
    if a.status.state == "completed" or a.status.state == "partial" then
      return answers
    end
    sandbox.sleep(interval or 0.05)
  end
  error("the sync never ended")
end

local function file_path(key, name)
  return "permission-access/query/" .. key .. "/" .. urlencode(name)
end

local function private_key()
  return assert(core.private_key(sandbox.demo().private_key))
end

-- The digi.me file format, taken apart here with luaossl (not the core's decryptor).
local function decrypt(data, key)
  key = key or private_key()
  local n = key:size()
  assert.is_true(#data >= n + 32 and (#data - n) % 16 == 0, "bad size " .. #data)
  local aes = assert(key:oaep_decrypt(data:sub(1, n)))
  assert.equal(32, #aes)
  local iv = data:sub(n + 1, n + 16)
  local cipher = require "openssl.cipher"
  return cipher.new("aes-256-cbc"):decrypt(aes, iv):final(data:sub(n + 17))
end

local function decompress(data, compression)
  local tool = ({ gzip = "gzip -dc", brotli = "brotli -dc" })[compression]
  if not tool then
    return data
  end
  local tmp = os.tmpname()
  write_file(tmp, data)
  local p = io.popen(tool .. " < " .. tmp)
  local out = p:read("*a")
  local ok = p:close()
  os.remove(tmp)
  assert.truthy(ok, compression .. " failed")
  return out
end

local function x_metadata(res)
  local v = res.headers["x-metadata"]
  assert.is_string(v)
  assert.matches("^[%w%-_]+$", v)    -- base64url, no padding
  local text = core.b64url_decode(v)
  assert.is_string(text)
  return cjson.decode(text)
end

-- GET a file and check it against the manifest: -> plaintext, x-metadata, response
local function fetch(sb, token, key, name, manifest)
  local res = ucall(sb, "GET", file_path(key, name), token)
  assert.equal(200, res.status, res.body)
  assert.equal("application/octet-stream", res.headers["content-type"])
  assert.equal(tostring(#res.body), res.headers["content-length"])
  local meta = x_metadata(res)
  local plain = decompress(decrypt(res.body), meta.compression)
  if manifest then
    assert.equal(manifest.files[name], hex(core.sha256(plain)), name)
  end
  return plain, meta, res
end

local function manifest(sb)
  local m, status = sb:control("GET", "manifest")
  assert.equal(200, status)
  return m
end

local count_keys = require("tables").count_keys

-- Specs ---------------------------------------------------------------------------------------

describe("sandbox library", function()
  local sb, token

  setup(function()
    sb = sandbox.start{ args = { "--sync-pace", "0.1", "--big-file", "1m", "--hostile-names" } }
  end)

  sandbox_hooks.stop_and_reset(function() return sb end, "teardown")

  before_each(function()
    token = login(sb)
  end)

  describe("sync", function()
    it("goes pending -> running (half the files) -> running (all) -> completed #timing", function()
      local key = trigger(sb, token)
      local m = manifest(sb)
      local answers = poll(sb, token, key, 0.03)
      local states, counts = {}, {}
      for _, a in ipairs(answers) do
        local count = a.fileList and #a.fileList or false
        if states[#states] ~= a.status.state or counts[#counts] ~= count then
          states[#states + 1] = a.status.state
          counts[#counts + 1] = count
        end
      end
      assert.same({ "pending", "running", "running", "completed" }, states)
      assert.same({ false, math.ceil(m.count / 2), m.count, m.count }, counts)
      -- pending: no fileList key, no details
      assert.is_nil(answers[1].fileList)
      assert.is_nil(answers[1].status.details)
      local last = answers[#answers]
      local names = {}
      for _, f in ipairs(last.fileList) do
        assert.is_string(f.name)
        assert.is_number(f.updatedDate)
        assert.is_true(f.updatedDate > 1500000000000)     -- milliseconds
        names[f.name] = true
        if f.schema then
          assert.same({ standard = "digime", version = "1.0.0" }, f.schema)
          assert.is_string(f.serviceGroup)
          assert.is_string(f.serviceName)
          assert.is_number(f.objectCount)
          assert.is_string(f.objectType)
        end
      end
      for name in pairs(m.files) do
        assert.is_true(names[name], name)
      end
      -- details: every account running, then completed
      local running = answers[#answers - 1].status.details
      local done = last.status.details
      assert.equal(2, count_keys(done))
      for id, d in pairs(running) do
        assert.same({ state = "running" }, d)
        assert.same({ state = "completed" }, done[id])
      end
    end)

    it("every poll advances at most one step, however slowly it polls", function()
      local key = trigger(sb, token)
      sandbox.sleep(0.35)
      local a = list(sb, token, key)
      assert.equal("running", a.status.state)
      assert.is_true(#a.fileList < manifest(sb).count)
    end)

    it("a new trigger restarts the sync; sourceFetch false completes at once #timing", function()
      local key = trigger(sb, token)
      poll(sb, token, key, 0.03)
      local key2 = trigger(sb, token)
      assert.are_not.equal(key, key2)
      assert.equal("pending", list(sb, token, key2).status.state)
      sandbox.sleep(0.12)
      -- the user's sessions share the user's sync
      assert.equal("running", list(sb, token, key).status.state)
      local key3 = trigger(sb, token, { sourceFetch = false, scope = { timeRanges = { { last = "6y" } } } })
      assert.equal("completed", list(sb, token, key3).status.state)
    end)

    it("the authorize session works for its user once consent is given", function()
      local answers = poll(sb, token, token.session.key, 0.03)
      assert.equal("completed", answers[#answers].status.state)
    end)

    it("refuses bad tokens, unknown sessions, other users' sessions and bad options", function()
      local key = trigger(sb, token)
      assert_error(ucall(sb, "GET", "permission-access/query/" .. key, "nope"), 401,
                   "InvalidToken", "The token (access_token) is invalid")
      assert_error(ucall(sb, "GET", "permission-access/query/unknownsession", token), 404,
                   "SessionNotFound")
      local other = login(sb)
      assert_error(ucall(sb, "GET", "permission-access/query/" .. key, other), 403, "InvalidSession")
      assert_error(ucall(sb, "GET", file_path(key, "notes.txt"), other), 403, "InvalidSession")
      assert_error(ucall(sb, "POST", "permission-access/trigger", token,
                         { body = { agent = AGENT, scope = "everything" } }), 400, "ValidationErrors")
      assert_error(ucall(sb, "POST", "permission-access/trigger", token,
                         { body = { agent = AGENT, sourceFetchFilter = { nope = 1 } } }),
                   400, "ValidationErrors")
      -- no Bearer at all: the usual 406
      assert_error(assert(sb:request{ path = "permission-access/query/" .. key }), 406,
                   "ValidationErrors")
      -- an expired access token: 401 InvalidToken, on the trigger too
      sb:expire("access")
      assert_error(ucall(sb, "POST", "permission-access/trigger", token, { body = { agent = AGENT } }),
                   401, "InvalidToken", "The token (access_token) is invalid")
    end)
  end)

  describe("files", function()
    local key, m

    before_each(function()
      key = trigger(sb, token, { sourceFetch = false })   -- completed at once
      assert.equal("completed", list(sb, token, key).status.state)
      m = manifest(sb)
    end)

    it("every file decrypts with the contract key and matches the manifest", function()
      assert.equal(14, m.count)
      local seen = {}
      for name in pairs(m.files) do
        local _, meta, res = fetch(sb, token, key, name, m)
        seen[meta.compression or "absent"] = true
        assert.is_table(meta.metadata)
        if meta.metadata.mimetype then
          assert.is_string(meta.metadata.accounts[1].accountid)
        else
          assert.is_number(meta.metadata.objectCount)
          assert.same({ standard = "digime", version = "1.0.0" }, meta.metadata.schema)
        end
        assert.matches("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$", res.headers["last-modified"])
      end
      assert.is_true(seen.gzip and seen.brotli and seen.absent and seen.none)
    end)

    it("awkward names are data", function()
      for _, name in ipairs{ "constructor", "__proto__", "a.b.c.json", "with space.json", UNI } do
        assert.is_string(m.files[name], name)
        fetch(sb, token, key, name, m)
      end
      -- %20 and a literal "+" are different things in a path
      assert_error(ucall(sb, "GET", "permission-access/query/" .. key .. "/with+space.json", token),
                   404, "FileNotFound")
    end)

    it("encrypts per request: two GETs differ, both decrypt", function()
      local a = ucall(sb, "GET", file_path(key, "notes.txt"), token)
      local b = ucall(sb, "GET", file_path(key, "notes.txt"), token)
      assert.are_not.equal(a.body, b.body)
      assert.equal(decrypt(a.body), decrypt(b.body))
    end)

    it("HEAD has the same headers and the GET's length, and no body", function()
      for _, name in ipairs{ "instagram_posts.json", "notes.txt", "big.bin", "empty.txt" } do
        local g = ucall(sb, "GET", file_path(key, name), token)
        local h = ucall(sb, "HEAD", file_path(key, name), token)
        assert.equal(200, h.status)
        assert.equal("", h.body)
        assert.equal(g.headers["x-metadata"], h.headers["x-metadata"])
        assert.equal(g.headers["last-modified"], h.headers["last-modified"])
        assert.equal(g.headers["content-length"], h.headers["content-length"])
      end
    end)

    it("an empty file is one padding block after the key and IV", function()
      local plain, _, res = fetch(sb, token, key, "empty.txt", m)
      assert.equal("", plain)
      assert.equal(256 + 16 + 16, #res.body)
    end)

    it("streams big.bin (--big-file) in the same format", function()
      local plain, meta, res = fetch(sb, token, key, "big.bin", m)
      assert.equal(1024 * 1024, #plain)
      assert.equal(256 + 16 + 1024 * 1024 + 16, #res.body)
      assert.equal("application/octet-stream", meta.metadata.mimetype)
      assert.is_nil(meta.compression)
    end)

    it("unknown files are 404 with an API error", function()
      assert_error(ucall(sb, "GET", file_path(key, "nope.json"), token), 404, "FileNotFound")
      local h = ucall(sb, "HEAD", file_path(key, "nope.json"), token)
      assert.equal(404, h.status)
      assert.equal("FileNotFound", h.headers["x-error-code"])
    end)

    it("an access token expired mid-sync: the next file GET is 401 InvalidToken #timing", function()
      local k2 = trigger(sb, token)
      assert.equal("pending", list(sb, token, k2).status.state)
      sb:expire("access")
      local res = ucall(sb, "GET", file_path(k2, "notes.txt"), token)
      assert_error(res, 401, "InvalidToken", "The token (access_token) is invalid")
      -- a refresh gives a token that reads on
      local r = assert(sb:call("POST", "oauth/token", {
        claims = { grant_type = "refresh_token", refresh_token = token.refresh_token.value } }))
      assert.equal(201, r.status)
      local _, t2 = sandbox.decode_jwt(json(r).token)
      fetch(sb, t2, k2, "notes.txt", m)
    end)

    it("raw/NAME serves the encrypted file without auth", function()
      for _, name in ipairs{ "notes.txt", UNI, "big.bin" } do
        local res = assert(sb:request{ url = sb.control_url .. "raw/" .. urlencode(name) })
        assert.equal(200, res.status)
        local meta = x_metadata(res)
        assert.equal(m.files[name], hex(core.sha256(decompress(decrypt(res.body), meta.compression))))
      end
      assert.equal(404, assert(sb:request{ url = sb.control_url .. "raw/nope" }).status)
      assert.equal(0, sb:stats().downloads)   -- control requests are not counted
    end)

    it("manifest.txt has sha256sum lines of the same hashes", function()
      local res = assert(sb:request{ url = sb.control_url .. "manifest.txt" })
      assert.equal(200, res.status)
      local n = 0
      for line in res.body:gmatch("[^\n]+") do
        local h, name = line:match("^(%x+)  (.+)$")
        assert.equal(64, #h)
        assert.equal(m.files[name], h)
        n = n + 1
      end
      assert.equal(m.count, n)
    end)

    it("touch: new content and a later updatedDate, seen by a running sync; reset undoes it", function()
      local before = list(sb, token, key)
      local function entry(l, name)
        for _, f in ipairs(l.fileList) do
          if f.name == name then
            return f
          end
        end
      end
      local old = entry(before, "instagram_posts.json")
      local t, status = sb:control("POST", "library", { touch = "instagram_posts.json" })
      assert.equal(200, status)
      assert.is_true(t.updatedDate > old.updatedDate)
      local after = list(sb, token, key)
      local new = entry(after, "instagram_posts.json")
      assert.equal(t.updatedDate, new.updatedDate)
      assert.equal(old.objectCount + 1, new.objectCount)
      local m2 = manifest(sb)
      assert.are_not.equal(m.files["instagram_posts.json"], m2.files["instagram_posts.json"])
      local plain = fetch(sb, token, key, "instagram_posts.json", m2)
      assert.is_table(cjson.decode(plain))    -- still JSON
      -- touched again, with given content, during a running sync
      local k2 = trigger(sb, token)
      sandbox.sleep(0.12)
      assert.equal("running", list(sb, token, k2).status.state)
      local t2 = sb:control("POST", "library", { touch = "notes.txt", content = "new text" })
      assert.equal("new text", (fetch(sb, token, k2, "notes.txt")))
      local seen
      for _, a in ipairs(poll(sb, token, k2, 0.03)) do
        seen = entry(a, "notes.txt") or seen
      end
      assert.equal(t2.updatedDate, seen.updatedDate)
      -- a touched brotli file (touches are stored-encoded: no process runs while serving)
      sb:control("POST", "library", { touch = "instagram_media.json" })
      local media, meta = fetch(sb, token, k2, "instagram_media.json", manifest(sb))
      assert.equal("brotli", meta.compression)
      assert.matches('^%[{"sandboxTouch":1},', media)
      -- big.bin can be touched too: a new stream, a new hash
      local t3 = sb:control("POST", "library", { touch = "big.bin" })
      assert.are_not.equal(m.files["big.bin"], t3.sha256)
      fetch(sb, token, k2, "big.bin", manifest(sb))
      -- errors
      assert.equal(404, select(2, sb:control("POST", "library", { touch = "nope" })))
      assert.equal(400, select(2, sb:control("POST", "library", {})))
      -- reset: the library as built
      sb:reset()
      assert.same(m, manifest(sb))
    end)

    it("accounts: a bare array, one USER account per library account", function()
      local res = ucall(sb, "GET", "permission-access/accounts", token)
      assert.equal(200, res.status)
      assert.matches("^%[", res.body)
      local accounts = json(res)
      assert.equal(2, #accounts)
      for _, a in ipairs(accounts) do
        for _, k in ipairs{ "id", "reference", "serviceGroupName", "serviceTypeName",
                            "serviceTypeReference" } do
          assert.is_string(a[k], k)
        end
        for _, k in ipairs{ "createdDate", "serviceGroupId", "serviceTypeId", "sourceId",
                            "updatedDate" } do
          assert.is_number(a[k], k)
        end
        assert.equal("USER", a.type)
        assert.is_true(a.accessTokenStatus.authorized)
      end
      assert_error(ucall(sb, "GET", "permission-access/accounts", "nope"), 401, "InvalidToken")
    end)
  end)

  describe("faults on the read paths, mid-sync", function()
    local key
    before_each(function()
      key = trigger(sb, token)
    end)

    it("5xx, 429 with Retry-After, reset, truncate, delay, hang", function()
      local path = "/v1.7/permission-access/query/" .. key
      sb:fault{ path = path, action = "status", status = 503, count = 1 }
      assert.equal(503, ucall(sb, "GET", "permission-access/query/" .. key, token).status)
      sb:fault{ path = path .. "/", action = "status", status = 429, headers = { ["Retry-After"] = "2" },
                body = { error = { code = "TooManyRequests", message = "slow down" } } }
      local r = ucall(sb, "GET", file_path(key, "notes.txt"), token)
      assert.equal(429, r.status)
      assert.equal("2", r.headers["retry-after"])
      sb:fault{ path = path .. "/", action = "reset" }
      assert.is_nil((sb:call("GET", file_path(key, "notes.txt"),
                             { claims = { access_token = token.access_token.value } })))
      -- truncate: full content-length, half the bytes (a small file and the streamed one)
      for _, name in ipairs{ "notes.txt", "big.bin" } do
        sb:fault{ path = path .. "/", action = "truncate" }
        local jwt = sandbox.sign(sandbox.claims{ access_token = token.access_token.value })
        local tmp = os.tmpname()
        local rc, out = shell("curl -s -o " .. tmp .. " -w '%{size_download} %{http_code}' -H "
                              .. sandbox.sh_quote("authorization: Bearer " .. jwt) .. " "
                              .. sandbox.sh_quote(sb.base_url .. file_path(key, name)))
        local h = ucall(sb, "HEAD", file_path(key, name), token)
        local full = tonumber(h.headers["content-length"])
        assert.equal(18, rc)   -- curl: partial file
        local got = tonumber(out:match("^(%d+)"))
        assert.equal(math.floor(full / 2), got)
        os.remove(tmp)
      end
      -- delay, then a normal answer
      sb:fault{ path = path .. "/", action = "delay", ms = 300 }
      local t0 = socket.gettime()
      assert.equal(200, ucall(sb, "GET", file_path(key, "notes.txt"), token).status)
      assert.is_true(socket.gettime() - t0 >= 0.28)
      -- hang with ms: no answer, the connection closes
      sb:fault{ path = path .. "/", action = "hang", ms = 200 }
      assert.is_nil((sb:call("GET", file_path(key, "notes.txt"),
                             { claims = { access_token = token.access_token.value }, timeout = 5 })))
      -- and the sync carries on
      local answers = poll(sb, token, key, 0.03)
      assert.equal("completed", answers[#answers].status.state)
    end)

    it("stats count downloads and the most file GETs in flight at once", function()
      sb:fault{ path = "/v1.7/permission-access/query/" .. key .. "/", action = "delay", ms = 400,
                count = 4 }
      local engine = core.http_engine()
      local names = { "notes.txt", "constructor", UNI, "big.bin" }
      for _, name in ipairs(names) do
        local jwt = sandbox.sign(sandbox.claims{ access_token = token.access_token.value })
        engine:add{ url = sb.base_url .. file_path(key, name),
                    headers = { authorization = "Bearer " .. jwt }, timeout = 10 }
      end
      local results = {}
      local deadline = socket.gettime() + 10
      while #results < #names and socket.gettime() < deadline do
        engine:perform()
        for _, done in ipairs(engine:finished()) do
          results[#results + 1] = assert(done:result())
        end
        engine:poll(50)
      end
      engine:close()
      assert.equal(#names, #results)
      for _, res in ipairs(results) do
        assert.equal(200, res.status)
      end
      local st = sb:stats()
      assert.equal(4, st.max_inflight_downloads)
      assert.equal(0, st.inflight_downloads)
      assert.equal(4, st.downloads)
      assert.is_true(st.download_bytes > 1024 * 1024)
      -- HEAD is not a download
      ucall(sb, "HEAD", file_path(key, "notes.txt"), token)
      assert.equal(4, sb:stats().downloads)
    end)
  end)
end)

describe("sandbox library flags", function()
  it("--partial: an account whose sync ends partial with ServiceAuthorizationError", function()
    local sb = sandbox.start{ args = { "--partial", "--sync-pace", "0" } }
    local ok, err = pcall(function()
      local token = login(sb)
      local key = trigger(sb, token)
      local a = list(sb, token, key)
      assert.equal("partial", a.status.state)
      assert.equal(3, count_keys(a.status.details))
      local partial
      for id, d in pairs(a.status.details) do
        if d.state == "partial" then
          partial = id
          assert.same({ code = "ServiceAuthorizationError", statusCode = 511,
                        message = "Service authorization required", reauth = true,
                        retryAfter = d.error.retryAfter }, d.error)
          assert.is_number(d.error.retryAfter)
        else
          assert.same({ state = "completed" }, d)
        end
      end
      assert.is_string(partial)
      assert.equal(13, #a.fileList)
      local accounts = json(ucall(sb, "GET", "permission-access/accounts", token))
      assert.equal(3, #accounts)
      for _, acc in ipairs(accounts) do
        assert.equal(acc.id ~= partial, acc.accessTokenStatus.authorized)
      end
    end)
    sb:stop()
    assert(ok, err)
  end)

  it("--generate 50:2k:mixed: 50 files of 2 KiB, gzip, brotli and none", function()
    local sb = sandbox.start{ args = { "--generate", "50:2k:mixed", "--sync-pace", "0" } }
    local ok, err = pcall(function()
      local token = login(sb)
      local key = trigger(sb, token)
      local a = list(sb, token, key)
      assert.equal("completed", a.status.state)
      assert.equal(50, #a.fileList)
      local m = manifest(sb)
      assert.equal(50, m.count)
      local comps = {}
      for i, f in ipairs(a.fileList) do
        if i <= 6 then
          local plain, meta = fetch(sb, token, key, f.name, m)
          assert.equal(2048, #plain)
          local records = cjson.decode(plain)
          assert.equal(f.objectCount, #records)
          comps[meta.compression or "none"] = true
        end
      end
      assert.same({ gzip = true, brotli = true, none = true }, comps)
      -- deterministic: the same flags give the same files
      local sb2 = sandbox.start{ args = { "--generate", "50:2k:mixed" } }
      local m2 = manifest(sb2)
      sb2:stop()
      assert.same(m, m2)
    end)
    sb:stop()
    assert(ok, err)
  end)

  it("--library DIR with metadata.json", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    write_file(dir .. "/one.json", '{"one":1}')
    write_file(dir .. "/two words.txt", "two\n")
    write_file(dir .. "/photo.jpg", "\255\216\255 not really a jpeg")
    write_file(dir .. "/metadata.json", cjson.encode{
      ["one.json"] = { compression = "brotli", metadata = { objectCount = 1, objectType = "thing",
        serviceGroup = "misc", serviceName = "mine", schema = { standard = "digime", version = "1.0.0" } } },
      ["two words.txt"] = { compression = "gzip", account = "77_Mine" },
    })
    local sb = sandbox.start{ args = { "--library", dir, "--sync-pace", "0" } }
    local ok, err = pcall(function()
      local token = login(sb)
      local key = trigger(sb, token)
      local a = list(sb, token, key)
      assert.equal(3, #a.fileList)
      local m = manifest(sb)
      assert.equal(3, m.count)
      local plain, meta = fetch(sb, token, key, "one.json", m)
      assert.equal('{"one":1}', plain)
      assert.equal("brotli", meta.compression)
      assert.equal("thing", meta.metadata.objectType)
      plain, meta = fetch(sb, token, key, "two words.txt", m)
      assert.equal("two\n", plain)
      assert.equal("gzip", meta.compression)
      assert.same({ { accountid = "77_Mine" } }, meta.metadata.accounts)
      assert.equal("text/plain", meta.metadata.mimetype)
      meta = select(2, fetch(sb, token, key, "photo.jpg", m))
      assert.equal("image/jpeg", meta.metadata.mimetype)
      assert.is_nil(meta.compression)
      local ids = {}
      for _, acc in ipairs(json(ucall(sb, "GET", "permission-access/accounts", token))) do
        ids[acc.id] = true
      end
      assert.is_true(ids["77_Mine"])
      assert.is_true(a.status.details["77_Mine"].state == "completed")
    end)
    sb:stop()
    os.execute("rm -rf " .. dir)
    assert(ok, err)
  end)

  it("without the gzip and brotli commands: stored encodings, still valid", function()
    local sb = sandbox.start{ args = { "--sync-pace", "0" }, env = { DIGIME_SANDBOX_NO_TOOLS = "1" } }
    local ok, err = pcall(function()
      assert.matches("no gzip command", sb:stderr())
      local token = login(sb)
      local key = trigger(sb, token)
      local m = manifest(sb)
      for name in pairs(m.files) do
        fetch(sb, token, key, name, m)
      end
    end)
    sb:stop()
    assert(ok, err)
  end)

  it("--config takes the library settings too", function()
    local cfg = os.tmpname()
    write_file(cfg, cjson.encode{ generate = "3:100:gzip", sync_pace = 0, partial = true,
                                  big_file = "1k" })
    local sb = sandbox.start{ args = { "--config", cfg } }
    local ok, err = pcall(function()
      local token = login(sb)
      local a = list(sb, token, trigger(sb, token))
      assert.equal("partial", a.status.state)
      assert.equal(4, #a.fileList)
      assert.equal("big.bin", a.fileList[4].name)
    end)
    sb:stop()
    os.remove(cfg)
    assert(ok, err)
  end)

  it("refuses bad library flags with exit 2 (usage) or 1 (no such directory)", function()
    local bin = sandbox.sh_quote(sandbox.bin)
    assert.equal(2, (shell(bin .. " --generate 5")))
    assert.equal(2, (shell(bin .. " --generate 5:2x")))
    assert.equal(2, (shell(bin .. " --generate 5:2k:zip")))
    assert.equal(2, (shell(bin .. " --big-file lots")))
    assert.equal(2, (shell(bin .. " --sync-pace -1")))
    local rc, out = shell(bin .. " --library /no/such/dir")
    assert.equal(1, rc)
    assert.matches("not a readable directory", out)
  end)

  it("--big-file 64m: streamed with a small RSS, decrypts to the manifest hash #slow", function()
    local sb = sandbox.start{ args = { "--big-file", "64m", "--sync-pace", "0" } }
    local tmp = os.tmpname()
    local ok, err = pcall(function()
      local token = login(sb)
      local key = trigger(sb, token)
      local m = manifest(sb)
      local jwt = sandbox.sign(sandbox.claims{ access_token = token.access_token.value })
      local rc, out = shell("curl -s -o " .. tmp .. " -w '%{size_download} %{speed_download}' -H "
                            .. sandbox.sh_quote("authorization: Bearer " .. jwt) .. " "
                            .. sandbox.sh_quote(sb.base_url .. file_path(key, "big.bin")))
      assert.equal(0, rc, out)
      local size, speed = out:match("^(%d+) ([%d%.]+)")
      assert.equal(256 + 16 + 64 * 1024 * 1024 + 16, tonumber(size))
      local status = read_file("/proc/" .. sb.pid .. "/status")
      local rss = tonumber(status:match("VmRSS:%s*(%d+)"))
      local hwm = tonumber(status:match("VmHWM:%s*(%d+)"))
      io.stderr:write(string.format("[big.bin 64m: %.0f MB/s, sandbox VmRSS %d KiB, VmHWM %d KiB]\n",
                                    tonumber(speed) / 1e6, rss, hwm))
      assert.is_true(hwm < 100 * 1024, "VmHWM " .. hwm .. " KiB")
      -- key and IV here, the body through `openssl enc` from the file
      local f = assert(io.open(tmp, "rb"))
      local head = f:read(272)
      f:close()
      local aes = assert(private_key():oaep_decrypt(head:sub(1, 256)))
      local rc2, sum = shell("tail -c +273 " .. tmp .. " | openssl enc -d -aes-256-cbc -K " .. hex(aes)
                             .. " -iv " .. hex(head:sub(257, 272)) .. " | sha256sum")
      assert.equal(0, rc2, sum)
      assert.equal(m.files["big.bin"], sum:match("^(%x+)"))
    end)
    os.remove(tmp)
    sb:stop()
    assert(ok, err)
  end)
end)
