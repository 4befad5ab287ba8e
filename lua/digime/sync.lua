--- The whole-library sync: poll the file list until the library is done, download new and
-- updated files with at most `concurrency` in flight, report through callbacks
-- (doc/protocol.md "Reading a library"; the Node SDK's readAllFiles done better: a deadline,
-- a stall limit, bounded concurrency, every state reported, file names as data, stop cancels downloads).
local core = require "digime.core"
local errors = require "digime.errors"
local validate = require "digime.validate"
local scheduler = require "digime.scheduler"
local read = require "digime.read"
local file_list = require "digime.file_list"

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local setmetatable, rawget, rawset = setmetatable, rawget, rawset
local min, format = math.min, string.format

local _M = {}

-- Downloads in flight by default. A download is one request and one answer: at a round trip
-- of 40 ms, 16 of them keep a link busy where 5 left it idle most of the time (bench/network.sh:
-- figures in bench/RESULTS.md); on loopback more in flight changes little either way.
_M.DEFAULT_CONCURRENCY = 16

-- The options of read_all_files and files, in the order they are checked.
local SESSION = { { "session_key", validate.segment } }
local CALLBACKS = {
  { "on_file_data", validate.func, true },
  { "on_file_error", validate.func, true },
  { "on_status_change", validate.func, true },
}
local TUNING = {
  { "sink", validate.func, true },
  { "poll_interval", validate.number, true, 0, 3600 },
  { "max_time", validate.number, true, 0 },
  { "concurrency", validate.integer, true, 1 },
  { "max_unchanged_polls", validate.integer, true, 1 },
}
local check_all_files = validate.checker("read_all_files", validate.USER_CALL, SESSION, CALLBACKS, TUNING)
local check_files = validate.checker("files", validate.USER_CALL, SESSION, TUNING)

local sync_mt = {}
sync_mt.__index = sync_mt

--- Stops the sync: no more polls, and downloads in flight are cancelled.
function sync_mt:stop()
  if self.stopped then return end
  self.stopped = true
  for handle in pairs(self.in_flight) do
    scheduler.cancel(handle)
  end
  self.wake:signal()
end

-- A user callback; its error stops the sync (a bug in it must not pass unseen).
local function callback(sync, fn, ...)
  if not fn then return true end
  local ok, err = scheduler.pcall(fn, ...)
  if not ok then
    sync.fatal = sync.fatal or errors.sdk("CallbackError", "a callback raised: " .. tostring(err))
    sync:stop()
    return false
  end
  return true
end

-- The per-account problems of a status: partial accounts with their error and hints.
local function account_problems(status)
  local out = {}
  if type(status.details) ~= "table" then return out end
  for id, entry in pairs(status.details) do
    if type(entry) == "table" and entry.state == "partial" then
      local e = type(entry.error) == "table" and entry.error or {}
      local nested = type(e.error) == "table" and e.error or {}   -- the docs nest some fields
      out[#out + 1] = {
        account_id = id,
        code = e.code,
        status = e.statusCode,
        message = e.message or nested.message,
        reauth = e.reauth == true or nested.reauth == true,
        retry_after = e.retryAfter or nested.retryAfter,
        kind = e.code == "ServiceAuthorizationError" and "ServiceAuthorizationError" or "AccountSyncError",
      }
    end
  end
  return out
end

-- Giving up on a server that is gone. A file that failed all its attempts because connections
-- are refused, reset or its name no longer resolves says the server is unreachable; once
-- UNREACHABLE_AFTER files in a row (no file delivered between them) failed so, the rest would
-- only fail the same way, each after its own retries: the sync stops with a NetworkError
-- ServerUnreachable that gives the counts. A slow or faulty server (timeouts, 5xx, an
-- occasional reset between good files) does not end it.
local UNREACHABLE = { connect = true, resolve = true, reset = true, stale = true }
local UNREACHABLE_AFTER = 3

local function unreachable_error(sync, cause, known)
  local not_delivered = known - sync.files
  if not_delivered < 0 then not_delivered = 0 end
  return errors.new("NetworkError", "ServerUnreachable", format(
    "the server is unreachable (%s); %d files delivered, %d not (of %d listed)",
    tostring(cause.message), sync.files, not_delivered, known),
    { network = cause.network, retryable = true, cause = cause, files = sync.files,
      not_delivered = not_delivered, listed = known })
end

local function is_unreachable(err)
  return type(err) == "table" and err.kind == "NetworkError" and UNREACHABLE[err.network] == true
end

-- Counts a file's outcome (err nil: delivered); stops the sync once the server looks gone.
local function note_outcome(sync, err, known)
  if not is_unreachable(err) then
    sync.unreachable = 0
    return
  end
  sync.unreachable = (sync.unreachable or 0) + 1
  if sync.unreachable >= UNREACHABLE_AFTER and not sync.fatal then
    sync.fatal = unreachable_error(sync, err, known)
    sync:stop()
  end
end

-- What the callbacks are given carries `file_list`, the newest list polled when the callback
-- came, decoded only when read: a sync whose callbacks never look at it never holds the list
-- as Lua tables.
local list_of = setmetatable({}, { __mode = "k" })   -- callback argument -> newest list then
local with_list_mt = {
  __index = function(t, k)
    local list = list_of[t]
    if k == "file_list" and list then return list:decoded() end
  end,
}

local function with_list(t, sync)
  list_of[t] = sync.list
  return setmetatable(t, with_list_mt)
end

local function download(sdk, opts, sync, list, i)
  local name = list:name_and_date(i)
  local sink
  if opts.sink then
    local ok, s = scheduler.pcall(opts.sink, name, list:entry(i))
    if not ok then
      callback(sync, opts.on_file_error, with_list({ error = errors.sdk("SinkError",
        "the sink factory raised: " .. tostring(s)), file_name = name }, sync), sync)
      sync.failures = sync.failures + 1
      return
    end
    sink = s
  end
  local started_with = sync.token
  local res, err = read.fetch_file(sdk, {
    contract = opts.contract, user_access_token = started_with,
    session_key = opts.session_key, file_name = name, sink = sink,
  }, sync.in_flight, true)
  local token = res and res.user_access_token or (type(err) == "table" and err.user_access_token)
  -- only a token this download refreshed is newer than the one in force now
  if token and token ~= started_with then sync.token = token end
  if sync.stopped and not res then return end   -- cancelled by stop(): not a failure of the file
  note_outcome(sync, not res and err or nil, sync.queue.last)
  if res then
    sync.files = sync.files + 1
    callback(sync, opts.on_file_data, with_list(res, sync), sync)
  else
    sync.failures = sync.failures + 1
    callback(sync, opts.on_file_error, with_list({ error = err, file_name = name }, sync), sync)
  end
end

-- The queue holds entry numbers, in batches of one list each (a poll's files are queued
-- together): a queued file costs one array slot, and a superseded list lives only as long as
-- files of it wait. -> list, entry number | nil
local function dequeue(queue)
  local at = queue.first
  if at > queue.last then return nil end
  local i = queue[at]
  queue[at] = nil
  queue.first = at + 1
  local batches, b = queue.batches, queue.batch
  while batches[b + 1] and batches[b + 1].first <= at do
    batches[b] = nil
    b = b + 1
  end
  queue.batch = b
  return batches[b].list, i
end

local function worker(sdk, opts, sync, queue)
  while true do
    if sync.stopped then return end   -- stopped: what is still queued is not downloaded
    local list, i = dequeue(queue)
    if list then
      download(sdk, opts, sync, list, i)
    elseif sync.stopped or sync.listing_done then
      return
    else
      sync.wake:wait()
    end
  end
end

local function set_state(sync, opts, state)
  if state ~= sync.state then
    sync.state = state
    callback(sync, opts.on_status_change, state, sync)
  end
end

-- Sleeps up to `seconds`, waking early when the sync is stopped.
local function pause(sync, seconds)
  local until_t = core.monotonic() + seconds
  while not sync.stopped do
    local left = until_t - core.monotonic()
    if left <= 0 then return end
    scheduler.sleep(min(left, 0.1))
  end
end

-- Queues the files of a poll's list that are new, or updated since they were queued.
-- -> how many were queued
local function enqueue(sync, queue, handled, list)
  if list.listed then sync.list = list end   -- an answer without fileList keeps the last one
  local first = queue.last + 1
  for i = 1, list.count do
    local name, updated = list:name_and_date(i)
    local seen = rawget(handled, name)   -- names are data: raw access
    if seen == nil or seen < updated then
      rawset(handled, name, updated)
      queue.last = queue.last + 1
      queue[queue.last] = i
    end
  end
  if queue.last >= first then
    queue.batches[#queue.batches + 1] = { first = first, list = list }
  end
  sync.wake:signal()
  return queue.last - first + 1
end

-- Polls the file list until the library is done (partial or completed), the sync is stopped,
-- or it fails (max_time, a stall, a failed poll). -> last status, fatal error or nil
local function poll_until_done(sdk, opts, sync, queue, deadline)
  local poll_interval = opts.poll_interval or 3
  local max_unchanged = opts.max_unchanged_polls or 100
  local handled = {}          -- file name -> updatedDate queued
  local last_count, unchanged, status = nil, 0, nil
  while not sync.stopped do
    if core.monotonic() >= deadline then
      return status, errors.sdk("SyncTimeout", "the library sync did not finish within max_time")
    end
    local polled_with = sync.token
    local res, err = file_list.fetch(sdk, opts.contract, polled_with, opts.session_key)
    if not res then
      if type(err) == "table" and err.user_access_token and err.user_access_token ~= polled_with then
        sync.token = err.user_access_token
      end
      return status, is_unreachable(err) and unreachable_error(sync, err, queue.last) or err
    end
    sync.polls = sync.polls + 1
    if res.user_access_token ~= polled_with then sync.token = res.user_access_token end
    local list = res.list
    local state_before = status and status.state
    status = list.status
    sync.status = status
    set_state(sync, opts, status.state)
    if sync.stopped then break end
    local queued = enqueue(sync, queue, handled, list)
    if status.state == "partial" or status.state == "completed" then break end
    -- progress: a new state, a file new or updated, a file gone
    local same = queued == 0 and status.state == state_before and list.count == last_count
    unchanged = same and unchanged + 1 or 0
    last_count = list.count
    if unchanged >= max_unchanged then
      return status, errors.sdk("SyncStalled", "the library sync made no progress in " .. max_unchanged .. " polls")
    end
    pause(sync, min(poll_interval, deadline - core.monotonic()))
  end
  return status, nil
end

-- Lets the downloads finish within the deadline; past it they are cancelled.
-- -> fatal error or nil
local function drain_workers(sync, workers, deadline, fatal)
  for _, w in ipairs(workers) do
    while not w:done() and core.monotonic() < deadline do
      pause(sync, min(0.1, deadline - core.monotonic()))
      if sync.stopped then break end
    end
  end
  if not sync.stopped then
    for _, w in ipairs(workers) do
      if not w:done() then
        fatal = fatal or errors.sdk("SyncTimeout", "the library sync did not finish within max_time")
        sync:stop()
        break
      end
    end
  end
  for _, w in ipairs(workers) do w:wait() end
  return fatal
end

-- The sync itself; runs inside a task. hold.sync, when hold is given, is the sync object.
local function run(sdk, opts, hold)
  local sync = setmetatable({
    token = opts.user_access_token, files = 0, failures = 0, polls = 0,
    stopped = false, listing_done = false, in_flight = {}, wake = scheduler.cond(),
  }, sync_mt)
  if hold then hold.sync = sync end
  local deadline = core.monotonic() + (opts.max_time or 600)
  local queue = { first = 1, last = 0, batches = {}, batch = 1 }   -- last: the files listed so far
  sync.queue = queue
  local workers = {}
  for i = 1, opts.concurrency or _M.DEFAULT_CONCURRENCY do
    workers[i] = scheduler.spawn(worker, sdk, opts, sync, queue)
  end

  local status, fatal = poll_until_done(sdk, opts, sync, queue, deadline)
  sync.listing_done = true
  if fatal then sync:stop() end
  sync.wake:signal()
  fatal = drain_workers(sync, workers, deadline, fatal)

  fatal = sync.fatal or fatal
  local result = {
    status = status, files = sync.files, failures = sync.failures, polls = sync.polls,
    account_problems = status and account_problems(status) or {},
    user_access_token = sync.token, stopped = sync.stopped and not fatal or nil,
  }
  if fatal then
    if type(fatal) == "table" then
      fatal.user_access_token = sync.token
      fatal.result = result
    end
    return nil, fatal
  end
  return result
end

--- sdk:read_all_files{ contract, user_access_token, session_key, on_file_data?,
--   on_file_error?, on_status_change?, sink?, concurrency?, poll_interval?, max_time?,
--   max_unchanged_polls? } -> result | nil, err (err.result and err.user_access_token are set)
function _M.read_all_files(sdk, opts)
  local ok, err = check_all_files(opts)
  if not ok then return nil, err end
  if scheduler.in_task() then
    return run(sdk, opts)
  end
  return scheduler.run(run, sdk, opts)
end

--- An iterator whose one step is `false, err` (a call refused before anything started).
function _M.failed_iterator(err)
  local done = false
  return function()
    if done then return nil end
    done = true
    return false, err
  end
end

--- for file, err in sdk:files{...} do ... end: the sync as an iterator (same options, no
-- callbacks). Each step gives a file (as read_file returns it, plus file_list), or `false,
-- err` for a file that failed (false, not nil, so that the loop goes on); a fatal error gives
-- `false, err` and ends the loop. Breaking out stops the sync (on Lua 5.4 through the for
-- loop's closing value; elsewhere call the fourth value's close()).
function _M.files(sdk, opts)
  local ok, err = check_files(opts)
  if not ok then return _M.failed_iterator(err) end
  local queue, head, tail = {}, 1, 0   -- explicit ends: consumed slots become holes
  local finished, final_err = false, nil
  local hold = {}
  local sync_opts = {}
  for k, v in pairs(opts) do sync_opts[k] = v end
  local loop = scheduler.loop()
  sync_opts.on_file_data = function(file)
    tail = tail + 1
    queue[tail] = { file }
    loop:notify()
  end
  sync_opts.on_file_error = function(failure)
    tail = tail + 1
    queue[tail] = { false, failure.error }
    loop:notify()
  end
  local main = loop:spawn(function()
    local _, e = run(sdk, sync_opts, hold)
    final_err = e
    finished = true
  end)
  local function step()
    if head > tail and not finished then
      loop:step_until(function() return head <= tail or finished end)
    end
    if head <= tail then
      local item = queue[head]
      queue[head] = nil
      head = head + 1
      return item[1], item[2]
    end
    if main.error then
      local e = main.error
      main.error = nil
      main.observed = true
      error(e, 0)
    end
    if final_err then
      local e = final_err
      final_err = nil
      return false, e
    end
    return nil
  end
  local function close()
    if not finished and hold.sync then
      hold.sync:stop()
      loop:step_until(function() return finished end)
    end
  end
  local closer = setmetatable({ close = close }, { __close = close })
  return step, nil, nil, closer
end

return _M
