--- File metadata from the `x-metadata` header (doc/protocol.md): base64url (or base64, padding
-- optional) of JSON `{ "metadata": {...}, "compression": "gzip"|"brotli"|... }`.
-- Decoding is lenient about enum values (a new schema standard must not break reads) and
-- strict about shape.
local core = require "digime.core"
local json = require "digime.json"
local errors = require "digime.errors"

local type = type

local _M = {}

_M.MAX_HEADER = 64 * 1024

local function bad(message)
  return errors.sdk("InvalidResponse", "x-metadata: " .. message)
end

--- Returns metadata (the `metadata` table as sent) and compression ("gzip", "brotli" or
-- "none"), or nil, err.
function _M.decode(value)
  if type(value) ~= "string" or value == "" then
    return nil, bad("the header is missing")
  end
  if #value > _M.MAX_HEADER then
    return nil, bad("the header is too large")
  end
  local raw, err = core.b64_decode(value)
  if not raw then return nil, bad("not base64: " .. err) end
  local doc, jerr = json.decode(raw)
  if type(doc) ~= "table" then
    return nil, bad("not a JSON object" .. (jerr and (": " .. jerr) or ""))
  end
  local meta = doc.metadata
  if type(meta) ~= "table" then
    return nil, bad("no metadata object")
  end
  local compression = doc.compression
  if compression == "gzip" or compression == "brotli" then
    return meta, compression
  end
  -- Anything else, or none: the data is not compressed (as the Node SDK reads it).
  return meta, "none"
end

return _M
