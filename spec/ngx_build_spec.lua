-- The core built for nginx only (`make openresty`: no libcurl, OpenSSL from where nginx has
-- it) loads in the machine's nginx, agrees with nginx on OpenSSL, and runs a whole flow; the
-- curl transport then says clearly that it is absent.
local sandbox = require "sandbox"
local nginx = require "nginx"
local sh = require "shell"
local cjson = require "cjson"

describe("the core built for nginx (make openresty) #nginx", function()
  local sb, n

  setup(function()
    local ok, out = sh.run("make -s openresty")
    assert(ok, out)
    sb = sandbox.start{ args = { "--generate", "6:2000:mixed" } }
    n = nginx.start{
      cpath = "build/openresty",
      init = string.format([[ require("ngx_app").setup{ base_url = %q, onboard_url = %q } ]],
                           sb.base_url, sb.onboard_url),
      server = [[
        location = /flow { content_by_lua_block { require("ngx_app").flow() } }
        location = /versions { content_by_lua_block {
          local core = require "digime.core"
          local v = core.versions()
          local _, err = require("digime").init{ application_id = "a", transport = "curl" }
          -- the OpenSSL libraries this worker has mapped (nginx's and the core's, if apart)
          local maps, seen = {}, {}
          for line in io.lines("/proc/self/maps") do
            local file = line:match("%s(/%S+)$")
            if file and (file:match("/libcrypto%.so") or file:match("/libssl%.so")) and not seen[file] then
              seen[file] = true
              maps[#maps + 1] = file
            end
          end
          require("ngx_app").reply(200, { openssl = v.openssl, curl = v.curl or "none",
            engine = core.http_engine ~= nil, curl_error = err and err.message, maps = maps,
            path = package.searchpath("digime.core", package.cpath) })
        } }
      ]],
    }
  end)

  teardown(function()
    if n then n:stop() end
    if sb then sb:stop() end
  end)

  it("links no libcurl", function()
    local _, out = sh.run("ldd build/openresty/digime/core.so")
    assert.is_nil(out:match("libcurl"), out)
  end)

  -- What must agree is the libcrypto nginx and the core use at run time (one copy in the
  -- worker), not nginx's build-time version against the core's run-time one: a Debian nginx
  -- built with 3.0.22 runs on the machine's 3.0.x libssl3, which installing nginx leaves as is.
  it("shares one libcrypto with nginx at run time, and leaves the curl transport out cleanly", function()
    local _, v = sh.run("nginx -V")
    local built_with = v:match("built with OpenSSL (%S+)")
    assert.is_string(built_with, v)
    local status, body = n:get("/versions")
    assert.equal(200, status)
    local doc = cjson.decode(body)
    assert.matches("/build/openresty/digime/core.so$", doc.path)
    local crypto = {}
    for _, f in ipairs(doc.maps) do
      if f:match("/libcrypto%.so") then crypto[#crypto + 1] = f end
    end
    assert.equal(1, #crypto, "the worker maps " .. #crypto .. " libcrypto copies: " .. table.concat(doc.maps, ", "))
    local _, ldd = sh.run("ldd build/openresty/digime/core.so")
    local linked = assert(ldd:match("libcrypto%.so%S* => (%S+)"), ldd)
    local _, real = sh.run("readlink -f " .. sh.quote(linked))
    local _, mapped = sh.run("readlink -f " .. sh.quote(crypto[1]))
    assert.equal(mapped:gsub("%s+$", ""), (real:gsub("%s+$", "")))
    -- the same ABI series as nginx was built for (3.0.x with 3.0.y)
    assert.equal(built_with:match("^(%d+%.%d+)"), doc.openssl:match("(%d+%.%d+)"))
    assert.equal("none", doc.curl)
    assert.is_false(doc.engine)
    assert.matches("no HTTP engine", doc.curl_error)
  end)

  it("runs authorize, consent, exchange and a sync", function()
    local status, body = n:get("/flow")
    assert.equal(200, status, body)
    local doc = cjson.decode(body)
    assert.equal(sb:control("GET", "manifest").count, doc.count)
  end)
end)
