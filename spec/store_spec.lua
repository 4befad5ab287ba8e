-- The store interface (digime.store): its options, the four primitives as every store must
-- keep them (in-process and Redis, against a real redis-server), the Redis connection
-- options (password, ACL user, database, unix socket, TLS), and the lock built on them.
local digime = require "digime"
local store = require "digime.store"
local resp = require "digime.store.resp"
local redis = require "redis"
local sh = require "shell"
local socket = require "socket"

local function init(extra)
  local o = { application_id = "app" }
  for k, v in pairs(extra) do o[k] = v end
  return digime.init(o)
end

describe("store option", function()
  it("defaults to the in-process store", function()
    local sdk = assert(init{})
    assert.is_table(sdk.shared)
  end)

  it("refuses unknown types, unknown keys and bad values with the field named", function()
    local cases = {
      { { type = "memcached" }, "store" },
      { "redis", "store" },
      { { type = "redis", hostname = "x" }, "store.hostname" },
      { { type = "redis", port = 0 }, "store.port" },
      { { type = "redis", port = 6379.5 }, "store.port" },
      { { type = "redis", host = "h", socket = "/s" }, "store.socket" },
      { { type = "redis", user = "u" }, "store.user" },
      { { type = "redis", tls = { verify = "yes" } }, "store.tls.verify" },
      { { type = "redis", timeout = 0 }, "store.timeout" },
      { { type = "ngx_shared" }, "store.dict" },
      { { type = "memory", prefix = 1 }, "store.prefix" },
      { { get = function() end }, "store" },
    }
    for _, c in ipairs(cases) do
      local sdk, err = init{ store = c[1] }
      assert.is_nil(sdk)
      assert.equal("TypeValidationError", err.kind)
      assert.equal(c[2], err.field, tostring(err))
    end
  end)

  it("refuses jwks.shared_dict given with store, saying what to write", function()
    local sdk, err = init{ store = { type = "memory" }, jwks = { shared_dict = "digime" } }
    assert.is_nil(sdk)
    assert.equal("jwks.shared_dict", err.field)
    assert.matches('store = { type = "ngx_shared", dict = "..." }', err.message, 1, true)
  end)

  it("keeps the older jwks.shared_dict outside nginx (ignored: in-process)", function()
    assert.is_table(assert(init{ jwks = { shared_dict = "digime" } }).shared)
  end)

  it("takes a store object (the four methods) as it is", function()
    local mem = require("digime.store.memory").new()
    local sdk = assert(init{ store = mem })
    assert.equal(mem, sdk.shared.prim)
    assert.is_true(store.is_store(mem))
  end)
end)

local function contract(make)
  return function()
    local s
    before_each(function() s = make() end)

    it("get, set, add, delete_if", function()
      assert.is_nil(s:get("k"))
      assert.is_nil(select(2, s:get("k")))
      assert.is_true(s:set("k", "v\r\n\0x", 10))
      assert.equal("v\r\n\0x", s:get("k"))
      assert.is_false(s:add("k", "w", 10))
      assert.equal("v\r\n\0x", s:get("k"))
      assert.is_true(s:add("n", "w", 10))
      assert.is_false(s:delete_if("n", "other"))
      assert.equal("w", s:get("n"))
      assert.is_true(s:delete_if("n", "w"))
      assert.is_nil(s:get("n"))
      assert.is_false(s:delete_if("n", "w"))
    end)

    it("expire entries after their ttl", function()
      assert.is_true(s:set("e", "1", 0.15))
      assert.is_true(s:add("a", "1", 0.15))
      socket.sleep(0.3)
      assert.is_nil(s:get("e"))
      assert.is_true(s:add("a", "2", 1))
    end)

    it("give a lock to one holder; it expires; only its holder releases it", function()
      local shared = require("digime.store.shared").new(s, "t:", 0.6)
      local a, b = shared:lock("x"), shared:lock("x")
      assert.same({ true, false }, { a:acquire() })
      b.ttl = 0.2                            -- b waits 0.2 s; a holds it for 0.6 s
      local t0 = socket.gettime()
      local ok, err = b:acquire()
      assert.is_nil(ok)
      assert.equal("LockTimeout", err.code)
      assert.is_true(socket.gettime() - t0 >= 0.19)
      -- a died (never released): its lock expires, b takes it; a's late release is a no-op
      socket.sleep(0.45)
      assert.same({ true, false }, { b:acquire() })
      assert.is_true(a:release())
      local c = shared:lock("x")
      c.ttl = 0.05
      assert.equal("LockTimeout", select(2, c:acquire()).code)
      assert.is_true(b:release())
      assert.same({ true, false }, { c:acquire() })
    end)

    it("tell a waiter that it waited", function()
      local shared = require("digime.store.shared").new(s, "t:", 0.1)
      local a, b = shared:lock("w"), shared:lock("w")
      assert.is_true(a:acquire())
      b.ttl = 1
      assert.same({ true, true }, { b:acquire() })   -- after a's 0.1 s
    end)
  end
end

describe("in-process store", contract(function() return require("digime.store.memory").new() end))

describe("Redis store", function()
  local rd
  setup(function() rd = redis.start() end)
  teardown(function() if rd then rd:stop() end end)

  describe("primitives", contract(function()
    rd:command("FLUSHALL")
    return require("digime.store.redis").new{ port = rd.port }
  end))

  it("sends again on a new connection when Redis restarted under a reused one", function()
    local s = require("digime.store.redis").new{ port = rd.port }
    assert.is_true(s:set("r", "1", 10))
    rd:stop()
    assert.is_nil(s:get("r"))
    local _, err = s:get("r")
    assert.matches("cannot connect", err)
    rd:start()
    assert.is_nil(select(2, s:get("r")))      -- a new connection; the key was not persisted
    assert.is_true(s:set("r", "2", 10))
    assert.equal("2", s:get("r"))
  end)
end)

-- digime.store.resty_redis against the same Redis, through an object that answers as
-- lua-resty-redis does (ngx.null for a nil reply; commands as methods with their arguments)
-- but sends with the project's own client: lua-resty-redis itself is not a Debian package.
describe("lua-resty-redis adapter", function()
  local rd, saved_ngx
  local NULL = setmetatable({}, { __tostring = function() return "ngx.null" end })
  setup(function()
    rd = redis.start()
    saved_ngx = rawget(_G, "ngx")
    rawset(_G, "ngx", { null = NULL })
  end)
  teardown(function()
    rawset(_G, "ngx", saved_ngx)
    if rd then rd:stop() end
  end)

  local pooled, closed = 0, 0
  local function connect()
    local conn = require("digime.store.redis").new{ port = rd.port }
    local function send(...)
      local v, err = conn:command{ ... }
      if v == resp.null then return NULL end
      return v, err
    end
    return {
      get = function(_, k) return send("GET", k) end,
      set = function(_, ...) return send("SET", ...) end,
      eval = function(_, ...) return send("EVAL", ...) end,
      set_keepalive = function() pooled = pooled + 1; conn:close() end,
      close = function() closed = closed + 1; conn:close() end,
    }
  end

  describe("primitives", contract(function()
    rd:command("FLUSHALL")
    return assert(require("digime.store.resty_redis").new{ connect = connect })
  end))

  it("returns connections to the pool, and a connect failure as nil, message", function()
    assert.is_true(pooled > 0)
    assert.equal(0, closed)
    local s = require("digime.store.resty_redis").new{ connect = function() return nil, "refused" end }
    local v, err = s:get("k")
    assert.is_nil(v)
    assert.equal("cannot connect to Redis: refused", err)
    assert.is_nil(require("digime.store.resty_redis").new{})
  end)
end)

describe("Redis store against a Redis that hangs", function()
  it("gives up after `timeout`, and the next command gets a new connection", function()
    local server = assert(socket.bind("127.0.0.1", 0))   -- listens, never answers
    local _, port = server:getsockname()
    local s = require("digime.store.redis").new{ port = tonumber(port), timeout = 0.2 }
    local t0 = socket.gettime()
    local v, err = s:set("k", "v", 10)
    local took = socket.gettime() - t0
    assert.is_nil(v)
    assert.matches("timeout", err)
    assert.is_true(took >= 0.19 and took < 1, "took " .. took .. " s")
    assert.is_nil(s.sock)
    server:close()
  end)
end)

describe("Redis store connection options", function()
  local rd, dir
  setup(function()
    dir = sh.tmpdir()
    assert(sh.run(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/key.pem -out %s/cert.pem "
      .. "-days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1"):format(dir, dir)))
    rd = redis.start{ args = ("--requirepass top --unixsocket %s/r.sock --unixsocketperm 700 "
      .. "--tls-port %d --tls-cert-file %s/cert.pem --tls-key-file %s/key.pem "
      .. "--tls-auth-clients no"):format(dir, redis.free_port(), dir, dir) }
    rd.tls_port = tonumber(rd:cli("-a", "top", "--no-auth-warning", "CONFIG", "GET", "tls-port")
      :match("(%d+)%s*$"))
    assert(rd:cli("-a", "top", "--no-auth-warning", "ACL", "SETUSER", "digime", "on", ">pw",
                  "~app:*", "+@all") == "OK")
  end)
  teardown(function()
    if rd then rd:stop() end
    sh.rmdir(dir)
  end)

  local function new(o) return require("digime.store.redis").new(o) end

  it("authenticates with a password, or an ACL user, and selects the database", function()
    local _, err = new{ port = rd.port }:get("k")
    assert.matches("NOAUTH", err)
    local s = new{ port = rd.port, password = "top", database = 3 }
    assert.is_true(s:set("k", "in3", 10))
    assert.equal("in3", rd:cli("-a", "top", "--no-auth-warning", "-n", 3, "GET", "k"))
    assert.equal("", rd:cli("-a", "top", "--no-auth-warning", "-n", 0, "GET", "k"))
    local u = new{ port = rd.port, user = "digime", password = "pw" }
    assert.is_true(u:set("app:k", "v", 10))
    local _, uerr = u:set("other:k", "v", 10)
    assert.matches("NOPERM", uerr)
    _, err = new{ port = rd.port, user = "digime", password = "wrong" }:get("app:k")
    assert.matches("WRONGPASS", err)
  end)

  it("connects over a unix socket", function()
    local s = new{ socket = dir .. "/r.sock", password = "top" }
    assert.is_true(s:set("u", "1", 10))
    assert.equal("1", s:get("u"))
  end)

  it("connects over TLS, verifying the server against the given CA", function()
    local s = new{ port = rd.tls_port, password = "top",
                   tls = { ca_file = dir .. "/cert.pem", server_name = "localhost" } }
    assert.is_true(s:set("t", "1", 10))
    assert.equal("1", s:get("t"))
    local _, err = new{ port = rd.tls_port, password = "top", tls = true }:get("t")
    assert.matches("TLS", err)
    local n = new{ port = rd.tls_port, password = "top", tls = { verify = false } }
    assert.equal("1", n:get("t"))
  end)
end)

describe("RESP reader", function()
  local function sock_of(text)
    local pos = 1
    return { receive = function(_, pat)
      if pat == "*l" then
        local i = text:find("\n", pos, true)
        if not i then return nil, "closed" end
        local line = text:sub(pos, i - 1):gsub("\r$", "")
        pos = i + 1
        return line
      end
      if pos + pat - 1 > #text then return nil, "closed" end
      local s = text:sub(pos, pos + pat - 1)
      pos = pos + pat
      return s
    end }
  end

  it("reads the reply types and tells Redis errors from broken connections", function()
    assert.equal("OK", resp.read(sock_of("+OK\r\n")))
    assert.equal(42, resp.read(sock_of(":42\r\n")))
    assert.equal("a\r\nb", resp.read(sock_of("$4\r\na\r\nb\r\n")))
    assert.equal(resp.null, resp.read(sock_of("$-1\r\n")))
    assert.same({ "x", 1 }, resp.read(sock_of("*2\r\n$1\r\nx\r\n:1\r\n")))
    assert.same({ nil, "ERR no", true }, { resp.read(sock_of("-ERR no\r\n")) })
    assert.same({ nil, "connection: closed" }, { resp.read(sock_of("$5\r\nab")) })
  end)

  it("refuses what it did not ask for: deep arrays, unknown types, bad lengths", function()
    local deep = string.rep("*1\r\n", 100000) .. ":1\r\n"
    assert.matches("too deep", select(2, resp.read(sock_of(deep))))
    assert.matches("unexpected", select(2, resp.read(sock_of("%1\r\n"))))
    assert.matches("CRLF", select(2, resp.read(sock_of("$1\r\nabc\r\n"))))
    assert.matches("too large", select(2, resp.read(sock_of("$99999999999\r\n"))))
  end)
end)
