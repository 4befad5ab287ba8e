-- Several hosts sharing state through Redis (digime.store, store = { type = "redis" }): two
-- separate plain Lua processes (spec/support/fleet_host.lua), a real redis-server, the
-- sandbox. Refresh tokens rotate: a token refreshed twice is refused the second time, so the
-- fleet must refresh each user's token once and hand the new pair to every caller.
local flow = require "flow"
local redis = require "redis"
local sh = require "shell"
local cjson = require "cjson"
local socket = require "socket"

local N_USERS = 50
local JWKS_TTL = 8

local env
local function lua_env()
  if not env then
    local _, out = sh.run("make -s env")
    env = out
  end
  return env
end

local function plain(t)   -- tokens as JSON can carry them
  return cjson.decode(cjson.encode(t))
end

-- Starts one host per job at the same moment; waits for them all. -> their outputs
local function hosts(jobs)
  local start_at = socket.gettime() + 1.5
  local runs = {}
  for i, job in ipairs(jobs) do
    job.start_at = start_at
    local dir = sh.tmpdir()
    local jf, of = dir .. "/job.json", dir .. "/out.json"
    sh.write(jf, cjson.encode(job))
    local cmd = lua_env() .. "\nlua5.4 spec/support/fleet_host.lua " .. sh.quote(jf) .. " "
      .. sh.quote(of) .. " >" .. sh.quote(dir .. "/stderr") .. " 2>&1 &"
    assert(sh.run(cmd))
    runs[i] = { dir = dir, out = of }
  end
  local outs = {}
  local deadline = socket.gettime() + 60
  for i, r in ipairs(runs) do
    while true do
      local f = io.open(r.out, "rb")
      local text = f and f:read("*a")
      if f then f:close() end
      if text and text ~= "" and pcall(cjson.decode, text) then
        outs[i] = cjson.decode(text)
        break
      end
      assert(socket.gettime() < deadline, "host " .. i .. " did not finish: "
        .. (io.open(r.dir .. "/stderr") and sh.read(r.dir .. "/stderr") or ""))
      socket.sleep(0.05)
    end
    sh.rmdir(r.dir)
  end
  return outs
end

describe("hosts sharing a Redis store", function()
  local sb, rd, sdk, tokens, fetched_at

  local function store(extra)
    local s = { type = "redis", port = rd.port, prefix = "spec:" }
    for k, v in pairs(extra or {}) do s[k] = v end
    return s
  end

  local function job(extra_sdk)
    local o = { base_url = sb.base_url, onboard_url = sb.onboard_url, timeout = 5,
                store = store(), jwks = { ttl = JWKS_TTL, cooldown = 1 } }
    for k, v in pairs(extra_sdk or {}) do o[k] = v end
    return { sdk = o, tokens = tokens }
  end

  setup(function()
    sb = flow.start()
    rd = redis.start()
    sdk = assert(flow.sdk(sb))
    tokens = {}
    for i = 1, N_USERS do tokens[i] = plain((flow.login(sdk))) end
  end)

  teardown(function()
    if rd then rd:stop() end
    if sb then sb:stop() end
  end)

  it("refresh each user's token once for the fleet; every caller gets the same new pair", function()
    local before = sb:stats()
    local outs = hosts{ job(), job() }
    local after = sb:stats()
    assert.equal(N_USERS, after.refreshes - before.refreshes, "refreshes that reached the sandbox: "
      .. cjson.encode(outs[1].results[1]) .. " " .. cjson.encode(outs[1].log))
    for i = 1, N_USERS do
      local a, b = outs[1].results[i], outs[2].results[i]
      assert.is_true(a.ok, cjson.encode(a))
      assert.is_true(b.ok, cjson.encode(b))
      assert.equal(a.access, b.access)
      assert.equal(a.refresh, b.refresh)
      assert.are_not.equal(tokens[i].refresh_token.value, a.refresh)
      tokens[i] = a.token
    end
    -- the JWKS the refresh answers are checked with: fetched once for the two hosts
    assert.equal(1, after.jwks_fetches - before.jwks_fetches)
    assert.equal(1, outs[1].jwks_fetches + outs[2].jwks_fetches)
    fetched_at = socket.gettime()
  end)

  it("fetch the JWKS once per TTL for the fleet, whichever process asks", function()
    -- new processes within the TTL: the JWKS comes from Redis
    local before = sb:stats()
    local outs = hosts{ job(), job() }
    for i = 1, N_USERS do
      assert.is_true(outs[1].results[i].ok, cjson.encode(outs[1].results[i]))
      tokens[i] = outs[1].results[i].token
    end
    assert.is_true(socket.gettime() - fetched_at < JWKS_TTL, "the spec was too slow to check")
    assert.equal(0, sb:stats().jwks_fetches - before.jwks_fetches)
    -- after the TTL: fetched again, once
    socket.sleep(math.max(0, fetched_at + JWKS_TTL + 0.5 - socket.gettime()))
    before = sb:stats()
    outs = hosts{ job(), job() }
    for i = 1, N_USERS do
      assert.is_true(outs[2].results[i].ok, cjson.encode(outs[2].results[i]))
      tokens[i] = outs[2].results[i].token
    end
    assert.equal(1, sb:stats().jwks_fetches - before.jwks_fetches)
    assert.equal(N_USERS, sb:stats().refreshes - before.refreshes)
  end)

  it("fail a refresh with StoreError while Redis is down, without presenting the token", function()
    local before = sb:stats()
    local down = job{ store = store{ port = redis.free_port() } }
    local outs = hosts{ down, down }
    for _, o in ipairs(outs) do
      for i = 1, N_USERS do
        local e = o.results[i].error
        assert.is_table(e, cjson.encode(o.results[i]))
        assert.equal("StoreError", e.kind)
        assert.matches("cannot connect", e.message)
      end
    end
    assert.equal(0, sb:stats().refreshes - before.refreshes)
    -- the tokens were not lost: with Redis back, they refresh once each
    outs = hosts{ job(), job() }
    for i = 1, N_USERS do
      assert.is_true(outs[1].results[i].ok, cjson.encode(outs[1].results[i]))
      assert.equal(outs[1].results[i].refresh, outs[2].results[i].refresh)
    end
    assert.equal(N_USERS, sb:stats().refreshes - before.refreshes)
  end)

  it("never present a token whose refresh another host began and left without an outcome", function()
    local core = require "digime.core"
    local host = assert(flow.sdk(sb, { store = store() }))
    local token = flow.login(host)
    local name = "refresh:" .. core.b64url_encode(core.sha256(token.refresh_token.value))
    -- a host took the lock and died: the lock expires, the token may have rotated
    assert.equal("OK", rd:command("SET", "spec:lock:" .. name, "dead-host", "PX", 300))
    local before = sb:stats().refreshes
    local new, err = host:refresh_token{ contract = flow.contract(), user_access_token = token }
    assert.is_nil(new)
    assert.equal("StoreError", err.kind)
    assert.equal("RefreshOutcomeLost", err.code)
    -- a host whose refresh failed left that: who waited gets the failure, not a second try
    assert.equal("OK", rd:command("SET", "spec:lock:" .. name, "failing-host", "PX", 300))
    assert.equal("OK", rd:command("SET", "spec:done:" .. name, '{"failed":"it broke"}', "PX", 5000))
    new, err = host:refresh_token{ contract = flow.contract(), user_access_token = token }
    assert.is_nil(new)
    assert.equal("RefreshFailed", err.code)
    assert.matches("it broke", err.message)
    assert.equal(0, sb:stats().refreshes - before)
    -- the caller tries again, the lock free: the token was never presented, so it works
    new = assert(host:refresh_token{ contract = flow.contract(), user_access_token = token })
    assert.equal(1, sb:stats().refreshes - before)
    assert.are_not.equal(token.refresh_token.value, new.refresh_token.value)
  end)

  it("verify server tokens while Redis is down: the JWKS is fetched locally, with a warning", function()
    local lines = {}
    local down = assert(flow.sdk(sb, { store = store{ port = redis.free_port() },
      logger = function(level, message) lines[#lines + 1] = level .. " " .. message end }))
    local token = flow.login(down)
    assert.is_string(token.access_token.value)
    assert.matches("warn JWKS: the shared store failed", table.concat(lines, "\n"))
  end)
end)
