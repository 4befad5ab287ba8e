-- The build as a new user meets it: `make demo` installs only what the demo needs; `make -s
-- env` (or `make -s env LUA=5.1`) gives every Lua the rockspec claims a working SDK in that
-- shell; CI runs the specs on each of them.
local sh = require "shell"

local function lines(text)
  local out = {}
  for l in text:gmatch("[^\n]+") do out[l] = true end
  return out
end

describe("the build", function()
  it("make demo installs the demo's set of packages only, make test the rest", function()
    local ok, demo = sh.run("sh scripts/deps.sh list demo")
    assert(ok, demo)
    local set = lines(demo)
    for _, needed in ipairs{ "lua5.4", "liblua5.4-dev", "libcurl4-openssl-dev", "libssl-dev",
                             "lua-http", "lua-cqueues", "lua-luaossl", "lua-cjson" } do
      assert.is_true(set[needed], needed .. " is missing from the demo set")
    end
    for _, extra in ipairs{ "chromium", "valgrind", "clang", "wrk", "nodejs", "npm", "nginx",
                            "lua-busted" } do
      assert.is_nil(set[extra], extra .. " is in the demo set")
    end
    local _, test = sh.run("sh scripts/deps.sh list test")
    local tset = lines(test)
    for _, p in ipairs{ "chromium", "valgrind", "nodejs", "lua5.1", "liblua5.1-0-dev", "lua5.2",
                        "liblua5.2-dev", "lua5.3",
                        "liblua5.3-dev", "lua-busted", "lua-cjson" } do
      assert.is_true(tset[p], p .. " is missing from the test set")
    end
    -- what make would run: the demo set, no npm, no test packages
    local _, dry = sh.run("make -n -B demo")
    assert.matches("deps.sh demo", dry)
    assert.is_nil(dry:match("deps.sh test"), dry)
    assert.is_nil(dry:match("install.sh"), dry)
    assert.is_nil(dry:match("build/luajit"), dry)
  end)

  -- Each interpreter, in a shell set up by make -s env, loads the SDK and its core and makes
  -- an SDK object (the core's digests run: a core for the wrong Lua fails to load).
  for _, row in ipairs{ { "lua5.1", "LUA=5.1" }, { "lua5.2", "" }, { "lua5.3", "" }, { "lua5.4", "" },
                        { "luajit", "" } } do
    it("make -s env " .. row[2] .. " gives " .. row[1] .. " the SDK", function()
      local script = [[local d = require "digime"; local c = require "digime.core"; ]]
        .. [[assert(d.init{ application_id = "a" }); assert(#c.sha256("x") == 32); print("ok " .. _VERSION)]]
      local cmd = "env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_2 -u LUA_CPATH_5_2 -u LUA_PATH_5_3 "
        .. "-u LUA_CPATH_5_3 -u LUA_PATH_5_4 "
        .. "-u LUA_CPATH_5_4 sh -c " .. sh.quote('eval "$(make -s env ' .. row[2] .. ')" && cd / && '
        .. row[1] .. " -e " .. sh.quote(script))
      local ok, out = sh.run(cmd)
      assert(ok, out)
      assert.matches("^ok Lua", out)
    end)
  end

  it("CI runs the specs under Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT", function()
    local f = assert(io.open(".ci/run", "rb"))
    local ci = f:read("*a")
    f:close()
    local targets = ci:match("for target in ([^;]+);")
    for _, t in ipairs{ "test", "test-lua51", "test-lua52", "test-lua53", "test-asan", "test-valgrind" } do
      assert.is_truthy((" " .. targets .. " "):find(" " .. t .. " ", 1, true), t .. " is not run by CI")
    end
    local _, dry = sh.run("make -n test-lua51 test-lua52 test-lua53")
    assert.matches("run%-specs.sh lua5.1", dry)
    assert.matches("run%-specs.sh lua5.2", dry)
    assert.matches("run%-specs.sh lua5.3", dry)
  end)
end)

describe("make docs", function()
  local read = sh.read

  it("is an API reference of the public face, with the README as its index", function()
    local ok, out = sh.run("make -s docs")
    assert(ok, out)
    local index = read("build/docs/index.html")
    assert.matches("Set%-up on a fresh Debian 12 machine", index)
    local page = read("build/docs/classes/sdk.html")
    local sdk = assert(require("digime").init{ application_id = "a" })
    local n = 0
    for name, fn in pairs(getmetatable(sdk)) do
      if type(fn) == "function" and name ~= "__index" then
        n = n + 1
        -- each method: its own entry, with its options and what it returns
        local entry = page:match('<a name = "sdk:' .. name .. '"></a>(.-)</dd>')
        assert(entry, "sdk:" .. name .. " is not in the reference")
        assert.matches("Parameters", entry, name)
        if name ~= "log" then assert.matches("Returns", entry, name) end
      end
    end
    assert.is_true(n >= 30)
    local digime = read("build/docs/modules/digime.html")
    for _, f in ipairs{ "init", "run", "spawn", "sleep" } do
      assert.is_truthy(digime:find('<a name = "' .. f .. '"></a>', 1, true), f)
    end
    local errs = read("build/docs/modules/errors.html")
    for _, kind in ipairs{ "TypeValidationError", "ServerError", "SDKInvalidError",
                           "FileDecryptionError", "NetworkError", "DigiMeSDKError", "TLSError",
                           "ServerUnreachable" } do
      assert.matches(kind, errs)
    end
    -- internal modules are left out
    local _, listing = sh.run("ls -R build/docs")
    for _, internal in ipairs{ "validate", "json", "request", "user_call", "scheduler", "sandbox" } do
      assert.is_nil(listing:match(internal), internal .. " is in the reference")
    end
  end)
end)
