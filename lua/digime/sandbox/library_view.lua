-- Each user's view of the library, and the progression of its sync (doc/sandbox.md "The
-- library"; doc/protocol.md "Reading a library").
--
-- Each user sees the library through its own record (state.users[id]): accounts it deleted
-- (user.removed) and their files are gone, files it pushed (user.pushed) come after the
-- library's, revoked accounts (user.revoked) need authorization again, reauthorized ones
-- (user.reauthorized) no longer do:
--   view.user_files(app, user) -> array      view.user_file(app, user, name) -> file
--   view.user_accounts(app, user) -> array   view.account_records_of(app, user) -> array
--   view.start_sync(app, user_id, instant), view.sync_answer(app, user_id) -> body text
--
-- Sync progression (per user): pending -> running with the first half of the files ->
-- running with all of them -> completed (partial with --partial). A step takes at least
-- --sync-pace seconds and a poll advances at most one step, so every poller sees every
-- running step in order, however slowly it polls. --sync-pace 0: completed at once. Files can
-- be fetched at any time, whatever the sync shows: the library exists before the sync.

local core = require "digime.core"
local wire = require "digime.sandbox.wire"
local accounts_mod = require "digime.sandbox.library_accounts"

local ipairs = ipairs
local math_ceil = math.ceil

local _M = {}

local RETRY_AFTER = 60            -- seconds, in the partial account's error

-- A file list entry (doc/protocol.md "Reading a library").
function _M.list_entry(file)
  local e = { name = file.name, updatedDate = file.updated }
  local m = file.metadata
  if not file.raw then
    e.schema = m.schema
    e.serviceGroup = m.serviceGroup
    e.serviceName = m.serviceName
    e.objectCount = m.objectCount
    e.objectType = m.objectType
  end
  return e
end

-- Each user's view ---------------------------------------------------------------------------

-- Does this account of this user need its source authorized again?
function _M.needs_auth(user, a)
  if user and user.revoked and user.revoked[a.id] then
    return true
  end
  return a.partial == true and not (user and user.reauthorized and user.reauthorized[a.id])
end

local function removed(user, account_id)
  return user ~= nil and user.removed ~= nil and user.removed[account_id] == true
end

-- The library's accounts this user still has.
function _M.user_accounts(app, user)
  local list = {}
  for _, a in ipairs(app.library.accounts) do
    if not removed(user, a.id) then
      list[#list + 1] = a
    end
  end
  return list
end

function _M.account_records_of(app, user)
  local list = {}
  for i, a in ipairs(_M.user_accounts(app, user)) do
    list[i] = accounts_mod.record(a, _M.needs_auth(user, a))
  end
  return list
end

-- The library's files minus those of removed accounts, then the user's pushed files.
function _M.user_files(app, user)
  local lib = app.library
  if not user or (not user.removed and not user.pushed) then
    return lib.files
  end
  local list = {}
  for _, f in ipairs(lib.files) do
    if not removed(user, f.account) then
      list[#list + 1] = f
    end
  end
  for _, f in ipairs(user.pushed or {}) do
    list[#list + 1] = f
  end
  return list
end

function _M.user_file(app, user, name)
  local f = user and user.pushed_by_name and user.pushed_by_name[name]
  if f then
    return f
  end
  f = app.library.by_name[name]
  if f and not removed(user, f.account) then
    return f
  end
  return nil
end

-- Sync progression ----------------------------------------------------------------------------

-- (Re)starts a user's sync: pending now (or completed at once when instant or pace 0).
function _M.start_sync(app, user_id, instant)
  local pace = app.cfg.sync_pace or 0
  local sync = { step = 0, at = core.monotonic() }
  if instant or pace <= 0 then
    sync.step = 3
  end
  app.state.syncs[user_id] = sync
  return sync
end

-- Advances a sync by at most one step, when its pace allows: -> step (0..3)
local function advance(app, sync)
  local pace = app.cfg.sync_pace or 0
  local now = core.monotonic()
  if sync.step < 3 and now - sync.at >= pace then
    sync.step = sync.step + 1
    sync.at = now
  end
  return sync.step
end

-- Each account's state in a sync answer: -> details, any_partial
local function account_details(user, accounts, done)
  local details, any_partial = {}, false
  for _, a in ipairs(accounts) do
    if not done then
      details[a.id] = { state = "running" }
    elseif _M.needs_auth(user, a) then
      any_partial = true
      details[a.id] = { state = "partial", error = {
        code = "ServiceAuthorizationError", statusCode = 511,
        message = "Service authorization required", reauth = true,
        retryAfter = RETRY_AFTER } }
    else
      details[a.id] = { state = "completed" }
    end
  end
  return details, any_partial
end

-- The body of GET permission-access/query/{sessionKey} for a user, as JSON text.
function _M.sync_answer(app, user_id)
  local user = app.state.users[user_id]
  local files, accounts = _M.user_files(app, user), _M.user_accounts(app, user)
  local sync = app.state.syncs[user_id] or _M.start_sync(app, user_id)
  local step = advance(app, sync)
  if step == 0 then
    return wire.encode{ status = { state = "pending" } }
  end
  local done = step >= 3
  local details, any_partial = account_details(user, accounts, done)
  local state = (not done and "running") or (any_partial and "partial") or "completed"
  local n = #files
  local visible = step == 1 and math_ceil(n / 2) or n
  local list = {}
  for i = 1, visible do
    list[i] = _M.list_entry(files[i])
  end
  local body = { status = { state = state, details = details } }
  if #list == 0 then
    -- cjson would write an empty table as {}
    local text = wire.encode(body)
    return text:sub(1, -2) .. ',"fileList":[]}'
  end
  body.fileList = list
  return wire.encode(body)
end

return _M
