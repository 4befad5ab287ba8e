--- Error objects, and the mapping of HTTP error answers to them (doc/protocol.md "Errors":
-- the JSON body and the `X-Error-*` headers are both read, any body shape is survived).
-- An error is a table { kind, code, message, status?, reference?, retryable?, cause? } with a
-- __tostring that reads well in a log line. Messages never carry secrets, and the user's token
-- an error keeps is not one of its plain fields (see HIDDEN).
local json = require "digime.json"

local type, tostring, setmetatable, getmetatable = type, tostring, setmetatable, getmetatable
local rawget, rawset, pairs = rawget, rawset, pairs
local format, concat, match = string.format, table.concat, string.match

local _M = {}

_M.kinds = {
  TypeValidationError = true, ServerError = true, SDKInvalidError = true,
  FileDecryptionError = true, NetworkError = true, DigiMeSDKError = true,
  StoreError = true,   -- the shared store (Redis, a shared dict) failed: digime.store
}

local error_mt = {}

-- Fields an error keeps off its own table: the user's token in force (and a sync's `result`,
-- which holds it). They read as usual (err.user_access_token, err.result; errors.token_of),
-- but pairs(), cjson.encode and every other walker of the table never meet them, so an
-- application that logs a serialised error does not log a token. Weak keys: they go with it.
local HIDDEN = { user_access_token = true, result = true }
local hidden = setmetatable({}, { __mode = "k" })

error_mt.__index = function(e, k)
  if HIDDEN[k] then
    local h = hidden[e]
    return h and h[k]
  end
  return error_mt[k]
end

error_mt.__newindex = function(e, k, v)
  if not HIDDEN[k] then return rawset(e, k, v) end
  local h = hidden[e]
  if not h then
    h = {}
    hidden[e] = h
  end
  h[k] = v
end

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
  local h
  for k in pairs(HIDDEN) do
    local v = rawget(e, k)
    if v ~= nil then
      h = h or {}
      h[k] = v
      e[k] = nil
    end
  end
  setmetatable(e, error_mt)
  if h then hidden[e] = h end
  return e
end

--- The user access token in force when the call failed (a refreshed one, when the call
-- refreshed it): what to store instead of the token the call was given. nil when the error
-- carries none. Also readable as err.user_access_token; never a plain field of the table.
function _M.token_of(err)
  if getmetatable(err) ~= error_mt then return nil end
  local h = hidden[err]
  return h and h.user_access_token
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

--- The shared store failed (unreachable, refused, timed out): retryable, nothing was sent.
function _M.store(code, message, fields)
  fields = fields or {}
  fields.retryable = true
  return _M.new("StoreError", code, message, fields)
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

--- An attacker-chosen value as error text: short, printable, one line (a token header's kid
-- may be 40 KiB of anything, newlines included).
function _M.shown(v, max)
  max = max or 40
  if type(v) ~= "string" then return "<" .. type(v) .. ">" end
  local s = v:sub(1, max):gsub("[^\32-\126]", "?")
  return '"' .. s .. '"' .. (#v > max and string.format("... (%d bytes)", #v) or "")
end

return _M
