-- digime.run / spawn / sleep (doc/architecture.md "Schedulers"): results and errors of
-- tasks, requests that overlap inside run and block outside it, and the single-flight refresh
-- (refresh tokens rotate: two refreshes with the same token would end the user's session).
local flow = require "flow"
local leak_check = require "leak_check"
local sandbox_hooks = require "sandbox_hooks"
local digime = require "digime"

describe("scheduler", function()
  local sb, sdk

  lazy_setup(function()
    sb = flow.start()
    sdk = assert(flow.sdk(sb))
  end)

  sandbox_hooks.stop_and_reset(function() return sb end)

  it("digime.run returns the function's results, nils and arguments included", function()
    local n = select("#", digime.run(function(a, b) return a + b, "x", nil, b end, 1, 2))
    assert.are.equal(4, n)
    local a, b, c, d = digime.run(function(x, y) return x + y, "x", nil, y end, 1, 2)
    assert.are.equal(3, a)
    assert.are.equal("x", b)
    assert.is_nil(c)
    assert.are.equal(2, d)
    assert.are.equal(0, select("#", digime.run(function() end)))
  end)

  it("spawn starts a task and wait returns its results", function()
    local r1, r2, r3 = digime.run(function()
      local t = digime.spawn(function(x) return x * 2, "y" end, 21)
      local a, b = t:wait()
      local again = t:wait()           -- waiting again gives the same results
      return a, b, again
    end)
    assert.are.equal(42, r1)
    assert.are.equal("y", r2)
    assert.are.equal(42, r3)
  end)

  it("runs until every spawned task has ended, waited for or not", function()
    local done = {}
    digime.run(function()
      for i = 1, 3 do
        digime.spawn(function()
          digime.sleep(0.01 * i)
          done[#done + 1] = i
        end)
      end
    end)
    assert.are.same({ 1, 2, 3 }, done)
  end)

  it("digime.sleep inside run lets the other tasks run", function()
    local order = {}
    digime.run(function()
      local a = digime.spawn(function()
        digime.sleep(0.1)
        order[#order + 1] = "a"
      end)
      local b = digime.spawn(function()
        order[#order + 1] = "b"
      end)
      a:wait()
      b:wait()
    end)
    assert.are.same({ "b", "a" }, order)
  end)

  it("a request of one task goes on while another task sleeps #timing", function()
    assert(sdk:get_authorize_url(flow.authorize_opts()))      -- JWKS cache warm
    local t0 = flow.now()
    local got, slept_at, request_done_at
    digime.run(function()
      local sleeper = digime.spawn(function()
        digime.sleep(0.5)
        slept_at = flow.now() - t0
      end)
      local caller = digime.spawn(function()
        got = sdk:get_authorize_url(flow.authorize_opts())
        request_done_at = flow.now() - t0
      end)
      sleeper:wait()
      caller:wait()
    end)
    assert.is_table(got)
    assert.is_true(request_done_at < slept_at, "the request waited for the sleeper")
    assert.is_true(slept_at < 0.9, "took " .. slept_at .. " s")
  end)

  it("sleep outside run blocks", function()
    local t0 = flow.now()
    digime.sleep(0.1)
    assert.is_true(flow.now() - t0 >= 0.09)
  end)

  it("overlaps requests inside run #timing", function()
    assert(sdk:get_authorize_url(flow.authorize_opts()))      -- JWKS cache warm
    sb:reset()
    sb:fault{ method = "POST", path = "/v1.7/oauth/authorize", action = "delay", ms = 300, count = 5 }
    local t0 = flow.now()
    local results = digime.run(function()
      local tasks = {}
      for i = 1, 5 do
        tasks[i] = digime.spawn(sdk.get_authorize_url, sdk, flow.authorize_opts{ state = "s" .. i })
      end
      local out = {}
      for i = 1, 5 do out[i] = { tasks[i]:wait() } end
      return out
    end)
    local t = flow.now() - t0
    local codes = {}
    for i = 1, 5 do
      assert.is_nil(results[i][2], tostring(results[i][2]))
      local code = flow.query_of(results[i][1].url).code
      assert.is_nil(codes[code])
      codes[code] = true
    end
    assert.are.same({}, sb:faults())                           -- every request was delayed
    assert.is_true(t < 0.9, "5 requests of 0.3 s took " .. t .. " s: they did not overlap")
    assert.is_true(sb:stats().max_inflight >= 5, "max_inflight " .. sb:stats().max_inflight)
  end)

  it("blocks outside run, and the calls work there (and in a plain coroutine)", function()
    assert(sdk:get_authorize_url(flow.authorize_opts()))
    sb:reset()
    sb:fault{ method = "POST", path = "/v1.7/oauth/authorize", action = "delay", ms = 100, count = 3 }
    local t0 = flow.now()
    for _ = 1, 3 do
      local res, err = sdk:get_authorize_url(flow.authorize_opts())
      assert.is_nil(err)
      assert.is_string(res.url)
    end
    assert.is_true(flow.now() - t0 >= 0.29, "the calls did not wait for their answers")
    assert.are.equal(1, sb:stats().max_inflight)
    -- a user's own coroutine is not a task: the call blocks inside it and works
    local co = coroutine.wrap(function()
      local res, err = sdk:get_authorize_url(flow.authorize_opts())
      return res, err
    end)
    local res, err = co()
    assert.is_nil(err)
    assert.is_string(res.url)
  end)

  it("the full flow works inside run", function()
    local token = digime.run(function()
      return flow.login(sdk)
    end)
    assert.is_string(token.access_token.value)
  end)

  it("wait returns nil, err for a task that raised; run then goes on", function()
    local r, e, after = digime.run(function()
      local t = digime.spawn(function() error("boom in task") end)
      local a, b = t:wait()
      return a, b, "after"
    end)
    assert.is_nil(r)
    assert.is_truthy(tostring(e):find("boom in task", 1, true))
    assert.are.equal("after", after)
  end)

  it("run raises a task error that no one waited for", function()
    local ok, e = pcall(digime.run, function()
      digime.spawn(function() error("unseen failure") end)
      digime.sleep(0.01)
      return "main done"
    end)
    assert.is_false(ok)
    assert.is_truthy(tostring(e):find("unseen failure", 1, true))
    -- and the scheduler is usable again afterwards
    assert.are.equal(7, digime.run(function() return 7 end))
  end)

  it("run raises an error of its function", function()
    local ok, e = pcall(digime.run, function() error("main failed") end)
    assert.is_false(ok)
    assert.is_truthy(tostring(e):find("main failed", 1, true))
    assert.are.equal(1, digime.run(function() return 1 end))
  end)

  it("spawn outside run and run inside a task return nil, err; wait outside a task raises", function()
    local res, e = digime.spawn(function() end)
    assert.is_nil(res)
    assert.are.equal("NotInTask", e.code)
    assert.is_truthy(tostring(e):find("digime.run", 1, true), tostring(e))
    local inner_res, inner_e = digime.run(function()
      return digime.run(function() end)
    end)
    assert.is_nil(inner_res)
    assert.are.equal("NestedRun", inner_e.code)
    assert.is_truthy(tostring(inner_e):find("digime.run", 1, true), tostring(inner_e))
    local from_coroutine_ok, from_coroutine_e, waited
    digime.run(function()
      local task = digime.spawn(function() digime.sleep(0.01) return 1 end)
      -- a plain coroutine inside run is not a task: it cannot wait
      from_coroutine_ok, from_coroutine_e = coroutine.wrap(function()
        return pcall(task.wait, task)
      end)()
      waited = task:wait()
    end)
    assert.is_false(from_coroutine_ok)
    assert.is_truthy(tostring(from_coroutine_e):find("task", 1, true), tostring(from_coroutine_e))
    assert.are.equal(1, waited)
    for _, fn in ipairs{ digime.run, digime.spawn } do
      local r, err = fn("not a function")
      assert.is_nil(r)
      assert.are.equal("TypeValidationError", err.kind)
    end
  end)

  it("makes one refresh request for two concurrent refreshes of the same token", function()
    local calls = 0
    local s2 = assert(flow.sdk(sb, { on_token_refresh = function() calls = calls + 1 end }))
    local token = flow.login(s2)
    local before = flow.count(sb, "/v1.7/oauth/token")
    local refreshes = sb:stats().refreshes
    local a, b = digime.run(function()
      local t1 = digime.spawn(s2.refresh_token, s2, { contract = flow.contract(), user_access_token = token })
      local t2 = digime.spawn(s2.refresh_token, s2, { contract = flow.contract(), user_access_token = token })
      return { t1:wait() }, { t2:wait() }
    end)
    assert.is_nil(a[2], tostring(a[2]))
    assert.is_nil(b[2], tostring(b[2]))
    assert.are.equal(before + 1, flow.count(sb, "/v1.7/oauth/token"))
    assert.are.equal(refreshes + 1, sb:stats().refreshes)
    assert.are.equal(a[1].refresh_token.value, b[1].refresh_token.value)
    assert.are.equal(a[1].access_token.value, b[1].access_token.value)
    assert.are_not.equal(token.refresh_token.value, a[1].refresh_token.value)
    assert.are.equal(1, calls)
    -- the new token works; a refresh of a different token is not held up by the first
    local c, d = digime.run(function()
      local t1 = digime.spawn(s2.refresh_token, s2, { contract = flow.contract(), user_access_token = a[1] })
      local other = flow.login(s2)
      local t2 = digime.spawn(s2.refresh_token, s2, { contract = flow.contract(), user_access_token = other })
      return { t1:wait() }, { t2:wait() }
    end)
    assert.is_nil(c[2])
    assert.is_nil(d[2])
    assert.are_not.equal(c[1].refresh_token.value, d[1].refresh_token.value)
  end)

  it("shares a failed single-flight refresh with every waiter", function()
    local token = flow.login(sdk)
    sb:expire("refresh", token.user.id)
    local before = flow.count(sb, "/v1.7/oauth/token")
    local a, b = digime.run(function()
      local t1 = digime.spawn(sdk.refresh_token, sdk, { contract = flow.contract(), user_access_token = token })
      local t2 = digime.spawn(sdk.refresh_token, sdk, { contract = flow.contract(), user_access_token = token })
      return { t1:wait() }, { t2:wait() }
    end)
    assert.is_nil(a[1])
    assert.is_nil(b[1])
    assert.are.equal("InvalidToken", a[2].code)
    assert.are.equal("InvalidToken", b[2].code)
    assert.are.equal(before + 1, flow.count(sb, "/v1.7/oauth/token"))
  end)

  leak_check.it_leaks_nothing()
end)
