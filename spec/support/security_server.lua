-- A scripted, recording HTTP/1.1 server on 127.0.0.1 for spec/security_spec.lua: the "foreign
-- host" that must never be contacted, the "trusted JWKS host", and the hostile answers (huge
-- header blocks, huge bodies, redirects). Run as a child process:
--
--   lua5.4 spec/support/security_server.lua [TTL_SECONDS]
--
-- It prints its port as the first line, then serves one connection at a time (the SDK opens a
-- fresh connection per attempt) until killed or until the TTL (default 900 s) runs out.
--
-- Control (never recorded):
--   GET  /__log     -> [{"method", "target", "headers"}] every request since the last clear
--   POST /__script  a JSON array of answers, appended; each:
--                   { "method"?, "path" (prefix of the target, default "/"), "count"? (1; -1 =
--                     forever), "status"? (200), "headers"? ([[name, value], ...]),
--                     "body"? (string, or a JSON value), "body_hex"? (bytes as hex),
--                     "pad"? (N: body is {"pad":"xxx..."} with N bytes of padding),
--                     "filler_headers"? (N extra 40-byte headers),
--                     "reset"? (close without an answer),
--                     "endless"? (N: a chunked body of N bytes, sent until the client
--                     closes; the log entry's "sent" says how many bytes went out) }
--   POST /__clear   forget the log and the script
-- Anything unscripted gets a 404 JSON answer (and is recorded).
local socket = require "socket"
local cjson = require "cjson"

local ttl = tonumber(arg[1]) or 900
local deadline = socket.gettime() + ttl

local server = assert(socket.bind("127.0.0.1", 0))
server:settimeout(0.5)
local _, port = server:getsockname()
io.stdout:write(port, "\n")
io.stdout:flush()

local log, script = {}, {}

local function read_request(c)
  local line = assert(c:receive("*l"))
  local method, target = line:match("^(%S+) (%S+) HTTP/1%.%d$")
  assert(method, "bad request line")
  local headers = {}
  while true do
    local h = assert(c:receive("*l"))
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    if name then
      name = name:lower()
      headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
    end
  end
  local len = tonumber(headers["content-length"] or 0) or 0
  local body = len > 0 and assert(c:receive(len)) or ""
  return { method = method, target = target, headers = headers, body = body }
end

local reasons = { [200] = "OK", [301] = "Moved Permanently", [302] = "Found", [303] = "See Other",
  [307] = "Temporary Redirect", [308] = "Permanent Redirect", [404] = "Not Found",
  [500] = "Internal Server Error" }

local function respond(c, status, headers, body)
  local out = { ("HTTP/1.1 %d %s\r\n"):format(status, reasons[status] or "Status") }
  for _, h in ipairs(headers) do
    out[#out + 1] = h[1] .. ": " .. tostring(h[2]) .. "\r\n"
  end
  out[#out + 1] = "Content-Length: " .. #body .. "\r\nConnection: close\r\n\r\n"
  c:send(table.concat(out))
  -- A client that refuses the answer closes early: the send then fails, which is fine.
  local i = 1
  while i <= #body do
    local last, err, partial = c:send(body, i, math.min(#body, i + 65535))
    if not last then
      if err ~= "timeout" then return end
      i = (partial or i - 1) + 1
    else
      i = last + 1
    end
  end
end

-- A chunked body of up to limit bytes, 64 KiB a chunk, until the client closes: -> bytes sent.
local function respond_endless(c, status, headers, limit)
  local out = { ("HTTP/1.1 %d %s\r\n"):format(status, reasons[status] or "Status") }
  for _, h in ipairs(headers) do
    out[#out + 1] = h[1] .. ": " .. tostring(h[2]) .. "\r\n"
  end
  out[#out + 1] = "Transfer-Encoding: chunked\r\n\r\n"
  if not c:send(table.concat(out)) then return 0 end
  -- 16-byte numbered records: no two pieces of the body are equal, so that a client that
  -- interns strings (LuaJIT) cannot fold what it buffers into a few copies
  local records, sent, i = {}, 0, 0
  while sent < limit do
    i = i + 1
    for j = 1, 4096 do records[j] = ("%08x%07x\n"):format(i, j) end
    local last, _, partial = c:send("10000\r\n" .. table.concat(records) .. "\r\n")
    if not last then   -- closed by the client (or stalled for the socket's timeout)
      return sent + math.max(0, (partial or 0) - 7)
    end
    sent = sent + 65536
  end
  c:send("0\r\n\r\n")
  return sent
end

local function json_answer(c, status, value)
  respond(c, status, { { "Content-Type", "application/json" } }, cjson.encode(value))
end

local function handle(c)
  local req = read_request(c)
  if req.target == "/__log" then
    return respond(c, 200, { { "Content-Type", "application/json" } },
                   #log == 0 and "[]" or cjson.encode(log))
  elseif req.target == "/__script" then
    for _, e in ipairs(cjson.decode(req.body)) do script[#script + 1] = e end
    return json_answer(c, 200, { ok = true })
  elseif req.target == "/__clear" then
    log, script = {}, {}
    return json_answer(c, 200, { ok = true })
  end
  log[#log + 1] = { method = req.method, target = req.target, headers = req.headers }
  local entry
  for i, e in ipairs(script) do
    local path = e.path or "/"
    if (e.method == nil or e.method == req.method) and req.target:sub(1, #path) == path then
      local count = e.count or 1
      if count > 0 then
        count = count - 1
        if count == 0 then table.remove(script, i) end
        e.count = count
      end
      entry = e
      break
    end
  end
  if not entry then
    return json_answer(c, 404, { error = { code = "NotFound", message = "nothing scripted" } })
  end
  if entry.reset then return end
  if entry.endless then
    log[#log].sent = respond_endless(c, entry.status or 200, entry.headers or {}, entry.endless)
    return
  end
  local headers = {}
  for _, h in ipairs(entry.headers or {}) do headers[#headers + 1] = h end
  for i = 1, entry.filler_headers or 0 do
    headers[#headers + 1] = { ("X-Filler-%06d"):format(i), ("f"):rep(24) }
  end
  local body = entry.body
  if entry.body_hex then
    body = entry.body_hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
  elseif entry.pad then
    body = '{"pad":"' .. ("x"):rep(entry.pad) .. '"}'
  elseif type(body) == "table" then
    body = cjson.encode(body)
  end
  if type(entry.body) == "table" or entry.pad then
    headers[#headers + 1] = { "Content-Type", "application/json" }
  end
  return respond(c, entry.status or 200, headers, body or "")
end

while socket.gettime() < deadline do
  local c = server:accept()
  if c then
    c:settimeout(10)
    local ok, err = pcall(handle, c)
    if not ok then io.stderr:write("security_server: ", tostring(err), "\n") end
    c:close()
  end
end
