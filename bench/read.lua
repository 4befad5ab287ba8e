--- Reading throughput against the sandbox: read_all_files over a generated library at several
-- concurrencies, and one big file through read_file with a sink (decrypt + inflate in C).
-- Usage: lua5.4 bench/read.lua BASE_URL ONBOARD_URL library|big   (see bench/run.sh: a sandbox
-- with --generate for "library", one with --big-file for "big")
package.path = "examples/?.lua;" .. package.path
local digime = require "digime"
local core = require "digime.core"
local demo = require "digime.sandbox.demo_contract"
local browser = require "browser"

local base_url, onboard_url, mode = arg[1], arg[2], arg[3] or "library"
local sdk = assert(digime.init{ application_id = demo.application_id,
                                base_url = base_url, onboard_url = onboard_url })
local contract = { id = demo.contract_id, private_key = demo.private_key }
local lua = (rawget(_G, "jit") and rawget(_G, "jit").version) or _VERSION

local function login()
  local auth = assert(sdk:get_authorize_url{ contract = contract, state = "b",
                                             callback = "https://app.example/cb" })
  local cb = assert(browser.consent(auth.url))
  local token = assert(sdk:exchange_code_for_token{ contract = contract,
    authorization_code = cb.code, code_verifier = auth.code_verifier })
  return token, auth.session.key
end

for _, concurrency in ipairs(mode == "library" and { 1, 5, 10 } or {}) do
  local token, session = login()
  -- let the sandbox finish its sync first, so only downloads are timed
  local res
  repeat
    res = assert(sdk:read_file_list{ contract = contract, user_access_token = token, session_key = session })
  until res.status.state == "completed"
  local bytes = 0
  local t0 = core.monotonic()
  local r = assert(sdk:read_all_files{ contract = contract, user_access_token = token,
    session_key = session, concurrency = concurrency, poll_interval = 0.05,
    sink = function() return function(chunk) if chunk then bytes = bytes + #chunk end end end })
  local secs = core.monotonic() - t0
  print(("read_all_files: %d files, %.1f MiB, concurrency %d: %.0f files/s, %.1f MiB/s (%s)")
    :format(r.files, bytes / 1048576, concurrency, r.files / secs,
            bytes / secs / 1048576, lua))
end

if mode ~= "big" then return end
local token, session = login()
local n = 0
local t0 = core.monotonic()
local r, err = sdk:read_file{ contract = contract, user_access_token = token, session_key = session,
  file_name = "big.bin", sink = function(chunk) if chunk then n = n + #chunk end end }
assert(r, tostring(err))
local secs = core.monotonic() - t0
local status = io.open("/proc/self/status"):read("*a")
print(("read_file big.bin with a sink: %.0f MiB in %.2f s, %.0f MiB/s, peak RSS %s (%s)")
  :format(n / 1048576, secs, n / secs / 1048576, status:match("VmHWM:%s*(%d+ kB)"), lua))
