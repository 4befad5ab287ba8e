-- Child process of spec/security_review_spec.lua: reads from a hostile server that answers
-- file downloads with an error status and an endless body, and reports on its last line what
-- it got and how much memory it needed:
--
--   lua5.4 spec/support/error_body_read.lua ORIGIN CALL
--     ORIGIN  the hostile server (its API under ORIGIN/v1.7/)
--     CALL    read_file       one read_file of session "s", file "f.json"
--             read_all_files  a sync of session "s" (the server lists the files)
--
--   -> "kind=<kind> status=<n|-> attempts=<n|-> files=<n> failures=<n> hwm_before_kb=<n>
--       hwm_kb=<n> seconds=<s>"  or  "error=<message>"
--
-- The memory figure is VmHWM from /proc/self/status (this process's peak resident set), so it
-- is only meaningful in a process of its own. Run from the checkout root.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/support/?.lua;" .. package.path
package.cpath = "./build/lua5.4/?.so;" .. package.cpath

local flow = require "flow"
local digime = require "digime"
local socket = require "socket"

local origin, what = arg[1], arg[2]
assert(origin and what, "usage: error_body_read.lua ORIGIN CALL")

local hwm_kb = flow.hwm_kb

local function token()
  local now = os.time()
  return { access_token = { value = "ebr-at", expiry = now + 3600 },
           refresh_token = { value = "ebr-rt", expiry = now + 86400 },
           user = { id = "ebr-user" }, consent_id = "ebr-consent" }
end

local ok, err = pcall(function()
  local sdk = assert(digime.init{ application_id = flow.APP_ID, base_url = origin .. "/v1.7/",
    retry_options = { backoff = 0.01, max_backoff = 0.05 }, timeout = 60 })
  collectgarbage()
  local before = hwm_kb()
  local t0 = socket.gettime()
  local e, files, failures
  if what == "read_file" then
    local res, rerr = sdk:read_file{ contract = flow.contract(), user_access_token = token(),
                                     session_key = "s", file_name = "f.json" }
    assert(res == nil, "read_file succeeded")
    e, files, failures = rerr, 0, 1
  else
    files, failures = 0, 0
    local res, rerr = sdk:read_all_files{ contract = flow.contract(), user_access_token = token(),
      session_key = "s", max_unchanged_polls = 1, poll_interval = 0.01,
      on_file_data = function() files = files + 1 end,
      on_file_error = function(f) failures = failures + 1; e = f.error end }
    assert(res, "read_all_files: " .. tostring(rerr))
  end
  io.stdout:write(string.format("kind=%s status=%s attempts=%s files=%d failures=%d "
    .. "hwm_before_kb=%d hwm_kb=%d seconds=%.3f\n", e and e.kind or "-",
    e and e.status or "-", e and e.attempts or "-", files, failures, before, hwm_kb(),
    socket.gettime() - t0))
end)
if not ok then
  io.stdout:write("error=", (tostring(err):gsub("\n", " ")), "\n")
  os.exit(1)
end
