--- JSON for the SDK: cjson for decoding (bounded), and a small encoder of our own, because
-- cjson 2.1 keeps no key order and cannot tell an empty array from an empty object.
-- Ordered objects: `json.object{ "key1", value1, "key2", value2, ... }` (nil values dropped,
-- as JSON.stringify drops undefined). Arrays: `json.array{...}` or any sequence table.
local cjson = require "cjson.safe"
local core = require "digime.core"

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local concat, sort = table.concat, table.sort
local format = string.format
local floor, huge = math.floor, math.huge
local setmetatable, getmetatable, select = setmetatable, getmetatable, select

local _M = {}

local decoder = cjson.new()
decoder.decode_max_depth(64)            -- hostile nesting is refused, not recursed into
decoder.decode_invalid_numbers(false)   -- no NaN/Infinity/hex from a server

local ordered_mt = { __name = "json.object" }
local array_mt = { __name = "json.array" }

--- An object whose keys are encoded in the order given: `object{ "k1", v1, "k2", v2 }`.
function _M.object(pairs_list)
  local keys, values = {}, {}
  for i = 1, #pairs_list, 2 do
    keys[#keys + 1] = pairs_list[i]
    values[pairs_list[i]] = pairs_list[i + 1]
  end
  return setmetatable({ keys = keys, values = values }, ordered_mt)
end

--- Builds an ordered object from varargs that may hold nils: `object_of("a", 1, "b", nil)`.
function _M.object_of(...)
  local n = select("#", ...)
  local keys, values = {}, {}
  for i = 1, n, 2 do
    local k, v = select(i, ...)
    keys[#keys + 1] = k
    values[k] = v
  end
  return setmetatable({ keys = keys, values = values }, ordered_mt)
end

function _M.array(t)
  return setmetatable(t or {}, array_mt)
end

-- Quotes and escapes in C: a JWT's claims hold the access token, which a Lua pattern
-- would scan at about 18 ns a byte, once for every file of a sync.
local encode_string = core.json_quote

local function encode_number(n)
  if n ~= n or n == huge or n == -huge then
    return "null"                       -- what JSON.stringify does
  end
  if floor(n) == n and n >= -2^53 and n <= 2^53 then
    return format("%d", n)
  end
  return format("%.17g", n)
end

-- A table is an array when it is marked so, or is a non-empty sequence with no other keys.
local function is_array(t)
  if getmetatable(t) == array_mt then return true end
  local n = #t
  if n == 0 then return false end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n
end

local encode_value

local function encode_table(t, depth)
  if depth > 64 then
    return nil, "nesting too deep"
  end
  local out = {}
  local mt = getmetatable(t)
  if mt == ordered_mt then
    for _, k in ipairs(t.keys) do
      local v = t.values[k]
      if v ~= nil then
        local enc, err = encode_value(v, depth + 1)
        if not enc then return nil, err end
        out[#out + 1] = encode_string(k) .. ":" .. enc
      end
    end
    return "{" .. concat(out, ",") .. "}"
  end
  if is_array(t) then
    for i = 1, #t do
      local enc, err = encode_value(t[i], depth + 1)
      if not enc then return nil, err end
      out[i] = enc
    end
    return "[" .. concat(out, ",") .. "]"
  end
  -- Plain objects: keys sorted, so the output is stable.
  local keys = {}
  for k in pairs(t) do
    if type(k) ~= "string" then
      return nil, "object key is not a string: " .. tostring(k)
    end
    keys[#keys + 1] = k
  end
  sort(keys)
  for _, k in ipairs(keys) do
    local enc, err = encode_value(t[k], depth + 1)
    if not enc then return nil, err end
    out[#out + 1] = encode_string(k) .. ":" .. enc
  end
  return "{" .. concat(out, ",") .. "}"
end

encode_value = function(v, depth)
  local tv = type(v)
  if tv == "string" then return encode_string(v) end
  if tv == "number" then return encode_number(v) end
  if tv == "boolean" then return v and "true" or "false" end
  if v == nil or v == cjson.null then return "null" end
  if tv == "table" then return encode_table(v, depth) end
  return nil, "cannot encode a " .. tv
end

--- Encodes a value; returns the JSON text, or nil, err.
function _M.encode(v)
  return encode_value(v, 0)
end

--- Decodes JSON text of at most max_size bytes; returns the value, or nil, err.
function _M.decode(text, max_size)
  if type(text) ~= "string" then
    return nil, "JSON text is not a string"
  end
  if max_size and #text > max_size then
    return nil, "JSON text is larger than " .. max_size .. " bytes"
  end
  local v, err = decoder.decode(text)
  if v == nil and err then
    return nil, "invalid JSON: " .. err
  end
  return v
end

--- JSON null as decoded.
_M.null = cjson.null

--- Converts a decoded number to an integer when it is one (Lua 5.4 decodes 30 as 30.0).
local tointeger = math.tointeger or function(n)  -- luacheck: ignore 143 (Lua 5.3+)
  if type(n) == "number" and floor(n) == n then return n end
end
function _M.integer(n)
  if type(n) ~= "number" then return nil end
  return tointeger(n)
end

return _M
