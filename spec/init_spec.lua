-- digime.init (README "`digime.init` options") and the argument checks every call shares
-- (as the Node SDK's own tests probe them): options accepted and refused, URL normalisation, the agent
-- the SDK sends, and the STD-INVALID probes of each call. Against the sandbox over loopback.
local flow = require "flow"
local leak_check = require "leak_check"
local probes = require "probes"
local cjson = require "cjson"
local core = require "digime.core"
local digime = require "digime"

local function tmpfile(text)
  local name = os.tmpname()
  local f = assert(io.open(name, "wb"))
  f:write(text)
  f:close()
  return name
end

local std_invalid, non_object, refused = probes.std_invalid, probes.non_object, probes.refused
local std_invalid_fields = probes.std_invalid_fields
local stop_and_clear = require("sandbox_hooks").stop_and_clear

describe("digime.init", function()
  local sb

  lazy_setup(function()
    sb = flow.start()
  end)

  lazy_teardown(function()
    if sb then sb:stop() end
  end)

  local function init(extra)
    local o = { application_id = flow.APP_ID }
    for k, v in pairs(extra or {}) do o[k] = v end
    return digime.init(o)
  end

  it("exposes the authorization calls and the scheduler", function()
    local sdk = assert(init{})
    for _, name in ipairs{ "get_authorize_url", "get_reauthorize_url", "exchange_code_for_token",
                           "refresh_token" } do
      assert.is_function(sdk[name], name)
    end
    assert.is_function(digime.run)
    assert.is_function(digime.spawn)
    assert.is_function(digime.sleep)
    assert.is_string(digime._VERSION)
  end)

  it("accepts every option of the README with a valid value, and the SDK then works", function()
    local logged, refreshed = 0, 0
    local sdk, err = digime.init{
      application_id = flow.APP_ID,
      base_url = sb.base_url,
      onboard_url = sb.onboard_url,
      cloud_base_url = sb.cloud_base_url,
      retry_options = { limit = 3, max_time = 10, backoff = 0.01, max_backoff = 0.1 },
      timeout = 5,
      tls = { verify = true, cafile = "/etc/ssl/certs/ca-certificates.crt", capath = "/etc/ssl/certs" },
      -- a proxy nothing listens on, bypassed for the sandbox by no_proxy
      proxy = { http = "http://127.0.0.1:" .. flow.closed_port(), https = "http://127.0.0.1:9",
                no_proxy = "127.0.0.1,localhost" },
      transport = "curl",
      jwks = { allowed = { sb.base_url .. "jwks/oauth" }, ttl = 60, cooldown = 5,
               shared_dict = "digime_jwks", max_size = 65536 },
      clock_leeway = 30,
      on_token_refresh = function() refreshed = refreshed + 1 end,
      logger = function() logged = logged + 1 end,
      agent = { sdk = { name = "lua-digime", version = digime._VERSION, meta = { lua = _VERSION } } },
    }
    assert.is_nil(err)
    assert.is_table(sdk)
    local res, rerr = sdk:get_authorize_url(flow.authorize_opts())
    assert.is_nil(rerr)
    assert.is_string(res.url)
    assert.is_true(logged > 0, "the logger was never called")
    local token = flow.login(flow.track(sdk))
    assert(sdk:refresh_token{ contract = flow.contract(), user_access_token = token })
    assert.are.equal(1, refreshed)
  end)

  it("accepts a transport object with a request method and uses it", function()
    local curl = require "digime.transport.curl"
    local used = 0
    local inner
    local transport = { request = function(_, req)
      used = used + 1
      return inner:request(req)
    end }
    local sdk = assert(init{ base_url = sb.base_url, onboard_url = sb.onboard_url,
                              transport = transport })
    inner = curl.new(sdk.config)
    assert(sdk:get_authorize_url(flow.authorize_opts()))
    assert.is_true(used >= 1)
  end)

  it("refuses transport \"ngx\" outside nginx with a clear error, not a crash", function()
    local sdk, err = init{ transport = "ngx" }
    assert.is_nil(sdk)
    assert.are.equal("DigiMeSDKError", err.kind)
    assert.are.equal("TransportUnavailable", err.code)
  end)

  it("refuses options that are not a table", function()
    for _, p in ipairs(non_object()) do
      refused("options", "init(" .. p[1] .. ")", digime.init(p[2]))
    end
    refused("options", "init()", digime.init())
    refused("options", "init(nil)", digime.init(nil))
  end)

  it("refuses a missing or empty application_id", function()
    refused("application_id", "{}", digime.init{})
    refused("application_id", "no application_id", digime.init{ base_url = sb.base_url })
    for _, p in ipairs(std_invalid()) do
      refused("application_id", "application_id = " .. p[1], digime.init{ application_id = p[2] })
    end
  end)

  it("refuses a base_url, onboard_url or cloud_base_url that is not an http(s) URL", function()
    for _, field in ipairs{ "base_url", "onboard_url", "cloud_base_url" } do
      for _, bad in ipairs{ "not a url", "ftp://example.org/", "http://", "", "//example.org/",
                            "https://exa mple.org/", 5, true, {}, function() end } do
        refused(field, field .. " = " .. tostring(bad), init{ [field] = bad })
      end
    end
  end)

  it("refuses bad retry_options", function()
    for _, bad in ipairs{ -1, 1.5, "2", 0 / 0, true, {}, 21, 1e9 } do
      refused("retry_options.limit", "limit = " .. tostring(bad), init{ retry_options = { limit = bad } })
    end
    for _, k in ipairs{ "max_time", "backoff", "max_backoff" } do
      for _, bad in ipairs{ -1, "1", 0 / 0, true } do
        refused("retry_options." .. k, k .. " = " .. tostring(bad), init{ retry_options = { [k] = bad } })
      end
    end
    refused("retry_options", "retry_options = string", init{ retry_options = "fast" })
    refused("limt", "retry_options.limt", init{ retry_options = { limt = 2 } })
    assert(init{ retry_options = { limit = 0 } })
    assert(init{ retry_options = { limit = 20, max_time = 0 } })
  end)

  it("refuses unknown keys, at the top and inside tls, jwks, retry_options, proxy", function()
    refused("aplication_id", "top", digime.init{ application_id = "a", aplication_id = "a" })
    refused("aplication_id", "top, typo only", digime.init{ aplication_id = "a" })
    refused("baseUrl", "camelCase option", init{ baseUrl = sb.base_url })
    refused("verfy", "tls", init{ tls = { verfy = true } })
    refused("tll", "jwks", init{ jwks = { tll = 5 } })
    refused("retries", "retry_options", init{ retry_options = { retries = 5 } })
    refused("socks", "proxy", init{ proxy = { socks = "x" } })
  end)

  it("refuses a bad transport, logger, on_token_refresh, timeout, tls, proxy, jwks, clock_leeway", function()
    for _, bad in ipairs{ "http", 5, true, {}, { request = "x" }, function() end } do
      refused("transport", "transport = " .. tostring(bad), init{ transport = bad })
    end
    for _, bad in ipairs{ "print", true, 1, {} } do
      refused("logger", "logger = " .. tostring(bad), init{ logger = bad })
      refused("on_token_refresh", "on_token_refresh = " .. tostring(bad), init{ on_token_refresh = bad })
    end
    for _, bad in ipairs{ 0, -1, "5", 0 / 0, true } do
      refused("timeout", "timeout = " .. tostring(bad), init{ timeout = bad })
    end
    refused("tls.verify", "tls.verify", init{ tls = { verify = "yes" } })
    refused("tls.cafile", "tls.cafile", init{ tls = { cafile = 5 } })
    refused("tls", "tls = false", init{ tls = false })
    refused("proxy", "proxy as a string", init{ proxy = "http://proxy:3128" })
    refused("proxy.http", "proxy.http", init{ proxy = { http = 5 } })
    refused("jwks.allowed", "empty allow-list", init{ jwks = { allowed = {} } })
    refused("jwks.allowed", "allow-list entry", init{ jwks = { allowed = { "not a url" } } })
    refused("jwks.allowed", "allow-list string", init{ jwks = { allowed = "https://x/" } })
    refused("jwks.ttl", "ttl", init{ jwks = { ttl = -1 } })
    refused("jwks.cooldown", "cooldown", init{ jwks = { cooldown = "1" } })
    refused("jwks.max_size", "max_size", init{ jwks = { max_size = 0 } })
    refused("clock_leeway", "clock_leeway", init{ clock_leeway = -5 })
    refused("clock_leeway", "clock_leeway string", init{ clock_leeway = "60" })
  end)

  it("refuses a bad agent", function()
    for _, bad in ipairs{ "lua", true, 5, {}, { sdk = "x" }, { sdk = {} }, { sdk = { name = "" } },
                          { sdk = { name = "x" } }, { sdk = { name = "x", version = 1 } },
                          { sdk = { name = "x", version = "" } },
                          { sdk = { name = "x", version = "1", meta = "m" } } } do
      refused("agent", "agent = " .. flow.dump(bad), init{ agent = bad })
    end
  end)

  it("adds the trailing / to base_url, onboard_url and cloud_base_url", function()
    local sdk = assert(init{ base_url = sb.base_url:sub(1, -2), onboard_url = sb.onboard_url:sub(1, -2),
                             cloud_base_url = sb.cloud_base_url:sub(1, -2) })
    assert.are.equal(sb.base_url, sdk.config.base_url)
    assert.are.equal(sb.onboard_url, sdk.config.onboard_url)
    assert.are.equal(sb.cloud_base_url, sdk.config.cloud_base_url)
    -- and the calls land on the right paths
    local res, err = flow.track(sdk):get_authorize_url(flow.authorize_opts())
    assert.is_nil(err)
    assert.is_truthy(res.url:find(sb.onboard_url .. "authorize?", 1, true), res.url)
    local sdk2 = assert(init{ base_url = sb.base_url })
    assert.are.equal(sb.base_url, sdk2.config.base_url)
  end)

  it("defaults to the digi.me URLs and the JWKS allow-list of base_url", function()
    local sdk = assert(init{})
    assert.are.equal("https://api.digi.me/v1.7/", sdk.config.base_url)
    assert.are.equal("https://api.digi.me/apps/saas/", sdk.config.onboard_url)
    assert.are.equal("https://cloud.digi.me/v1/", sdk.config.cloud_base_url)
    assert.are.same({ "https://api.digi.me/v1.7/jwks/oauth" }, sdk.config.jwks.allowed)
    assert.are.equal(2, sdk.config.retry_options.limit)
    assert.are.equal(30, sdk.config.retry_options.max_time)
    assert.are.equal(30, sdk.config.timeout)
    assert.are.equal(60, sdk.config.clock_leeway)
    assert.are.equal(300, sdk.config.jwks.ttl)
    assert.are.equal(30, sdk.config.jwks.cooldown)
    assert.is_true(sdk.config.tls.verify)
  end)

  it("does not keep a reference to the caller's option tables", function()
    local ro = { limit = 1 }
    local sdk = assert(init{ retry_options = ro })
    ro.limit = 7
    assert.are.equal(1, sdk.config.retry_options.limit)
  end)

  describe("agent", function()
    local cap

    lazy_setup(function()
      cap = flow.capture(sb)
    end)

    stop_and_clear(function() return cap end)

    local function sent_agent(extra)
      local o = { jwks = { allowed = { sb.base_url .. "jwks/oauth" } } }
      for k, v in pairs(extra or {}) do o[k] = v end
      local sdk = assert(flow.sdk(cap, o))
      assert(sdk:get_authorize_url(flow.authorize_opts()))
      local reqs = cap:requests_to("/v1.7/oauth/authorize")
      assert.are.equal(1, #reqs)
      return cjson.decode(reqs[1].body).agent
    end

    it("by default names this SDK: lua-digime, its version, meta.lua", function()
      local agent = sent_agent()
      assert.are.equal("lua-digime", agent.sdk.name)
      assert.are.equal(digime._VERSION, agent.sdk.version)
      assert.is_string(agent.sdk.meta.lua)
      local jit = rawget(_G, "jit")
      assert.are.equal(jit and jit.version or _VERSION, agent.sdk.meta.lua)
    end)

    it("is what init's agent option says", function()
      local mine = { sdk = { name = "my-wrapper", version = "2.0.1", meta = { host = "x" } } }
      assert.are.same(mine, sent_agent{ agent = mine })
    end)

    it("is checked by a sandbox that lists accepted agents", function()
      local cfg = tmpfile(cjson.encode{ agents = {
        { name = "lua-digime", versions = { digime._VERSION } },
        { name = "other-sdk" } } })
      local strict = flow.start{ args = { "--config", cfg } }
      local ok, e = pcall(function()
        -- the default agent is accepted
        local sdk = assert(flow.sdk(strict))
        local res, err = sdk:get_authorize_url(flow.authorize_opts())
        assert.is_nil(err)
        assert.is_string(res.url)
        -- an agent of any version of a name listed without versions is accepted
        sdk = assert(flow.sdk(strict, { agent = { sdk = { name = "other-sdk", version = "9" } } }))
        assert(sdk:get_authorize_url(flow.authorize_opts()))
        -- an unknown name
        sdk = assert(flow.sdk(strict, { agent = { sdk = { name = "nodejs", version = "16.1.5" } } }))
        res, err = sdk:get_authorize_url(flow.authorize_opts())
        assert.is_nil(res)
        assert.are.equal("SDKInvalidError", err.kind)
        assert.are.equal("SDKInvalid", err.code)
        assert.are.equal(400, err.status)
        assert.is_truthy(err.message:find("nodejs", 1, true))
        -- a known name, an unsupported version
        sdk = assert(flow.sdk(strict, { agent = { sdk = { name = "lua-digime", version = "0.0.0-old" } } }))
        res, err = sdk:get_authorize_url(flow.authorize_opts())
        assert.is_nil(res)
        assert.are.equal("SDKInvalidError", err.kind)
        assert.are.equal("SDKVersionInvalid", err.code)
        assert.are.equal(403, err.status)
        -- also on the reauthorize call (oauth/token/reference carries the agent too)
        local token = flow.login(assert(flow.sdk(strict)))
        res, err = sdk:get_reauthorize_url{ contract = flow.contract(), callback = flow.CALLBACK,
                                            user_access_token = token }
        assert.is_nil(res)
        assert.are.equal("SDKInvalidError", err.kind)
        assert.are.equal("SDKVersionInvalid", err.code)
      end)
      strict:stop()
      os.remove(cfg)
      assert(ok, e)
    end)
  end)
end)

describe("the calls' argument checks", function()
  local sb, sdk, token, small_pem

  lazy_setup(function()
    sb = flow.start()
    sdk = assert(flow.sdk(sb))
    token = flow.login(sdk)
    small_pem = core.generate_key(1024):private_pem()
    flow.secret_pem(small_pem)
  end)

  lazy_teardown(function()
    if sb then sb:stop() end
  end)

  -- A valid argument table of each call.
  local function valid(name)
    local c = flow.contract()
    if name == "get_authorize_url" then
      return { contract = c, callback = flow.CALLBACK, state = "s" }
    elseif name == "get_reauthorize_url" then
      return { contract = c, callback = flow.CALLBACK, user_access_token = token }
    elseif name == "exchange_code_for_token" then
      return { contract = c, authorization_code = "some-code", code_verifier = string.rep("v", 43) }
    else
      return { contract = c, user_access_token = token }
    end
  end
  local calls = { "get_authorize_url", "get_reauthorize_url", "exchange_code_for_token",
                  "refresh_token" }

  -- Every refusal happens before anything is sent.
  local function requests() return sb:stats().requests end

  local function probe(name, mutate, field, what)
    local before = requests()
    local args = valid(name)
    mutate(args)
    local res, err = sdk[name](sdk, args)
    refused(field, name .. ": " .. what, res, err)
    assert.are.equal(before, requests(), name .. ": " .. what .. " reached the server")
  end

  it("refuses the call on something that is not the sdk", function()
    local res, err = sdk.get_authorize_url({}, valid("get_authorize_url"))
    refused("get_authorize_url", "self = {}", res, err)
    res, err = getmetatable(sdk).__index.refresh_token(nil, valid("refresh_token"))
    refused("refresh_token", "self = nil", res, err)
  end)

  it("refuses options that are not a table", function()
    for _, name in ipairs(calls) do
      for _, p in ipairs(non_object()) do
        refused(nil, name .. "(" .. p[1] .. ")", sdk[name](sdk, p[2]))
      end
      refused(nil, name .. "()", sdk[name](sdk))
    end
  end)

  it("refuses unknown option keys, naming them", function()
    for _, name in ipairs(calls) do
      probe(name, function(a) a.calback = flow.CALLBACK end, "calback", "calback")
      probe(name, function(a) a.contractDetails = a.contract end, "contractDetails", "contractDetails")
      probe(name, function(a) a.contract.privateKey = a.contract.private_key end, "privateKey",
            "contract.privateKey")
    end
    probe("exchange_code_for_token", function(a) a.code_verifer = a.code_verifier end, "code_verifer",
          "code_verifer")
    probe("get_authorize_url", function(a) a.serviceId = 5 end, "serviceId", "serviceId")
  end)

  it("refuses every STD-INVALID contract, contract.id and contract.private_key", function()
    std_invalid_fields(probe, calls, { "contract", "contract.id", "contract.private_key" })
  end)

  it("refuses a private key that is not a key, or a 1024-bit key", function()
    local broken = flow.demo.private_key:gsub("MIIEow", "MIIEoX")
    for _, name in ipairs(calls) do
      for what, pem in pairs{ ["not a key"] = "this is not a PEM key at all, just text",
                              ["a broken PEM"] = broken,
                              ["a public key"] = flow.demo.public_key,
                              ["a 1024-bit key"] = small_pem } do
        probe(name, function(a) a.contract.private_key = pem end, "contract.private_key", what)
      end
    end
  end)

  it("refuses every STD-INVALID callback", function()
    std_invalid_fields(probe, { "get_authorize_url", "get_reauthorize_url" }, { "callback" })
  end)

  it("refuses every STD-INVALID code_verifier and authorization_code", function()
    std_invalid_fields(probe, "exchange_code_for_token", { "code_verifier", "authorization_code" })
  end)

  it("refuses session_options that are not a table, and the two malformed scopes", function()
    for _, name in ipairs{ "get_authorize_url", "get_reauthorize_url" } do
      for _, p in ipairs(non_object()) do
        probe(name, function(a) a.session_options = p[2] end, "session_options",
              "session_options = " .. p[1])
      end
      probe(name, function(a) a.session_options = { pull = { scope = { timeRanges = { "notAnObject" } } } } end,
            "timeRanges", "timeRanges = {\"notAnObject\"}")
      probe(name, function(a) a.session_options = { pull = { scope = { serviceGroups = { { noIdSet = 18 } } } } } end,
            "serviceGroups", "serviceGroups = {{noIdSet = 18}}")
      probe(name, function(a) a.session_options = { pull = "all" } end, "session_options.pull",
            "pull = string")
    end
  end)

  it("refuses a bad service_id, and accepts none or 0", function()
    local bad = { { "true", true }, { "false", false }, { "{}", {} }, { "an array", { 1 } },
                  { '""', "" }, { '"30"', "30" }, { "a function", function() end },
                  { "a coroutine", coroutine.create(function() end) }, { "NaN", 0 / 0 },
                  { "-1", -1 }, { "1.5", 1.5 } }
    for _, p in ipairs(bad) do
      probe("get_authorize_url", function(a) a.service_id = p[2] end, "service_id",
            "service_id = " .. p[1])
    end
    local res = assert(sdk:get_authorize_url(flow.authorize_opts{ service_id = 0 }))
    assert.is_nil(flow.query_of(res.url).service)
  end)

  it("refuses a bad user_access_token", function()
    for _, name in ipairs{ "get_reauthorize_url", "refresh_token" } do
      for _, p in ipairs(std_invalid()) do
        if p[1] ~= "{}" then
          probe(name, function(a) a.user_access_token = p[2] end, "user_access_token",
                "user_access_token = " .. p[1])
        end
      end
      probe(name, function(a) a.user_access_token = {} end, "user_access_token", "{}")
      probe(name, function(a)
        a.user_access_token = { access_token = token.access_token, refresh_token = { value = "" , expiry = 1 } }
      end, "user_access_token.refresh_token", "empty refresh token")
      probe(name, function(a)
        a.user_access_token = { access_token = { value = "x", expiry = "soon" },
                                refresh_token = token.refresh_token }
      end, "user_access_token.access_token", "expiry not a number")
    end
    probe("get_authorize_url", function(a) a.user_access_token = "token" end, "user_access_token",
          "authorize with a string token")
  end)

  it("refuses the other authorize options when malformed", function()
    probe("get_authorize_url", function(a) a.state = nil end, "state", "no state")
    probe("get_authorize_url", function(a) a.state = 5 end, "state", "state = 5")
    probe("get_authorize_url", function(a) a.source_type = "both" end, "source_type", "source_type")
    probe("get_authorize_url", function(a) a.sample_data = { data_set = "" } end, "sample_data",
          "sample_data.data_set")
    probe("get_authorize_url", function(a) a.sample_data = { dataSet = "x" } end, "dataSet",
          "sample_data.dataSet")
    probe("get_authorize_url", function(a) a.locale = 5 end, "locale", "locale")
    probe("get_authorize_url", function(a) a.include_sample_data_only_sources = "yes" end,
          "include_sample_data_only_sources", "include flag")
    probe("get_authorize_url", function(a) a.trigger_query = 1 end, "trigger_query", "trigger_query")
    probe("get_authorize_url", function(a) a.storage_id = "" end, "storage_id", "storage_id")
    probe("get_authorize_url", function(a) a.sources_scope = { dataType = "gp-data" } end,
          "sources_scope.dataType", "dataType string")
    probe("get_authorize_url", function(a) a.sources_scope = { organisationType = "x" } end,
          "organisationType", "sources_scope typo")
  end)

  leak_check.it_leaks_nothing(true)
end)
