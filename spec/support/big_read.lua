-- Child process of spec/read_file_spec.lua: reads one file of a running sandbox through a sink
-- and reports, on its last line, what it saw and how much memory it needed:
--
--   lua5.4 spec/support/big_read.lua BASE_URL ONBOARD_URL FILE SINK LOOP [TIMEOUT]
--     SINK  none    a function sink that only counts the bytes
--           sha256  a function sink that hashes the chunks as they come (luaossl's digest)
--     LOOP  plain   read_file called directly (it blocks)
--           run     read_file called inside digime.run
--     TIMEOUT   the SDK's `timeout` in seconds (default 120)
--
--   -> "bytes=<n> chunks=<n> nils=<n> sha256=<hex|-> hwm_before_kb=<n> hwm_kb=<n> seconds=<s>"
--      or "error=<message>"
--
-- The memory figure is VmHWM from /proc/self/status (the peak resident set of this process),
-- so it is only meaningful in a process of its own. Run from the checkout root.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/support/?.lua;" .. package.path
package.cpath = "./build/lua5.4/?.so;" .. package.cpath

local flow = require "flow"
local digime = require "digime"
local socket = require "socket"

local base_url, onboard_url, file_name, sink_kind, loop = arg[1], arg[2], arg[3], arg[4], arg[5]
local timeout = tonumber(arg[6]) or 120
assert(base_url and onboard_url and file_name, "usage: big_read.lua BASE_URL ONBOARD_URL FILE SINK LOOP")

local hwm_kb = flow.hwm_kb

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local ok, err = pcall(function()
  local sdk = assert(flow.sdk({ base_url = base_url, onboard_url = onboard_url }, { timeout = timeout }))
  local token = flow.login(sdk)
  local session = assert(sdk:read_session{ contract = flow.contract(), user_access_token = token })
  local digest
  if sink_kind == "sha256" then
    digest = require("openssl.digest").new("sha256")
  end
  local bytes, chunks, nils = 0, 0, 0
  local function sink(chunk)
    if chunk == nil then
      nils = nils + 1
      return true
    end
    bytes = bytes + #chunk
    chunks = chunks + 1
    if digest then digest:update(chunk) end
    return true
  end
  collectgarbage()
  local before = hwm_kb()
  local t0 = socket.gettime()
  local function read()
    return sdk:read_file{ contract = flow.contract(), user_access_token = token,
                          session_key = session.session.key, file_name = file_name, sink = sink }
  end
  local res, rerr
  if loop == "run" then
    res, rerr = digime.run(read)
  else
    res, rerr = read()
  end
  assert(res, "read_file: " .. tostring(rerr))
  assert(res.file_data == nil, "file_data was returned next to a sink")
  io.stdout:write(string.format("bytes=%d chunks=%d nils=%d sha256=%s hwm_before_kb=%d hwm_kb=%d seconds=%.3f\n",
    bytes, chunks, nils, digest and hex(digest:final()) or "-", before, hwm_kb(), socket.gettime() - t0))
end)
if not ok then
  io.stdout:write("error=", (tostring(err):gsub("\n", " ")), "\n")
  os.exit(1)
end
