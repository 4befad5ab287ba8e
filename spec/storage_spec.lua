-- Cloud storage against the sandbox: provisional and user storage, upload (encrypted in C on
-- the client), list, download (decrypted in C), delete; objects are opaque to the server.
local flow = require "flow"
local core = require "digime.core"

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

describe("cloud storage", function()
  local sb, sdk

  setup(function()
    sb = flow.start{}
    sdk = assert(flow.sdk(sb))
  end)

  teardown(function()
    if sb then sb:stop() end
  end)

  before_each(function() sb:reset() end)

  local function new_storage()
    local res, err = sdk:create_provisional_storage{ contract = flow.contract() }
    assert.is_nil(err)
    assert.is_string(res.storage.id)
    assert.is_string(res.storage.kid)
    return res.storage.id
  end

  local function stored(id)
    for _, s in ipairs(assert(sb:control("GET", "storage"))) do
      if s.id == id then return s end
    end
  end

  it("uploads, lists, downloads and deletes; the server only ever holds ciphertext", function()
    local id = new_storage()
    local data = core.random_bytes(70000) .. "plaintext marker"
    local res, err = sdk:upload_file_to_storage{ contract = flow.contract(), storage_id = id,
      path = "/folder/sub", file_name = "data.bin", file_data = data }
    assert.is_nil(err)
    assert.is_true(res.uploaded)
    local s = stored(id)
    assert.are.equal(1, #s.files)
    assert.are_not.equal(hex(core.sha256(data)), s.files[1].sha256)   -- opaque to the server
    local list = assert(sdk:list_storage_files{ contract = flow.contract(), storage_id = id,
                                                recursive = true })
    assert.are.equal(1, list.total)
    assert.are.equal("data.bin", list.files[1].name)
    assert.are.equal("/folder/sub/", list.files[1].path)
    local got = assert(sdk:download_storage_file{ contract = flow.contract(), storage_id = id,
      path = list.files[1].path .. list.files[1].name })
    assert.are.equal(data, got.file_data)
    assert(sdk:delete_storage_files{ contract = flow.contract(), storage_id = id, path = "/folder/" })
    assert.are.equal(0, assert(sdk:list_storage_files{ contract = flow.contract(), storage_id = id,
                                                       recursive = true }).total)
  end)

  it("stores an empty file as a valid object that comes back empty", function()
    local id = new_storage()
    assert(sdk:upload_file_to_storage{ contract = flow.contract(), storage_id = id,
                                       file_name = "empty", file_data = "" })
    local s = stored(id)
    -- key segment (256) + IV (16) + one padding block (16): decryptable, unlike the Node SDK's
    assert.are.equal(288, s.files[1].size)
    local got = assert(sdk:download_storage_file{ contract = flow.contract(), storage_id = id,
                                                  path = "/empty" })
    assert.are.equal("", got.file_data)
  end)

  it("uploads from a file handle and a reader, and downloads into a sink", function()
    local id = new_storage()
    local path = os.tmpname()
    local data = core.random_bytes(200000)
    local f = assert(io.open(path, "wb"))
    f:write(data)
    f:close()
    f = assert(io.open(path, "rb"))
    assert(sdk:upload_file_to_storage{ contract = flow.contract(), storage_id = id,
                                       file_name = "from-handle", file_data = f })
    f:close()
    local chunks, i = { "a", "b", "c" }, 0
    assert(sdk:upload_file_to_storage{ contract = flow.contract(), storage_id = id,
      file_name = "from-reader", file_data = function() i = i + 1; return chunks[i] end })
    local parts, ended = {}, false
    local res = assert(sdk:download_storage_file{ contract = flow.contract(), storage_id = id,
      path = "/from-handle", sink = function(chunk)
        if chunk then parts[#parts + 1] = chunk else ended = true end
      end })
    assert.is_nil(res.file_data)
    assert.is_true(ended)
    assert.are.equal(data, table.concat(parts))
    assert.are.equal("abc", assert(sdk:download_storage_file{ contract = flow.contract(),
      storage_id = id, path = "/from-reader" }).file_data)
    os.remove(path)
  end)

  it("turns an HTTP error of a download into an error, never into decrypted bytes", function()
    local id = new_storage()
    local res, err = sdk:download_storage_file{ contract = flow.contract(), storage_id = id,
                                                path = "/missing" }
    assert.is_nil(res)
    assert.are.equal("ServerError", err.kind)
    assert.are.equal(404, err.status)
  end)

  it("percent-encodes path segments and keeps the slashes", function()
    local id = new_storage()
    assert(sdk:upload_file_to_storage{ contract = flow.contract(), storage_id = id,
      path = "with space/ünï", file_name = "a?b#c.txt", file_data = "x" })
    local list = assert(sdk:list_storage_files{ contract = flow.contract(), storage_id = id,
                                                recursive = true })
    assert.are.equal("a?b#c.txt", list.files[1].name)
    assert.are.equal("x", assert(sdk:download_storage_file{ contract = flow.contract(),
      storage_id = id, path = list.files[1].originalPath .. list.files[1].name }).file_data)
  end)

  it("gives the user's storage with the token in force, refreshing it when needed", function()
    local token = flow.login(sdk)
    sb:expire("access")
    local res, err = sdk:get_user_storage{ contract = flow.contract(), user_access_token = token }
    assert.is_nil(err)
    assert.is_string(res.storage.id)
    assert.are_not.equal(token.access_token.value, res.user_access_token.access_token.value)
  end)

  it("refuses a storage it does not know, and bad arguments", function()
    local _, err = sdk:list_storage_files{ contract = flow.contract(), storage_id = "nope" }
    assert.are.equal("ServerError", err.kind)
    for _, opts in ipairs{
      { storage_id = 5, file_name = "a", file_data = "x" },
      { storage_id = "s", file_name = "a/b", file_data = "x" },
      { storage_id = "s", file_name = "a", file_data = 5 },
      { storage_id = "s", file_name = "a", file_data = "x", pth = "/" },
    } do
      opts.contract = flow.contract()
      local res, verr = sdk:upload_file_to_storage(opts)
      assert.is_nil(res)
      assert.are.equal("TypeValidationError", verr.kind)
    end
  end)

  it("round-trips a 32 MiB file #slow", function()
    local id = new_storage()
    local data = core.random_bytes(16 * 1024 * 1024) .. core.random_bytes(16 * 1024 * 1024)
    assert(sdk:upload_file_to_storage{ contract = flow.contract(), storage_id = id,
                                       file_name = "big.bin", file_data = data })
    local sum = {}
    assert(sdk:download_storage_file{ contract = flow.contract(), storage_id = id, path = "/big.bin",
      sink = function(chunk) if chunk then sum[#sum + 1] = chunk end end })
    assert.is_true(table.concat(sum) == data)
  end)

  it("never lets a secret into an error or a log line", function()
    flow.assert_no_secrets()
  end)
end)
