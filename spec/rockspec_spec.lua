-- The two rocks: lint clean, listing every module, and installable offline into a tree from
-- which the installed digime-sandbox starts and serves.
local sh = require "shell"
local q = sh.quote

local ROCKSPECS = { "rockspec/lua-digime-dev-1.rockspec", "rockspec/digime-sandbox-dev-1.rockspec" }

local function load_rockspec(path)
  local env = {}
  local chunk = assert(loadfile and (function()
    local f = assert(io.open(path))
    local src = f:read("*a")
    f:close()
    return src
  end)())
  local fn
  if setfenv then  -- luacheck: ignore 113 (Lua 5.1)
    fn = assert(loadstring(chunk))  -- luacheck: ignore 113
    setfenv(fn, env)  -- luacheck: ignore 113
  else
    fn = assert(load(chunk, path, "t", env))
  end
  fn()
  return env
end

describe("rockspecs", function()
  it("pass luarocks lint", function()
    for _, r in ipairs(ROCKSPECS) do
      local ok, out = sh.run("luarocks lint " .. q(r))
      assert.is_true(ok, out)
    end
  end)

  it("list every Lua module and C source of the checkout exactly once", function()
    local listed, sources = {}, {}
    for _, r in ipairs(ROCKSPECS) do
      for name, m in pairs(load_rockspec(r).build.modules) do
        if type(m) == "string" then
          assert.is_nil(listed[m], m .. " listed twice")
          listed[m] = name
          local expected = "lua/" .. name:gsub("%.", "/") .. ".lua"
          if name == "digime" then expected = "lua/digime/init.lua" end
          assert.equal(expected, m)
        else
          for _, s in ipairs(m.sources) do sources[s] = true end
        end
      end
    end
    local _, files = sh.run("find lua -name '*.lua' | sort")
    for file in files:gmatch("[^\n]+") do
      assert.is_not_nil(listed[file], file .. " is in no rockspec")
    end
    local _, cfiles = sh.run("ls csrc/*.c")
    for file in cfiles:gmatch("[^\n]+") do
      assert.is_true(sources[file] == true, file .. " is not among digime.core's sources")
    end
  end)

  it("install offline into a tree, and the installed sandbox starts #slow", function()
    local tree = sh.tmpdir()
    finally(function() sh.rmdir(tree) end)
    for _, r in ipairs(ROCKSPECS) do
      local ok, out = sh.run(("luarocks --lua-version=5.4 --tree=%s make --deps-mode=none %s")
        :format(q(tree), q(r)))
      assert.is_true(ok, out)
    end
    sh.run("rm -f csrc/*.o")  -- the builtin build leaves objects in the source tree
    local out = tree .. "/sandbox.out"
    -- The installed script, with the tree's paths as `luarocks path` gives them, from /.
    -- (luarocks path writes LUA_PATH_5_4 when that is set, plain LUA_PATH otherwise.)
    local ok, pid = sh.run(("cd / && unset LUA_PATH_5_4 LUA_CPATH_5_4 && " ..
      "eval \"$(luarocks --lua-version=5.4 --tree=%s path)\" && %s/bin/digime-sandbox > %s 2>&1 & echo $!")
      :format(q(tree), q(tree), q(out)))
    assert.is_true(ok, pid)
    pid = pid:match("%d+")
    finally(function() os.execute("kill " .. pid .. " 2>/dev/null") end)
    local line
    for _ = 1, 100 do
      local f = io.open(out)
      line = f and f:read("*l")
      if f then f:close() end
      if line then break end
      os.execute("sleep 0.1")
    end
    assert.is_string(line)
    local base = assert(line:match('"base_url":"([^"]+)"'), line):gsub("\\/", "/")
    local got, jwks = sh.run("curl -sf " .. q(base .. "jwks/oauth"))
    assert.is_true(got, jwks)
    assert.matches('"keys"', jwks)
    local _, installed = sh.run("ls " .. q(tree .. "/lib/lua/5.4/digime/core.so"))
    assert.matches("core.so", installed)
  end)
end)
