-- Connection reuse (plain and TLS): the SDK keeps connections alive for every kind of call,
-- resumes TLS sessions when it needs a new connection, opens few connections in a sync, and
-- stays correct when the server closes pooled connections between and during calls: no
-- token exchange or push carried out twice, no signed JWT presented twice, every attempt
-- counted by retry_options. The sandbox counts connections and TLS handshakes.
local flow = require "flow"

local ACCOUNTS = "/v1.7/permission-access/accounts"

for _, mode in ipairs{ "plain", "tls" } do
  describe("keep-alive (" .. mode .. ")", function()
    local sb

    lazy_setup(function()
      -- the server keeps idle connections 60 s: slow runs (valgrind) see the same pool; the
      -- specs close connections themselves where they mean to
      local args = { "--generate", "60:4k:mixed", "--sync-pace", "0", "--keepalive", "60" }
      if mode == "tls" then args[#args + 1] = "--tls" end
      sb = flow.start{ args = args }
      flow.cafile = sb.ca_file          -- the consent page is fetched over TLS too
    end)

    lazy_teardown(function()
      flow.cafile = nil
      if sb then sb:stop() end
    end)

    before_each(function()
      sb:reset()
    end)

    local function sdk_for(extra)
      extra = extra or {}
      if mode == "tls" then extra.tls = { cafile = sb.ca_file } end
      return assert(flow.sdk(sb, extra))
    end

    local function counters()
      local s = sb:stats()
      -- api_*: connections that carried an API request (the control calls' own are left out)
      return { connections = s.api_connections, full = s.api_tls_handshakes, resumed = s.api_tls_resumed }
    end

    local function since(before)
      local now = counters()
      return { connections = now.connections - before.connections,
               full = (now.full or 0) - (before.full or 0),
               resumed = (now.resumed or 0) - (before.resumed or 0) }
    end

    -- Closes every idle kept-alive connection of the sandbox now (as a server's keep-alive
    -- timeout or a restart would).
    local function close_idle()
      sb:control("POST", "connections", { close = "idle" })
    end

    local function entries_since(mark, path)
      return flow.log_since(sb, mark, path)
    end

    -- The connections (the sandbox's numbers) the SDK's requests used, in log entries.
    local function conns_of(entries)
      local set = {}
      for _, e in ipairs(entries) do
        if e.conn then set[e.conn] = true end
      end
      return set
    end

    it("makes every kind of call on one kept-alive connection", function()
      local sdk = sdk_for()
      local token = flow.login(sdk)                 -- warms the JWKS cache and the pool
      local warm = conns_of(sb:log())
      local mark = #sb:log()
      local contract = flow.contract()
      local s = assert(sdk:read_session{ contract = contract, user_access_token = token })
      local list = assert(sdk:read_file_list{ contract = contract, user_access_token = token,
                                              session_key = s.session.key })
      assert(sdk:read_file{ contract = contract, user_access_token = token,
                            session_key = s.session.key, file_name = list.fileList[1].name })
      assert(sdk:read_accounts{ contract = contract, user_access_token = token })
      local fresh = assert(sdk:refresh_token{ contract = contract, user_access_token = token })
      assert(sdk:push_data{ contract = contract, user_access_token = fresh, type = "library",
        data = { file_name = "k.json", file_data = "{}",
                 file_descriptor = { mimeType = "application/json", accounts = {} } } })
      local auth = assert(sdk:get_authorize_url(flow.authorize_opts()))
      assert.is_string(auth.url)
      local entries = entries_since(mark)
      assert.are.equal(7, #entries)
      for _, e in ipairs(entries) do
        assert.is_true(warm[e.conn], e.method .. " " .. e.path .. " went on a new connection")
      end
    end)

    it("exchanges a code in one round trip on a warm connection with a warm JWKS cache", function()
      local sdk = sdk_for()
      flow.login(sdk)
      local code, verifier = flow.code(sdk)
      local warm = conns_of(sb:log())
      local mark = #sb:log()
      assert(sdk:exchange_code_for_token{ contract = flow.contract(),
                                          authorization_code = code, code_verifier = verifier })
      local entries = entries_since(mark)
      assert.are.equal(1, #entries)                 -- the token POST, nothing else
      assert.is_true(warm[entries[1].conn], "the token POST went on a new connection")
    end)

    if mode == "tls" then
      it("resumes the TLS session when a new connection is needed", function()
        local sdk = sdk_for()
        local token = flow.login(sdk)
        close_idle()
        local warm = conns_of(sb:log())
        local mark = #sb:log()
        assert(sdk:read_accounts{ contract = flow.contract(), user_access_token = token })
        local entry = entries_since(mark)[1]
        assert.is_nil(warm[entry.conn], "a closed connection was used again")
        local found
        for _, c in ipairs(sb:control("GET", "connections")) do
          if c.id == entry.conn then found = c end
        end
        assert.is_table(found, "the SDK's connection is no longer open (not kept alive)")
        assert.is_true(found.tls.resumed, "a full TLS handshake where the session could resume")
      end)
    end

    it("opens at most concurrency + 2 connections in a sync, and at most concurrency full TLS handshakes", function()
      -- idle connections kept 30 s: under valgrind the client decrypts so slowly that a pooled
      -- connection can wait past the 2 s default and be retired, which is right but not what
      -- this counts
      local sdk = sdk_for{ keepalive = { idle = 30 } }
      local token = flow.login(sdk)
      close_idle()
      local before = counters()
      local s = assert(sdk:read_session{ contract = flow.contract(), user_access_token = token })
      local res = assert(sdk:read_all_files{ contract = flow.contract(), user_access_token = token,
        session_key = s.session.key, concurrency = 4, poll_interval = 0.05 })
      assert.are.equal(60, res.files)
      local d = since(before)
      assert.is_true(d.connections <= 4 + 2, "connections: " .. d.connections)
      if mode == "tls" then
        assert.is_true(d.full <= 4, "full TLS handshakes: " .. d.full)
        assert.are.equal(d.connections, d.full + d.resumed)
      end
    end)

    it("shares the connection pool between the syncs of several users in one digime.run", function()
      -- idle connections kept 30 s: a slow run (valgrind) must not retire them between syncs
      local sdk = sdk_for{ keepalive = { idle = 30 } }
      local users = {}
      for i = 1, 2 do
        local token = flow.login(sdk)
        local s = assert(sdk:read_session{ contract = flow.contract(), user_access_token = token })
        users[i] = { token = token, key = s.session.key }
      end
      local function sync(u)
        return sdk:read_all_files{ contract = flow.contract(), user_access_token = u.token,
                                   session_key = u.key, concurrency = 4, poll_interval = 0.05 }
      end
      local before = counters()
      local results = { flow.digime.run(function()
        local a = flow.digime.spawn(sync, users[1])
        local b = flow.digime.spawn(sync, users[2])
        return a:wait(), b:wait()
      end) }
      assert.are.equal(60, results[1].files)
      assert.are.equal(60, results[2].files)
      local d = since(before)
      -- two syncs of 4 downloads and a poll each, at once, on one pool
      assert.is_true(d.connections <= 2 * (4 + 2), "connections: " .. d.connections)
      -- and a third sync afterwards finds the pool warm
      local again = counters()
      assert.are.equal(60, assert(sync(users[1])).files)
      assert.are.equal(0, since(again).connections)
    end)

    it("goes on when the server closes idle pooled connections between calls", function()
      local sdk = sdk_for()
      local token = flow.login(sdk)
      local mark = #sb:log()
      for _ = 1, 5 do
        close_idle()
        local res, err = sdk:read_accounts{ contract = flow.contract(), user_access_token = token }
        assert.is_nil(err)
        assert.is_table(res.accounts)
        local code, verifier = flow.code(sdk)
        close_idle()
        token = assert(sdk:exchange_code_for_token{ contract = flow.contract(),
                                                    authorization_code = code, code_verifier = verifier })
      end
      local entries = entries_since(mark)
      flow.assert_distinct_nonces(entries)
      for _, e in ipairs(entries) do
        assert.is_true(e.status ~= nil and e.status < 500, "a failed request: " .. tostring(e.path))
      end
    end)

    it("sends a GET again, newly signed and counted, when its pooled connection closes under it", function()
      local sdk = sdk_for()
      local token = flow.login(sdk)
      assert(sdk:read_accounts{ contract = flow.contract(), user_access_token = token })
      local mark = #sb:log()
      sb:fault{ method = "GET", path = ACCOUNTS, match = "exact", action = "reset", after = true }
      local res, err = sdk:read_accounts{ contract = flow.contract(), user_access_token = token }
      assert.is_nil(err)
      assert.is_table(res.accounts)
      local entries = entries_since(mark, ACCOUNTS)
      assert.are.equal(2, #entries)
      flow.assert_distinct_nonces(entries)
    end)

    it("never pushes twice when the pooled connection closes under a push", function()
      local sdk = sdk_for()
      local token = flow.login(sdk)
      for _, after in ipairs{ false, true } do
        assert(sdk:read_accounts{ contract = flow.contract(), user_access_token = token })
        local pushes = sb:stats().pushes
        sb:fault{ method = "POST", path = "/v1.7/permission-access/import", action = "reset", after = after }
        local res, err = sdk:push_data{ contract = flow.contract(), user_access_token = token,
          type = "library", data = { file_name = "once.json", file_data = "{}",
            file_descriptor = { mimeType = "application/json", accounts = {} } } }
        assert.is_nil(res)
        assert.are.equal("NetworkError", err.kind)
        assert.are.equal(after and 1 or 0, sb:stats().pushes - pushes)
      end
    end)

    it("counts every attempt against retry_options when pooled connections keep dying", function()
      local sdk = sdk_for{ retry_options = { limit = 1, backoff = 0.01 } }
      local token = flow.login(sdk)
      assert(sdk:read_accounts{ contract = flow.contract(), user_access_token = token })
      local mark = #sb:log()
      sb:fault{ method = "GET", path = ACCOUNTS, match = "exact", action = "reset", after = true, count = 5 }
      local res, err = sdk:read_accounts{ contract = flow.contract(), user_access_token = token }
      assert.is_nil(res)
      assert.are.equal("NetworkError", err.kind)
      assert.are.equal(2, err.attempts)
      assert.are.equal(2, #entries_since(mark, ACCOUNTS))
    end)
  end)
end
