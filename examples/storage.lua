--- Cloud storage: upload (encrypted on this side), list, download, compare, delete.
-- Usage: lua examples/storage.lua BASE_URL CLOUD_BASE_URL
local digime = require "digime"
local core = require "digime.core"
local demo = require "digime.sandbox.demo_contract"   -- a TEST-ONLY contract

local base_url, cloud_base_url = arg[1], arg[2]
if not base_url or not cloud_base_url then
  io.stderr:write("usage: storage.lua BASE_URL CLOUD_BASE_URL\n")
  os.exit(2)
end
local function check(v, err)
  if v == nil then io.stderr:write("failed: ", tostring(err), "\n"); os.exit(1) end
  return v
end

local sdk = check(digime.init{ application_id = demo.application_id, base_url = base_url,
                               cloud_base_url = cloud_base_url })
local contract = { id = demo.contract_id, private_key = demo.private_key }

local storage = check(sdk:create_provisional_storage{ contract = contract }).storage
print("1. storage " .. storage.id)
local data = core.random_bytes(1024 * 1024)
check(sdk:upload_file_to_storage{ contract = contract, storage_id = storage.id,
                                  path = "/examples", file_name = "random.bin", file_data = data })
check(sdk:upload_file_to_storage{ contract = contract, storage_id = storage.id,
                                  path = "/examples", file_name = "empty.bin", file_data = "" })
print("2. uploaded 1 MiB and an empty file, encrypted with the contract key")
local list = check(sdk:list_storage_files{ contract = contract, storage_id = storage.id, recursive = true })
for _, f in ipairs(list.files) do print("   " .. f.path .. f.name) end
local back = check(sdk:download_storage_file{ contract = contract, storage_id = storage.id,
                                              path = "/examples/random.bin" })
print("3. downloaded and decrypted: " .. (back.file_data == data and "identical" or "DIFFERENT"))
local empty = check(sdk:download_storage_file{ contract = contract, storage_id = storage.id,
                                               path = "/examples/empty.bin" })
print("   the empty file: " .. (empty.file_data == "" and "empty, as uploaded" or "NOT EMPTY"))
check(sdk:delete_storage_files{ contract = contract, storage_id = storage.id, path = "/examples/" })
print("4. deleted; files left: " ..
      check(sdk:list_storage_files{ contract = contract, storage_id = storage.id, recursive = true }).total)
