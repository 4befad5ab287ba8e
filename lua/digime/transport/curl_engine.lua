--- The process's libcurl engine (digime.core's http_engine) and the waits on its requests,
-- for transport/curl.lua only. Inside a task of digime.run a wait suspends the task and the
-- engine is the scheduler's I/O source (scheduler.set_io): the loop drives it when no task is
-- ready and this module wakes the tasks whose requests moved. Outside a task a wait drives the
-- engine itself and blocks, handing other loops' requests to them on the way.
local core = require "digime.core"
local scheduler = require "digime.scheduler"

local pairs, setmetatable = pairs, setmetatable

local _M = {}

local engine, engine_pid                                   -- made on first use, per process
local finished = setmetatable({}, { __mode = "k" })        -- request -> true once done
-- request -> { task, progress = wake on output, headers = wake on the headers too }
local watching = setmetatable({}, { __mode = "k" })

-- Hands requests the engine reports finished to the tasks waiting on them, and wakes the
-- tasks that wait for progress (a body to drain, room for a body, the headers). Returns how
-- many tasks it woke.
local function dispatch()
  local woke = 0
  local done = engine:finished()
  for i = 1, #done do
    local req = done[i]
    finished[req] = true
    local w = watching[req]
    if w then
      watching[req] = nil
      scheduler.wake(w.task)
      woke = woke + 1
    end
  end
  for req, w in pairs(watching) do
    if w.progress then
      local ready, headers_in = req:progress()
      if ready > 0 or (w.headers and headers_in) then
        watching[req] = nil
        scheduler.wake(w.task)
        woke = woke + 1
      end
    end
  end
  return woke
end

-- The scheduler's view of the engine (scheduler.set_io).
local source = {
  busy = function()
    return engine ~= nil and engine:count() > 0
  end,
  step = function(ms)
    engine:perform()
    if dispatch() > 0 then return end
    engine:poll(ms)
    engine:perform()
    dispatch()
  end,
}

--- The process's engine (made again after a fork, so parent and child share nothing).
function _M.engine()
  local pid = core.pid()
  if engine == nil or engine_pid ~= pid then
    engine, engine_pid = core.http_engine(), pid
    scheduler.set_io(source)
  end
  return engine
end

--- Waits until the request has finished, or, with `progress`, until it has work for the caller
-- (output to read, or room for more of its body; with `headers` also once its headers are in).
-- Returns true once the request has finished.
function _M.await(req, progress, headers)
  if finished[req] then return true end
  local me = scheduler.current()
  if me then
    watching[req] = { task = me, progress = progress, headers = headers }
    scheduler.suspend()
    watching[req] = nil
    return finished[req] == true
  end
  local e = _M.engine()
  while true do
    e:perform()
    local woke = dispatch()
    if finished[req] then return true end
    if progress then
      local ready, headers_in = req:progress()
      if ready > 0 or (headers and headers_in) then return false end
    end
    if woke == 0 then e:poll(100) end
  end
end

--- Cancels a request and wakes whoever waits on it (its result is then "cancelled").
function _M.cancel(req)
  req:cancel()
  finished[req] = true
  local w = watching[req]
  watching[req] = nil
  if w then scheduler.wake(w.task) end
end

return _M
