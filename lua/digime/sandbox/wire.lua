-- Response values and URL/query helpers shared by the sandbox's handlers.
--
-- A handler returns a plain response table { status = n, headers = { name = value }, body = s }
-- and server.lua writes it; keeping answers as data lets faults (truncate, reset after
-- processing) act on a finished answer.

local cjson = require "cjson.safe"
local core = require "digime.core"

local concat = table.concat
local byte, char, format = string.byte, string.char, string.format
local tonumber, tostring = tonumber, tostring
local type, pairs, ipairs, getmetatable, setmetatable = type, pairs, ipairs, getmetatable, setmetatable

local _M = {}

-- cjson escapes "/" as "\/": valid JSON, and one less difference to think about is better,
-- but readers (the SDK, curl users) handle both, so keep cjson's default.

-- JSON text of a value; arrays that may be empty need `array = true`, because cjson writes an
-- empty Lua table as {}.
function _M.encode(value, array)
  if array and type(value) == "table" and next(value) == nil then
    return "[]"
  end
  return assert(cjson.encode(value))
end

-- A decoded JSON object, or nil, err. An empty body counts as an empty object.
function _M.decode_object(text)
  if text == nil or text == "" then
    return {}
  end
  local value, err = cjson.decode(text)
  if value == nil then
    return nil, "invalid JSON: " .. tostring(err)
  end
  if type(value) ~= "table" or value[1] ~= nil then
    return nil, "JSON object expected"
  end
  return value
end

-- Arrays that must stay arrays when empty, anywhere in a value: wire.array{...}. doc() writes
-- a value with them (and sorted object keys, so answers read the same every time).
local array_mt = { __name = "wire.array" }

function _M.array(t)
  return setmetatable(t or {}, array_mt)
end

local function is_array(t)
  return getmetatable(t) == array_mt or t[1] ~= nil
end

local function doc_into(v, out)
  if type(v) ~= "table" then
    out[#out + 1] = assert(cjson.encode(v))
    return
  end
  if is_array(v) then
    out[#out + 1] = "["
    for i = 1, #v do
      if i > 1 then
        out[#out + 1] = ","
      end
      doc_into(v[i], out)
    end
    out[#out + 1] = "]"
    return
  end
  local keys = {}
  for k in pairs(v) do
    keys[#keys + 1] = tostring(k)
  end
  table.sort(keys)
  out[#out + 1] = "{"
  for i, k in ipairs(keys) do
    if i > 1 then
      out[#out + 1] = ","
    end
    out[#out + 1] = assert(cjson.encode(k))
    out[#out + 1] = ":"
    local x = v[k]
    if x == nil then
      x = v[tonumber(k)]
    end
    doc_into(x, out)
  end
  out[#out + 1] = "}"
end

-- JSON text of a value whose empty arrays are marked with wire.array.
function _M.doc(value)
  local out = {}
  doc_into(value, out)
  return concat(out)
end

-- A JSON answer written with doc().
function _M.json_doc(status, value, headers)
  local h = headers or {}
  h["content-type"] = h["content-type"] or "application/json"
  return { status = status, headers = h, body = _M.doc(value) }
end

function _M.json(status, value, headers, array)
  local h = headers or {}
  h["content-type"] = h["content-type"] or "application/json"
  return { status = status, headers = h, body = _M.encode(value, array) }
end

-- The API's error answer: JSON body and the X-Error-* headers, always both.
function _M.error(status, code, message, reference)
  reference = reference or core.random_alnum(32)
  local res = _M.json(status, { error = { code = code, message = message, reference = reference } })
  res.headers["x-error-code"] = code
  res.headers["x-error-message"] = message
  res.headers["x-error-reference"] = reference
  return res
end

-- The API's 400 for a request whose parameters are wrong, saying which and why.
function _M.invalid_params(why)
  return _M.error(400, "ValidationErrors", "Parameter validation errors: " .. why)
end

function _M.html(status, text)
  return { status = status, headers = { ["content-type"] = "text/html; charset=utf-8" },
           body = text }
end

function _M.redirect(location)
  return { status = 302, headers = { location = location, ["content-type"] = "text/plain" },
           body = "" }
end

function _M.escape_html(s)
  return (tostring(s):gsub("[&<>\"']", {
    ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }))
end

-- application/x-www-form-urlencoded, as URLSearchParams writes it (WHATWG URL Standard).
function _M.form_escape(s)
  return (tostring(s):gsub("[^%w%*%-%._ ]", function(c)
    return format("%%%02X", byte(c))
  end):gsub(" ", "+"))
end

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end
_M.unescape = unescape

-- Query string -> table (first value wins for a repeated name).
function _M.parse_query(q)
  local out = {}
  if not q or q == "" then
    return out
  end
  for pair in q:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k = unescape(k)
    if out[k] == nil then
      out[k] = unescape(v)
    end
  end
  return out
end

-- Appends ordered parameters { {name, value}, ... } to a URL that may already carry a query
-- or a fragment (the fragment stays last).
function _M.add_query(url, params)
  local base, frag = url:match("^([^#]*)(#.*)$")
  if not base then
    base, frag = url, ""
  end
  local parts = {}
  for i, p in ipairs(params) do
    parts[i] = _M.form_escape(p[1]) .. "=" .. _M.form_escape(p[2])
  end
  local q = concat(parts, "&")
  if q == "" then
    return url
  end
  local sep = "?"
  if base:find("?", 1, true) then
    sep = (base:sub(-1) == "?" or base:sub(-1) == "&") and "" or "&"
  end
  return base .. sep .. q .. frag
end

return _M
