-- read_all_files and the files iterator (doc/protocol.md "Reading a library"; doc/architecture.md
-- "The path of one file"): polling through pending/running to partial/completed, a
-- deadline and a stall limit, new and updated files downloaded by updatedDate, file names as
-- data, bounded concurrency, callbacks, stop() that cancels downloads in flight, per-file
-- sinks, per-account problems apart from fatal errors, and faults of every kind mid-sync on
-- the file list and on the downloads: every file still delivered once, intact, and the final
-- token still good. Against the sandbox over real HTTP.
local flow = require "flow"
local leak_check = require "leak_check"
local sandbox_hooks = require "sandbox_hooks"
local core = require "digime.core"
local digime = require "digime"

local QUERY = "/v1.7/permission-access/query/"
local UNI = "\195\188n\195\175.json"    -- "ünï.json"

local hex = require("encode").hex

local keys_of = require("tables").keys_of

describe("read_all_files", function()
  local sb, sdk, token, manifest, refreshed

  lazy_setup(function()
    sb = flow.start{ args = { "--sync-pace", "0.05", "--hostile-names" } }
    sdk = assert(flow.sdk(sb, { on_token_refresh = function(new, old)
      refreshed[#refreshed + 1] = { new = new, old = old }
    end }))
    manifest = sb:control("GET", "manifest")
  end)

  sandbox_hooks.stop_and_reset(function() return sb end)

  before_each(function()
    refreshed = {}
    token = flow.login(sdk)
  end)

  -- A new session: the sync starts again (pending); instant = already completed.
  local function session(instant)
    return assert(sdk:read_session{ contract = flow.contract(), user_access_token = token,
                                    session_options = instant and { sourceFetch = false } or nil }).session.key
  end

  -- Runs a sync with recording callbacks; extra overrides or adds options (a callback in
  -- extra runs after the recording one). -> res, err, rec
  local function run_sync(key, extra, runner)
    local rec = { got = {}, hashes = {}, order = {}, errors = {}, states = {}, files = {} }
    extra = extra or {}
    local opts = {
      contract = flow.contract(), user_access_token = token, session_key = key, poll_interval = 0.05,
      max_time = 20,
      on_file_data = function(file, sync)
        local name = file.file_name
        rec.got[name] = (rec.got[name] or 0) + 1
        rec.hashes[name] = file.file_data and hex(core.sha256(file.file_data)) or nil
        rec.order[#rec.order + 1] = name
        rec.files[#rec.files + 1] = file
        if extra.on_file_data then return extra.on_file_data(file, sync) end
      end,
      on_file_error = function(failure, sync)
        rec.errors[#rec.errors + 1] = failure
        flow.record_error(failure.error)
        if extra.on_file_error then return extra.on_file_error(failure, sync) end
      end,
      on_status_change = function(state, sync)
        rec.states[#rec.states + 1] = state
        if extra.on_status_change then return extra.on_status_change(state, sync) end
      end,
    }
    for k, v in pairs(extra) do
      if k ~= "on_file_data" and k ~= "on_file_error" and k ~= "on_status_change" then opts[k] = v end
    end
    local t0 = flow.now()
    local res, err
    if runner then
      res, err = runner(opts)
    else
      res, err = sdk:read_all_files(opts)
    end
    rec.seconds = flow.now() - t0
    return res, err, rec
  end

  -- Every file of the default library delivered exactly once and intact.
  local function assert_every_file_once(rec, what)
    what = what or ""
    local names = {}
    for name in pairs(manifest.files) do names[#names + 1] = name end
    table.sort(names)
    local errs = {}
    for _, f in ipairs(rec.errors) do errs[#errs + 1] = f.file_name .. ": " .. tostring(f.error) end
    assert(#rec.errors == 0, what .. ": file errors: " .. table.concat(errs, "; "))
    assert.are.same(names, keys_of(rec.got), what)
    for _, name in ipairs(names) do
      assert.are.equal(1, rec.got[name], what .. ": " .. name .. " delivered " .. rec.got[name] .. " times")
      assert.are.equal(manifest.files[name], rec.hashes[name], what .. ": " .. name .. " is not intact")
    end
  end

  -- Whether the sandbox takes t's refresh token (asked directly, not through the SDK).
  local function refresh_works(t)
    local res = assert(sb:call("POST", "oauth/token", {
      claims = { grant_type = "refresh_token", refresh_token = t.refresh_token.value } }))
    return res.status == 201, res.status
  end

  local function list_count(key)
    return flow.count(sb, QUERY .. key)
  end

  -- A file list answer the sandbox gives instead of its own (exact path, GET).
  local function list_answer(key, body, count)
    return sb:fault{ method = "GET", path = QUERY .. key, match = "exact", action = "status", status = 200,
                     body = body, headers = { ["Content-Type"] = "application/json" }, count = count or 1 }
  end

  describe("polling", function()
    it("goes pending -> running -> completed, reporting every change in order, the first pending too", function()
      local key = session()
      list_answer(key, '{"status":{"state":"pending"}}')     -- the first poll is pending, surely
      local res, err, rec = run_sync(key)
      assert.is_nil(err)
      assert.are.same({ "pending", "running", "completed" }, rec.states)
      assert.are.equal("completed", res.status.state)
      assert.are.equal(13, res.files)
      assert.are.equal(0, res.failures)
      assert.are.same({}, res.account_problems)
      assert.are.equal(list_count(key), res.polls)
      assert.is_true(res.polls >= 4 and res.polls <= 10, res.polls .. " polls")
      assert_every_file_once(rec)
      assert.is_nil(res.stopped)
    end)

    it("sees the sandbox's own first pending when polled at once #timing", function()
      local key = session()
      local res, err, rec = run_sync(key)
      assert.is_nil(err)
      assert.are.same({ "pending", "running", "completed" }, rec.states)
      assert.are.equal(13, res.files)
    end)

    it("waits poll_interval between polls #timing", function()
      local key = session()
      local res, err, rec = run_sync(key, { poll_interval = 0.25 })
      assert.is_nil(err)
      assert.is_true(res.polls >= 4)
      assert.is_true(rec.seconds >= (res.polls - 1) * 0.25 * 0.9,
        string.format("%d polls in %.2f s with poll_interval 0.25", res.polls, rec.seconds))
      assert.is_true(rec.seconds < res.polls * 0.25 + 1.5, string.format("%.2f s", rec.seconds))
    end)

    it("polls once when the list answers completed or partial at once", function()
      local key = session(true)
      list_answer(key, '{"status":{"state":"completed"}}')
      local res, err, rec = run_sync(key)
      assert.is_nil(err)
      assert.are.equal(1, res.polls)
      assert.are.equal(0, res.files)
      assert.are.same({ "completed" }, rec.states)
      list_answer(key, '{"status":{"state":"partial"},"fileList":[]}')
      res, err, rec = run_sync(key)
      assert.is_nil(err)
      assert.are.equal(1, res.polls)
      assert.are.equal("partial", res.status.state)
      assert.are.same({ "partial" }, rec.states)
      -- pending then completed: two polls
      list_answer(key, '{"status":{"state":"pending"}}')
      list_answer(key, '{"status":{"state":"completed"}}')
      res = assert(run_sync(key))
      assert.are.equal(2, res.polls)
    end)

    it("downloads a file again when its updatedDate grows, and with updatedDate <= 0", function()
      local key = session(true)
      local function list(state, date)
        return '{"status":{"state":"' .. state .. '"},"fileList":['
          .. '{"name":"notes.txt","updatedDate":' .. date .. '},'
          .. '{"name":"a.b.c.json","updatedDate":' .. date .. '},'
          .. '{"name":"constructor","updatedDate":' .. date .. '}]}'
      end
      list_answer(key, list("running", 10))
      list_answer(key, list("running", 20))
      list_answer(key, '{"status":{"state":"completed"}}')
      local res, err, rec = run_sync(key)
      assert.is_nil(err)
      assert.are.equal(6, res.files)
      assert.are.same({ ["a.b.c.json"] = 2, constructor = 2, ["notes.txt"] = 2 }, rec.got)
      -- the list of the poll that scheduled each download goes with it
      for _, f in ipairs(rec.files) do
        assert.are.equal(3, #f.file_list)
      end
      -- updatedDate 0 and below
      list_answer(key, list("completed", 0))
      res = assert(run_sync(key))
      assert.are.equal(3, res.files)
      list_answer(key, list("completed", -5))
      res = assert(run_sync(key))
      assert.are.equal(3, res.files)
    end)

    it("ends with SyncTimeout past max_time, the result and token attached #timing", function()
      local key = session()
      list_answer(key, '{"status":{"state":"pending"}}', 1000)
      local res, err, rec = run_sync(key, { max_time = 0.4 })
      assert.is_nil(res)
      assert.are.equal("DigiMeSDKError", err.kind)
      assert.are.equal("SyncTimeout", err.code)
      assert.is_table(err.result)
      assert.are.equal(0, err.result.files)
      assert.is_true(err.result.polls >= 2)
      assert.is_table(err.user_access_token)
      assert.are.equal(token.access_token.value, err.user_access_token.access_token.value)
      assert.is_true(rec.seconds < 2, rec.seconds .. " s")
      sb:clear_faults()
    end)

    it("ends with SyncStalled after max_unchanged_polls unchanged answers #timing", function()
      local key = session()
      list_answer(key, '{"status":{"state":"running"},"fileList":[{"name":"notes.txt","updatedDate":5}]}', 1000)
      local res, err, rec = run_sync(key, { max_unchanged_polls = 3, poll_interval = 0.01 })
      assert.is_nil(res)
      assert.are.equal("SyncStalled", err.code)
      assert.are.equal(4, err.result.polls)
      -- notes.txt was queued once; the stall may cancel its download if it is still running
      assert.is_true(err.result.files <= 1)
      assert.is_true((rec.got["notes.txt"] or 0) <= 1)
      assert.is_table(err.user_access_token)
      assert.is_true(rec.seconds < 2)
      sb:clear_faults()
    end)

    it("takes a SyncTimeout while downloads are still running, and cancels them #timing", function()
      local key = session(true)
      sb:fault{ method = "GET", path = QUERY .. key .. "/", action = "hang", count = 13 }
      local res, err, rec = run_sync(key, { max_time = 0.5 })
      assert.is_nil(res)
      assert.are.equal("SyncTimeout", err.code)
      assert.is_true(rec.seconds < 2, rec.seconds .. " s")
      assert.are.equal(0, err.result.files)
      sb:clear_faults()
    end)
  end)

  describe("files", function()
    it("delivers every file of the default library once, odd names included, each as read_file returns it", function()
      local key = session()
      local res, err, rec = run_sync(key)
      assert.is_nil(err)
      assert_every_file_once(rec)
      for _, name in ipairs{ "constructor", "__proto__", "a.b.c.json", "with space.json", UNI } do
        assert.are.equal(1, rec.got[name], name)
      end
      for _, f in ipairs(rec.files) do
        -- file_list is decoded when read, so pairs() does not list it
        assert.are.same({ "compression", "file_data", "file_metadata", "file_name", "last_modified",
                          "user_access_token" }, keys_of(f))
        assert.is_nil(rawget(f, "file_list"))
        assert.is_table(f.file_list)
        assert.are.equal(f.file_list, f.file_list, "decoded once, not at every read")
        local listed = false
        for _, e in ipairs(f.file_list) do
          if e.name == f.file_name then listed = true end
        end
        assert.is_true(listed, f.file_name .. " is not in the file_list given with it")
      end
      assert.are.equal(13, res.files)
    end)

    it("downloads a file touched while the sync runs a second time, with its new content #timing", function()
      local key = session()
      local touched
      local res, err, rec = run_sync(key, { poll_interval = 0.25, on_file_data = function(file)
        if file.file_name == "instagram_posts.json" and not touched then
          touched = sb:control("POST", "library", { touch = "instagram_posts.json" })
        end
      end })
      assert.is_nil(err)
      assert.is_table(touched, "instagram_posts.json was not delivered while the sync ran")
      assert.are.equal(2, rec.got["instagram_posts.json"])
      assert.are.equal(14, res.files)
      local dates, datas = {}, {}
      for _, f in ipairs(rec.files) do
        if f.file_name == "instagram_posts.json" then
          for _, e in ipairs(f.file_list) do
            if e.name == f.file_name then dates[#dates + 1] = e.updatedDate end
          end
          datas[#datas + 1] = hex(core.sha256(f.file_data))
        end
      end
      assert.is_true(dates[2] > dates[1], "the second download is not for a later updatedDate")
      assert.are.equal(touched.updatedDate, dates[2])
      assert.are.equal(manifest.files["instagram_posts.json"], datas[1])
      assert.are.equal(touched.sha256, datas[2])
      for name, n in pairs(rec.got) do
        if name ~= "instagram_posts.json" then assert.are.equal(1, n, name) end
      end
    end)

    it("gives each file to the sink its factory returns, or as file_data when it returns nil", function()
      local key = session()
      local sinks, entries = {}, {}
      local res, err, rec = run_sync(key, { sink = function(name, entry)
        entries[name] = entry
        if not name:match("%.json$") then return nil end
        local s = { chunks = {}, nils = 0 }
        sinks[name] = s
        return function(chunk)
          if chunk == nil then s.nils = s.nils + 1 else s.chunks[#s.chunks + 1] = chunk end
          return true
        end
      end })
      assert.is_nil(err)
      assert.are.equal(13, res.files)
      for name, entry in pairs(entries) do
        assert.are.equal(name, entry.name)
        assert.is_number(entry.updatedDate)
      end
      for _, f in ipairs(rec.files) do
        local s = sinks[f.file_name]
        if s then
          assert.is_nil(f.file_data, f.file_name)
          assert.are.equal(1, s.nils, f.file_name)
          assert.are.equal(manifest.files[f.file_name], hex(core.sha256(table.concat(s.chunks))), f.file_name)
        else
          assert.is_string(f.file_data, f.file_name)
          assert.are.equal(manifest.files[f.file_name], hex(core.sha256(f.file_data)), f.file_name)
        end
      end
      assert.is_truthy(sinks[UNI])
      assert.is_nil(sinks["notes.txt"])
    end)

    it("reports a sink factory that raises as that file's failure", function()
      local key = session(true)
      local res, err, rec = run_sync(key, { sink = function(name)
        if name == "notes.txt" then error("no sink for you") end
      end })
      assert.is_nil(err)
      assert.are.equal(12, res.files)
      assert.are.equal(1, res.failures)
      assert.are.equal(1, #rec.errors)
      assert.are.equal("notes.txt", rec.errors[1].file_name)
      assert.is_truthy(tostring(rec.errors[1].error):find("no sink for you", 1, true))
    end)

    it("reports a file that fails through on_file_error and goes on with the others", function()
      local key = session(true)
      sb:fault{ method = "GET", path = QUERY .. key .. "/notes.txt", match = "exact", action = "status", status = 404,
                body = { error = { code = "FileNotFound", message = "gone" } }, count = 10 }
      local res, err, rec = run_sync(key)
      assert.is_nil(err)
      assert.are.equal(12, res.files)
      assert.are.equal(1, res.failures)
      assert.are.equal(1, #rec.errors)
      local f = rec.errors[1]
      assert.are.same({ "error", "file_name" }, keys_of(f))   -- and file_list, decoded when read
      assert.are.equal("notes.txt", f.file_name)
      assert.are.equal("ServerError", f.error.kind)
      assert.are.equal(404, f.error.status)
      assert.are.equal(13, #f.file_list)
      assert.is_nil(rec.got["notes.txt"])
    end)

    it("keeps at most `concurrency` downloads in flight #timing", function()
      for _, c in ipairs{ 3, 1, 5 } do
        sb:reset()
        token = flow.login(sdk)
        local key = session(true)
        sb:fault{ method = "GET", path = QUERY .. key .. "/", action = "delay", ms = 120, count = 13 }
        local res, err, rec = run_sync(key, { concurrency = c })
        assert.is_nil(err)
        assert_every_file_once(rec, "concurrency " .. c)
        assert.are.equal(13, res.files)
        local max = sb:stats().max_inflight_downloads
        assert.is_true(max <= c, "concurrency " .. c .. ": " .. max .. " downloads in flight at once")
        if c > 1 then
          assert.is_true(max >= 2, "concurrency " .. c .. ": the downloads did not overlap (" .. max .. ")")
        else
          assert.are.equal(1, max)
        end
      end
    end)

    it("keeps up to 16 downloads in flight by default (enough to fill a long link)", function()
      assert.are.equal(16, require("digime.sync").DEFAULT_CONCURRENCY)
      local key = session(true)
      -- every download waits: all 13 files of the library are asked for at once
      sb:fault{ method = "GET", path = QUERY .. key .. "/", action = "delay", ms = 300, count = 13 }
      local res, err = run_sync(key)
      assert.is_nil(err)
      assert.are.equal(13, res.files)
      assert.are.equal(13, sb:stats().max_inflight_downloads)
    end)
  end)

  describe("stop", function()
    it("stops from on_file_data, cancelling the downloads in flight, and returns promptly #timing", function()
      local key = session(true)
      -- every download but one hangs: the one that answers stops the sync
      sb:fault{ method = "GET", path = QUERY .. key .. "/", action = "hang", count = 12 }
      local res, err, rec = run_sync(key, { concurrency = 13, on_file_data = function(_, sync)
        sync:stop()
      end })
      assert.is_nil(err)
      assert.is_true(res.stopped)
      assert.are.equal(1, res.files)
      assert.are.equal(0, res.failures, "cancelled downloads are not failures")
      assert.are.equal(0, #rec.errors)
      assert.is_true(rec.seconds < 1.5, rec.seconds .. " s")
      -- the hung requests were given up: the sandbox sees their connections close
      local deadline = flow.now() + 3
      while sb:stats().inflight_downloads > 0 and flow.now() < deadline do flow.sandbox.sleep(0.05) end
      assert.are.equal(0, sb:stats().inflight_downloads, "downloads still open on the sandbox")
      assert.are.same({}, sb:faults())
    end)

    it("starts no queued download once stopped (concurrency below the number of files) #timing", function()
      local key = session(true)
      sb:fault{ method = "GET", path = QUERY .. key .. "/", action = "delay", ms = 150, count = 13 }
      local res, err, rec = run_sync(key, { concurrency = 2, on_file_data = function(_, sync)
        sync:stop()
      end })
      assert.is_nil(err)
      assert.is_true(res.stopped)
      assert.is_true(rec.seconds < 1.5, rec.seconds .. " s")
      flow.sandbox.sleep(0.4)
      local started = 13 - (sb:faults()[1] or { count = 0 }).count
      assert.is_true(started <= 2, started .. " downloads were started, " .. res.files .. " delivered after stop()")
      assert.is_true(res.files <= 2, res.files .. " files delivered")
      sb:clear_faults()
    end)

    it("stops from on_status_change before any download", function()
      local key = session(true)
      local res, err, rec = run_sync(key, { on_status_change = function(_, sync) sync:stop() end })
      assert.is_nil(err)
      assert.is_true(res.stopped)
      assert.are.equal(0, res.files)
      assert.are.same({ "completed" }, rec.states)
      flow.sandbox.sleep(0.1)
      assert.are.equal(0, sb:stats().downloads)
    end)

    it("stops the sync with a CallbackError when a callback raises", function()
      local key = session(true)
      local res, err = run_sync(key, { concurrency = 1, on_file_data = function() error("callback bug") end })
      assert.is_nil(res)
      assert.are.equal("CallbackError", err.code)
      assert.is_truthy(err.message:find("callback bug", 1, true))
      assert.is_table(err.result)
      assert.is_true(err.result.files >= 1)
      assert.is_table(err.user_access_token)
    end)
  end)

  describe("results", function()
    it("ends with a fatal error (nil, err) when the file list fails for good, result attached", function()
      local key = session()
      sb:fault{ method = "GET", path = QUERY .. key, match = "exact", action = "status", status = 403, count = 100,
                body = { error = { code = "Forbidden", message = "no" } } }
      local res, err = run_sync(key)
      assert.is_nil(res)
      assert.are.equal("ServerError", err.kind)
      assert.are.equal(403, err.status)
      assert.is_table(err.result)
      assert.are.equal(0, err.result.files)
      assert.is_table(err.user_access_token)
      sb:clear_faults()
    end)

    it("runs inside digime.run next to other tasks", function()
      local key = session()
      local res, err, rec = run_sync(key, nil, function(opts)
        return digime.run(function()
          local t = digime.spawn(sdk.read_all_files, sdk, opts)
          local accounts = digime.spawn(sdk.read_accounts, sdk,
                                        { contract = flow.contract(), user_access_token = token })
          assert(accounts:wait())
          return t:wait()
        end)
      end)
      assert.is_nil(err)
      assert.are.equal(13, res.files)
      assert_every_file_once(rec)
    end)

    it("takes every option at once", function()
      local key = session()
      local res, err = sdk:read_all_files{ contract = flow.contract(), user_access_token = token, session_key = key,
        on_file_data = function() end, on_file_error = function() end, on_status_change = function() end,
        sink = function() return nil end, concurrency = 2, poll_interval = 0.02, max_time = 30,
        max_unchanged_polls = 50 }
      assert.is_nil(err)
      assert.are.equal(13, res.files)
      assert.are.same({ "account_problems", "failures", "files", "polls", "status", "user_access_token" }, keys_of(res))
      assert.are.equal(token.access_token.value, res.user_access_token.access_token.value)
    end)
  end)

  describe("faults mid-sync", function()
    local FAULTS = {
      { "500", { action = "status", status = 500 } },
      { "503", { action = "status", status = 503, body = { error = { code = "Busy", message = "busy" } } } },
      { "429 with Retry-After #timing", { action = "status", status = 429, headers = { ["Retry-After"] = "1" } },
        count = 1 },
      { "reset", { action = "reset" } },
      { "truncated body", { action = "truncate" } },
      { "delay", { action = "delay", ms = 300 } },
      { "401 InvalidToken", { action = "status", status = 401,
        body = { error = { code = "InvalidToken", message = "The token (access_token) is invalid" } } }, count = 1 },
    }

    for _, target in ipairs{ "the file list", "the downloads" } do
      for _, f in ipairs(FAULTS) do
        it("delivers every file once and intact after a " .. f[1] .. " on " .. target, function()
          local key = session()
          local installed = false
          local t0 = flow.now()
          local res, err, rec = run_sync(key, { on_status_change = function(state)
            if state == "running" and not installed then
              installed = true
              local spec = {}
              for k, v in pairs(f[2]) do spec[k] = v end
              spec.method = "GET"
              if target == "the file list" then
                spec.path, spec.match, spec.count = QUERY .. key, "exact", f.count or 2
              else
                spec.path, spec.count = QUERY .. key .. "/", f.count or 3
              end
              sb:fault(spec)
            end
          end })
          assert.is_nil(err, tostring(err))
          assert.is_true(installed)
          assert_every_file_once(rec, f[1] .. " on " .. target)
          assert.are.equal(13, res.files)
          assert.are.equal(0, res.failures)
          assert.are.equal("completed", res.status.state)
          assert.are.same({}, sb:faults(), "the faults were not all met")
          if f[1]:find("Retry-After", 1, true) then
            assert.is_true(flow.now() - t0 >= 1, "Retry-After was not waited for")
          end
          if f[1]:find("401", 1, true) then
            assert.are.equal(1, #refreshed)
            assert.are.equal(refreshed[1].new.access_token.value, res.user_access_token.access_token.value,
              "the sync did not return the refreshed token")
          end
          assert.is_true((refresh_works(res.user_access_token)), "the final token does not refresh")
        end)
      end
    end

    it("delivers every file once and intact when the access token expires mid-sync", function()
      local key = session()
      local done = false
      local res, err, rec = run_sync(key, { concurrency = 3, on_file_data = function()
        if not done then
          done = true
          sb:expire("access")
        end
      end })
      assert.is_nil(err, tostring(err))
      assert_every_file_once(rec, "expiry")
      assert.are.equal(1, #refreshed)
      assert.are.equal(1, sb:stats().refreshes)
      assert.are.equal(refreshed[1].new.access_token.value, res.user_access_token.access_token.value)
      assert.is_true((refresh_works(res.user_access_token)), "the final token does not refresh")
    end)
  end)

  describe("the files iterator", function()
    local raw_files

    lazy_setup(function()
      raw_files = getmetatable(sdk).__index.files   -- untracked: keeps the closing value
    end)

    it("yields every file, and false, err for a file that fails", function()
      local key = session()
      sb:fault{ method = "GET", path = QUERY .. key .. "/notes.txt", match = "exact", action = "status", status = 404,
                count = 10 }
      local got, failures = {}, {}
      for file, err in sdk:files{ contract = flow.contract(), user_access_token = token, session_key = key,
                                  poll_interval = 0.05 } do
        if file then
          got[file.file_name] = (got[file.file_name] or 0) + 1
          assert.are.equal(manifest.files[file.file_name], hex(core.sha256(file.file_data)))
          assert.is_table(file.file_list)
        else
          assert.are.equal(false, file)
          failures[#failures + 1] = err
          flow.record_error(err)
        end
      end
      assert.are.equal(1, #failures)
      assert.are.equal("ServerError", failures[1].kind)
      assert.are.equal(404, failures[1].status)
      assert.are.equal(12, #keys_of(got))
      for name, n in pairs(got) do assert.are.equal(1, n, name) end
      assert.is_nil(got["notes.txt"])
    end)

    it("ends with false, err on a fatal error", function()
      local key = session()
      list_answer(key, '{"status":{"state":"pending"}}', 1000)
      local steps, last_err = 0, nil
      for file, err in sdk:files{ contract = flow.contract(), user_access_token = token, session_key = key,
                                  poll_interval = 0.01, max_unchanged_polls = 2 } do
        steps = steps + 1
        assert.are.equal(false, file)
        last_err = err
      end
      assert.are.equal(1, steps)
      assert.are.equal("SyncStalled", last_err.code)
      flow.record_error(last_err)
      sb:clear_faults()
    end)

    it("takes a per-file sink factory", function()
      local key = session(true)
      local bytes = {}
      local n = 0
      for file in sdk:files{ contract = flow.contract(), user_access_token = token, session_key = key,
                             sink = function(name)
                               bytes[name] = {}
                               return function(chunk)
                                 if chunk then table.insert(bytes[name], chunk) end
                                 return true
                               end
                             end } do
        n = n + 1
        assert.is_nil(file.file_data)
        assert.are.equal(manifest.files[file.file_name], hex(core.sha256(table.concat(bytes[file.file_name]))))
      end
      assert.are.equal(13, n)
    end)

    it("stops the sync when the loop is left and its closing value closed, cancelling downloads #timing", function()
      local key = session(true)
      sb:fault{ method = "GET", path = QUERY .. key .. "/", action = "hang", count = 12 }
      local step, s, c, closer = raw_files(sdk, { contract = flow.contract(), user_access_token = token,
                                                  session_key = key, concurrency = 13 })
      assert.is_table(closer)
      local first
      local t0 = flow.now()
      for file in step, s, c, closer do   -- luacheck: ignore 512 (Lua 5.4 closes `closer` on break)
        first = file
        break
      end
      closer:close()                      -- LuaJIT: by hand (a second close is harmless)
      assert.is_table(first)
      assert.is_true(flow.now() - t0 < 1.5)
      -- nothing more comes, and quickly
      local more = 0
      while true do
        local f = step()
        if f == nil then break end
        more = more + 1
      end
      assert.are.equal(0, more)
      local deadline = flow.now() + 3
      while sb:stats().inflight_downloads > 0 and flow.now() < deadline do flow.sandbox.sleep(0.05) end
      assert.are.equal(0, sb:stats().inflight_downloads, "downloads still open on the sandbox")
      sb:clear_faults()
    end)
  end)

  describe("with an account that needs reauthorization (--partial)", function()
    local psb, psdk, ptoken

    lazy_setup(function()
      psb = flow.start{ args = { "--sync-pace", "0.05", "--partial" } }
      psdk = assert(flow.sdk(psb))
      ptoken = flow.login(psdk)
    end)

    lazy_teardown(function()
      if psb then psb:stop() end
    end)

    it("ends partial with the account's problem apart, not as a fatal error", function()
      local key = assert(psdk:read_session{ contract = flow.contract(), user_access_token = ptoken }).session.key
      local states = {}
      local res, err = psdk:read_all_files{ contract = flow.contract(), user_access_token = ptoken, session_key = key,
                                            poll_interval = 0.05,
                                            on_status_change = function(s) states[#states + 1] = s end }
      assert.is_nil(err)
      assert.are.equal("partial", res.status.state)
      assert.are.equal("partial", states[#states])
      assert.are.equal(13, res.files)
      assert.are.equal(0, res.failures)
      assert.are.equal(1, #res.account_problems)
      local p = res.account_problems[1]
      assert.are.equal("19_SbSpotify01", p.account_id)
      assert.are.equal("ServiceAuthorizationError", p.code)
      assert.are.equal("ServiceAuthorizationError", p.kind)
      assert.are.equal(511, p.status)
      assert.is_true(p.reauth)
      assert.are.equal(60, p.retry_after)
      assert.is_string(p.message)
      -- the details stay as the server sent them
      assert.are.equal("partial", res.status.details["19_SbSpotify01"].state)
      assert.are.equal("completed", res.status.details["40_SbInstagram01"].state)
    end)
  end)

  leak_check.it_leaks_nothing(true)
end)
