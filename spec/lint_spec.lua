-- Code hygiene as specs, so CI holds it: luacheck over the Lua, warning-free C.
local sh = require "shell"

describe("lint", function()
  it("luacheck finds nothing in lua/, spec/, bin/, examples/, bench/", function()
    local ok, out = sh.run("luacheck -q --no-color lua spec bin examples bench")
    assert.is_true(ok, out)
  end)

  it("the C core compiles without a warning for Lua 5.4 and LuaJIT (-Wall -Wextra -Werror)", function()
    local ok, out = sh.run("make -s check-warnings")
    assert.is_true(ok, out)
  end)
end)
