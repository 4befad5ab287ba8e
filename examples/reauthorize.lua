--- The reauthorize flow: a user's refresh token has died; get them to consent again and
-- exchange the new code for a new token.
-- Usage: lua examples/reauthorize.lua BASE_URL ONBOARD_URL CONTROL_URL
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local digime = require "digime"
local demo = require "digime.sandbox.demo_contract"   -- a TEST-ONLY contract
local browser = require "browser"

local base_url, onboard_url, control_url = arg[1], arg[2], arg[3]
if not base_url or not onboard_url or not control_url then
  io.stderr:write("usage: reauthorize.lua BASE_URL ONBOARD_URL CONTROL_URL\n")
  os.exit(2)
end

local function check(v, err)
  if v == nil then
    io.stderr:write("failed: ", tostring(err), "\n")
    os.exit(1)
  end
  return v
end

local sdk = check(digime.init{
  application_id = demo.application_id, base_url = base_url, onboard_url = onboard_url,
  on_token_refresh = function(new)
    print("   (on_token_refresh: store the new pair for user " .. new.user.id .. ")")
  end,
})
local contract = { id = demo.contract_id, private_key = demo.private_key }
local callback_url = "https://app.example/digime/callback"

-- A user who authorized earlier and holds a live token.
local auth = check(sdk:get_authorize_url{ contract = contract, callback = callback_url, state = "first" })
local cb = check(browser.consent(auth.url))
local token = check(sdk:exchange_code_for_token{ contract = contract,
  authorization_code = cb.code, code_verifier = auth.code_verifier })
print("1. user " .. token.user.id .. " has a token")

-- Time passes; the refresh token dies (here the sandbox's control endpoint expires it).
local res = check(browser.control(control_url, "expire", '{"what":"refresh"}'))
assert(res.status == 200, "the sandbox did not expire the token")
print("2. the sandbox expired the user's refresh token")

-- Refreshing now fails with InvalidToken: the user has to reauthorize.
local _, err = sdk:refresh_token{ contract = contract, user_access_token = token }
assert(err and err.code == "InvalidToken", "expected InvalidToken, got " .. tostring(err))
print("3. refresh_token failed as expected: " .. tostring(err))

-- Get a reauthorize URL for this user; keep the code verifier with the state.
local reauth = check(sdk:get_reauthorize_url{ contract = contract, callback = callback_url,
  state = "again", user_access_token = token })
print("4. reauthorize URL:   " .. reauth.url)

-- The user consents again; the callback brings a new code.
local cb2 = check(browser.consent(reauth.url))
assert(cb2.success == "true" and cb2.state == "again", "reauthorization refused")
print("5. callback:          success=" .. cb2.success .. " state=" .. cb2.state)

-- Exchange it with the kept code verifier: a new token for the same user.
local new_token = check(sdk:exchange_code_for_token{ contract = contract,
  authorization_code = cb2.code, code_verifier = reauth.code_verifier })
print("6. new token for user " .. new_token.user.id ..
  (new_token.user.id == token.user.id and " (the same user)" or " (a different user!)"))

-- And it works: refreshing it succeeds.
local again = check(sdk:refresh_token{ contract = contract, user_access_token = new_token })
print("7. the new token works: refreshed, access token expires at " ..
  os.date("!%Y-%m-%d %H:%M:%SZ", again.access_token.expiry))
