--- Coroutine scheduler for plain Lua (the curl transport's world).
-- Inside `run`, a request yields while the C engine works and other tasks go on; outside it,
-- the same call drives the engine itself and blocks. Nothing here runs inside a C callback.
--
-- Loops are objects so that a loop can also be stepped from outside (the `files` iterator
-- runs a sync one file at a time); one engine per process serves every loop.
local core = require "digime.core"

local coroutine, type, select = coroutine, type, select
local unpack = table.unpack or unpack  -- luacheck: ignore 143 113 (5.1 and 5.4)
local ipairs, pairs, setmetatable, error, tostring, pcall = ipairs, pairs, setmetatable, error, tostring, pcall
local rawget = rawget
local remove, huge, min, max, floor = table.remove, math.huge, math.min, math.max, math.floor
local traceback = debug.traceback

local _M = {}

local engine, engine_pid                                   -- made on first use, per process
local current                                              -- the task whose coroutine runs now
local finished = setmetatable({}, { __mode = "k" })        -- request -> true once done
local waiting = setmetatable({}, { __mode = "k" })         -- request -> task awaiting its end
local progress = setmetatable({}, { __mode = "k" })        -- request -> { task, headers } awaiting output
local WAIT = {}                                            -- what tasks yield to their loop

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

-- Hands requests the engine reports finished to the tasks waiting on them, and wakes the
-- tasks that wait for progress (streaming readers). Returns how many tasks it woke.
local function dispatch()
  local woke = 0
  if engine == nil then return 0 end
  local done = engine:finished()
  for i = 1, #done do
    local req = done[i]
    finished[req] = true
    local t = waiting[req]
    if t then
      waiting[req] = nil
      make_ready(t)
      woke = woke + 1
    end
  end
  for req, p in pairs(progress) do
    local buffered, headers_in = req:progress()
    if buffered > 0 or (p.headers and headers_in) then
      progress[req] = nil
      make_ready(p.task)
      woke = woke + 1
    end
  end
  return woke
end

--- A new loop (not yet running). `run` is the usual way in.
function _M.loop()
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
  if engine and engine:count() > 0 then
    engine:perform()
    if dispatch() > 0 then return end
    engine:poll(max(0, min(floor(delay * 1000 + 1), 1000)))
    engine:perform()
    dispatch()
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
function _M.run(fn, ...)
  if type(fn) ~= "function" then
    error("digime.run: expected a function", 2)
  end
  if current then
    error("digime.run: already inside a task (use digime.spawn)", 2)
  end
  local l = _M.loop()
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
function _M.spawn(fn, ...)
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
function _M.sleep(seconds)
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

-- Outside a task: drive the engine until until() holds.
local function drive(until_fn)
  local e = _M.engine()
  while not until_fn() do
    e:perform()
    if dispatch() == 0 and not until_fn() then
      e:poll(100)
    end
  end
end

--- Waits until the engine request is finished: yields inside a task; outside, drives the
-- engine and blocks (handing other loops' finished requests to them on the way).
function _M.await(req)
  if finished[req] then return end
  local me = running_task()
  if me then
    me.state = "waiting"
    waiting[req] = me
    coroutine.yield(WAIT)
    return
  end
  drive(function() return finished[req] end)
end

--- Waits until a streaming response has plaintext to read (or its headers are in, when
-- `headers` is true), or has finished: for readers that drain a body while it is
-- transferred. Returns true once the request has finished.
function _M.await_progress(req, headers)
  if finished[req] then return true end
  local me = running_task()
  if me then
    me.state = "waiting"
    progress[req] = { task = me, headers = headers }
    waiting[req] = me
    coroutine.yield(WAIT)
    progress[req], waiting[req] = nil, nil
    return finished[req] == true
  end
  local e = _M.engine()
  while true do
    e:perform()
    dispatch()
    if finished[req] then return true end
    local buffered, headers_in = req:progress()
    if buffered > 0 or (headers and headers_in) then return false end
    e:poll(100)
  end
end

--- Cancels a request in the engine and wakes whoever waits on it (its result is then
-- "cancelled").
function _M.cancel(req)
  req:cancel()
  finished[req] = true
  local t = waiting[req]
  waiting[req], progress[req] = nil, nil
  if t then make_ready(t) end
end

local cond_mt = {}
cond_mt.__index = cond_mt

--- A condition tasks can wait on until someone signals it.
function _M.cond()
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

function _M.in_task()
  return running_task() ~= nil
end

--- A loop's tasks changed something a step_until condition may read (a no-op here: the
-- loop re-checks after every step; the nginx loop needs the nudge).
function loop_mt.notify() end

-- Inside nginx, in a phase where a request may yield, tasks are nginx light threads
-- (digime.ngx_scheduler); everywhere else, this module's loop. Requests of the curl engine
-- (userdata) are always this module's.
local YIELDABLE = { rewrite = true, server_rewrite = true, access = true, content = true,
                    timer = true, ssl_cert = true, ssl_session_fetch = true,
                    ssl_client_hello = true }
_M.YIELDABLE = YIELDABLE

local ngx_scheduler
local function in_ngx()
  local ngx = rawget(_G, "ngx")
  if type(ngx) ~= "table" or not ngx.get_phase or not YIELDABLE[ngx.get_phase()] then
    return nil
  end
  ngx_scheduler = ngx_scheduler or require "digime.ngx_scheduler"
  return ngx_scheduler
end

for _, name in ipairs{ "run", "spawn", "sleep", "cond", "single_flight", "in_task", "loop" } do
  local plain = _M[name]
  _M[name] = function(...)
    local n = in_ngx()
    if n then return n[name](...) end
    return plain(...)
  end
end

local plain_cancel = _M.cancel
function _M.cancel(req)
  if type(req) == "table" then return req:cancel() end   -- an ngx transport request
  return plain_cancel(req)
end

return _M
