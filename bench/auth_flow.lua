--- HTTP requests per token exchange with a warm JWKS cache, and the wall time of one
-- authorize -> consent -> exchange round against the sandbox.
-- Usage: lua5.4 bench/auth_flow.lua BASE_URL ONBOARD_URL CONTROL_URL [rounds] [latency_ms]
-- With the sandbox's --latency given as latency_ms, the SDK's own calls are also counted in
-- round trips (the consent page is the browser's: a new connection each time here).
package.path = "examples/?.lua;" .. package.path
local digime = require "digime"
local core = require "digime.core"
local json = require "digime.json"
local demo = require "digime.sandbox.demo_contract"
local browser = require "browser"

local base_url, onboard_url, control_url = arg[1], arg[2], arg[3]
local rounds = tonumber(arg[4]) or 30
local latency = tonumber(arg[5])

local function stats()
  local engine = core.http_engine()
  local req = engine:add{ url = control_url .. "stats" }
  while engine:perform() > 0 do engine:poll(50) end
  return json.decode(req:result().body)
end

local sdk = assert(digime.init{ application_id = demo.application_id,
                                base_url = base_url, onboard_url = onboard_url })
local contract = { id = demo.contract_id, private_key = demo.private_key }

local authorize_times, exchange_times = {}, {}

local function round(i)
  local t0 = core.monotonic()
  local auth = assert(sdk:get_authorize_url{ contract = contract, state = "b",
                                             callback = "https://app.example/cb" })
  local t1 = core.monotonic()
  local cb = assert(browser.consent(auth.url))
  local t2 = core.monotonic()
  local token = assert(sdk:exchange_code_for_token{ contract = contract,
    authorization_code = cb.code, code_verifier = auth.code_verifier })
  if i then
    authorize_times[i], exchange_times[i] = t1 - t0, core.monotonic() - t2
  end
  return token
end

round()  -- warms the JWKS cache
local times = {}
for i = 1, rounds do
  local t0 = core.monotonic()
  round(i)
  times[i] = core.monotonic() - t0
end
table.sort(times)
table.sort(authorize_times)
table.sort(exchange_times)

-- Requests of one exchange alone, cache warm: the token call only.
local auth = assert(sdk:get_authorize_url{ contract = contract, state = "b", callback = "https://app.example/cb" })
local cb = assert(browser.consent(auth.url))
local before = stats().requests
assert(sdk:exchange_code_for_token{ contract = contract, authorization_code = cb.code,
                                    code_verifier = auth.code_verifier })
local per_exchange = stats().requests - before  -- control calls are not counted

print(("HTTP requests per token exchange (warm JWKS cache): %d"):format(per_exchange))
print(("authorize -> consent -> exchange: median %.1f ms, p90 %.1f ms, min %.1f ms over %d rounds (%s)")
  :format(times[math.ceil(rounds / 2)] * 1000, times[math.ceil(rounds * 0.9)] * 1000,
          times[1] * 1000, rounds, (rawget(_G, "jit") and rawget(_G, "jit").version) or _VERSION))
if latency then
  local function rt(t) return t[math.ceil(#t / 2)] * 1000 / latency end
  print(("at %d ms of round trip: get_authorize_url %.2f round trips, exchange_code_for_token "
    .. "%.2f round trips (medians, warm connection and JWKS cache)")
    :format(latency, rt(authorize_times), rt(exchange_times)))
end
print(("JWKS fetches by the SDK over %d exchanges: %d"):format(rounds + 2, sdk.stats.jwks_fetches))
