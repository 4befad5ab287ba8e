--- The first-time flow: authorize URL -> the user consents -> exchange the code for a token.
-- Usage: lua examples/authorize.lua BASE_URL ONBOARD_URL   (URLs as digime-sandbox prints them)
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local digime = require "digime"
local demo = require "digime.sandbox.demo_contract"   -- a TEST-ONLY contract
local browser = require "browser"

local base_url, onboard_url = arg[1], arg[2]
if not base_url or not onboard_url then
  io.stderr:write("usage: authorize.lua BASE_URL ONBOARD_URL\n")
  os.exit(2)
end

local function check(v, err)
  if v == nil then
    io.stderr:write("failed: ", tostring(err), "\n")
    os.exit(1)
  end
  return v
end

local sdk = check(digime.init{ application_id = demo.application_id,
                               base_url = base_url, onboard_url = onboard_url })
local contract = { id = demo.contract_id, private_key = demo.private_key }

-- 1. Ask digi.me for an authorize URL. Keep code_verifier server-side, keyed by `state`.
local state = "user-42"
local auth = check(sdk:get_authorize_url{ contract = contract, state = state,
                                          callback = "https://app.example/digime/callback" })
print("1. authorize URL:     " .. auth.url)
print("   session key:       " .. auth.session.key)

-- 2. The user consents in digi.me; digi.me redirects to the callback with a code.
local callback = check(browser.consent(auth.url))
assert(callback.success == "true" and callback.state == state, "consent refused or state changed")
print("2. callback:          success=" .. callback.success .. " state=" .. callback.state)

-- 3. Exchange the code, with the code verifier of step 1, for the user's access token.
local token = check(sdk:exchange_code_for_token{ contract = contract,
  authorization_code = callback.code, code_verifier = auth.code_verifier })
print(("3. token for user %s, access token expires at %s, refresh token at %s")
  :format(token.user.id, os.date("!%Y-%m-%d %H:%M:%SZ", token.access_token.expiry),
          os.date("!%Y-%m-%d %H:%M:%SZ", token.refresh_token.expiry)))

-- 4. Tokens can be refreshed; refresh tokens rotate, so always keep the newest pair.
local fresh = check(sdk:refresh_token{ contract = contract, user_access_token = token })
print("4. refreshed:         new refresh token " .. (fresh.refresh_token.value ~= token.refresh_token.value
  and "(rotated)" or "(same)"))
print("   JWKS fetches for 2 token answers: " .. sdk.stats.jwks_fetches .. " (cached)")
