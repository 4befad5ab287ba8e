-- Small value helpers shared by the sandbox's files (the answers themselves are wire.lua's).
--
--   util.is_object(v), util.is_list(v)   the shape of a decoded JSON value
--   util.is_integer(v)                   a whole number JSON carries exactly (|v| < 2^53)
--   util.now_ms()                        wall-clock milliseconds
--   util.hex(s)                          lower-case hex of a byte string
--   util.copy(v)                         a deep copy (metatables kept: wire.array stays one)
--   util.read_file(path)                 -> bytes | nil, err
--   util.sh_quote(s)                     s as one word of a sh command line

local core = require "digime.core"

local type, tostring, pairs, next = type, tostring, pairs, next
local getmetatable, setmetatable = getmetatable, setmetatable
local byte, format = string.byte, string.format
local math_floor, math_abs = math.floor, math.abs

local _M = {}

-- A decoded JSON object (an empty table counts: cjson decodes {} and [] alike).
function _M.is_object(v)
  return type(v) == "table" and (next(v) == nil or v[1] == nil)
end

-- A decoded JSON array: every key is 1..n.
function _M.is_list(v)
  if type(v) ~= "table" then
    return false
  end
  local n = 0
  for _ in pairs(v) do
    n = n + 1
  end
  return n == #v
end

function _M.is_integer(v)
  return type(v) == "number" and v == math_floor(v) and math_abs(v) < 2 ^ 53
end

function _M.now_ms()
  return math_floor(core.time() * 1000)
end

function _M.hex(s)
  return (s:gsub(".", function(c) return format("%02x", byte(c)) end))
end

local function copy(v)
  if type(v) ~= "table" then
    return v
  end
  local c = setmetatable({}, getmetatable(v))
  for k, x in pairs(v) do
    c[k] = copy(x)
  end
  return c
end
_M.copy = copy

function _M.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then
    return nil, err
  end
  local s = f:read("a")
  f:close()
  return s
end

function _M.sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

return _M
