-- Token refresh in the read calls (doc/protocol.md "User access tokens"): a 401 InvalidToken
-- refreshes and retries once, an expiry in the past refreshes
-- before the call, refresh is single-flight per token (rotating refresh tokens: a second
-- refresh with the same token would fail), the new token comes back as user_access_token and
-- through on_token_refresh, a dead refresh token is a ServerError InvalidToken that carries the
-- token, and a sync whose token expires midway ends with a token that still works.
local flow = require "flow"
local leak_check = require "leak_check"
local sandbox_hooks = require "sandbox_hooks"
local digime = require "digime"

local QUERY = "/v1.7/permission-access/query/"
local TOKEN = "/v1.7/oauth/token"
local ACCOUNTS = "/v1.7/permission-access/accounts"

local copy = require("tables").copy

describe("token refresh in the read calls", function()
  local sb, sdk, refreshed, token, key

  lazy_setup(function()
    sb = flow.start{ args = { "--sync-pace", "0.05", "--hostile-names" } }
    sdk = assert(flow.sdk(sb, { on_token_refresh = flow.refresh_recorder(function() return refreshed end) }))
  end)

  sandbox_hooks.stop_and_reset(function() return sb end)

  before_each(function()
    refreshed = {}
    token = flow.login(sdk)
    key = assert(sdk:read_session{ contract = flow.contract(), user_access_token = token,
                                   session_options = { sourceFetch = false } }).session.key
    refreshed = {}
  end)

  -- The log entries from index `from` on (the sandbox logs a request when its answer is done).
  local function log_since(from)
    local out = {}
    local log = sb:log()
    for i = from + 1, #log do out[#out + 1] = log[i] end
    return out
  end

  local function count(entries, method, path_prefix)
    local n = 0
    for _, e in ipairs(entries) do
      if e.method == method and e.path:sub(1, #path_prefix) == path_prefix then n = n + 1 end
    end
    return n
  end

  local function summary(entries)
    local out = {}
    for i, e in ipairs(entries) do
      out[i] = e.method .. " " .. e.path .. " " .. tostring(e.status)
    end
    return table.concat(out, ", ")
  end

  -- Whether the sandbox takes t's refresh token. It rotates: use it last.
  local function refresh_works(t)
    return flow.refresh_works(sb, t)
  end

  -- Compares tokens by their values without printing them.
  local function same_token(a, b, what)
    assert(type(b) == "table", (what or "") .. ": no token")
    assert(a.access_token.value == b.access_token.value and a.refresh_token.value == b.refresh_token.value,
           (what or "") .. ": not the same token")
  end

  -- Each read call as a function of the token.
  local calls = {
    read_session = function(t)
      return sdk:read_session{ contract = flow.contract(), user_access_token = t }
    end,
    read_file_list = function(t)
      return sdk:read_file_list{ contract = flow.contract(), user_access_token = t, session_key = key }
    end,
    read_file = function(t)
      return sdk:read_file{ contract = flow.contract(), user_access_token = t, session_key = key,
                            file_name = "notes.txt" }
    end,
    read_file_metadata = function(t)
      return sdk:read_file_metadata{ contract = flow.contract(), user_access_token = t, session_key = key,
                                     file_name = "notes.txt" }
    end,
    read_accounts = function(t)
      return sdk:read_accounts{ contract = flow.contract(), user_access_token = t }
    end,
  }
  local CALL_NAMES = { "read_session", "read_file_list", "read_file", "read_file_metadata", "read_accounts" }

  it("refreshes on a 401 InvalidToken, retries once, and returns the new token (every read call)", function()
    for _, name in ipairs(CALL_NAMES) do
      local old = token
      sb:expire("access")
      refreshed = {}
      local mark = #sb:log()
      local res, err = calls[name](old)
      assert.is_nil(err, name)
      local new = res.user_access_token
      assert.is_table(new, name)
      assert.are_not.equal(old.access_token.value, new.access_token.value, name)
      assert.are_not.equal(old.refresh_token.value, new.refresh_token.value, name)
      assert.are.equal(old.user.id, new.user.id)
      assert.are.equal(old.consent_id, new.consent_id)
      assert.is_true(new.access_token.expiry > os.time())
      -- on_token_refresh(new, old), once
      assert.are.equal(1, #refreshed, name)
      same_token(new, refreshed[1].new, name)
      assert.are.equal(old.refresh_token.value, refreshed[1].old.refresh_token.value, name)
      -- the call, the refresh, the call again
      local entries = log_since(mark)
      assert.are.equal(3, #entries, name .. ": " .. summary(entries))
      assert.are.equal(401, entries[1].status, name .. ": " .. summary(entries))
      assert.are.equal(TOKEN, entries[2].path, name)
      assert.are.equal(201, entries[2].status, name)
      assert.is_true(entries[3].status < 300, name .. ": " .. summary(entries))
      -- rotation: the old refresh token is dead, the new one works
      assert.is_false((refresh_works(old)), name .. ": the old refresh token still works")
      token = new
    end
    assert.are.equal(#CALL_NAMES, sb:stats().refreshes)
  end)

  it("refreshes before the call when the access token's expiry has passed", function()
    for _, name in ipairs(CALL_NAMES) do
      local stale = copy(token)
      stale.access_token.expiry = os.time() - 5
      refreshed = {}
      local mark = #sb:log()
      local res, err = calls[name](stale)
      assert.is_nil(err, name)
      local entries = log_since(mark)
      assert.are.equal(2, #entries, name .. ": " .. summary(entries))
      assert.are.equal("POST", entries[1].method, name .. ": the refresh did not come first: " .. summary(entries))
      assert.are.equal(TOKEN, entries[1].path, name .. ": " .. summary(entries))
      assert.is_true(entries[2].status < 300, name .. ": " .. summary(entries))
      assert.are.equal(1, #refreshed, name)
      assert.are.equal(stale.refresh_token.value, refreshed[1].old.refresh_token.value)
      assert.are_not.equal(stale.access_token.value, res.user_access_token.access_token.value)
      token = res.user_access_token
    end
  end)

  it("refreshes once for many concurrent calls with the same expired token (single flight)", function()
    sb:expire("access")
    local names = { "instagram_posts.json", "instagram_media.json", "constructor", "__proto__", "a.b.c.json",
                    "with space.json", "notes.txt", "fitbit_sleep.json", "fitbit_profile.json", "empty.txt" }
    local mark = #sb:log()
    local results = digime.run(function()
      local tasks = {}
      for i = 1, 20 do
        tasks[i] = digime.spawn(sdk.read_file, sdk, { contract = flow.contract(), user_access_token = token,
                                                      session_key = key, file_name = names[(i - 1) % #names + 1] })
      end
      tasks[21] = digime.spawn(calls.read_accounts, token)
      tasks[22] = digime.spawn(calls.read_file_list, token)
      tasks[23] = digime.spawn(calls.read_file_metadata, token)
      local out = {}
      for i, t in ipairs(tasks) do out[i] = { t:wait() } end
      return out
    end)
    local new
    for i, r in ipairs(results) do
      assert.is_nil(r[2], "call " .. i .. ": " .. tostring(r[2]))
      new = new or r[1].user_access_token
      assert.are.equal(new.access_token.value, r[1].user_access_token.access_token.value, "call " .. i)
    end
    local entries = log_since(mark)
    assert.are.equal(1, count(entries, "POST", TOKEN), summary(entries))
    assert.are.equal(1, sb:stats().refreshes)
    assert.are.equal(1, #refreshed)
    assert.is_true((refresh_works(new)))
  end)

  it("reuses the new token for a 401 that comes after the refresh has finished", function()
    -- notes.txt answers late: its 401 arrives once empty.txt's refresh is done. Presenting the
    -- old refresh token a second time would fail (it has rotated).
    sb:expire("access")
    sb:fault{ method = "GET", path = QUERY .. key .. "/notes.txt", match = "exact", action = "delay", ms = 600 }
    local ra, ea, rb, eb = digime.run(function()
      local a = digime.spawn(calls.read_file_metadata, token)
      local b = digime.spawn(function(t)
        return sdk:read_file{ contract = flow.contract(), user_access_token = t, session_key = key,
                              file_name = "notes.txt" }
      end, token)
      local r1, e1 = a:wait()
      local r2, e2 = b:wait()
      return r1, e1, r2, e2
    end)
    assert.is_nil(ea)
    assert.is_nil(eb, "the late call failed: " .. tostring(eb))
    assert.are.equal(ra.user_access_token.access_token.value, rb.user_access_token.access_token.value)
    assert.are.equal(1, sb:stats().refreshes, "the rotated refresh token was presented again")
    assert.are.equal(1, #refreshed)
  end)

  it("retries only once: a second 401 is returned, with the token now in force", function()
    sb:fault{ method = "GET", path = ACCOUNTS, match = "exact", action = "status", status = 401, count = 2,
              body = { error = { code = "InvalidToken", message = "The token (access_token) is invalid" } } }
    local mark = #sb:log()
    local res, err = calls.read_accounts(token)
    assert.is_nil(res)
    assert.are.equal("ServerError", err.kind)
    assert.are.equal("InvalidToken", err.code)
    assert.are.equal(401, err.status)
    local entries = log_since(mark)
    assert.are.equal(1, count(entries, "POST", TOKEN), summary(entries))
    assert.are.equal(2, count(entries, "GET", ACCOUNTS), summary(entries))
    assert.are.equal(1, #refreshed)
    -- the refreshed token is the one in force: the caller must keep it
    same_token(refreshed[1].new, err.user_access_token, "the error's token")
    assert.is_true((refresh_works(err.user_access_token)))
  end)

  it("does not refresh on a 401 with another code", function()
    sb:fault{ method = "GET", path = ACCOUNTS, match = "exact", action = "status", status = 401,
              body = { error = { code = "InsufficientScope", message = "more scope needed" } } }
    local res, err = calls.read_accounts(token)
    assert.is_nil(res)
    assert.are.equal("ServerError", err.kind)
    assert.are.equal("InsufficientScope", err.code)
    assert.are.equal(0, #refreshed)
    assert.are.equal(0, sb:stats().refreshes)
    same_token(token, err.user_access_token, "the error's token")
  end)

  it("does not replay a refresh whose answer was lost, and can refresh later (no keep-alive)", function()
    -- A connection of its own per attempt: a reset refresh may have reached the server.
    local fresh_sdk = assert(flow.sdk(sb, { keepalive = false }))
    sb:expire("access")
    sb:fault{ method = "POST", path = TOKEN, match = "exact", action = "reset" }
    local mark = #sb:log()
    local res, err = fresh_sdk:read_accounts{ contract = flow.contract(), user_access_token = token }
    assert.is_nil(res)
    assert.are.equal("NetworkError", err.kind)
    local entries = log_since(mark)
    assert.are.equal(1, count(entries, "POST", TOKEN), summary(entries))
    same_token(token, err.user_access_token, "the error's token")
    -- the reset came before the sandbox processed the refresh: the token still refreshes
    res, err = calls.read_accounts(err.user_access_token)
    assert.is_nil(err)
    assert.are_not.equal(token.access_token.value, res.user_access_token.access_token.value)
  end)

  it("sends a refresh again, newly signed, when its kept-alive connection closed before the server read it", function()
    -- before_each's login and read_session left a connection in the pool
    sb:expire("access")
    sb:fault{ method = "POST", path = TOKEN, match = "exact", action = "reset" }
    local mark = #sb:log()
    local res, err = calls.read_accounts(token)
    assert.is_nil(err)
    local entries = log_since(mark)
    assert.are.equal(2, count(entries, "POST", TOKEN), summary(entries))
    assert.are.equal(1, #refreshed)
    same_token(refreshed[1].new, res.user_access_token, "the result's token")
  end)

  it("answers a dead refresh token with ServerError InvalidToken that carries the token", function()
    for _, name in ipairs(CALL_NAMES) do
      sb:expire("both")
      local res, err = calls[name](token)
      assert.is_nil(res, name)
      assert.are.equal("ServerError", err.kind, name)
      assert.are.equal("InvalidToken", err.code, name)
      assert.are.equal(401, err.status, name)
      assert.is_truthy(err.message:find("refresh_token", 1, true), name .. ": " .. err.message)
      assert.is_table(err.user_access_token, name .. ": the error carries no user_access_token")
      assert.are.equal(token.access_token.value, err.user_access_token.access_token.value, name)
      -- the same when the expiry says so before any call
      local stale = copy(token)
      stale.access_token.expiry = os.time() - 5
      res, err = calls[name](stale)
      assert.is_nil(res, name)
      assert.are.equal("InvalidToken", err.code, name)
      assert.is_table(err.user_access_token, name .. " (expiry passed): the error carries no user_access_token")
    end
  end)

  it("recovers from a dead refresh token through the reauthorize flow", function()
    sb:expire("both")
    local _, err = calls.read_accounts(token)
    assert.are.equal("InvalidToken", err.code)
    local re = assert(sdk:get_reauthorize_url{ contract = flow.contract(), callback = flow.CALLBACK,
                                               state = "again", user_access_token = token })
    local cb = flow.consent(re.url)
    assert.are.equal("true", cb.query.success)
    local fresh = assert(sdk:exchange_code_for_token{ contract = flow.contract(),
      authorization_code = cb.query.code, code_verifier = re.code_verifier })
    local res = assert(calls.read_accounts(fresh))
    assert.are.equal(2, #res.accounts)
  end)

  it("goes on when on_token_refresh raises, and logs it", function()
    local lines = {}
    local s2 = flow.sdk_with_failing_refresh_hook(sb, lines)
    sb:expire("access")
    local res, err = s2:read_accounts{ contract = flow.contract(), user_access_token = token }
    assert.is_nil(err)
    assert.are_not.equal(token.access_token.value, res.user_access_token.access_token.value)
    local found = false
    for _, l in ipairs(lines) do
      if l:find("on_token_refresh", 1, true) then found = true end
    end
    assert.is_true(found, "nothing was logged")
  end)

  describe("in a sync", function()
    it("refreshes once when the access token expires mid-sync, and returns a token that works", function()
      local s = assert(sdk:read_session{ contract = flow.contract(), user_access_token = token })
      local got, states = {}, {}
      local mark = #sb:log()
      local res, err = sdk:read_all_files{ contract = flow.contract(), user_access_token = token,
        session_key = s.session.key, poll_interval = 0.05, concurrency = 3,
        on_status_change = function(state)
          states[#states + 1] = state
          if state == "running" then sb:expire("access") end
        end,
        on_file_data = function(f) got[f.file_name] = (got[f.file_name] or 0) + 1 end,
        on_file_error = function(f) error("file error " .. f.file_name .. ": " .. tostring(f.error)) end,
      }
      assert.is_nil(err)
      assert.are.equal(13, res.files)
      assert.are.equal(0, res.failures)
      for name, n in pairs(got) do assert.are.equal(1, n, name) end
      local entries = log_since(mark)
      assert.are.equal(1, count(entries, "POST", TOKEN), summary(entries))
      assert.are.equal(1, #refreshed)
      same_token(refreshed[1].new, res.user_access_token, "the sync's final token")
      assert.is_true((refresh_works(res.user_access_token)), "the sync's final token does not refresh")
    end)

    it("keeps the newest token when a download that began before the refresh ends after it", function()
      -- instagram_posts.json's sink holds its download (token T0) while the access token
      -- expires and the other downloads refresh it (T1); the sync must end with T1, not T0,
      -- whose refresh token has rotated.
      local expired = false
      local res, err = sdk:read_all_files{ contract = flow.contract(), user_access_token = token,
        session_key = key, poll_interval = 0.05, concurrency = 2,
        sink = function(name)
          if name ~= "instagram_posts.json" then return nil end
          return function(chunk)
            if chunk and not expired then
              expired = true
              sb:expire("access")
              digime.sleep(0.4)
            end
            return true
          end
        end,
      }
      assert.is_nil(err)
      assert.are.equal(13, res.files)
      assert.are.equal(0, res.failures)
      assert.is_true(expired)
      assert.are.equal(1, #refreshed)
      assert.are.equal(refreshed[1].new.access_token.value, res.user_access_token.access_token.value,
        "the sync returned a token older than the one its refresh made")
      assert.is_true((refresh_works(res.user_access_token)), "the sync's final token does not refresh")
    end)

    it("refreshes before the sync when the expiry has passed", function()
      local stale = copy(token)
      stale.access_token.expiry = os.time() - 5
      local mark = #sb:log()
      local res, err = sdk:read_all_files{ contract = flow.contract(), user_access_token = stale, session_key = key,
                                           poll_interval = 0.05 }
      assert.is_nil(err)
      assert.are.equal(13, res.files)
      local entries = log_since(mark)
      assert.are.equal(TOKEN, entries[1].path, summary(entries))
      assert.are.equal(1, count(entries, "POST", TOKEN), summary(entries))
      assert.is_true((refresh_works(res.user_access_token)))
    end)

    it("ends with ServerError InvalidToken, token and result attached, when the refresh token dies", function()
      sb:expire("both")
      local res, err = sdk:read_all_files{ contract = flow.contract(), user_access_token = token, session_key = key,
                                           poll_interval = 0.05 }
      assert.is_nil(res)
      assert.are.equal("ServerError", err.kind)
      assert.are.equal("InvalidToken", err.code)
      assert.is_table(err.user_access_token)
      assert.is_table(err.result)
      assert.are.equal(0, err.result.files)
    end)
  end)

  leak_check.it_leaks_nothing(true)
end)
