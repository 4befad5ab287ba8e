--- One host of bench/fleet.lua: a plain Lua process acting for the same users as the other
-- hosts, through the Redis store, until the deadline. Each user's task calls read_accounts
-- every 1.5-2.5 s with the token it holds (the SDK refreshes it when expired, or takes the
-- one another host left). The Redis store is wrapped to time every command.
-- Usage: lua5.4 bench/fleet_host.lua JOB.json OUT.json
local cjson = require "cjson"
local digime = require "digime"
local core = require "digime.core"
local demo = require "digime.sandbox.demo_contract"

package.path = "./spec/support/?.lua;" .. package.path
local read = require("shell").read

local job = cjson.decode(read(arg[1]))

-- The Redis store, each command timed.
local redis = require("digime.store.redis").new(job.redis)
local op_ms = {}
local timed = {}
for _, m in ipairs{ "get", "set", "add", "delete_if" } do
  timed[m] = function(_, ...)
    local t0 = core.monotonic()
    local a, b = redis[m](redis, ...)
    op_ms[#op_ms + 1] = (core.monotonic() - t0) * 1000
    return a, b
  end
end

local new_tokens = {}
local sdk = assert(digime.init{
  application_id = demo.application_id, base_url = job.base_url, onboard_url = job.onboard_url,
  timeout = 5, retry_options = { limit = 2, backoff = 0.05, max_backoff = 0.2 },
  store = job.store == "memory" and { type = "memory" } or timed,
  on_token_refresh = function(new) new_tokens[#new_tokens + 1] = new.refresh_token.value end,
})
local contract = { id = demo.contract_id, private_key = demo.private_key }

local calls, ok_calls, call_ms, errs, ended = 0, 0, {}, {}, 0
local wait = job.start_at - core.time()
if wait > 0 then core.sleep(wait) end
local deadline = core.monotonic() + job.seconds
digime.run(function()
  for i, token in ipairs(job.tokens) do
    digime.spawn(function()
      digime.sleep(math.random() * 2)
      while core.monotonic() < deadline do
        local t0 = core.monotonic()
        local res, err = sdk:read_accounts{ contract = contract, user_access_token = token }
        calls = calls + 1
        if res then
          ok_calls = ok_calls + 1
          call_ms[#call_ms + 1] = (core.monotonic() - t0) * 1000
          token = res.user_access_token
        else
          local code = tostring(err.code)
          errs[code] = (errs[code] or 0) + 1
          if err.user_access_token then token = err.user_access_token end
          -- the session ended: the refresh token was refused (rotated by a second refresh)
          if err.code == "InvalidToken" and err.message:find("refresh_token", 1, true) then
            ended = ended + 1
            return
          end
        end
        digime.sleep(1.5 + math.random())
      end
    end, i)
  end
end)

local f = assert(io.open(arg[2], "wb"))
f:write(cjson.encode{ calls = calls, ok_calls = ok_calls, call_ms = call_ms, op_ms = op_ms,
                      errors = errs, ended = ended, refreshed = new_tokens,
                      jwks_fetches = sdk.stats.jwks_fetches })
f:close()
