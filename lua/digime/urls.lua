--- URL building exactly as the Node SDK does it (doc/protocol.md): query strings serialised as
-- application/x-www-form-urlencoded (URLSearchParams), parameters in a fixed order, and the
-- double-encoded sourcesScope.
local json = require "digime.json"

local select, type, tonumber = select, type, tonumber
local format, gsub, byte, char = string.format, string.gsub, string.byte, string.char
local concat, floor = table.concat, math.floor

local _M = {}

local function hex(c)
  return format("%%%02X", byte(c))
end

--- application/x-www-form-urlencoded: A-Z a-z 0-9 * - . _ kept, space as +, the rest %XX.
function _M.form_encode(s)
  s = gsub(s, "[^%w%*%-%._ ]", hex)
  return (gsub(s, " ", "+"))
end

--- JavaScript's encodeURIComponent: A-Z a-z 0-9 - _ . ! ~ * ' ( ) kept.
function _M.encode_uri_component(s)
  return (gsub(s, "[^%w%-_%.!~%*'%(%)]", hex))
end

--- base .. "?" .. name=value&... for each name, value pair whose value is not nil.
function _M.build(base, ...)
  local parts = {}
  for i = 1, select("#", ...), 2 do
    local name, value = select(i, ...)
    if value ~= nil then
      parts[#parts + 1] = _M.form_encode(name) .. "=" .. _M.form_encode(value)
    end
  end
  if #parts == 0 then return base end
  return base .. "?" .. concat(parts, "&")
end

--- String(n) for the integers the SDK puts in URLs.
function _M.number(n)
  if floor(n) == n then return format("%d", n) end
  return format("%.17g", n)
end

function _M.flag(b)
  if b == nil then return nil end
  return b and "true" or "false"
end

--- The sourcesScope value: encodeURIComponent(JSON.stringify(scope)), keys in the Node
-- order (dataType, then organizationType); build() encodes it a second time.
function _M.sources_scope(scope)
  local data_type = scope.dataType
  if type(data_type) == "table" then
    local copy = {}
    for i = 1, #data_type do copy[i] = data_type[i] end
    data_type = json.array(copy)
  end
  local text = assert(json.encode(json.object_of("dataType", data_type,
                                                 "organizationType", scope.organizationType)))
  return _M.encode_uri_component(text)
end

--- Splits a query string into a table of decoded values (the last of repeated names wins).
function _M.parse_query(q)
  local t = {}
  for pair in (q or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    local function dec(s)
      return (gsub(gsub(s, "+", " "), "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
    end
    t[dec(k)] = dec(v)
  end
  return t
end

return _M
