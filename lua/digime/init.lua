--- lua-digime: the Lua SDK for the digi.me personal-data API.
-- @module digime
-- @usage
-- local digime = require "digime"
-- local sdk = assert(digime.init{ application_id = "my-app" })
-- local res, err = sdk:get_authorize_url{ contract = { id = "...", private_key = pem },
--                                         callback = "https://example.org/return", state = "s1" }
local config = require "digime.config"
local errors = require "digime.errors"
local scheduler = require "digime.scheduler"
local auth = require "digime.auth"
local read = require "digime.read"
local sync = require "digime.sync"
local onboard = require "digime.onboard"
local manage = require "digime.manage"
local query = require "digime.query"
local write = require "digime.write"
local storage = require "digime.storage"

local type, pcall, setmetatable, getmetatable = type, pcall, setmetatable, getmetatable
local rawget, ipairs, pairs, tostring = rawget, ipairs, pairs, tostring

local _M = {
  _VERSION = config.SDK_VERSION,
  errors = errors,
  --- The user access token an error carries (err.user_access_token, kept out of its fields).
  token_of = errors.token_of,
}

-- Inside nginx (a phase that may yield) every handler is already a task: run nests freely.
local function in_ngx_task()
  local ngx = rawget(_G, "ngx")
  return type(ngx) == "table" and ngx.get_phase ~= nil
    and scheduler.YIELDABLE[ngx.get_phase()] == true
end

--- Runs `fn(...)` as the first task of a scheduler and returns what it returns: calls made
-- inside it (and inside tasks it spawns) run concurrently. An error raised by `fn` is raised
-- again here.
-- @tparam function fn the task
-- @param ... its arguments
-- @return fn's results, or nil and a TypeValidationError (fn not a function) or a
--   DigiMeSDKError `NestedRun` (called inside a task: use `digime.spawn`)
function _M.run(fn, ...)
  if type(fn) ~= "function" then return nil, errors.validation("fn", "must be a function") end
  if scheduler.in_task() and not in_ngx_task() then
    return nil, errors.sdk("NestedRun", "digime.run was called inside a task (use digime.spawn)")
  end
  return scheduler.run(fn, ...)
end

--- Starts `fn(...)` as a new task inside `digime.run`; `task:wait()` returns its results.
-- @tparam function fn the task
-- @param ... its arguments
-- @return a task, or nil and a TypeValidationError (fn not a function) or a DigiMeSDKError
--   `NotInTask` (called outside `digime.run`)
function _M.spawn(fn, ...)
  if type(fn) ~= "function" then return nil, errors.validation("fn", "must be a function") end
  if not scheduler.in_task() then
    return nil, errors.sdk("NotInTask", "digime.spawn must be called from a task of digime.run")
  end
  return scheduler.spawn(fn, ...)
end

--- Sleeps without blocking other tasks inside `digime.run` (outside it, simply sleeps).
-- @tparam number seconds how long, >= 0
-- @return true, or nil and a TypeValidationError
function _M.sleep(seconds)
  if type(seconds) ~= "number" or seconds ~= seconds or seconds < 0 or seconds == math.huge then
    return nil, errors.validation("seconds", "must be a finite number >= 0")
  end
  scheduler.sleep(seconds)
  return true
end

local sdk_mt = {}
sdk_mt.__index = sdk_mt

--- Passes a line to the configured logger (never with secrets in it).
function sdk_mt:log(level, message, fields)
  if type(self) ~= "table" or getmetatable(self) ~= sdk_mt then
    return nil, errors.validation("log", "must be called as sdk:log(level, message, fields)")
  end
  local logger = self.config.logger
  if logger then pcall(logger, level, message, fields) end
end

-- Every public call: a method that validates its own options and returns result | nil, err.
local function method(fn, name)
  return function(self, opts)
    if type(self) ~= "table" or getmetatable(self) ~= sdk_mt then
      return nil, errors.validation(name, "must be called as sdk:" .. name .. "{...}")
    end
    -- The ngx transport cannot run in every nginx phase: say so before anything starts.
    local transport = self.transport
    if transport.available then
      local ok, err = transport:available()
      if not ok then return nil, errors.sdk("TransportUnavailable", err) end
    end
    return fn(self, opts)
  end
end

for _, name in ipairs{ "get_authorize_url", "get_reauthorize_url", "exchange_code_for_token",
                       "refresh_token" } do
  sdk_mt[name] = method(auth[name], name)
end
for _, name in ipairs{ "read_session", "read_file_list", "read_file", "read_file_metadata",
                       "read_accounts" } do
  sdk_mt[name] = method(read[name], name)
end
sdk_mt.read_all_files = method(sync.read_all_files, "read_all_files")
for module, names in pairs{
  [onboard] = { "get_onboard_service_url", "get_reauthorize_account_url",
                "get_revoke_account_permission_url" },
  [manage] = { "delete_user", "delete_account", "get_portability_report",
               "get_service_sample_data_sets", "get_contract_details" },
  [query] = { "query_sources", "query_countries", "query_platforms", "query_categories" },
  [write] = { "push_data" },
  [storage] = { "create_provisional_storage", "get_user_storage", "list_storage_files",
                "upload_file_to_storage", "download_storage_file", "delete_storage_files" },
} do
  for _, name in ipairs(names) do sdk_mt[name] = method(module[name], name) end
end

--- for file, err in sdk:files{...}: the whole-library sync as an iterator.
-- A bad `self` is reported as bad options are: an iterator whose one step is `false, err`.
function sdk_mt:files(opts)
  if type(self) ~= "table" or getmetatable(self) ~= sdk_mt then
    return sync.failed_iterator(errors.validation("files", "must be called as sdk:files{...}"))
  end
  return sync.files(self, opts)
end

local function in_nginx()
  local ngx = rawget(_G, "ngx")
  return type(ngx) == "table" and ngx.get_phase ~= nil
end

-- "curl" outside nginx; "ngx" inside (doc/architecture.md), unless the caller chose.
local function pick_transport(cfg)
  local t = cfg.transport
  if type(t) == "table" then return t end
  if t == "ngx" or (t == nil and in_nginx()) then
    if not in_nginx() then
      return nil, errors.sdk("TransportUnavailable", "the ngx transport runs only inside nginx")
    end
    if cfg.proxy then
      return nil, errors.validation("proxy", "is not supported by the ngx transport")
    end
    if cfg.tls.cafile or cfg.tls.capath then
      return nil, errors.validation("tls.cafile", "the ngx transport verifies against nginx's "
        .. "lua_ssl_trusted_certificate; set that directive instead")
    end
    return require("digime.transport.ngx").new(cfg)
  end
  if not require("digime.core").http_engine then
    return nil, errors.sdk("TransportUnavailable", "this build of digime.core has no HTTP engine "
      .. "(built for nginx only, CURL=no): it works inside nginx with the ngx transport")
  end
  local ok, curl = pcall(require, "digime.transport.curl")
  if not ok then
    return nil, errors.sdk("TransportUnavailable", "cannot load the curl transport: " .. tostring(curl))
  end
  return curl.new(cfg)
end

-- Inside nginx, log lines go to its error log unless the caller gave a logger.
local function ngx_logger()
  local ngx = rawget(_G, "ngx")
  local levels = { debug = ngx.DEBUG, info = ngx.INFO, warn = ngx.WARN, error = ngx.ERR }
  local concat, sort = table.concat, table.sort
  return function(level, message, fields)
    local parts = { "digime: ", message }
    if type(fields) == "table" then
      local keys = {}
      for k in pairs(fields) do keys[#keys + 1] = tostring(k) end
      sort(keys)
      for _, k in ipairs(keys) do
        parts[#parts + 1] = " " .. k .. "=" .. tostring(fields[k])
      end
    end
    ngx.log(levels[level] or ngx.NOTICE, concat(parts))
  end
end

--- Creates an SDK object. Every option is in the README; unknown keys are refused.
-- @tparam table opts `{ application_id = ..., base_url = ..., ... }`
-- @return sdk, or nil and a TypeValidationError
function _M.init(opts)
  local cfg, err = config.new(opts)
  if not cfg then return nil, err end
  local transport, terr = pick_transport(cfg)
  if not transport then return nil, terr end
  if not cfg.logger and in_nginx() then cfg.logger = ngx_logger() end
  -- a lock covers one request and its retry: a holder gone longer than that has died
  local shared, serr = require("digime.store").new(cfg, cfg.timeout * 2 + 5)
  if not shared then return nil, serr end
  return setmetatable({
    config = cfg,
    transport = transport,
    shared = shared,  -- what tasks, workers or hosts share: JWKS, refreshes (digime.store)
    jwks_cache = {},
    refreshed = {},   -- finished refreshes by old refresh token (tokens.lua)
    stats = { jwks_fetches = 0 },
  }, sdk_mt)
end

return _M
