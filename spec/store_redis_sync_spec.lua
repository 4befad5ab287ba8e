-- Redis restarted in the middle of a 500-file sync whose access token expires twice (once
-- while Redis is down): the sync completes, every file once, each expiry refreshed once, and
-- no refresh token presented twice (the sandbox refuses a rotated one: its log would show it).
local flow = require "flow"
local redis = require "redis"
local digime = require "digime"
local core = require "digime.core"

describe("a sync through a Redis restart", function()
  local sb, rd

  setup(function()
    sb = flow.start{ args = { "--sync-pace", "0", "--generate", "500:2k:mixed" } }
    rd = redis.start()
  end)

  teardown(function()
    if rd then rd:stop() end
    if sb then sb:stop() end
  end)

  it("completes with every file once and one refresh per expiry", function()
    local lines = {}
    local sdk = assert(flow.sdk(sb, {
      store = { type = "redis", port = rd.port, prefix = "sync:" },
      logger = function(level, message) lines[#lines + 1] = level .. " " .. message end,
    }))
    local token = flow.login(sdk)
    local key = assert(sdk:read_session{ contract = flow.contract(), user_access_token = token })
      .session.key
    local manifest = sb:control("GET", "manifest")
    local got, n, restarted, errs = {}, 0, false, {}
    local res, err = sdk:read_all_files{
      contract = flow.contract(), user_access_token = token, session_key = key,
      concurrency = 4, poll_interval = 0.05, max_time = 120,
      on_file_data = function(file)
        got[file.file_name] = (got[file.file_name] or 0) + 1
        assert.equal(manifest.files[file.file_name], (core.sha256(file.file_data or "")
          :gsub(".", function(c) return ("%02x"):format(c:byte()) end)))
        n = n + 1
        if n == 100 then
          rd:stop()                         -- Redis goes away, and the token expires
          sb:expire("access")
          digime.spawn(function()
            digime.sleep(0.5)
            rd:start()                      -- back on the same port, empty
            restarted = true
          end)
        elseif n == 350 then
          sb:expire("access")               -- again, Redis up
        end
      end,
      on_file_error = function(f) errs[#errs + 1] = f.file_name .. ": " .. tostring(f.error) end,
    }
    assert.is_nil(err, tostring(err))
    assert.same({}, errs)
    assert.is_true(restarted)
    local names = 0
    for name in pairs(manifest.files) do
      names = names + 1
      assert.equal(1, got[name], name)
    end
    assert.equal(500, names)
    assert.equal(500, res.files)
    assert.equal(2, sb:stats().refreshes)
    -- oauth/token reached: the exchange and the two refreshes, no other (a second refresh
    -- of a token would be one more, and refused)
    assert.equal(3, sb:stats().by_path["/v1.7/oauth/token"])
    -- the final token works: it was never presented twice
    assert.truthy(sdk:refresh_token{ contract = flow.contract(), user_access_token = res.user_access_token })
  end)
end)
