-- The example web app (examples/openresty) as two nginx instances, two "hosts" sharing a real
-- redis-server (DIGIME_REDIS), behind a third nginx that sends /callback to host B and
-- everything else to host A: headless Chromium starts a connection on A, the consent's
-- callback lands on B, and the person ends on their file list (served by A again).
local sandbox = require "sandbox"
local nginx = require "nginx"
local redis = require "redis"
local sh = require "shell"

local root = sh.absolute(sandbox.root)

describe("examples/openresty on two hosts sharing Redis #nginx", function()
  local sb, rd, hosts, front, front_url, libdir

  local function app_host(name)
    return nginx.start{
      workers = 1,
      http = "log_format path '$request_uri';",
      server = "access_log $PREFIX/logs/app.log path;\n"
        .. "include " .. root .. "/examples/openresty/locations.conf;",
      init = ("package.path = %q .. package.path\nrequire \"digime\"\nrequire(\"app\").init()")
        :format(root .. "/examples/openresty/?.lua;"),
      env = { DIGIME_APP_URL = front_url, DIGIME_BASE_URL = sb.base_url,
              DIGIME_ONBOARD_URL = sb.onboard_url, DIGIME_REDIS = "127.0.0.1:" .. rd.port,
              HOST_NAME = name },
    }
  end

  local function paths(n)
    local out = {}
    local f = io.open(n.prefix .. "/logs/app.log", "rb")
    if f then
      for line in f:lines() do out[#out + 1] = line:match("^[^?]*") end
      f:close()
    end
    return out
  end

  setup(function()
    libdir = sh.tmpdir()
    sh.write(libdir .. "/notes.txt", "The quick brown fox jumps over the lazy dog.\n")
    sb = sandbox.start{ args = { "--interactive", "--library", libdir, "--sync-pace", "0.1" } }
    rd = redis.start()
    local front_port = nginx.free_port()
    front_url = "http://127.0.0.1:" .. front_port
    hosts = { a = app_host("a") }
    hosts.b = app_host("b")
    front = nginx.start{
      port = front_port,
      server = ("location = /callback { proxy_pass http://127.0.0.1:%d; }\n"
        .. "location / { proxy_pass http://127.0.0.1:%d; }"):format(hosts.b.port, hosts.a.port),
    }
  end)

  teardown(function()
    if front then front:stop() end
    for _, n in pairs(hosts or {}) do n:stop() end
    if rd then rd:stop() end
    if sb then sb:stop() end
    sh.rmdir(libdir)
  end)

  it("connects in headless Chromium with the callback on the other host", function()
    local ok, out = sh.run("sh " .. sh.quote(root .. "/spec/browser/install.sh"))
    assert.is_true(ok, out)
    ok, out = sh.run("cd " .. sh.quote(root .. "/spec/browser") .. " && node openresty_flow.js "
      .. sh.quote(front_url) .. " " .. sh.quote(root .. "/build/screenshots/fleet")
      .. " notes.txt 'The quick brown fox'")
    assert.is_true(ok, out .. "\nA:\n" .. hosts.a:error_log():sub(-2000) .. "\nB:\n"
                   .. hosts.b:error_log():sub(-2000))
    assert.matches("browser flow passed", out, 1, true)
    local a, b = table.concat(paths(hosts.a), " "), table.concat(paths(hosts.b), " ")
    assert.matches("/connect", a, 1, true)
    assert.matches("/files", a, 1, true)
    assert.is_nil(a:find("/callback", 1, true))
    assert.equal("/callback", b)
    -- the states and the session were in Redis, where both hosts saw them
    assert.matches("digime%-example:sessions:", rd:cli("--scan", "--pattern", "digime-example:*"))
  end)

  it("left no errors in the hosts' error logs", function()
    for name, n in pairs(hosts) do
      local text = n:error_log()
      for _, bad in ipairs{ "[alert]", "[crit]", "[emerg]", "runtime error", "[error]" } do
        assert.is_nil(text:find(bad, 1, true), bad .. " in " .. name .. "'s error log:\n" .. text)
      end
    end
  end)
end)
