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

-- Starts tiny_server.lua in the background; returns its pid, port and output file.
local function start_server(dir, name, args)
  local out = dir .. "/" .. name .. ".out"
  local inner = ("exec lua5.4 spec/support/tiny_server.lua %s >%s 2>&1"):format(args or "", q(out))
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
  server {
    listen 127.0.0.1:%d ssl http2;
    ssl_certificate %s/srv.pem;
    ssl_certificate_key %s/srv.key;
    location / { add_header X-Multi one; add_header X-Multi two; return 200 "h2 ok"; }
  }
}]]):format(dir, dir, dir, port, dir, dir))
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
end)
