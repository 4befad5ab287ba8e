-- A library file as the API serves it (doc/protocol.md "The file format"): its x-metadata
-- header, its length, the encryption to the contract's key per request, and big.bin's
-- generator and hash.
--
--   file_format.x_metadata(file) -> base64url text
--   file_format.served_length(file, key) -> bytes
--   file_format.response(file, key, head) -> response   big.bin as a stream, never in memory
--   file_format.big_sha256(file) -> hex                 once per version of big.bin
--
-- Encryption uses luaossl (AES-256-CBC, PKCS#7) and the core's RSA-OAEP key wrap, on purpose
-- not the core's file encryptor: a bug in the core's file cipher must not be mirrored by the
-- server the SDK is tested against.

local core = require "digime.core"
local cipher = require "openssl.cipher"
local digest = require "openssl.digest"
local wire = require "digime.sandbox.wire"
local util = require "digime.sandbox.util"

local rep = string.rep
local math_floor, math_min = math.floor, math.min

local _M = {}

local CHUNK = 256 * 1024          -- bytes of plaintext per streamed chunk

-- "Tue, 15 Nov 1994 08:12:31 GMT" of a millisecond time.
local function http_date(ms)
  return os.date("!%a, %d %b %Y %H:%M:%S GMT", math_floor(ms / 1000))
end

function _M.x_metadata(file)
  local v = { metadata = file.metadata }
  if file.compression then
    v.compression = file.compression
  end
  if file.pushed then
    -- its metadata marks arrays that may be empty (accounts: [])
    return core.b64url_encode(wire.doc(v))
  end
  return core.b64url_encode(wire.encode(v))
end

-- big.bin: its plaintext is the AES-256-CTR keystream of a key derived from its size and
-- version, so the served bytes and the manifest hash come from the same generator.
local ZEROS = rep("\0", CHUNK)

local function big_source(file)
  local key = core.sha256("digime-sandbox big.bin " .. file.size .. " v" .. file.version)
  local ctr = cipher.new("aes-256-ctr"):encrypt(key, rep("\0", 16))
  local left = file.size
  return function()
    if left <= 0 then
      return nil
    end
    local n = math_min(left, CHUNK)
    left = left - n
    return ctr:update(n == CHUNK and ZEROS or ZEROS:sub(1, n))
  end
end

-- The hash of big.bin, computed by streaming its generator (once per version). Inside a
-- cqueues coroutine it yields between chunks, and callers that arrive meanwhile wait for the
-- computation under way instead of starting their own.
local function big_sha256(file)
  local cq = package.loaded["cqueues"]
  local inside = cq ~= nil and select(2, cq.running()) == true
  while not file.sha256 and file.hashing and inside do
    cq.sleep(0.01)
  end
  if file.sha256 then
    return file.sha256
  end
  local job = { version = file.version }
  file.hashing = job
  local d = digest.new("sha256")
  local n = 0
  for chunk in big_source(file) do
    d:update(chunk)
    n = n + 1
    if inside and n % 8 == 0 then
      cq.sleep(0)
      if file.hashing ~= job then
        -- touched, reset or finished elsewhere meanwhile
        return big_sha256(file)
      end
    end
  end
  local h = util.hex(d:final())
  if file.hashing == job and file.version == job.version then
    file.hashing = nil
    file.sha256 = h
    if job.version == file.orig.version then
      file.orig.sha256 = h
    end
  end
  return h
end
_M.big_sha256 = big_sha256

-- The length of a file as served to `key`.
function _M.served_length(file, key)
  local n = file.big and file.size or #file.packed
  return key:size() + 16 + (n // 16 + 1) * 16
end

-- big.bin's body: the key block, then its generator encrypted a chunk at a time.
local function big_stream(file, prefix, enc)
  local source = big_source(file)
  local stage = 0
  return function()
    if stage == 0 then
      stage = 1
      return prefix
    elseif stage == 1 then
      local plain = source()
      if plain then
        return enc:update(plain)
      end
      stage = 2
      return enc:final()
    end
    return nil
  end
end

-- The response of a file GET (or HEAD, with head true), encrypted to `key`: a fresh AES key
-- and IV per request, wrapped with RSA-OAEP (SHA-1) by the core.
function _M.response(file, key, head)
  local headers = {
    ["content-type"] = "application/octet-stream",
    ["x-metadata"] = file.x_metadata,
    ["last-modified"] = http_date(file.updated),
  }
  local length = _M.served_length(file, key)
  if head then
    return { status = 200, headers = headers, body = "", content_length = length }
  end
  local aes_key, iv = core.random_bytes(32), core.random_bytes(16)
  local prefix = key:oaep_encrypt(aes_key) .. iv
  local enc = cipher.new("aes-256-cbc"):encrypt(aes_key, iv)
  if not file.big then
    return { status = 200, headers = headers, body = prefix .. enc:final(file.packed) }
  end
  return { status = 200, headers = headers, stream = big_stream(file, prefix, enc),
           content_length = length }
end

return _M
