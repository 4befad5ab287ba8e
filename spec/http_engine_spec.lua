-- The libcurl multi engine (core.http_engine) against real loopback servers: tiny_server.lua
-- as a child process (plain and TLS), sockets that never answer or refuse, and nginx for
-- HTTP/2 when it is installed.
local core = require "digime.core"
local socket = require "socket"
local cjson = require "cjson"
local sh = require "shell"
local q = sh.quote

local function now() return socket.gettime() end

-- Under valgrind or ASan (scripts/run-specs.sh) time bounds stretch.
local SLOW = os.getenv("DIGIME_SANITIZED") and 5 or 1

-- Starts tiny_server.lua (or another server script) in the background; returns its pid, port
-- and output file.
local function start_server(dir, name, args, script)
  local out = dir .. "/" .. name .. ".out"
  local inner = ("exec lua5.4 %s %s >%s 2>&1"):format(q(script or "spec/support/tiny_server.lua"),
                                                      args or "", q(out))
  local p = assert(io.popen("sh -c " .. q(inner) .. " & echo $!"))
  local pid = assert(tonumber(p:read("*l")), "no pid")
  p:close()
  local deadline, port = now() + 10
  repeat
    local f = io.open(out, "rb")
    port = f and tonumber(f:read("*l"))
    if f then f:close() end
    if not port then socket.sleep(0.02) end
  until port or now() > deadline
  assert(port, "tiny_server did not start: " .. (select(2, pcall(sh.read, out)) or ""))
  return { pid = pid, port = port, out = out }
end

local function stop(pid)
  if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
end

-- A port nothing listens on.
local function closed_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return port
end

-- Tests pass proxy = false so that a proxy set in CI's environment cannot step in.
local function opts(t)
  if t.proxy == nil then t.proxy = false end
  return t
end

-- Drives the engine until every request in reqs has been reported by finished().
local function drive(engine, reqs, seconds)
  local want, left = {}, #reqs
  for _, r in ipairs(reqs) do want[r] = true end
  local deadline = now() + (seconds or 10)
  while left > 0 do
    engine:perform()
    for _, done in ipairs(engine:finished()) do
      assert(want[done], "finished() reported a request twice or one not asked for")
      want[done] = nil
      left = left - 1
    end
    if left == 0 then break end
    assert(now() < deadline, "requests did not finish in time")
    engine:poll(50)
  end
end

local function fetch(engine, t)
  local r = engine:add(opts(t))
  drive(engine, { r })
  return r:result()
end

-- A loopback server for streamed request bodies, written out and run like tiny_server.lua
-- (tiny_server reads content-length bodies only, and always whole).
local BODY_SERVER = [==[
-- A loopback server for streamed request bodies (HTTP/1.1, one coroutine per connection).
-- Prints its port, then serves until killed or its ttl (60 s) runs out.
--   POST /echo[?delay_ms=N&piece=K]   reads the body (content-length or chunked; K bytes at a
--        time, N ms apart), answers 200 with it and x-size, x-chunked, x-content-length
--   POST /early?code=N   answers N at once (connection: close) without reading the body,
--        then drains what comes until the client closes
--   POST /cut?after=N    reads N bytes of the body, then closes without an answer
local socket = require "socket"
local ttl = tonumber(arg[1]) or 60
local server = assert(socket.bind("127.0.0.1", 0))
server:settimeout(0)
io.stdout:write(select(2, server:getsockname()), "\n")
io.stdout:flush()

local function wait(err, conn)
  if err == "timeout" then coroutine.yield("r", conn) else error({ closed = err }) end
end
local function receive(conn, pattern)
  local partial = ""
  while true do
    local data, err, part = conn:receive(pattern, partial)
    if data then return data end
    partial = part or ""
    wait(err, conn)
  end
end
local function send(conn, data)
  local i = 1
  while i <= #data do
    local last, err, lastpart = conn:send(data, i)
    if last then return end
    i = (lastpart or i - 1) + 1
    if err ~= "timeout" then error({ closed = err }) end
    coroutine.yield("w", conn)
  end
end
local function sleep(s) coroutine.yield("sleep", socket.gettime() + s) end

-- The body, piece by piece: calls each(piece) until its end.
local function read_body(conn, req, piece, each)
  if req.headers["transfer-encoding"] == "chunked" then
    while true do
      local size = tonumber(receive(conn, "*l"):match("^%x+"), 16)
      if size == 0 then
        while receive(conn, "*l") ~= "" do end
        return
      end
      while size > 0 do
        local n = math.min(size, piece)
        each(receive(conn, n))
        size = size - n
      end
      receive(conn, "*l")
    end
  end
  local left = tonumber(req.headers["content-length"] or 0)
  while left > 0 do
    local n = math.min(left, piece)
    each(receive(conn, n))
    left = left - n
  end
end

local function answer(conn, status, headers, body)
  local lines = { ("HTTP/1.1 %d X\r\n"):format(status) }
  for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. v .. "\r\n" end
  lines[#lines + 1] = "Content-Length: " .. #body .. "\r\n\r\n" .. body
  send(conn, table.concat(lines))
end

local function handle(conn)
  conn:settimeout(0)
  while true do
    local line = receive(conn, "*l")
    local method, path = line:match("^(%S+) (%S+) HTTP/1%.%d$")
    local req = { method = method, path = path, headers = {}, query = {} }
    for k, v in (path:match("%?(.*)") or ""):gmatch("([^&=]+)=([^&]*)") do req.query[k] = tonumber(v) or v end
    while true do
      local h = receive(conn, "*l")
      if h == "" then break end
      local name, value = h:match("^([^:]+):%s*(.-)%s*$")
      req.headers[name:lower()] = value
    end
    local route = path:match("^/(%w+)")
    if route == "early" then
      answer(conn, req.query.code or 413, { Connection = "close" }, "refused early")
      pcall(read_body, conn, req, 65536, function() end)
      return
    elseif route == "cut" then
      local got = 0
      pcall(read_body, conn, req, 1, function(p)
        got = got + #p
        if got >= req.query.after then error({ closed = "cut" }) end
      end)
      return
    else
      local parts, size = {}, 0
      read_body(conn, req, req.query.piece or 65536, function(p)
        parts[#parts + 1] = p
        size = size + #p
        if req.query.delay_ms then sleep(req.query.delay_ms / 1000) end
      end)
      answer(conn, 200, { ["X-Size"] = size, ["X-Chunked"] = tostring(req.headers["transfer-encoding"] == "chunked"),
        ["X-Content-Length"] = req.headers["content-length"] or "none", ["X-Method"] = method },
        table.concat(parts))
    end
  end
end

local waiting, deadline = {}, socket.gettime() + ttl
local function resume(co)
  local ok, what, x = coroutine.resume(co)
  if not ok then
    if type(what) ~= "table" then io.stderr:write("body_server: ", tostring(what), "\n") end
    waiting[co] = nil
  elseif coroutine.status(co) == "dead" then waiting[co] = nil
  else waiting[co] = { what, x } end
end
while socket.gettime() < deadline do
  local recvt, sendt, by, ready, timeout, now = { server }, {}, {}, {}, 1, socket.gettime()
  for co, w in pairs(waiting) do
    if w[1] == "sleep" then
      if w[2] <= now then ready[#ready + 1] = co else timeout = math.min(timeout, w[2] - now) end
    else
      by[w[2]] = co
      local l = w[1] == "r" and recvt or sendt
      l[#l + 1] = w[2]
    end
  end
  if #ready > 0 then timeout = 0 end
  local r, w = socket.select(recvt, sendt, timeout)
  for _, s in ipairs(r) do
    if s == server then
      local c = server:accept()
      if c then
        local co = coroutine.create(function() local ok = pcall(handle, c); c:close() end)
        resume(co)
      end
    elseif by[s] then ready[#ready + 1] = by[s] end
  end
  for _, s in ipairs(w) do if by[s] then ready[#ready + 1] = by[s] end end
  local done = {}
  for _, co in ipairs(ready) do
    if not done[co] and waiting[co] then done[co] = true; resume(co) end
  end
end
]==]

-- Streams pieces into a new request with body_stream, driving the engine. A piece goes when
-- progress() says there is room (o.eager: whenever, so that write() meets a full buffer);
-- o.gap seconds pass between pieces (a slow writer); o.finish = false leaves the body open;
-- Returns the request and a log: full (writes
-- refused for a full buffer), closed ({ message, kind } when write said no more body can
-- go), finish (finish_body's results), first_ready (progress() before anything was done).
local function stream(engine, t, pieces, o)
  o = o or {}
  local r = engine:add(opts(t))
  local log = { full = 0, first_ready = { r:progress() } }
  local i, pos, closed, done, next_at = 1, 1, false, false, 0
  local deadline = now() + (o.seconds or 20) * SLOW
  while not done do
    engine:perform()
    for _, d in ipairs(engine:finished()) do
      if d == r then done = true end
    end
    -- a writer that heeds progress() writes once per round; an eager one until refused
    local again = not done
    while again and not closed and now() >= next_at and (o.eager or r:progress() > 0) do
      again = o.eager
      if pieces[i] then
        local n, msg, kind = r:write(pieces[i], pos)
        if n == nil then
          closed, log.closed = true, { msg, kind }
        elseif n == false then
          log.full, again = log.full + 1, false
        else
          pos = pos + n
          if pos > #pieces[i] then
            i, pos, next_at = i + 1, 1, now() + (o.gap or 0)
          end
        end
      elseif o.finish ~= false then
        log.finish = { r:finish_body() }
        closed = true
      end
    end
    if not done then
      assert(now() < deadline, "the streamed request did not end in time")
      engine:poll(o.gap and 5 or 20)
    end
  end
  return r, log
end

-- s cut in n-byte pieces.
local function pieces_of(s, n)
  local t = {}
  for i = 1, #s, n do t[#t + 1] = s:sub(i, i + n - 1) end
  return t
end

describe("http engine", function()
  local dir, plain, tls, base, tls_base, engine

  setup(function()
    dir = sh.tmpdir()
    local function run(cmd) assert(sh.run(cmd)) end
    local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    run(("cd %s && openssl req -x509 %s -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca"):format(q(dir), ec))
    run(("cd %s && openssl req -x509 %s -keyout wrong.key -out wrong.pem -days 2 -subj /CN=wrong-ca")
      :format(q(dir), ec))
    run(("cd %s && openssl req %s -keyout srv.key -out srv.csr -subj /CN=localhost"):format(q(dir), ec))
    sh.write(dir .. "/ext.cnf", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
      .. "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run(("cd %s && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
      .. " -out srv.pem -days 2 -extfile ext.cnf"):format(q(dir)))
    run(("mkdir %s/capath && cp %s/ca.pem %s/capath/ && openssl rehash %s/capath")
      :format(q(dir), q(dir), q(dir), q(dir)))
    plain = start_server(dir, "plain", "--ttl 300")
    tls = start_server(dir, "tls", ("--ttl 300 --tls %s %s"):format(q(dir .. "/srv.pem"), q(dir .. "/srv.key")))
    base = "http://127.0.0.1:" .. plain.port
    tls_base = "https://127.0.0.1:" .. tls.port
  end)

  teardown(function()
    stop(plain and plain.pid)
    stop(tls and tls.pid)
    sh.rmdir(dir)
  end)

  before_each(function() engine = core.http_engine() end)
  after_each(function() engine:close() end)

  describe("answers", function()
    it("gets a response with status, headers, body, version and time", function()
      local res = assert(fetch(engine, { url = base .. "/ok" }))
      assert.equal(200, res.status)
      assert.equal("application/json", res.headers["content-type"])
      assert.equal("11", res.headers["content-length"])
      assert.same({ ok = true }, cjson.decode(res.body))
      assert.equal("1.1", res.http_version)
      assert.is_true(type(res.time) == "number" and res.time > 0 and res.time < 5)
    end)

    it("returns 4xx and 5xx as responses", function()
      for _, code in ipairs{ 404, 503 } do
        local res = assert(fetch(engine, { url = base .. "/status?code=" .. code }))
        assert.equal(code, res.status)
      end
    end)

    it("lower-cases header names and joins repeated headers in order", function()
      local res = assert(fetch(engine, { url = base .. "/headers" }))
      assert.equal("a=1, b=2", res.headers["set-cookie"])
      assert.equal("one, two", res.headers["x-multi"])
      assert.equal("Value", res.headers["x-mixed-case"])
      assert.is_nil(res.headers["X-Mixed-Case"])
      assert.equal("headers", res.body)
    end)

    it("keeps only the final response's headers after a 100 Continue", function()
      local res = assert(fetch(engine, { url = base .. "/continue" }))
      assert.equal(200, res.status)
      assert.is_nil(res.headers["x-interim"])
      assert.equal("application/json", res.headers["content-type"])
    end)

    it("gives a 2xx body as a bytes object with body_bytes, sized or chunked; other answers as strings", function()
      for _, chunked in ipairs{ "", "&chunked=1" } do
        local res = assert(fetch(engine, { url = base .. "/big?n=300000" .. chunked, body_bytes = true }))
        assert.equal(200, res.status)
        assert.equal("userdata", type(res.body))
        assert.equal(300000, res.body:len())
        assert.equal(300000, #res.body)
        local as_string = assert(fetch(engine, { url = base .. "/big?n=300000" .. chunked }))
        assert.equal(as_string.body, res.body:string())
        res.body:free()
        assert.equal(0, res.body:len())
        assert.equal("", res.body:string())
        res.body:free()
      end
      local res = assert(fetch(engine, { url = base .. "/status?code=404", body_bytes = true }))
      assert.equal(404, res.status)
      assert.equal("string", type(res.body))
    end)

    it("hands a bytes body to core.file_list_index without a copy (the bytes object is left empty)", function()
      local text = '{"status":{"state":"completed"},"fileList":[{"name":"a","updatedDate":1}]}'
      local path = os.tmpname()
      local f = assert(io.open(path, "wb"))
      f:write(text)
      f:close()
      local res = assert(fetch(engine, { url = base .. "/file?path=" .. path, body_bytes = true }))
      os.remove(path)
      local index = assert(core.file_list_index(res.body))
      assert.equal(0, res.body:len())
      assert.equal(1, index:count())
      assert.same({ "a", 1 }, { index:name(1) })
      -- an empty bytes object is an empty text: not JSON
      assert.is_nil(core.file_list_index(res.body))
    end)

    it("returns the same result table on every call", function()
      local r = engine:add(opts{ url = base .. "/ok" })
      drive(engine, { r })
      assert.equal(r:result(), r:result())
    end)
  end)

  describe("requests", function()
    it("sends a binary POST body unchanged, with its length and no invented content-type", function()
      local body = "a\0b\r\n\255\0end\0"
      local res = assert(fetch(engine, { method = "POST", url = base .. "/echo", body = body }))
      local echo = cjson.decode(res.body)
      assert.equal("POST", echo.method)
      assert.equal(body, echo.body)
      assert.equal(tostring(#body), echo.headers["content-length"])
      assert.is_nil(echo.headers["content-type"])
      assert.is_nil(echo.headers["expect"])
    end)

    it("sends a large POST body without waiting for 100-continue #timing", function()
      local body = ("0123456789abcdef"):rep(128 * 1024)  -- 2 MiB
      local t0 = now()
      local res = assert(fetch(engine, { method = "POST", url = base .. "/echo", body = body,
        headers = { ["content-type"] = "application/octet-stream" } }))
      local echo = cjson.decode(res.body)
      assert.equal(#body, #echo.body)
      assert.equal("application/octet-stream", echo.headers["content-type"])
      assert.is_nil(echo.headers["expect"])
      assert.is_true(now() - t0 < 0.9, "libcurl waited for a 100-continue")
    end)

    it("sends content-length 0 for a POST, PUT or PATCH without a body", function()
      for _, m in ipairs{ "POST", "PUT", "PATCH" } do
        local echo = cjson.decode(assert(fetch(engine, { method = m, url = base .. "/echo" })).body)
        assert.equal(m, echo.method)
        assert.equal("0", echo.headers["content-length"])
        assert.equal("", echo.body)
      end
    end)

    it("sends other methods as given, with or without a body", function()
      local echo = cjson.decode(assert(fetch(engine, { method = "DELETE", url = base .. "/echo" })).body)
      assert.equal("DELETE", echo.method)
      assert.is_nil(echo.headers["content-length"])
      echo = cjson.decode(assert(fetch(engine, { method = "PUT", url = base .. "/echo", body = "x=1" })).body)
      assert.same({ "PUT", "x=1" }, { echo.method, echo.body })
      echo = cjson.decode(assert(fetch(engine, { method = "PROPFIND", url = base .. "/echo" })).body)
      assert.equal("PROPFIND", echo.method)
    end)

    it("sends headers given as a map or as an array of lines", function()
      local echo = cjson.decode(assert(fetch(engine, { url = base .. "/echo",
        headers = { ["X-Token"] = "Bearer abc", ["x-empty"] = "" } })).body)
      assert.equal("Bearer abc", echo.headers["x-token"])
      assert.equal("", echo.headers["x-empty"])
      echo = cjson.decode(assert(fetch(engine, { url = base .. "/echo",
        headers = { "X-One: 1", "X-Two: two words" } })).body)
      assert.equal("1", echo.headers["x-one"])
      assert.equal("two words", echo.headers["x-two"])
    end)

    it("sends HEAD without reading a body", function()
      local res = assert(fetch(engine, { method = "HEAD", url = base .. "/ok" }))
      assert.equal(200, res.status)
      assert.equal("", res.body)
      assert.equal("11", res.headers["content-length"])
      -- a HEAD's content-length is no reason for max_body to fail it
      res = assert(fetch(engine, { method = "HEAD", url = base .. "/big?n=5000", max_body = 10 }))
      assert.equal("5000", res.headers["content-length"])
    end)

    it("does not follow redirects unless asked", function()
      local res = assert(fetch(engine, { url = base .. "/redirect" }))
      assert.equal(302, res.status)
      assert.equal("/ok", res.headers.location)
      res = assert(fetch(engine, { url = base .. "/redirect", follow = true }))
      assert.equal(200, res.status)
      assert.same({ ok = true }, cjson.decode(res.body))
      assert.is_nil(res.headers.location)
    end)

    it("refuses schemes other than http and https", function()
      local res, err, kind = fetch(engine, { url = "file:///etc/passwd" })
      assert.is_nil(res)
      assert.equal("other", kind)
      assert.is_string(err)
    end)
  end)

  describe("concurrency", function()
    it("runs requests in parallel #timing", function()
      local reqs, t0 = {}, now()
      for i = 1, 5 do reqs[i] = engine:add(opts{ url = base .. "/delay?ms=300" }) end
      drive(engine, reqs)
      local elapsed = now() - t0
      for _, r in ipairs(reqs) do assert.equal(200, assert(r:result()).status) end
      assert.is_true(elapsed < 1.0, ("5 x 300 ms took %.2f s"):format(elapsed))
    end)

    it("carries 50 requests on one engine", function()
      local reqs = {}
      for i = 1, 50 do reqs[i] = engine:add(opts{ url = base .. "/echo?i=" .. i }) end
      assert.equal(50, engine:count())
      drive(engine, reqs)
      assert.equal(0, engine:count())
      for i, r in ipairs(reqs) do
        assert.equal("/echo?i=" .. i, cjson.decode(assert(r:result()).body).path)
      end
    end)

    it("reuses the connection for sequential requests", function()
      local a = cjson.decode(assert(fetch(engine, { url = base .. "/echo" })).body)
      local b = cjson.decode(assert(fetch(engine, { url = base .. "/echo" })).body)
      assert.equal(a.client_port, b.client_port)
      assert.equal(a.requests + 1, b.requests)
    end)

    it("reports whether a transfer made a new connection (connects)", function()
      local a = assert(fetch(engine, { url = base .. "/echo" }))
      local b = assert(fetch(engine, { url = base .. "/echo" }))
      assert.equal(1, a.connects)
      assert.equal(0, b.connects)
      local c = assert(fetch(engine, { url = base .. "/echo", fresh_connect = true }))
      assert.equal(1, c.connects)
    end)

    it("frees a reported request on close(), and refuses to while it is in the engine", function()
      local r = engine:add(opts{ url = base .. "/delay?ms=200" })
      assert.has_error(function() r:close() end, "http request is still in its engine (cancel it first)")
      drive(engine, { r })
      assert.equal(200, assert(r:result()).status)
      r:close()
      r:close()   -- twice is fine
      assert.has_error(function() r:result() end, "http request is freed")
    end)

    it("keeps engines independent", function()
      local other = core.http_engine()
      local r1 = engine:add(opts{ url = base .. "/delay?ms=100" })
      local r2 = other:add(opts{ url = base .. "/ok" })
      drive(other, { r2 })
      assert.equal(1, engine:count())
      assert.has_error(function() r1:result() end)
      drive(engine, { r1 })
      assert.equal(200, assert(r1:result()).status)
      other:close()
    end)
  end)

  describe("failures", function()
    it("times out", function()
      local t0 = now()
      local res, err, kind = fetch(engine, { url = base .. "/delay?ms=2000", timeout = 0.2 })
      assert.is_nil(res)
      assert.equal("timeout", kind)
      assert.matches("[Tt]imed? ?out", err)
      assert.is_true(now() - t0 < 1.0 * SLOW)
    end)

    it("times out on a server that accepts nothing and never answers", function()
      local silent = assert(socket.bind("127.0.0.1", 0))
      local _, port = silent:getsockname()
      local t0 = now()
      local res, _, kind = fetch(engine, { url = "http://127.0.0.1:" .. port .. "/", timeout = 0.3 })
      silent:close()
      assert.is_nil(res)
      assert.equal("timeout", kind)
      assert.is_true(now() - t0 < 1.5 * SLOW)
    end)

    it("reports a refused connection as connect", function()
      local res, err, kind = fetch(engine, { url = "http://127.0.0.1:" .. closed_port() .. "/" })
      assert.is_nil(res)
      assert.equal("connect", kind)
      assert.is_string(err)
    end)

    it("reports a name that does not resolve as resolve", function()
      local _, _, kind = fetch(engine, { url = "http://does-not-exist.invalid/" })
      assert.equal("resolve", kind)
    end)

    it("reports a connection closed without an answer as reset", function()
      local res, _, kind = fetch(engine, { url = base .. "/reset" })
      assert.is_nil(res)
      assert.equal("reset", kind)
    end)

    it("reports a connection closed in the middle of the headers as reset", function()
      local res, _, kind = fetch(engine, { url = base .. "/reset?partial=1" })
      assert.is_nil(res)
      assert.equal("reset", kind)
    end)

    it("reports a body shorter than its content-length as reset", function()
      local res, _, kind = fetch(engine, { url = base .. "/truncate" })
      assert.is_nil(res)
      assert.equal("reset", kind)
    end)

    it("enforces max_body with and without a content-length", function()
      local res, err, kind = fetch(engine, { url = base .. "/big?n=100000", max_body = 1000 })
      assert.is_nil(res)
      assert.equal("too_large", kind)
      assert.is_string(err)
      res, err, kind = fetch(engine, { url = base .. "/big?n=100000&chunked=1", max_body = 1000 })
      assert.is_nil(res)
      assert.equal("too_large", kind)
      assert.matches("max_body", err)
      res = assert(fetch(engine, { url = base .. "/big?n=1000&chunked=1", max_body = 1000 }))
      assert.equal(("x"):rep(1000), res.body)
      res = assert(fetch(engine, { url = base .. "/big?n=300000" }))
      assert.equal(300000, #res.body)
    end)

    it("enforces max_headers", function()
      local res, err, kind = fetch(engine, { url = base .. "/headers?n=100", max_headers = 1000 })
      assert.is_nil(res)
      assert.equal("too_large", kind)
      assert.matches("max_headers", err)
      res = assert(fetch(engine, { url = base .. "/headers?n=100" }))
      assert.equal(("f"):rep(24), res.headers["x-filler-00100"])
    end)
  end)

  describe("TLS", function()
    it("verifies the server against the right CA, by file or by directory", function()
      local res = assert(fetch(engine, { url = tls_base .. "/ok", cafile = dir .. "/ca.pem" }))
      assert.equal(200, res.status)
      res = assert(fetch(engine, { url = "https://localhost:" .. tls.port .. "/ok",
        cafile = dir .. "/ca.pem" }))
      assert.equal(200, res.status)
      res = assert(fetch(engine, { url = tls_base .. "/ok", capath = dir .. "/capath",
        cafile = dir .. "/wrong.pem" }))
      assert.equal(200, res.status)
    end)

    it("fails with kind tls against a wrong CA", function()
      local res, err, kind = fetch(engine, { url = tls_base .. "/ok", cafile = dir .. "/wrong.pem" })
      assert.is_nil(res)
      assert.equal("tls", kind)
      assert.is_string(err)
    end)

    it("skips verification with verify = false", function()
      local res = assert(fetch(engine, { url = tls_base .. "/ok", cafile = dir .. "/wrong.pem",
        verify = false }))
      assert.equal(200, res.status)
    end)

    it("falls back to HTTP/1.1 when the server offers no HTTP/2", function()
      local res = assert(fetch(engine, { url = tls_base .. "/echo", cafile = dir .. "/ca.pem",
        method = "POST", body = "x\0y" }))
      assert.equal("1.1", res.http_version)
      assert.equal("x\0y", cjson.decode(res.body).body)
    end)

    local with_nginx = sh.run("command -v nginx") and it or pending
    with_nginx("speaks HTTP/2 with nginx (when installed), and HTTP/1.1 with http2 = false", function()
      local port = closed_port()
      local conf = dir .. "/nginx.conf"
      sh.write(conf, ([[
daemon off;
worker_processes 1;
error_log %s/nginx-error.log;
pid %s/nginx.pid;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %s/nginx-body;
  proxy_temp_path %s/nginx-proxy;
  client_max_body_size 100m;
  # nginx's workers may not write to the spec's temporary directory: bodies stay in memory
  client_body_buffer_size 4m;
  proxy_buffering off;
  server {
    listen 127.0.0.1:%d ssl http2;
    ssl_certificate %s/srv.pem;
    ssl_certificate_key %s/srv.key;
    location / { add_header X-Multi one; add_header X-Multi two; return 200 "h2 ok"; }
    location /echo { proxy_pass http://127.0.0.1:%d; }
  }
}]]):format(dir, dir, dir, dir, port, dir, dir, plain.port))
      local p = assert(io.popen(("sh -c %s & echo $!"):format(q(("exec nginx -p %s -c %s -e %s >/dev/null 2>&1")
        :format(q(dir), q(conf), q(dir .. "/nginx-error.log"))))))
      local pid = tonumber(p:read("*l"))
      p:close()
      finally(function() stop(pid) end)
      local url = "https://127.0.0.1:" .. port .. "/"
      local deadline = now() + 5
      while not socket.connect("127.0.0.1", port) do
        assert(now() < deadline, "nginx did not start")
        socket.sleep(0.05)
      end
      local res = assert(fetch(engine, { url = url, cafile = dir .. "/ca.pem" }))
      assert.same({ 200, "2", "h2 ok", "one, two" },
        { res.status, res.http_version, res.body, res.headers["x-multi"] })
      res = assert(fetch(engine, { url = url, cafile = dir .. "/ca.pem", http2 = false }))
      assert.same({ 200, "1.1", "h2 ok" }, { res.status, res.http_version, res.body })
      -- Streamed bodies over HTTP/2 (DATA frames, no chunked coding), known length or not:
      -- read by nginx (which passes them on to tiny_server's /echo) from a writer slow enough
      -- that the upload pauses between pieces; and answered by nginx before it reads them
      -- (`return`), which libcurl 7.88 alone would wait on until the timeout.
      local data = core.random_bytes(300000)
      for _, length in ipairs{ #data, false } do
        local r = stream(engine, { method = "POST", url = url .. "echo", cafile = dir .. "/ca.pem",
                                   body_stream = true, body_length = length or nil, body_buffer = 16384 },
                         pieces_of(data, 30000), { gap = 0.01 })
        res = assert(r:result())
        assert.same({ 200, "2" }, { res.status, res.http_version }, res.body)
        assert.is_true(cjson.decode(res.body).body == data)
        local t0 = now()
        r = stream(engine, { method = "POST", url = url, cafile = dir .. "/ca.pem", body_stream = true,
                             body_length = length and 8 * #data or nil, body_buffer = 16384 },
                   pieces_of(data:rep(8), 65536), { eager = true, seconds = 5 })
        res = assert(r:result())
        assert.same({ 200, "2", "h2 ok" }, { res.status, res.http_version, res.body })
        assert.is_true(now() - t0 < 2 * SLOW)
      end
    end)
  end)

  describe("cancel and close", function()
    it("cancels a request in flight", function()
      local slow = engine:add(opts{ url = base .. "/delay?ms=2000" })
      local fast = engine:add(opts{ url = base .. "/ok" })
      engine:perform()
      assert.is_true(slow:cancel())
      assert.equal(1, engine:count())
      local res, err, kind = slow:result()
      assert.same({ nil, "cancelled" }, { res, kind })
      assert.is_string(err)
      assert.is_false(slow:cancel())
      drive(engine, { fast })  -- would fail if finished() reported the cancelled request
      assert.equal(0, engine:count())
      assert.is_false(fast:cancel())
      assert.equal(200, assert(fast:result()).status)
    end)

    it("close cancels everything in flight; results remain readable", function()
      local reqs = {}
      for i = 1, 3 do reqs[i] = engine:add(opts{ url = base .. "/delay?ms=1000" }) end
      engine:perform()
      engine:close()
      engine:close()
      assert.equal(0, engine:count())
      for _, r in ipairs(reqs) do
        local res, _, kind = r:result()
        assert.is_nil(res)
        assert.equal("cancelled", kind)
        assert.is_false(r:cancel())
      end
      assert.has_error(function() engine:perform() end, "http engine is closed")
      assert.has_error(function() engine:poll(0) end)
      assert.has_error(function() engine:finished() end)
      assert.has_error(function() engine:add(opts{ url = base .. "/ok" }) end)
    end)

    it("keeps a finished request's result after its engine is closed and collected", function()
      local r = (function()
        local e = core.http_engine()
        local req = e:add(opts{ url = base .. "/ok" })
        drive(e, { req })
        e:close()
        return req
      end)()
      collectgarbage()
      collectgarbage()
      assert.equal(200, assert(r:result()).status)
    end)

    it("survives the collection of engines with requests in flight", function()
      for _ = 1, 3 do
        (function()
          local e = core.http_engine()
          for _ = 1, 5 do e:add(opts{ url = base .. "/delay?ms=500" }) end
          e:add(opts{ url = base .. "/ok" })
          e:perform()
          e:poll(20)
          e:perform()
        end)()
        collectgarbage()
        collectgarbage()
      end
      -- a request alone keeps its engine alive
      local r = core.http_engine():add(opts{ url = base .. "/delay?ms=300" })
      collectgarbage()
      collectgarbage()
      assert.has_error(function() r:result() end, "http request has not finished")
      r = nil  -- luacheck: ignore 311
      collectgarbage()
      collectgarbage()
      assert.equal(200, assert(fetch(engine, { url = base .. "/ok" })).status)
    end)
  end)

  describe("misuse raises", function()
    local function raises(t, pattern)
      local ok, err = pcall(engine.add, engine, t)
      assert.is_false(ok)
      if pattern then assert.matches(pattern, tostring(err), 1, true) end
    end

    it("on unknown or mistyped options", function()
      raises({ url = base, bogus = 1 }, "unknown option 'bogus'")
      raises({ url = base, [1] = "x" }, "option names must be strings")
      raises({ method = "GET" }, "option 'url' is required")
      raises({ url = 42 }, "option 'url' must be a string")
      raises({ url = base, timeout = "1" }, "option 'timeout' must be a number")
      raises({ url = base, timeout = -1 }, "option 'timeout' must be a non-negative")
      raises({ url = base, connect_timeout = 0 / 0 }, "option 'connect_timeout'")
      raises({ url = base, verify = "yes" }, "option 'verify' must be a boolean")
      raises({ url = base, http2 = 1 }, "option 'http2' must be a boolean")
      raises({ url = base, follow = "no" }, "option 'follow' must be a boolean")
      raises({ url = base, body = 12 }, "option 'body' must be a string")
      raises({ url = base, headers = "X: y" }, "option 'headers' must be a table")
      raises({ url = base, max_body = 1.5 }, "option 'max_body' must be an integer")
      raises({ url = base, max_headers = -1 }, "option 'max_headers'")
      raises({ url = base, proxy = true }, "option 'proxy' must be a string")
      raises({ url = base .. "\0x" }, "must not contain NUL")
      raises({ url = base, method = "GET X" }, "invalid method")
      raises({ url = base, method = "HEAD", body = "x" }, "HEAD")
      raises("not a table")
    end)

    it("on bad headers", function()
      raises({ url = base, headers = { "X-A: 1\r\nX-B: 2" } }, "CR, LF or NUL")
      raises({ url = base, headers = { ["X-A"] = "1\nX-B: 2" } }, "CR, LF or NUL")
      raises({ url = base, headers = { ["X-A\r\n"] = "1" } }, "CR, LF or NUL")
      raises({ url = base, headers = { ["X A"] = "1" } }, "invalid header name")
      raises({ url = base, headers = { ["X-A:"] = "1" } }, "invalid header name")
      raises({ url = base, headers = { "no colon" } }, "Name: value")
      raises({ url = base, headers = { ["X-A"] = 1 } }, "header value must be a string")
      raises({ url = base, headers = { [true] = "x" } }, "headers must be")
      assert.equal(0, engine:count())
    end)

    it("on results asked too early and on wrong arguments", function()
      local r = engine:add(opts{ url = base .. "/delay?ms=200" })
      assert.has_error(function() r:result() end, "http request has not finished")
      assert.has_error(function() engine:poll(-1) end)
      assert.has_error(function() engine:poll("x") end)
      assert.has_error(function() engine.perform(r) end)
      assert.has_error(function() r.result(engine) end)
      drive(engine, { r })
      assert.equal(200, assert(r:result()).status)
    end)
  end)

  describe("streamed request bodies", function()
    local body_srv, bbase

    setup(function()
      sh.write(dir .. "/body_server.lua", BODY_SERVER)
      body_srv = start_server(dir, "body", "300", dir .. "/body_server.lua")
      bbase = "http://127.0.0.1:" .. body_srv.port
    end)

    teardown(function() stop(body_srv and body_srv.pid) end)

    it("sends a known length with content-length, binary bytes unchanged", function()
      local data = core.random_bytes(300000) .. "\0\r\n0\r\n\r\n"
      local r, log = stream(engine, { method = "POST", url = bbase .. "/echo", body_stream = true,
                                      body_length = #data }, pieces_of(data, 7000))
      assert.same({ true }, log.finish)
      local res = assert(r:result())
      assert.equal(200, res.status)
      assert.equal(tostring(#data), res.headers["x-content-length"])
      assert.equal("false", res.headers["x-chunked"])
      assert.is_true(res.body == data)
      assert.equal("POST", res.headers["x-method"])
    end)

    it("sends an unknown length chunked, and other methods as given", function()
      local data = core.random_bytes(100000)
      local r = stream(engine, { method = "PUT", url = bbase .. "/echo", body_stream = true },
                       pieces_of(data, 3000))
      local res = assert(r:result())
      assert.same({ "true", "none", "PUT" },
        { res.headers["x-chunked"], res.headers["x-content-length"], res.headers["x-method"] })
      assert.is_true(res.body == data)
    end)

    it("sends empty bodies: a length of 0, and an unknown length that ends at once", function()
      local r = stream(engine, { method = "POST", url = bbase .. "/echo", body_stream = true,
                                 body_length = 0 }, {})
      local res = assert(r:result())
      assert.same({ "0", "false", "" }, { res.headers["x-content-length"], res.headers["x-chunked"], res.body })
      r = stream(engine, { method = "PATCH", url = bbase .. "/echo", body_stream = true }, {})
      res = assert(r:result())
      assert.same({ "none", "true", "0", "" },
        { res.headers["x-content-length"], res.headers["x-chunked"], res.headers["x-size"], res.body })
    end)

    it("reports room only once libcurl asks for the body, and never against a closed port", function()
      local r = engine:add(opts{ method = "POST", url = bbase .. "/echo", body_stream = true,
                                 body_buffer = 4096 })
      assert.same({ 0, false, 4096 }, { r:progress() })
      -- a writer may still fill the buffer early
      assert.equal(3, r:write("abc"))
      assert.same({ 0, false, 4093 }, { r:progress() })
      local deadline = now() + 5 * SLOW
      repeat
        engine:perform()
        engine:poll(10)
        assert(now() < deadline, "libcurl never asked for the body")
      until r:progress() > 0
      assert.same({ true }, { r:finish_body() })
      drive(engine, { r })
      assert.equal("abc", assert(r:result()).body)

      local lost = engine:add(opts{ method = "POST", url = "http://127.0.0.1:" .. closed_port() .. "/",
                                    body_stream = true })
      deadline = now() + 5 * SLOW
      local done = false
      while not done do
        engine:perform()
        for _, d in ipairs(engine:finished()) do done = done or d == lost end
        assert.equal(0, (lost:progress()))
        assert(now() < deadline)
        if not done then engine:poll(10) end
      end
      assert.equal("connect", select(3, lost:result()))
    end)

    it("pauses for a slow writer and resumes on each write, known length and chunked #timing", function()
      for _, length in ipairs{ 10 * 1000, false } do
        local data = core.random_bytes(10 * 1000)
        local t0 = now()
        local r = stream(engine, { method = "POST", url = bbase .. "/echo", body_stream = true,
                                   body_length = length or nil, body_buffer = 1024 },
                         pieces_of(data, 1000), { gap = 0.03 })
        local res = assert(r:result())
        assert.is_true(res.body == data)
        assert.is_true(now() - t0 >= 0.27, "the request did not wait for its writer")
      end
    end)

    it("holds a writer at the buffer's size while the server reads slowly", function()
      local data = core.random_bytes(4 * 1024 * 1024)
      local r, log = stream(engine, { method = "POST", url = bbase .. "/echo?piece=65536&delay_ms=5",
                                      body_stream = true, body_length = #data, body_buffer = 65536 },
                            pieces_of(data, 50000), { eager = true })
      assert.is_true(log.full > 0, "write() never found the buffer full")
      assert.is_true(assert(r:result()).body == data)
    end)

    it("fails a body longer or shorter than body_length at once, with kind body", function()
      local r, log = stream(engine, { method = "POST", url = bbase .. "/echo", body_stream = true,
                                      body_length = 10 }, { "0123456", "789ab" })
      assert.equal("body", log.closed[2])
      assert.matches("longer than its body_length (10 bytes)", log.closed[1], 1, true)
      local res, err, kind = r:result()
      assert.same({ nil, "body" }, { res, kind })
      assert.equal(log.closed[1], err)
      assert.equal(0, engine:count())

      r, log = stream(engine, { method = "POST", url = bbase .. "/echo", body_stream = true,
                                body_length = 10 }, { "0123" })
      assert.same({ nil, "the streamed body ended after 4 of its 10 bytes (body_length)", "body" }, log.finish)
      assert.same({ nil, "body" }, { (r:result()), select(3, r:result()) })
      assert.equal(0, engine:count())
    end)

    it("cancels in the middle of a body; later writes say so", function()
      local r = engine:add(opts{ method = "POST", url = bbase .. "/echo", body_stream = true,
                                 body_length = 100 })
      assert.equal(10, r:write(("x"):rep(10)))
      engine:perform()
      assert.is_true(r:cancel())
      assert.same({ nil, "request cancelled", "cancelled" }, { r:write("more") })
      assert.same({ nil, "request cancelled", "cancelled" }, { r:finish_body() })
      assert.equal("cancelled", select(3, r:result()))
      assert.equal(0, engine:count())
    end)

    it("returns an error answer that comes before the body is all sent", function()
      local data = core.random_bytes(8 * 1024 * 1024)
      for _, length in ipairs{ #data, false } do
        local r, log = stream(engine, { method = "POST", url = bbase .. "/early?code=413", body_stream = true,
                                        body_length = length or nil, body_buffer = 65536 },
                              pieces_of(data, 65536), { eager = true })
        local res = assert(r:result())
        assert.same({ 413, "refused early" }, { res.status, res.body })
        assert.is_nil(log.finish)
        if log.closed then assert.equal("ended", log.closed[2]) end
      end
    end)

    it("reports a transfer that fails while the writer still has data", function()
      local data = core.random_bytes(4 * 1024 * 1024)
      local r, log = stream(engine, { method = "POST", url = bbase .. "/cut?after=100000", body_stream = true,
                                      body_length = #data, body_buffer = 65536 },
                            pieces_of(data, 65536), { eager = true })
      local res, _, kind = r:result()
      assert.is_nil(res)
      assert.equal("reset", kind)
      assert.is_nil(log.finish)
      if log.closed then assert.equal("reset", log.closed[2]) end
    end)

    it("refuses misuse", function()
      local function raises(t, pattern)
        local ok, err = pcall(engine.add, engine, opts(t))
        assert.is_false(ok)
        assert.matches(pattern, tostring(err), 1, true)
      end
      raises({ url = bbase, method = "POST", body = "x", body_stream = true },
             "option 'body' cannot be given with body_stream")
      raises({ url = bbase, method = "POST", body_length = 3 }, "option 'body_length' needs body_stream")
      raises({ url = bbase, method = "POST", body_buffer = 3 }, "option 'body_buffer' needs body_stream")
      raises({ url = bbase, method = "POST", body_stream = true, body_length = -1 }, "option 'body_length'")
      raises({ url = bbase, method = "POST", body_stream = true, body_length = 1.5 }, "must be an integer")
      raises({ url = bbase, method = "POST", body_stream = true, body_buffer = 0 }, "option 'body_buffer'")
      raises({ url = bbase, method = "POST", body_stream = "yes" }, "option 'body_stream' must be a boolean")
      raises({ url = bbase, body_stream = true }, "a GET or HEAD request cannot stream a body")
      raises({ url = bbase, method = "HEAD", body_stream = true }, "a GET or HEAD request cannot stream a body")
      assert.equal(0, engine:count())
      local plain_req = engine:add(opts{ url = bbase .. "/echo", method = "POST", body = "x" })
      assert.has_error(function() plain_req:write("x") end, "http request has no streamed body (body_stream)")
      assert.has_error(function() plain_req:finish_body() end)
      local r = engine:add(opts{ url = bbase .. "/echo", method = "POST", body_stream = true })
      assert.has_error(function() r:write(5) end)
      assert.has_error(function() r:write("abc", 0) end)
      assert.has_error(function() r:write("abc", 5) end)
      assert.equal(0, r:write("abc", 4))
      assert.equal(2, r:write("abc", 2))
      assert.is_true(r:write(nil))
      assert.has_error(function() r:write("x") end, "the streamed body is already finished")
      assert.has_error(function() r:finish_body() end, "the streamed body is already finished")
      drive(engine, { plain_req, r })
      assert.equal("bc", assert(r:result()).body)
      assert.same({ nil, "the request ended before its body was all sent", "ended" }, { r:write(nil) })
    end)

    it("frees a request collected with its body half written", function()
      for _ = 1, 3 do
        (function()
          local r = engine:add(opts{ method = "POST", url = bbase .. "/echo", body_stream = true,
                                     body_length = 1000 })
          r:write(("y"):rep(500))
          engine:perform()
        end)()
      end
      engine:close()
      collectgarbage()
      collectgarbage()
    end)
  end)

  describe("curl transport with a reader body", function()
    local curl = require "digime.transport.curl"
    local digime = require "digime"
    local scheduler = require "digime.scheduler"
    local body_srv, bbase, transport

    setup(function()
      sh.write(dir .. "/body_server2.lua", BODY_SERVER)
      body_srv = start_server(dir, "body2", "300", dir .. "/body_server2.lua")
      bbase = "http://127.0.0.1:" .. body_srv.port
      transport = curl.new{ tls = { verify = true }, limits = { body = 2 ^ 30, headers = 256 * 1024 },
                            timeout = 20 * SLOW, proxy = { http = "", https = "" } }
    end)

    teardown(function() stop(body_srv and body_srv.pid) end)

    -- A reader over pieces that counts its calls (and may sleep through the scheduler).
    local function reader(pieces, pause)
      local r = { calls = 0 }
      local i = 0
      r.read = function()
        r.calls = r.calls + 1
        if pause then scheduler.sleep(pause) end
        i = i + 1
        return pieces[i]
      end
      return r
    end

    it("sends a reader's chunks with body_length, or chunked without; \"\" is skipped", function()
      local data = core.random_bytes(3 * 1024 * 1024 + 5)
      local p = pieces_of(data, 100000)
      table.insert(p, 2, "")
      local rd = reader(p)
      local res = assert(transport:request{ method = "POST", url = bbase .. "/echo", body = rd.read,
                                            body_length = #data })
      assert.same({ 200, tostring(#data), "false" },
        { res.status, res.headers["x-content-length"], res.headers["x-chunked"] })
      assert.is_true(res.body == data)
      assert.equal(#p + 1, rd.calls)   -- and not once more after the nil
      res = assert(transport:request{ method = "PUT", url = bbase .. "/echo", body = reader(p).read })
      assert.same({ "true", "PUT" }, { res.headers["x-chunked"], res.headers["x-method"] })
      assert.is_true(res.body == data)
      res = assert(transport:request{ method = "POST", url = bbase .. "/echo", body = "as a string" })
      assert.same({ "11", "as a string" }, { res.headers["x-content-length"], res.body })
    end)

    it("runs readers that yield side by side inside digime.run #timing", function()
      local t0 = now()
      local bodies = digime.run(function()
        local tasks = {}
        for k = 1, 3 do
          tasks[k] = digime.spawn(function()
            local res = assert(transport:request{ method = "POST", url = bbase .. "/echo",
              body = reader({ "a", "b", "c", "d", tostring(k) }, 0.05).read })
            return res.body
          end)
        end
        local out = {}
        for k = 1, 3 do out[k] = tasks[k]:wait() end
        return out
      end)
      assert.same({ "abcd1", "abcd2", "abcd3" }, bodies)
      assert.is_true(now() - t0 < 0.6 * SLOW, "the readers did not run side by side")
    end)

    it("aborts with kind body when the reader fails, and never calls it again", function()
      for _, case in ipairs{
        { function() return nil, "disk on fire" end, "the body reader failed: disk on fire" },
        { function() error("boom", 0) end, "the body reader failed: it raised: boom" },
        { function() return 42 end, "the body reader failed: it returned a number, not a string" },
      } do
        local calls, first = 0, true
        local read = function()
          calls = calls + 1
          if first then
            first = false
            return ("z"):rep(1000)
          end
          return case[1]()
        end
        local res, err, kind = transport:request{ method = "POST", url = bbase .. "/echo", body = read }
        assert.same({ nil, case[2], "body" }, { res, err, kind })
        assert.equal(2, calls)
      end
    end)

    it("fails a reader that breaks body_length with kind body", function()
      local res, err, kind = transport:request{ method = "POST", url = bbase .. "/echo",
        body = reader{ "0123" }.read, body_length = 10 }
      assert.same({ nil, "body" }, { res, kind })
      assert.matches("ended after 4 of its 10 bytes", err, 1, true)
      res, err, kind = transport:request{ method = "POST", url = bbase .. "/echo",
        body = reader{ "0123456789", "x" }.read, body_length = 10 }
      assert.same({ nil, "body" }, { res, kind })
      assert.matches("longer than its body_length", err, 1, true)
    end)

    it("leaves the reader untouched when the request never reaches the server", function()
      local rd = reader{ "never" }
      local res, _, kind = transport:request{ method = "POST", body = rd.read,
                                              url = "http://127.0.0.1:" .. closed_port() .. "/" }
      assert.same({ nil, "connect", 0 }, { res, kind, rd.calls })
    end)

    it("returns an answer that comes before the body is all sent; the reader stops", function()
      local block = core.random_bytes(65536)
      local calls = 0
      local res = assert(transport:request{ method = "POST", url = bbase .. "/early?code=401",
        body = function()
          calls = calls + 1
          if calls <= 256 then return block end
        end })
      assert.same({ 401, "refused early" }, { res.status, res.body })
      assert.is_true(calls < 256, "the reader was read to its end")
    end)

    it("refuses a reader with a body filter, and a reader on a GET", function()
      local filter = require("digime.body_filter").new{ open = function() end }
      local _, err, kind = transport:request{ method = "POST", url = bbase .. "/echo", body = reader{}.read,
                                              body_filter = filter }
      assert.equal("request", kind)
      assert.matches("streamed body with a body filter", err, 1, true)
      _, err, kind = transport:request{ method = "GET", url = bbase .. "/echo", body = reader{}.read }
      assert.equal("request", kind)
      assert.matches("cannot stream a body", err, 1, true)
    end)
  end)
end)
