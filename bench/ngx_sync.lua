--- The whole-library sync inside nginx (one worker, the ngx transport, light threads)
-- against a running sandbox. bench/network.sh runs it beside the curl floor of the same run.
--   lua5.4 bench/ngx_sync.lua BASE_URL ONBOARD_URL CONCURRENCY|-
-- Prints one line: "ngx wall=.. files=.. failures=.. mib=.. worker_rss_mib=.."
package.path = "./spec/support/?.lua;" .. package.path
local nginx = require "nginx"
local cjson = require "cjson"

local base_url, onboard_url, concurrency = arg[1], arg[2], arg[3]
local n = nginx.start{
  init = string.format([[ require("ngx_app").setup({ base_url = %q, onboard_url = %q }, { timeout = 30 }) ]],
                       base_url, onboard_url),
  server = [[ location = /bench/sync { content_by_lua_block { require("ngx_app").bench_sync() } } ]],
}
local ok, status, body = pcall(n.get, n, "/bench/sync" .. (tonumber(concurrency)
  and ("?concurrency=" .. concurrency) or ""), 600)
n:stop()
assert(ok, status)
assert(status == 200, tostring(status) .. " " .. tostring(body))
local r = cjson.decode(body)
print(("ngx wall=%.2f files=%d failures=%d mib=%.1f worker_rss_mib=%.1f")
  :format(r.seconds, r.files, r.failures, r.bytes / 1048576, r.rss_kib / 1024))
