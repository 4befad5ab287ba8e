-- Every example runs to its end against a fresh sandbox (they are documentation that must
-- not rot). Each runs under Lua 5.4 in a child process, as a user would run it.
local sandbox = require "sandbox"
local sh = require "shell"
local q = sh.quote

describe("examples", function()
  local sb, env

  setup(function()
    sb = sandbox.start{ args = { "--generate", "30:2k:mixed", "--sync-pace", "0.05" } }
    local _, out = sh.run("make -s env")
    env = out
  end)

  teardown(function()
    if sb then sb:stop() end
  end)

  local function run(script, ...)
    local args = {}
    for i, a in ipairs{ ... } do args[i] = q(a) end
    return sh.run(env .. "\nlua5.4 " .. q(script) .. " " .. table.concat(args, " "))
  end

  it("authorize.lua runs the first-time flow", function()
    local ok, out = run("examples/authorize.lua", sb.base_url, sb.onboard_url)
    assert.is_true(ok, out)
    assert.matches("3%. token for user", out)
  end)

  it("reauthorize.lua gets a user with a dead refresh token reauthorized", function()
    local ok, out = run("examples/reauthorize.lua", sb.base_url, sb.onboard_url, sb.control_url)
    assert.is_true(ok, out)
    assert.matches("the new token works", out)
  end)

  it("sync.lua reads the whole library", function()
    local ok, out = run("examples/sync.lua", sb.base_url, sb.onboard_url)
    assert.is_true(ok, out)
    assert.matches("done: %d+ files, 0 failures", out)
  end)

  it("push.lua pushes a file and finds it in a sync", function()
    local ok, out = run("examples/push.lua", sb.base_url, sb.onboard_url)
    assert.is_true(ok, out)
    assert.matches("found it again", out)
  end)

  it("storage.lua round-trips a file through cloud storage", function()
    local ok, out = run("examples/storage.lua", sb.base_url, sb.cloud_base_url)
    assert.is_true(ok, out)
    assert.matches("identical", out)
    assert.matches("files left: 0", out)
  end)

  it("discover.lua lists sources for a country and a category", function()
    local ok, out = run("examples/discover.lua", sb.base_url, "NL", "Medical")
    assert.is_true(ok, out)
    assert.matches("sources in", out)
  end)

  it("each says how to use it when called without arguments", function()
    for _, script in ipairs{ "authorize", "reauthorize", "sync", "push", "storage", "discover" } do
      local ok, out = run("examples/" .. script .. ".lua")
      assert.is_false(ok)
      assert.matches("usage:", out)
    end
  end)
end)
