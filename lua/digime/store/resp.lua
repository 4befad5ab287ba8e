--- RESP2, the Redis wire protocol (https://redis.io/docs/latest/develop/reference/protocol-spec/):
-- a command is an array of bulk strings; a reply is one typed value. Only what the Redis
-- store sends and reads: no pipelining, no pub/sub, no RESP3.
--
-- `read(sock)` works on any object with a luasocket-style `receive` ("*l": a line without its
-- CRLF; n: n bytes): luasocket, luasec and nginx cosockets all have it.
local type, tostring, tonumber, setmetatable = type, tostring, tonumber, setmetatable
local concat = table.concat
local sub = string.sub

local _M = {}

--- The nil bulk string / nil array (a missing key), distinct from a failure.
_M.null = setmetatable({}, { __tostring = function() return "null" end })

-- Deeper arrays than this are not what this client asks for: a hostile or confused peer
-- must not make the reader recurse without bound.
local MAX_DEPTH = 4
local MAX_BULK = 512 * 1024 * 1024

--- The bytes of a command: { "SET", key, value, ... } (numbers are sent as their text).
function _M.encode(args)
  local out = { "*", #args, "\r\n" }
  for i = 1, #args do
    local s = tostring(args[i])
    out[#out + 1] = "$" .. #s .. "\r\n"
    out[#out + 1] = s
    out[#out + 1] = "\r\n"
  end
  return concat(out)
end

local read

local function read_array(sock, n, depth)
  if depth >= MAX_DEPTH then return nil, "protocol: arrays nested too deep" end
  local arr = {}
  for i = 1, n do
    local v, err, server = read(sock, depth + 1)
    if v == nil then return nil, err, server end
    arr[i] = v
  end
  return arr
end

--- Reads one reply. -> value (string, integer, array table, or _M.null); or nil, message,
-- and true as third value when Redis answered an error (-ERR ...): the connection is then
-- still usable; otherwise it is not (I/O failure or protocol error).
function read(sock, depth)
  depth = depth or 0
  local line, err = sock:receive("*l")
  if not line then return nil, "connection: " .. tostring(err) end
  local kind, rest = sub(line, 1, 1), sub(line, 2)
  if kind == "+" then return rest end
  if kind == "-" then return nil, rest, true end
  if kind == ":" then
    local n = tonumber(rest)
    if not n then return nil, "protocol: bad integer reply" end
    return n
  end
  local n = tonumber(rest)
  if (kind == "$" or kind == "*") and n then
    if n < 0 then return _M.null end
    if kind == "*" then return read_array(sock, n, depth) end
    if n > MAX_BULK then return nil, "protocol: bulk reply too large" end
    local data, derr = sock:receive(n + 2)
    if not data then return nil, "connection: " .. tostring(derr) end
    if sub(data, -2) ~= "\r\n" then return nil, "protocol: bulk reply not ended by CRLF" end
    return sub(data, 1, n)
  end
  return nil, "protocol: unexpected reply type " .. (type(line) == "string" and ("%q"):format(sub(line, 1, 16)) or "?")
end
_M.read = read

return _M
