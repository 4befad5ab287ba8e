-- Load inside nginx: rounds of 200 concurrent requests, each a user's whole visit (authorize
-- URL, consent, code exchange, a small read) against the sandbox. No request fails, the
-- workers' memory stays flat from round to round, and no file descriptor is left behind.
local sandbox = require "sandbox"
local nginx = require "nginx"
local core = require "digime.core"
local cjson = require "cjson"

local ROUNDS, CONCURRENT = 10, 200

local function proc_status(pid, field)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  return tonumber(text:match(field .. ":%s*(%d+)"))
end

local function fd_count(pid)
  local f = io.popen("ls /proc/" .. pid .. "/fd 2>/dev/null | wc -l")
  local n = tonumber(f:read("*l"))
  f:close()
  return n
end

-- CONCURRENT requests at once through the core's engine; returns the statuses and bodies.
local function burst(url)
  local engine = core.http_engine()
  local reqs = {}
  for i = 1, CONCURRENT do
    reqs[i] = engine:add{ url = url, timeout = 120, fresh_connect = true }
  end
  local left = CONCURRENT
  while left > 0 do
    engine:perform()
    left = left - #engine:finished()
    if left > 0 then engine:poll(50) end
  end
  local out = {}
  for i, r in ipairs(reqs) do
    local res, err = r:result()
    out[i] = res and { status = res.status, body = res.body } or { err = err }
  end
  engine:close()
  return out
end

describe("200 concurrent visits into nginx, 10 rounds #nginx #slow", function()
  local sb, n

  setup(function()
    sb = sandbox.start{}
    n = nginx.start{
      workers = 2, worker_connections = 4096,
      init = string.format([[ require("ngx_app").setup{ base_url = %q, onboard_url = %q } ]],
                           sb.base_url, sb.onboard_url),
      server = [[ location = /small { content_by_lua_block { require("ngx_app").small() } } ]],
    }
  end)

  teardown(function()
    if n then n:stop() end
    if sb then sb:stop() end
  end)

  it("never fails, keeps memory flat and leaves no descriptor open", function()
    local workers = n:workers()
    assert.equal(2, #workers)
    local rss, fds = {}, {}
    for round = 1, ROUNDS do
      local t0 = core.monotonic()
      local out = burst(n.url .. "/small")
      local failed = {}
      for _, r in ipairs(out) do
        if r.status ~= 200 then failed[#failed + 1] = r.err or (r.status .. " " .. r.body) end
      end
      assert.equal(0, #failed, "round " .. round .. ": " .. #failed .. " failed, first: " .. tostring(failed[1]))
      local total_rss, total_fd = 0, 0
      for _, pid in ipairs(workers) do
        total_rss = total_rss + proc_status(pid, "VmRSS")
        total_fd = total_fd + fd_count(pid)
      end
      rss[round], fds[round] = total_rss, total_fd
      print(string.format("round %2d: %.2f s, workers' RSS %d KiB, open fds %d",
                          round, core.monotonic() - t0, total_rss, total_fd))
    end
    -- the first rounds warm caches and pools up; after that nothing may grow
    assert.is_true(rss[ROUNDS] - rss[3] < 8 * 1024,
                   "RSS grew from " .. rss[3] .. " to " .. rss[ROUNDS] .. " KiB: " .. cjson.encode(rss))
    assert.is_true(fds[ROUNDS] <= fds[3], "descriptors grew: " .. cjson.encode(fds))
    -- the same workers served every round (none crashed and was replaced)
    assert.are.same(workers, n:workers())
    assert.is_nil(n:error_log():match("%[alert%]"))
  end)
end)
