-- The sandbox as a network peer: --latency/--bandwidth (a far-away link in user space), its
-- connections (keep-alive timeout, closing on demand, counts, TLS resumption), the
-- connection faults, and requests served concurrently. Raw sockets (luasocket), curl and
-- openssl s_client as clients: nothing of the SDK.

local sandbox = require "sandbox"
local sandbox_hooks = require "sandbox_hooks"
local socket = require "socket"
local cjson = require "cjson"

local function now()
  return socket.gettime()
end

-- A raw HTTP/1.1 client on one connection ---------------------------------------------------

local function connect(sb)
  local c = assert(socket.tcp())
  c:settimeout(10)
  assert(c:connect("127.0.0.1", sb.port))
  c:setoption("tcp-nodelay", true)
  return c
end

local function send(c, method, path, headers, body)
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: 127.0.0.1" }
  for k, v in pairs(headers or {}) do
    lines[#lines + 1] = k .. ": " .. v
  end
  if body then
    lines[#lines + 1] = "Content-Length: " .. #body
    lines[#lines + 1] = "Content-Type: application/json"
  end
  assert(c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")))
end

-- -> { status, headers, body } | nil, err (the connection closed without an answer)
local function receive(c)
  local line, err = c:receive("*l")
  if not line then
    return nil, err
  end
  local res = { status = tonumber(line:match("^HTTP/1%.%d (%d+)")), headers = {} }
  while true do
    local h = assert(c:receive("*l"))
    if h == "" then
      break
    end
    local k, v = h:match("^([^:]+):%s*(.*)$")
    res.headers[k:lower()] = v
  end
  local n = tonumber(res.headers["content-length"] or "0")
  res.body = n > 0 and assert(c:receive(n)) or ""
  return res
end

local function request(c, method, path, headers, body)
  send(c, method, path, headers, body)
  return receive(c)
end

-- Seconds for one GET on connection c.
local function timed(c, path)
  local t0 = now()
  local res = assert(request(c, "GET", path or "/v1.7/jwks/oauth"))
  assert.equal(200, res.status)
  return now() - t0
end

-- True when the server has closed c (reads EOF within `wait` seconds).
local function closed_by_server(c, wait)
  c:settimeout(wait or 3)
  local data, err = c:receive(1)
  return data == nil and err == "closed"
end

local function control(sb, method, path, body)
  local v, status = sb:control(method, path, body)
  assert.equal(200, status, cjson.encode(v))
  return v
end

local function shell(cmd)
  local p = io.popen(cmd .. " 2>/dev/null")
  local out = p:read("*a")
  p:close()
  return out
end

-- curl's time_total of each URL, in one curl (its connections are reused).
local function curl_times(sb, urls, extra)
  local args = { "curl -s --cacert", sandbox.sh_quote(sb.ca_file or "/dev/null"), extra or "" }
  for _, u in ipairs(urls) do
    args[#args + 1] = "-o /dev/null -w '%{time_total}\\n' " .. sandbox.sh_quote(sb.origin .. u)
  end
  local out = shell(table.concat(args, " "))
  local times = {}
  for t in out:gmatch("[%d%.]+") do
    times[#times + 1] = tonumber(t)
  end
  return times
end

local ROUND = 0.1     -- --latency 100

describe("sandbox --latency #timing", function()
  local sb
  sandbox_hooks.own({ args = { "--latency", "100" } }, function(s) sb = s end)

  it("costs two round trips on a new connection and one on a kept-alive one", function()
    local c = connect(sb)
    local first = timed(c)
    local second = timed(c)
    local third = timed(c)
    c:close()
    assert.is_true(first >= 2 * ROUND - 0.005, "first " .. first)
    assert.is_true(first < 2 * ROUND + 0.15, "first " .. first)
    for _, t in ipairs{ second, third } do
      assert.is_true(t >= ROUND - 0.005, "reused " .. t)
      assert.is_true(t < ROUND + 0.1, "reused " .. t)
    end
  end)

  it("is read and changed at run time; new and relayed connections follow", function()
    assert.same({ ms = 100, bandwidth = 0, keepalive = 5 }, control(sb, "GET", "latency"))
    local c = connect(sb)
    timed(c)
    assert.same({ ms = 300, bandwidth = 0, keepalive = 5 },
                control(sb, "POST", "latency", { ms = 300 }))
    local t = timed(c)                       -- the same (relayed) connection
    assert.is_true(t >= 0.3 - 0.005 and t < 0.45, "after the change " .. t)
    c:close()
    control(sb, "POST", "latency", { ms = 0 })
    local c2 = connect(sb)
    t = timed(c2)
    c2:close()
    assert.is_true(t < 0.05, "latency 0 " .. t)
    local list = control(sb, "GET", "connections")
    assert.is_table(list)
    control(sb, "POST", "latency", { ms = 100 })
    local _, status = sb:control("POST", "latency", { ms = -1 })
    assert.equal(400, status)
    _, status = sb:control("POST", "latency", { bandwidth = "fast" })
    assert.equal(400, status)
  end)

  it("carries the server's close half a round trip later, and a client's close", function()
    local c = connect(sb)
    timed(c)
    local t0 = now()
    assert.equal(1, control(sb, "POST", "connections", { close = "idle" }).closed)
    assert.is_true(closed_by_server(c, 2))
    c:close()
    -- The control request reaches the server after 1.5 round trips (a new connection) and
    -- the close then travels back as its answer does: the end arrives after 2.
    local t = now() - t0
    assert.is_true(t >= 2 * ROUND - 0.01 and t < 2 * ROUND + 0.15, "closed after " .. t)
    -- A client that goes: the server sees it, and its connection is no longer open.
    c = connect(sb)
    timed(c)
    c:close()
    socket.sleep(ROUND)
    local list = control(sb, "GET", "connections")
    assert.equal(1, #list)                    -- only the control call's
  end)

  it("keeps the order of bytes and carries a big answer whole", function()
    local c = connect(sb)
    -- Pipelined: three requests in one write; the answers come back whole and in order.
    assert(c:send(("GET /v1.7/jwks/oauth HTTP/1.1\r\nHost: x\r\n\r\n"):rep(2)
                  .. "GET /sandbox/manifest HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
    local a = assert(receive(c))
    local b = assert(receive(c))
    local m = assert(receive(c))
    c:close()
    assert.equal(200, a.status)
    assert.equal(a.body, b.body)
    assert.is_number(cjson.decode(m.body).count)
  end)
end)

describe("sandbox --latency --tls #timing", function()
  local sb
  sandbox_hooks.own({ args = { "--latency", "100", "--tls" } }, function(s) sb = s end)

  it("pays the TLS handshake's round trips on a new connection, one round trip after", function()
    local t = curl_times(sb, { "/v1.7/jwks/oauth", "/v1.7/jwks/oauth" }, "--tlsv1.3")
    assert.equal(2, #t)
    -- TCP handshake + TLS 1.3 handshake + the request: three round trips.
    -- No HelloRetryRequest (X25519 offered), which would cost a fourth.
    assert.is_true(t[1] >= 3 * ROUND - 0.005 and t[1] < 3 * ROUND + 0.08, "new " .. t[1])
    assert.is_true(t[2] >= ROUND - 0.005 and t[2] < ROUND + 0.1, "reused " .. t[2])
    -- TLS 1.2: one more.
    t = curl_times(sb, { "/v1.7/jwks/oauth" }, "--tlsv1.2 --tls-max 1.2")
    assert.is_true(t[1] >= 4 * ROUND - 0.005 and t[1] < 4 * ROUND + 0.2, "TLS 1.2 " .. t[1])
  end)
end)

describe("sandbox connections", function()
  local sb
  sandbox_hooks.own({ args = { "--keepalive", "1", "--tls" } }, function(s) sb = s end, true)

  -- -ign_eof: wait for the server to close (after its answer), so that a TLS 1.3 session
  -- ticket, sent after the handshake, has surely arrived before -sess_out writes the file.
  local function s_client(version, sess_flag, sess_file)
    return shell("printf 'GET /v1.7/jwks/oauth HTTP/1.1\\r\\nHost: x\\r\\nConnection: close"
                 .. "\\r\\n\\r\\n' | openssl s_client -ign_eof " .. version .. " -connect 127.0.0.1:"
                 .. sb.port .. " " .. sess_flag .. " " .. sandbox.sh_quote(sess_file))
  end

  it("takes an X25519 key share at once (no HelloRetryRequest)", function()
    local out = shell("openssl s_client -tls1_3 -msg -connect 127.0.0.1:" .. sb.port
                      .. " </dev/null 2>&1")
    assert.matches("Server Temp Key: X25519", out)
    local hellos = 0
    for _ in out:gmatch("<<< TLS 1%.3, Handshake %[length %x+%], ServerHello") do
      hellos = hellos + 1
    end
    assert.equal(1, hellos)
    assert.is_nil(out:find("HelloRetryRequest", 1, true))
  end)

  it("counts connections, full and resumed TLS handshakes (1.3 and 1.2)", function()
    local before = sb:stats()
    local sess = os.tmpname()
    for _, v in ipairs{ "-tls1_3", "-tls1_2" } do
      os.remove(sess)
      s_client(v, "-sess_out", sess)
      local out = s_client(v, "-sess_in", sess)
      assert.matches("Reused, TLSv1%.[23]", out)
      out = s_client(v, "-sess_in", sess)
      assert.matches("Reused, TLSv1%.[23]", out)
    end
    os.remove(sess)
    local after = sb:stats()
    -- The reset keeps nothing but the control connection's count of open connections;
    -- control requests (luasec, each on a new connection) are full handshakes too.
    assert.equal(4, after.tls_resumed - before.tls_resumed)
    assert.equal(7, after.connections - before.connections)   -- 6 + this stats call
    assert.equal(3, after.tls_handshakes - before.tls_handshakes)
    -- Without the control calls: 2 full, 4 resumed.
    assert.equal(6, after.api_connections - before.api_connections)
    assert.equal(2, after.api_tls_handshakes - before.api_tls_handshakes)
    assert.equal(4, after.api_tls_resumed - before.api_tls_resumed)
  end)
end)

describe("sandbox connections (plain)", function()
  local sb
  sandbox_hooks.own({ args = { "--keepalive", "1", "--big-file", "64m" } }, function(s) sb = s end, true)

  it("numbers connections in the log and counts the most open at once", function()
    local a, b, c = connect(sb), connect(sb), connect(sb)
    timed(a); timed(b); timed(a); timed(c)
    local stats = sb:stats()
    a:close(); b:close(); c:close()
    local log = sb:log()
    assert.equal(4, #log)
    assert.equal(log[1].conn, log[3].conn)
    assert.are_not.equal(log[1].conn, log[2].conn)
    assert.are_not.equal(log[2].conn, log[4].conn)
    assert.same({ 1, 1, 2, 1 }, { log[1].conn_request, log[2].conn_request,
                                   log[3].conn_request, log[4].conn_request })
    assert.is_true(stats.max_connections_open >= 4)          -- three + the stats call's
    assert.is_true(stats.connections >= 4)
    assert.equal(3, stats.api_connections)
  end)

  it("closes an idle keep-alive connection after --keepalive, not a busy one #timing", function()
    local c = connect(sb)
    timed(c)
    local t0 = now()
    assert.is_true(closed_by_server(c, 3))
    local idle = now() - t0
    assert.is_true(idle >= 0.9 and idle < 2, "closed after " .. idle)
    c:close()
    -- A new connection gets 10 s for its first request (a slow TLS client's handshake, say).
    c = connect(sb)
    socket.sleep(1.5)
    assert.is_true(timed(c) < 0.5)
    c:close()
    -- A request that takes longer than the keep-alive timeout keeps its connection.
    sb:fault{ path = "/v1.7/jwks/oauth", action = "delay", ms = 1500 }
    c = connect(sb)
    assert.is_true(timed(c) >= 1.4)
    assert.is_true(timed(c) < 0.5)
    c:close()
  end)

  it("closes idle connections on POST /sandbox/connections, busy ones with close all", function()
    local idle1, idle2 = connect(sb), connect(sb)
    timed(idle1); timed(idle2)
    sb:fault{ path = "/v1.7/jwks/oauth", action = "hang", ms = 3000 }
    local busy = connect(sb)
    send(busy, "GET", "/v1.7/jwks/oauth")
    socket.sleep(0.2)
    local v = control(sb, "POST", "connections", { close = "idle" })
    assert.equal(2, v.closed)
    assert.is_true(closed_by_server(idle1, 1))
    assert.is_true(closed_by_server(idle2, 1))
    busy:settimeout(0.3)
    local _, err = busy:receive(1)
    assert.equal("timeout", err)                  -- still open, still waiting
    v = control(sb, "POST", "connections", { close = "all" })
    assert.equal(1, v.closed)
    assert.is_true(closed_by_server(busy, 2))
    idle1:close(); idle2:close(); busy:close()
    local _, status = sb:control("POST", "connections", { close = "some" })
    assert.equal(400, status)
  end)

  it("fault reset closes without processing, reset after processes, close_after_answer "
     .. "answers then closes silently", function()
    -- Processing a token request uses its JWT's nonce: the same JWT again is a replay.
    local function token_request(c, jwt)
      return request(c, "POST", "/v1.7/oauth/token", { Authorization = "Bearer " .. jwt })
    end
    local jwt = sandbox.sign(sandbox.claims{ grant_type = "refresh_token",
                                             refresh_token = "not-a-token" })
    local c = connect(sb)
    sb:fault{ path = "/v1.7/oauth/token", action = "reset" }
    assert.is_nil(token_request(c, jwt))
    c:close()
    c = connect(sb)
    sb:fault{ path = "/v1.7/oauth/token", action = "reset", after = true }
    assert.is_nil(token_request(c, jwt))                -- not a replay: processed now
    c:close()
    c = connect(sb)
    assert.equal(406, assert(token_request(c, jwt)).status)
    c:close()
    assert.equal(1, sb:stats().nonce_replays)
    assert.equal(0, sb:stats().jwks_fetches)

    c = connect(sb)
    sb:fault{ path = "/v1.7/jwks/oauth", action = "close_after_answer" }
    local res = assert(request(c, "GET", "/v1.7/jwks/oauth"))
    assert.equal(200, res.status)
    assert.is_nil(res.headers.connection)
    assert.is_true(closed_by_server(c, 2))
    c:close()
    assert.equal(1, sb:stats().jwks_fetches)
    local log = sb:log()
    assert.equal("closed after answer", log[#log].outcome)
    -- In a random fault too.
    local id = sb:fault{ path = "/v1.7/jwks/oauth", probability = 1, count = 1,
                         actions = { { action = "close_after_answer" } } }
    assert.is_number(id)
  end)

  it("counts replayed nonces and logs the grant of token requests", function()
    local claims = sandbox.claims{ grant_type = "refresh_token", refresh_token = "not-a-token" }
    local jwt = sandbox.sign(claims)
    local first = assert(sb:call("POST", "oauth/token", { jwt = jwt }))
    local second = assert(sb:call("POST", "oauth/token", { jwt = jwt }))
    assert.are_not.equal(406, first.status)
    assert.equal(406, second.status)
    assert.equal(1, sb:stats().nonce_replays)
    local log = sb:log()
    assert.equal("refresh_token", log[1].grant)
  end)
end)

describe("sandbox concurrency #timing", function()
  local sb
  sandbox_hooks.own({ args = { "--big-file", "64m" } }, function(s) sb = s end, true)

  -- 20 requests, each on a new connection, one after the other: -> the slowest, in seconds
  local function twenty()
    local worst = 0
    for _ = 1, 20 do
      local c = connect(sb)
      local t = timed(c, "/v1.7/jwks/oauth")
      c:close()
      worst = math.max(worst, t)
    end
    return worst
  end

  it("answers others while one request hangs, and while one is delayed", function()
    for _, action in ipairs{ "hang", "delay" } do
      sb:fault{ path = "/v1.7/jwks/oauth", action = action, ms = 5000 }
      local held = connect(sb)
      send(held, "GET", "/v1.7/jwks/oauth")
      socket.sleep(0.1)
      assert.is_true(twenty() < 0.5, action)
      held:close()
    end
  end)

  it("answers others while a big download goes to a reader that does not read", function()
    local slow = connect(sb)
    send(slow, "GET", "/sandbox/raw/big.bin")
    assert(slow:receive("*l"))
    socket.sleep(0.3)                   -- the sandbox fills the socket buffers and waits
    assert.is_true(twenty() < 0.5)
    slow:close()
  end)

  it("answers others while a client sends its request body slowly", function()
    local slow = connect(sb)
    assert(slow:send("POST /sandbox/consent HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"))
    socket.sleep(0.1)
    assert.is_true(twenty() < 0.5)
    slow:close()
  end)
end)

describe("sandbox --bandwidth #timing", function()
  it("caps the bytes per second each way", function()
    local sb = sandbox.start{ args = { "--bandwidth", "1m", "--big-file", "1m" } }
    local c = connect(sb)
    local t0 = now()
    local res = assert(request(c, "GET", "/sandbox/raw/big.bin"))
    local t = now() - t0
    c:close()
    sb:stop()
    assert.equal(200, res.status)
    assert.is_true(#res.body > 1024 * 1024)
    assert.is_true(t >= 0.95 and t < 2, "1 MiB at 1 MiB/s took " .. t)
  end)
end)

describe("sandbox network settings", function()
  it("come from flags and --config, and bad values are refused", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(cjson.encode{ latency = 30, bandwidth = "2m", keepalive = 7 })
    f:close()
    local sb = sandbox.start{ args = { "--config", path } }
    local v = control(sb, "GET", "latency")
    sb:stop()
    assert.same({ ms = 30, bandwidth = 2 * 1024 * 1024, keepalive = 7 }, v)
    sb = sandbox.start{ args = { "--config", path, "--latency", "0", "--keepalive", "2.5" } }
    v = control(sb, "GET", "latency")
    sb:stop()
    os.remove(path)
    assert.same({ ms = 0, bandwidth = 2 * 1024 * 1024, keepalive = 2.5 }, v)
    for _, args in ipairs{ { "--latency", "-1" }, { "--latency", "soon" },
                           { "--bandwidth", "fast" }, { "--keepalive", "0" } } do
      local out = shell("env -u LUA_PATH -u LUA_CPATH " .. sandbox.sh_quote(sandbox.bin) .. " "
                        .. args[1] .. " " .. args[2] .. " 2>&1; echo rc=$?")
      assert.matches("rc=2", out)
      assert.matches(args[1]:sub(3) .. " wants", out)
    end
    local help = shell("env -u LUA_PATH -u LUA_CPATH " .. sandbox.sh_quote(sandbox.bin) .. " --help")
    assert.matches("%-%-latency MS", help)
    assert.matches("%-%-bandwidth RATE", help)
    assert.matches("%-%-keepalive SECONDS", help)
  end)
end)
