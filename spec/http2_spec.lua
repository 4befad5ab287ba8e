-- HTTP/2 where the server offers it (ALPN over TLS): requests started together share one
-- connection (the engine waits for the first connection to learn whether it multiplexes,
-- rather than opening one per request). The server is the machine's nginx with
-- `listen ... ssl http2` (the sandbox speaks HTTP/1.1 only).
local core = require "digime.core"
local nginx = require "nginx"
local sh = require "shell"
local socket = require "socket"

describe("HTTP/2 #nginx", function()
  local dir, n, h2_port

  setup(function()
    dir = sh.tmpdir()
    local q = sh.quote
    local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    assert(sh.run(("cd %s && openssl req -x509 %s -keyout ca.key -out ca.pem -days 2 -subj /CN=h2-ca")
      :format(q(dir), ec)))
    assert(sh.run(("cd %s && openssl req %s -keyout srv.key -out srv.csr -subj /CN=localhost")
      :format(q(dir), ec)))
    sh.write(dir .. "/ext.cnf", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
      .. "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    assert(sh.run(("cd %s && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
      .. " -out srv.pem -days 2 -extfile ext.cnf"):format(q(dir))))
    h2_port = nginx.free_port()
    n = nginx.start{
      servers = { string.format([[
        listen 127.0.0.1:%d ssl http2;
        ssl_certificate %s/srv.pem;
        ssl_certificate_key %s/srv.key;
        location = /slow {
          content_by_lua_block {
            ngx.sleep(0.3)
            ngx.header["content-type"] = "text/plain"
            ngx.say(ngx.var.connection, " ", ngx.var.connection_requests)
          }
        }
      ]], h2_port, dir, dir) },
    }
  end)

  teardown(function()
    if n then n:stop() end
    if dir then sh.rmdir(dir) end
  end)

  it("multiplexes requests started together on one connection", function()
    local engine = core.http_engine()
    local url = "https://127.0.0.1:" .. h2_port .. "/slow"
    local reqs = {}
    for i = 1, 6 do
      reqs[i] = engine:add{ url = url, cafile = dir .. "/ca.pem", timeout = 10 }
    end
    local t0 = socket.gettime()
    local left = #reqs
    while left > 0 do
      engine:perform()
      left = left - #engine:finished()
      if left > 0 then engine:poll(50) end
      assert(socket.gettime() - t0 < 10, "the requests did not finish")
    end
    local elapsed = socket.gettime() - t0
    local conns, connects = {}, 0
    for _, r in ipairs(reqs) do
      local res = assert(r:result())
      assert.equal(200, res.status)
      assert.equal("2", res.http_version)
      connects = connects + res.connects
      conns[res.body:match("^(%d+)")] = true
    end
    local distinct = 0
    for _ in pairs(conns) do distinct = distinct + 1 end
    assert.equal(1, connects, "new connections made")
    assert.equal(1, distinct, "nginx saw more than one connection")
    assert.is_true(elapsed < 1.5, "not concurrent: " .. elapsed .. " s")
    engine:close()
  end)
end)
