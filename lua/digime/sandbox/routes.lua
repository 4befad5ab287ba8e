-- Every endpoint of the sandbox, in one place: which part of the URL space goes to which file
-- (the mounts), and the digi.me API under /v1.7/, route by route. The handler files only
-- export functions; nothing registers itself when it is loaded.
--
--   routes.dispatch(app, req) -> response     the answer of one request (server.lua)
--   routes.api                                the /v1.7/ table below, in matching order
--
-- A /v1.7/ route: { method, path, handler, auth = false? }. `path` is exact, or a Lua pattern
-- (anchored at both ends) when `pattern = true`. The first route whose path matches and whose
-- method is the request's wins; HEAD falls back to the GET route of the path. A path that
-- matches with another method is 405, no match at all 404. handler(app, req, auth) ->
-- response; auth = { claims, client_id, contract } from the Bearer check (api.authenticate),
-- which every route but the JWKS needs.
--
-- /sandbox/ (control.lua), /apps/saas/ (onboard.lua) and /cloud/v1/ (storage.lua) keep their
-- own tables: the control entries (doc/sandbox-control.md), the onboarding pages and the
-- cloud file paths.

local wire = require "digime.sandbox.wire"
local api = require "digime.sandbox.api"
local storage = require "digime.sandbox.storage"
local write = require "digime.sandbox.write"
local manage = require "digime.sandbox.manage"
local discovery = require "digime.sandbox.discovery"
local control = require "digime.sandbox.control"
local onboard = require "digime.sandbox.onboard"

local ipairs = ipairs

local _M = {}

local QUERY = "/v1%.7/permission%-access/query/"

_M.api = {
  -- api.lua: keys, authorization, tokens, reading a library
  { "GET",    "/v1.7/jwks/oauth",                     api.jwks, auth = false },
  { "POST",   "/v1.7/oauth/authorize",                api.authorize },
  { "POST",   "/v1.7/oauth/token/reference",          api.token_reference },
  { "POST",   "/v1.7/oauth/token",                    api.token },
  { "POST",   "/v1.7/permission-access/trigger",      api.trigger },
  { "GET",    "/v1.7/permission-access/accounts",     api.accounts },
  { "GET",    QUERY .. "[^/]+",                       api.file_list, pattern = true },
  { "GET",    QUERY .. "[^/]+/.+",                    api.file_get, pattern = true },
  -- storage.lua: the user's cloud storage (its files are the /cloud/v1/ mount)
  { "POST",   "/v1.7/storage",                        storage.post_storage },
  { "GET",    "/v1.7/storage",                        storage.get_storage },
  -- write.lua: pushes
  { "POST",   "/v1.7/permission-access/import",       write.import },
  { "POST",   "/v1%.7/permission%-access/import/h:accountId/fhir/[^/]+", write.provider,
    pattern = true },
  -- manage.lua: references, deletion, revoke, reports, sample data, the contract
  { "POST",   "/v1.7/reference",                      manage.reference },
  { "DELETE", "/v1.7/user",                           manage.delete_user },
  { "DELETE", "/v1.7/permission-access/service/h:accountId", manage.delete_account },
  { "GET",    "/v1.7/permission-access/revoke/h:accountId",  manage.revoke },
  { "GET",    "/v1%.7/export/[^/]+/report",            manage.report, pattern = true },
  { "GET",    "/v1%.7/permission%-access/sample/datasets/[^/]+", manage.sample_datasets,
    pattern = true },
  { "GET",    "/v1.7/permission-access/contract",     manage.contract },
  -- discovery.lua
  { "POST",   "/v1.7/discovery/sources",              discovery.sources },
  { "POST",   "/v1.7/discovery/countries",            discovery.countries },
  { "POST",   "/v1.7/discovery/platforms",            discovery.platforms },
  { "POST",   "/v1.7/discovery/categories",           discovery.categories },
}

local function path_hit(r, path)
  if r.pattern then
    return path:match("^" .. r[2] .. "$") ~= nil
  end
  return path == r[2]
end

-- -> route | nil, path_known. HEAD falls back to the GET route when it has none of its own.
local function find(method, path)
  local path_known, head_fallback = false, nil
  for _, r in ipairs(_M.api) do
    if path_hit(r, path) then
      path_known = true
      if r[1] == method then
        return r
      end
      if method == "HEAD" and r[1] == "GET" then
        head_fallback = head_fallback or r
      end
    end
  end
  return head_fallback, path_known
end

-- /v1.7/ and the foreign JWKS paths.
local function handle_api(app, req)
  for _, p in ipairs(api.foreign_paths) do
    if req.path == p then
      return api.foreign_jwks(app)
    end
  end
  local r, known = find(req.method, req.path)
  if not r then
    if known then
      return wire.error(405, "MethodNotAllowed", "Method " .. req.method .. " is not allowed here")
    end
    return wire.error(404, "NotFound", "No such endpoint: " .. req.method .. " " .. req.path)
  end
  local auth
  if r.auth ~= false then
    local res
    auth, res = api.authenticate(app, req)
    if not auth then
      return res
    end
  end
  return r[3](app, req, auth)
end

-- Where each part of the URL space is handled: the first prefix that matches.
_M.mounts = {
  { "/sandbox/",   control.handle },
  { "/v1.7/",      handle_api },
  { "/evil/",      handle_api },
  { "/apps/saas/", onboard.handle },
  { "/cloud/v1/",  storage.handle },
}

function _M.dispatch(app, req)
  for _, m in ipairs(_M.mounts) do
    local prefix = m[1]
    if req.path:sub(1, #prefix) == prefix then
      return m[2](app, req)
    end
  end
  return wire.error(404, "NotFound", "No such endpoint: " .. req.method .. " " .. req.path)
end

return _M
