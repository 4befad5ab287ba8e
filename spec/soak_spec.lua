-- The fault soak (doc/protocol.md "Reading a library", "Retries"; doc/sandbox.md "Faults"): a sync of a
-- 500-file library while about 10% of the file-list and file requests fail at random (5xx,
-- 429 with Retry-After, resets, truncated bodies, delays past the timeout), and a sandbox
-- stopped and restarted on the same port in the middle of a sync.
--
-- The random faults are the sandbox's (POST /sandbox/fault with a probability): which
-- attempt of which file fails is a pure function of the seed, so the spec predicts the whole
-- outcome from the seed (control.lua documents the draw) and asserts it exactly:
--   * a file whose every attempt (1 + retry_options.limit) is faulted is reported once through
--     on_file_error and never delivered; every other file is delivered exactly once, intact
--     (sha256 of the plaintext against GET /sandbox/manifest), after exactly as many
--     attempts as its first unfaulted draw says (retries bounded, none wasted or missing);
--   * the list is polled the same way; a poll failing for good would end the sync (nil, err):
--     the seed is one where it does not, and the spec checks that premise;
--   * the failed files are then read again and a new sync delivers the whole library.
local flow = require "flow"
local leak_check = require "leak_check"
local sandbox_hooks = require "sandbox_hooks"
local core = require "digime.core"
local request = require "digime.request"

local QUERY = "/v1.7/permission-access/query/"
local FILES = 500
local SEED = 48            -- 53 of ~550 download draws fault, 2 files fail all 3 attempts
local PROBABILITY = 0.1
local RETRY = { limit = 2, max_time = 20, backoff = 0.01, max_backoff = 0.05 }
local TIMEOUT = 3          -- seconds per attempt; the delay fault waits past it
local MAX_TIME = 60        -- of the sync
local SYNC_PACE = "1"      -- seconds per sync step: the list is polled (and faulted) while files download
local POLL = 0.1

local ACTIONS = {
  { action = "status", status = 500 },
  { action = "status", status = 503, body = { error = { code = "ServiceUnavailable", message = "busy" } } },
  { action = "status", status = 429, headers = { ["Retry-After"] = "1" },
    body = { error = { code = "TooManyRequests", message = "slow down" } } },
  { action = "reset" },
  { action = "truncate" },
  { action = "delay", ms = (TIMEOUT + 0.5) * 1000 },
}

local hex = require("encode").hex

local count_keys = require("tables").count_keys

-- The sandbox's draw (control.lua): does attempt n with this key fail?
local function fires(seed, key, n, probability)
  local h = core.sha256(tostring(seed) .. "\n" .. key .. "\n" .. n)
  local b1, b2, b3, b4 = h:byte(1, 4)
  return (((b1 * 256 + b2) * 256 + b3) * 256 + b4) / 4294967296 < (probability or PROBABILITY)
end

-- Attempts a request with `key` takes under the seed, and whether it fails for good.
local function predicted(seed, key, first)
  first = first or 1
  local attempts = RETRY.limit + 1
  for i = 1, attempts do
    if not fires(seed, key, first + i - 1) then return i, false end
  end
  return attempts, true
end

-- The list: `polls` successful polls, each taking its own attempts from one counter.
local function predicted_list(seed, polls)
  local n = 0
  for _ = 1, polls do
    local a, failed = predicted(seed, "GET ", n + 1)
    assert(not failed, "the seed makes a file-list poll fail for good: choose another")
    n = n + a
  end
  return n
end

-- An on_file_error that records each failure in rec (errors: the list, failed: a count by
-- file name) and in flow's error record.
local function failure_recorder(rec)
  return function(failure)
    rec.errors[#rec.errors + 1] = failure
    rec.failed[failure.file_name] = (rec.failed[failure.file_name] or 0) + 1
    flow.record_error(failure.error)
  end
end

local function file_key(name)
  return "GET /" .. request.encode_segment(name)
end

describe("random faults (POST /sandbox/fault with a probability)", function()
  local sb

  lazy_setup(function()
    sb = flow.start()
  end)

  sandbox_hooks.stop_and_reset(function() return sb end)

  local JWKS = "/v1.7/jwks/oauth"

  -- n GETs of each path in `paths`, in that order: -> { path = { status, ... } }
  local function hit(paths, n)
    local out = {}
    for _ = 1, n do
      for _, path in ipairs(paths) do
        local res = sb:request{ path = path, timeout = 5 }
        out[path] = out[path] or {}
        table.insert(out[path], res and res.status or 0)
      end
    end
    return out
  end

  it("refuses bad specs", function()
    for _, spec in ipairs{
      { path = "/v1.7/", probability = 1.5, action = "status" },
      { path = "/v1.7/", probability = -0.1, action = "status" },
      { path = "/v1.7/", probability = "0.1", action = "status" },
      { path = "/v1.7/", probability = 0.1, action = "token", token = "alg_none" },
      { path = "/v1.7/", probability = 0.1, actions = {} },
      { path = "/v1.7/", probability = 0.1, actions = { { action = "explode" } } },
      { path = "/v1.7/", probability = 0.1, actions = { { action = "reset", weight = 0 } } },
      { path = "/v1.7/", probability = 0.1, action = "reset", by = "random" },
      { path = "/v1.7/", probability = 0.1, action = "reset", seed = -1 },
      { path = "/v1.7/", probability = 0.1, action = "reset", count = -1 },
      { path = "/sandbox/", probability = 0.1, action = "reset" },
    } do
      local v, status = sb:control("POST", "fault", spec)
      assert.are.equal(400, status, flow.dump(spec))
      assert.are.equal("BadRequest", v.error.code)
    end
    assert.are.same({}, sb:faults())
  end)

  it("fails the same requests for the same seed, as the documented draw says", function()
    local seed = 7
    local function run(by, order)
      sb:clear_faults()
      sb:fault{ path = "/v1.7/", probability = 0.5, seed = seed, by = by,
                actions = { { action = "status", status = 503 }, { action = "status", status = 500, weight = 3 } } }
      return hit(order, 12)
    end
    -- by path: each path has its own sequence, whatever order the paths are hit in
    local a = run("path", { JWKS, "/v1.7/nothing-here" })
    local b = run("path", { "/v1.7/nothing-here", JWKS })
    assert.are.same(a, b)
    local faulted = 0
    for i, status in ipairs(a[JWKS]) do
      if fires(seed, "GET jwks/oauth", i, 0.5) then
        faulted = faulted + 1
        assert.is_truthy(status == 503 or status == 500, "request " .. i .. ": " .. status)
      else
        assert.are.equal(200, status, "request " .. i)
      end
    end
    assert.is_true(faulted > 0 and faulted < 12)
    -- by sequence: the rule's n-th matching request, whichever path it is
    local c = run("sequence", { JWKS, "/v1.7/nothing-here" })
    for i = 1, 12 do
      assert.are.equal(fires(seed, "", 2 * i - 1, 0.5), c[JWKS][i] ~= 200, "request " .. (2 * i - 1))
      assert.are.equal(fires(seed, "", 2 * i, 0.5), c["/v1.7/nothing-here"][i] ~= 404, "request " .. 2 * i)
    end
    local r = sb:faults()[1]
    assert.are.equal(24, r.matched)
    assert.are.equal("7", r.seed)
  end)

  it("stops at count, stays listed with its record, and lets what it spares reach the faults after it", function()
    local id = sb:fault{ path = JWKS, probability = 1, count = 2, action = "status", status = 502 }
    sb:fault{ path = JWKS, action = "status", status = 418, count = 1 }
    local got = hit({ JWKS }, 4)[JWKS]
    assert.are.same({ 502, 502, 418, 200 }, got)
    local faults = sb:faults()
    assert.are.equal(1, #faults)
    assert.are.equal(id, faults[1].id)
    assert.are.equal(0, faults[1].count)
    assert.are.equal(2, faults[1].applied)
    assert.are.same({ 2 }, faults[1].applied_by)
    assert.are.equal(2, faults[1].faulted["GET "])
    -- probability 0 never fires; a seed is made up when none is given, and returned
    local v = sb:control("POST", "fault", { path = JWKS, probability = 0, action = "reset" })
    assert.is_string(v.seed)
    assert.are.same({ 200, 200 }, hit({ JWKS }, 2)[JWKS])
    assert.are.equal(2, sb:clear_faults().cleared)
  end)
end)

describe("fault soak", function()
  local sb, sdk, token, manifest

  lazy_setup(function()
    sb = flow.start{ args = { "--generate", FILES .. ":2k:mixed", "--sync-pace", SYNC_PACE }, timeout = 60 }
    sdk = assert(flow.sdk(sb, { timeout = TIMEOUT, retry_options = RETRY }))
    manifest = sb:control("GET", "manifest")
    assert(manifest.count == FILES)
  end)

  lazy_teardown(function()
    if sb then sb:stop() end
  end)

  -- A new session: its sync starts pending (or, instant, is completed at once).
  local function session(instant)
    return assert(sdk:read_session{ contract = flow.contract(), user_access_token = token,
                                    session_options = instant and { sourceFetch = false } or nil }).session.key
  end

  local function sync(key, extra)
    local rec = { got = {}, hashes = {}, errors = {}, failed = {} }
    local opts = {
      contract = flow.contract(), user_access_token = token, session_key = key,
      poll_interval = POLL, max_time = MAX_TIME,
      on_file_data = function(file)
        local name = file.file_name
        rec.got[name] = (rec.got[name] or 0) + 1
        rec.hashes[name] = hex(core.sha256(file.file_data))
      end,
      on_file_error = failure_recorder(rec),
    }
    for k, v in pairs(extra or {}) do opts[k] = v end
    local t0 = flow.now()
    local res, err = sdk:read_all_files(opts)
    rec.seconds = flow.now() - t0
    return res, err, rec
  end

  local function assert_intact(rec, name)
    assert.are.equal(1, rec.got[name], name .. " delivered " .. tostring(rec.got[name]) .. " times")
    assert.are.equal(manifest.files[name], rec.hashes[name], name .. " is not intact")
  end

  -- On loopback, and with the sandbox 40 ms of round trip away (kept-alive connections
  -- then carry most requests, and the random resets land on them).
  for _, latency in ipairs{ 0, 40 } do
    it("delivers every file once and intact, reports each failure once, with bounded retries, "
       .. "under 10% random faults, " .. latency .. " ms away #timing", function()
      sb:reset()
      sb:control("POST", "latency", { ms = latency })
      sb:control("POST", "connections", { close = "idle" })   -- the next ones go through the delay
      token = flow.login(sdk)
      local key = session()
      local rule = sb:fault{ method = "GET", path = QUERY .. key, probability = PROBABILITY, seed = SEED,
                             actions = ACTIONS }
      local res, err, rec = sync(key)
      assert.is_nil(err, tostring(err))
      assert.are.equal("completed", res.status.state)
      assert.is_true(rec.seconds < MAX_TIME, rec.seconds .. " s")

      -- The outcome the seed predicts.
      local expect_failed, expect_attempts, download_faults = {}, {}, 0
      for name in pairs(manifest.files) do
        local a, failed = predicted(SEED, file_key(name))
        expect_attempts[file_key(name)] = a
        if failed then expect_failed[name] = true end
        download_faults = download_faults + (failed and a or a - 1)
      end
      local n_failed = count_keys(expect_failed)
      assert.is_true(n_failed >= 1, "the seed fails no file for good: the failure path goes untested")

      -- Files: each failure reported once, every other file delivered once and intact.
      assert.are.equal(FILES - n_failed, res.files)
      assert.are.equal(n_failed, res.failures)
      assert.are.equal(n_failed, #rec.errors)
      for name in pairs(manifest.files) do
        if expect_failed[name] then
          assert.are.equal(1, rec.failed[name], name .. " should be reported failed once")
          assert.is_nil(rec.got[name], name .. " failed and was delivered too")
        else
          if rec.failed[name] then
            for _, f in ipairs(rec.errors) do
              assert(f.file_name ~= name, name .. " reported failed: " .. tostring(f.error))
            end
          end
          assert_intact(rec, name)
        end
      end
      for _, f in ipairs(rec.errors) do
        assert.is_table(f.error)
        assert.is_truthy(({ ServerError = true, NetworkError = true, FileDecryptionError = true })[f.error.kind],
                         tostring(f.error))
        assert.are.equal(RETRY.limit + 1, f.error.attempts, tostring(f.error))
      end

      -- Requests: exactly the attempts predicted, never more than 1 + limit per request.
      local faults = sb:faults()
      assert.are.equal(1, #faults)
      local r = faults[1]
      assert.are.equal(rule, r.id)
      local list_requests = predicted_list(SEED, res.polls)
      assert.are.equal(list_requests, r.seen["GET "], "file-list requests")
      local downloads = 0
      for k, n in pairs(r.seen) do
        if k ~= "GET " then
          downloads = downloads + n
          assert.are.equal(expect_attempts[k], n, k .. ": attempts")
          assert.is_true(n <= RETRY.limit + 1, k .. ": " .. n .. " attempts")
        end
      end
      assert.are.equal(FILES, count_keys(r.seen) - 1, "a file was never requested")
      local list_faults = list_requests - res.polls
      assert.are.equal(download_faults + list_faults, r.applied)
      for i, a in ipairs(ACTIONS) do
        assert.is_true(r.applied_by[i] > 0, "the seed never used " .. a.action .. " " .. tostring(a.status or ""))
      end
      local share = r.applied / r.matched
      assert.is_true(share > 0.07 and share < 0.13, "faulted share " .. share)

      local by = {}
      for i, n in ipairs(r.applied_by) do by[i] = string.format("%d", n) end
      print(string.format("\n  soak (%d ms): %d files in %.1f s, %d polls, %d list requests (%d faulted), "
        .. "%d file requests (%d faulted), %d faults in all (%.1f%%; 500/503/429/reset/truncate/delay: %s), "
        .. "%d files failed for good", latency, FILES, rec.seconds, res.polls, list_requests, list_faults, downloads,
        download_faults, r.applied, 100 * share, table.concat(by, "/"), n_failed))

      -- The final token works (for a read here; for a refresh at the end).
      local accounts, aerr = sdk:read_accounts{ contract = flow.contract(), user_access_token = res.user_access_token }
      assert.is_nil(aerr, tostring(aerr))
      assert.is_table(accounts.accounts)

      -- What failed reads again in the same session, and a new sync delivers the whole library.
      for name in pairs(expect_failed) do
        sb:clear_faults()
        local file, ferr = sdk:read_file{ contract = flow.contract(), user_access_token = res.user_access_token,
                                          session_key = key, file_name = name }
        assert.is_nil(ferr, tostring(ferr))
        assert.are.equal(manifest.files[name], hex(core.sha256(file.file_data)))
      end
      sb:clear_faults()
      token = accounts.user_access_token
      local key2 = session(true)
      local res2, err2, rec2 = sync(key2)
      assert.is_nil(err2, tostring(err2))
      assert.are.equal(FILES, res2.files)
      assert.are.equal(0, res2.failures)
      for name in pairs(manifest.files) do assert_intact(rec2, name) end
      print(string.format("  re-sync without faults: %d files in %.1f s", FILES, rec2.seconds))
      local refreshed = assert(sb:call("POST", "oauth/token", { claims = { grant_type = "refresh_token",
        refresh_token = res2.user_access_token.refresh_token.value } }))
      assert.are.equal(201, refreshed.status, "the final token does not refresh")
      sb:control("POST", "latency", { ms = 0 })
    end)
  end

  describe("a sandbox stopped and restarted on the same port mid-sync", function()
    local RFILES = 30
    local rsb, rsdk, rmanifest

    lazy_setup(function()
      rsb = flow.start{ args = { "--generate", RFILES .. ":2k:mixed", "--sync-pace", "0.3" } }
      rmanifest = rsb:control("GET", "manifest")
    end)

    lazy_teardown(function()
      if rsb then rsb:stop() end
    end)

    before_each(function()
      rsb:restart()
      rsdk = assert(flow.sdk(rsb, { timeout = 2 }))
    end)

    -- Runs a sync that `outage(sync)` interrupts after `after` files: -> res, err, rec
    local function interrupted(utoken, after, outage)
      local key = assert(rsdk:read_session{ contract = flow.contract(), user_access_token = utoken }).session.key
      local rec = { got = {}, failed = {}, errors = {}, n = 0 }
      local t0 = flow.now()
      local ok, res, err = pcall(rsdk.read_all_files, rsdk, {
        contract = flow.contract(), user_access_token = utoken, session_key = key,
        poll_interval = 0.05, max_time = 20, concurrency = 3,
        on_file_data = function(file, running)
          local name = file.file_name
          rec.got[name] = (rec.got[name] or 0) + 1
          assert(rmanifest.files[name] == hex(core.sha256(file.file_data)), name .. " is not intact")
          rec.n = rec.n + 1
          if rec.n == after then outage(running) end
        end,
        on_file_error = failure_recorder(rec),
      })
      rec.seconds = flow.now() - t0
      assert(ok, "read_all_files raised: " .. tostring(res))
      return res, err, rec
    end

    -- Every file delivered at most once, each failure reported once, none both; the result's
    -- counts are the callbacks'.
    local function assert_accounted(res, err, rec)
      local result = res or err.result
      assert.is_table(result)
      local delivered = count_keys(rec.got)
      for name, n in pairs(rec.got) do
        assert.are.equal(1, n, name .. " delivered " .. n .. " times")
        assert.is_nil(rec.failed[name], name .. " delivered and reported failed")
      end
      for name, n in pairs(rec.failed) do
        assert.are.equal(1, n, name .. " reported failed " .. n .. " times")
      end
      assert.are.equal(delivered, result.files)
      assert.are.equal(#rec.errors, result.failures)
      if res then
        -- no fatal error: every file was either delivered or reported
        assert.are.equal(RFILES, delivered + #rec.errors)
      else
        assert.is_true(delivered + #rec.errors <= RFILES)
      end
      assert.is_true(delivered < RFILES, "the outage came too late to be seen")
      assert.is_true(#rec.errors > 0 or err ~= nil, "the outage was not reported")
      return result
    end

    -- After the restart the user is forgotten: the old token is refused (refresh included),
    -- the user authorizes again, and a new sync delivers every file once and intact.
    local function resync(old_token)
      local r, e = rsdk:read_session{ contract = flow.contract(), user_access_token = old_token }
      assert.is_nil(r)
      assert.are.equal("ServerError", e.kind, tostring(e))
      assert.are.equal("InvalidToken", e.code, tostring(e))
      flow.record_error(e)
      -- A new SDK object: the restarted sandbox signs with a new key, and the old object
      -- fetched the JWKS less than jwks.cooldown (30 s) ago, so it would refuse the new kid
      -- without fetching again (see the note in the report on jwt.lua).
      rsdk = assert(flow.sdk(rsb, { timeout = 2 }))
      local fresh = flow.login(rsdk)
      local key = assert(rsdk:read_session{ contract = flow.contract(), user_access_token = fresh }).session.key
      local got, bad = {}, {}
      local res, err = rsdk:read_all_files{ contract = flow.contract(), user_access_token = fresh,
        session_key = key, poll_interval = 0.05, max_time = 20,
        on_file_data = function(file)
          got[file.file_name] = (got[file.file_name] or 0) + 1
          if rmanifest.files[file.file_name] ~= hex(core.sha256(file.file_data)) then bad[#bad + 1] = file.file_name end
        end }
      assert.is_nil(err, tostring(err))
      assert.are.equal(RFILES, res.files)
      assert.are.equal(0, res.failures)
      assert.are.same({}, bad)
      for name in pairs(rmanifest.files) do assert.are.equal(1, got[name], name) end
    end

    it("reports an outage that outlasts the retries as a NetworkError or file failures, promptly", function()
      local first = flow.login(rsdk)
      local res, err, rec = interrupted(first, 8, function() rsb:stop() end)
      assert.is_true(rec.seconds < 20.5, rec.seconds .. " s (max_time 20)")
      if not res then
        assert.are.equal("NetworkError", err.kind, tostring(err))
        flow.record_error(err)
      end
      for _, f in ipairs(rec.errors) do
        assert.are.equal("NetworkError", f.error.kind, tostring(f.error))
      end
      assert_accounted(res, err, rec)
      print(string.format("\n  outage: %s after %.2f s, %d files delivered, %d reported failed",
        res and "result" or tostring(err), rec.seconds, count_keys(rec.got), #rec.errors))
      rsb:restart()
      resync(first)
    end)

    it("reports a sandbox that comes back having forgotten the user, and a new sync completes", function()
      local first = flow.login(rsdk)
      -- stop and start again inside the callback: the SDK's retries meet the new process
      local res, err, rec = interrupted(first, 8, function() rsb:restart() end)
      assert.is_true(rec.seconds < 20.5, rec.seconds .. " s (max_time 20)")
      if not res then
        assert.is_truthy(({ NetworkError = true, ServerError = true })[err.kind], tostring(err))
        flow.record_error(err)
      end
      assert_accounted(res, err, rec)
      print(string.format("\n  restart: %s after %.2f s, %d files delivered, %d reported failed (%s)",
        res and "result" or tostring(err), rec.seconds, count_keys(rec.got), #rec.errors,
        rec.errors[1] and tostring(rec.errors[1].error) or "-"))
      resync(first)
    end)
  end)

  leak_check.it_leaks_nothing()
end)
