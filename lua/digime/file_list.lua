--- A library's file list kept small, for the sync: a C index of the server's answer
-- (core.file_list_index: a copy of the JSON text outside the Lua heap, and each entry's place,
-- name and updatedDate), not a Lua table an entry. Decoded, a list costs ~400 bytes a file as
-- Lua tables, and the collector lets the heap grow to about twice what is live; the index
-- costs ~200, once. An entry, or the whole list, is decoded only when asked for.
-- The checks are read.check_file_list's, with the same messages.
local core = require "digime.core"
local json = require "digime.json"
local errors = require "digime.errors"
local request = require "digime.request"
local signed_call = require "digime.signed_call"

local type, tostring, setmetatable = type, tostring, setmetatable
local min = math.min

local _M = {}

local WHAT = "permission-access/query"
local MAX_DEPTH = 64   -- as deep as digime.json decodes
local STATES = { pending = true, running = true, partial = true, completed = true }

local invalid_response = errors.invalid_response

local list_mt = {}
list_mt.__index = list_mt

--- Entry i decoded, as read_file_list gives it.
function list_mt:entry(i)
  return (json.decode(self.index:text(i)))
end

--- The name and updatedDate of entry i (1 <= i <= list.count).
function list_mt:name_and_date(i)
  local name, updated = self.index:name(i)
  if name == nil then return self:entry(i).name, updated end   -- written with escapes
  return name, updated
end

--- The whole fileList decoded (kept once made: it costs what the index saves).
function list_mt:decoded()
  local all = self.all
  if all == nil then
    all = {}
    for i = 1, self.count do all[i] = self:entry(i) end
    self.all = all
  end
  return all
end

--- Checks a file list answer's status (decoded): a known state, details an object if any.
-- -> status | nil, err (read.check_file_list checks a decoded answer with it too)
function _M.check_status(status)
  if type(status) ~= "table" then
    return nil, invalid_response(WHAT, "no status object")
  end
  if not STATES[status.state] then
    return nil, invalid_response(WHAT, "unknown library state " .. tostring(status.state))
  end
  if status.details ~= nil and type(status.details) ~= "table" then
    return nil, invalid_response(WHAT, "status.details is not an object")
  end
  return status
end

local function check_entries(index)
  for i = 1, index:count() do
    local is_object, named, escaped, dated = index:check(i)
    if named and escaped then   -- rare: decoded the way the user will see it
      local e = json.decode(index:text(i))
      named = type(e) == "table" and type(e.name) == "string" and e.name ~= ""
    end
    if not (is_object and named and dated) then
      return nil, invalid_response(WHAT, "fileList[" .. i .. "] needs a name and an updatedDate")
    end
  end
  return true
end

--- A file list answer's text (a string, or a core bytes object, which is taken over)
-- -> list { status, count, listed, index } | nil, err (listed: the answer has a fileList)
function _M.parse(text)
  if #text == 0 then return nil, invalid_response(WHAT, "no status object") end
  local index, ierr = core.file_list_index(text, MAX_DEPTH)
  if not index then
    return nil, errors.sdk("InvalidResponse", WHAT .. ": the server's answer is not valid JSON (" .. ierr .. ")")
  end
  local is_object, kind, status_text = index:info()
  if not is_object then return nil, invalid_response(WHAT, "no status object") end
  local status, err = _M.check_status(status_text and json.decode(status_text))
  if not status then return nil, err end
  if kind == "other" then return nil, invalid_response(WHAT, "fileList is not an array") end
  local ok, eerr = check_entries(index)
  if not ok then return nil, eerr end
  return setmetatable({ index = index, status = status, listed = kind == "array",
                        count = kind == "array" and index:count() or 0 }, list_mt)
end

--- The file list of a session, kept small -> { list, user_access_token } | nil, err
-- (read_file_list's request, with the answer left as text).
function _M.fetch(sdk, contract, user_access_token, session_key)
  local limits = sdk.config.limits
  return signed_call.user(sdk, contract, user_access_token, {
    method = "GET", url = sdk.config.base_url .. "permission-access/query/" .. request.encode_segment(session_key),
    headers = { accept = "application/json" }, what = WHAT,
    max_body = min(limits.body, limits.file_list),
    body_bytes = true,   -- with the curl transport, the text goes from libcurl's buffer to the index
  }, function(res)
    local list, err = _M.parse(res.body or "")
    if not list then return nil, err end
    return { list = list }
  end)
end

return _M
