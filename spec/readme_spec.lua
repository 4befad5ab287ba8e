-- The README as a new user reads it: its code is extracted and run as written. The "Reading
-- the library" and "Concurrency" examples run against the sandbox (the names they leave
-- undefined, `sdk`, `contract`, `token`, `key`, `c`, `t1`, `t2`, are given); the nginx
-- snippet is loaded by the machine's nginx (`nginx -t`, which runs its init_by_lua_block).
-- The sandbox's control API is documented in doc/sandbox-control.md, entry for entry.
local flow = require "flow"
local sh = require "shell"
local core = require "digime.core"
local digime = require "digime"

local read = sh.read

-- The first fenced block of `lang` after the heading line `heading`.
local function block(text, heading, lang)
  local at = assert(text:find("\n" .. heading .. "\n", 1, true), "no heading " .. heading)
  local code = text:match("\n```" .. lang .. "\n(.-)\n```", at)
  return assert(code, "no " .. lang .. " block under " .. heading)
end

local function run_chunk(code, name, env)
  setmetatable(env, { __index = _G })
  local fn, err
  if setfenv then  -- luacheck: ignore 113 (Lua 5.1)
    fn, err = loadstring(code, name)  -- luacheck: ignore 113
    if fn then setfenv(fn, env) end  -- luacheck: ignore 113
  else
    fn, err = load(code, name, "t", env)
  end
  assert(fn, err)
  return fn()
end

local function hex(s)
  return (s:gsub(".", function(ch) return string.format("%02x", ch:byte()) end))
end

describe("the README", function()
  local readme = read("README.md")

  it("runs its 'Reading the library' example as written", function()
    local sb = flow.start{ args = { "--sync-pace", "0", "--big-file", "2m" } }
    local dir = sh.tmpdir()
    local here = assert(io.popen("pwd")):read("*l")
    local lfs = require "lfs"
    local ok, e = pcall(function()
      local manifest = sb:control("GET", "manifest")
      local sdk = assert(flow.sdk(sb))
      local token = flow.login(sdk)
      local key = assert(sdk:read_session{ contract = flow.contract(), user_access_token = token }).session.key
      assert(lfs.mkdir(dir .. "/library"))
      assert(lfs.chdir(dir))
      local code = block(readme, "### Reading the library", "lua")
        .. "\nreturn { result = result, err = err, saved = saved, bytes = bytes, file = file }"
      local got = run_chunk(code, "=README reading", {
        sdk = sdk, contract = flow.contract(), token = token, key = key })
      assert(lfs.chdir(here))
      assert.is_nil(got.err, tostring(got.err))
      -- files and failures are counts
      assert.are.equal(manifest.count, got.result.files)
      assert.are.equal(0, got.result.failures)
      assert.are.equal(manifest.count, got.saved.files)
      assert.are.equal(2 * 1024 * 1024, got.bytes)
      assert.are.equal(manifest.files["big.bin"], hex(core.sha256(read(dir .. "/big.bin"))))
      -- the sink factory's handles hold every file
      for name, sum in pairs(manifest.files) do
        local path = dir .. "/library/" .. name:gsub("[/%z]", "_")
        assert.are.equal(sum, hex(core.sha256(read(path))), name)
      end
    end)
    lfs.chdir(here)
    sh.rmdir(dir)
    sb:stop()
    assert(ok, e)
  end)

  it("runs its 'Concurrency' example as written", function()
    local sb = flow.start()
    local ok, e = pcall(function()
      local sdk = assert(flow.sdk(sb))
      local t1, t2 = flow.login(sdk), flow.login(sdk)
      local code = block(readme, "### Concurrency", "lua")
      run_chunk(code, "=README concurrency", { sdk = sdk, c = flow.contract(), t1 = t1, t2 = t2,
                                                digime = digime })
      -- both refresh tokens were used: the old ones are refused now
      local _, err = sdk:refresh_token{ contract = flow.contract(), user_access_token = t1 }
      assert.are.equal("InvalidToken", err and err.code, tostring(err))
    end)
    sb:stop()
    assert(ok, e)
  end)

  -- nginx -t does not run init_by_lua_block: nginx is started for real (its server block
  -- given a loopback port, the one change besides the paths), which runs it.
  it("has an nginx snippet that Debian's nginx runs as written (paths filled in) #nginx", function()
    local conf = block(readme, "## Inside nginx (OpenResty, or Debian's nginx with the lua module)", "nginx")
    local here = assert(io.popen("pwd")):read("*l")
    local probe = assert(require("socket").bind("127.0.0.1", 0))
    local _, port = probe:getsockname()
    probe:close()
    conf = conf:gsub("/path/to/lua%-digime", here)
    conf = conf:gsub("\n    server {\n", "\n    server {\n        listen 127.0.0.1:" .. port .. ";\n", 1)
    local dir = sh.tmpdir()
    local args = " -p " .. sh.quote(dir) .. " -c " .. sh.quote(dir .. "/nginx.conf") .. " -g "
      .. sh.quote("error_log " .. dir .. "/error.log; pid " .. dir .. "/nginx.pid;")
    local ok, e = pcall(function()
      sh.write(dir .. "/nginx.conf", conf)
      local okc, out = sh.run("nginx -t" .. args)
      assert(okc, out)
      okc, out = sh.run("nginx" .. args)
      assert(okc, out .. (io.open(dir .. "/error.log") and sh.read(dir .. "/error.log") or ""))
      -- the location answers (its app file is the reader's own: 404 or 500, from nginx)
      local res = assert(flow.sandbox.request{ url = "http://127.0.0.1:" .. port .. "/digime/connect" })
      assert.is_true(res.status >= 400)
    end)
    sh.run("nginx" .. args .. " -s stop")
    sh.rmdir(dir)
    assert(ok, e)
  end)

  it("documents every entry of the sandbox's control API with its body (doc/sandbox-control.md)", function()
    local doc = read("doc/sandbox-control.md")
    local header = read("lua/digime/sandbox/control.lua"):match("^(.-)\n[^%-]")
    local n = 0
    for method, path in header:gmatch("\n%-%-%s+(%u+)%s+(/sandbox/%S+)") do
      n = n + 1
      assert.matches(method .. "%s+" .. path:gsub("%p", "%%%0"), doc)
    end
    assert.is_true(n >= 15, n .. " entries")
    assert.matches("doc/sandbox%-control%.md", readme)
    -- and the README's --contract is what --help says
    local _, help = sh.run("lua5.4 bin/digime-sandbox --help")
    local usage = help:match("%-%-contract (%S+)")
    assert.is_string(usage, help)
    assert.is_truthy(readme:find("--contract " .. usage, 1, true), "the README's --contract differs from " .. usage)
  end)
end)
