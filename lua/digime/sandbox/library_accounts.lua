-- The accounts of the library: the two every library has, the one --partial adds, those a
-- --library metadata.json names, and their wire shape.
--
--   accounts.base(created) -> { a, b }       accounts.partial(created) -> account
--   accounts.generic(id, n, created) -> account
--   accounts.record(account, needs_auth?) -> the API's account record

local core = require "digime.core"
local util = require "digime.sandbox.util"

local ipairs = ipairs

local _M = {}

-- The two accounts of every library, and the one --partial adds. Ids look like the API's
-- ("<serviceTypeId>_<reference>").
local BASE_ACCOUNTS = {
  { id = "40_SbInstagram01", serviceGroupId = 1, serviceGroupName = "Social",
    serviceTypeId = 40, serviceTypeName = "Instagram", serviceTypeReference = "instagram",
    sourceId = 420, username = "sandbox.instagram", group = "social" },
  { id = "24_SbFitbit01", serviceGroupId = 4, serviceGroupName = "Health & Fitness",
    serviceTypeId = 24, serviceTypeName = "Fitbit", serviceTypeReference = "fitbit",
    sourceId = 183, username = "sandbox.fitbit", group = "health" },
}
local PARTIAL_ACCOUNT = {
  id = "19_SbSpotify01", serviceGroupId = 5, serviceGroupName = "Entertainment",
  serviceTypeId = 19, serviceTypeName = "Spotify", serviceTypeReference = "spotify",
  sourceId = 312, username = "sandbox.spotify", group = "entertainment", partial = true,
}

local function make(spec, created)
  local a = util.copy(spec)
  a.reference = core.b64url_encode(core.sha256("account " .. a.id)):gsub("[^%w]", ""):sub(1, 32)
  a.type = "USER"
  a.createdDate = created
  a.updatedDate = created
  a.sample = false
  local ref = a.serviceTypeReference or "app"
  a.providerFavIcon = "https://sandbox.invalid/icons/" .. ref .. ".png"
  a.providerLogo = "https://sandbox.invalid/logos/" .. ref .. ".png"
  return a
end

-- An account only named by a --library metadata.json (the n-th such).
function _M.generic(id, n, created)
  return make({ id = id, serviceGroupId = 99, serviceGroupName = "Imported",
                serviceTypeId = 900 + n, serviceTypeName = "Sandbox " .. id,
                serviceTypeReference = "sandbox" .. n, sourceId = 9000 + n, group = "imported" },
              created)
end

-- The wire shape of an account (doc/protocol.md "Reading a library"); needs_auth: its source
-- authorization is gone (by default: it is the partial account).
function _M.record(a, needs_auth)
  local r = {}
  for _, k in ipairs{ "id", "reference", "type", "createdDate", "updatedDate", "serviceGroupId",
                      "serviceGroupName", "serviceTypeId", "serviceTypeName",
                      "serviceTypeReference", "sourceId", "username", "providerFavIcon",
                      "providerLogo", "sample" } do
    r[k] = a[k]
  end
  if needs_auth == nil then
    needs_auth = a.partial
  end
  r.accessTokenStatus = { authorized = not needs_auth }
  if needs_auth then
    r.accessTokenStatus.expiresAt = a.createdDate
  end
  return r
end

function _M.base(created)
  local list = {}
  for i, spec in ipairs(BASE_ACCOUNTS) do
    list[i] = make(spec, created)
  end
  return list
end

function _M.partial(created)
  return make(PARTIAL_ACCOUNT, created)
end

return _M
