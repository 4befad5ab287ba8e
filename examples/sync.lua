--- The whole library: authorize, consent, exchange, then read_all_files with a live progress
-- line. Usage: lua examples/sync.lua BASE_URL ONBOARD_URL
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local digime = require "digime"
local core = require "digime.core"
local demo = require "digime.sandbox.demo_contract"   -- a TEST-ONLY contract
local browser = require "browser"

local base_url, onboard_url = arg[1], arg[2]
if not base_url or not onboard_url then
  io.stderr:write("usage: sync.lua BASE_URL ONBOARD_URL\n")
  os.exit(2)
end

local function check(v, err)
  if v == nil then
    io.stderr:write("failed: ", tostring(err), "\n")
    os.exit(1)
  end
  return v
end

local sdk = check(digime.init{ application_id = demo.application_id,
                               base_url = base_url, onboard_url = onboard_url })
local contract = { id = demo.contract_id, private_key = demo.private_key }

local auth = check(sdk:get_authorize_url{ contract = contract, state = "sync-demo",
                                          callback = "https://app.example/digime/callback" })
local cb = check(browser.consent(auth.url))
local token = check(sdk:exchange_code_for_token{ contract = contract,
  authorization_code = cb.code, code_verifier = auth.code_verifier })
print("authorized user " .. token.user.id .. "; reading the library of session " .. auth.session.key)

local is_tty = os.execute("test -t 1")
local tty = is_tty == true or is_tty == 0   -- Lua 5.4 and 5.1 report differently
local started = core.monotonic()
local files, bytes, failures, total, last_print = 0, 0, 0, 0, 0
local states = {}

local function progress(final)
  local now = core.monotonic()
  if not final and not tty and now - last_print < 0.5 then return end
  last_print = now
  local secs = now - started
  local line = ("  %d/%d files  %.1f KiB  %.0f files/s  %.1f MiB/s  [%s]"):format(files, total,
    bytes / 1024, files / secs, bytes / secs / 1048576, table.concat(states, " > "))
  if tty then
    io.write("\r", line, "   ")
    if final then io.write("\n") end
  else
    print(line)
  end
  io.flush()
end

local result, err = sdk:read_all_files{
  contract = contract, user_access_token = token, session_key = auth.session.key,
  poll_interval = 0.2, concurrency = 8,
  on_status_change = function(state) states[#states + 1] = state end,
  on_file_data = function(file)
    files = files + 1
    bytes = bytes + #file.file_data
    total = math.max(total, #(file.file_list or {}))
    progress(false)
  end,
  on_file_error = function(failure)
    failures = failures + 1
    print("\n  failed: " .. failure.file_name .. ": " .. tostring(failure.error))
  end,
}
progress(true)
check(result, err)
print(("done: %d files, %d failures, %.1f KiB in %.2f s, final state %s, %d polls")
  :format(result.files, result.failures, bytes / 1024, core.monotonic() - started,
          result.status.state, result.polls))
