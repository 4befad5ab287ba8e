-- Workers of one nginx sharing through a lua_shared_dict (init option jwks.shared_dict): the
-- JWKS is fetched once for all of them, and a token refreshed at the same moment by two
-- workers is refreshed once (refresh tokens rotate: a second refresh would be refused).
-- The same actions without the dict show what it prevents.
local sandbox = require "sandbox"
local nginx = require "nginx"
local cjson = require "cjson"
local socket = require "socket"

local function get_json(n, path)
  local status, body = n:get(path)
  assert(status == 200, "nginx: " .. tostring(status) .. " " .. tostring(body))
  return cjson.decode(body)
end

-- Runs an action in every worker at once; returns the workers' outcomes.
local function together(n, action, workers)
  local seq = get_json(n, "/go?action=" .. action).seq
  local deadline = socket.gettime() + 30
  while true do
    local out = get_json(n, "/results?seq=" .. seq)
    if #out >= workers then return out end
    assert(socket.gettime() < deadline, action .. ": only " .. #out .. " workers answered\n"
           .. n:error_log():sub(-3000))
    socket.sleep(0.05)
  end
end

local function start_nginx(sb, shared_dict)
  return nginx.start{
    workers = 2,
    http = [[
      lua_shared_dict digime 1m;
      lua_shared_dict results 1m;
    ]],
    init = string.format([[
      require("ngx_app").setup({ base_url = %q, onboard_url = %q }, %s)
    ]], sb.base_url, sb.onboard_url,
      shared_dict and string.format("{ jwks = { shared_dict = %q } }", shared_dict) or "nil"),
    init_worker = [[ require("ngx_app").start_worker_loop() ]],
    server = [[
      location = /go { content_by_lua_block { require("ngx_app").go() } }
      location = /results { content_by_lua_block { require("ngx_app").results() } }
    ]],
  }
end

describe("nginx workers with jwks.shared_dict #nginx", function()
  local sb, n

  setup(function()
    sb = sandbox.start{}
    n = start_nginx(sb, "digime")
  end)

  teardown(function()
    if n then n:stop() end
    if sb then sb:stop() end
  end)

  it("fetch the JWKS once for all workers", function()
    local before = sb:stats().jwks_fetches
    local out = together(n, "exchange", 2)
    assert.equal(2, #out)
    assert.are_not.equal(out[1].pid, out[2].pid)
    for _, o in ipairs(out) do assert.is_true(o.ok, cjson.encode(o)) end
    assert.equal(1, sb:stats().jwks_fetches - before)
    -- the worker that did not fetch counted none
    assert.equal(1, out[1].jwks_fetches + out[2].jwks_fetches)
  end)

  it("refresh a token once when two workers refresh it at the same moment", function()
    assert.is_true(together(n, "store_token", 2)[1].ok)
    local before = sb:stats().refreshes
    -- The first refresh answers 300 ms late: the two overlap, however the workers are
    -- scheduled (on a warm connection a refresh takes a few ms; a worker woken later than
    -- that would refresh after the first, a sequential refresh of a rotated token, refused).
    sb:fault{ method = "POST", path = "/v1.7/oauth/token", match = "exact", action = "delay", ms = 300 }
    local out = together(n, "refresh", 2)
    assert.equal(2, #out)
    for _, o in ipairs(out) do assert.is_true(o.ok, cjson.encode(o)) end
    assert.equal(1, sb:stats().refreshes - before)
    assert.equal(out[1].access, out[2].access)
    assert.equal(out[1].refresh, out[2].refresh)
  end)
end)

describe("nginx workers without a shared dict #nginx", function()
  local sb, n

  setup(function()
    sb = sandbox.start{}
    n = start_nginx(sb, nil)
  end)

  teardown(function()
    if n then n:stop() end
    if sb then sb:stop() end
  end)

  it("fetch the JWKS once per worker, and a concurrent refresh fails in one of them", function()
    local before = sb:stats().jwks_fetches
    local out = together(n, "exchange", 2)
    for _, o in ipairs(out) do assert.is_true(o.ok, cjson.encode(o)) end
    assert.equal(2, sb:stats().jwks_fetches - before)

    assert.is_true(together(n, "store_token", 2)[1].ok)
    sb:fault{ method = "POST", path = "/v1.7/oauth/token", match = "exact", action = "delay", ms = 300 }
    out = together(n, "refresh", 2)
    local failed = 0
    for _, o in ipairs(out) do
      if not o.ok then
        failed = failed + 1
        assert.equal("InvalidToken", o.error.code, cjson.encode(o))
      end
    end
    assert.equal(1, failed, "exactly one of the two refreshes was refused: " .. cjson.encode(out))
  end)
end)
