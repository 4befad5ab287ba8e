-- Writing and managing against the sandbox: push_data (library and provider), the onboarding
-- and account URLs, deleting accounts and users, the portability report, sample data sets,
-- contract details and the discovery queries.
local flow = require "flow"
local core = require "digime.core"

local hex = require("encode").hex

describe("writing and managing", function()
  local sb, sdk

  setup(function()
    sb = flow.start{ args = { "--sync-pace", "0" } }
    sdk = assert(flow.sdk(sb))
  end)

  teardown(function()
    if sb then sb:stop() end
  end)

  before_each(function() sb:reset() end)

  local function library_names(token)
    local s = assert(sdk:read_session{ contract = flow.contract(), user_access_token = token })
    local list
    for _ = 1, 50 do
      list = assert(sdk:read_file_list{ contract = flow.contract(), user_access_token = token,
                                        session_key = s.session.key })
      if list.status.state == "completed" then break end
      flow.sandbox.sleep(0.02)
    end
    return list, s.session.key
  end

  local function descriptor()
    return { mimeType = "application/json", accounts = {}, reference = { "ref-1" }, tags = { "t" } }
  end

  describe("push_data to the library", function()
    it("stores a string, a file handle and a reader's data, which a later sync returns", function()
      local token = flow.login(sdk)
      local payloads = { string = '{"pushed":"as a string"}', handle = ("h"):rep(70000),
                         reader = ("r"):rep(5000) }
      assert(sdk:push_data{ contract = flow.contract(), user_access_token = token, type = "library",
        data = { file_data = payloads.string, file_name = "s.json", file_descriptor = descriptor() } })
      local path = os.tmpname()
      local f = assert(io.open(path, "wb"))
      f:write(payloads.handle)
      f:close()
      f = assert(io.open(path, "rb"))
      assert(sdk:push_data{ contract = flow.contract(), user_access_token = token, type = "library",
        data = { file_data = f, file_name = "h.bin", file_descriptor = descriptor() } })
      f:close()
      os.remove(path)
      local chunks = { payloads.reader:sub(1, 2500), payloads.reader:sub(2501) }
      local i = 0
      local res, err = sdk:push_data{ contract = flow.contract(), user_access_token = token,
        type = "library", data = { file_name = "r.bin", file_descriptor = descriptor(),
          file_data = function() i = i + 1; return chunks[i] end } }
      assert.is_nil(err)
      assert.is_table(res.user_access_token)

      local pushes = assert(sb:control("GET", "pushes"))
      assert.are.equal(3, #pushes)
      local wanted = {}
      for _, p in pairs(payloads) do wanted[hex(core.sha256(p))] = true end
      local pushed_names = {}
      for _, p in ipairs(pushes) do
        assert.are.equal("library", p.kind)
        assert.is_true(wanted[p.sha256], "a push arrived changed")
        pushed_names[p.name] = p.sha256
      end
      -- a later sync lists the pushed files, and they decrypt to what was pushed
      local list, key = library_names(token)
      local found = 0
      for _, entry in ipairs(list.fileList) do
        if pushed_names[entry.name] then
          local file = assert(sdk:read_file{ contract = flow.contract(), user_access_token = token,
                                             session_key = key, file_name = entry.name })
          assert.are.equal(pushed_names[entry.name], hex(core.sha256(file.file_data)))
          assert.are.equal("application/json", file.file_metadata.mimetype)
          found = found + 1
        end
      end
      assert.are.equal(3, found)
    end)

    it("refreshes and sends again after a 401: a string and a file handle (rewound) go twice", function()
      local token = flow.login(sdk)
      sb:expire("access")
      local res, err = sdk:push_data{ contract = flow.contract(), user_access_token = token,
        type = "library", data = { file_data = "abc", file_name = "a", file_descriptor = descriptor() } }
      assert.is_nil(err)
      assert.are_not.equal(token.access_token.value, res.user_access_token.access_token.value)
      token = res.user_access_token
      sb:expire("access")
      local path = os.tmpname()
      local f = assert(io.open(path, "w+b"))
      f:write("0123456789")
      f:seek("set", 2)   -- the data starts where the handle stands
      local _
      _, err = sdk:push_data{ contract = flow.contract(), user_access_token = token,
        type = "library", data = { file_data = f, file_name = "b", file_descriptor = descriptor() } }
      f:close()
      os.remove(path)
      assert.is_nil(err)
      local pushes = assert(sb:control("GET", "pushes"))
      assert.are.equal(2, #pushes)
      assert.are.equal(hex(core.sha256("23456789")), pushes[2].sha256)
    end)

    it("fails clearly instead of sending an empty body when a one-shot reader must be resent", function()
      local token = flow.login(sdk)
      sb:expire("access")
      local calls = 0
      local res, err = sdk:push_data{ contract = flow.contract(), user_access_token = token,
        type = "library", data = { file_name = "x", file_descriptor = descriptor(),
          file_data = function() calls = calls + 1; if calls == 1 then return "once" end end } }
      assert.is_nil(res)
      assert.are.equal("StreamNotRewindable", err.code)
      assert.is_table(err.user_access_token)   -- the refreshed token is not lost
      assert.are.same({}, assert(sb:control("GET", "pushes")))
    end)

    it("is never sent twice when the answer is lost", function()
      local token = flow.login(sdk)
      sb:fault{ method = "POST", path = "/v1.7/permission-access/import", action = "reset", after = true }
      local res, err = sdk:push_data{ contract = flow.contract(), user_access_token = token,
        type = "library", data = { file_data = "once", file_name = "o", file_descriptor = descriptor() } }
      assert.is_nil(res)
      assert.are.equal("NetworkError", err.kind)
      assert.are.equal(1, #assert(sb:control("GET", "pushes")))
    end)

    it("refuses bad data with a TypeValidationError naming the field, sending nothing", function()
      local token = flow.login(sdk)
      local before = sb:stats().requests
      local cases = {
        { { type = "nope" }, "type" },
        { { type = "library" }, "data" },
        { { type = "library", data = "text" }, "data" },
        { { type = "library", data = { file_data = 5, file_name = "a", file_descriptor = descriptor() } },
          "data.file_data" },
        { { type = "library", data = { file_data = "x", file_descriptor = descriptor() } }, "data.file_name" },
        { { type = "library", data = { file_data = "x", file_name = "a" } }, "data.file_descriptor" },
        { { type = "library", data = { file_data = "x", file_name = "a", file_descriptor = { accounts = {} } } },
          "data.file_descriptor.mimeType" },
        { { type = "library", data = { file_data = "x", file_name = "a",
            file_descriptor = { mimeType = "a", accounts = { { id = 1 } } } } }, "data.file_descriptor.accounts[1]" },
        { { type = "provider", data = {}, version = "4", standard = "fhir", account_id = "a" }, "version" },
        { { type = "provider", data = {}, version = "stu3", standard = "x", account_id = "a" }, "standard" },
        { { type = "provider", data = {}, version = "stu3", standard = "fhir" }, "account_id" },
        { { type = "library", colour = "red" }, "push_data.colour" },
      }
      for _, c in ipairs(cases) do
        local opts = c[1]
        opts.contract, opts.user_access_token = flow.contract(), token
        local res, err = sdk:push_data(opts)
        assert.is_nil(res)
        assert.are.equal("TypeValidationError", err.kind)
        assert.matches(c[2], err.message, 1, true)
      end
      assert.are.equal(before, sb:stats().requests)
    end)
  end)

  describe("push_data to a provider", function()
    it("sends JSON with the accountId header to the FHIR path of the version", function()
      local token = flow.login(sdk)
      local accounts = assert(sdk:read_accounts{ contract = flow.contract(), user_access_token = token })
      local account = accounts.accounts[1].id
      local res, err = sdk:push_data{ contract = flow.contract(), user_access_token = token,
        type = "provider", data = { resourceType = "Observation", status = "final" },
        version = "stu3", standard = "fhir", account_id = account }
      assert.is_nil(err)
      assert.is_table(res.user_access_token)
      local pushes = assert(sb:control("GET", "pushes"))
      assert.are.equal("provider", pushes[1].kind)
      assert.are.equal(account, pushes[1].account)
      assert.are.equal("stu3", pushes[1].version)
      -- an account the user does not have is the server's error, typed
      res, err = sdk:push_data{ contract = flow.contract(), user_access_token = token,
        type = "provider", data = {}, version = "3.0.2", standard = "fhir", account_id = "nobody's" }
      assert.is_nil(res)
      assert.are.equal("ServerError", err.kind)
    end)
  end)

  describe("URLs for an authorized user", function()
    it("get_onboard_service_url gives an onboard URL that consents, and refreshes first when needed", function()
      local token = flow.login(sdk)
      sb:expire("access")
      local res, err = sdk:get_onboard_service_url{ contract = flow.contract(), user_access_token = token,
        callback = "https://app.example/cb", service_id = 99, state = "more", locale = "nl",
        trigger_query = true }
      assert.is_nil(err)
      assert.are.same({ "code", "sourceType", "service", "lng", "triggerQuery" }, flow.param_names(res.url))
      assert.matches("/apps/saas/onboard%?", res.url)
      assert.are.equal("99", flow.query_of(res.url).service)
      assert.are_not.equal(token.access_token.value, res.user_access_token.access_token.value)
      assert.is_string(res.session.key)
      local cb = flow.consent(res.url)
      assert.are.equal(302, cb.status)
      assert.are.equal("true", cb.query.success)
    end)

    it("get_reauthorize_account_url makes an account reference and a reauthorize URL", function()
      local token = flow.login(sdk)
      local account = assert(sdk:read_accounts{ contract = flow.contract(), user_access_token = token }).accounts[1].id
      local res, err = sdk:get_reauthorize_account_url{ contract = flow.contract(), user_access_token = token,
        callback = "https://app.example/cb", account_id = account, locale = "en" }
      assert.is_nil(err)
      assert.are.same({ "code", "accountRef", "lng" }, flow.param_names(res.url))
      local refs = assert(sb:control("GET", "references"))
      assert.are.equal("accountId", refs[#refs].type)
      assert.are.equal(account, refs[#refs].value)
      assert.are.equal(refs[#refs].id, flow.query_of(res.url).accountRef)
      assert.are.equal("true", flow.consent(res.url).query.success)
    end)

    it("get_revoke_account_permission_url returns the location to send the user to", function()
      local token = flow.login(sdk)
      local account = assert(sdk:read_accounts{ contract = flow.contract(), user_access_token = token }).accounts[1].id
      local res, err = sdk:get_revoke_account_permission_url{ contract = flow.contract(),
        user_access_token = token, account_id = account, redirect_uri = "https://app.example/revoked" }
      assert.is_nil(err)
      assert.is_string(res.location)
      local page = flow.consent(res.location)
      assert.are.equal(302, page.status)
      assert.matches("^https://app.example/revoked%?", page.location)
      assert.are.equal("success", page.query.result)
    end)

    it("refuse missing and unknown options", function()
      local token = flow.login(sdk)
      local _, e1 = sdk:get_onboard_service_url{ contract = flow.contract(), user_access_token = token }
      assert.are.equal("TypeValidationError", e1.kind)
      assert.matches("callback", e1.message)
      local _, e2 = sdk:get_reauthorize_account_url{ contract = flow.contract(), user_access_token = token,
        callback = "https://x/cb" }
      assert.matches("account_id", e2.message)
      local _, e3 = sdk:get_revoke_account_permission_url{ contract = flow.contract(),
        user_access_token = token, account_id = "a", redirectUri = "https://x" }
      assert.matches("redirectUri", e3.message)
      local _, e4 = sdk:get_onboard_service_url{ contract = flow.contract(), user_access_token = token,
        callback = "https://x/cb", service_id = "99" }
      assert.matches("service_id", e4.message)
    end)
  end)

  describe("deleting", function()
    it("delete_account removes the account; delete_user ends the user's tokens", function()
      local token = flow.login(sdk)
      local accounts = assert(sdk:read_accounts{ contract = flow.contract(), user_access_token = token }).accounts
      local res, err = sdk:delete_account{ contract = flow.contract(), user_access_token = token,
                                           account_id = accounts[1].id }
      assert.is_nil(err)
      assert.is_true(res.deleted)
      assert.is_number(res.status)
      assert.is_nil(res.response)          -- no transport object
      local after = assert(sdk:read_accounts{ contract = flow.contract(), user_access_token = token }).accounts
      assert.are.equal(#accounts - 1, #after)
      res, err = sdk:delete_user{ contract = flow.contract(), user_access_token = token }
      assert.is_nil(err)
      assert.is_true(res.deleted)
      local gone, gerr = sdk:read_accounts{ contract = flow.contract(), user_access_token = token }
      assert.is_nil(gone)
      assert.are.equal("InvalidToken", gerr.code)
    end)

    it("retries a DELETE that got a 500", function()
      local token = flow.login(sdk)
      sb:fault{ method = "DELETE", path = "/v1.7/user", action = "status", status = 500 }
      local res, err = sdk:delete_user{ contract = flow.contract(), user_access_token = token }
      assert.is_nil(err)
      assert.is_true(res.deleted)
      assert.are.equal(2, flow.count(sb, "/v1.7/user"))
    end)
  end)

  describe("reports, sample data and the contract", function()
    it("get_portability_report sends format, from and to (encoded, absent ones left out)", function()
      local token = flow.login(sdk)
      local res, err = sdk:get_portability_report{ contract = flow.contract(), user_access_token = token,
        format = "xml", service_type = "medmij", from = 1700000000, to = 1800000000 }
      assert.is_nil(err)
      assert.is_string(res.file)
      assert.matches("<", res.file)
      local _
      _, err = sdk:get_portability_report{ contract = flow.contract(), user_access_token = token,
        format = "xml", service_type = "medmij" }
      assert.is_nil(err)
      local _, bad = sdk:get_portability_report{ contract = flow.contract(), user_access_token = token,
        format = "xml", service_type = "unknown" }
      assert.are.equal("ServerError", bad.kind)
      assert.are.equal(404, bad.status)
    end)

    it("get_service_sample_data_sets and get_contract_details answer for the contract", function()
      local res, err = sdk:get_service_sample_data_sets{ contract = flow.contract(), source_id = 1 }
      assert.is_nil(err)
      assert.is_table(res.data_sets)
      local c
      c, err = sdk:get_contract_details{ contract = flow.contract() }
      assert.is_nil(err)
      assert.is_string(c.id)
      local _, verr = sdk:get_service_sample_data_sets{ contract = flow.contract(), source_id = "1" }
      assert.are.equal("TypeValidationError", verr.kind)
    end)
  end)

  describe("discovery", function()
    it("query_sources sends the default filters and pages through the catalogue", function()
      local res, err = sdk:query_sources{ contract = flow.contract() }
      assert.is_nil(err)
      assert.is_true(#res.data > 0)
      assert.is_number(res.total)
      local page = assert(sdk:query_sources{ contract = flow.contract(),
        sources_body_params = { limit = 2, offset = 1 } })
      assert.is_true(#page.data <= 2)
      assert.are.equal(1, page.offset)
    end)

    it("filters sources by country and category, and lists countries, platforms, categories", function()
      local countries = assert(sdk:query_countries{ contract = flow.contract() }).data
      local categories = assert(sdk:query_categories{ contract = flow.contract() }).data
      local platforms = assert(sdk:query_platforms{ contract = flow.contract() }).data
      assert.is_true(#countries >= 3 and #categories >= 3 and #platforms >= 2)
      local all = assert(sdk:query_sources{ contract = flow.contract(),
        sources_body_params = { limit = 1000 } })
      local country, category = countries[1].id, categories[1].id
      local res = assert(sdk:query_sources{ contract = flow.contract(), sources_body_params = {
        limit = 1000, query = { filter = { country = { id = { country } }, category = { id = { category } } } } } })
      assert.is_true(#res.data < #all.data, "the filter changed nothing")
      for _, s in ipairs(res.data) do assert.is_number(s.id) end
    end)

    it("retries a discovery POST that got a 503 (it only reads)", function()
      sb:fault{ method = "POST", path = "/v1.7/discovery/countries", action = "status", status = 503 }
      local res, err = sdk:query_countries{ contract = flow.contract() }
      assert.is_nil(err)
      assert.is_table(res.data)
      assert.are.equal(2, flow.count(sb, "/v1.7/discovery/countries"))
    end)

    it("refuses bad params", function()
      local _, e1 = sdk:query_sources{ contract = flow.contract(), sources_body_params = "x" }
      assert.are.equal("TypeValidationError", e1.kind)
      local _, e2 = sdk:query_countries{ contract = flow.contract(),
        countries_body_params = { query = { include = { 1 } } } }
      assert.matches("include", e2.message)
      local _, e3 = sdk:query_platforms{ contract = flow.contract(), params = {} }
      assert.matches("params", e3.message)
    end)
  end)

  describe("push_data streams its data", function()
    local curl = require "digime.transport.curl"

    -- An sdk whose transport notes what each push body was (type, body_length).
    local function noting_sdk()
      local seen, inner = {}, nil
      local s = assert(flow.sdk(sb, { transport = { request = function(_, req)
        if req.url:match("permission%-access/import$") then
          seen[#seen + 1] = { body = type(req.body), length = req.body_length }
        end
        return inner:request(req)
      end } }))
      inner = curl.new(s.config)
      return s, seen
    end

    it("sends strings and handles with their length, readers chunked, all unchanged", function()
      local s, seen = noting_sdk()
      local token = flow.login(s)
      local data = core.random_bytes(700 * 1024 + 3)
      local path = os.tmpname()
      local f = assert(io.open(path, "wb"))
      f:write("head" .. data)
      f:close()
      f = assert(io.open(path, "rb"))
      f:seek("set", 4)
      local pos = 1
      for _, source in ipairs{ data, f, function()
        if pos > #data then return nil end
        local chunk = data:sub(pos, pos + 65535)
        pos = pos + 65536
        return chunk
      end } do
        local res, err = s:push_data{ contract = flow.contract(), user_access_token = token,
          type = "library", data = { file_data = source, file_name = "p.bin", file_descriptor = descriptor() } }
        assert.is_nil(err)
        token = res.user_access_token
      end
      f:close()
      os.remove(path)
      assert.are.same({ { body = "function", length = #data }, { body = "function", length = #data },
                        { body = "function" } }, seen)
      local pushes = assert(sb:control("GET", "pushes"))
      assert.are.equal(3, #pushes)
      for _, p in ipairs(pushes) do assert.are.equal(hex(core.sha256(data)), p.sha256) end
    end)

    it("rewinds a file handle of many chunks for the resend after a token refresh", function()
      local token = flow.login(sdk)
      sb:expire("access")
      local data = core.random_bytes(900 * 1024)
      local path = os.tmpname()
      local f = assert(io.open(path, "w+b"))
      f:write("skip" .. data)
      f:seek("set", 4)
      local res, err = sdk:push_data{ contract = flow.contract(), user_access_token = token,
        type = "library", data = { file_data = f, file_name = "r.bin", file_descriptor = descriptor() } }
      f:close()
      os.remove(path)
      assert.is_nil(err)
      assert.are_not.equal(token.access_token.value, res.user_access_token.access_token.value)
      local pushes = assert(sb:control("GET", "pushes"))
      assert.are.equal(1, #pushes)
      assert.are.equal(hex(core.sha256(data)), pushes[1].sha256)
    end)

    it("stops on a reader that fails mid-way, with the reader's error, pushing nothing", function()
      local token = flow.login(sdk)
      local n = 0
      local res, err = sdk:push_data{ contract = flow.contract(), user_access_token = token,
        type = "library", data = { file_name = "x", file_descriptor = descriptor(), file_data = function()
          n = n + 1
          if n <= 30 then return ("q"):rep(65536) end
          error("sensor unplugged", 0)
        end } }
      assert.is_nil(res)
      assert.are.same({ "DigiMeSDKError", "SinkError" }, { err.kind, err.code })
      assert.matches("sensor unplugged", err.message, 1, true)
      assert.is_table(err.user_access_token)
      assert.are.equal(31, n)
      assert.are.same({}, assert(sb:control("GET", "pushes")))
    end)

    it("holds memory bounded: 8 MiB and 48 MiB pushes peak at about the same RSS #slow", function()
      local function peak_kb(mib)
        local lua = rawget(_G, "jit") and "luajit" or "lua5.4"
        local q = flow.sandbox.sh_quote
        local p = assert(io.popen(("%s bench/upload.lua %s %s %s push %d reader 2>&1"):format(lua,
          q(sb.base_url), q(sb.onboard_url), q(sb.cloud_base_url or "-"), mib)))
        local out = p:read("*a")
        p:close()
        local bytes, _, hwm = out:match("RESULT (%d+) ([%d.]+) (%d+)")
        assert(bytes, "bench/upload.lua failed: " .. out)
        return tonumber(hwm)
      end
      local small, big = peak_kb(8), peak_kb(48)
      assert.is_true(big - small < 8 * 1024, ("peak RSS %d kB for 8 MiB, %d kB for 48 MiB"):format(small, big))
      local sizes = {}
      for _, p in ipairs(assert(sb:control("GET", "pushes"))) do sizes[p.size] = true end
      assert.is_true(sizes[8 * 1048576] and sizes[48 * 1048576])
    end)
  end)

  it("never lets a secret into an error or a log line", function()
    flow.assert_no_secrets()
  end)
end)
