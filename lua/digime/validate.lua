--- Argument checks shared by every call. Each returns true, or nil and a TypeValidationError
-- naming the field. Unknown option keys are refused: a typo must not pass silently.
local errors = require "digime.errors"

local type, pairs, ipairs, tostring, next, pcall, select = type, pairs, ipairs, tostring, next, pcall, select
local sort, concat = table.sort, table.concat
local find, match = string.find, string.match
local floor = math.floor

local _M = {}

local invalid = errors.validation

function _M.is_non_empty_string(v)
  return type(v) == "string" and v ~= ""
end

function _M.is_number(v)
  return type(v) == "number" and v == v
end

function _M.is_integer(v)
  return type(v) == "number" and v == v and floor(v) == v and v > -2^53 and v < 2^53
end

--- A table is a sequence (array) when its keys are exactly 1..n.
function _M.is_array(v)
  if type(v) ~= "table" then return false end
  local n = #v
  local count = 0
  for k in pairs(v) do
    if type(k) ~= "number" or k < 1 or k > n or floor(k) ~= k then return false end
    count = count + 1
  end
  return count == n
end

--- A record: a table that is not a non-empty array (an empty table is both).
function _M.is_record(v)
  if type(v) ~= "table" then return false end
  if next(v) == nil then return true end
  return not _M.is_array(v)
end

-- v.<name> is a function (v may be anything: indexing that raises is no method).
local function has_method(v, name)
  local ok, m = pcall(function() return v[name] end)
  return ok and type(m) == "function"
end

--- Data a call can read: a string, a reader function, or an object with a read method.
function _M.is_data_source(v)
  return type(v) == "string" or type(v) == "function" or has_method(v, "read")
end

--- Where a download's plaintext can go (digime.sink): a function, or an object with a write
-- method.
function _M.is_sink(v)
  return type(v) == "function" or has_method(v, "write")
end

-- A check (v, field, optional) -> true | nil, err from a predicate and what it asks for.
local function check_of(is, problem)
  return function(v, field, optional)
    if v == nil and optional then return true end
    if not is(v) then return nil, invalid(field, problem) end
    return true
  end
end

local function is_type(t)
  return function(v) return type(v) == t end
end

_M.boolean = check_of(is_type("boolean"), "must be a boolean")
_M.func = check_of(is_type("function"), "must be a function")
_M.data_source = check_of(_M.is_data_source, "must be a string, a file handle or a reader function")
_M.sink = check_of(_M.is_sink, "must be a function or an object with a write method")

local function sorted_names(set)
  local names = {}
  for name in pairs(set) do names[#names + 1] = name end
  sort(names)
  return concat(names, ", ")
end

-- opts is a table whose keys are all in `allowed`; `known` lists them for the message (made
-- here when not given).
local function known_keys(opts, allowed, what, known)
  if type(opts) ~= "table" then
    return nil, invalid(what, "must be a table of options")
  end
  for k in pairs(opts) do
    if type(k) ~= "string" or not allowed[k] then
      return nil, invalid(what .. "." .. tostring(k),
        "is not a known option (known: " .. (known or sorted_names(allowed)) .. ")")
    end
  end
  return true
end

--- Checks that opts is a table whose keys are all in `allowed` (a set); `what` names it.
function _M.options(opts, allowed, what)
  return known_keys(opts, allowed, what)
end

function _M.set(list)
  local s = {}
  for _, v in pairs(list) do s[v] = true end
  return s
end

--- A call's options, declared once. `checker(name, list, ...)` takes lists of entries
-- { key, check, a?, b?, c? } (joined in order) and returns check(opts) -> true | nil, err,
-- built once when the module loads. check(opts) refuses what options() refuses (opts not a
-- table: `name`; a key no entry names: `name.key`, before any value is looked at), then runs
-- each entry's check(opts[key], key, a, b, c) in order: the first failure wins. An entry
-- without a check names an option the call checks itself; a key may have several entries.
--   local check = validate.checker("read_file_list", validate.USER_CALL,
--     { { "session_key", validate.segment }, { "max", validate.integer, true, 1 } })
function _M.checker(name, ...)
  local entries, allowed = {}, {}
  for i = 1, select("#", ...) do
    for _, e in ipairs((select(i, ...))) do
      entries[#entries + 1] = e
      allowed[e[1]] = true
    end
  end
  local known, n = sorted_names(allowed), #entries
  return function(opts)
    local ok, err = known_keys(opts, allowed, name, known)
    if not ok then return nil, err end
    for i = 1, n do
      local e = entries[i]
      if e[2] then
        ok, err = e[2](opts[e[1]], e[1], e[3], e[4], e[5])
        if not ok then return nil, err end
      end
    end
    return true
  end
end

--- Longest strings (bytes) the SDK takes as options. Every one of them goes to the server in
-- a URL, a header or a signed claim, where servers stop well before such sizes (a URL or
-- header line over 8 KiB is commonly refused): past its limit a string is a mistake, reported
-- here by name instead of as a network error after retries.
--   id           256    application_id, contract.id, session_key, account_id, user ids ...
--   file_name   1024    a file's name in the library or storage
--   url         2048    base URLs, callback, redirect_uri
--   key        65536    contract.private_key (a PEM; RSA 4096 is about 3.3 KiB)
--   token      65536    user_access_token.*.value (JWTs the server gave)
--   default     4096    anything else (state, locale, path, ...)
_M.LIMITS = { id = 256, file_name = 1024, url = 2048, key = 65536, token = 65536, default = 4096 }

local LIMIT_BY_NAME = { session_key = "id", callback = "url", redirect_uri = "url",
                        private_key = "key", value = "token", file_name = "file_name" }

-- The kind of limit by field name, remembered: names come from the code, so they are few,
-- and matching a long dotted name costs microseconds at every call. Bounded all the same.
local kind_of, kinds_known = {}, 0

--- The length limit for a field: by its last name part (`contract.id` -> "id").
function _M.max_length(field)
  field = tostring(field)
  local kind = kind_of[field]
  if not kind then
    local name = match(field, "([%w_]+)$") or ""
    kind = LIMIT_BY_NAME[name] or ((name == "id" or find(name, "_id$")) and "id") or "default"
    if kinds_known < 1024 then
      kind_of[field], kinds_known = kind, kinds_known + 1
    end
  end
  return _M.LIMITS[kind], kind
end

--- true when the string is within its field's limit; else nil and a TypeValidationError.
function _M.length(v, field)
  local limit = _M.max_length(field)
  if #v > limit then
    return nil, invalid(field, "is " .. #v .. " bytes long, more than the " .. limit .. " allowed")
  end
  return true
end

function _M.string(v, field, optional)
  if v == nil and optional then return true end
  if not _M.is_non_empty_string(v) then
    return nil, invalid(field, "must be a non-empty string")
  end
  return _M.length(v, field)
end

--- A non-empty string that is sent as a header value: CR, LF and NUL are refused here, as a
-- TypeValidationError, instead of failing later as a network error.
function _M.header_string(v, field, optional)
  if v == nil and optional then return true end
  local ok, err = _M.string(v, field)
  if not ok then return nil, err end
  if find(v, "[\r\n%z]") then
    return nil, invalid(field, "must not contain CR, LF or NUL (it is sent as a header)")
  end
  return true
end

--- A string that may be empty (the authorize `state`, for example).
function _M.any_string(v, field, optional)
  if v == nil and optional then return true end
  if type(v) ~= "string" then
    return nil, invalid(field, "must be a string")
  end
  return _M.length(v, field)
end

function _M.number(v, field, optional, min, max)
  if v == nil and optional then return true end
  if not _M.is_number(v) or (min and v < min) or (max and v > max) then
    return nil, invalid(field, "must be a number" ..
      (min and (" >= " .. tostring(min)) or "") .. (max and (" <= " .. tostring(max)) or ""))
  end
  return true
end

--- An integer within [min, max] (either bound may be nil).
function _M.integer(v, field, optional, min, max)
  if v == nil and optional then return true end
  if not _M.is_integer(v) or (min and v < min) or (max and v > max) then
    return nil, invalid(field, "must be an integer" ..
      (min and (" >= " .. tostring(min)) or "") .. (max and (" <= " .. tostring(max)) or ""))
  end
  return true
end

--- `contract = { id, private_key }`.
function _M.contract(c, field)
  field = field or "contract"
  if type(c) ~= "table" then
    return nil, invalid(field, "must be a table { id = ..., private_key = ... }")
  end
  local ok, err = _M.options(c, { id = true, private_key = true }, field)
  if not ok then return nil, err end
  ok, err = _M.digime_id(c.id, field .. ".id")
  if not ok then return nil, err end
  return _M.string(c.private_key, field .. ".private_key")
end

local function token_part(t, field)
  if type(t) ~= "table" then
    return nil, invalid(field, "must be a table { value = ..., expiry = ... }")
  end
  local ok, err = _M.string(t.value, field .. ".value")
  if not ok then return nil, err end
  return _M.number(t.expiry, field .. ".expiry")
end

--- A user access token as the SDK returns it.
function _M.user_access_token(t, field, optional)
  field = field or "user_access_token"
  if t == nil and optional then return true end
  if type(t) ~= "table" then
    return nil, invalid(field, "must be a user access token table")
  end
  local ok, err = token_part(t.access_token, field .. ".access_token")
  if not ok then return nil, err end
  ok, err = token_part(t.refresh_token, field .. ".refresh_token")
  if not ok then return nil, err end
  if t.user ~= nil and (type(t.user) ~= "table" or (t.user.id ~= nil and type(t.user.id) ~= "string")) then
    return nil, invalid(field .. ".user", "must be a table { id = string }")
  end
  return _M.any_string(t.consent_id, field .. ".consent_id", true)
end

local function array_of_records(v, field, each)
  if not _M.is_array(v) then
    return nil, invalid(field, "must be an array")
  end
  for i = 1, #v do
    local item_field = field .. "[" .. i .. "]"
    if not _M.is_record(v[i]) then
      return nil, invalid(item_field, "must be a table")
    end
    if each then
      local ok, err = each(v[i], item_field)
      if not ok then return nil, err end
    end
  end
  return true
end

local function has_id(v, field)
  return _M.number(v.id, field .. ".id")
end

local function service_type(v, field)
  local ok, err = has_id(v, field)
  if not ok then return nil, err end
  if v.serviceObjectTypes ~= nil then
    return array_of_records(v.serviceObjectTypes, field .. ".serviceObjectTypes", has_id)
  end
  return true
end

local function service_group(v, field)
  local ok, err = has_id(v, field)
  if not ok then return nil, err end
  if v.serviceTypes ~= nil then
    return array_of_records(v.serviceTypes, field .. ".serviceTypes", service_type)
  end
  return true
end

local function time_range(v, field)
  local ok, err = _M.number(v.from, field .. ".from", true)
  if not ok then return nil, err end
  ok, err = _M.number(v.to, field .. ".to", true)
  if not ok then return nil, err end
  return _M.any_string(v.last, field .. ".last", true)
end

--- A CA scope (doc/protocol.md "Reading a library"): timeRanges, serviceGroups, criteria (criteria pass unchecked).
function _M.scope(s, field)
  if not _M.is_record(s) then
    return nil, invalid(field, "must be a table")
  end
  if s.timeRanges ~= nil then
    local ok, err = array_of_records(s.timeRanges, field .. ".timeRanges", time_range)
    if not ok then return nil, err end
  end
  if s.serviceGroups ~= nil then
    local ok, err = array_of_records(s.serviceGroups, field .. ".serviceGroups", service_group)
    if not ok then return nil, err end
  end
  if s.criteria ~= nil and not _M.is_array(s.criteria) then
    return nil, invalid(field .. ".criteria", "must be an array")
  end
  return true
end

--- Pull session options (doc/protocol.md "Reading a library"), sent to the server as given.
function _M.pull_options(p, field, optional)
  if p == nil and optional then return true end
  if not _M.is_record(p) then
    return nil, invalid(field, "must be a table")
  end
  if p.scope ~= nil then
    local ok, err = _M.scope(p.scope, field .. ".scope")
    if not ok then return nil, err end
  end
  if p.limits ~= nil and not _M.is_record(p.limits) then
    return nil, invalid(field .. ".limits", "must be a table")
  end
  if p.sourceFetch ~= nil and type(p.sourceFetch) ~= "boolean" then
    return nil, invalid(field .. ".sourceFetch", "must be a boolean")
  end
  if p.sourceFetchFilter ~= nil then
    local f = p.sourceFetchFilter
    if not _M.is_record(f) or not _M.is_record(f.account) then
      return nil, invalid(field .. ".sourceFetchFilter", "must be a table { account = { id = {...} } }")
    end
  end
  return true
end

--- `session_options = { pull = ... }` as the URL calls take it (sent as `actions`).
function _M.session_options(s, field, optional)
  field = field or "session_options"
  if s == nil and optional then return true end
  if not _M.is_record(s) then
    return nil, invalid(field, "must be a table")
  end
  if s.pull ~= nil then
    return _M.pull_options(s.pull, field .. ".pull")
  end
  return true
end

--- sourcesScope (doc/protocol.md, onboarding URLs): { dataType = { ... }, organizationType = "..." }.
function _M.sources_scope(s, field, optional)
  if s == nil and optional then return true end
  if not _M.is_record(s) then
    return nil, invalid(field, "must be a table")
  end
  local ok, err = _M.options(s, { dataType = true, organizationType = true }, field)
  if not ok then return nil, err end
  if s.dataType ~= nil then
    if not _M.is_array(s.dataType) then
      return nil, invalid(field .. ".dataType", "must be an array of strings")
    end
    for i, v in ipairs(s.dataType) do
      ok, err = _M.string(v, field .. ".dataType[" .. i .. "]")
      if not ok then return nil, err end
    end
  end
  return _M.string(s.organizationType, field .. ".organizationType", true)
end

-- Identifiers and URL segments (issue 15) -------------------------------------------------

-- digi.me's application and contract ids are short tokens of letters and digits (32 of them
-- in the ids the developer console issues); "-", "_" and "." are allowed as well. A key, a
-- token or any text that is not of this shape is refused without being echoed.
local ID_MAX = 64
_M.ID_PATTERN, _M.ID_MAX = "^[%w][%w%-_%.]*$", ID_MAX

--- An application or contract id: 1 to 64 letters, digits, "-", "_" or "." (a letter or digit
-- first).
function _M.digime_id(v, field)
  if type(v) ~= "string" or v == "" then
    return nil, invalid(field, "must be a non-empty string")
  end
  if #v > ID_MAX or not v:match(_M.ID_PATTERN) then
    return nil, invalid(field, "is not a digi.me id (1 to " .. ID_MAX .. " letters, digits, "
      .. "'-', '_' or '.', starting with a letter or digit)")
  end
  return true
end

--- A value that becomes one URL path segment: a non-empty string other than "." and "..",
-- which a client or a proxy would resolve as a path step (RFC 3986 §5.2.4), reaching another
-- endpoint.
function _M.segment(v, field, optional)
  if v == nil and optional then return true end
  local ok, err = _M.string(v, field)
  if not ok then return nil, err end
  if v == "." or v == ".." then
    return nil, invalid(field, "must not be '.' or '..' (it goes into a URL path)")
  end
  return true
end

--- A storage path ("a/b/c"; "" and nil are the root): no segment may be "." or "..".
-- Repeated slashes are folded by the storage calls, as the Node SDK does.
function _M.segments(v, field, optional)
  if v == nil and optional then return true end
  if type(v) ~= "string" then return nil, invalid(field, "must be a string") end
  for part in v:gmatch("[^/]+") do
    if part == "." or part == ".." then
      return nil, invalid(field, "must not have a '.' or '..' segment (it goes into a URL path)")
    end
  end
  return true
end

--- The options every contract-signed call takes, and those every user call takes: lists of
-- entries for checker().
_M.CONTRACT_CALL = { { "contract", _M.contract } }
_M.USER_CALL = { { "contract", _M.contract }, { "user_access_token", _M.user_access_token } }

return _M
