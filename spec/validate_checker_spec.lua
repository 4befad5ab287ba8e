-- Option checks declared once per call (validate.checker): one ordered list of option ->
-- checker refuses what validate.options refuses, with the same messages, reports an unknown
-- key before any bad value, and then the first bad option in the order listed. Through the
-- SDK: every public call refuses an unknown key first, and calls whose lists do not start with
-- contract and user_access_token keep their order. Nothing here reaches the network: each
-- call is refused before it would send.
local validate = require "digime.validate"
local digime = require "digime"
local flow = require "flow"

describe("validate.checker", function()
  local check = validate.checker("some_call",
    { { "a", validate.string }, { "b", validate.number, true, 1, 5 } },
    { { "c" }, { "d", validate.string, true }, { "d", function(v, field)
        if v == "no" then return nil, digime.errors.validation(field, "must not be no") end
        return true
      end } })

  it("refuses opts that are not a table, as validate.options does", function()
    for _, bad in ipairs{ 1, "x", false } do
      local ok, err = check(bad)
      local ok2, err2 = validate.options(bad, { a = true }, "some_call")
      assert.is_nil(ok)
      assert.is_nil(ok2)
      assert.equal("TypeValidationError", err.kind)
      assert.equal("some_call", err.field)
      assert.equal(err2.message, err.message)
    end
    local ok, err = check(nil)
    assert.is_nil(ok)
    assert.equal("some_call must be a table of options", err.message)
  end)

  it("reports an unknown key before any bad value, naming the known keys as options() does", function()
    local ok, err = check{ a = 1, b = "x", zzz = true }
    assert.is_nil(ok)
    assert.equal("some_call.zzz", err.field)
    local _, err2 = validate.options({ zzz = true }, validate.set{ "a", "b", "c", "d" }, "some_call")
    assert.equal(err2.message, err.message)
    assert.equal("some_call.zzz is not a known option (known: a, b, c, d)", err.message)
  end)

  it("reports the first bad option in the order listed, lists joined in order", function()
    local _, err = check{ a = 1, b = 9, d = 3 }
    assert.equal("a", err.field)
    _, err = check{ a = "x", b = 9, d = 3 }
    assert.equal("b", err.field)
    assert.equal("b must be a number >= 1 <= 5", err.message)
    _, err = check{ a = "x", b = 2, d = 3 }
    assert.equal("d", err.field)
    local reversed = validate.checker("some_call", { { "b", validate.number, true, 1, 5 } },
                                      { { "a", validate.string } })
    _, err = reversed{ a = 1, b = 9 }
    assert.equal("b", err.field)
  end)

  it("passes the entry's arguments, takes an entry without a check as known, runs a key's entries in order", function()
    assert.is_true(check{ a = "x" })
    assert.is_true(check{ a = "x", b = 5, c = { anything = true }, d = "yes" })
    local _, err = check{ a = "x", d = "" }
    assert.equal("d must be a non-empty string", err.message)
    _, err = check{ a = "x", d = "no" }
    assert.equal("d must not be no", err.message)
  end)

  it("validate.integer: an integer within its bounds", function()
    assert.is_true(validate.integer(nil, "n", true))
    assert.is_true(validate.integer(3, "n", false, 1))
    for _, bad in ipairs{ 0, 1.5, "1", 0 / 0, math.huge } do
      local ok, err = validate.integer(bad, "n", true, 1)
      assert.is_nil(ok)
      assert.equal("n must be an integer >= 1", err.message)
    end
    local _, err = validate.integer(11, "n", false, 0, 10)
    assert.equal("n must be an integer >= 0 <= 10", err.message)
  end)
end)

describe("the public calls' option checks", function()
  local sdk = assert(digime.init{ application_id = flow.APP_ID, base_url = "http://127.0.0.1:9/" })
  local TOKEN = { access_token = { value = "a", expiry = 1 }, refresh_token = { value = "r", expiry = 1 } }
  local CALLS = {
    "get_authorize_url", "get_reauthorize_url", "exchange_code_for_token", "refresh_token",
    "read_session", "read_file_list", "read_file", "read_file_metadata", "read_accounts",
    "get_onboard_service_url", "get_reauthorize_account_url", "get_revoke_account_permission_url",
    "delete_user", "delete_account", "get_portability_report", "get_service_sample_data_sets",
    "get_contract_details", "query_sources", "query_countries", "query_platforms",
    "query_categories", "push_data", "create_provisional_storage", "get_user_storage",
    "list_storage_files", "upload_file_to_storage", "download_storage_file",
    "delete_storage_files", "read_all_files",
  }

  it("every call refuses an unknown key before a bad value, naming itself", function()
    for _, name in ipairs(CALLS) do
      local ok, err = sdk[name](sdk, { contract = 1, zzz_unknown = true })
      assert.is_nil(ok, name)
      assert.equal("TypeValidationError", err.kind, name)
      assert.equal(name .. ".zzz_unknown", err.field, name)
      ok, err = sdk[name](sdk, "opts")
      assert.is_nil(ok, name)
      assert.equal(name .. " must be a table of options", err.message, name)
    end
  end)

  it("keeps each call's order where two options are wrong", function()
    local c = flow.contract()
    local cases = {
      -- callback is checked before user_access_token in these two
      { "get_onboard_service_url", { contract = c, callback = 1, user_access_token = 1 }, "callback" },
      { "get_reauthorize_account_url", { contract = c, callback = 1, user_access_token = 1 }, "callback" },
      { "get_authorize_url", { contract = c, callback = "https://x/", state = 1, service_id = -1 }, "state" },
      { "get_revoke_account_permission_url", { contract = c, user_access_token = TOKEN,
        account_id = "a\r\nb", redirect_uri = 1 }, "account_id" },
      { "read_file", { contract = c, user_access_token = TOKEN, session_key = "s",
        file_name = "f", max_size = -1, sink = 1 }, "max_size" },
      { "upload_file_to_storage", { contract = c, storage_id = "s", file_name = "a/b",
        file_data = 1 }, "file_data" },
      { "upload_file_to_storage", { contract = c, storage_id = "s", file_name = "a/b",
        file_data = "x" }, "file_name", "file_name must not contain '/' (use path)" },
      { "download_storage_file", { contract = c, storage_id = "s", path = "" }, "path",
        "path must be a non-empty string" },
      { "download_storage_file", { contract = c, storage_id = "s", path = "a/../b", sink = 1 },
        "path" },
      { "push_data", { contract = c, user_access_token = 1, type = "x" }, "user_access_token" },
      { "push_data", { contract = c, user_access_token = TOKEN, type = "x" }, "type" },
      { "get_portability_report", { contract = c, user_access_token = TOKEN, format = "xml",
        service_type = "medmij", from = -1, to = -1 }, "from" },
      { "query_sources", { contract = c, sources_body_params = { 1, 2 } }, "sources_body_params" },
    }
    for _, case in ipairs(cases) do
      local ok, err = sdk[case[1]](sdk, case[2])
      assert.is_nil(ok, case[1])
      assert.equal(case[3], err.field, case[1])
      if case[4] then assert.equal(case[4], err.message, case[1]) end
    end
  end)
end)
