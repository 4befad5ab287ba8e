--- Upload throughput and memory against the sandbox: one upload_file_to_storage (encrypted in C
-- chunk by chunk, streamed into the request body) or one push_data to the library, of MIB MiB
-- from a reader function, a file handle or a string. Prints one line with the time, the
-- throughput and this process's peak RSS (VmHWM), and "RESULT <bytes> <seconds> <VmHWM kB>" for
-- a program that runs it (spec/storage_spec.lua runs it as a child, peak RSS being per process).
--
-- Usage (from the checkout's root; it finds lua/ and build/ itself):
--   lua5.4 bench/upload.lua BASE_URL ONBOARD_URL CLOUD_BASE_URL [storage|push] [MIB] [reader|file|string]
-- The sandbox takes objects up to 256 MiB by default (pushes up to 64 MiB): for a 256 MiB
-- upload start it with --storage-limit 1g, e.g.
--   bin/digime-sandbox --storage-limit 1g   (its first line names the URLs)
local jit = rawget(_G, "jit")
package.path = "lua/?.lua;lua/?/init.lua;examples/?.lua;" .. package.path
package.cpath = "build/" .. (jit and "luajit" or "lua5.4") .. "/?.so;" .. package.cpath

local digime = require "digime"
local core = require "digime.core"
local demo = require "digime.sandbox.demo_contract"

local base_url, onboard_url, cloud_base_url = arg[1], arg[2], arg[3]
local what, mib, source = arg[4] or "storage", tonumber(arg[5] or 256), arg[6] or "reader"
assert(base_url and onboard_url and cloud_base_url, "usage: upload.lua BASE_URL ONBOARD_URL CLOUD_BASE_URL"
  .. " [storage|push] [MIB] [reader|file|string]")
local lua = jit and jit.version or _VERSION

local sdk = assert(digime.init{ application_id = demo.application_id, base_url = base_url,
  onboard_url = onboard_url, cloud_base_url = cloud_base_url, timeout = 600 })
local contract = { id = demo.contract_id, private_key = demo.private_key }

-- The data: one random 64 KiB block, repeated (the source makes no garbage of its own).
local BLOCK = core.random_bytes(65536)
local total = math.floor(mib * 1048576)
local data, path
if source == "reader" then
  local left = total
  data = function()
    if left <= 0 then return nil end
    local n = math.min(left, #BLOCK)
    left = left - n
    return n == #BLOCK and BLOCK or BLOCK:sub(1, n)
  end
elseif source == "file" then
  path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  local left = total
  while left > 0 do
    local n = math.min(left, #BLOCK)
    f:write(n == #BLOCK and BLOCK or BLOCK:sub(1, n))
    left = left - n
  end
  f:close()
  data = assert(io.open(path, "rb"))
elseif source == "string" then
  data = BLOCK:rep(math.ceil(total / #BLOCK)):sub(1, total)
else
  error("source must be reader, file or string")
end
collectgarbage()

local t0, res, err
if what == "storage" then
  local s = assert(sdk:create_provisional_storage{ contract = contract })
  t0 = core.monotonic()
  res, err = sdk:upload_file_to_storage{ contract = contract, storage_id = s.storage.id,
                                         file_name = "bench.bin", file_data = data }
elseif what == "push" then
  local browser = require "browser"
  local auth = assert(sdk:get_authorize_url{ contract = contract, state = "b",
                                             callback = "https://app.example/cb" })
  local cb = assert(browser.consent(auth.url))
  local token = assert(sdk:exchange_code_for_token{ contract = contract,
    authorization_code = cb.code, code_verifier = auth.code_verifier })
  t0 = core.monotonic()
  res, err = sdk:push_data{ contract = contract, user_access_token = token, type = "library",
    data = { file_data = data, file_name = "bench.bin",
             file_descriptor = { mimeType = "application/octet-stream", accounts = {} } } }
else
  error("what must be storage or push")
end
local secs = core.monotonic() - t0
if path then
  data:close()
  os.remove(path)
end
assert(res, tostring(err))
local status = io.open("/proc/self/status"):read("*a")
local hwm = tonumber(status:match("VmHWM:%s*(%d+) kB"))
print(("%s of %d MiB from a %s: %.2f s, %.0f MiB/s, peak RSS %d MiB (%s)")
  :format(what == "storage" and "upload_file_to_storage" or "push_data", mib, source, secs,
          total / secs / 1048576, math.floor(hwm / 1024 + 0.5), lua))
print(("RESULT %d %.3f %d"):format(total, secs, hwm))
