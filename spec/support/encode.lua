-- Encodings the specs compare against: lower-case hex, the SHA-256 of a string in hex, and
-- RFC 3986 percent-encoding of everything but the unreserved characters.
local core = require "digime.core"

local _M = {}

function _M.hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

function _M.sha256_hex(s)
  return _M.hex(core.sha256(s))
end

function _M.urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

return _M
