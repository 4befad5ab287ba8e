--- Coroutine scheduler for plain Lua (the curl transport's world).
-- Inside `run`, a request yields while the C engine works and other tasks go on; outside it,
-- the same call drives the engine itself and blocks. Nothing here runs inside a C callback.
--
-- Loops are objects so that a loop can also be stepped from outside (the `files` iterator
-- runs a sync one file at a time). The scheduler knows no HTTP engine: when no task is ready
-- it waits on the one I/O source registered with set_io (the libcurl engine of
-- transport/curl_engine.lua registers itself when first used), and a source wakes the tasks
-- it concerns with suspend/wake.
local core = require "digime.core"

local coroutine, type, select = coroutine, type, select
local unpack = table.unpack or unpack  -- luacheck: ignore 143 113 (5.1 and 5.4)
local ipairs, setmetatable, error, tostring, pcall = ipairs, setmetatable, error, tostring, pcall
local rawget = rawget
local remove, huge, min, max, floor = table.remove, math.huge, math.min, math.max, math.floor
local traceback = debug.traceback

local _M = {}
-- The plain-Lua versions of the calls that have an nginx twin (ngx_scheduler.lua); the
-- exports at the end of the file pick one of the two per call.
local plain = {}

local current                                              -- the task whose coroutine runs now
local io_source                                            -- what the loop waits on (set_io)
local WAIT = {}                                            -- what tasks yield to their loop

local task_mt = {}
task_mt.__index = task_mt
local loop_mt = {}
loop_mt.__index = loop_mt

local function pack(...)
  return { n = select("#", ...), ... }
end

local function make_ready(t)
  if t.state == "waiting" then
    t.state = "ready"
    local ready = t.loop.ready
    ready[#ready + 1] = t
  end
end

local function finish(t, ok, ...)
  t.state = "done"
  if ok then
    t.results = pack(...)
  else
    t.error = ...
  end
  t.loop.live = t.loop.live - 1
  for _, w in ipairs(t.waiters) do make_ready(w) end
  t.waiters = {}
end

local function resume(t)
  local previous = current
  current = t
  t.state = "running"
  local args = t.args
  t.args = nil
  local res
  if args then
    res = pack(coroutine.resume(t.co, unpack(args, 1, args.n)))
  else
    res = pack(coroutine.resume(t.co))
  end
  current = previous
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

--- A new loop (not yet running). `run` is the usual way in.
function plain.loop()
  return setmetatable({ ready = {}, timers = {}, live = 0, tasks = {} }, loop_mt)
end

function loop_mt:spawn(fn, ...)
  local t = setmetatable({ waiters = {}, state = "waiting", args = pack(...), loop = self }, task_mt)
  t.co = coroutine.create(fn)
  self.live = self.live + 1
  self.tasks[#self.tasks + 1] = t
  make_ready(t)
  return t
end

function loop_mt:fire_timers(now)
  local timers = self.timers
  local i = 1
  while i <= #timers do
    if timers[i].at <= now then
      make_ready(remove(timers, i).task)
    else
      i = i + 1
    end
  end
end

function loop_mt:step_io()
  local now = core.monotonic()
  self:fire_timers(now)
  if #self.ready > 0 then return end
  local delay = huge
  for _, tm in ipairs(self.timers) do
    if tm.at - now < delay then delay = tm.at - now end
  end
  if io_source and io_source.busy() then
    io_source.step(max(0, min(floor(delay * 1000 + 1), 1000)))
  elseif delay < huge then
    core.sleep(max(0, delay))
  else
    error("digime.run: every task is waiting and nothing can wake them (a wait cycle?)", 0)
  end
  self:fire_timers(core.monotonic())
end

--- Runs ready tasks and waits for I/O and timers until stop() is true or no task is left.
function loop_mt:step_until(stop)
  while self.live > 0 do
    while #self.ready > 0 do
      resume(remove(self.ready, 1))
      if stop and stop() then return end
    end
    if stop and stop() then return end
    if self.live > 0 then self:step_io() end
  end
end

--- Raises the error of a task that failed and that no one waited for.
function loop_mt:check_errors()
  for _, t in ipairs(self.tasks) do
    if t.error and not t.observed then error(t.error, 0) end
  end
end

--- Runs fn(...) as the first task and returns its results once it and every task it spawned
-- have ended. An error in fn is raised again here; so is an error of a spawned task that no
-- one waited for.
function plain.run(fn, ...)
  if type(fn) ~= "function" then
    error("digime.run: expected a function", 2)
  end
  if current then
    error("digime.run: already inside a task (use digime.spawn)", 2)
  end
  local l = plain.loop()
  local main = l:spawn(fn, ...)
  l:step_until(nil)
  if main.error then error(main.error, 0) end
  l:check_errors()
  return unpack(main.results, 1, main.results.n)
end

-- Lua 5.1 (PUC, not LuaJIT) cannot yield across pcall. There, _M.pcall runs its function in
-- a coroutine of its own and passes that coroutine's yields up to the task, whose coroutine it
-- stands for (nested[co] = the task's coroutine); elsewhere it is pcall.
local PUC51 = _VERSION == "Lua 5.1" and rawget(_G, "jit") == nil
local nested = setmetatable({}, { __mode = "k" })

-- The task whose coroutine is the one running now (nil in plain code or a user coroutine).
local function running_task()
  if not current then return nil end
  local co = coroutine.running()
  if co == current.co or (co ~= nil and nested[co] == current.co) then return current end
  return nil
end

--- pcall(f, ...), but f may yield to the scheduler on every Lua (see PUC51 above).
function _M.pcall(f, ...)
  if not PUC51 then return pcall(f, ...) end
  local parent = coroutine.running()
  if parent == nil then return pcall(f, ...) end   -- plain code: nothing to yield to
  local co = coroutine.create(f)
  nested[co] = nested[parent] or parent
  local res = pack(coroutine.resume(co, ...))
  while true do
    if not res[1] then return false, res[2] end
    if coroutine.status(co) == "dead" then return true, unpack(res, 2, res.n) end
    res = pack(coroutine.resume(co, coroutine.yield(unpack(res, 2, res.n))))
  end
end

--- Starts fn(...) as a new task of the running loop; returns the task.
function plain.spawn(fn, ...)
  if type(fn) ~= "function" then
    error("digime.spawn: expected a function", 2)
  end
  local me = running_task()
  if not me then
    error("digime.spawn: must be called from a task of digime.run", 2)
  end
  return me.loop:spawn(fn, ...)
end

--- Waits for the task to end and returns its function's results; nil, err if it raised.
function task_mt:wait()
  if self.state ~= "done" then
    local me = running_task()
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
function plain.sleep(seconds)
  local me = running_task()
  if not me then
    if seconds > 0 then core.sleep(seconds) end
    return
  end
  me.state = "waiting"
  local timers = me.loop.timers
  timers[#timers + 1] = { at = core.monotonic() + seconds, task = me }
  coroutine.yield(WAIT)
end

--- Registers the I/O source the loop waits on when no task is ready (one per process: the
-- libcurl engine, transport/curl_engine.lua). A source is a table of two functions:
--   busy() -> true while it has work in flight (a task may be waiting on it);
--   step(ms) drives the work that is ready, waking (wake) the tasks it concerns, and when it
--     woke none waits up to ms milliseconds for activity and drives again.
function _M.set_io(source)
  io_source = source
end

--- The task of the plain loop whose coroutine runs now, or nil (plain code, or inside nginx).
-- An I/O source suspends a task to wait; given nil, it drives its own work and blocks.
function _M.current()
  return running_task()
end

--- Suspends the running task until wake(task) (called by an I/O source, or a canceller).
function _M.suspend()
  local me = running_task()
  if not me then
    error("scheduler.suspend() must be called from a task of digime.run", 2)
  end
  me.state = "waiting"
  coroutine.yield(WAIT)
end

--- Makes a suspended task ready again; nothing for a task that is not waiting.
_M.wake = make_ready

--- Cancels an in-flight request: the handle a transport put in a caller's `cancel` table
-- carries its own cancel (doc/architecture.md "The transport contract").
function _M.cancel(handle)
  return handle:cancel()
end

local cond_mt = {}
cond_mt.__index = cond_mt

--- A condition tasks can wait on until someone signals it.
function plain.cond()
  return setmetatable({ waiters = {} }, cond_mt)
end

function cond_mt:wait()
  local me = running_task()
  if not me then
    error("cond:wait() must be called from a task of digime.run", 2)
  end
  me.state = "waiting"
  self.waiters[#self.waiters + 1] = me
  coroutine.yield(WAIT)
end

--- Wakes every task waiting now.
function cond_mt:signal()
  local waiters = self.waiters
  self.waiters = {}
  for _, w in ipairs(waiters) do make_ready(w) end
end

local flights = {}

--- Runs fn once for concurrent callers with the same key; all get the same results.
-- Used so that a rotating refresh token is presented once, whoever asks.
function plain.single_flight(key, fn)
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
  local res = pack(_M.pcall(fn))
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

function plain.in_task()
  return running_task() ~= nil
end

--- A loop's tasks changed something a step_until condition may read (a no-op here: the
-- loop re-checks after every step; the nginx loop needs the nudge).
function loop_mt.notify() end

-- Inside nginx, in a phase where a request may yield, tasks are nginx light threads
-- (digime.ngx_scheduler); everywhere else, the plain loop above. Requests of the curl engine
-- always wait through the plain loop (set_io, suspend, wake).
local YIELDABLE = { rewrite = true, server_rewrite = true, access = true, content = true,
                    timer = true, ssl_cert = true, ssl_session_fetch = true,
                    ssl_client_hello = true }
_M.YIELDABLE = YIELDABLE

local ngx_scheduler
local function impl()
  local ngx = rawget(_G, "ngx")
  if type(ngx) == "table" and ngx.get_phase and YIELDABLE[ngx.get_phase()] then
    ngx_scheduler = ngx_scheduler or require "digime.ngx_scheduler"
    return ngx_scheduler
  end
  return plain
end

-- The calls with two implementations (tail calls: an error's level is the caller's).
function _M.run(fn, ...) return impl().run(fn, ...) end
function _M.spawn(fn, ...) return impl().spawn(fn, ...) end
function _M.sleep(seconds) return impl().sleep(seconds) end
function _M.cond() return impl().cond() end
function _M.single_flight(key, fn) return impl().single_flight(key, fn) end
function _M.in_task() return impl().in_task() end
function _M.loop() return impl().loop() end

return _M
