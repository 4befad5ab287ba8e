--- One whole-library sync against a sandbox, timed as a user gets it: wall time, the
-- client's CPU, its peak RSS, and what the sandbox saw (connections, TLS handshakes).
-- Usage (bench/network.sh runs it):
--   lua5.4 bench/sync_remote.lua BASE_URL ONBOARD_URL CONTROL_URL CA_FILE|- CONCURRENCY|- LABEL
-- Prints one line: "LABEL wall=.. cpu=.. rss_mib=.. files=.. mib=.. connections=.. tls_full=.. tls_resumed=.."
local digime = require "digime"
local core = require "digime.core"
local cjson = require "cjson.safe"
local demo = require "digime.sandbox.demo_contract"

local base_url, onboard_url, control_url, ca_file, concurrency, label =
  arg[1], arg[2], arg[3], arg[4], arg[5], arg[6] or "lua-digime"
ca_file = ca_file ~= "-" and ca_file or nil
concurrency = tonumber(concurrency)

local sdk = assert(digime.init{ application_id = demo.application_id, base_url = base_url,
  onboard_url = onboard_url, tls = ca_file and { cafile = ca_file } or nil })
local contract = { id = demo.contract_id, private_key = demo.private_key }

-- The browser's part (and the control API): plain requests through the core's engine.
local function get(url, method)
  local engine = core.http_engine()
  local req = engine:add{ method = method or "GET", url = url, cafile = ca_file, timeout = 30,
                          headers = { ["content-type"] = "application/json" },
                          body = method == "POST" and "{}" or nil }
  while engine:perform() > 0 do engine:poll(50) end
  engine:finished()
  return assert(req:result())
end

local function stats()
  return assert(cjson.decode(get(control_url .. "stats").body))
end

local auth = assert(sdk:get_authorize_url{ contract = contract, state = "bench",
                                           callback = "https://app.example/cb" })
local location = get(auth.url).headers.location
local code = assert(location and location:match("[?&]code=([^&]+)"), "no code in the consent redirect")
local token = assert(sdk:exchange_code_for_token{ contract = contract, authorization_code = code,
                                                  code_verifier = auth.code_verifier })
local session = assert(sdk:read_session{ contract = contract, user_access_token = token })

local before = stats()
local rss_start_kb = tonumber(io.open("/proc/self/status"):read("*a"):match("VmRSS:%s*(%d+) kB"))
local bytes = 0
local cpu0, t0 = os.clock(), core.monotonic()
local res = assert(sdk:read_all_files{ contract = contract, user_access_token = token,
  session_key = session.session.key, concurrency = concurrency, poll_interval = 0.05,
  sink = function() return function(chunk) if chunk then bytes = bytes + #chunk end return true end end })
local wall, cpu = core.monotonic() - t0, os.clock() - cpu0
-- the peak before the stats: with a path an entry, they grow with the library (MiBs of JSON)
local status = io.open("/proc/self/status"):read("*a")
local hwm_kb = tonumber(status:match("VmHWM:%s*(%d+) kB"))
local after = stats()
local function delta(k) return (after[k] or 0) - (before[k] or 0) end
print(("%s wall=%.2f cpu=%.2f rss_mib=%.1f rss_start_mib=%.1f files=%d failures=%d mib=%.1f"
       .. " connections=%d tls_full=%d tls_resumed=%d")
  :format(label, wall, cpu, hwm_kb / 1024, rss_start_kb / 1024, res.files, res.failures, bytes / 1048576,
          delta("connections"), delta("tls_handshakes"), delta("tls_resumed")))
