-- Two separate nginx instances (two "hosts", each with its own shared dict and workers) sharing
-- a real redis-server through store = { type = "redis" }: the SDK speaks to Redis over
-- cosockets. 50 users' tokens refreshed by both at the same moment are refreshed once each.
local flow = require "flow"
local nginx = require "nginx"
local redis = require "redis"
local cjson = require "cjson"
local socket = require "socket"

local N_USERS = 50

local function start(sb, rd, workers)
  return nginx.start{
    workers = workers,
    http = [[
      lua_shared_dict results 4m;
      client_body_buffer_size 1m;
    ]],
    init = string.format([[
      require("ngx_app").setup({ base_url = %q, onboard_url = %q },
        { store = { type = "redis", port = %d, prefix = "ngx:" }, jwks = { ttl = 60 } })
    ]], sb.base_url, sb.onboard_url, rd.port),
    init_worker = [[ require("ngx_app").start_worker_loop() ]],
    server = [[
      location = /fleet { content_by_lua_block { require("ngx_app").fleet() } }
      location = /results { content_by_lua_block { require("ngx_app").results() } }
      location = /nophase {
        set_by_lua_block $res {
          local s = require("digime.store.redis").new{ port = ]] .. rd.port .. [[ }
          local v, err = s:get("k")
          return tostring(v) .. ": " .. tostring(err)
        }
        return 200 $res;
      }
    ]],
  }
end

-- The action on every worker of every nginx at the same moment. -> outcomes (one per worker)
local function together(hosts, job, workers)
  job.at = socket.gettime() + 0.5
  local seqs = {}
  for i, n in ipairs(hosts) do
    local status, body = n:request("POST", "/fleet", cjson.encode(job),
                                   { ["content-type"] = "application/json" })
    assert(status == 200, tostring(status) .. " " .. tostring(body))
    seqs[i] = cjson.decode(body).seq
  end
  local outs = {}
  local deadline = socket.gettime() + 60
  for i, n in ipairs(hosts) do
    while true do
      local _, body = n:get("/results?seq=" .. seqs[i])
      local out = cjson.decode(body)
      if #out >= workers then
        for _, o in ipairs(out) do outs[#outs + 1] = o end
        break
      end
      assert(socket.gettime() < deadline, "nginx " .. i .. " did not finish\n" .. n:error_log():sub(-3000))
      socket.sleep(0.05)
    end
  end
  return outs
end

describe("two nginx sharing a Redis store #nginx", function()
  local sb, rd, hosts, tokens

  setup(function()
    sb = flow.start()
    rd = redis.start()
    hosts = { start(sb, rd, 2), start(sb, rd, 2) }
    local sdk = assert(flow.sdk(sb))
    tokens = {}
    for i = 1, N_USERS do tokens[i] = cjson.decode(cjson.encode((flow.login(sdk)))) end
  end)

  teardown(function()
    for _, n in ipairs(hosts or {}) do n:stop() end
    if rd then rd:stop() end
    if sb then sb:stop() end
  end)

  it("refresh each user's token once for the 4 workers of 2 nginx; all get the same pair", function()
    local before = sb:stats()
    local outs = together(hosts, { action = "refresh_many", tokens = tokens }, 2)
    local after = sb:stats()
    assert.equal(4, #outs)
    assert.equal(N_USERS, after.refreshes - before.refreshes)
    local fetches = 0
    for _, o in ipairs(outs) do
      assert.is_true(o.ok, cjson.encode(o))
      fetches = fetches + o.jwks_fetches
      for i = 1, N_USERS do
        local r, first = o.results[i], outs[1].results[i]
        assert.is_true(r.ok, cjson.encode(r))
        assert.equal(first.access, r.access)
        assert.equal(first.refresh, r.refresh)
        assert.are_not.equal(tokens[i].refresh_token.value, r.refresh)
      end
    end
    -- the JWKS the answers are checked with: once for the two nginx
    assert.equal(1, after.jwks_fetches - before.jwks_fetches)
    assert.equal(1, fetches)
  end)

  it("never block a worker: no Redis command in a phase without cosockets", function()
    local status, body = hosts[1]:get("/nophase")
    assert.equal(200, status)
    assert.equal("nil: no cosockets in nginx's set phase", body)
  end)

  it("fail the refreshes with StoreError while Redis is down, the tokens unused", function()
    for i = 1, N_USERS do tokens[i] = nil end
    local sdk = assert(flow.sdk(sb))
    for i = 1, 5 do tokens[i] = cjson.decode(cjson.encode((flow.login(sdk)))) end
    rd:stop()
    local before = sb:stats()
    local outs = together(hosts, { action = "refresh_many", tokens = tokens }, 2)
    for _, o in ipairs(outs) do
      for i = 1, #tokens do
        assert.equal("StoreError", o.results[i].error and o.results[i].error.kind, cjson.encode(o.results[i]))
      end
    end
    assert.equal(0, sb:stats().refreshes - before.refreshes)
    rd:start()
    outs = together(hosts, { action = "refresh_many", tokens = tokens }, 2)
    for _, o in ipairs(outs) do
      for i = 1, #tokens do
        assert.is_true(o.results[i].ok, cjson.encode(o.results[i]))
        assert.equal(outs[1].results[i].refresh, o.results[i].refresh)
      end
    end
    assert.equal(#tokens, sb:stats().refreshes - before.refreshes)
  end)
end)
