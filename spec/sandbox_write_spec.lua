-- The sandbox's writing and managing endpoints (doc/protocol.md "Endpoints", "How the server
-- checks a request"): pushes to the library and to providers, account and user deletion, revoke, the
-- portability report, sample data sets, contract details, discovery, storage and the cloud
-- storage API, and the onboarding pages that go with them. Raw HTTP (luasocket, a raw socket
-- for chunked bodies, curl for Expect: 100-continue) and crypto done here with the core's key
-- and luaossl, never the SDK's code.

local sandbox = require "sandbox"
local sandbox_hooks = require "sandbox_hooks"
local cjson = require "cjson"
local core = require "digime.core"
local socket = require "socket"
local cipher = require "openssl.cipher"
local digest = require "openssl.digest"

local AGENT, json, query_of, ucall = sandbox.AGENT, sandbox.json, sandbox.query_of, sandbox.ucall
local CALLBACK = "https://app.example/return"
local DEMO = sandbox.demo()
local APP = DEMO.application_id
local KID = DEMO.contract_id .. "_" .. DEMO.application_id .. "_0"
local ACC_A, ACC_B = "40_SbInstagram01", "24_SbFitbit01"    -- the built-in library's accounts

-- Helpers ------------------------------------------------------------------------------------

local hex = require("encode").hex

local sha256_hex = require("encode").sha256_hex

local urlencode = require("encode").urlencode

local count_keys = require("tables").count_keys

-- An API error answer: status, code, message (when given), X-Error-* headers.
local function assert_error(res, status, code, message)
  assert.equal(status, res.status, res.body)
  local body = json(res)
  assert.equal(code, body.error.code, res.body)
  if message then
    assert.equal(message, body.error.message)
  end
  assert.is_string(body.error.reference)
  assert.equal(code, res.headers["x-error-code"])
  return body
end

-- A storage error answer: exactly {"error", "message"}.
local function assert_serror(res, status, code)
  assert.equal(status, res.status, res.body)
  local body = json(res)
  assert.equal(code, body.error, res.body)
  assert.is_string(body.message)
  assert.equal(2, count_keys(body))
  return body
end

local function decode_payload(jwt)
  local _, p = sandbox.decode_jwt(jwt)
  return p
end

-- authorize -> consent -> exchange: the token endpoint payload. opts.storage_ref goes on the
-- authorize page.
local function login(sb, opts)
  return (sandbox.login(sb, CALLBACK, opts))
end

-- A CONTRACT-claims call.
local function ccall(sb, method, path, opts)
  opts = opts or {}
  return assert(sb:call(method, path, { claims = opts.claims or {}, body = opts.body,
                                        headers = opts.headers, key = opts.key }))
end

local function trigger(sb, token)
  local res = ucall(sb, "POST", "permission-access/trigger", token,
                    { body = { agent = AGENT, sourceFetch = false } })
  assert.equal(202, res.status, res.body)
  return json(res).session.key
end

-- A fresh session's completed file list: -> body, { name -> entry }
local function file_list(sb, token)
  local key = trigger(sb, token)
  local res = ucall(sb, "GET", "permission-access/query/" .. key, token)
  assert.equal(200, res.status, res.body)
  local body = json(res)
  local names = {}
  for _, f in ipairs(body.fileList or {}) do
    names[f.name] = f
  end
  return body, names, key
end

local function accounts(sb, token)
  local res = ucall(sb, "GET", "permission-access/accounts", token)
  assert.equal(200, res.status, res.body)
  local by = {}
  for _, a in ipairs(json(res)) do
    by[a.id] = a
  end
  return by
end

local function private_key()
  return assert(core.private_key(DEMO.private_key))
end

-- The digi.me file format taken apart with the core's OAEP and luaossl's AES.
local function decrypt(data)
  local key = private_key()
  local n = key:size()
  assert.is_true(#data >= n + 32 and (#data - n) % 16 == 0, "bad size " .. #data)
  local aes = assert(key:oaep_decrypt(data:sub(1, n)))
  local iv = data:sub(n + 1, n + 16)
  return cipher.new("aes-256-cbc"):decrypt(aes, iv):final(data:sub(n + 17))
end

local function fetch(sb, token, key, name)
  local res = ucall(sb, "GET", "permission-access/query/" .. key .. "/" .. urlencode(name), token)
  assert.equal(200, res.status, res.body)
  local text = core.b64url_decode(res.headers["x-metadata"])
  return decrypt(res.body), cjson.decode(text), text
end

-- FileDescriptor JWT (doc/protocol.md "Request JWTs", FILEDESC).
local function descriptor(metadata, opts)
  opts = opts or {}
  return sandbox.sign({ metadata = metadata }, { header = opts.header or { alg = "PS512", typ = "JWT" },
                                                 key = opts.key })
end

local function push(sb, token, bytes, metadata, opts)
  opts = opts or {}
  local headers = { ["content-type"] = opts.content_type or "application/octet-stream" }
  if opts.descriptor ~= false then
    headers.filedescriptor = opts.descriptor or descriptor(metadata)
  end
  return ucall(sb, "POST", "permission-access/import", token, { headers = headers, body = bytes })
end

local function pushes(sb)
  local v, status = sb:control("GET", "pushes")
  assert.equal(200, status)
  return v
end

-- One request on a raw socket (Connection: close), so bodies can be chunked or lie about their
-- length. head: lines without the final blank line; parts: strings or a function giving them
-- (nil at the end), sent chunked when opts.chunked. -> { status, headers, body }
local function raw_http(sb, method, path, head, parts, opts)
  opts = opts or {}
  local host, port = sb.origin:match("^http://([^:/]+):(%d+)")
  local c = assert(socket.tcp())
  c:settimeout(opts.timeout or 60)
  assert(c:connect(host, tonumber(port)))
  local lines = { method .. " " .. path .. " HTTP/1.1", "host: " .. host .. ":" .. port,
                  "connection: close" }
  for _, l in ipairs(head) do
    lines[#lines + 1] = l
  end
  if opts.chunked then
    lines[#lines + 1] = "transfer-encoding: chunked"
  end
  assert(c:send(table.concat(lines, "\r\n") .. "\r\n\r\n"))
  local nextp = parts
  if type(parts) == "table" then
    local i = 0
    nextp = function()
      i = i + 1
      return parts[i]
    end
  end
  while nextp do
    local p = nextp()
    if p == nil then
      break
    end
    if opts.chunked then
      if #p > 0 then
        assert(c:send(string.format("%x\r\n", #p) .. p .. "\r\n"))
      end
    else
      assert(c:send(p))
    end
  end
  if opts.chunked then
    assert(c:send("0\r\n\r\n"))
  end
  local status_line = assert(c:receive("*l"))
  local res = { status = tonumber(status_line:match("^HTTP/1%.%d (%d%d%d)")), headers = {} }
  while true do
    local l = assert(c:receive("*l"))
    if l == "" then
      break
    end
    local k, v = l:match("^([^:]+):%s*(.-)%s*$")
    res.headers[k:lower()] = v
  end
  local n = tonumber(res.headers["content-length"] or "")
  if n then
    res.body = n > 0 and assert(c:receive(n)) or ""
  else
    res.body = c:receive("*a") or ""
  end
  c:close()
  return res
end

local function bearer(_, token)
  local at = type(token) == "table" and token.access_token.value or token
  return "authorization: Bearer " .. sandbox.sign(sandbox.claims{ access_token = at })
end

-- CLOUD JWT (doc/protocol.md "Request JWTs"): opts.claims (false removes one), opts.header, opts.key.
local function cloud_jwt(opts)
  opts = opts or {}
  local now = os.time()
  local claims = { sub = APP, iss = DEMO.contract_id, aud = "cloud", iat = now, exp = now + 60 }
  for k, v in pairs(opts.claims or {}) do
    if v == false then
      claims[k] = nil
    else
      claims[k] = v
    end
  end
  return sandbox.sign(claims, { header = opts.header or { alg = "PS512", typ = "at+jwt", kid = KID },
                                key = opts.key })
end

-- A cloud call: path after cloud_base_url; opts.jwt (options of cloud_jwt), opts.auth (a whole
-- Authorization value, or false for none), opts.body, opts.headers.
local function cloud(sb, method, path, opts)
  opts = opts or {}
  local headers = {}
  for k, v in pairs(opts.headers or {}) do
    headers[k] = v
  end
  if opts.auth == nil then
    headers.authorization = "Bearer " .. cloud_jwt(opts.jwt)
  elseif opts.auth then
    headers.authorization = opts.auth
  end
  return assert(sb:request{ method = method, url = sb.cloud_base_url .. path, headers = headers,
                            body = opts.body })
end

local function files_path(sid, rest, app)
  return "clouds/" .. sid .. "/files/apps/" .. (app or APP) .. (rest or "")
end

local function upload(sb, sid, rest, bytes, opts)
  opts = opts or {}
  return cloud(sb, "POST", files_path(sid, rest), {
    body = bytes, jwt = opts.jwt,
    headers = { ["content-type"] = opts.content_type or "application/octet-stream" } })
end

local function new_storage(sb)
  local res = ccall(sb, "POST", "storage", { headers = { ["content-type"] = "application/json" } })
  assert.equal(201, res.status, res.body)
  local s = json(res)
  assert.matches("^%x+%-%x+%-4%x+%-%x+%-%x+$", s.id)
  assert.equal(KID, s.kid)
  return s.id
end

local function storage_summary(sb, sid)
  local list = sb:control("GET", "storage")
  for _, s in ipairs(list) do
    if s.id == sid then
      return s
    end
  end
  return nil
end

-- Pseudo-random bytes (AES-256-CTR of zeros), n of them, made chunk by chunk.
local function byte_source(n, chunk, seed)
  local ctr = cipher.new("aes-256-ctr"):encrypt(core.sha256(seed or "seed"), string.rep("\0", 16))
  local zeros = string.rep("\0", chunk)
  local left = n
  return function()
    if left <= 0 then
      return nil
    end
    local k = math.min(chunk, left)
    left = left - k
    return ctr:update(k == chunk and zeros or zeros:sub(1, k))
  end
end

local spare_key     -- a key of no contract, made once (key generation is slow under valgrind)
local function other_key()
  spare_key = spare_key or core.generate_key(2048)
  return spare_key
end

-- Specs ---------------------------------------------------------------------------------------

describe("sandbox writing and managing", function()
  local sb, token

  setup(function()
    sb = sandbox.start{ args = { "--sync-pace", "0" } }
  end)

  sandbox_hooks.stop_and_reset(function() return sb end, "teardown")

  before_each(function()
    token = login(sb)
  end)

  describe("Bearer checks", function()
    local USER = {
      { "POST", "permission-access/import" },
      { "POST", "permission-access/import/h:accountId/fhir/stu3" },
      { "DELETE", "user" },
      { "DELETE", "permission-access/service/h:accountId" },
      { "GET", "permission-access/revoke/h:accountId" },
      { "GET", "export/medmij/report?format=xml&from=1&to=2" },
      { "GET", "storage" },
    }
    local CONTRACT = {
      { "POST", "reference" },
      { "GET", "permission-access/sample/datasets/420" },
      { "GET", "permission-access/contract" },
      { "POST", "discovery/sources" },
      { "POST", "discovery/countries" },
      { "POST", "discovery/platforms" },
      { "POST", "discovery/categories" },
      { "POST", "storage" },
    }

    it("every endpoint refuses a missing or badly signed Bearer JWT with 406", function()
      local other = other_key()
      for _, e in ipairs(USER) do
        assert_error(assert(sb:request{ method = e[1], path = e[2] }), 406, "ValidationErrors")
        assert_error(assert(sb:call(e[1], e[2], { claims = { access_token = token.access_token.value },
                                                  key = other })), 406, "ValidationErrors")
      end
      for _, e in ipairs(CONTRACT) do
        assert_error(assert(sb:request{ method = e[1], path = e[2] }), 406, "ValidationErrors")
        assert_error(ccall(sb, e[1], e[2], { key = other }), 406, "ValidationErrors")
      end
    end)

    it("USER endpoints want a live access token of the client's user: 401 InvalidToken", function()
      for _, e in ipairs(USER) do
        -- CONTRACT claims only, a made-up token, then an expired one
        assert_error(ccall(sb, e[1], e[2]), 401, "InvalidToken", "The token (access_token) is invalid")
        assert_error(ucall(sb, e[1], e[2], "not-a-token"), 401, "InvalidToken",
                     "The token (access_token) is invalid")
      end
      sb:expire("access")
      for _, e in ipairs(USER) do
        assert_error(ucall(sb, e[1], e[2], token), 401, "InvalidToken",
                     "The token (access_token) is invalid")
      end
    end)

    it("a replayed nonce is refused on the new endpoints too", function()
      local claims = sandbox.claims{}
      local jwt = sandbox.sign(claims)
      assert.equal(200, assert(sb:call("GET", "permission-access/contract", { jwt = jwt })).status)
      assert_error(assert(sb:call("GET", "permission-access/contract", { jwt = jwt })), 406,
                   "InvalidRequest")
    end)
  end)

  describe("push to the library", function()
    local META = { mimeType = "text/plain", accounts = { { accountId = ACC_A } },
                   reference = { "ref-1", "ref-2" }, tags = { "sandbox", "note" },
                   extraField = "kept" }

    it("stores the bytes as a file that a later sync lists and serves encrypted", function()
      local bytes = "pushed by a sandbox spec\n" .. string.rep("0123456789", 100)
      local res = push(sb, token, bytes, META)
      assert.equal(200, res.status, res.body)
      local body = json(res)
      assert.equal("delivered", body.status)
      assert.is_number(body.expires)
      assert.is_true(body.expires > sandbox.now_ms())
      local p = pushes(sb)
      assert.equal(1, #p)
      assert.equal("library", p[1].kind)
      assert.equal(token.sub, p[1].user)
      assert.equal(#bytes, p[1].size)
      assert.equal(sha256_hex(bytes), p[1].sha256)
      assert.matches("%.txt$", p[1].name)

      local list, names, key = file_list(sb, token)
      assert.equal("completed", list.status.state)
      local entry = names[p[1].name]
      assert.is_table(entry, "the pushed file is listed")
      assert.is_number(entry.updatedDate)
      assert.is_nil(entry.schema)            -- raw, not mapped
      assert.equal(sb:control("GET", "manifest").count + 1, #list.fileList)
      local plain, meta, text = fetch(sb, token, key, p[1].name)
      assert.equal(bytes, plain)
      assert.is_nil(meta.compression)
      local m = meta.metadata
      assert.equal("text/plain", m.mimetype)
      assert.same({ { accountid = ACC_A } }, m.accounts)
      assert.same({ "ref-1", "ref-2" }, m.reference)
      assert.same({ "sandbox", "note" }, m.tags)
      assert.is_number(m.created)
      assert.equal(APP, m.appid)
      assert.equal(DEMO.contract_id, m.contractid)
      assert.equal("kept", m.extrafield)     -- other keys pass, lower-cased
      assert.is_nil(m.mimeType)
      assert.is_nil(text:find('"accountId"', 1, true))
      -- HEAD has the same metadata
      local h = ucall(sb, "HEAD", "permission-access/query/" .. key .. "/" .. urlencode(p[1].name), token)
      assert.equal(200, h.status)
      assert.equal(tostring(256 + 16 + (#bytes - #bytes % 16) + 16), h.headers["content-length"])
    end)

    it("takes a chunked body, an empty body and an empty accounts list", function()
      local fd = descriptor{ mimeType = "application/json", accounts = {} }
      local parts = { '{"a":', '1,"b":', '[1,2,3]}' }
      local res = raw_http(sb, "POST", "/v1.7/permission-access/import",
                           { bearer(sb, token), "content-type: application/octet-stream",
                             "filedescriptor: " .. fd }, parts, { chunked = true })
      assert.equal(200, res.status, res.body)
      res = push(sb, token, "", { mimeType = "image/png", accounts = {} })
      assert.equal(200, res.status, res.body)
      local p = pushes(sb)
      assert.equal(2, #p)
      assert.matches("%.json$", p[1].name)
      assert.matches("%.png$", p[2].name)
      local _, names, key = file_list(sb, token)
      assert.is_table(names[p[1].name])
      local plain, _, text = fetch(sb, token, key, p[1].name)
      assert.equal(table.concat(parts), plain)
      assert.truthy(text:find('"accounts":[]', 1, true), text)
      plain = fetch(sb, token, key, p[2].name)
      assert.equal("", plain)
    end)

    it("is the pushing user's only", function()
      assert.equal(200, push(sb, token, "mine", META).status)
      local name = pushes(sb)[1].name
      local other = login(sb)
      local _, names, key = file_list(sb, other)
      assert.is_nil(names[name])
      assert_error(ucall(sb, "GET", "permission-access/query/" .. key .. "/" .. name, other), 404,
                   "FileNotFound")
    end)

    it("refuses a wrong content-type and a missing or bad FileDescriptor with 400", function()
      local function refused(res, what)
        local b = assert_error(res, 400, "ValidationErrors")
        assert.matches(what, b.error.message)
      end
      refused(push(sb, token, "x", META, { content_type = "text/plain" }), "content%-type")
      refused(push(sb, token, "x", META, { descriptor = false }), "FileDescriptor header is missing")
      refused(push(sb, token, "x", META, { descriptor = "not.a.jwt!" }), "not a JWT")
      refused(push(sb, token, "x", META, { descriptor = descriptor(META, {
        header = { alg = "PS512", typ = "at+jwt" } }) }), "JWT header")
      refused(push(sb, token, "x", META, { descriptor = descriptor(META, {
        header = { alg = "RS512", typ = "JWT" } }) }), "JWT header")
      refused(push(sb, token, "x", META, { descriptor = descriptor(META, {
        key = other_key() }) }), "signature")
      local jwt = descriptor(META)
      local tampered = jwt:gsub("%.([^.]+)%.", "." .. core.b64url_encode(cjson.encode{
        metadata = { mimeType = "text/html", accounts = {} } }) .. ".", 1)
      refused(push(sb, token, "x", META, { descriptor = tampered }), "signature")
      refused(push(sb, token, "x", nil, { descriptor = sandbox.sign({ meta = {} }) }), "metadata")
      refused(push(sb, token, "x", { accounts = {} }), "mimeType")
      refused(push(sb, token, "x", { mimeType = "text/plain" }), "accounts")
      refused(push(sb, token, "x", { mimeType = "text/plain", accounts = "all" }), "accounts")
      refused(push(sb, token, "x", { mimeType = "text/plain", accounts = { { id = "x" } } }),
              "accountId")
      refused(push(sb, token, "x", { mimeType = "text/plain", accounts = {}, tags = { 1 } }), "tags")
      assert.same({}, pushes(sb))
    end)

    it("answers 413 at once to a declared length far over the limit, reading nothing", function()
      local fd = descriptor(META)
      local res = raw_http(sb, "POST", "/v1.7/permission-access/import",
                           { bearer(sb, token), "content-type: application/octet-stream",
                             "filedescriptor: " .. fd, "content-length: " .. (1024 * 1024 * 1024) },
                           {})
      assert_error(res, 413, "PayloadTooLarge")
      assert.equal("close", res.headers.connection)
      assert.same({}, pushes(sb))
    end)

    it("survives clients that close in the middle of their bodies", function()
      local host, port = sb.origin:match("^http://([^:/]+):(%d+)")
      local fd = descriptor(META)
      for _, target in ipairs{ { "/v1.7/permission-access/import", "application/octet-stream" },
                               { "/v1.7/reference", "application/json" },
                               { "/cloud/v1/clouds/x/files/apps/y/z", "application/octet-stream" } } do
        for _, answer_first in ipairs{ false, true } do
          local c = assert(socket.tcp())
          c:settimeout(10)
          assert(c:connect(host, tonumber(port)))
          assert(c:send(table.concat({ "POST " .. target[1] .. " HTTP/1.1", "host: x",
            bearer(sb, token), "content-type: " .. target[2], "filedescriptor: " .. fd,
            "content-length: 100000", "", "0123456789" }, "\r\n")))
          if answer_first then
            c:settimeout(0.3)
            c:receive("*l")      -- a refusal may come before the body; or nothing does
          end
          c:close()
        end
      end
      -- still serving, and nothing was stored from a body cut short
      local res = push(sb, token, "whole", META)
      assert.equal(200, res.status, res.body)
      assert.equal(1, #pushes(sb))
    end)

    it("answers 100 Continue to a client that waits for it (curl, chunked) #timing", function()
      local tmp = os.tmpname()
      local f = assert(io.open(tmp, "wb"))
      f:write(string.rep("x", 300000))
      f:close()
      local t0 = socket.gettime()
      local p = io.popen(table.concat({
        "curl -s -o /dev/null -w '%{http_code}' -X POST",
        "-H " .. sandbox.sh_quote(bearer(sb, token)),
        "-H 'content-type: application/octet-stream'",
        "-H 'transfer-encoding: chunked'",
        "-H " .. sandbox.sh_quote("filedescriptor: " .. descriptor(META)),
        "--expect100-timeout 5",
        "--data-binary @" .. tmp, sandbox.sh_quote(sb.base_url .. "permission-access/import") }, " "))
      local code = p:read("*a")
      p:close()
      os.remove(tmp)
      assert.equal("200", code)
      assert.is_true(socket.gettime() - t0 < 4, "curl waited for a 100 Continue")
      assert.equal(300000, pushes(sb)[1].size)
    end)
  end)

  describe("push to a provider", function()
    local function fhir(version, opts)
      opts = opts or {}
      local headers = { ["content-type"] = opts.content_type or "application/json",
                        accountid = opts.account == nil and ACC_B or opts.account or nil }
      return ucall(sb, "POST", "permission-access/import/h:accountId/fhir/" .. version, opts.token or token,
                   { headers = headers, body = opts.body or '{"resourceType":"Bundle","type":"collection"}' })
    end

    it("records a JSON object for an account of the user: 200 {}", function()
      local res = fhir("stu3")
      assert.equal(200, res.status, res.body)
      assert.equal("{}", res.body)
      assert.equal(200, fhir("3.0.2", { body = "{}" }).status)
      local p = pushes(sb)
      assert.equal(2, #p)
      assert.equal("provider", p[1].kind)
      assert.equal(ACC_B, p[1].account)
      assert.equal("stu3", p[1].version)
      assert.equal("Bundle", p[1].resourceType)
      assert.equal("3.0.2", p[2].version)
      -- nothing appears in the library
      local list = file_list(sb, token)
      assert.equal(sb:control("GET", "manifest").count, #list.fileList)
    end)

    it("refuses other versions (404), a missing or foreign accountId, non-JSON bodies", function()
      assert_error(fhir("r4"), 404, "NotFound")
      assert_error(fhir("stu3", { account = false }), 400, "ValidationErrors")
      assert_error(fhir("stu3", { account = "1_Nobody" }), 404, "AccountNotFound")
      assert_error(fhir("stu3", { content_type = "text/plain" }), 400, "ValidationErrors")
      assert_error(fhir("stu3", { body = "[1,2]" }), 400, "ValidationErrors")
      assert_error(fhir("stu3", { body = "[]" }), 400, "ValidationErrors")
      assert_error(fhir("stu3", { body = "not json" }), 400, "ValidationErrors")
      assert_error(fhir("stu3", { body = '"a string"' }), 400, "ValidationErrors")
      assert.same({}, pushes(sb))
      -- an unknown standard is no endpoint at all
      assert_error(ucall(sb, "POST", "permission-access/import/h:accountId/hl7/stu3", token), 404, "NotFound")
    end)
  end)

  describe("deleting", function()
    it("an account: it and its files leave the user's library", function()
      assert.equal(200, push(sb, token, "a's", { mimeType = "text/plain",
                                                 accounts = { { accountId = ACC_A } } }).status)
      assert.equal(200, push(sb, token, "both", { mimeType = "text/plain",
        accounts = { { accountId = ACC_A }, { accountId = ACC_B } } }).status)
      local p = pushes(sb)
      local res = ucall(sb, "DELETE", "permission-access/service/h:accountId", token,
                        { headers = { accountid = ACC_A, ["content-type"] = "application/json" } })
      assert.equal(200, res.status, res.body)
      assert.same({}, json(res))
      local acc = accounts(sb, token)
      assert.is_nil(acc[ACC_A])
      assert.is_table(acc[ACC_B])
      local list, names = file_list(sb, token)
      assert.is_nil(names["instagram_posts.json"])
      assert.is_table(names["fitbit_activity.json"])
      assert.is_nil(names[p[1].name])          -- pushed for A only: gone
      assert.is_table(names[p[2].name])        -- also B's: kept
      assert.is_nil(list.status.details[ACC_A])
      assert.equal("completed", list.status.details[ACC_B].state)
      -- again, or an account the user never had: 404; no header: 400
      assert_error(ucall(sb, "DELETE", "permission-access/service/h:accountId", token,
                         { headers = { accountid = ACC_A } }), 404, "AccountNotFound")
      assert_error(ucall(sb, "DELETE", "permission-access/service/h:accountId", token), 400,
                   "ValidationErrors")
      -- other users keep theirs
      assert.is_table(accounts(sb, login(sb))[ACC_A])
    end)

    it("the user: its tokens, library view and storage are gone", function()
      local sres = ucall(sb, "GET", "storage", token)
      assert.equal(200, sres.status)
      local sid = json(sres).id
      assert.equal(201, upload(sb, sid, "/f.bin", "data").status)
      assert.equal(200, push(sb, token, "x", { mimeType = "text/plain", accounts = {} }).status)
      local res = ucall(sb, "DELETE", "user", token)
      assert.equal(200, res.status, res.body)
      assert.same({}, json(res))
      assert_error(ucall(sb, "GET", "permission-access/accounts", token), 401, "InvalidToken",
                   "The token (access_token) is invalid")
      assert_error(ucall(sb, "DELETE", "user", token), 401, "InvalidToken")
      assert_error(assert(sb:call("POST", "oauth/token", { claims = {
        grant_type = "refresh_token", refresh_token = token.refresh_token.value } })), 401,
        "InvalidToken", "The token (refresh_token) is invalid")
      for _, u in ipairs(sb:control("GET", "users")) do
        assert.are_not.equal(token.sub, u.id)
      end
      assert.is_nil(storage_summary(sb, sid))
      assert_serror(cloud(sb, "GET", files_path(sid, "/f.bin")), 404, "NotFound")
    end)
  end)

  describe("revoke", function()
    local function revoke_location(headers)
      local res = ucall(sb, "GET", "permission-access/revoke/h:accountId", token,
                        { headers = headers })
      return res
    end

    it("hands out a page that withdraws the permission and redirects with result=success", function()
      local res = revoke_location{ accountid = ACC_B, redirecturi = "https://app.example/revoked?x=1",
                                   accept = "application/json" }
      assert.equal(200, res.status, res.body)
      local body = json(res)
      assert.equal(1, count_keys(body))
      assert.equal(sb.onboard_url .. "revoke?code=", body.location:sub(1, #sb.onboard_url + 12))
      local page = assert(sb:request{ url = body.location })
      assert.equal(302, page.status)
      local loc = page.headers.location
      assert.equal("https://app.example/revoked?x=1&result=success", loc)
      -- the account needs authorization again: partial sync, unauthorized account
      local list = file_list(sb, token)
      assert.equal("partial", list.status.state)
      assert.equal("ServiceAuthorizationError", list.status.details[ACC_B].error.code)
      assert.equal("completed", list.status.details[ACC_A].state)
      assert.is_false(accounts(sb, token)[ACC_B].accessTokenStatus.authorized)
      -- the link works once
      assert.equal(400, assert(sb:request{ url = body.location }).status)

      -- getReauthorizeAccountUrl: token/reference (ACCREAUTH), reference, the reauthorize page
      local rres = ucall(sb, "POST", "oauth/token/reference", token, { body = { agent = AGENT } })
      assert.equal(400, rres.status)   -- the ACCREAUTH claims need redirect_uri
      rres = assert(sb:call("POST", "oauth/token/reference", {
        claims = { access_token = token.access_token.value, redirect_uri = CALLBACK },
        body = { agent = AGENT } }))
      assert.equal(201, rres.status, rres.body)
      local code = decode_payload(json(rres).token).reference_code
      local ref = ccall(sb, "POST", "reference", { body = { type = "accountId", value = ACC_B } })
      assert.equal(201, ref.status, ref.body)
      page = assert(sb:request{ url = sb.onboard_url .. "reauthorize?code=" .. code
                                      .. "&accountRef=" .. json(ref).id })
      assert.equal(302, page.status)
      assert.equal(CALLBACK .. "?success=true", page.headers.location)
      assert.equal("completed", file_list(sb, token).status.state)
      assert.is_true(accounts(sb, token)[ACC_B].accessTokenStatus.authorized)
    end)

    it("a declined confirmation redirects with result=failed and an error_message", function()
      sb:consent("decline", "UserCancelled")
      local body = json(revoke_location{ accountid = ACC_A, redirecturi = "myapp://revoked" })
      local page = assert(sb:request{ url = body.location })
      assert.equal(302, page.status)
      local q = query_of(page.headers.location)
      assert.equal("myapp://revoked", page.headers.location:match("^[^?]+"))
      assert.equal("failed", q.result)
      assert.is_string(q.error_message)
      assert.equal("completed", file_list(sb, token).status.state)
    end)

    it("refuses missing headers, a relative redirectUri and an unknown account", function()
      assert_error(revoke_location{ redirecturi = CALLBACK }, 400, "ValidationErrors")
      assert_error(revoke_location{ accountid = ACC_A }, 400, "ValidationErrors")
      assert_error(revoke_location{ accountid = ACC_A, redirecturi = "/relative" }, 400,
                   "ValidationErrors")
      assert_error(revoke_location{ accountid = "99_Nope", redirecturi = CALLBACK }, 404,
                   "AccountNotFound")
    end)
  end)

  describe("onboarding pages", function()
    local function reference_code(state)
      local res = assert(sb:call("POST", "oauth/token/reference", {
        claims = { access_token = token.access_token.value, redirect_uri = CALLBACK, state = state },
        body = { agent = AGENT } }))
      assert.equal(201, res.status, res.body)
      return decode_payload(json(res).token).reference_code
    end

    it("onboard: success=true with the state, or the decline path", function()
      local page = assert(sb:request{ url = sb.onboard_url .. "onboard?code=" .. reference_code("st-1")
                                            .. "&sourceType=pull&service=183" })
      assert.equal(302, page.status)
      assert.same({ success = "true", state = "st-1" }, query_of(page.headers.location))
      page = assert(sb:request{ url = sb.onboard_url .. "onboard?code=" .. reference_code() })
      assert.equal(CALLBACK .. "?success=true", page.headers.location)
      sb:consent("decline", "ServiceOnboardError")
      page = assert(sb:request{ url = sb.onboard_url .. "onboard?code=" .. reference_code("st-2") })
      assert.same({ success = "false", errorCode = "ServiceOnboardError", state = "st-2" },
                  query_of(page.headers.location))
    end)

    it("reauthorize: an unknown, missing or foreign accountRef fails", function()
      local page = assert(sb:request{ url = sb.onboard_url .. "reauthorize?code=" .. reference_code()
                                            .. "&accountRef=nope" })
      assert.same({ success = "false", errorCode = "InvalidReference" }, query_of(page.headers.location))
      page = assert(sb:request{ url = sb.onboard_url .. "reauthorize?code=" .. reference_code() })
      assert.same({ success = "false", errorCode = "InvalidReference" }, query_of(page.headers.location))
      local ref = json(ccall(sb, "POST", "reference", { body = { type = "accountId", value = "7_Other" } })).id
      page = assert(sb:request{ url = sb.onboard_url .. "reauthorize?code=" .. reference_code()
                                      .. "&accountRef=" .. ref })
      assert.same({ success = "false", errorCode = "AccountNotFound" }, query_of(page.headers.location))
      ref = json(ccall(sb, "POST", "reference", { body = { type = "accountId", value = ACC_A } })).id
      page = assert(sb:request{ url = sb.onboard_url .. "reauthorize?code=" .. reference_code()
                                      .. "&accountRef=" .. ref })
      assert.same({ success = "true" }, query_of(page.headers.location))
    end)
  end)

  describe("reference", function()
    it("answers 201 {id} for accountId and for a storage of the contract", function()
      local res = ccall(sb, "POST", "reference", { body = { type = "accountId", value = ACC_A } })
      assert.equal(201, res.status, res.body)
      local a = json(res).id
      assert.matches("^%w+$", a)
      local sid = new_storage(sb)
      res = ccall(sb, "POST", "reference", { body = { type = "cloudId", value = sid } })
      assert.equal(201, res.status, res.body)
      local c = json(res).id
      assert.are_not.equal(a, c)
      local refs = sb:control("GET", "references")
      assert.equal(2, #refs)
      assert.same({ a, "accountId", ACC_A }, { refs[1].id, refs[1].type, refs[1].value })
      assert.same({ c, "cloudId", sid }, { refs[2].id, refs[2].type, refs[2].value })
    end)

    it("refuses other types, missing values and unknown storages", function()
      assert_error(ccall(sb, "POST", "reference", { body = { type = "userId", value = "x" } }), 400,
                   "ValidationErrors")
      assert_error(ccall(sb, "POST", "reference", { body = { type = "accountId" } }), 400,
                   "ValidationErrors")
      assert_error(ccall(sb, "POST", "reference", { body = { type = "accountId", value = "" } }), 400,
                   "ValidationErrors")
      assert_error(ccall(sb, "POST", "reference", { body = "[1]",
                                                    headers = { ["content-type"] = "application/json" } }),
                   400, "ValidationErrors")
      assert_error(ccall(sb, "POST", "reference", { body = { type = "cloudId", value = "no-such-storage" } }),
                   404, "StorageNotFound")
    end)
  end)

  describe("portability report", function()
    it("is XML for medmij, with the pushes of the period", function()
      assert.equal(200, ucall(sb, "POST", "permission-access/import/h:accountId/fhir/stu3", token, {
        headers = { accountid = ACC_B, ["content-type"] = "application/json" },
        body = '{"resourceType":"Bundle"}' }).status)
      local now = os.time()
      local res = ucall(sb, "GET", "export/medmij/report?format=xml&from=" .. (now - 60) .. "&to="
                        .. (now + 60), token, { headers = { accept = "application/octet-stream" } })
      assert.equal(200, res.status, res.body)
      assert.matches("^text/xml", res.headers["content-type"])
      assert.matches('^<%?xml version="1.0" encoding="UTF%-8"%?>\n<portabilityReport', res.body)
      assert.truthy(res.body:find('type="provider-push"', 1, true))
      assert.truthy(res.body:find('account="' .. ACC_B .. '"', 1, true))
      assert.truthy(res.body:find('</portabilityReport>', 1, true))
      -- milliseconds work too; a period before the push leaves it out
      res = ucall(sb, "GET", "export/medmij/report?format=xml&from=" .. (now - 7200) * 1000 .. "&to="
                  .. (now - 3600) * 1000, token)
      assert.equal(200, res.status)
      assert.is_nil(res.body:find("provider-push", 1, true))
      -- what the Node SDK sends without from/to
      res = ucall(sb, "GET", "export/medmij/report?format=xml&from=undefined&to=undefined", token)
      assert.equal(200, res.status)
      assert.truthy(res.body:find("provider-push", 1, true))
    end)

    it("is 404 for other service types, 400 for other formats and bad bounds", function()
      assert_error(ucall(sb, "GET", "export/other/report?format=xml", token), 404, "NotFound")
      assert_error(ucall(sb, "GET", "export/medmij/report?format=json", token), 400, "ValidationErrors")
      assert_error(ucall(sb, "GET", "export/medmij/report", token), 400, "ValidationErrors")
      assert_error(ucall(sb, "GET", "export/medmij/report?format=xml&from=yesterday", token), 400,
                   "ValidationErrors")
    end)
  end)

  describe("sample data sets and contract details", function()
    it("lists the data sets of sources that have them, {} for the others", function()
      local res = ccall(sb, "GET", "permission-access/sample/datasets/420")
      assert.equal(200, res.status, res.body)
      local sets = json(res)
      assert.same({ "default", "test" }, (function()
        local k = {}
        for id, s in pairs(sets) do
          k[#k + 1] = id
          assert.equal(id, s.name)
          assert.is_string(s.description)
          assert.equal(2, count_keys(s))
        end
        table.sort(k)
        return k
      end)())
      for _, id in ipairs{ "3", "999999" } do
        res = ccall(sb, "GET", "permission-access/sample/datasets/" .. id)
        assert.equal(200, res.status)
        assert.equal("{}", res.body)
      end
      assert_error(ccall(sb, "GET", "permission-access/sample/datasets/abc"), 400, "ValidationErrors")
    end)

    it("describes the contract", function()
      local res = ccall(sb, "GET", "permission-access/contract",
                        { headers = { ["content-type"] = "application/json" } })
      assert.equal(200, res.status, res.body)
      local c = json(res)
      assert.is_truthy(c.accessType == "r" or c.accessType == "w")
      assert.equal(APP, c.application.id)
      assert.is_string(c.application.name)
      assert.is_table(c.application.resources)
      assert.is_number(c.application.status)
      assert.is_string(c.certificate)
      assert.is_string(c.certificateContractSchemaVersion)
      assert.is_number(c.expirationDate)
      assert.is_true(c.expirationDate > sandbox.now_ms())
      assert.equal(DEMO.contract_id, c.id)
      assert.is_string(c.partnerId)
      assert.is_string(c.type)
    end)
  end)

  describe("discovery", function()
    local function query(kind, body, raw)
      local opts = { body = body }
      if raw then
        opts.headers = { ["content-type"] = "application/json" }
      end
      local res = ccall(sb, "POST", "discovery/" .. kind, opts)
      return res
    end

    local function data_of(kind, body)
      local res = query(kind, body)
      assert.equal(200, res.status, res.body)
      local b = json(res)
      assert.is_table(b.data)
      assert.is_number(b.limit)
      assert.is_number(b.offset)
      assert.is_number(b.total)
      return b.data, b
    end

    local function ids(list)
      local out = {}
      for i, r in ipairs(list) do
        out[i] = r.id
      end
      return out
    end

    local function has(list, field, id)
      for _, e in ipairs(list) do
        if e[field] == id then
          return true
        end
      end
      return false
    end

    it("lists every source without a body, and what the SDK's default body selects", function()
      local all, b = data_of("sources")
      assert.is_true(#all >= 40)
      assert.equal(#all, b.total)
      assert.same({ 100, 0 }, { b.limit, b.offset })
      local seen = { status = {}, country = {}, platform = {}, category = {} }
      for i, s in ipairs(all) do
        if i > 1 then
          assert.is_true(all[i - 1].id < s.id)
        end
        assert.is_number(s.id)
        assert.is_string(s.name)
        assert.is_string(s.reference)
        assert.is_number(s.service.id)
        assert.is_string(s.resource.url)
        assert.is_string(s.json.authorisation.type)
        assert.is_number(s.type.id)
        assert.is_nil(s.samples)
        seen.status[s.publishedStatus] = true
        for _, k in ipairs{ "country", "platform", "category" } do
          assert.is_true(#s[k] >= 1)
          for _, e in ipairs(s[k]) do
            seen[k][e.id] = true
          end
        end
      end
      assert.is_true(seen.status.approved and seen.status.pending and seen.status.deprecated
                     and seen.status.sampledataonly)
      assert.is_true(count_keys(seen.country) >= 5)
      assert.is_true(count_keys(seen.platform) >= 3)
      assert.is_true(count_keys(seen.category) >= 5)

      local def = data_of("sources", { query = { filter = { type = { id = { 1 } },
                                                            publishedStatus = { "approved" } } } })
      assert.is_true(#def > 20 and #def < #all)
      for _, s in ipairs(def) do
        assert.equal(1, s.type.id)
        assert.equal("approved", s.publishedStatus)
      end
    end)

    it("filters by id, country, category, platform, type, service, reference and alias", function()
      local function check(filter, pred, min)
        local list = data_of("sources", { query = { filter = filter } })
        assert.is_true(#list >= (min or 1), cjson.encode(filter))
        for _, s in ipairs(list) do
          assert.is_true(pred(s), cjson.encode(filter) .. ": " .. s.name)
        end
        return list
      end
      assert.same({ 183, 420 }, ids(check({ id = { 420, 183, 5555 } }, function() return true end, 2)))
      check({ country = { id = { 1 } } }, function(s) return has(s.country, "code", "NL") end, 8)
      check({ category = { id = { 2 } } }, function(s) return s.category[1].reference == "medical" end, 10)
      check({ platform = { id = { 2 } } }, function(s) return has(s.platform, "reference", "ios") end, 10)
      check({ type = { id = { 2 } } }, function(s) return s.type.id == 2 end, 2)
      check({ service = { id = { 19 } } }, function(s) return s.id == 312 end)
      check({ sourceId = 312 }, function(s) return s.id == 312 end)
      check({ reference = { "FITBIT" } }, function(s) return s.id == 183 end)
      check({ alias = { "x" } }, function(s) return s.name == "Twitter" end)
      check({ publishedStatus = { "sampledataonly" } },
            function(s) return s.publishedStatus == "sampledataonly" end, 3)
      -- filters combine
      local nl_medical = check({ country = { id = { 1 } }, category = { id = { 2 } } }, function(s)
        return has(s.country, "code", "NL") and s.category[1].id == 2
      end, 4)
      assert.is_true(#nl_medical < #data_of("sources", { query = { filter = { category = { id = { 2 } } } } }))
      assert.same({}, data_of("sources", { query = { filter = { id = { 99999 } } } }))
    end)

    it("searches fields and free text", function()
      local list = data_of("sources", { query = { search = { name = { "FIT" } } } })
      assert.is_true(has(list, "id", 183) and has(list, "id", 187))
      for _, s in ipairs(list) do
        assert.truthy(s.name:lower():find("fit", 1, true))
      end
      list = data_of("sources", { query = { search = { practitioner = { "de vries" } } } })
      assert.same({ 702 }, ids(list))
      list = data_of("sources", { query = { search = { medicalCenter = { "riverside" }, abbreviation = { "szu" } } } })
      assert.same({ 701, 710 }, ids(list))
      list = data_of("sources", { query = { queryString = "utrecht" } })
      assert.same({ 701 }, ids(list))
      list = data_of("sources", { query = { queryString = "h\195\180pital" } })
      assert.same({ 740 }, ids(list))
      list = data_of("sources", { query = { queryString = "germany", filter = { category = { id = { 3 } } } } })
      assert.same({ 804, 806 }, ids(list))     -- 806 is in every country
    end)

    it("pages and sorts, with the total of every match", function()
      local all = data_of("sources", { sort = { name = "asc" } })
      for i = 2, #all do
        assert.is_true(all[i - 1].name:lower() <= all[i].name:lower())
      end
      local desc = data_of("sources", { sort = { name = "desc" } })
      assert.equal(all[1].id, desc[#desc].id)
      local page, b = data_of("sources", { sort = { name = "asc" }, limit = 5, offset = 5 })
      assert.same({ 5, 5, #all }, { b.limit, b.offset, b.total })
      assert.same({ all[6].id, all[7].id, all[8].id, all[9].id, all[10].id }, ids(page))
      local res = query("sources", { offset = 1000 })
      assert.equal(200, res.status)
      assert.truthy(res.body:find('"data":[]', 1, true), res.body)
      assert.equal(#all, json(res).total)
      assert.same({}, data_of("sources", { limit = 0 }))
    end)

    it("keeps only the included fields, and the id", function()
      local list = data_of("sources", { query = { include = { "name", "country.code", "type.name" },
                                                  filter = { id = { 420 } } } })
      assert.equal(1, #list)
      local s = list[1]
      assert.same({ "country", "id", "name", "type" }, (function()
        local k = {}
        for key in pairs(s) do
          k[#k + 1] = key
        end
        table.sort(k)
        return k
      end)())
      assert.equal(12, #s.country)
      for _, c in ipairs(s.country) do
        assert.same({ "code" }, (function()
          local k = {}
          for key in pairs(c) do k[#k + 1] = key end
          return k
        end)())
      end
      assert.same({ name = "Pull" }, s.type)
    end)

    it("countries, platforms and categories, with id filters and includes", function()
      local countries, b = data_of("countries")
      assert.is_true(#countries >= 10)
      assert.equal(#countries, b.total)
      local codes = {}
      for _, c in ipairs(countries) do
        assert.is_number(c.id)
        assert.matches("^%u%u$", c.code)
        assert.is_string(c.name)
        assert.is_string(c.resource.url)
        codes[c.code] = true
      end
      for _, code in ipairs{ "NL", "GB", "US", "DE", "FR" } do
        assert.is_true(codes[code], code)
      end
      local two = data_of("countries", { query = { filter = { id = { 1, 2 } }, include = { "code" } } })
      assert.same({ { id = 1, code = "NL" }, { id = 2, code = "GB" } }, two)
      local platforms = data_of("platforms", { query = { include = { "id", "name", "reference" } } })
      local refs = {}
      for _, p in ipairs(platforms) do
        refs[p.reference] = p.name
      end
      assert.same({ web = "Web", ios = "iOS", android = "Android", wearable = "Wearable" }, refs)
      local cats = data_of("categories")
      assert.is_true(#cats >= 5)
      for _, c in ipairs(cats) do
        assert.is_number(c.categoryTypeId)
        assert.is_string(c.name)
        assert.is_string(c.reference)
        assert.is_string(c.title)
        assert.is_string(c.subTitle)
        assert.is_string(c.expandedTitle)
        assert.is_string(c.expandedSubTitle)
      end
      assert.same({ { id = 2, name = "Medical" } },
                  data_of("categories", { query = { filter = { id = { 2 } }, include = { "name" } } }))
    end)

    it("refuses malformed parameters with 400 ValidationErrors", function()
      for _, body in ipairs{
        { limit = "10" }, { limit = -1 }, { limit = 5000 }, { offset = 1.5 },
        { sort = { name = "up" } }, { sort = { rating = "asc" } }, { sort = "name" },
        { query = "all" }, { query = { include = "name" } }, { query = { filter = { id = { "1" } } } },
        { query = { filter = { country = { id = 1 } } } }, { query = { filter = { country = 1 } } },
        { query = { filter = { publishedStatus = "approved" } } },
        { query = { search = { name = "fit" } } }, { query = { queryString = 5 } },
        { query = { filter = { sourceId = "1" } } },
      } do
        assert_error(query("sources", body), 400, "ValidationErrors")
      end
      assert_error(query("sources", "[1]", true), 400, "ValidationErrors")
      assert_error(query("sources", "{nope", true), 400, "ValidationErrors")
      assert_error(query("countries", { query = { filter = { id = "1" } } }), 400, "ValidationErrors")
      assert_error(query("platforms", { limit = "x" }), 400, "ValidationErrors")
    end)
  end)

  describe("storage", function()
    it("POST storage makes a provisional storage, GET storage the user's own", function()
      local sid = new_storage(sb)
      local s = storage_summary(sb, sid)
      assert.is_true(s.provisional)
      local res = ucall(sb, "GET", "storage", token, { headers = { ["content-type"] = "application/json" } })
      assert.equal(200, res.status, res.body)
      local mine = json(res)
      assert.equal(KID, mine.kid)
      assert.are_not.equal(sid, mine.id)
      assert.equal(mine.id, json(ucall(sb, "GET", "storage", token)).id)   -- made once
      assert.are_not.equal(mine.id, json(ucall(sb, "GET", "storage", login(sb))).id)
      assert.equal(token.sub, storage_summary(sb, mine.id).user)
    end)

    it("a provisional storage is bound to the user who consents with its storageRef", function()
      local sid = new_storage(sb)
      assert.equal(201, upload(sb, sid, "/early.txt", "before the user").status)
      local ref = json(ccall(sb, "POST", "reference", { body = { type = "cloudId", value = sid } })).id
      local t = login(sb, { storage_ref = ref })
      assert.equal(sid, json(ucall(sb, "GET", "storage", t)).id)
      local s = storage_summary(sb, sid)
      assert.is_false(s.provisional)
      assert.equal(t.sub, s.user)
      assert.equal(1, s.count)
      -- an unknown storageRef, or one whose storage is someone else's, fails the consent
      local q = login(sb, { storage_ref = "unknown-ref", expect_failure = true })
      assert.same({ success = "false", errorCode = "InvalidReference", state = "s" }, q)
      q = login(sb, { storage_ref = ref, expect_failure = true })
      assert.same({ success = "false", errorCode = "InvalidReference", state = "s" }, q)
      assert.equal(t.sub, storage_summary(sb, sid).user)
    end)

    it("upload, list, download and delete, with case-insensitive paths", function()
      local sid = new_storage(sb)
      local data = core.random_bytes(288)
      local res = upload(sb, sid, "/Folder%20A/Sub/Test%20File.JSON", data)
      assert.equal(201, res.status, res.body)
      local up = json(res)
      assert.equal("Test File.JSON", up.originalName)
      assert.equal("test file.json", up.name)
      assert.equal(288, up.size)
      assert.equal(201, upload(sb, sid, "/Folder%20A/top.bin", "top").status)
      assert.equal(201, upload(sb, sid, "/root.bin", "root").status)
      assert.equal(201, upload(sb, sid, "/Other/x.bin", "x").status)

      -- list: the root, not recursive / recursive; a folder; an empty folder
      res = cloud(sb, "GET", files_path(sid, "/?recursive=false"))
      assert.equal(200, res.status, res.body)
      local l = json(res)
      assert.equal(1, l.total)
      assert.same({ { id = l.files[1].id, name = "root.bin", originalName = "root.bin",
                      originalPath = "/apps/" .. APP .. "/", path = "/apps/" .. APP:lower() .. "/" } },
                  l.files)
      l = json(cloud(sb, "GET", files_path(sid, "/?recursive=true")))
      assert.equal(4, l.total)
      assert.equal(4, #l.files)
      l = json(cloud(sb, "GET", files_path(sid, "/folder%20a/?recursive=true")))
      assert.equal(2, l.total)
      local deep
      for _, f in ipairs(l.files) do
        if f.originalName == "Test File.JSON" then
          deep = f
        end
      end
      assert.equal("/apps/" .. APP .. "/Folder A/Sub/", deep.originalPath)
      assert.equal("/apps/" .. APP:lower() .. "/folder a/sub/", deep.path)
      assert.equal("test file.json", deep.name)
      l = json(cloud(sb, "GET", files_path(sid, "/FOLDER%20A/")))      -- recursive defaults to false
      assert.equal(1, l.total)
      assert.equal("top.bin", l.files[1].name)
      res = cloud(sb, "GET", files_path(sid, "/nothing/here/?recursive=true"))
      assert.equal(200, res.status)
      assert.equal('{"files":[],"total":0}', res.body)

      -- download by the listed path (path + name) and by the original one
      local listed = deep.path:sub(#("/apps/" .. APP) + 1) .. deep.name
      res = cloud(sb, "GET", files_path(sid, (listed:gsub(" ", "%%20"))),
                  { headers = { accept = "application/octet-stream" } })
      assert.equal(200, res.status)
      assert.equal("application/octet-stream", res.headers["content-type"])
      assert.equal(data, res.body)
      res = cloud(sb, "GET", files_path(sid, "/Folder%20A/Sub/Test%20File.JSON"))
      assert.equal(data, res.body)
      local h = cloud(sb, "HEAD", files_path(sid, "/Folder%20A/Sub/Test%20File.JSON"))
      assert.equal(200, h.status)
      assert.equal("288", h.headers["content-length"])

      -- replace
      assert.equal(201, upload(sb, sid, "/root.BIN", "new root").status)
      assert.equal("new root", cloud(sb, "GET", files_path(sid, "/root.bin")).body)
      assert.equal(4, storage_summary(sb, sid).count)

      -- delete a file, then a folder (with a trailing /), then what is gone
      res = cloud(sb, "DELETE", files_path(sid, "/Folder%20A/top.bin"))
      assert.equal(200, res.status, res.body)
      assert_serror(cloud(sb, "GET", files_path(sid, "/Folder%20A/top.bin")), 404, "NotFound")
      res = cloud(sb, "DELETE", files_path(sid, "/folder%20a/"))
      assert.equal(200, res.status, res.body)
      assert.equal(1, json(res).deleted)
      assert_serror(cloud(sb, "GET", files_path(sid, "/Folder%20A/Sub/Test%20File.JSON")), 404, "NotFound")
      assert_serror(cloud(sb, "DELETE", files_path(sid, "/folder%20a/")), 404, "NotFound")
      assert_serror(cloud(sb, "DELETE", files_path(sid, "/nope.bin")), 404, "NotFound")
      assert.equal(2, json(cloud(sb, "GET", files_path(sid, "/?recursive=true"))).total)
    end)

    it("stores bytes as sent: an empty object, a chunked one, one spilled to disk", function()
      local sid = new_storage(sb)
      assert.equal(201, upload(sb, sid, "/empty", "").status)
      local res = cloud(sb, "GET", files_path(sid, "/empty"))
      assert.equal(200, res.status)
      assert.equal("0", res.headers["content-length"])
      assert.equal("", res.body)
      assert.equal(1, json(cloud(sb, "GET", files_path(sid, "/?recursive=true"))).total)

      local parts = { "abc", string.rep("d", 70000), "efg" }
      res = raw_http(sb, "POST", "/cloud/v1/" .. files_path(sid, "/chunked.bin"),
                     { "authorization: Bearer " .. cloud_jwt(), "content-type: application/octet-stream" },
                     parts, { chunked = true })
      assert.equal(201, res.status, res.body)
      assert.equal(table.concat(parts), cloud(sb, "GET", files_path(sid, "/chunked.bin")).body)

      local big = {}
      for p in byte_source(2 * 1024 * 1024 + 5, 65536, "spill") do
        big[#big + 1] = p
      end
      big = table.concat(big)
      assert.equal(201, upload(sb, sid, "/big.bin", big).status)
      local s = storage_summary(sb, sid)
      local by = {}
      for _, f in ipairs(s.files) do
        by[f.key] = f
      end
      local base = "/apps/" .. APP:lower() .. "/"
      assert.is_false(by[base .. "empty"].on_disk)
      assert.is_false(by[base .. "chunked.bin"].on_disk)
      assert.is_true(by[base .. "big.bin"].on_disk)
      assert.equal(sha256_hex(big), by[base .. "big.bin"].sha256)
      assert.equal(big, cloud(sb, "GET", files_path(sid, "/big.bin")).body)
      -- its temporary file goes with it: on delete, on replace, at reset
      local function exists(path)
        local f = io.open(path, "rb")
        if f then
          f:close()
        end
        return f ~= nil
      end
      local first = by[base .. "big.bin"].file
      assert.is_true(exists(first))
      assert.equal(201, upload(sb, sid, "/big.bin", big .. "more").status)
      assert.is_false(exists(first))
      local second
      for _, f in ipairs(storage_summary(sb, sid).files) do
        second = f.file or second
      end
      assert.is_true(exists(second))
      assert.equal(200, cloud(sb, "DELETE", files_path(sid, "/big.bin")).status)
      assert.is_false(exists(second))
      assert.equal(201, upload(sb, sid, "/big.bin", big).status)
      local third
      for _, f in ipairs(storage_summary(sb, sid).files) do
        third = f.file or third
      end
      sb:reset()
      assert.is_false(exists(third))
    end)

    it("takes 32 MiB chunked, to disk, and gives it back #slow", function()
      local sid = new_storage(sb)
      local n = 32 * 1024 * 1024
      local d = digest.new("sha256")
      local src = byte_source(n, 1024 * 1024, "32m")
      local res = raw_http(sb, "POST", "/cloud/v1/" .. files_path(sid, "/big/32m.bin"),
                           { "authorization: Bearer " .. cloud_jwt(),
                             "content-type: application/octet-stream" },
                           function()
                             local p = src()
                             if p then
                               d:update(p)
                             end
                             return p
                           end, { chunked = true, timeout = 120 })
      assert.equal(201, res.status, res.body)
      assert.equal(n, json(res).size)
      local want = hex(d:final())
      local f = storage_summary(sb, sid).files[1]
      assert.is_true(f.on_disk)
      assert.equal(want, f.sha256)
      res = cloud(sb, "GET", files_path(sid, "/big/32m.bin"))
      assert.equal(200, res.status)
      assert.equal(n, #res.body)
      assert.equal(want, sha256_hex(res.body))
      assert.equal(200, cloud(sb, "DELETE", files_path(sid, "/big/")).status)
      assert.equal(0, storage_summary(sb, sid).count)
    end)

    it("refuses bad cloud JWTs with the storage error shape", function()
      local sid = new_storage(sb)
      local p = files_path(sid, "/?recursive=false")
      assert.equal(200, cloud(sb, "GET", p).status)
      assert_serror(cloud(sb, "GET", p, { auth = false }), 401, "Unauthorized")
      assert_serror(cloud(sb, "GET", p, { auth = "Basic abc" }), 401, "Unauthorized")
      assert_serror(cloud(sb, "GET", p, { auth = "Bearer not-a-jwt" }), 401, "InvalidToken")
      local now = os.time()
      assert_serror(cloud(sb, "GET", p, { jwt = { claims = { iat = now - 120, exp = now - 60 } } }),
                    401, "TokenExpired")
      assert_serror(cloud(sb, "GET", p, { jwt = { claims = { exp = false } } }), 401, "InvalidToken")
      assert_serror(cloud(sb, "GET", p, { jwt = { claims = { iat = now + 3600, exp = now + 3660 } } }),
                    401, "InvalidToken")
      assert_serror(cloud(sb, "GET", p, { jwt = { claims = { aud = "api" } } }), 401, "InvalidToken")
      assert_serror(cloud(sb, "GET", p, { jwt = { claims = { iss = "other" } } }), 401, "InvalidToken")
      assert_serror(cloud(sb, "GET", p, { jwt = { claims = { sub = "other" } } }), 401, "InvalidToken")
      assert_serror(cloud(sb, "GET", p, { jwt = { header = { alg = "PS512", typ = "JWT", kid = KID } } }),
                    401, "InvalidToken")
      assert_serror(cloud(sb, "GET", p, { jwt = { header = { alg = "PS512", typ = "at+jwt" } } }),
                    401, "InvalidToken")
      local swapped = DEMO.application_id .. "_" .. DEMO.contract_id .. "_0"
      assert_serror(cloud(sb, "GET", p, { jwt = { header = { alg = "PS512", typ = "at+jwt", kid = swapped } } }),
                    401, "InvalidToken")
      assert_serror(cloud(sb, "GET", p, { jwt = { header = { alg = "RS512", typ = "at+jwt", kid = KID } } }),
                    401, "InvalidToken")
      assert_serror(cloud(sb, "GET", p, { jwt = { key = other_key() } }), 401, "InvalidToken")
      -- the list of audiences may be an array
      assert.equal(200, cloud(sb, "GET", p, { jwt = { claims = { aud = { "x", "cloud" } } } }).status)
    end)

    it("refuses unknown storages, other applications, bad paths and media types", function()
      local sid = new_storage(sb)
      assert_serror(cloud(sb, "GET", files_path("no-such-storage", "/")), 404, "NotFound")
      assert_serror(cloud(sb, "GET", files_path(sid, "/", "other-app")), 403, "Forbidden")
      assert_serror(cloud(sb, "GET", files_path(sid, "/?recursive=yes")), 400, "BadRequest")
      -- raw: luasocket would tidy these paths up
      for _, bad in ipairs{ "/a//b", "/a/../b", "/./b", "/a%2Fb", "/a%00b" } do
        assert_serror(raw_http(sb, "GET", "/cloud/v1/" .. files_path(sid, bad),
                               { "authorization: Bearer " .. cloud_jwt() }, {}), 400, "BadRequest")
      end
      assert_serror(upload(sb, sid, "/folder/", "x"), 400, "BadRequest")
      assert_serror(upload(sb, sid, "/x.json", "{}", { content_type = "application/json" }), 415,
                    "UnsupportedMediaType")
      assert_serror(cloud(sb, "PUT", files_path(sid, "/x")), 405, "MethodNotAllowed")
      assert_serror(cloud(sb, "GET", "clouds/" .. sid .. "/elsewhere"), 404, "NotFound")
      assert_serror(raw_http(sb, "POST", "/cloud/v1/" .. files_path(sid, "/huge"),
                             { "authorization: Bearer " .. cloud_jwt(),
                               "content-type: application/octet-stream",
                               "content-length: " .. (1024 * 1024 * 1024) }, {}), 413,
                    "PayloadTooLarge")
      assert.equal(0, storage_summary(sb, sid).count)
    end)
  end)

  describe("control", function()
    it("users, pushes, storage and references, all forgotten by a reset", function()
      new_storage(sb)
      assert.equal(201, ccall(sb, "POST", "reference", { body = { type = "accountId", value = ACC_A } }).status)
      assert.equal(200, push(sb, token, "x", { mimeType = "text/plain", accounts = {} }).status)
      local users = sb:control("GET", "users")
      assert.equal(1, #users)
      assert.equal(token.sub, users[1].id)
      assert.same({ ACC_A, ACC_B }, users[1].accounts)
      assert.equal(1, #users[1].pushed)
      assert.equal(1, users[1].tokens)
      local stats = sb:stats()
      assert.equal(1, stats.pushes)
      assert.equal(1, stats.by_path["/v1.7/permission-access/import"])
      sb:reset()
      assert.same({}, sb:control("GET", "users"))
      assert.same({}, sb:control("GET", "pushes"))
      assert.same({}, sb:control("GET", "storage"))
      assert.same({}, sb:control("GET", "references"))
      local info = sb:info_()
      assert.same({ push = 64 * 1024 * 1024, storage_object = 256 * 1024 * 1024,
                    storage_in_memory = 1024 * 1024 }, info.limits)
    end)
  end)
end)

describe("sandbox writing limits and contracts", function()
  local sb, their_key, dir

  setup(function()
    their_key = other_key()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. sandbox.sh_quote(dir)))
    local function write(name, text)
      local f = assert(io.open(dir .. "/" .. name, "wb"))
      f:write(text)
      f:close()
    end
    write("demo.pem", DEMO.public_key)
    write("other.pem", their_key:public_pem("spki"))
    sb = sandbox.start{ args = { "--sync-pace", "0", "--push-limit", "1k", "--storage-limit", "2k",
                                 "--contract", APP .. ":" .. DEMO.contract_id .. ":" .. dir .. "/demo.pem",
                                 "--contract", "other-app:other-contract:" .. dir .. "/other.pem" } }
  end)

  teardown(function()
    if sb then
      sb:stop()
    end
    os.execute("rm -rf " .. sandbox.sh_quote(dir))
  end)

  it("refuses a chunked push over the limit with 413 after reading it; takes one at the limit", function()
    local token = login(sb)
    local fd = descriptor{ mimeType = "text/plain", accounts = {} }
    local head = { bearer(sb, token), "content-type: application/octet-stream", "filedescriptor: " .. fd }
    local res = raw_http(sb, "POST", "/v1.7/permission-access/import", head,
                         { string.rep("a", 1000), string.rep("b", 25) }, { chunked = true })
    assert_error(res, 413, "PayloadTooLarge")
    res = raw_http(sb, "POST", "/v1.7/permission-access/import",
                   { bearer(sb, token), "content-type: application/octet-stream", "filedescriptor: " .. fd },
                   { string.rep("a", 1000), string.rep("b", 24) }, { chunked = true })
    assert.equal(200, res.status, res.body)
    assert_error(ucall(sb, "POST", "permission-access/import/h:accountId/fhir/stu3", token, {
      headers = { accountid = ACC_A, ["content-type"] = "application/json" },
      body = '{"pad":"' .. string.rep("p", 1100) .. '"}' }), 413, "PayloadTooLarge")
    assert.equal(1, #pushes(sb))
  end)

  it("refuses storage objects over the limit", function()
    local res = ccall(sb, "POST", "storage")
    local sid = json(res).id
    assert_serror(upload(sb, sid, "/big", string.rep("x", 2049)), 413, "PayloadTooLarge")
    res = raw_http(sb, "POST", "/cloud/v1/" .. files_path(sid, "/big"),
                   { "authorization: Bearer " .. cloud_jwt(), "content-type: application/octet-stream" },
                   { string.rep("x", 2000), string.rep("y", 100) }, { chunked = true })
    assert_serror(res, 413, "PayloadTooLarge")
    assert.equal(201, upload(sb, sid, "/ok", string.rep("x", 2048)).status)
  end)

  it("keeps each contract to its own storages", function()
    local mine = json(ccall(sb, "POST", "storage")).id
    local theirs_res = ccall(sb, "POST", "storage", { key = their_key,
                                                      claims = { client_id = "other-app_other-contract" } })
    assert.equal(201, theirs_res.status, theirs_res.body)
    local theirs = json(theirs_res)
    assert.equal("other-contract_other-app_0", theirs.kid)
    local other_jwt = { key = their_key, header = { alg = "PS512", typ = "at+jwt", kid = theirs.kid },
                        claims = { sub = "other-app", iss = "other-contract" } }
    assert.equal(201, cloud(sb, "POST", "clouds/" .. theirs.id .. "/files/apps/other-app/t.bin", {
      jwt = other_jwt, body = "theirs", headers = { ["content-type"] = "application/octet-stream" } }).status)
    -- the demo contract cannot reach it, nor they the demo's
    assert_serror(cloud(sb, "GET", files_path(theirs.id, "/t.bin")), 403, "Forbidden")
    assert_serror(cloud(sb, "GET", "clouds/" .. mine .. "/files/apps/other-app/", { jwt = other_jwt }),
                  403, "Forbidden")
    -- their kid with the demo key's signature
    assert_serror(cloud(sb, "GET", "clouds/" .. theirs.id .. "/files/apps/other-app/",
                        { jwt = { header = other_jwt.header, claims = other_jwt.claims } }),
                  401, "InvalidToken")
    -- a cloudId reference only for one's own storage
    assert_error(ccall(sb, "POST", "reference", { body = { type = "cloudId", value = theirs.id } }), 404,
                 "StorageNotFound")
  end)
end)
