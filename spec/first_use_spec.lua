-- What a new user hits first: every public function refuses a bad argument (self included)
-- with nil, err instead of raising; over-long strings are TypeValidationErrors naming the
-- field; a malformed base_url is refused at init; push_data's provider-only options are not
-- silently taken by a library push; an untrusted jku is named in the error; and a sync whose
-- server is gone ends soon, saying so, with the counts. Against the sandbox over loopback.
local flow = require "flow"
local digime = require "digime"
local validate = require "digime.validate"

local refused = require("probes").refused_err

local function token()
  return { access_token = { value = "a", expiry = 1 }, refresh_token = { value = "r", expiry = 1 } }
end

describe("a new user's first calls", function()
  local sb, sdk

  lazy_setup(function()
    sb = flow.start()
    sdk = assert(flow.sdk(sb))
  end)

  lazy_teardown(function()
    if sb then sb:stop() end
  end)

  it("every sdk method called with a bad self returns nil, err (files: an iterator giving false, err)", function()
    local names = {}
    for name, fn in pairs(getmetatable(sdk)) do
      if type(fn) == "function" and name ~= "__index" then names[#names + 1] = name end
    end
    table.sort(names)
    assert.is_true(#names >= 30, "only " .. #names .. " methods found")
    for _, name in ipairs(names) do
      for _, bad in ipairs{ false, 1, "x", {} } do
        local ok, res, err = pcall(sdk[name], bad, { contract = flow.contract() })
        assert(ok, name .. " raised: " .. tostring(res))
        if name == "files" then
          assert.is_function(res, name)
          local ok2, f, ferr = pcall(res)
          assert(ok2, "files' iterator raised: " .. tostring(f))
          assert.is_false(f)
          refused(ferr, nil, name)
        else
          assert.is_nil(res, name)
          refused(err, nil, name .. " with self = " .. tostring(bad))
        end
      end
    end
    -- nil as self, as `sdk.files(nil, {...})` (issue: it raised "every task is waiting")
    local iter = sdk.files(nil, { contract = flow.contract() })
    local f, ferr = iter()
    assert.is_false(f)
    refused(ferr, "files", "sdk.files(nil)")
  end)

  it("digime.run, spawn and sleep return nil, err for bad arguments and misuse", function()
    for _, bad in ipairs{ "x", -1, 0 / 0, math.huge, {}, true } do
      local ok, res, err = pcall(digime.sleep, bad)
      assert(ok, "digime.sleep(" .. tostring(bad) .. ") raised: " .. tostring(res))
      assert.is_nil(res)
      refused(err, "seconds", "sleep")
    end
    assert.is_true(digime.sleep(0))
    for _, fn in ipairs{ digime.run, digime.spawn } do
      local ok, res, err = pcall(fn, "not a function")
      assert(ok, tostring(res))
      assert.is_nil(res)
      refused(err, "fn", "run/spawn")
    end
    local res, err = digime.spawn(print)
    assert.is_nil(res)
    assert.are.equal("NotInTask", err.code)
    local inner, ierr = digime.run(function() return digime.run(print) end)
    assert.is_nil(inner)
    assert.are.equal("NestedRun", ierr.code)
    assert.are.equal(42, digime.run(function() return digime.sleep(0.01) and 42 end))
  end)

  it("refuses a 10 MB contract.id, state or session_key as a TypeValidationError naming it", function()
    local big = ("x"):rep(10 * 1024 * 1024)
    local opts = flow.authorize_opts()
    opts.contract = { id = big, private_key = opts.contract.private_key }
    local res, err = sdk:get_authorize_url(opts)
    assert.is_nil(res)
    refused(err, "contract.id", "contract.id")
    opts = flow.authorize_opts()
    opts.state = big
    res, err = sdk:get_authorize_url(opts)
    assert.is_nil(res)
    refused(err, "state", "state")
    assert.is_nil(err.retryable)
    res, err = sdk:read_file_list{ contract = flow.contract(), user_access_token = token(),
                                   session_key = big }
    assert.is_nil(res)
    refused(err, "session_key", "session_key")
    -- the limits are the documented ones; a string at its limit passes the check
    assert.are.same({ id = 256, file_name = 1024, url = 2048, key = 65536, token = 65536,
                      default = 4096 }, validate.LIMITS)
    assert.is_true(validate.string(("s"):rep(256), "session_key"))
    assert.is_nil(validate.string(("s"):rep(257), "session_key"))
    assert.is_true(validate.any_string(("s"):rep(4096), "state"))
  end)

  it("push_data type = library refuses account_id, standard and version", function()
    for _, k in ipairs{ "account_id", "standard", "version" } do
      for _, v in ipairs{ 5, {}, "fhir" } do
        local res, err = sdk:push_data{ contract = flow.contract(), user_access_token = token(),
          type = "library", [k] = v,
          data = { file_data = "x", file_name = "a.txt",
                   file_descriptor = { mimeType = "text/plain", accounts = { { accountId = "a" } } } } }
        assert.is_nil(res)
        refused(err, k, "library push with " .. k)
      end
    end
  end)

  it("refuses base URLs that are not URLs (an open IPv6 bracket, a bad port)", function()
    for _, u in ipairs{ "http://[::1", "http://[::1]x/", "http://host:99999/", "http://host:0/",
                        "http://host:/", "http://ho st/", "https://", "http://h/?q" } do
      local res, err = digime.init{ application_id = flow.APP_ID, base_url = u }
      assert.is_nil(res, u)
      refused(err, "base_url", u)
    end
    for _, u in ipairs{ "http://[::1]:8080/v1/", "https://api.example.org/v1.7/",
                        "http://127.0.0.1:1/" } do
      assert(digime.init{ application_id = flow.APP_ID, base_url = u }, u)
    end
  end)

  it("names the jku and the allow-list when a token's jku is not on it", function()
    sb:fault{ method = "POST", path = "/v1.7/oauth/authorize", action = "token", token = "foreign_jku" }
    local fresh = assert(flow.sdk(sb))
    local res, err = fresh:get_authorize_url(flow.authorize_opts())
    assert.is_nil(res)
    assert.are.equal("InvalidServerToken", err.code)
    assert.matches('jku "https?://', err.message)
    assert.is_truthy(err.message:find(fresh.config.jwks.allowed[1], 1, true), err.message)
  end)
end)

describe("a sync whose server is gone", function()
  local FILES = 150

  it("ends soon with NetworkError ServerUnreachable and the counts, with the default retries", function()
    local sb = flow.start{ args = { "--generate", FILES .. ":2k:mixed", "--sync-pace", "0" } }
    local ok, e = pcall(function()
      -- the defaults but max_time, which bounds how long the spec fails without the give-up
      local s = assert(flow.sdk(sb, { retry_options = false, timeout = false }))
      local utoken = flow.login(s)
      local key = assert(s:read_session{ contract = flow.contract(), user_access_token = utoken }).session.key
      local delivered, failed = 0, 0
      local t0 = flow.now()
      local res, err = s:read_all_files{
        contract = flow.contract(), user_access_token = utoken, session_key = key, max_time = 40,
        on_file_data = function()
          delivered = delivered + 1
          if delivered == 10 then sb:stop() end
        end,
        on_file_error = function() failed = failed + 1 end,
      }
      local seconds = flow.now() - t0
      assert.is_nil(res)
      assert.are.equal("NetworkError", err.kind, tostring(err))
      assert.are.equal("ServerUnreachable", err.code, tostring(err))
      assert.matches("unreachable", err.message)
      assert.are.equal(delivered, err.files)
      assert.are.equal(FILES - delivered, err.not_delivered)
      assert.are.equal(FILES, err.listed)
      assert.is_truthy(err.message:find(delivered .. " files delivered, " .. (FILES - delivered)
        .. " not (of " .. FILES .. " listed)", 1, true),
        err.message)
      assert.are.equal(delivered, err.result.files)
      assert.is_true(seconds < 20, "it took " .. seconds .. " s to give up")
      print(string.format("\n  unreachable: gave up after %.1f s, %d files delivered, %d failed",
        seconds, delivered, failed))
      assert.is_true(failed < FILES - delivered, "every remaining file was tried")
    end)
    sb:stop()
    assert(ok, e)
  end)
end)

describe("the sandbox, as a real client sees it", function()
  local function names_of(sb)
    local s = assert(flow.sdk(sb))
    local utoken = flow.login(s)
    local key = assert(s:read_session{ contract = flow.contract(), user_access_token = utoken }).session.key
    local list = assert(s:read_file_list{ contract = flow.contract(), user_access_token = utoken,
                                          session_key = key })
    local names = {}
    for _, f in ipairs(list.fileList or {}) do names[f.name] = true end
    return names
  end

  it("the authorize callback's accountReference is the onboarded account's reference", function()
    local sb = flow.start()
    local ok, e = pcall(function()
      local s = assert(flow.sdk(sb))
      local utoken, info = flow.login(s)
      local ref = info.callback.query.accountReference
      assert.is_string(ref)
      local res = assert(s:read_accounts{ contract = flow.contract(), user_access_token = utoken })
      local found
      for _, a in ipairs(res.accounts) do
        if a.reference == ref then found = a end
      end
      assert(found, "no account has the reference " .. ref)
    end)
    sb:stop()
    assert(ok, e)
  end)

  it("the default library has ordinary file names; --hostile-names gives constructor and __proto__", function()
    local plain = flow.start{ args = { "--sync-pace", "0" } }
    local ok, e = pcall(function()
      local names = names_of(plain)
      assert.is_nil(names.constructor)
      assert.is_nil(names.__proto__)
      assert.is_true(names["instagram_comments.json"])
      assert.is_true(names["pushed_note.txt"])
    end)
    plain:stop()
    assert(ok, e)
    local hostile = flow.start{ args = { "--sync-pace", "0", "--hostile-names" } }
    ok, e = pcall(function()
      local names = names_of(hostile)
      assert.is_true(names.constructor)
      assert.is_true(names.__proto__)
      assert.is_nil(names["instagram_comments.json"])
    end)
    hostile:stop()
    assert(ok, e)
  end)
end)
