--- Error objects, and the mapping of HTTP error answers to them (api doc §5.2, done better:
-- the JSON body and the `X-Error-*` headers are both read, any body shape is survived).
-- An error is a table { kind, code, message, status?, reference?, retryable?, cause? } with a
-- __tostring that reads well in a log line. Messages never carry secrets.
local json = require "digime.json"

local type, tostring, setmetatable, getmetatable = type, tostring, setmetatable, getmetatable
local format, concat, match = string.format, table.concat, string.match

local _M = {}

_M.kinds = {
  TypeValidationError = true, ServerError = true, SDKInvalidError = true,
  FileDecryptionError = true, NetworkError = true, DigiMeSDKError = true,
}

local error_mt = {}
error_mt.__index = error_mt

error_mt.__tostring = function(e)
  local parts = { e.kind }
  if e.code and e.code ~= e.kind then parts[#parts + 1] = " " .. e.code end
  if e.status then parts[#parts + 1] = format(" (HTTP %s)", tostring(e.status)) end
  parts[#parts + 1] = ": " .. tostring(e.message)
  if e.reference then parts[#parts + 1] = " [reference " .. e.reference .. "]" end
  return concat(parts)
end

--- Creates an error. fields may add status, reference, retryable, cause, ...
function _M.new(kind, code, message, fields)
  local e = fields or {}
  e.kind, e.code, e.message = kind, code or kind, message or kind
  return setmetatable(e, error_mt)
end

function _M.is_error(v)
  return type(v) == "table" and getmetatable(v) == error_mt
end

-- A field name as error text. Names come from option tables, and a caller who puts a key PEM
-- or a token where an option name goes (`opts[pem] = true`) must not see it echoed: a part
-- that is neither an index nor a plausible option name (letters and _, no digits: random
-- strings have digits) is replaced by its length.
local function field_name(field)
  return (tostring(field):gsub("[^%.%[%]]+", function(part)
    if not (match(part, "^%d+$") or (#part <= 48 and match(part, "^[%a_]+$"))) then
      return "<" .. #part .. "-byte key>"
    end
  end))
end

--- A TypeValidationError naming the field: `validation("contract.id", "must be a non-empty string")`.
function _M.validation(field, problem)
  field = field_name(field)
  return _M.new("TypeValidationError", "TypeValidationError", field .. " " .. problem,
                { field = field })
end

-- Network failures that a new attempt cannot mend: a certificate that does not verify (or a
-- handshake that fails) fails the same way again. Every transport reports these the same way:
-- kind NetworkError, code TLSError, network "tls", retryable false.
local NOT_RETRYABLE = { tls = "TLSError" }

function _M.network(message, net_kind)
  local code = NOT_RETRYABLE[net_kind]
  return _M.new("NetworkError", code or "NetworkError", message,
                { network = net_kind, retryable = code == nil })
end

function _M.sdk(code, message, fields)
  return _M.new("DigiMeSDKError", code, message, fields)
end

--- A server answer of the wrong shape: DigiMeSDKError InvalidResponse.
function _M.invalid_response(what, message)
  return _M.new("DigiMeSDKError", "InvalidResponse", what .. ": " .. message)
end

local reasons = {
  [301] = "Moved Permanently", [302] = "Found", [303] = "See Other", [304] = "Not Modified",
  [307] = "Temporary Redirect", [308] = "Permanent Redirect",
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [406] = "Not Acceptable", [408] = "Request Timeout",
  [409] = "Conflict", [410] = "Gone", [413] = "Payload Too Large", [429] = "Too Many Requests",
  [500] = "Internal Server Error", [501] = "Not Implemented", [502] = "Bad Gateway",
  [503] = "Service Unavailable", [504] = "Gateway Timeout", [511] = "Network Authentication Required",
}
_M.reasons = reasons

-- A server-provided string, kept when short; control characters (a CR/LF that would forge a
-- log line) become spaces.
local function short_string(v)
  if type(v) == "string" and v ~= "" and #v <= 1024 then return (v:gsub("%c", " ")) end
end

--- Reads an error answer: code, message, reference from the JSON body (API shape
-- `{"error":{"code","message","reference"}}` or storage shape `{"error":"code","message"}`),
-- falling back to the X-Error-* headers. Returns code, message, reference (any may be nil).
function _M.parse_error_body(res)
  local code, message, reference
  local body = res.body
  if type(body) == "string" and body ~= "" and #body <= 64 * 1024 then
    local doc = json.decode(body)
    if type(doc) == "table" then
      local e = doc.error
      if type(e) == "table" then
        code, message, reference = short_string(e.code), short_string(e.message), short_string(e.reference)
      elseif type(e) == "string" then
        code, message = short_string(e), short_string(doc.message)
      end
      message = message or short_string(doc.message)
    end
  end
  local h = res.headers or {}
  code = code or short_string(h["x-error-code"])
  message = message or short_string(h["x-error-message"])
  reference = reference or short_string(h["x-error-reference"])
  return code, message, reference
end

--- Turns a non-2xx HTTP answer into an error object.
function _M.from_response(res)
  local status = res.status
  local code, message, reference = _M.parse_error_body(res)
  local fields = {
    status = status,
    status_message = reasons[status],
    reference = reference,
    retryable = status == 429 or status == 502 or status == 503 or status == 504,
  }
  if status >= 300 and status < 400 and not message then
    -- Redirects are never followed (an API answer that points elsewhere is refused, and its
    -- Location is not repeated here: it may carry anything).
    message = format("HTTP %d %s: a redirect, which the SDK does not follow", status,
                     reasons[status] or "Redirect")
  end
  if code == "SDKInvalid" or code == "SDKVersionInvalid" then
    return _M.new("SDKInvalidError", code, message or "Invalid SDK version", fields)
  end
  return _M.new("ServerError", code or "DigiMeServerError",
                message or format("HTTP %d %s", status, reasons[status] or "error"), fields)
end

return _M
