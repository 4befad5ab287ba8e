-- The SDK inside a real nginx (Debian's, with the lua module): the cosocket transport, the
-- phase errors, light-thread concurrency, keep-alive pools, TLS, and the non-blocking proof.
-- Everything talks to the sandbox or to fixtures served by the same nginx over loopback.
-- (The shared-dict JWKS cache and refresh lock across workers: spec/ngx_shared_spec.lua.)
local sandbox = require "sandbox"
local nginx = require "nginx"
local cjson = require "cjson"
local socket = require "socket"

local function get_json(n, path, timeout)
  local status, body = n:get(path, timeout)
  assert(status, "request to nginx failed: " .. tostring(body))
  local ok, doc = pcall(cjson.decode, body)
  assert(ok, "not JSON (" .. tostring(status) .. "): " .. body .. "\n" .. n:error_log():sub(-3000))
  return status, doc
end

local function urlencode(s)
  return (s:gsub("[^%w%-._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

describe("the ngx transport #nginx", function()
  local sb, n, fixtures

  local function transport(query)
    local q = {}
    for k, v in pairs(query) do q[#q + 1] = k .. "=" .. urlencode(tostring(v)) end
    local status, doc = get_json(n, "/transport?" .. table.concat(q, "&"))
    assert.equal(200, status)
    return doc
  end

  setup(function()
    sb = sandbox.start{ args = { "--generate", "24:30000:mixed", "--big-file", "64m" } }
    fixtures = nginx.free_port()
    n = nginx.start{
      http = [[
        lua_shared_dict results 1m;
      ]],
      init = string.format([[
        local app = require "ngx_app"
        local sdk = app.setup{ base_url = %q, onboard_url = %q, cloud_base_url = %q }
        -- preloaded in the master: a call in the init phase must fail cleanly
        local _, err = sdk:get_authorize_url{ contract = app.contract,
          callback = "https://app.example.org/return", state = "s" }
        app.init_phase_error = err
      ]], sb.base_url, sb.onboard_url, sb.cloud_base_url),
      init_worker = [[
        local app = require "ngx_app"
        local _, err = app.sdk:read_accounts{ contract = app.contract,
          user_access_token = { access_token = { value = "a", expiry = 0 },
                                refresh_token = { value = "r", expiry = 0 } } }
        ngx.shared.results:set("init_worker", err and err.kind .. ": " .. err.message or "no error")
      ]],
      server = [[
        location = /flow { content_by_lua_block { require("ngx_app").flow() } }
        location = /transport { content_by_lua_block { require("ngx_app").transport() } }
        location = /fast { content_by_lua_block { ngx.say("fast") } }
        location = /bigfile { content_by_lua_block { require("ngx_app").bigfile() } }
        location = /iterate { content_by_lua_block { require("ngx_app").iterate() } }
        location = /fuzz { content_by_lua_block { require("ngx_app").fuzz() } }
        location = /storage { content_by_lua_block { require("ngx_app").storage() } }
        location = /filter { content_by_lua_block { require("ngx_app").filter() } }
        location = /curl_login { content_by_lua_block {
          local app = require "ngx_app"
          local sdk = assert(require("digime").init{ application_id = app.sdk.config.application_id,
            base_url = app.urls.base_url, onboard_url = app.urls.onboard_url, transport = "curl" })
          local token, err = app.login(sdk)
          app.reply(200, { ok = token ~= nil, transport = sdk.transport == app.sdk.transport,
                           error = token == nil and app.error_view(err) or nil })
        } }
        location = /login { content_by_lua_block {
          local app = require "ngx_app"
          local token, err = app.login()
          app.reply(token and 200 or 500, { ok = token ~= nil, error = token == nil and app.error_view(err) or nil })
        } }
        location = /phase/init { content_by_lua_block {
          local app = require "ngx_app"
          app.reply(200, app.error_view(app.init_phase_error))
        } }
        location = /phase/results { content_by_lua_block {
          local r = ngx.shared.results
          require("ngx_app").reply(200, { init_worker = r:get("init_worker"), log = r:get("log"),
            header_filter = r:get("header_filter") })
        } }
        location = /phase/set {
          set_by_lua_block $phase_error {
            local app = require "ngx_app"
            local _, err = app.sdk:get_authorize_url{ contract = app.contract,
              callback = "https://app.example.org/return", state = "s" }
            return err and err.kind .. ": " .. err.message or "no error"
          }
          content_by_lua_block { ngx.say(ngx.var.phase_error) }
        }
        location = /phase/filters {
          content_by_lua_block { ngx.say("body") }
          header_filter_by_lua_block {
            local app = require "ngx_app"
            local _, err = app.sdk:query_countries{ contract = app.contract }
            ngx.shared.results:set("header_filter", err and err.kind .. ": " .. err.message or "no error")
          }
          log_by_lua_block {
            local app = require "ngx_app"
            local _, err = app.sdk:query_countries{ contract = app.contract }
            ngx.shared.results:set("log", err and err.kind .. ": " .. err.message or "no error")
          }
        }
        location = /phase/timer { content_by_lua_block {
          local app = require "ngx_app"
          local done = false
          ngx.timer.at(0, function()
            local res, err = app.sdk:query_countries{ contract = app.contract }
            ngx.shared.results:set("timer", res and #res.data or ("error: " .. tostring(err)))
            done = true
          end)
          for _ = 1, 500 do
            if done then break end
            ngx.sleep(0.01)
          end
          ngx.say(ngx.shared.results:get("timer"))
        } }
      ]],
      servers = { string.format([[
        listen 127.0.0.1:%d;
        keepalive_timeout 300ms;
        location /fixture/ { content_by_lua_block { require("ngx_app").fixture() } }
      ]], fixtures) },
    }
  end)

  teardown(function()
    if n then n:stop() end
    if sb then sb:stop() end
  end)

  local function fixture(path)
    return "http://127.0.0.1:" .. fixtures .. path
  end

  describe("in nginx's phases", function()
    it("is picked automatically, and a whole flow works: authorize, consent, exchange, sync", function()
      local status, doc = get_json(n, "/flow?concurrency=3", 60)
      assert.equal(200, status, cjson.encode(doc))
      local manifest = sb:control("GET", "manifest")
      assert.equal(manifest.count, doc.count)
      for name, sha in pairs(manifest.files) do
        assert.equal(sha, doc.files[name], name)
      end
      assert.equal("completed", doc.state)
    end)

    it("refuses cleanly, naming the phase, where cosockets are not allowed", function()
      local _, doc = get_json(n, "/phase/init")
      assert.equal("DigiMeSDKError", doc.kind)
      assert.equal("TransportUnavailable", doc.code)
      assert.matches('"init" phase', doc.message, 1, true)

      local status, body = n:get("/phase/set")
      assert.equal(200, status)
      assert.matches('DigiMeSDKError: .*"set" phase', body)

      assert.equal(200, (n:get("/phase/filters")))
      socket.sleep(0.2)   -- the log phase runs after the answer went out
      local _, r = get_json(n, "/phase/results")
      assert.matches('"init_worker" phase', r.init_worker, 1, true)
      assert.matches('"header_filter" phase', r.header_filter, 1, true)
      assert.matches('"log" phase', r.log, 1, true)
      -- nothing was sent: the calls stopped before any request
      assert.is_nil(n:error_log():match("lua entry thread aborted"))
    end)

    it("uses the blocking curl transport when init asks for it", function()
      local status, doc = get_json(n, "/curl_login")
      assert.equal(200, status)
      assert.is_true(doc.ok, cjson.encode(doc))
    end)

    it("works in a timer started from a handler", function()
      local status, body = n:get("/phase/timer")
      assert.equal(200, status)
      assert.matches("^%d+", body)
      assert.is_true(tonumber(body:match("^%d+")) > 0)
    end)
  end)

  it("streams a 64 MiB file through the C decryptor into a sink in bounded memory", function()
    local path = os.tmpname()
    local status, doc = get_json(n, "/bigfile?path=" .. urlencode(path), 120)
    assert.equal(200, status, cjson.encode(doc))
    assert.is_false(doc.has_data)
    local f = assert(io.popen("sha256sum " .. path))
    local sha = f:read("*l"):match("^(%x+)")
    f:close()
    os.remove(path)
    assert.equal(sb:control("GET", "manifest").files["big.bin"], sha)
    local grew = doc.rss_after_kib - doc.rss_before_kib
    assert.is_true(grew < 16 * 1024, "the worker grew by " .. grew .. " KiB for a 64 MiB file")
  end)

  it("streams uploads (content-length and chunked) and downloads of cloud storage", function()
    local status, doc = get_json(n, "/storage", 60)
    assert.equal(200, status, cjson.encode(doc))
    assert.are.same({ ["string.bin"] = true, ["reader.bin"] = true, ["empty.bin"] = true }, doc)
  end)

  it("runs the sdk:files iterator in a handler", function()
    local status, doc = get_json(n, "/iterate", 60)
    assert.equal(200, status, cjson.encode(doc))
    assert.equal(0, doc.failures, cjson.encode(doc.names.err))
    assert.equal(25, #doc.names)   -- 24 generated and big.bin
  end)

  describe("HTTP/1.1", function()
    it("reads content-length, chunked and close-delimited bodies", function()
      local r = transport{ url = fixture("/fixture/big?n=300000") }[1]
      assert.equal(200, r.status)
      assert.equal(300000, r.body_size)
      r = transport{ url = fixture("/fixture/chunked") }[1]
      assert.equal(200, r.status)
      assert.equal("chunked", r.headers["transfer-encoding"])
      assert.equal(5000, r.body_size)
      assert.equal(string.rep("1", 1000), r.body:sub(1, 1000))
      assert.equal(string.rep("5", 1000), r.body:sub(4001))
      r = transport{ url = fixture("/fixture/raw?case=close_delimited") }[1]
      assert.equal(200, r.status)
      assert.equal(100000, r.body_size)
      r = transport{ url = fixture("/fixture/raw?case=chunk_trailers") }[1]
      assert.equal("abcde", r.body)
      r = transport{ url = fixture("/fixture/raw?case=continue") }[1]
      assert.equal(201, r.status)
      assert.equal("ok", r.body)
      r = transport{ url = fixture("/fixture/raw?case=repeated") }[1]
      assert.equal("a, b", r.headers["x-r"])
    end)

    it("turns broken or hostile answers into errors of the right kind", function()
      local cases = {
        truncated = "reset", truncated_chunked = "reset", bad_chunk = "other", huge_chunk = "other",
        bad_status = "other", bad_header = "other", bad_length = "other",
        big_headers = "too_large", endless_header = "too_large", gzip_te = "other",
      }
      for case, kind in pairs(cases) do
        local r = transport{ url = fixture("/fixture/raw?case=" .. case) }[1]
        assert.is_nil(r.status, case)
        assert.equal(kind, r.kind, case .. ": " .. tostring(r.err))
        assert.is_string(r.err)
      end
    end)

    it("survives 1500 randomly damaged answers: a result or an error of a known kind, never a raise", function()
      local tally = {}
      for from = 1, 1500, 500 do
        local status, doc = get_json(n, string.format("/fuzz?port=%d&from=%d&to=%d", fixtures, from, from + 499), 120)
        assert.equal(200, status)
        assert.equal(0, #doc.bad, cjson.encode(doc.bad))
        for k, v in pairs(doc.tally) do tally[k] = (tally[k] or 0) + v end
      end
      -- the mutants reached both ends: some still parse, some break in several ways
      local errors, results = 0, 0
      for k, v in pairs(tally) do
        if k:match("^error") then errors = errors + v else results = results + v end
      end
      assert.is_true(errors > 100 and results > 100, cjson.encode(tally))
      print("answer fuzz outcomes: " .. cjson.encode(tally))
    end)

    it("caps the body and refuses a header that would split the request", function()
      local r = transport{ url = fixture("/fixture/big?n=5000"), max_body = 4096 }[1]
      assert.equal("too_large", r.kind)
      r = transport{ url = fixture("/fixture/chunked"), max_body = 4096 }[1]
      assert.equal("too_large", r.kind)
      r = transport{ url = fixture("/fixture/big"), header = "a\r\nx-injected: 1" }[1]
      assert.equal("request", r.kind)
      assert.matches("line break", r.err)
    end)

    it("times out by the request's deadline, and a refused connection is kind connect", function()
      local t0 = socket.gettime()
      local r = transport{ url = fixture("/fixture/slow?ms=3000"), timeout = 0.5 }[1]
      assert.equal("timeout", r.kind)
      assert.is_true(socket.gettime() - t0 < 2.5)
      r = transport{ url = "http://127.0.0.1:" .. nginx.free_port() .. "/" }[1]
      assert.equal("connect", r.kind)
    end)

    it("takes the timeout as a stall limit: a body that keeps coming outlasts it", function()
      local t0 = socket.gettime()
      -- 12 pieces 0.2 s apart: 2.4 s in all, with timeout = 0.8
      local r = transport{ url = fixture("/fixture/trickle?n=12&ms=200"), timeout = 0.8 }[1]
      assert.equal(200, r.status, tostring(r.err))
      assert.equal("123456789012", r.body)
      assert.is_true(socket.gettime() - t0 > 2)
    end)
  end)

  describe("keep-alive pools", function()
    it("reuses a connection for every kind of request, POSTs too", function()
      local gets = transport{ url = fixture("/fixture/conn"), n = 3 }
      assert.equal(gets[1].body, gets[2].body)
      assert.equal(gets[2].body, gets[3].body)
      local posts = transport{ url = fixture("/fixture/conn"), n = 3, method = "POST" }
      assert.equal(posts[1].body, posts[2].body)
      assert.equal(posts[2].body, posts[3].body)
    end)

    it("sends a GET again on a new connection when the server closed the pooled one", function()
      -- the fixture server closes idle connections after 300 ms
      local gets = transport{ url = fixture("/fixture/conn"), n = 2, pause = 0.6 }
      assert.equal(200, gets[1].status)
      assert.equal(200, gets[2].status, tostring(gets[2].err))
      assert.are_not.equal(gets[1].body, gets[2].body)
    end)
  end)

  it("does not block the worker: a fast location answers while the SDK waits", function()
    -- the sandbox delays the next session request by 1.5 s; nginx runs one worker
    sb:fault{ method = "POST", path = "/v1.7/oauth/authorize", action = "delay", ms = 1500, count = 1 }
    local slow = socket.tcp()
    slow:settimeout(10)
    assert(slow:connect("127.0.0.1", n.port))
    assert(slow:send("GET /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    socket.sleep(0.2)  -- the SDK is now waiting on the sandbox
    local t0 = socket.gettime()
    local status, body = n:get("/fast")
    local fast = socket.gettime() - t0
    assert.equal(200, status)
    assert.equal("fast\n", body)
    local answer = slow:receive("*a")
    local total = socket.gettime() - t0
    slow:close()
    assert.matches("^HTTP/1.1 200", answer)
    assert.is_true(fast < 0.3, "the fast location took " .. fast .. " s")
    assert.is_true(total > 1.0, "the delayed login ended too soon (" .. total .. " s)")
  end)

  describe("body filters", function()
    local core = require "digime.core"
    local demo = require "digime.sandbox.demo_contract"
    local filter_case = require "filter_case"
    local curl = require("digime.transport.curl").new{ tls = { verify = true },
      limits = { body = 2 ^ 30, headers = 256 * 1024 }, timeout = 10, proxy = { http = "", https = "" } }

    local function encrypt(plain)
      local e = core.file_encryptor(core.public_key(demo.public_key))
      return e:update(plain) .. e:finish()
    end

    -- The answer (body, status, compression, chunked) through a file body filter, in nginx
    -- and with the curl transport; both must give the same outcome, which is returned.
    local function both(body, q)
      local url = fixture("/fixture/file?body=" .. core.b64url_encode(body) .. "&status=" .. (q.status or 200)
        .. (q.compression and "&compression=" .. q.compression or "") .. (q.chunked and "&chunked=1" or ""))
      local query = { url = url, sink = q.sink, headers_hook = q.headers_hook }
      local args = {}
      for k, v in pairs(query) do args[#args + 1] = k .. "=" .. urlencode(v) end
      local status, in_ngx = get_json(n, "/filter?" .. table.concat(args, "&"))
      assert.equal(200, status)
      local in_curl = filter_case(curl, query)
      -- how much of a bad file reached the sink before the failure showed depends on how the
      -- body was cut up (the contract: none of it is known good before the end)
      if in_ngx.kind then in_ngx.delivered, in_curl.delivered = nil, nil end
      assert.are.same(in_curl, in_ngx)
      return in_ngx
    end

    local PLAIN = string.rep("the same plaintext, in both transports. ", 30)   -- it goes in a URL

    it("hands a good file's plaintext to the filter's sink or buffer, alike in both transports", function()
      local f = encrypt(PLAIN)
      for _, q in ipairs{ {}, { chunked = true }, { sink = "ok" }, { sink = "ok", chunked = true } } do
        local r = both(f, q)
        assert.are.same({ status = 200, piped = true, data = PLAIN, delivered = #PLAIN },
                        { status = r.status, piped = r.piped, data = r.data, delivered = r.delivered })
        assert.is_nil(r.body)
      end
      local gz = assert(io.popen("printf %s " .. string.format("%q", PLAIN) .. " | gzip -c")):read("*a")
      local r = both(encrypt(gz), { compression = "gzip", sink = "ok" })
      assert.are.equal(PLAIN, r.data)
    end)

    it("reports the filter's failures with the filter's kind and message, alike in both transports", function()
      local f = encrypt(PLAIN)
      local bad_padding = f:sub(1, #f - 17) .. string.char((f:byte(#f - 16) + 1) % 256) .. f:sub(#f - 15)
      local cases = {
        { core.random_bytes(300), {}, "decrypt", "File size not valid: 300" },
        -- without a content-length the key is unwrapped before the size is known
        { core.random_bytes(300), { chunked = true }, "decrypt", "file decryption failed" },
        { bad_padding, { sink = "ok" }, "decrypt", "file decryption failed (wrong key or corrupt data)" },
        { f, { compression = "gzip" }, "decrypt", "gzip:" },
        { f, { headers_hook = "refuse", sink = "ok" }, "decrypt", "no usable x-compression" },
        { f, { sink = "refuse" }, "sink", "the sink failed: full" },
      }
      for i, c in ipairs(cases) do
        local r = both(c[1], c[2])
        assert.are.equal(c[3], r.kind, i .. ": " .. tostring(r.err))
        assert.is_truthy(tostring(r.err):find(c[4], 1, true), i .. ": " .. tostring(r.err))
        assert.is_nil(r.status, i)
      end
    end)

    it("never gives the filter a non-2xx answer: its body is the result's", function()
      local r = both("not here", { status = 404, sink = "ok" })
      assert.are.same({ status = 404, body = "not here", delivered = 0 }, r)
    end)
  end)

  it("downloads concurrently with light threads, under the concurrency cap", function()
    for _, c in ipairs{ 1, 4 } do
      sb:reset()
      sb:fault{ method = "GET", path = "/v1.7/permission-access/query/", match = "prefix",
                action = "delay", ms = 150, count = 200 }
      local status, doc = get_json(n, "/flow?concurrency=" .. c, 60)
      sb:clear_faults()
      assert.equal(200, status, cjson.encode(doc))
      assert.equal(25, doc.count)
      local max = sb:stats().max_inflight_downloads
      assert.is_true(max <= c, c .. ": " .. max .. " downloads at once")
      if c > 1 then assert.is_true(max >= 2, "the downloads did not overlap") end
    end
  end)
end)

describe("the ngx transport over TLS #nginx", function()
  local sb, n, dir

  setup(function()
    sb = sandbox.start{ args = { "--tls", "--host", "localhost" } }
    dir = assert(io.popen("mktemp -d")):read("*l")
    -- a CA that signed nothing the sandbox serves
    assert(os.execute("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=wrong-ca -days 2 "
      .. "-keyout " .. dir .. "/wrong.key -out " .. dir .. "/wrong.pem >/dev/null 2>&1"))
    local handler = [[
      content_by_lua_block {
        local app = require "ngx_app"
        local token, err = app.login()
        app.reply(200, { ok = token ~= nil, error = token == nil and app.error_view(err) or nil })
      }
    ]]
    local transport_location = "\nlocation = /transport { content_by_lua_block { require('ngx_app').transport() } }"
    local wrong_port = nginx.free_port()
    n = nginx.start{
      http = "lua_ssl_verify_depth 2;",
      init = string.format([[ require("ngx_app").setup{ base_url = %q, onboard_url = %q } ]],
                           sb.base_url, sb.onboard_url),
      server = "lua_ssl_trusted_certificate " .. sb.ca_file .. ";\nlocation = /login {" .. handler .. "}"
        .. transport_location,
      servers = { string.format("listen 127.0.0.1:%d;\nlua_ssl_trusted_certificate %s/wrong.pem;\n"
                                .. "location = /login {%s}%s", wrong_port, dir, handler, transport_location) },
    }
    n.wrong_url = "http://127.0.0.1:" .. wrong_port
  end)

  teardown(function()
    if n then n:stop() end
    if sb then sb:stop() end
    if dir then os.execute("rm -rf " .. dir) end
  end)

  it("verifies the sandbox's certificate against lua_ssl_trusted_certificate", function()
    assert.matches("^https://localhost:", sb.base_url)
    local _, doc = get_json(n, "/login")
    assert.is_true(doc.ok, cjson.encode(doc))
  end)

  it("fails with a wrong CA, even right after a verified connection to the same host", function()
    local jwks = urlencode(sb.base_url .. "jwks/oauth")
    -- the right block first, so that a verified keep-alive connection sits in a pool
    local _, right = get_json(n, "/transport?n=2&url=" .. jwks)
    assert.equal(200, right[1].status)
    assert.equal(200, right[2].status)
    local res = assert(sandbox.request{ url = n.wrong_url .. "/transport?url=" .. jwks })
    local wrong = cjson.decode(res.body)
    assert.equal("tls", wrong[1].kind, res.body)
    assert.matches("verif", wrong[1].err)
    res = assert(sandbox.request{ url = n.wrong_url .. "/login" })
    local ok, doc = pcall(cjson.decode, res.body)
    assert(ok, res.status .. " " .. res.body .. n:error_log():sub(-2000))
    assert.is_false(doc.ok)
    assert.equal("NetworkError", doc.error.kind)
    -- one shape for a TLS failure in both transports (security_spec checks curl's)
    assert.equal("TLSError", doc.error.code)
    assert.equal("tls", doc.error.network)
    assert.is_false(doc.error.retryable)
    assert.matches("TLS handshake", doc.error.message)
    assert.matches("verif", doc.error.message)
  end)
end)
