--- The body of a file download in the digi.me file format (doc/protocol.md "The file format")
-- as a body filter (body_filter.lua): decrypted with the contract key and decompressed in C
-- as it arrives, the plaintext to a sink or kept. read_file and download_storage_file use it;
-- a failure of the file itself has kind "decrypt" (a FileDecryptionError).
local core = require "digime.core"
local body_filter = require "digime.body_filter"

local type, tonumber = type, tonumber
local match = string.match

local _M = {}

--- opts = { key (the contract key object), max_output (bytes of plaintext at most), sink?,
--   compression = "gzip" | "brotli" | "none", or function(status, headers) -> one of them |
--     nil, message: how the file is compressed (a library file names it in x-metadata) }
-- -> a body filter (data() gives the plaintext when there is no sink).
function _M.new(opts)
  local key, max_output, compression = opts.key, opts.max_output, opts.compression
  return body_filter.new{
    kind = "decrypt",
    sink = opts.sink,
    -- made before the answer: the compression is set once its headers are in
    prepare = function()
      return core.file_decryptor(key, { compression = "deferred", max_output = max_output })
    end,
    open = function(status, headers, prepared)
      local c, err = compression, nil
      if type(c) == "function" then c, err = c(status, headers) end
      if not c then return nil, err end
      if prepared then
        prepared:set_compression(c)
        return prepared
      end
      -- a declared length lets the size rule be checked before anything is decrypted
      local cl = headers["content-length"]
      return core.file_decryptor(key, { compression = c, max_output = max_output,
        size = cl and match(cl, "^%d+$") and tonumber(cl) or nil })
    end,
  }
end

return _M
