-- References, user and account management, the revoke page link, portability reports,
-- sample data sets and contract details (doc/protocol.md "Endpoints", "Managing ..."):
--
--   POST   reference  CONTRACT  {"type": "cloudId"|"accountId", "value": "..."} -> 201 {"id"}
--          a cloudId must name a storage of the contract (404 StorageNotFound); an accountId
--          is checked where the reference is used (the reauthorize page)
--   DELETE user  USER -> 200 {}: the user, its tokens, sessions, library view, pushes and
--          storages are gone; its tokens answer 401 InvalidToken from then on
--   DELETE permission-access/service/h:accountId  USER, header accountId -> 200 {}: the
--          account and its files leave the user's library (404 AccountNotFound if it has none)
--   GET    permission-access/revoke/h:accountId  USER, headers accountId and redirectUri
--          -> 200 {"location": "<onboard_url>revoke?code=..."}; the page withdraws the
--          account's permission (its sync then ends partial until it is reauthorized) and
--          sends the browser to redirectUri?result=success (or result=failed&error_message=
--          when the consent decision is decline)
--   GET    export/{serviceType}/report?format=xml&from=&to=  USER -> 200 text/xml; medmij
--          only (404 otherwise), format xml only (400 otherwise); from/to are seconds or
--          milliseconds (values over 1e11 are taken as ms), absent or "undefined" = open
--   GET    permission-access/sample/datasets/{sourceId}  CONTRACT -> {"<id>": {"name",
--          "description"}, ...} for sources with sample data (discovery.lua), {} otherwise;
--          a sourceId that is not a number -> 400
--   GET    permission-access/contract  CONTRACT -> the contract object (doc/protocol.md)

local api = require "digime.sandbox.api"
local wire = require "digime.sandbox.wire"
local util = require "digime.sandbox.util"
local tokens = require "digime.sandbox.tokens"
local view = require "digime.sandbox.library_view"
local storage = require "digime.sandbox.storage"
local write = require "digime.sandbox.write"
local discovery_data = require "digime.sandbox.discovery_data"

local type, ipairs = type, ipairs
local concat = table.concat
local format = string.format
local math_floor = math.floor
local os_time = os.time
local esc = wire.escape_html

local _M = {}

local bad = wire.invalid_params

local now_ms = util.now_ms

-- POST reference
function _M.reference(app, req, auth)
  local body = wire.decode_object(req:body())
  if not body then
    return bad("the body must be a JSON object")
  end
  if body.type ~= "cloudId" and body.type ~= "accountId" then
    return bad("type must be cloudId or accountId")
  end
  if type(body.value) ~= "string" or body.value == "" then
    return bad("value must be a non-empty string")
  end
  local st = app.state
  if body.type == "cloudId" then
    local s = st.storages[body.value]
    if not s or s.client_id ~= auth.client_id then
      return wire.error(404, "StorageNotFound", "The storage (" .. body.value .. ") does not exist")
    end
  end
  local id = st.random(32)
  st.references[id] = { type = body.type, value = body.value, client_id = auth.client_id,
                        created = now_ms() }
  return wire.json(201, { id = id })
end

-- DELETE user
function _M.delete_user(app, _, auth)
  local rec, user = api.user(app, auth)
  if not rec then
    return user
  end
  storage.delete_user(app, user)
  app.state:delete_user(user.id)
  return wire.json(200, {})
end

-- DELETE permission-access/service/h:accountId
function _M.delete_account(app, req, auth)
  local user, account = write.user_account(app, req, auth)
  if not user then
    return account
  end
  user.removed = user.removed or {}
  user.removed[account.id] = true
  -- Pushed files go when none of their accounts is left.
  if user.pushed then
    local kept = {}
    for _, f in ipairs(user.pushed) do
      local alive = #f.accounts == 0
      for _, id in ipairs(f.accounts) do
        alive = alive or not user.removed[id]
      end
      if alive then
        kept[#kept + 1] = f
      else
        user.pushed_by_name[f.name] = nil
      end
    end
    user.pushed = kept
  end
  return wire.json(200, {})
end

local function absolute_uri(v)
  return type(v) == "string" and v:match("^%a[%w+.%-]*://?[^%s]+$") ~= nil
end

-- GET permission-access/revoke/h:accountId
function _M.revoke(app, req, auth)
  local user, account = write.user_account(app, req, auth)
  if not user then
    return account
  end
  local redirect = req.headers["redirecturi"]
  if type(redirect) ~= "string" or redirect == "" then
    return bad("the redirectUri header is missing")
  end
  if not absolute_uri(redirect) then
    return bad("the redirectUri header must be an absolute URI")
  end
  local st = app.state
  local code = st.random(32)
  st.page_codes[code] = { kind = "revoke", client_id = auth.client_id, user_id = user.id,
                          account_id = account.id, redirect_uri = redirect,
                          expires = os_time() + app.cfg.code_ttl }
  return wire.json(200, { location = app.urls.onboard_url .. "revoke?code=" .. code })
end

-- GET export/{serviceType}/report
local function bound(v)
  if v == nil or v == "undefined" or v == "" then
    return true, nil
  end
  local n = v:match("^%d+$") and tonumber(v)
  if not n then
    return false
  end
  return true, n > 1e11 and n or n * 1000     -- seconds or milliseconds -> ms
end

local function iso(ms)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math_floor(ms / 1000))
end

function _M.report(app, req, auth)
  local service = api.path_decode(req.path:match("^/v1%.7/export/([^/]+)/report$"))
  if service ~= "medmij" then
    return wire.error(404, "NotFound", "There is no portability report for the service type ("
                      .. service .. ")")
  end
  local rec, user = api.user(app, auth)
  if not rec then
    return user
  end
  local q = req.query
  if q.format ~= "xml" then
    return bad("format must be xml")
  end
  local ok_from, from = bound(q.from)
  local ok_to, to = bound(q.to)
  if not ok_from or not ok_to then
    return bad("from and to must be numbers (seconds or milliseconds)")
  end
  local out = {
    '<?xml version="1.0" encoding="UTF-8"?>',
    format('<portabilityReport serviceType="medmij" format="xml" generated="%s"%s%s>',
           iso(now_ms()), from and format(' from="%s"', iso(from)) or "",
           to and format(' to="%s"', iso(to)) or ""),
    format('  <user id="%s" application="%s"/>', esc(user.id), esc(auth.contract.application_id)),
    "  <accounts>",
  }
  for _, a in ipairs(view.user_accounts(app, user)) do
    local revoked = user.revoked and user.revoked[a.id]
    out[#out + 1] = format('    <account id="%s" service="%s" serviceGroup="%s" permission="%s"/>',
                           esc(a.id), esc(a.serviceTypeName), esc(a.serviceGroupName),
                           revoked and "revoked" or "granted")
  end
  out[#out + 1] = "  </accounts>"
  out[#out + 1] = "  <events>"
  local events = {}
  for _, p in ipairs(app.state.pushes) do
    if p.user == user.id then
      events[#events + 1] = { time = p.time, text = format(
        '    <event type="%s" time="%s" size="%d" sha256="%s"%s/>',
        p.kind == "provider" and "provider-push" or "library-push", iso(p.time), p.size,
        p.sha256, p.account and format(' account="%s" standard="fhir" version="%s"',
                                       esc(p.account), esc(p.version)) or "") }
    end
  end
  for _, r in ipairs(user.revocations or {}) do
    events[#events + 1] = { time = r.time, text = format(
      '    <event type="revoke" time="%s" account="%s"/>', iso(r.time), esc(r.account)) }
  end
  table.sort(events, function(a, b) return a.time < b.time end)
  for _, e in ipairs(events) do
    if (not from or e.time >= from) and (not to or e.time <= to) then
      out[#out + 1] = e.text
    end
  end
  out[#out + 1] = "  </events>"
  out[#out + 1] = "</portabilityReport>"
  return { status = 200, headers = { ["content-type"] = "text/xml; charset=utf-8" },
           body = concat(out, "\n") .. "\n" }
end

-- GET permission-access/sample/datasets/{sourceId}
function _M.sample_datasets(_, req)
  local id = api.path_decode(req.path:match("/datasets/([^/]+)$"))
  if not id:match("^%d+$") then
    return bad("sourceId must be a number")
  end
  local source = discovery_data.source_by_id[tonumber(id)]
  local out = {}
  for _, set in ipairs(source and source.samples or {}) do
    out[set.id] = { name = set.name, description = set.description }
  end
  return wire.json(200, out)
end

-- GET permission-access/contract
local YEAR_MS = 365 * 86400 * 1000

function _M.contract(app, _, auth)
  local c = auth.contract
  local st = app.state
  -- A stable expiration date per sandbox run (a year after its start).
  st.contract_expiry = st.contract_expiry or now_ms() + YEAR_MS
  local certificate = tokens.sign_ps512(app.signer.key,
    { alg = "PS512", typ = "JWT", kid = app.signer.kid },
    { iss = "digime-sandbox", sub = auth.client_id, contractId = c.contract_id,
      applicationId = c.application_id, accessType = "w", schemaVersion = "2.0.0" })
  return wire.json(200, {
    accessType = "w",
    application = {
      id = c.application_id,
      name = "Sandbox application " .. c.application_id,
      resources = { icon = { mimetype = "image/png",
                             url = "https://sandbox.invalid/apps/" .. c.application_id .. ".png" } },
      status = 1,
    },
    certificate = certificate,
    certificateContractSchemaVersion = "2.0.0",
    expirationDate = st.contract_expiry,
    id = c.contract_id,
    partnerId = "sandbox-partner",
    type = "ongoing",
  })
end

_M.absolute_uri = absolute_uri

return _M
