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

  -- Each example: what it does, its arguments (from the sandbox), what its output must show.
  local EXAMPLES = {
    { "authorize", "runs the first-time flow",
      function() return sb.base_url, sb.onboard_url end, { "3%. token for user" } },
    { "reauthorize", "gets a user with a dead refresh token reauthorized",
      function() return sb.base_url, sb.onboard_url, sb.control_url end, { "the new token works" } },
    { "sync", "reads the whole library",
      function() return sb.base_url, sb.onboard_url end, { "done: %d+ files, 0 failures" } },
    { "push", "pushes a file and finds it in a sync",
      function() return sb.base_url, sb.onboard_url end, { "found it again" } },
    { "storage", "round-trips a file through cloud storage",
      function() return sb.base_url, sb.cloud_base_url end, { "identical", "files left: 0" } },
    { "discover", "lists sources for a country and a category",
      function() return sb.base_url, "NL", "Medical" end, { "sources in" } },
  }

  for _, e in ipairs(EXAMPLES) do
    local script, does, args, shows = e[1], e[2], e[3], e[4]
    it(script .. ".lua " .. does, function()
      local ok, out = run("examples/" .. script .. ".lua", args())
      assert.is_true(ok, out)
      for _, pattern in ipairs(shows) do
        assert.matches(pattern, out)
      end
    end)
  end

  it("each says how to use it when called without arguments", function()
    for _, e in ipairs(EXAMPLES) do
      local ok, out = run("examples/" .. e[1] .. ".lua")
      assert.is_false(ok)
      assert.matches("usage:", out)
    end
  end)
end)
