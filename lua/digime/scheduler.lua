--- Coroutine scheduler for plain Lua (the curl transport's world).
-- Inside `run`, a request yields while the C engine works and other tasks go on; outside it,
-- the same call drives the engine itself and blocks. Nothing here runs inside a C callback.
local core = require "digime.core"

local coroutine, type, select = coroutine, type, select
local unpack = table.unpack or unpack  -- luacheck: ignore 143 113 (5.1 and 5.4)
local ipairs = ipairs
local setmetatable, error, tostring, pcall = setmetatable, error, tostring, pcall
local remove, huge, min, max, floor = table.remove, math.huge, math.min, math.max, math.floor
local traceback = debug.traceback

local _M = {}

local engine, engine_pid          -- one engine per process, made on first use
local loop                        -- the running loop, or nil
local current                     -- the task whose coroutine is running, or nil
local finished = setmetatable({}, { __mode = "k" })  -- request -> true once done
local WAIT = {}                   -- what tasks yield to the loop

--- The process's HTTP engine (re-made after a fork, so parent and child share nothing).
function _M.engine()
  local pid = core.pid()
  if engine == nil or engine_pid ~= pid then
    engine, engine_pid = core.http_engine(), pid
  end
  return engine
end

local task_mt = {}
task_mt.__index = task_mt

local function pack(...)
  return { n = select("#", ...), ... }
end

local function make_ready(t)
  if t.state == "waiting" then
    t.state = "ready"
    loop.ready[#loop.ready + 1] = t
  end
end

local function finish(t, ok, ...)
  t.state = "done"
  if ok then
    t.results = pack(...)
  else
    t.error = ...
  end
  loop.live = loop.live - 1
  for _, w in ipairs(t.waiters) do make_ready(w) end
  t.waiters = {}
end

local function resume(t)
  current = t
  t.state = "running"
  local res = pack(coroutine.resume(t.co, unpack(t.args or {}, 1, t.args and t.args.n or 0)))
  t.args = nil
  current = nil
  if coroutine.status(t.co) == "dead" then
    if res[1] then
      finish(t, true, unpack(res, 2, res.n))
    else
      finish(t, false, traceback(t.co, tostring(res[2])))
    end
  elseif t.state == "running" then
    -- Yielded for a reason of its own (not WAIT): let the others run, then go on.
    t.state = "waiting"
    make_ready(t)
  end
end

local function new_task(fn, ...)
  local t = setmetatable({ waiters = {}, state = "waiting", args = pack(...) }, task_mt)
  t.co = coroutine.create(fn)
  loop.live = loop.live + 1
  make_ready(t)
  return t
end

-- Dispatches requests the engine reports finished to the tasks waiting on them.
local function dispatch()
  local done = engine:finished()
  for i = 1, #done do
    local req = done[i]
    finished[req] = true
    local t = loop and loop.requests[req]
    if t then
      loop.requests[req] = nil
      make_ready(t)
    end
  end
  return #done
end

local function next_timer_delay(now)
  local best = huge
  for _, tm in ipairs(loop.timers) do
    if tm.at < best then best = tm.at end
  end
  return best - now
end

local function fire_timers(now)
  local timers = loop.timers
  local i = 1
  while i <= #timers do
    if timers[i].at <= now then
      make_ready(remove(timers, i).task)
    else
      i = i + 1
    end
  end
end

local function step_io()
  local now = core.monotonic()
  fire_timers(now)
  if #loop.ready > 0 then return end
  local delay = next_timer_delay(now)
  if engine and engine:count() > 0 then
    engine:perform()
    if dispatch() > 0 then return end
    local ms = max(0, min(floor(delay * 1000 + 1), 1000))
    engine:poll(ms)
    engine:perform()
    dispatch()
  elseif delay < huge then
    core.sleep(max(0, delay))
  else
    error("digime.run: every task is waiting and nothing can wake them (a wait cycle?)", 0)
  end
  fire_timers(core.monotonic())
end

--- Runs fn(...) as the first task and returns its results once it and every task it spawned
-- have ended. An error in fn is raised again here; so is an error of a spawned task that no
-- one waited for.
function _M.run(fn, ...)
  if type(fn) ~= "function" then
    error("digime.run: expected a function", 2)
  end
  if loop then
    error("digime.run: already running (use digime.spawn inside it)", 2)
  end
  loop = { ready = {}, timers = {}, requests = {}, live = 0, tasks = {} }
  local ok, err = pcall(function(...)
    local main = new_task(fn, ...)
    loop.tasks[#loop.tasks + 1] = main
    while loop.live > 0 do
      while #loop.ready > 0 do
        resume(remove(loop.ready, 1))
      end
      if loop.live > 0 then step_io() end
    end
    return main
  end, ...)
  local tasks = loop.tasks
  loop = nil
  if not ok then error(err, 0) end
  local main = err
  if main.error then error(main.error, 0) end
  for _, t in ipairs(tasks) do
    if t.error and not t.observed then error(t.error, 0) end
  end
  return unpack(main.results, 1, main.results.n)
end

--- Starts fn(...) as a new task of the running loop; returns the task.
function _M.spawn(fn, ...)
  if type(fn) ~= "function" then
    error("digime.spawn: expected a function", 2)
  end
  if not loop then
    error("digime.spawn: must be called inside digime.run", 2)
  end
  local t = new_task(fn, ...)
  loop.tasks[#loop.tasks + 1] = t
  return t
end

-- The task whose coroutine is the one running now (nil in plain code or a user coroutine).
local function running_task()
  if not current then return nil end
  local co = coroutine.running()
  if co == current.co then return current end
  return nil
end

--- Waits for the task to end and returns its function's results; nil, err if it raised.
function task_mt:wait()
  local me = running_task()
  if self.state ~= "done" then
    if not me then
      error("task:wait() must be called from a task of digime.run", 2)
    end
    if me == self then
      error("task:wait(): a task cannot wait for itself", 2)
    end
    me.state = "waiting"
    self.waiters[#self.waiters + 1] = me
    coroutine.yield(WAIT)
  end
  if self.error then
    self.observed = true
    return nil, self.error
  end
  return unpack(self.results, 1, self.results.n)
end

function task_mt:done()
  return self.state == "done"
end

--- Sleeps: yields inside a task, blocks outside.
function _M.sleep(seconds)
  local me = running_task()
  if not me then
    if seconds > 0 then core.sleep(seconds) end
    return
  end
  me.state = "waiting"
  loop.timers[#loop.timers + 1] = { at = core.monotonic() + seconds, task = me }
  coroutine.yield(WAIT)
end

--- Waits until the engine request is finished: yields inside a task, drives the engine and
-- blocks outside (finishing other tasks' requests on the way, which it hands to the loop).
function _M.await(req)
  local me = running_task()
  if me then
    me.state = "waiting"
    loop.requests[req] = me
    coroutine.yield(WAIT)
    return
  end
  local e = _M.engine()
  while not finished[req] do
    e:perform()
    if dispatch() == 0 and not finished[req] then
      e:poll(100)
    end
  end
end

local flights = {}

--- Runs fn once for concurrent callers with the same key; all get the same results.
-- Used so that a rotating refresh token is presented once, whoever asks.
function _M.single_flight(key, fn)
  local flight = flights[key]
  if flight then
    local me = running_task()
    if me then
      me.state = "waiting"
      flight.waiters[#flight.waiters + 1] = me
      coroutine.yield(WAIT)
      return unpack(flight.results, 1, flight.results.n)
    end
  end
  flight = { waiters = {} }
  flights[key] = flight
  local res = pack(pcall(fn))
  flights[key] = nil
  if res[1] then
    flight.results = pack(unpack(res, 2, res.n))
  else
    flight.results = pack(nil, tostring(res[2]))
  end
  for _, w in ipairs(flight.waiters) do make_ready(w) end
  if not res[1] then error(res[2], 0) end
  return unpack(flight.results, 1, flight.results.n)
end

function _M.in_task()
  return running_task() ~= nil
end

return _M
