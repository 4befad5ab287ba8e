-- Cloud storage against the sandbox: provisional and user storage, upload (encrypted in C on
-- the client), list, download (decrypted in C), delete; objects are opaque to the server.
local flow = require "flow"
local core = require "digime.core"

local hex = require("encode").hex

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

  describe("streamed uploads", function()
    local curl = require "digime.transport.curl"
    local storage = require "digime.storage"

    -- An sdk whose transport notes what each upload body was: a reader with a body_length or
    -- without one (every upload streams).
    local function noting_sdk(extra)
      local seen, inner = {}, nil
      local opts = { transport = { request = function(_, req)
        if req.method == "POST" and req.url:match("/files/") then
          seen[#seen + 1] = { body = type(req.body), length = req.body_length }
        end
        return inner:request(req)
      end } }
      for k, v in pairs(extra or {}) do opts[k] = v end
      local s = assert(flow.sdk(sb, opts))
      inner = curl.new(s.config)
      return s, seen
    end

    it("streams every source; known sizes go with their encrypted length", function()
      local s, seen = noting_sdk()
      local id = new_storage()
      local key = core.private_key(flow.contract().private_key)
      local data = core.random_bytes(600 * 1024 + 7)
      local path = os.tmpname()
      local f = assert(io.open(path, "wb"))
      f:write("skipped" .. data)
      f:close()
      f = assert(io.open(path, "rb"))
      f:seek("set", 7)   -- the data starts where the handle stands
      local pos = 1
      for _, c in ipairs{
        { "string", data }, { "handle", f },
        { "reader", function()
          if pos > #data then return nil end
          local chunk = data:sub(pos, pos + 99999)
          pos = pos + 100000
          return chunk
        end },
      } do
        assert(s:upload_file_to_storage{ contract = flow.contract(), storage_id = id,
                                         file_name = c[1], file_data = c[2] })
      end
      f:close()
      os.remove(path)
      local size = storage.encrypted_size(key, #data)
      assert.are.equal(key:size() + 16 + (math.floor(#data / 16) + 1) * 16, size)
      assert.are.same({ { body = "function", length = size }, { body = "function", length = size },
                        { body = "function" } }, seen)
      for _, file in ipairs(stored(id).files) do assert.are.equal(size, file.size) end
      for _, name in ipairs{ "string", "handle", "reader" } do
        local got = assert(s:download_storage_file{ contract = flow.contract(), storage_id = id,
                                                    path = "/" .. name })
        assert.is_true(got.file_data == data, name .. " came back changed")
      end
      -- the real encryptor agrees with the size rule at every length around a block
      for n = 0, 33 do
        local enc = core.file_encryptor(key)
        local out = enc:update(("p"):rep(n)) .. enc:finish()
        enc:close()
        assert.are.equal(#out, storage.encrypted_size(key, n))
      end
    end)

    it("stores empty data from a reader and from a file handle as valid objects", function()
      local id = new_storage()
      local path = os.tmpname()
      local f = assert(io.open(path, "rb"))
      assert(sdk:upload_file_to_storage{ contract = flow.contract(), storage_id = id,
                                         file_name = "from-handle", file_data = f })
      f:close()
      os.remove(path)
      assert(sdk:upload_file_to_storage{ contract = flow.contract(), storage_id = id,
                                         file_name = "from-reader", file_data = function() end })
      for _, file in ipairs(stored(id).files) do assert.are.equal(288, file.size) end
      for _, name in ipairs{ "from-handle", "from-reader" } do
        assert.are.equal("", assert(sdk:download_storage_file{ contract = flow.contract(),
          storage_id = id, path = "/" .. name }).file_data)
      end
    end)

    it("stops on a reader that fails mid-way, with the reader's error, storing nothing", function()
      local id = new_storage()
      local block = core.random_bytes(65536)
      for _, case in ipairs{
        { function() error("disk on fire", 0) end, "DigiMeSDKError", "SinkError", "disk on fire" },
        { function() return {} end, "TypeValidationError", "TypeValidationError", "reader returned a table" },
      } do
        local n = 0
        local res, err = sdk:upload_file_to_storage{ contract = flow.contract(), storage_id = id,
          file_name = "broken", file_data = function()
            n = n + 1
            if n <= 40 then return block end
            return case[1]()
          end }
        assert.is_nil(res)
        assert.are.same({ case[2], case[3] }, { err.kind, err.code })
        assert.matches(case[4], err.message, 1, true)
        assert.are.equal(41, n)
      end
      assert.are.equal(0, #stored(id).files)
    end)

    it("refuses data over limits.body: up front when its size is known, else when it passes", function()
      local small = assert(flow.sdk(sb, { limits = { body = 100000 } }))
      local id = new_storage()
      local before = sb:stats().requests
      local res, err = small:upload_file_to_storage{ contract = flow.contract(), storage_id = id,
        file_name = "big", file_data = ("x"):rep(100001) }
      assert.is_nil(res)
      assert.are.equal("TypeValidationError", err.kind)
      assert.matches("file_data is larger than limits.body", err.message, 1, true)
      assert.are.equal(before, sb:stats().requests)
      local n = 0
      res, err = small:upload_file_to_storage{ contract = flow.contract(), storage_id = id,
        file_name = "big", file_data = function()
          n = n + 1
          if n <= 20 then return ("y"):rep(10000) end
        end }
      assert.is_nil(res)
      assert.matches("file_data is larger than limits.body", err.message, 1, true)
      assert.are.equal(0, #stored(id).files)
    end)

    it("turns an error answer that comes before the body is all sent into an error", function()
      local id = new_storage()
      sb:fault{ method = "POST", path = "/cloud/v1/clouds/", action = "status", status = 413,
                body = { error = "PayloadTooLarge", message = "too big" } }
      local block, n = core.random_bytes(65536), 0
      local res, err = sdk:upload_file_to_storage{ contract = flow.contract(), storage_id = id,
        file_name = "refused", file_data = function()
          n = n + 1
          if n <= 256 then return block end
        end }
      assert.is_nil(res)
      assert.are.same({ "ServerError", 413 }, { err.kind, err.status })
      assert.are.equal(0, #stored(id).files)
    end)

    -- Peak RSS (VmHWM) of a child process that uploads mib MiB from a reader (bench/upload.lua).
    local function upload_peak_kb(mib)
      local lua = rawget(_G, "jit") and "luajit" or "lua5.4"
      local cmd = ("%s bench/upload.lua %s %s %s storage %d reader 2>&1"):format(lua,
        flow.sandbox.sh_quote(sb.base_url), flow.sandbox.sh_quote(sb.onboard_url),
        flow.sandbox.sh_quote(sb.cloud_base_url), mib)
      local p = assert(io.popen(cmd))
      local out = p:read("*a")
      p:close()
      local bytes, _, hwm = out:match("RESULT (%d+) ([%d.]+) (%d+)")
      assert(bytes, "bench/upload.lua failed: " .. out)
      assert.are.equal(mib * 1048576, tonumber(bytes))
      return tonumber(hwm)
    end

    it("holds memory bounded: 8 MiB and 64 MiB uploads peak at about the same RSS #slow", function()
      local small, big = upload_peak_kb(8), upload_peak_kb(64)
      -- 56 MiB more data; buffering any of it whole would show as tens of MiB
      assert.is_true(big - small < 8 * 1024,
        ("peak RSS %d kB for 8 MiB, %d kB for 64 MiB"):format(small, big))
      local sizes = {}
      for _, s in ipairs(assert(sb:control("GET", "storage"))) do
        for _, file in ipairs(s.files) do sizes[file.size] = true end
      end
      assert.is_true(sizes[8 * 1048576 + 288] and sizes[64 * 1048576 + 288])
    end)
  end)

  it("never lets a secret into an error or a log line", function()
    flow.assert_no_secrets()
  end)
end)
