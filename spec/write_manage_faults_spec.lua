-- Faults and bad inputs for every write, manage, discovery and cloud storage call:
-- every function with its bad inputs and under the fault kinds of the sandbox's control API.
--
-- One sandbox; for each call (a row of ROWS) and each fault action of the control endpoint
-- (status 500/502/503, 429 with Retry-After, reset, reset after processing, truncate, delay past
-- the per-request timeout, hang, 401 InvalidToken), the documented result (doc/protocol.md
-- "Retries", "User access tokens"; doc/architecture.md "The path of one file"):
--   * idempotent requests (GET, DELETE, the discovery POSTs) are retried within retry_options:
--     LIMIT faults and the call succeeds, LIMIT + 1 and it fails with the right kind, code,
--     status and attempts, the server having seen LIMIT + 1 requests;
--   * other POSTs (push, references, provisional storage, upload) are sent once: the server saw
--     exactly one request, and what it stored (pushes, storages, objects, references) is there
--     once when it processed the request and absent when it did not;
--   * a 401 InvalidToken on a user-scoped request refreshes the token once and sends again;
--     the token in force comes back in the result, or inside err on failure;
--   * a download cut short is an error, and a sink never hears the end of a partial file.
-- Then a table of bad inputs per call: each is nil + a TypeValidationError naming the option,
-- never a raise, and nothing is sent.
--
-- Tests that depend on the per-request timeout firing or on Retry-After pacing are #timing.
local flow = require "flow"
local sandbox_hooks = require "sandbox_hooks"
local core = require "digime.core"

local LIMIT = 2
local RETRY = { limit = LIMIT, max_time = 5, backoff = 0.01, max_backoff = 0.02 }
local T = 0.2                         -- per-request timeout of the #timing SDK (seconds)
local STATUSES = { 500, 502, 503 }
local TOKEN = "/v1.7/oauth/token"
local APP = flow.APP_ID
local NONE = {}                       -- in a bad-input case: leave this option out

-- A DELETE whose first answer was lost: the next attempt found nothing (404), which after a
-- lost answer means done; the second attempt was faulted too.
local function deleted_by_the_lost_attempt(r)
  assert.is_nil(r.err, tostring(r.err))
  assert.is_true(r.res.deleted)
  assert.are.equal(404, r.res.status)
  assert.are.equal(LIMIT + 1, r.seen)
end

local function fault_body(status)
  return { error = { code = "Fault" .. status, message = "injected by the spec" } }
end

local INVALID_TOKEN = { error = { code = "InvalidToken", message = "The token (access_token) is invalid" } }

describe("write/manage/storage calls under faults", function()
  local sb, sdk, fast, refused
  local refreshes = {}                -- on_token_refresh calls: { new, old }

  lazy_setup(function()
    sb = flow.start{ args = { "--sync-pace", "0" } }
    -- Generous per-request timeout (valgrind), small retry pacing.
    sdk = assert(flow.sdk(sb, { retry_options = RETRY, timeout = 10,
      on_token_refresh = function(new, old) refreshes[#refreshes + 1] = { new = new, old = old } end }))
    -- The same with a small timeout, for delays and hangs (#timing).
    fast = assert(flow.sdk(sb, { retry_options = RETRY, timeout = T }))
    -- Pointing at a port nothing listens on: every connection is refused.
    local closed = "http://127.0.0.1:" .. flow.closed_port()
    refused = assert(flow.sdk(nil, { retry_options = RETRY, timeout = 10, base_url = closed .. "/v1.7/",
                                     onboard_url = closed .. "/apps/saas/", cloud_base_url = closed .. "/cloud/v1/" }))
  end)

  sandbox_hooks.stop_and_reset(function() return sb end)

  before_each(function()
    for i = #refreshes, 1, -1 do refreshes[i] = nil end
  end)

  -- The sandbox records a request once its answer is done (a delayed request after its delay,
  -- a hung one once the client has gone): wait until nothing is in flight.
  local function settle()
    local deadline = flow.now() + 5
    while true do
      local st = sb:stats()
      if st.inflight == 0 then return st end
      assert(flow.now() < deadline, "the sandbox still has requests in flight")
      flow.sandbox.sleep(0.02)
    end
  end

  local function count(entries, method, path)
    local n = 0
    for _, e in ipairs(entries) do
      if e.method == method and e.path == path then n = n + 1 end
    end
    return n
  end

  local function storage_of(id)
    for _, s in ipairs(sb:control("GET", "storage")) do
      if s.id == id then return s end
    end
  end

  local function new_storage()
    return assert(sdk:create_provisional_storage{ contract = flow.contract() }).storage.id
  end

  local function files_path(ctx, tail)
    return "/cloud/v1/clouds/" .. ctx.storage .. "/files/apps/" .. APP .. tail
  end

  local function descriptor()
    return { mimeType = "application/json", accounts = {} }
  end

  -- Rows: one request of one call. method/path: the request the faults hit (exact match).
  -- user: the call takes and returns a user access token; refreshes: a 401 InvalidToken on this
  -- request refreshes it; idempotent: retried; needs: what the call needs first; opts(ctx):
  -- the call's options besides contract and token; ok(res, ctx): the result checks;
  -- effect(ctx): what the server stored that a processed request adds (non-idempotent rows);
  -- lost(r): the result when an answer was lost after the server processed the request.
  local ROWS = {
    { name = "get_onboard_service_url", method = "POST", path = "/v1.7/oauth/token/reference",
      user = true, refreshes = true, needs = {},
      opts = function() return { callback = "https://app.example/cb", service_id = 1 } end,
      ok = function(res) assert.matches("/apps/saas/onboard%?", res.url) end },
    { name = "get_reauthorize_account_url", method = "POST", path = "/v1.7/oauth/token/reference",
      user = true, refreshes = true, needs = { account = true },
      opts = function(ctx) return { callback = "https://app.example/cb", account_id = ctx.account } end,
      ok = function(res) assert.matches("/apps/saas/reauthorize%?", res.url) end },
    { name = "get_reauthorize_account_url (account reference)", call = "get_reauthorize_account_url",
      method = "POST", path = "/v1.7/reference", user = true, refreshes = false, needs = { account = true },
      opts = function(ctx) return { callback = "https://app.example/cb", account_id = ctx.account } end,
      ok = function(res) assert.matches("accountRef=", res.url) end,
      effect = function()
        local n = 0
        for _, r in ipairs(sb:control("GET", "references")) do
          if r.type == "accountId" then n = n + 1 end
        end
        return n
      end },
    { name = "get_revoke_account_permission_url", method = "GET",
      path = "/v1.7/permission-access/revoke/h:accountId", user = true, refreshes = true, idempotent = true,
      needs = { account = true },
      opts = function(ctx) return { account_id = ctx.account, redirect_uri = "https://app.example/revoked" } end,
      ok = function(res) assert.matches("/apps/saas/revoke%?code=", res.location) end },
    { name = "push_data (library)", call = "push_data", method = "POST", path = "/v1.7/permission-access/import",
      user = true, refreshes = true, needs = {},
      opts = function()
        return { type = "library", data = { file_data = '{"a":1}', file_name = "a.json",
                                            file_descriptor = descriptor() } }
      end,
      ok = function(res) assert.is_table(res.user_access_token) end,
      effect = function() return #sb:control("GET", "pushes") end },
    { name = "push_data (provider)", call = "push_data", method = "POST",
      path = "/v1.7/permission-access/import/h:accountId/fhir/stu3", user = true, refreshes = true,
      needs = { account = true },
      opts = function(ctx)
        return { type = "provider", data = { resourceType = "Observation", status = "final" },
                 version = "stu3", standard = "fhir", account_id = ctx.account }
      end,
      ok = function(res) assert.is_table(res.user_access_token) end,
      effect = function() return #sb:control("GET", "pushes") end },
    { name = "delete_user", method = "DELETE", path = "/v1.7/user", user = true, refreshes = true,
      idempotent = true, needs = {},
      opts = function() return {} end,
      ok = function(res) assert.is_true(res.deleted) end,
      -- The user is gone with the first DELETE, whose answer was lost; the retries present a
      -- token of a user that no longer exists (401), and the refresh fails the same way: the
      -- caller hears InvalidToken although the user was deleted.
      lost = function(r)
        assert.is_nil(r.res)
        assert.are.equal("ServerError", r.err.kind)
        assert.are.equal("InvalidToken", r.err.code)
        assert.are.equal(401, r.err.status)
        assert.are.equal(LIMIT + 1, r.seen)
        assert.are.equal(1, r.token_calls)
        assert.are.same({}, sb:control("GET", "users"))
      end },
    { name = "delete_account", method = "DELETE", path = "/v1.7/permission-access/service/h:accountId",
      user = true, refreshes = true, idempotent = true, needs = { account = true },
      opts = function(ctx) return { account_id = ctx.account } end,
      ok = function(res) assert.is_true(res.deleted) end,
      -- The account went with the first DELETE, whose answer was lost; the next attempt
      -- finds no account (404), which after a lost answer means done.
      lost = function(r)
        deleted_by_the_lost_attempt(r)
        local users = sb:control("GET", "users")
        assert.are.same({ r.ctx.account }, users[1].removed)
      end },
    { name = "get_portability_report", method = "GET", path = "/v1.7/export/medmij/report",
      user = true, refreshes = true, idempotent = true, needs = {},
      opts = function() return { format = "xml", service_type = "medmij", from = 1700000000, to = 1800000000 } end,
      ok = function(res) assert.matches("<", res.file) end },
    { name = "get_service_sample_data_sets", method = "GET", path = "/v1.7/permission-access/sample/datasets/1",
      idempotent = true, needs = {},
      opts = function() return { source_id = 1 } end,
      ok = function(res) assert.is_table(res.data_sets) end },
    { name = "get_contract_details", method = "GET", path = "/v1.7/permission-access/contract",
      idempotent = true, needs = {},
      opts = function() return {} end,
      ok = function(res) assert.are.equal(flow.demo.contract_id, res.id) end },
    { name = "query_sources", method = "POST", path = "/v1.7/discovery/sources", idempotent = true, needs = {},
      opts = function() return { sources_body_params = { limit = 3 } } end,
      ok = function(res) assert.is_true(#res.data > 0 and #res.data <= 3) end },
    { name = "query_countries", method = "POST", path = "/v1.7/discovery/countries", idempotent = true,
      needs = {}, opts = function() return {} end,
      ok = function(res) assert.is_true(#res.data > 0) end },
    { name = "query_platforms", method = "POST", path = "/v1.7/discovery/platforms", idempotent = true,
      needs = {}, opts = function() return { platforms_body_params = { query = { include = { "id" } } } } end,
      ok = function(res) assert.is_true(#res.data > 0) end },
    { name = "query_categories", method = "POST", path = "/v1.7/discovery/categories", idempotent = true,
      needs = {}, opts = function() return {} end,
      ok = function(res) assert.is_true(#res.data > 0) end },
    { name = "create_provisional_storage", method = "POST", path = "/v1.7/storage", needs = {},
      opts = function() return {} end,
      ok = function(res) assert.is_string(res.storage.id) end,
      effect = function() return #sb:control("GET", "storage") end },
    { name = "get_user_storage", method = "GET", path = "/v1.7/storage", user = true, refreshes = true,
      idempotent = true, needs = {},
      opts = function() return {} end,
      ok = function(res) assert.is_string(res.storage.id) end },
    { name = "list_storage_files", method = "GET", path = function(ctx) return files_path(ctx, "/") end,
      idempotent = true, needs = { file = true },
      opts = function(ctx) return { storage_id = ctx.storage, recursive = true } end,
      ok = function(res)
        assert.are.equal(1, res.total)
        assert.are.equal("f.bin", res.files[1].name)
      end },
    { name = "upload_file_to_storage", method = "POST", path = function(ctx) return files_path(ctx, "/up/u.bin") end,
      needs = { storage = true },
      opts = function(ctx)
        return { storage_id = ctx.storage, path = "up", file_name = "u.bin", file_data = "upload" }
      end,
      ok = function(res) assert.is_true(res.uploaded) end,
      effect = function(ctx) return #storage_of(ctx.storage).files end },
    { name = "download_storage_file", method = "GET", path = function(ctx) return files_path(ctx, "/f.bin") end,
      idempotent = true, needs = { file = true },
      opts = function(ctx) return { storage_id = ctx.storage, path = "/f.bin" } end,
      ok = function(res, ctx) assert.is_true(res.file_data == ctx.data, "the download is not the file") end },
    { name = "delete_storage_files", method = "DELETE", path = function(ctx) return files_path(ctx, "/f.bin") end,
      idempotent = true, needs = { file = true },
      opts = function(ctx) return { storage_id = ctx.storage, path = "/f.bin" } end,
      ok = function(res) assert.is_true(res.deleted) end,
      -- The object went with the first DELETE, whose answer was lost; the next attempt finds
      -- nothing (404), which after a lost answer means done.
      lost = function(r)
        deleted_by_the_lost_attempt(r)
        assert.are.equal(0, #storage_of(r.ctx.storage).files)
      end },
  }

  local function prepare(row)
    local ctx = {}
    local needs = row.needs
    if row.user or needs.account then
      ctx.token = flow.login(sdk)
    end
    if needs.account then
      ctx.account = assert(sdk:read_accounts{ contract = flow.contract(),
                                               user_access_token = ctx.token }).accounts[1].id
    end
    if needs.storage or needs.file then
      ctx.storage = new_storage()
    end
    if needs.file then
      ctx.data = core.random_bytes(3000)
      assert(sdk:upload_file_to_storage{ contract = flow.contract(), storage_id = ctx.storage,
                                         file_name = "f.bin", file_data = ctx.data })
    end
    ctx.path = type(row.path) == "function" and row.path(ctx) or row.path
    return ctx
  end

  local function options(row, ctx)
    local o = row.opts(ctx)
    o.contract = flow.contract()
    if row.user then o.user_access_token = ctx.token end
    return o
  end

  -- Prepares, injects the faults (on the row's request unless they name theirs), calls, and
  -- waits for the sandbox: -> { ctx, res, err, seen (requests of the row), token_calls,
  -- effect (what the server stored, the change), elapsed }
  local function run(row, faults, client)
    local ctx = prepare(row)
    local mark = #sb:log()
    local before = row.effect and row.effect(ctx)
    for _, f in ipairs(faults) do
      f.method = f.method or row.method
      f.path = f.path or ctx.path
      f.match = "exact"
      sb:fault(f)
    end
    local t0 = flow.now()
    local ok, res, err = pcall((client or sdk)[row.call or row.name], client or sdk, options(row, ctx))
    local elapsed = flow.now() - t0
    assert(ok, "the call raised: " .. tostring(res))
    settle()
    local log = sb:log()
    local entries = {}
    for i = mark + 1, #log do entries[#entries + 1] = log[i] end
    return { ctx = ctx, res = res, err = err, elapsed = elapsed,
             seen = count(entries, row.method, ctx.path), token_calls = count(entries, "POST", TOKEN),
             effect = row.effect and (row.effect(ctx) - before) }
  end

  local function same_token(a, b)
    return type(a) == "table" and type(b) == "table" and a.access_token.value == b.access_token.value
  end

  local function expect_ok(row, r)
    assert.is_nil(r.err, r.err and tostring(r.err))
    assert.is_table(r.res)
    row.ok(r.res, r.ctx)
    if row.user then
      assert.is_true(same_token(r.ctx.token, r.res.user_access_token), "the token in force changed")
    end
  end

  -- want: fields err must have (kind, code, status, attempts, network, retryable, retry_after)
  local function expect_err(row, r, want)
    assert.is_nil(r.res)
    assert.is_table(r.err)
    for k, v in pairs(want) do
      assert.are.equal(v, r.err[k], "err." .. k .. " of " .. tostring(r.err))
    end
    assert.is_string(r.err.message)
    if row.user then
      assert.is_true(same_token(r.ctx.token, r.err.user_access_token), "err carries no token in force")
    end
  end

  local function fault_status(status, count_, headers)
    return { action = "status", status = status, count = count_, body = fault_body(status), headers = headers }
  end

  local retryable = { [429] = true, [502] = true, [503] = true, [504] = true }

  -- Well-formed, never checked by a server.
  local function fake_token()
    return { access_token = { value = "access-value", expiry = 4102444800 },
             refresh_token = { value = "refresh-value", expiry = 4102444800 },
             user = { id = "u" }, consent_id = "c" }
  end

  -- A hang ends when the client closes, except on a request with a body the sandbox has not
  -- read: it takes the unread body for a pipelined request and waits for ever.
  -- Those hangs end after ms instead, well after the client gave up.
  local function hang_limit(row)
    if row.method == "POST" then return math.floor(T * 1000) + 250 end
  end

  for _, row in ipairs(ROWS) do
    describe(row.name, function()
      if row.idempotent then
        for _, status in ipairs(STATUSES) do
          it(("is retried after %d x%d, then succeeds"):format(status, LIMIT), function()
            local r = run(row, { fault_status(status, LIMIT) })
            expect_ok(row, r)
            assert.are.equal(LIMIT + 1, r.seen)
          end)

          it(("fails with %d after %d attempts"):format(status, LIMIT + 1), function()
            local r = run(row, { fault_status(status, LIMIT + 1) })
            expect_err(row, r, { kind = "ServerError", code = "Fault" .. status, status = status,
                                 attempts = LIMIT + 1, retryable = retryable[status] == true })
            assert.are.equal(LIMIT + 1, r.seen)
          end)
        end

        it(("is retried after 429 (Retry-After: 0) x%d, then succeeds"):format(LIMIT), function()
          local r = run(row, { fault_status(429, LIMIT, { ["Retry-After"] = "0" }) })
          expect_ok(row, r)
          assert.are.equal(LIMIT + 1, r.seen)
        end)

        it(("fails with 429 after %d attempts"):format(LIMIT + 1), function()
          local r = run(row, { fault_status(429, LIMIT + 1, { ["Retry-After"] = "0" }) })
          expect_err(row, r, { kind = "ServerError", status = 429, attempts = LIMIT + 1, retryable = true,
                               retry_after = 0 })
          assert.are.equal(LIMIT + 1, r.seen)
        end)

        it("gives up at once on a 429 whose Retry-After is beyond max_time", function()
          local r = run(row, { fault_status(429, 1, { ["Retry-After"] = "30" }) })
          expect_err(row, r, { kind = "ServerError", status = 429, attempts = 1, retry_after = 30 })
          assert.are.equal(1, r.seen)
        end)

        for _, kind in ipairs{ "reset", "reset after processing", "truncate" } do
          local function fault(n)
            if kind == "truncate" then return { action = "truncate", count = n } end
            return { action = "reset", after = kind ~= "reset", count = n }
          end

          local lost = kind ~= "reset" and row.lost
          local title = lost and "is retried after %s x%d: done by the first attempt, the retries find it gone"
                        or "is retried after %s x%d, then succeeds"
          it(title:format(kind, LIMIT), function()
            local r = run(row, { fault(LIMIT) })
            if lost then
              row.lost(r)
            else
              expect_ok(row, r)
              assert.are.equal(LIMIT + 1, r.seen)
            end
          end)

          it(("fails after %s x%d, %d attempts"):format(kind, LIMIT + 1, LIMIT + 1), function()
            local r = run(row, { fault(LIMIT + 1) })
            expect_err(row, r, { kind = "NetworkError", network = "reset", attempts = LIMIT + 1 })
            assert.are.equal(LIMIT + 1, r.seen)
          end)
        end

        -- Both ways of not answering in time, in one call: a hang (never processed), then a
        -- delay (processed once the client has given up). A DELETE processed late must not
        -- overtake the retry that follows it (that would be the lost-answer case above): its
        -- delay outlasts the next attempt by far.
        local delay_ms = math.floor(T * 1000) + (row.method == "DELETE" and 700 or 150)
        local hang_ms = hang_limit(row)

        it("is retried after a hang and a delay past the timeout, then succeeds #timing", function()
          local r = run(row, { { action = "hang", ms = hang_ms, count = 1 },
                               { action = "delay", ms = delay_ms, count = 1 } }, fast)
          expect_ok(row, r)
          assert.are.equal(LIMIT + 1, r.seen)
          assert.is_true(r.elapsed >= LIMIT * T * 0.9, "took " .. r.elapsed .. " s")
        end)

        it(("fails after %d hangs and delays past the timeout #timing"):format(LIMIT + 1), function()
          local r = run(row, { { action = "delay", ms = delay_ms, count = 1 },
                               { action = "hang", ms = hang_ms, count = LIMIT } }, fast)
          expect_err(row, r, { kind = "NetworkError", network = "timeout", attempts = LIMIT + 1 })
          assert.are.equal(LIMIT + 1, r.seen)
          assert.is_true(r.elapsed < (LIMIT + 1) * T + 1, "took " .. r.elapsed .. " s")
        end)
      else
        -- Sent once: whatever the fault, the server saw one request and the SDK made one
        -- attempt; `stored` says whether the server processed it.
        local function once(r, want, stored)
          expect_err(row, r, want)
          assert.are.equal(1, r.err.attempts)
          assert.are.equal(1, r.seen)
          if row.effect then
            assert.are.equal(stored and 1 or 0, r.effect, "stored on the server")
          end
        end

        for _, status in ipairs{ 500, 502, 503, 429 } do
          it(("is not sent again after %d"):format(status), function()
            local r = run(row, { fault_status(status, LIMIT + 1, status == 429 and { ["Retry-After"] = "0" } or nil) })
            once(r, { kind = "ServerError", code = "Fault" .. status, status = status }, false)
          end)
        end

        it("is sent again only when the connection was refused (it never reached a server)", function()
          local ctx = { token = fake_token(), account = "acc", storage = "s" }
          local ok, res, err = pcall(refused[row.call or row.name], refused, options(row, ctx))
          assert(ok, "the call raised: " .. tostring(res))
          expect_err(row, { ctx = ctx, res = res, err = err },
                     { kind = "NetworkError", network = "connect", attempts = LIMIT + 1 })
        end)

        it("is not sent again after a reset (not processed)", function()
          once(run(row, { { action = "reset", count = LIMIT + 1 } }), { kind = "NetworkError" }, false)
        end)

        it("is not sent again after a reset once processed", function()
          local r = run(row, { { action = "reset", after = true, count = LIMIT + 1 } })
          once(r, { kind = "NetworkError" }, true)
          -- "stale" when the request went on a kept-alive connection, "reset" on a new one
          assert.is_true(r.err.network == "stale" or r.err.network == "reset", tostring(r.err.network))
        end)

        it("is not sent again after a truncated answer", function()
          once(run(row, { { action = "truncate", count = LIMIT + 1 } }),
               { kind = "NetworkError", network = "reset" }, true)
        end)

        it("is not sent again after a timeout; the server processed it late #timing", function()
          once(run(row, { { action = "delay", ms = math.floor(T * 1000) + 150, count = LIMIT + 1 } }, fast),
               { kind = "NetworkError", network = "timeout" }, true)
        end)

        it("is not sent again after a hang #timing", function()
          once(run(row, { { action = "hang", ms = hang_limit(row), count = LIMIT + 1 } }, fast),
               { kind = "NetworkError", network = "timeout" }, false)
        end)
      end

      if row.refreshes then
        it("refreshes on 401 InvalidToken, sends again, returns the new token", function()
          local r = run(row, { { action = "status", status = 401, body = INVALID_TOKEN } })
          assert.is_nil(r.err, r.err and tostring(r.err))
          row.ok(r.res, r.ctx)
          local new = r.res.user_access_token
          assert.is_false(same_token(r.ctx.token, new), "the token was not refreshed")
          assert.are.equal(1, #refreshes)
          assert.is_true(same_token(new, refreshes[1].new))
          assert.is_true(same_token(r.ctx.token, refreshes[1].old))
          assert.are.equal(1, r.token_calls)
          assert.are.equal(2, r.seen)
          if row.effect then assert.are.equal(1, r.effect) end
        end)

        it("returns the refreshed token inside err when the retry gets 401 again", function()
          local r = run(row, { { action = "status", status = 401, body = INVALID_TOKEN, count = 2 } })
          assert.is_nil(r.res)
          assert.are.equal("ServerError", r.err.kind)
          assert.are.equal("InvalidToken", r.err.code)
          assert.are.equal(401, r.err.status)
          assert.are.equal(1, #refreshes)
          assert.is_true(same_token(refreshes[1].new, r.err.user_access_token), "err lacks the new token")
          assert.are.equal(1, r.token_calls)
          assert.are.equal(2, r.seen)
          if row.effect then assert.are.equal(0, r.effect) end
        end)

        it("returns the old token inside err when the refresh fails (never replayed)", function()
          local r = run(row, { { action = "status", status = 401, body = INVALID_TOKEN },
                               { method = "POST", path = TOKEN, action = "status", status = 503,
                                 body = fault_body(503), count = LIMIT + 1 } })
          assert.is_nil(r.res)
          assert.are.equal("ServerError", r.err.kind)
          assert.are.equal(503, r.err.status)
          assert.are.equal(1, r.err.attempts)
          assert.is_true(same_token(r.ctx.token, r.err.user_access_token), "err lacks the old token")
          assert.are.equal(0, #refreshes)
          assert.are.equal(1, r.token_calls)
          assert.are.equal(1, r.seen)
        end)
      else
        it("takes a 401 as an error: no refresh, no retry", function()
          local r = run(row, { { action = "status", status = 401, body = INVALID_TOKEN } })
          expect_err(row, r, { kind = "ServerError", code = "InvalidToken", status = 401, attempts = 1 })
          assert.are.equal(0, r.token_calls)
          assert.are.equal(1, r.seen)
          assert.are.equal(0, #refreshes)
        end)
      end
    end)
  end

  describe("download_storage_file into a sink", function()
    local function sink_recorder()
      local rec = { bytes = {}, ends = 0 }
      rec.sink = function(chunk)
        if chunk == nil then rec.ends = rec.ends + 1 else rec.bytes[#rec.bytes + 1] = chunk end
        return true
      end
      return rec
    end

    local function setup_file(size)
      local id = new_storage()
      local data = core.random_bytes(size)
      assert(sdk:upload_file_to_storage{ contract = flow.contract(), storage_id = id, file_name = "s.bin",
                                         file_data = data })
      return id, data, "/cloud/v1/clouds/" .. id .. "/files/apps/" .. APP .. "/s.bin"
    end

    local function download(id, sink)
      local ok, res, err = pcall(sdk.download_storage_file, sdk, { contract = flow.contract(),
        storage_id = id, path = "/s.bin", sink = sink })
      assert(ok, "raised: " .. tostring(res))
      settle()
      return res, err
    end

    it("a body cut after plaintext reached the sink: an error, not retried, the sink never ends", function()
      -- Cut at 1.5 MiB: past the 1 MiB of plaintext the transport buffers before it pauses the
      -- transfer, so the sink has had data before the cut is seen, however slow the client.
      local id, data, path = setup_file(3 * 1024 * 1024)
      sb:fault{ method = "GET", path = path, match = "exact", action = "truncate" }
      local rec = sink_recorder()
      local res, err = download(id, rec.sink)
      local got = table.concat(rec.bytes)
      assert.is_nil(res, ("the download succeeded: the sink got %d of %d bytes (whole: %s), %d ends, %d GETs")
        :format(#got, #data, tostring(got == data), rec.ends, count(sb:log(), "GET", path)))
      assert.are.equal("NetworkError", err.kind)
      assert.are.equal(1, err.attempts)
      assert.matches("went to the sink", err.message)
      assert.are.equal(0, rec.ends)
      assert.is_true(#got > 0 and #got < #data)
      assert.are.equal(data:sub(1, #got), got)      -- a prefix, never garbage
      assert.are.equal(1, count(sb:log(), "GET", path))
    end)

    it("a body cut before any plaintext: retried, the sink gets the file once and one end", function()
      local id, data, path = setup_file(100)   -- 384 bytes encrypted: half is inside the key block
      sb:fault{ method = "GET", path = path, match = "exact", action = "truncate", count = LIMIT }
      local rec = sink_recorder()
      local res, err = download(id, rec.sink)
      assert.is_nil(err)
      assert.is_nil(res.file_data)
      assert.are.equal(1, rec.ends)
      assert.are.equal(data, table.concat(rec.bytes))
      assert.are.equal(LIMIT + 1, count(sb:log(), "GET", path))
    end)

    it("an error answer never reaches the sink", function()
      local id, _, path = setup_file(1000)
      sb:fault{ method = "GET", path = path, match = "exact", action = "status", status = 503,
                body = fault_body(503), count = LIMIT + 1 }
      local rec = sink_recorder()
      local res, err = download(id, rec.sink)
      assert.is_nil(res)
      assert.are.equal(503, err.status)
      assert.are.equal(LIMIT + 1, err.attempts)
      assert.are.same({}, rec.bytes)
      assert.are.equal(0, rec.ends)
    end)

    it("a truncated body with no sink never comes back as a shorter file", function()
      local id, _, path = setup_file(200000)
      sb:fault{ method = "GET", path = path, match = "exact", action = "truncate", count = LIMIT + 1 }
      local res, err = download(id, nil)
      assert.is_nil(res)
      assert.are.equal("NetworkError", err.kind)
      assert.are.equal(LIMIT + 1, err.attempts)
    end)

    it("a sink that refuses stops the download with a SinkError, not retried", function()
      local id, _, path = setup_file(200000)
      local calls = 0
      local res, err = download(id, function(chunk)
        calls = calls + 1
        if chunk then return nil, "disk full" end
        return true
      end)
      assert.is_nil(res)
      assert.are.equal("DigiMeSDKError", err.kind)
      assert.are.equal("SinkError", err.code)
      assert.matches("disk full", err.message)
      assert.are.equal(1, calls)
      assert.are.equal(1, count(sb:log(), "GET", path))
    end)
  end)

  describe("Retry-After pacing", function()
    for _, name in ipairs{ "get_contract_details", "list_storage_files" } do
      local row
      for _, r in ipairs(ROWS) do if r.name == name then row = r end end
      it(name .. " waits for Retry-After: 1, then succeeds #timing", function()
        local r = run(row, { fault_status(429, 1, { ["Retry-After"] = "1" }) })
        expect_ok(row, r)
        assert.is_true(r.elapsed >= 0.95 and r.elapsed < 3, "took " .. r.elapsed .. " s")
        assert.are.equal(2, r.seen)
      end)
    end
  end)

  describe("bad inputs", function()
    local pem = flow.demo.private_key
    local token = fake_token

    -- name -> { user = bool, base = function() -> options besides contract/token, cases =
    -- { { field, { option = value (NONE: left out) } } } }
    local CALLS = {
      get_onboard_service_url = { user = true,
        base = function() return { callback = "https://app.example/cb" } end,
        cases = {
          { "callback", { callback = NONE } }, { "callback", { callback = 5 } }, { "callback", { callback = "" } },
          { "service_id", { service_id = "99" } }, { "service_id", { service_id = -1 } },
          { "service_id", { service_id = 1.5 } },
          { "source_type", { source_type = "pul" } },
          { "sample_data", { sample_data = "default" } },
          { "sample_data.data_set", { sample_data = {} } },
          { "sample_data.auto_onboard", { sample_data = { data_set = "d", auto_onboard = "yes" } } },
          { "sample_data.dataSet", { sample_data = { data_set = "d", dataSet = "d" } } },
          { "session_options", { session_options = "x" } },
          { "session_options.pull", { session_options = { pull = "x" } } },
          { "session_options.pull.scope", { session_options = { pull = { scope = 5 } } } },
          { "locale", { locale = 5 } }, { "locale", { locale = "" } },
          { "include_sample_data_only_sources", { include_sample_data_only_sources = "yes" } },
          { "trigger_query", { trigger_query = 1 } },
          { "sources_scope", { sources_scope = "x" } },
          { "sources_scope.dataType", { sources_scope = { dataType = "x" } } },
          { "sources_scope.colour", { sources_scope = { colour = 1 } } },
          { "state", { state = 5 } },
          { "get_onboard_service_url.serviceId", { serviceId = 1 } },
        } },
      get_reauthorize_account_url = { user = true,
        base = function() return { callback = "https://app.example/cb", account_id = "acc" } end,
        cases = {
          { "callback", { callback = NONE } }, { "callback", { callback = {} } },
          { "account_id", { account_id = NONE } }, { "account_id", { account_id = 5 } },
          { "account_id", { account_id = "" } },
          { "locale", { locale = true } },
          { "get_reauthorize_account_url.accountId", { accountId = "acc" } },
        } },
      get_revoke_account_permission_url = { user = true,
        base = function() return { account_id = "acc", redirect_uri = "https://app.example/r" } end,
        cases = {
          { "account_id", { account_id = NONE } }, { "account_id", { account_id = 5 } },
          { "account_id", { account_id = "a\r\nX-Injected: 1" } },
          { "redirect_uri", { redirect_uri = NONE } }, { "redirect_uri", { redirect_uri = "" } },
          { "redirect_uri", { redirect_uri = "https://x/\nX-Injected: 1" } },
          { "get_revoke_account_permission_url.redirectUri", { redirectUri = "https://x" } },
        } },
      ["push_data (library)"] = { call = "push_data", user = true,
        base = function()
          return { type = "library", data = { file_data = "x", file_name = "a.json", file_descriptor = descriptor() } }
        end,
        cases = {
          { "type", { type = NONE } }, { "type", { type = "lib" } }, { "type", { type = 1 } },
          { "data", { data = NONE } }, { "data", { data = "text" } }, { "data", { data = { 1, 2 } } },
          { "data.file_data", { data = { file_name = "a", file_descriptor = descriptor() } } },
          { "data.file_data", { data = { file_data = 5, file_name = "a", file_descriptor = descriptor() } } },
          { "data.file_data", { data = { file_data = {}, file_name = "a", file_descriptor = descriptor() } } },
          { "data.file_name", { data = { file_data = "x", file_descriptor = descriptor() } } },
          { "data.file_name", { data = { file_data = "x", file_name = "", file_descriptor = descriptor() } } },
          { "data.file_descriptor", { data = { file_data = "x", file_name = "a" } } },
          { "data.file_descriptor", { data = { file_data = "x", file_name = "a", file_descriptor = "json" } } },
          { "data.file_descriptor.mimeType",
            { data = { file_data = "x", file_name = "a", file_descriptor = { accounts = {} } } } },
          { "data.file_descriptor.accounts",
            { data = { file_data = "x", file_name = "a", file_descriptor = { mimeType = "a" } } } },
          { "data.file_descriptor.accounts[1]",
            { data = { file_data = "x", file_name = "a",
                       file_descriptor = { mimeType = "a", accounts = { "acc" } } } } },
          { "data.file_descriptor.accounts[1]", { data = { file_data = "x", file_name = "a",
              file_descriptor = { mimeType = "a", accounts = { { accountId = 5 } } } } } },
          { "data.file_descriptor.reference", { data = { file_data = "x", file_name = "a",
              file_descriptor = { mimeType = "a", accounts = {}, reference = "r" } } } },
          { "data.file_descriptor.tags[1]", { data = { file_data = "x", file_name = "a",
              file_descriptor = { mimeType = "a", accounts = {}, tags = { 5 } } } } },
          { "data.fileName", { data = { file_data = "x", fileName = "a", file_descriptor = descriptor() } } },
          { "push_data.account", { account = "acc" } },
          { "data.file_descriptor", { data = { file_data = "x", file_name = "a",
              file_descriptor = { mimeType = "a", accounts = {}, extra = print } } } },
        } },
      ["push_data (provider)"] = { call = "push_data", user = true,
        base = function()
          return { type = "provider", data = { resourceType = "Observation" }, version = "stu3", standard = "fhir",
                   account_id = "acc" }
        end,
        cases = {
          { "data", { data = NONE } }, { "data", { data = "{}" } }, { "data", { data = { 1, 2 } } },
          { "data", { data = { f = print } } },
          { "version", { version = NONE } }, { "version", { version = "4.0.1" } },
          { "standard", { standard = NONE } }, { "standard", { standard = "hl7" } },
          { "account_id", { account_id = NONE } }, { "account_id", { account_id = 5 } },
          { "account_id", { account_id = "" } }, { "account_id", { account_id = "a\r\nx-b: c" } },
          { "push_data.accountId", { accountId = "acc" } },
        } },
      delete_user = { user = true, base = function() return {} end,
        cases = { { "delete_user.account_id", { account_id = "acc" } } } },
      delete_account = { user = true, base = function() return { account_id = "acc" } end,
        cases = {
          { "account_id", { account_id = NONE } }, { "account_id", { account_id = 5 } },
          { "account_id", { account_id = "" } }, { "account_id", { account_id = "a\nX-Injected: 1" } },
          { "delete_account.accountId", { accountId = "acc" } },
        } },
      get_portability_report = { user = true,
        base = function() return { format = "xml", service_type = "medmij" } end,
        cases = {
          { "format", { format = NONE } }, { "format", { format = 5 } }, { "format", { format = "" } },
          { "service_type", { service_type = NONE } }, { "service_type", { service_type = {} } },
          { "from", { from = "1700000000" } }, { "from", { from = -1 } }, { "from", { from = 0 / 0 } },
          { "from", { from = math.huge } }, { "to", { to = 2 ^ 63 } }, { "to", { to = 1e300 } },
          { "get_portability_report.serviceType", { serviceType = "medmij" } },
        } },
      get_service_sample_data_sets = { base = function() return { source_id = 1 } end,
        cases = {
          { "source_id", { source_id = NONE } }, { "source_id", { source_id = "1" } },
          { "source_id", { source_id = -1 } }, { "source_id", { source_id = 0 / 0 } },
          { "source_id", { source_id = math.huge } }, { "source_id", { source_id = 2 ^ 70 } },
          { "source_id", { source_id = 1.5 } },
          { "get_service_sample_data_sets.sourceId", { sourceId = 1 } },
        } },
      get_contract_details = { base = function() return {} end,
        cases = { { "get_contract_details.contractDetails", { contractDetails = {} } } } },
      create_provisional_storage = { base = function() return {} end,
        cases = { { "create_provisional_storage.storage_id", { storage_id = "s" } } } },
      get_user_storage = { user = true, base = function() return {} end,
        cases = { { "get_user_storage.storage_id", { storage_id = "s" } } } },
      list_storage_files = { base = function() return { storage_id = "s" } end,
        cases = {
          { "storage_id", { storage_id = NONE } }, { "storage_id", { storage_id = 5 } },
          { "storage_id", { storage_id = "" } },
          { "path", { path = 5 } }, { "recursive", { recursive = "yes" } },
          { "list_storage_files.storageId", { storageId = "s" } },
        } },
      upload_file_to_storage = {
        base = function() return { storage_id = "s", file_name = "f", file_data = "x" } end,
        cases = {
          { "storage_id", { storage_id = NONE } }, { "storage_id", { storage_id = 5 } },
          { "file_name", { file_name = NONE } }, { "file_name", { file_name = 5 } },
          { "file_name", { file_name = "" } }, { "file_name", { file_name = "a/b" } },
          { "file_data", { file_data = NONE } }, { "file_data", { file_data = 5 } },
          { "file_data", { file_data = {} } },
          { "path", { path = 5 } },
          { "upload_file_to_storage.fileName", { fileName = "f" } },
        } },
      download_storage_file = { base = function() return { storage_id = "s", path = "/f" } end,
        cases = {
          { "storage_id", { storage_id = NONE } }, { "storage_id", { storage_id = false } },
          { "path", { path = NONE } }, { "path", { path = 5 } }, { "path", { path = "" } },
          { "sink", { sink = 5 } }, { "sink", { sink = "file" } }, { "sink", { sink = {} } },
          { "download_storage_file.max_size", { max_size = 5 } },
        } },
      delete_storage_files = { base = function() return { storage_id = "s", path = "/f" } end,
        cases = {
          { "storage_id", { storage_id = NONE } }, { "path", { path = NONE } }, { "path", { path = 5 } },
          { "path", { path = "" } },
          { "delete_storage_files.recursive", { recursive = true } },
        } },
    }
    for _, q in ipairs{ { "query_sources", "sources_body_params" }, { "query_countries", "countries_body_params" },
                        { "query_platforms", "platforms_body_params" },
                        { "query_categories", "categories_body_params" } } do
      local name, key = q[1], q[2]
      CALLS[name] = { base = function() return {} end, cases = {
        { key, { [key] = "x" } }, { key, { [key] = { 1, 2 } } },
        { key .. ".query", { [key] = { query = "x" } } },
        { key .. ".query.include", { [key] = { query = { include = "id" } } } },
        { key .. ".query.include[2]", { [key] = { query = { include = { "id", 2 } } } } },
        { key .. ".query.filter", { [key] = { query = { filter = 5 } } } },
        { key, { [key] = { limit = print } } },
        { name .. ".params", { params = {} } },
      } }
    end

    -- Cases every call shares: the options table itself, and the contract.
    local function common(name, user)
      local cases = {
        { name, nil }, { name, "options" },
        { name .. ".colour", { colour = "red" } }, { name .. ".1", { [1] = "x" } },
        { "contract", { contract = NONE } }, { "contract", { contract = "c" } },
        { "contract.id", { contract = { private_key = pem } } },
        { "contract.id", { contract = { id = 5, private_key = pem } } },
        { "contract.id", { contract = { id = "", private_key = pem } } },
        { "contract.private_key", { contract = { id = "c" } } },
        { "contract.private_key", { contract = { id = "c", private_key = 5 } } },
        { "contract.private_key", { contract = { id = "c", private_key = "-----BEGIN PRIVATE KEY-----\nxx" } } },
        { "contract.privateKey", { contract = { id = "c", privateKey = pem } } },
      }
      if user then
        local function with(f)
          local t = token()
          f(t)
          return { user_access_token = t }
        end
        for _, c in ipairs{
          { "user_access_token", { user_access_token = NONE } },
          { "user_access_token", { user_access_token = "token" } },
          { "user_access_token.access_token", with(function(t) t.access_token = nil end) },
          { "user_access_token.access_token.value", with(function(t) t.access_token.value = 5 end) },
          { "user_access_token.access_token.expiry", with(function(t) t.access_token.expiry = "soon" end) },
          { "user_access_token.refresh_token", with(function(t) t.refresh_token = "r" end) },
          { "user_access_token.refresh_token.value", with(function(t) t.refresh_token.value = "" end) },
          { "user_access_token.user", with(function(t) t.user = "u" end) },
          { "user_access_token.consent_id", with(function(t) t.consent_id = 5 end) },
        } do
          cases[#cases + 1] = c
        end
      end
      return cases
    end

    local names = {}
    for name in pairs(CALLS) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do
      local spec = CALLS[name]
      local method = spec.call or name
      local cases = common(method, spec.user)
      for _, c in ipairs(spec.cases) do cases[#cases + 1] = c end
      describe(name, function()
        for i, c in ipairs(cases) do
          local field, change = c[1], c[2]
          it(("#%d is refused naming %s, sending nothing"):format(i, field), function()
            local opts
            if type(change) == "table" then
              opts = spec.base()
              opts.contract = flow.contract()
              if spec.user then opts.user_access_token = token() end
              for k, v in pairs(change) do
                if v == NONE then opts[k] = nil else opts[k] = v end
              end
            else
              opts = change
            end
            local before = sb:stats().requests
            local ok, res, err = pcall(sdk[method], sdk, opts)
            assert(ok, "raised: " .. tostring(res))
            assert.is_nil(res)
            assert.is_table(err)
            assert.are.equal("TypeValidationError", err.kind, tostring(err))
            assert.are.equal(field, err.field, tostring(err))
            assert.is_truthy(err.message:find(field, 1, true), err.message)
            assert.are.equal(before, sb:stats().requests, "a request was sent")
          end)
        end
      end)
    end
  end)

  it("never lets a secret into an error or a log line", function()
    flow.assert_no_secrets()
  end)
end)
