--- The scheduler inside nginx: the same API as digime.scheduler's plain-Lua loop, made of
-- nginx light threads (ngx.thread), ngx.sleep and ngx.semaphore. digime.scheduler hands its
-- calls here in the phases where a request may yield (rewrite, access, content, timer, ...).
--
-- Inside nginx every request handler already runs in a coroutine that nginx resumes, so there
-- is no loop to drive: `run` calls its function directly, a task is a light thread, and a
-- wait is a semaphore wait. Light threads end with their request; nginx does not finalize a
-- request while one of its light threads runs.
local semaphore = require "ngx.semaphore"

local ngx = ngx
local spawn_thread, ngx_sleep = ngx.thread.spawn, ngx.sleep
local ipairs, type, select, setmetatable = ipairs, type, select, setmetatable
local error, tostring, xpcall = error, tostring, xpcall
local unpack = table.unpack or unpack  -- luacheck: ignore 143 113
local traceback = debug.traceback

local _M = {}

-- A semaphore wait has a timeout; waits here are unbounded, so they loop on a long one.
local LONG_WAIT = 3600

local function pack(...)
  return { n = select("#", ...), ... }
end

-- An event several threads can wait for, woken all at once.
local event_mt = {}
event_mt.__index = event_mt

local function event()
  return setmetatable({ sem = semaphore.new(0) }, event_mt)
end

-- Waits up to `timeout` seconds (LONG_WAIT by default) for the next wake().
function event_mt:wait(timeout)
  self.sem:wait(timeout or LONG_WAIT)
end

-- Wakes every thread waiting now (a negative count is the number of waiters); a wake with
-- nobody waiting is not remembered.
function event_mt:wake()
  local n = self.sem:count()
  if n < 0 then self.sem:post(-n) end
end
event_mt.signal = event_mt.wake

local task_mt = {}
task_mt.__index = task_mt

-- Starts fn(...) in a light thread; `on_end` (optional) is woken when it ends.
local function start(fn, args, on_end)
  local t = setmetatable({ state = "running", ended = event() }, task_mt)
  local ok, err = spawn_thread(function()
    local res = pack(xpcall(fn, traceback, unpack(args, 1, args.n)))
    t.state = "done"
    if res[1] then
      t.results = pack(unpack(res, 2, res.n))
    else
      t.error = tostring(res[2])
    end
    t.ended:wake()
    if on_end then on_end:wake() end
  end)
  if not ok then
    error("digime.spawn: cannot start a light thread: " .. tostring(err), 3)
  end
  return t
end

--- Waits for the task to end; its function's results, or nil, err if it raised.
function task_mt:wait()
  while self.state ~= "done" do self.ended:wait() end
  if self.error then
    self.observed = true
    return nil, self.error
  end
  return unpack(self.results, 1, self.results.n)
end

function task_mt:done()
  return self.state == "done"
end

--- Calls fn(...) in the running light thread (it may yield: nginx resumes it).
function _M.run(fn, ...)
  if type(fn) ~= "function" then
    error("digime.run: expected a function", 2)
  end
  return fn(...)
end

function _M.spawn(fn, ...)
  if type(fn) ~= "function" then
    error("digime.spawn: expected a function", 2)
  end
  return start(fn, pack(...))
end

-- nginx counts sleeps in milliseconds, and a sleep of 0 only yields (with a warning in the
-- log on stock nginx): the shortest real sleep is 1 ms.
function _M.sleep(seconds)
  ngx_sleep(seconds >= 0.001 and seconds or 0.001)
end

--- A condition tasks wait on until someone signals it.
function _M.cond()
  return event()
end

local flights = {}

--- Runs fn once for concurrent callers in this worker with the same key; all get the same
-- results (across workers, tokens.lua adds a lock in a shared dict).
function _M.single_flight(key, fn)
  local flight = flights[key]
  if flight then
    while not flight.results do flight.ended:wait() end
    return unpack(flight.results, 1, flight.results.n)
  end
  flight = { ended = event() }
  flights[key] = flight
  local res = pack(xpcall(fn, traceback))
  flights[key] = nil
  if res[1] then
    flight.results = pack(unpack(res, 2, res.n))
  else
    flight.results = pack(nil, tostring(res[2]))
  end
  flight.ended:wake()
  if not res[1] then error(res[2], 0) end
  return unpack(flight.results, 1, flight.results.n)
end

function _M.in_task()
  return true
end

local loop_mt = {}
loop_mt.__index = loop_mt

--- A loop for code that steps a sync from outside (the `files` iterator): its tasks are
-- light threads; step_until waits until stop() holds, woken by notify() or a task's end.
function _M.loop()
  return setmetatable({ changed = event(), tasks = {} }, loop_mt)
end

function loop_mt:spawn(fn, ...)
  local t = start(fn, pack(...), self.changed)
  self.tasks[#self.tasks + 1] = t
  return t
end

function loop_mt:notify()
  self.changed:wake()
end

local function all_done(tasks)
  for _, t in ipairs(tasks) do
    if t.state ~= "done" then return false end
  end
  return true
end

function loop_mt:step_until(stop)
  while not (stop and stop()) and not all_done(self.tasks) do
    -- notify() comes from the tasks themselves; the timeout only guards against a missed one
    self.changed:wait(0.5)
  end
end

return _M
