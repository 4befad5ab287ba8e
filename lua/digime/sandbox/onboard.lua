-- The SaaS onboarding pages under /apps/saas/ (doc/protocol.md "Authorization and onboarding
-- URLs"): the user "consents" and is
-- sent back to the application's redirect_uri.
--
-- Auto mode (default): consent is given or refused at once, as POST /sandbox/consent last
-- said (accept unless told otherwise). --interactive: an HTML page with Accept and Decline
-- buttons, a plain GET form to /apps/saas/consent.
--
--   authorize?code=..[&storageRef=..]   -> success=true, state, code, accountReference; a
--        storageRef (POST reference, cloudId) binds that provisional storage to the user as
--        its storage of the contract (an unknown one: success=false&errorCode=InvalidReference)
--   user-reauth?code=..                 -> success=true, state, code
--   onboard?code=..                     -> success=true (and state when the JWT had one)
--   reauthorize?code=..&accountRef=..   -> success=true: the account (POST reference,
--        accountId) is authorized again (its sync no longer ends partial); an unknown or
--        missing accountRef: success=false&errorCode=InvalidReference, an account the user
--        does not have: errorCode=AccountNotFound
--   revoke?code=..                      (the location of GET permission-access/revoke)
--        -> redirectUri?result=success: the account's permission is withdrawn (its sync ends
--        partial until reauthorized); declined: result=failed&error_message=...
-- Declined consents: success=false&errorCode=<the consent's error code> (and state).

local wire = require "digime.sandbox.wire"
local view = require "digime.sandbox.library_view"
local storage = require "digime.sandbox.storage"

local os_time = os.time
local esc = wire.escape_html

local _M = {}

local PREFIX = "/apps/saas/"

local function page(status, title, text)
  return wire.html(status, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>"
    .. esc(title) .. "</title></head><body><h1>" .. esc(title) .. "</h1>\n" .. text
    .. "\n</body></html>\n")
end

local function bad_code(why)
  return page(400, "digi.me sandbox: this link does not work",
    "<p>" .. esc(why) .. "</p><p>An onboarding link works once, for a limited time. Ask the "
    .. "application for a new one.</p>")
end

-- The pending page of a code, if it is usable: -> rec | nil, response
local function pending(app, code, kinds)
  local rec = type(code) == "string" and app.state.page_codes[code]
  if not rec then
    return nil, bad_code("The code is unknown.")
  end
  if rec.used then
    return nil, bad_code("The code has already been used.")
  end
  if rec.expires <= os_time() then
    return nil, bad_code("The code has expired.")
  end
  if kinds and not kinds[rec.kind] then
    return nil, bad_code("The code does not belong to this page.")
  end
  return rec
end

local function callback(rec, params)
  return wire.redirect(wire.add_query(rec.redirect_uri, params))
end

local function failure(rec, error_code)
  rec.used = true
  local params = { { "success", "false" }, { "errorCode", error_code or "UserCancelled" } }
  if rec.state ~= nil then
    params[#params + 1] = { "state", rec.state }
  end
  return callback(rec, params)
end

local function revoke_decided(app, rec, decision, error_code)
  if decision ~= "accept" then
    return callback(rec, { { "result", "failed" },
                           { "error_message", "The user did not confirm (" .. (error_code or
                             "UserCancelled") .. ")" } })
  end
  local user = app.state.users[rec.user_id]
  if not user then
    return callback(rec, { { "result", "failed" },
                           { "error_message", "The user no longer exists" } })
  end
  user.revoked = user.revoked or {}
  user.revoked[rec.account_id] = true
  user.revocations = user.revocations or {}
  user.revocations[#user.revocations + 1] = { account = rec.account_id,
                                              time = math.floor(os.time() * 1000) }
  return callback(rec, { { "result", "success" } })
end

-- Carries out the user's decision on a pending page.
local function decide(app, rec, decision, error_code)
  local st = app.state
  rec.used = true
  if rec.kind == "revoke" then
    return revoke_decided(app, rec, decision, error_code)
  end
  if decision ~= "accept" then
    return failure(rec, error_code)
  end

  if rec.kind == "reference" then
    -- Onboard another service / reauthorize an account: nothing to exchange.
    local user = st.users[rec.user_id]
    if rec.account_id and user then
      user.reauthorized = user.reauthorized or {}
      user.reauthorized[rec.account_id] = true
      if user.revoked then
        user.revoked[rec.account_id] = nil
      end
    end
    local params = { { "success", "true" } }
    if rec.state ~= nil then
      params[#params + 1] = { "state", rec.state }
    end
    return callback(rec, params)
  end

  local user = rec.user_id and st.users[rec.user_id]
  if not user and rec.kind ~= "authorize" then
    return bad_code("The user of this link no longer exists.")
  end
  -- A storageRef's storage must still be there, and nobody else's.
  local sto = rec.storage_id and st.storages[rec.storage_id]
  if rec.storage_id and (not sto or (sto.user_id and sto.user_id ~= (user and user.id))) then
    return failure(rec, "InvalidReference")
  end
  user = user or st:new_user()
  st:consent_id(user, rec.client_id)
  if sto then
    storage.bind(sto, user)
  end
  local session = st.sessions[rec.session_key]
  if session then
    session.user_id = user.id
  end
  local code = st.random(32)
  st.auth_codes[code] = { client_id = rec.client_id, code_challenge = rec.code_challenge,
                          user_id = user.id, expires = os_time() + app.cfg.code_ttl }
  local params = { { "success", "true" } }
  if rec.state ~= nil then
    params[#params + 1] = { "state", rec.state }
  end
  params[#params + 1] = { "code", code }
  if rec.kind == "authorize" then
    -- On digi.me this names the account the user just onboarded, as read_accounts shows it
    -- (its `reference`): applications use it to find that account. Here: the first account
    -- of the user's library.
    local onboarded = view.user_accounts(app, user)[1]
    params[#params + 1] = { "accountReference", onboarded and onboarded.reference or st.random(32) }
  end
  return callback(rec, params)
end

local titles = {
  authorize = "Share your data",
  reauth = "Authorize again",
  reference = "Continue with digi.me",
  revoke = "Withdraw a permission",
}

local function consent_page(app, rec, code)
  local c = app.contracts[rec.client_id]
  local who = c and (c.application_id .. " (contract " .. c.contract_id .. ")") or rec.client_id
  local asks = rec.kind == "revoke"
    and ("asks you to withdraw its permission for the account <strong>" .. esc(rec.account_id)
         .. "</strong>.")
    or "asks for access to your data."
  return page(200, "digi.me sandbox: " .. titles[rec.kind],
    "<p>The application <strong>" .. esc(who) .. "</strong> " .. asks .. "</p>\n"
    .. "<form method=\"get\" action=\"" .. PREFIX .. "consent\">\n"
    .. "<input type=\"hidden\" name=\"code\" value=\"" .. esc(code) .. "\">\n"
    .. "<button type=\"submit\" name=\"decision\" value=\"accept\" id=\"accept\">Accept</button>\n"
    .. "<button type=\"submit\" name=\"decision\" value=\"decline\" id=\"decline\">Decline</button>\n"
    .. "</form>")
end

-- authorize: a storageRef names a provisional storage of the contract.
local function prepare_authorize(app, rec, req)
  local ref = req.query.storageRef
  if ref == nil then
    return nil
  end
  local r = app.state.references[ref]
  local sto = r and r.type == "cloudId" and r.client_id == rec.client_id
              and app.state.storages[r.value]
  if not sto then
    return failure(rec, "InvalidReference")
  end
  rec.storage_id = sto.id
  return nil
end

-- reauthorize: accountRef names an account of the user.
local function prepare_reauthorize(app, rec, req)
  local r = app.state.references[req.query.accountRef or ""]
  if not r or r.type ~= "accountId" or r.client_id ~= rec.client_id then
    return failure(rec, "InvalidReference")
  end
  local user = app.state.users[rec.user_id]
  local found = false
  for _, a in ipairs(user and view.user_accounts(app, user) or {}) do
    found = found or a.id == r.value
  end
  if not found then
    return failure(rec, "AccountNotFound")
  end
  rec.account_id = r.value
  return nil
end

-- A page that starts from a code: consent page or auto decision. prepare(app, rec, req)
-- reads the page's own parameters and answers instead when they are wrong.
local function entry(kinds, prepare)
  return function(app, req)
    local code = req.query.code
    local rec, res = pending(app, code, kinds)
    if not rec then
      return res
    end
    if prepare then
      res = prepare(app, rec, req)
      if res then
        return res
      end
    end
    if app.cfg.interactive then
      return consent_page(app, rec, code)
    end
    local c = app.state.consent
    return decide(app, rec, c.decision, c.error_code)
  end
end

local function consent(app, req)
  local rec, res = pending(app, req.query.code)
  if not rec then
    return res
  end
  local d = req.query.decision
  if d ~= "accept" and d ~= "decline" then
    return page(400, "digi.me sandbox: no decision", "<p>Choose Accept or Decline.</p>")
  end
  return decide(app, rec, d, "UserCancelled")
end

local pages = {
  authorize = entry({ authorize = true }, prepare_authorize),
  ["user-reauth"] = entry{ reauth = true },
  onboard = entry{ reference = true },
  reauthorize = entry({ reference = true }, prepare_reauthorize),
  revoke = entry{ revoke = true },
  consent = consent,
}

function _M.handle(app, req)
  local name = req.path:sub(#PREFIX + 1)
  local h = pages[name]
  if not h then
    return page(404, "digi.me sandbox: no such page", "<p>" .. esc(req.path) .. "</p>")
  end
  if req.method ~= "GET" and req.method ~= "HEAD" then
    return page(405, "digi.me sandbox: method not allowed", "<p>Use GET.</p>")
  end
  return h(app, req)
end

return _M
