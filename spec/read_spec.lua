-- The read calls apart from file contents (doc/protocol.md "Reading a library"): read_session,
-- read_file_list, read_file_metadata, read_accounts, and the argument checks of every read call
-- (read_file, read_all_files and the files iterator included). Against the sandbox over real
-- HTTP; a capture proxy in front of it shows what goes on the wire and answers what the sandbox
-- never would (an empty account list, an account type from the future).
local flow = require "flow"
local leak_check = require "leak_check"
local probes = require "probes"
local cjson = require "cjson"

local QUERY = "/v1.7/permission-access/query/"
local TRIGGER = "/v1.7/permission-access/trigger"
local ACCOUNTS = "/v1.7/permission-access/accounts"

local std_invalid, non_object, refused = probes.std_invalid, probes.non_object, probes.refused
local std_invalid_fields = probes.std_invalid_fields
local stop_and_clear = require("sandbox_hooks").stop_and_clear

local copy = require("tables").copy

local function names_of(list)
  local out = {}
  for i, f in ipairs(list or {}) do out[i] = f.name end
  table.sort(out)
  return out
end

describe("read calls", function()
  local sb, sdk, token, session_key, manifest_names

  lazy_setup(function()
    sb = flow.start{ args = { "--sync-pace", "0.05", "--hostile-names" } }
    sdk = assert(flow.sdk(sb))
    token = flow.login(sdk)
    local s = assert(sdk:read_session{ contract = flow.contract(), user_access_token = token,
                                       session_options = { sourceFetch = false } })
    session_key = s.session.key
    manifest_names = {}
    for name in pairs(sb:control("GET", "manifest").files) do manifest_names[#manifest_names + 1] = name end
    table.sort(manifest_names)
  end)

  lazy_teardown(function()
    if sb then sb:stop() end
  end)

  -- Valid options of each call, fresh on every use.
  local function valid(name)
    local base = { contract = flow.contract(), user_access_token = copy(token) }
    if name == "read_session" then
      base.session_options = { sourceFetch = false }
    elseif name == "read_file_list" then
      base.session_key = session_key
    elseif name == "read_file" or name == "read_file_metadata" then
      base.session_key, base.file_name = session_key, "notes.txt"
    elseif name == "read_all_files" or name == "files" then
      base.session_key = session_key
    end
    return base
  end

  local CALLS = { "read_session", "read_file_list", "read_file", "read_file_metadata",
                  "read_accounts", "read_all_files", "files" }

  -- Calls name with opts; the files iterator gives its first step (false, err on a refusal).
  local function invoke(name, opts)
    if name == "files" then
      local raw_files = getmetatable(sdk).__index.files   -- untracked: keeps the closer
      local step, _, _, closer = raw_files(sdk, opts)
      local first, err = step()
      if closer then closer:close() end
      flow.record_error(err)
      if first == false then return nil, err end
      return first, err
    end
    return sdk[name](sdk, opts)
  end

  -- Nothing is thrown for a bad argument (doc/protocol.md "Errors"): a raise fails the probe too.
  local function probe(name, mutate, field, what)
    local a = valid(name)
    mutate(a)
    local ok, res, err = pcall(invoke, name, a)
    assert(ok, name .. ": " .. what .. ": raised instead of returning an error: " .. tostring(res))
    refused(field, name .. ": " .. what, res, err)
  end

  describe("argument checks", function()
    local requests_before

    before_each(function()
      requests_before = sb:stats().requests
    end)

    after_each(function()
      -- a refused call sends nothing
      assert.are.equal(requests_before, sb:stats().requests)
    end)

    it("refuses options that are not a table, naming the call", function()
      for _, name in ipairs(CALLS) do
        for _, p in ipairs(non_object()) do
          if type(p[2]) ~= "table" then
            local res, err = invoke(name, p[2])
            refused(name, name .. "(" .. p[1] .. ")", res, err)
          end
        end
        local res, err = invoke(name, nil)
        refused(name, name .. "(nil)", res, err)
      end
    end)

    it("refuses unknown keys, naming them (the Node SDK's names among them)", function()
      local typos = { "sessionKey", "privateKey", "contractId", "contractDetails", "userAccessToken",
                      "fileName", "session_Key", "extra" }
      for _, name in ipairs(CALLS) do
        for _, k in ipairs(typos) do
          probe(name, function(a) a[k] = "x" end, k, "unknown key " .. k)
        end
        probe(name, function(a) a[1] = "positional" end, "1", "a positional value")
        probe(name, function(a) a.contract.contractId = "x" end, "contractId", "contract.contractId")
      end
      probe("read_all_files", function(a) a.onFileData = function() end end, "onFileData", "onFileData")
      -- the iterator takes no callbacks
      probe("files", function(a) a.on_file_data = function() end end, "on_file_data", "files{on_file_data}")
      probe("files", function(a) a.on_status_change = function() end end, "on_status_change",
            "files{on_status_change}")
    end)

    it("refuses every STD-INVALID contract, contract.id and contract.private_key", function()
      std_invalid_fields(probe, CALLS, { "contract", "contract.id", "contract.private_key" })
    end)

    it("refuses a private key that is no key", function()
      for _, name in ipairs(CALLS) do
        for what, pem in pairs{ ["text"] = "this is not a PEM key at all, just text",
                                ["a public key"] = flow.demo.public_key } do
          probe(name, function(a) a.contract.private_key = pem end, "contract.private_key", what)
        end
      end
    end)

    it("refuses every STD-INVALID user_access_token and malformed token parts", function()
      for _, name in ipairs(CALLS) do
        std_invalid_fields(probe, name, { "user_access_token" })
        for _, p in ipairs(std_invalid()) do
          probe(name, function(a) a.user_access_token.access_token = p[2] end,
                "user_access_token.access_token", "access_token = " .. p[1])
          probe(name, function(a) a.user_access_token.refresh_token = p[2] end,
                "user_access_token.refresh_token", "refresh_token = " .. p[1])
          if p[1] ~= "0" and p[1] ~= "NaN" then
            probe(name, function(a) a.user_access_token.access_token.value = p[2] end,
                  "user_access_token.access_token.value", "access_token.value = " .. p[1])
          end
        end
        probe(name, function(a) a.user_access_token.access_token.expiry = "soon" end,
              "user_access_token.access_token.expiry", "access_token.expiry = \"soon\"")
        probe(name, function(a) a.user_access_token.user = "me" end, "user_access_token.user",
              "user = \"me\"")
      end
    end)

    it("refuses every STD-INVALID session_key", function()
      std_invalid_fields(probe, { "read_file_list", "read_file", "read_file_metadata", "read_all_files",
                                  "files" }, { "session_key" })
    end)

    it("refuses every STD-INVALID file_name", function()
      std_invalid_fields(probe, { "read_file", "read_file_metadata" }, { "file_name" })
    end)

    it("refuses a read_file sink that is neither a function nor has a write method", function()
      for _, p in ipairs{ { "true", true }, { "false", false }, { "0", 0 }, { '""', "" },
                          { '"out.txt"', "out.txt" }, { "{}", {} }, { "{ write = 1 }", { write = 1 } },
                          { "a coroutine", coroutine.create(function() end) } } do
        probe("read_file", function(a) a.sink = p[2] end, "sink", "sink = " .. p[1])
      end
    end)

    it("refuses a bad read_file max_size", function()
      for _, p in ipairs{ { "true", true }, { "-1", -1 }, { "NaN", 0 / 0 }, { '"10"', "10" },
                          { "{}", {} }, { "a function", function() end }, { "1.5", 1.5 },
                          { "1e300", 1e300 }, { "-math.huge", -math.huge } } do
        probe("read_file", function(a) a.max_size = p[2] end, "max_size", "max_size = " .. p[1])
      end
    end)

    it("refuses session_options that are not a table, and the two malformed scopes", function()
      for _, p in ipairs(non_object()) do
        probe("read_session", function(a) a.session_options = p[2] end, "session_options",
              "session_options = " .. p[1])
        probe("read_session", function(a) a.session_options = { scope = p[2] } end,
              "session_options.scope", "scope = " .. p[1])
      end
      probe("read_session", function(a) a.session_options = { scope = { timeRanges = { "notAnObject" } } } end,
            "timeRanges", "timeRanges = {\"notAnObject\"}")
      probe("read_session", function(a) a.session_options = { scope = { serviceGroups = { { noIdSet = 18 } } } } end,
            "serviceGroups", "serviceGroups = {{noIdSet = 18}}")
      probe("read_session", function(a) a.session_options = { sourceFetch = "yes" } end,
            "sourceFetch", "sourceFetch = \"yes\"")
      probe("read_session", function(a) a.session_options = { sourceFetchFilter = { accounts = {} } } end,
            "sourceFetchFilter", "sourceFetchFilter without account")
    end)

    it("refuses bad read_all_files and files options, naming each", function()
      for _, name in ipairs{ "read_all_files", "files" } do
        local bad = {
          sink = { true, 0, "x", {}, io.stdout },   -- a per-file factory: a function only
          concurrency = { 0, -1, 1.5, "2", 0 / 0, true, {} },
          poll_interval = { -1, 3601, 0 / 0, "1", true, {} },
          max_time = { -1, 0 / 0, "60", true, {} },
          max_unchanged_polls = { 0, -3, 2.5, 0 / 0, "10", true },
        }
        if name == "read_all_files" then
          for _, cb in ipairs{ "on_file_data", "on_file_error", "on_status_change" } do
            bad[cb] = { true, 1, "f", {}, coroutine.create(function() end) }
          end
        end
        for field, values in pairs(bad) do
          for i, v in ipairs(values) do
            probe(name, function(a) a[field] = v end, field, field .. " #" .. i .. " (" .. tostring(v) .. ")")
          end
        end
      end
    end)

    it("refuses a call made with a dot instead of a colon", function()
      for _, name in ipairs{ "read_session", "read_file_list", "read_file", "read_file_metadata",
                             "read_accounts", "read_all_files" } do
        local res, err = getmetatable(sdk).__index[name](valid(name))
        refused(name, name .. " called with a dot", res, err)
      end
    end)
  end)

  describe("read_session", function()
    it("starts a session: { session = { expiry, key }, user_access_token }", function()
      local log_before = #sb:log()
      local res, err = sdk:read_session{ contract = flow.contract(), user_access_token = token }
      assert.is_nil(err)
      assert.is_string(res.session.key)
      assert.is_true(#res.session.key > 0)
      assert.is_number(res.session.expiry)
      assert.is_true(res.session.expiry > os.time() * 1000, "session.expiry is in milliseconds")
      assert.are.same(token, res.user_access_token)
      local keys = {}
      for k in pairs(res) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.are.same({ "session", "user_access_token" }, keys)
      local log = sb:log()
      assert.are.equal(log_before + 1, #log)
      assert.are.equal(TRIGGER, log[#log].path)
      assert.are.equal(202, log[#log].status)
      -- the key works for the other calls
      assert(sdk:read_file_list{ contract = flow.contract(), user_access_token = token,
                                 session_key = res.session.key })
    end)

    it("accepts {} as session_options (Lua cannot tell {} from [])", function()
      local res, err = sdk:read_session{ contract = flow.contract(), user_access_token = token,
                                         session_options = {} }
      assert.is_nil(err)
      assert.is_string(res.session.key)
    end)
  end)

  describe("on the wire", function()
    local cap, csdk, ctoken, ckey

    lazy_setup(function()
      cap = flow.capture(sb)
      csdk = assert(flow.sdk(cap, { jwks = { allowed = { sb.base_url .. "jwks/oauth" } } }))
      ctoken = flow.login(csdk)
      ckey = assert(csdk:read_session{ contract = flow.contract(), user_access_token = ctoken,
                                       session_options = { sourceFetch = false } }).session.key
    end)

    stop_and_clear(function() return cap end)

    local function bearer_claims(req)
      local jwt = req.headers.authorization:match("^Bearer (%S+)$")
      local ok, d = flow.verify_client_jwt(jwt)
      assert.is_true(ok, "the JWT does not verify with the contract key")
      return d.payload, d
    end

    it("sends session_options at the top level with the agent, extra keys unchanged", function()
      local opts = {
        scope = { timeRanges = { { last = "6y" } },
                  serviceGroups = { { id = 1, serviceTypes = { { id = 40, serviceObjectTypes = { { id = 2 } } } } } } },
        limits = { duration = { sourceFetch = 30 } },
        sourceFetch = false,
        sourceFetchFilter = { account = { id = { "40_SbInstagram01" } } },
        extra = "passed through",
        agent = "overridden",
      }
      local res, err = csdk:read_session{ contract = flow.contract(), user_access_token = ctoken,
                                          session_options = opts }
      assert.is_nil(err)
      assert.is_string(res.session.key)
      assert.are.equal("overridden", opts.agent, "the caller's table was changed")
      local reqs = cap:requests_to(TRIGGER)
      assert.are.equal(1, #reqs)
      local r = reqs[1]
      assert.are.equal("POST", r.method)
      assert.is_truthy(r.headers["content-type"]:find("application/json", 1, true))
      local body = cjson.decode(r.body)
      assert.are.equal("passed through", body.extra)
      assert.are.equal(false, body.sourceFetch)
      assert.are.same({ { last = "6y" } }, body.scope.timeRanges)
      assert.are.equal(40, body.scope.serviceGroups[1].serviceTypes[1].id)
      assert.are.same({ duration = { sourceFetch = 30 } }, body.limits)
      assert.are.same({ "40_SbInstagram01" }, body.sourceFetchFilter.account.id)
      assert.is_table(body.agent)
      assert.is_table(body.agent.sdk)
      assert.is_string(body.agent.sdk.name)
      local claims = bearer_claims(r)
      assert.are.equal(ctoken.access_token.value, claims.access_token)
      assert.are.equal(flow.CLIENT_ID, claims.client_id)
    end)

    it("retries a file list that answered 500 once, with a new nonce", function()
      cap:script{ { method = "GET", path = QUERY .. ckey, status = 500, body = "" } }
      local res, err = csdk:read_file_list{ contract = flow.contract(), user_access_token = ctoken,
                                            session_key = ckey }
      assert.is_nil(err)
      assert.is_table(res.status)
      local reqs = cap:requests_to(QUERY .. ckey)
      assert.are.equal(2, #reqs)
      local a, b = bearer_claims(reqs[1]), bearer_claims(reqs[2])
      assert.are_not.equal(a.nonce, b.nonce)
      assert.are.equal(ctoken.access_token.value, b.access_token)
    end)

    it("retries the accounts call that answered 500 once, and reads [] as no accounts", function()
      cap:script{ { method = "GET", path = ACCOUNTS, status = 500, body = "" },
                  { method = "GET", path = ACCOUNTS, status = 200, body = "[]",
                    headers = { ["Content-Type"] = "application/json" } } }
      local res, err = csdk:read_accounts{ contract = flow.contract(), user_access_token = ctoken }
      assert.is_nil(err)
      assert.are.same({}, res.accounts)
      assert.are.same(ctoken, res.user_access_token)
      local reqs = cap:requests_to(ACCOUNTS)
      assert.are.equal(2, #reqs)
      assert.are_not.equal(bearer_claims(reqs[1]).nonce, bearer_claims(reqs[2]).nonce)
    end)

    it("keeps accounts with an unknown type or extra fields", function()
      local future = { id = "99_Future", reference = "abc", type = "HOLOGRAM", createdDate = 1,
                       serviceGroupId = 1, serviceGroupName = "x", serviceTypeId = 99,
                       serviceTypeName = "Future", serviceTypeReference = "future", sourceId = 9,
                       updatedDate = 2, brandNewField = { nested = true } }
      cap:script{ { method = "GET", path = ACCOUNTS, status = 200, body = cjson.encode{ future } } }
      local res, err = csdk:read_accounts{ contract = flow.contract(), user_access_token = ctoken }
      assert.is_nil(err)
      assert.are.equal(1, #res.accounts)
      assert.are.equal("HOLOGRAM", res.accounts[1].type)
      assert.are.same({ nested = true }, res.accounts[1].brandNewField)
    end)

    it("refuses a malformed file list or accounts answer with an error, not a crash", function()
      for _, body in ipairs{ '{"fileList":[]}', '{"status":{}}', '{"status":{"state":"test"}}',
                             '{"status":{"state":"running"},"fileList":[{}]}',
                             '{"status":{"state":"running"},"fileList":[{"name":"a","updatedDate":"x"}]}',
                             '{"status":{"state":"running"},"fileList":true}', "[]", "not json" } do
        cap:script{ { method = "GET", path = QUERY .. ckey, status = 200, body = body,
                      headers = { ["Content-Type"] = "application/json" } } }
        local res, err = csdk:read_file_list{ contract = flow.contract(), user_access_token = ctoken,
                                              session_key = ckey }
        assert(res == nil, body .. ": accepted, as status = " .. flow.dump(res and res.status))
        assert.is_table(err, body)
        assert.is_string(err.kind, body)
        assert.is_table(err.user_access_token, body .. ": the error does not carry the token")
      end
      -- ({} cannot be told from [] once decoded; an object with keys can)
      for _, body in ipairs{ '{"foo":1}', '{"error":"x"}', '"x"', "[1]", '[{"reference":"r"}]' } do
        cap:script{ { method = "GET", path = ACCOUNTS, status = 200, body = body,
                      headers = { ["Content-Type"] = "application/json" } } }
        local res, err = csdk:read_accounts{ contract = flow.contract(), user_access_token = ctoken }
        assert(res == nil, body .. ": accepted, as accounts = " .. flow.dump(res and res.accounts))
        assert.is_table(err, body)
      end
    end)

    it("puts session key and file name on the wire percent-encoded", function()
      local res, err = csdk:read_file_metadata{ contract = flow.contract(), user_access_token = ctoken,
                                                session_key = ckey, file_name = "with space.json" }
      assert.is_nil(err)
      assert.are.equal("with space.json", res.file_name)
      local reqs = cap:requests_to(QUERY .. ckey .. "/with%20space.json")
      assert.are.equal(1, #reqs)
      assert.are.equal("HEAD", reqs[1].method)
    end)
  end)

  describe("read_file_list", function()
    it("goes pending -> running (half the files) -> running (all) -> completed, one step per poll #timing", function()
      local s = assert(sdk:read_session{ contract = flow.contract(), user_access_token = token })
      local seen, lists = {}, {}
      local deadline = flow.now() + 5
      repeat
        local res, err = sdk:read_file_list{ contract = flow.contract(), user_access_token = token,
                                             session_key = s.session.key }
        assert.is_nil(err)
        assert.are.same(token, res.user_access_token)
        assert.is_nil(res.userAccessToken)
        if seen[#seen] ~= res.status.state or #(res.fileList or {}) ~= #(lists[#lists] or {}) then
          seen[#seen + 1] = res.status.state
          lists[#lists + 1] = res.fileList or {}
        end
        flow.sandbox.sleep(0.03)
      until res.status.state == "completed" or flow.now() > deadline
      assert.are.same({ "pending", "running", "running", "completed" }, seen)
      assert.are.equal(math.ceil(#manifest_names / 2), #lists[2])
      assert.are.same(manifest_names, names_of(lists[3]))
      assert.are.same(manifest_names, names_of(lists[4]))
      for _, f in ipairs(lists[4]) do
        assert.is_number(f.updatedDate)
        assert.is_true(f.updatedDate > 1e12, "updatedDate is in milliseconds")
      end
    end)

    it("reports the per-account details of a running and a completed sync #timing", function()
      local res = assert(sdk:read_file_list{ contract = flow.contract(), user_access_token = token,
                                             session_key = session_key })
      assert.are.equal("completed", res.status.state)
      assert.is_table(res.status.details)
      local n = 0
      for id, d in pairs(res.status.details) do
        n = n + 1
        assert.is_string(id)
        assert.are.equal("completed", d.state)
      end
      assert.are.equal(2, n)
      -- mapped entries carry their schema
      for _, f in ipairs(res.fileList) do
        if f.name == "instagram_posts.json" then
          assert.are.same({ standard = "digime", version = "1.0.0" }, f.schema)
          assert.are.equal("post", f.objectType)
        end
      end
    end)

    it("answers a session that does not exist with a ServerError carrying the token", function()
      local res, err = sdk:read_file_list{ contract = flow.contract(), user_access_token = token,
                                           session_key = "no-such-session" }
      assert.is_nil(res)
      assert.are.equal("ServerError", err.kind)
      assert.are.equal(404, err.status)
      assert.are.equal("SessionNotFound", err.code)
      assert.are.same(token, err.user_access_token)
    end)
  end)

  describe("read_file_metadata", function()
    it("gives the metadata of a mapped and of a raw file from a HEAD", function()
      local log_before = #sb:log()
      local res, err = sdk:read_file_metadata{ contract = flow.contract(), user_access_token = token,
                                               session_key = session_key, file_name = "instagram_posts.json" }
      assert.is_nil(err)
      assert.are.equal("instagram_posts.json", res.file_name)
      local m = res.file_metadata
      assert.are.equal("post", m.objectType)
      assert.are.equal(5, m.objectCount)
      assert.are.equal("instagram", m.serviceName)
      assert.are.equal("social", m.serviceGroup)
      assert.are.same({ standard = "digime", version = "1.0.0" }, m.schema)
      assert.are.equal("gzip", res.compression)
      assert.is_string(res.last_modified)
      assert.are.same(token, res.user_access_token)
      assert.is_nil(res.file_data)
      local log = sb:log()
      assert.are.equal(log_before + 1, #log)
      assert.are.equal("HEAD", log[#log].method)

      res = assert(sdk:read_file_metadata{ contract = flow.contract(), user_access_token = token,
                                           session_key = session_key, file_name = "__proto__" })
      assert.are.equal("text/plain", res.file_metadata.mimetype)
      assert.are.same({ { accountid = "40_SbInstagram01" } }, res.file_metadata.accounts)
      assert.are.same({ "proto-note" }, res.file_metadata.reference)
      assert.are.equal("brotli", res.compression)
    end)

    it("answers a file that does not exist with a 404 ServerError (X-Error-* headers read)", function()
      local res, err = sdk:read_file_metadata{ contract = flow.contract(), user_access_token = token,
                                               session_key = session_key, file_name = "nope.json" }
      assert.is_nil(res)
      assert.are.equal("ServerError", err.kind)
      assert.are.equal(404, err.status)
      assert.are.equal("FileNotFound", err.code)
      assert.are.same(token, err.user_access_token)
    end)
  end)

  describe("read_accounts", function()
    it("lists the library's accounts as the server sends them", function()
      local res, err = sdk:read_accounts{ contract = flow.contract(), user_access_token = token }
      assert.is_nil(err)
      assert.are.same(token, res.user_access_token)
      assert.are.equal(2, #res.accounts)
      local ids = {}
      for i, a in ipairs(res.accounts) do
        ids[i] = a.id
        assert.is_string(a.reference)
        assert.are.equal("USER", a.type)
        assert.is_number(a.createdDate)
        assert.is_number(a.serviceGroupId)
        assert.is_table(a.accessTokenStatus)
      end
      table.sort(ids)
      assert.are.same({ "24_SbFitbit01", "40_SbInstagram01" }, ids)
    end)
  end)

  leak_check.it_leaks_nothing(true)
end)
