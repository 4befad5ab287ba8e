--- `digime.init` options: checked, defaulted, normalised (README, "`digime.init` options").
local errors = require "digime.errors"
local validate = require "digime.validate"
local store = require "digime.store"

local type, pairs, ipairs, tonumber = type, pairs, ipairs, tonumber
local sub, match, find = string.sub, string.match, string.find

local _M = {}

_M.SDK_NAME = "lua-digime"
_M.SDK_VERSION = "0.1.0"

local DEFAULTS = {
  base_url = "https://api.digi.me/v1.7/",
  onboard_url = "https://api.digi.me/apps/saas/",
  cloud_base_url = "https://cloud.digi.me/v1/",
}

local invalid = errors.validation

local function lua_version()
  local jit = rawget(_G, "jit")
  if type(jit) == "table" and jit.version then return jit.version end
  return _VERSION
end

--- The agent object sent in the bodies of the authorize, reference and trigger calls.
function _M.default_agent()
  return { sdk = { name = _M.SDK_NAME, version = _M.SDK_VERSION, meta = { lua = lua_version() } } }
end

-- host[:port], the host a name or a bracketed IPv6 address (RFC 3986 §3.2.2), the port 1..65535.
local function valid_authority(a)
  local host, port
  if sub(a, 1, 1) == "[" then
    host, port = match(a, "^%[([%x:%.]+)%](.*)$")
    if not host or not find(host, ":", 1, true) then return false end
  else
    host, port = match(a, "^([%w%-%._~%%]+)(.*)$")
    if not host then return false end
  end
  if port == "" then return true end
  local p = tonumber(match(port, "^:(%d%d?%d?%d?%d?)$"))
  return p ~= nil and p >= 1 and p <= 65535
end

local function url(v, field)
  if v == nil then return true end
  local authority = type(v) == "string" and not find(v, "[%s%c]")
    and match(v, "^https?://([^/?#]+)[^?#]*$")
  if not authority or not valid_authority(authority) then
    return nil, invalid(field, "must be an http:// or https:// URL (scheme://host[:port]/path)")
  end
  if #v > validate.LIMITS.url then
    return nil, invalid(field, "must be at most " .. validate.LIMITS.url .. " bytes long")
  end
  return true
end

local function with_slash(u)
  if sub(u, -1) ~= "/" then return u .. "/" end
  return u
end

local function check_table(v, field, allowed)
  if v == nil then return true end
  return validate.options(v, validate.set(allowed), field)
end

-- Each option's checker: (value, opts) -> true | nil, err. The options come in this order
-- (the first bad one is the one reported).
local function check_retry(r)
  local ok, err = check_table(r, "retry_options", { "limit", "max_time", "backoff", "max_backoff" })
  if not ok or not r then return ok, err end
  if r.limit ~= nil and not (validate.is_integer(r.limit) and r.limit >= 0 and r.limit <= 20) then
    return nil, invalid("retry_options.limit", "must be an integer within 0..20")
  end
  for _, k in ipairs{ "max_time", "backoff", "max_backoff" } do
    ok, err = validate.number(r[k], "retry_options." .. k, true, 0, 86400)
    if not ok then return nil, err end
  end
  return true
end

local function check_tls(t)
  local ok, err = check_table(t, "tls", { "verify", "cafile", "capath" })
  if not ok or not t then return ok, err end
  ok, err = validate.boolean(t.verify, "tls.verify", true)
  if not ok then return nil, err end
  ok, err = validate.string(t.cafile, "tls.cafile", true)
  if not ok then return nil, err end
  return validate.string(t.capath, "tls.capath", true)
end

local function check_proxy(p)
  local ok, err = check_table(p, "proxy", { "http", "https", "no_proxy" })
  if not ok or not p then return ok, err end
  for _, k in ipairs{ "http", "https", "no_proxy" } do
    ok, err = validate.string(p[k], "proxy." .. k, true)
    if not ok then return nil, err end
  end
  return true
end

local function check_transport(t)
  if t ~= nil and t ~= "curl" and t ~= "ngx"
     and not (type(t) == "table" and type(t.request) == "function") then
    return nil, invalid("transport", 'must be "curl", "ngx" or an object with a request method')
  end
  return true
end

local function check_jwks(j)
  local ok, err = check_table(j, "jwks", { "allowed", "ttl", "cooldown", "shared_dict", "max_size" })
  if not ok or not j then return ok, err end
  if j.allowed ~= nil then
    if not validate.is_array(j.allowed) or #j.allowed == 0 then
      return nil, invalid("jwks.allowed", "must be a non-empty array of URLs")
    end
    for i, u in ipairs(j.allowed) do
      ok, err = url(u, "jwks.allowed[" .. i .. "]")
      if not ok then return nil, err end
    end
  end
  for _, k in ipairs{ "ttl", "cooldown" } do
    ok, err = validate.number(j[k], "jwks." .. k, true, 0, 86400 * 30)
    if not ok then return nil, err end
  end
  ok, err = validate.number(j.max_size, "jwks.max_size", true, 1024, 64 * 1024 * 1024)
  if not ok then return nil, err end
  return validate.string(j.shared_dict, "jwks.shared_dict", true)
end

local function check_keepalive(ka)
  if ka == nil or ka == false then return true end
  local ok, err = check_table(ka, "keepalive", { "idle" })
  if not ok then return nil, err end
  return validate.number(ka.idle, "keepalive.idle", true, 1, 3600)
end

local function check_limits(l)
  local ok, err = check_table(l, "limits", { "json", "file_list", "headers", "body" })
  if not ok or not l then return ok, err end
  for _, k in ipairs{ "json", "file_list", "headers", "body" } do
    ok, err = validate.number(l[k], "limits." .. k, true, 1024, 2^50)
    if not ok then return nil, err end
  end
  return true
end

local function check_agent(a)
  if a == nil then return true end
  if type(a) ~= "table" or type(a.sdk) ~= "table" then
    return nil, invalid("agent", "must be a table { sdk = { name, version, meta? } }")
  end
  local ok, err = validate.string(a.sdk.name, "agent.sdk.name")
  if not ok then return nil, err end
  ok, err = validate.string(a.sdk.version, "agent.sdk.version")
  if not ok then return nil, err end
  if a.sdk.meta ~= nil and not validate.is_record(a.sdk.meta) then
    return nil, invalid("agent.sdk.meta", "must be a table")
  end
  return true
end

local function number_in(field, min, max)
  return function(v) return validate.number(v, field, true, min, max) end
end

local CHECKS = {
  { "application_id", function(v) return validate.digime_id(v, "application_id") end },
  { "base_url", function(v) return url(v, "base_url") end },
  { "onboard_url", function(v) return url(v, "onboard_url") end },
  { "cloud_base_url", function(v) return url(v, "cloud_base_url") end },
  { "retry_options", check_retry },
  { "timeout", number_in("timeout", 0.001, 86400) },
  { "connect_timeout", number_in("connect_timeout", 0.001, 86400) },
  { "tls", check_tls },
  { "proxy", check_proxy },
  { "transport", check_transport },
  { "jwks", check_jwks },
  { "keepalive", check_keepalive },
  { "store", function(v, opts) return store.check(v, opts.jwks) end },
  { "limits", check_limits },
  { "clock_leeway", number_in("clock_leeway", 0, 86400) },
  { "on_token_refresh", function(v) return validate.func(v, "on_token_refresh", true) end },
  { "logger", function(v) return validate.func(v, "logger", true) end },
  { "agent", check_agent },
}

-- The options init knows: those with a checker.
local TOP = {}
for _, c in ipairs(CHECKS) do TOP[c[1]] = true end

local function check(opts)
  local ok, err = validate.options(opts, TOP, "options")
  if not ok then return nil, err end
  for _, c in ipairs(CHECKS) do
    ok, err = c[2](opts[c[1]], opts)
    if not ok then return nil, err end
  end
  return true
end

local function copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = copy(v) end
  return c
end

--- Returns the effective configuration, or nil, err.
function _M.new(opts)
  local ok, err = check(opts)
  if not ok then return nil, err end
  local store_opt = opts.store   -- an object keeps its identity (and metatable)
  opts = copy(opts)
  local c = {
    application_id = opts.application_id,
    base_url = with_slash(opts.base_url or DEFAULTS.base_url),
    onboard_url = with_slash(opts.onboard_url or DEFAULTS.onboard_url),
    cloud_base_url = with_slash(opts.cloud_base_url or DEFAULTS.cloud_base_url),
    timeout = opts.timeout or 30,
    connect_timeout = opts.connect_timeout or 10,
    tls = opts.tls or {},
    proxy = opts.proxy,
    transport = opts.transport,
    clock_leeway = opts.clock_leeway or 60,
    on_token_refresh = opts.on_token_refresh,
    logger = opts.logger,
    agent = opts.agent or _M.default_agent(),
    store = store.is_store(store_opt) and store_opt or opts.store,
  }
  if c.tls.verify == nil then c.tls.verify = true end
  local r = opts.retry_options or {}
  c.retry_options = {
    limit = r.limit or 2,
    max_time = r.max_time or 30,
    backoff = r.backoff or 1,
    max_backoff = r.max_backoff or 10,
  }
  local j = opts.jwks or {}
  c.jwks = {
    allowed = j.allowed or { c.base_url .. "jwks/oauth" },
    ttl = j.ttl or 300,
    cooldown = j.cooldown or 30,
    shared_dict = j.shared_dict,
    max_size = j.max_size or 1024 * 1024,
  }
  -- Connections are kept alive and reused; one idle for more than `idle` seconds (whole
  -- seconds, as libcurl counts them) is not reused, so that it is retired before a server's
  -- keep-alive timeout closes it under a request (5 s is the shortest common server
  -- default). `keepalive = false`: a connection of its own for every attempt.
  if opts.keepalive == false then
    c.keepalive = false
  else
    c.keepalive = { idle = (opts.keepalive or {}).idle or 2 }
  end
  local l = opts.limits or {}
  c.limits = {
    json = l.json or 16 * 1024 * 1024,
    -- A library's file list grows with it (about 200 bytes a file): 128 MiB is ~600,000 files.
    file_list = l.file_list or 128 * 1024 * 1024,
    headers = l.headers or 256 * 1024,
    body = l.body or 1024 * 1024 * 1024,
  }
  return c
end

return _M
