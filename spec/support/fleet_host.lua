-- One "host" of a fleet, for spec/store_redis_spec.lua: a plain Lua process with its own SDK
-- object, sharing state through the Redis store.
--   lua5.4 spec/support/fleet_host.lua <job.json> <out.json>
-- job: { sdk = {digime.init options, JSON}, start_at = epoch s, action = "refresh" | "login",
--        tokens = [token, ...] }
-- out: { results = [ { ok, access, refresh, token } | { error = { kind, code, message } } ],
--        jwks_fetches, ms }
local cjson = require "cjson"
local core = require "digime.core"
local digime = require "digime"
local demo = require "digime.sandbox.demo_contract"

package.path = "./spec/support/?.lua;" .. package.path
local read = require("shell").read

local job = cjson.decode(read(arg[1]))
local opts = job.sdk
opts.application_id = demo.application_id
opts.retry_options = { backoff = 0.01, max_backoff = 0.05 }
local lines = {}
opts.logger = function(level, message, fields)
  lines[#lines + 1] = level .. " " .. message .. " " .. cjson.encode(fields or {})
end
local sdk = assert(digime.init(opts))
local contract = { id = demo.contract_id, private_key = demo.private_key }

local function err_view(err)
  if type(err) ~= "table" then return { message = tostring(err) } end
  return { kind = err.kind, code = err.code, message = err.message }
end

local wait = job.start_at - core.time()
if wait > 0 then core.sleep(wait) end
local t0 = core.monotonic()
local results = {}
digime.run(function()
  local tasks = {}
  for i, token in ipairs(job.tokens) do
    tasks[i] = digime.spawn(function()
      local new, err = sdk:refresh_token{ contract = contract, user_access_token = token }
      if not new then return { error = err_view(err) } end
      return { ok = true, access = new.access_token.value, refresh = new.refresh_token.value,
               token = new }
    end)
  end
  for i, t in ipairs(tasks) do results[i] = t:wait() end
end)
local f = assert(io.open(arg[2], "wb"))
f:write(cjson.encode{ results = results, jwks_fetches = sdk.stats.jwks_fetches,
                      ms = (core.monotonic() - t0) * 1000, log = lines })
f:close()
