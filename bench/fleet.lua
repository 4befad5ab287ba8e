--- Hosts sharing a Redis store under load: N plain Lua processes (bench/fleet_host.lua) act
-- for the same U users for S seconds against a sandbox whose access tokens live T seconds,
-- with 5% seeded faults on the API calls and on oauth/token. Prints the refreshes, whether any
-- token was refreshed twice (a session ended), and the latency the store adds.
-- Usage: lua5.4 bench/fleet.lua [processes=4] [users=100] [seconds=60] [access_ttl=5] [store=redis|memory]
package.path = "examples/?.lua;./spec/support/?.lua;" .. package.path
local digime = require "digime"
local core = require "digime.core"
local cjson = require "cjson"
local socket = require "socket"
local demo = require "digime.sandbox.demo_contract"
local browser = require "browser"
local shell = require "shell"

local procs, users = tonumber(arg[1]) or 4, tonumber(arg[2]) or 100
local seconds, ttl = tonumber(arg[3]) or 60, tonumber(arg[4]) or 5
local store_kind = arg[5] or "redis"

local dir = io.popen("mktemp -d"):read("*l")
local function sh(cmd) assert(os.execute(cmd)) end
local function read(path)   -- nil while the file is not there
  local ok, s = pcall(shell.read, path)
  return ok and s or nil
end
local write = shell.write
local free_port = require("redis").free_port
local function wait_for(what, fn)
  local deadline = socket.gettime() + 15
  while not fn() do
    assert(socket.gettime() < deadline, what .. " did not start")
    socket.sleep(0.05)
  end
end

-- The sandbox, with short-lived access tokens.
write(dir .. "/sandbox.json", cjson.encode{ access_ttl = ttl, log_size = 1000 })
sh(("bin/digime-sandbox --config %s/sandbox.json --sync-pace 0 >%s/sb.out 2>%s/sb.err & echo $! >%s/sb.pid")
  :format(dir, dir, dir, dir))
wait_for("the sandbox", function() return (read(dir .. "/sb.out") or ""):find("\n") end)
local sb = cjson.decode(read(dir .. "/sb.out"):match("^[^\n]+"))
-- Redis, without persistence.
local rport = free_port()
sh(("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no >%s/redis.log 2>&1 & echo $! >%s/redis.pid")
  :format(rport, dir, dir))
wait_for("redis-server", function()
  local c = socket.tcp()
  local ok = c:connect("127.0.0.1", rport)
  c:close()
  return ok
end)
local function cleanup()
  os.execute(("kill $(cat %s/sb.pid) $(cat %s/redis.pid) 2>/dev/null; rm -rf %s"):format(dir, dir, dir))
end

local function control(method, path, body)
  local engine = core.http_engine()
  local req = engine:add{ method = method, url = sb.control_url .. path,
    headers = body and { ["content-type"] = "application/json" } or nil,
    body = body and cjson.encode(body) or nil }
  while engine:perform() > 0 do engine:poll(50) end
  engine:finished()
  return cjson.decode(req:result().body)
end

-- Prints the figures from the hosts' outputs and the sandbox's stats before and after.
local function report(outs, before, after, faults)
  local refreshes = after.refreshes - before.refreshes
  local token_posts = (after.by_path["/v1.7/oauth/token"] or 0) - (before.by_path["/v1.7/oauth/token"] or 0)
  local distinct, calls, ok_calls, ended, errs, jwks = {}, 0, 0, 0, {}, 0
  local call_ms, op_ms = {}, {}
  local n_distinct = 0
  for _, o in ipairs(outs) do
    calls, ok_calls, ended = calls + o.calls, ok_calls + o.ok_calls, ended + o.ended
    jwks = jwks + o.jwks_fetches
    for _, t in ipairs(o.refreshed) do
      if not distinct[t] then distinct[t] = true; n_distinct = n_distinct + 1 end
    end
    for k, v in pairs(o.errors) do errs[k] = (errs[k] or 0) + v end
    for _, v in ipairs(o.call_ms) do call_ms[#call_ms + 1] = v end
    for _, v in ipairs(o.op_ms) do op_ms[#op_ms + 1] = v end
  end
  local function pct(t, p)
    if #t == 0 then return 0 end
    table.sort(t)
    return t[math.max(1, math.ceil(#t * p))]
  end
  local faulted = 0
  for _, f in ipairs(faults) do faulted = faulted + (f.applied or 0) end
  print(("%d processes x %d users (the same users in every process), %d s, access tokens of %d s, store %s")
    :format(procs, users, seconds, ttl, store_kind))
  print(("calls %d (ok %d), faults injected %d; errors by code: %s"):format(calls, ok_calls,
    faulted, cjson.encode(errs)))
  print(("refreshes reaching the sandbox %d (%.1f/s; oauth/token POSTs %d, faulted ones included);"
    .. " new tokens handed to on_token_refresh %d; sessions ended by a refused refresh %d")
    :format(refreshes, refreshes / seconds, token_posts, n_distinct, ended))
  print(("JWKS fetches by the hosts: %d"):format(jwks))
  print(("read_accounts latency: p50 %.1f ms, p99 %.1f ms"):format(pct(call_ms, 0.5), pct(call_ms, 0.99)))
  if #op_ms > 0 then
    print(("store commands: %d, %.1f per refresh; latency p50 %.2f ms, p99 %.2f ms, max %.2f ms")
      :format(#op_ms, #op_ms / math.max(1, refreshes), pct(op_ms, 0.5), pct(op_ms, 0.99), op_ms[#op_ms]))
  end
end

local ok, err = pcall(function()
  local sdk = assert(digime.init{ application_id = demo.application_id, base_url = sb.base_url,
                                  onboard_url = sb.onboard_url })
  local contract = { id = demo.contract_id, private_key = demo.private_key }
  local tokens = {}
  for i = 1, users do
    local auth = assert(sdk:get_authorize_url{ contract = contract, state = "f",
                                               callback = "https://app.example/cb" })
    local cb = assert(browser.consent(auth.url))
    tokens[i] = cjson.decode(cjson.encode(assert(sdk:exchange_code_for_token{ contract = contract,
      authorization_code = cb.code, code_verifier = auth.code_verifier })))
  end
  -- 5% faults that leave the token unused when they hit oauth/token (answered or reset
  -- before the sandbox acts): a refresh answered and then lost would end a session whatever
  -- the store does.
  local actions = { { action = "status", status = 500 }, { action = "status", status = 503 },
                    { action = "reset" }, { action = "delay", ms = 300 } }
  control("POST", "fault", { path = "/v1.7/permission-access/", probability = 0.05,
                             seed = "fleet", actions = actions })
  control("POST", "fault", { method = "POST", path = "/v1.7/oauth/token", match = "exact",
    probability = 0.05, seed = "fleet-token", by = "sequence",
    actions = { { action = "status", status = 500 }, { action = "reset" } } })
  local before = control("GET", "stats")
  local start_at = core.time() + 2
  for p = 1, procs do
    write(("%s/job%d.json"):format(dir, p), cjson.encode{
      base_url = sb.base_url, onboard_url = sb.onboard_url, tokens = tokens, seconds = seconds,
      start_at = start_at, store = store_kind, redis = { port = rport, prefix = "bench:" } })
    sh(("lua5.4 bench/fleet_host.lua %s/job%d.json %s/out%d.json 2>%s/err%d &")
      :format(dir, p, dir, p, dir, p))
  end
  local outs = {}
  for p = 1, procs do
    local deadline = socket.gettime() + seconds + 60
    while not read(("%s/out%d.json"):format(dir, p)) do
      assert(socket.gettime() < deadline, "host " .. p .. ": " .. (read(("%s/err%d"):format(dir, p)) or ""))
      socket.sleep(0.2)
    end
    socket.sleep(0.1)
    outs[p] = cjson.decode(read(("%s/out%d.json"):format(dir, p)))
  end
  local after = control("GET", "stats")

  report(outs, before, after, control("GET", "faults"))
end)
cleanup()
if not ok then error(err, 0) end
