-- The SDK inside the machine's nginx (one worker, the ngx transport) against the sandbox:
-- authorize -> consent -> exchange times, and a big file read through the C decryptor.
-- Run by bench/run.sh; uses the specs' nginx harness (spec/support/nginx.lua).
--   lua5.4 bench/ngx.lua [rounds]
package.path = "./spec/support/?.lua;" .. package.path
local sandbox = require "sandbox"
local nginx = require "nginx"
local cjson = require "cjson"

local rounds = tonumber(arg[1]) or 30

local function start(sb)
  return nginx.start{
    init = string.format([[ require("ngx_app").setup({ base_url = %q, onboard_url = %q }, { timeout = 120 }) ]],
                         sb.base_url, sb.onboard_url),
    server = [[
      location = /bench/auth { content_by_lua_block { require("ngx_app").bench_auth() } }
      location = /bench/read { content_by_lua_block { require("ngx_app").bench_read() } }
    ]],
  }
end

local function get(n, path)
  local status, body = n:get(path, 600)
  assert(status == 200, tostring(status) .. " " .. tostring(body))
  return cjson.decode(body)
end

-- Two sandboxes, as in bench/run.sh: the auth flow against the default library (a sandbox
-- with a 512 MiB file does more work per authorization), the big read against --big-file.
local function with_nginx(args, fn)
  local sb = sandbox.start{ args = args }
  local n = start(sb)
  local ok, err = pcall(fn, n)
  n:stop()
  sb:stop()
  assert(ok, err)
end

with_nginx({}, function(n)
  local t = get(n, "/bench/auth?n=" .. rounds).times
  print(string.format("nginx, ngx transport: authorize -> consent -> exchange, %d rounds: "
    .. "median %.1f ms, p90 %.1f ms", rounds, t[math.ceil(#t / 2)], t[math.ceil(#t * 0.9)]))
end)
with_nginx({ "--big-file", "512m", "--sync-pace", "0" }, function(n)
  local r = get(n, "/bench/read?file=big.bin")
  print(string.format("nginx, ngx transport: read_file big.bin (%d MiB) into a sink: %.2f s, "
    .. "%.0f MiB/s, worker RSS after %d KiB", r.bytes / 2^20, r.seconds, r.bytes / 2^20 / r.seconds, r.rss_kib))
end)
