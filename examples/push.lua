--- Push a file into the user's library, sync, and find it again.
-- Usage: lua examples/push.lua BASE_URL ONBOARD_URL
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local digime = require "digime"
local demo = require "digime.sandbox.demo_contract"   -- a TEST-ONLY contract
local browser = require "browser"

local base_url, onboard_url = arg[1], arg[2]
if not base_url or not onboard_url then
  io.stderr:write("usage: push.lua BASE_URL ONBOARD_URL\n")
  os.exit(2)
end
local function check(v, err)
  if v == nil then io.stderr:write("failed: ", tostring(err), "\n"); os.exit(1) end
  return v
end

local sdk = check(digime.init{ application_id = demo.application_id,
                               base_url = base_url, onboard_url = onboard_url })
local contract = { id = demo.contract_id, private_key = demo.private_key }
local token = browser.login(sdk, contract)

local note = '{"note":"written by examples/push.lua","at":' .. os.time() .. '}'
local pushed = check(sdk:push_data{ contract = contract, user_access_token = token, type = "library",
  data = { file_data = note, file_name = "note.json",
           file_descriptor = { mimeType = "application/json", accounts = {}, tags = { "example" } } } })
token = pushed.user_access_token
print("1. pushed " .. #note .. " bytes")

local found
check(sdk:read_all_files{ contract = contract, user_access_token = token,
  session_key = check(sdk:read_session{ contract = contract, user_access_token = token }).session.key,
  poll_interval = 0.2,
  on_file_data = function(file)
    if file.file_data == note then found = file end
  end })
check(found, "the pushed file was not in the library")
print("2. found it again in a sync: " .. found.file_name .. " (" .. found.file_metadata.mimetype ..
      ", tags " .. table.concat(found.file_metadata.tags or {}, ",") .. ")")
