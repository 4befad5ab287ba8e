-- --latency / --bandwidth: a link that is far away, in user space.
--
-- A client's connection is joined to the server through a socket pair; a pump per direction
-- reads what arrives, stamps it with the time it is due on the other side (now + latency/2,
-- never before the chunk ahead of it: order is kept), and writes it then. The first bytes a
-- client sends wait one latency more (the TCP handshake: due no earlier than accept +
-- latency + latency/2), so a request on a new connection costs two round trips and one on a
-- kept-alive connection one. TLS is served on the far end of the pair, behind the delay, so
-- its handshake pays its own round trips. An end (FIN) travels with the same delay.
--
-- With a bandwidth (bytes/s), each direction is one link shared by every connection: a
-- chunk leaves when the link is free and arrives when its last byte would.
--
-- The latency is read for each chunk, so a change (POST /sandbox/latency) applies at once to
-- relayed connections; connections accepted while the latency was 0 stay direct.

local cqueues = require "cqueues"
local cc = require "cqueues.condition"
local cs = require "cqueues.socket"

local monotime = cqueues.monotime
local math_max, math_floor = math.max, math.floor

local _M = {}

local READ = 64 * 1024              -- bytes read at a time
local PIECE = 16 * 1024             -- bytes sent at a time when the bandwidth is capped
local QUEUE_MAX = 4 * 1024 * 1024   -- bytes queued per direction before the reader waits

-- Is a relay wanted for a connection accepted now?
function _M.wanted(cfg)
  return (cfg.latency or 0) > 0 or (cfg.bandwidth or 0) > 0
end

local EOF = {}

-- cqueues' timers wake on whole milliseconds, about 0.2 ms late, and a fraction costs a
-- whole one more: sleeping the whole milliseconds nearest to (wait - 0.2 ms) keeps each hop
-- within half a millisecond of its due time on average (a relayed round trip was ~1.5 ms
-- late).
local function sleep_until(due)
  local ms = math_floor((due - monotime()) * 1000 + 0.3)
  if ms > 0 then
    cqueues.sleep(ms / 1000)
  end
end

-- Writes data, at the link's pace when the bandwidth is capped.
local function send(cfg, to, link, data)
  local bw = cfg.bandwidth or 0
  if bw <= 0 then
    return to:xwrite(data, "bn")
  end
  local i = 1
  while i <= #data do
    local piece = data:sub(i, i + PIECE - 1)
    local now = monotime()
    local start = math_max(now, link.free_at)
    link.free_at = start + #piece / bw
    cqueues.sleep(link.free_at - now)
    local ok, err, errno = to:xwrite(piece, "bn")
    if not ok then
      return nil, err, errno
    end
    i = i + PIECE
  end
  return true
end

-- One direction: from -> to. link = { free_at } shared by the direction's connections.
local function pump(cfg, conn, from, to, link, handshake_at)
  local queue, head, tail, queued = {}, 1, 0, 0
  local cond = cc.new()
  local last_due = 0
  local done = false

  local function reader()
    while not done do
      while queued >= QUEUE_MAX and not done do
        cond:wait()
      end
      local data = from:xread(-READ, "b")
      local now = monotime()
      local due = now + (cfg.latency or 0) / 2000
      if handshake_at then
        due = math_max(due, handshake_at + (cfg.latency or 0) * 1.5 / 1000)
        handshake_at = nil
      end
      due = math_max(due, last_due)
      last_due = due
      tail = tail + 1
      queue[tail] = { due, data or EOF }
      queued = queued + (data and #data or 0)
      cond:signal()
      if not data then
        return
      end
    end
  end

  local function writer()
    while true do
      while head > tail do
        if done then
          return
        end
        cond:wait()
      end
      local item = queue[head]
      queue[head] = nil
      head = head + 1
      sleep_until(item[1])
      local data = item[2]
      if data == EOF then
        to:shutdown("w")
        break
      end
      queued = queued - #data
      cond:signal()
      if not send(cfg, to, link, data) then
        conn.abort()
        break
      end
    end
    done = true
    cond:signal()
  end

  return reader, writer, function()
    done = true
    cond:signal()
  end
end

local links = { up = { free_at = 0 }, down = { free_at = 0 } }

-- Relays client <-> a new pair; returns the pair's server end (to serve as the client's).
-- cq: the controller to run the pumps on.
function _M.join(cq, cfg, client)
  local near, far = cs.pair()
  client:onerror(function(_, _, why) return why end)
  client:setmode("b", "bn")
  near:setmode("b", "bn")
  local conn = {}
  local stops = {}
  local running = 4
  local function finished()
    running = running - 1
    if running == 0 then
      client:close()
      near:close()
    end
  end
  function conn.abort()
    for _, stop in ipairs(stops) do
      stop()
    end
    -- Wakes the readers: they see the end and stop.
    client:shutdown("rw")
    near:shutdown("rw")
  end
  local now = monotime()
  local r1, w1, s1 = pump(cfg, conn, client, near, links.up, now)
  local r2, w2, s2 = pump(cfg, conn, near, client, links.down, nil)
  stops[1], stops[2] = s1, s2
  for _, f in ipairs{ r1, w1, r2, w2 } do
    cq:wrap(function()
      f()
      finished()
    end)
  end
  return far
end

return _M
