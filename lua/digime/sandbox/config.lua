-- Command line and --config JSON of digime-sandbox.
--
-- parse(argv) -> cfg | nil, err. err is a usage error (the caller prints it and exits 2).
-- Settings from --config files are applied first, flags on the command line override them;
-- contracts from both are added together. Keys are loaded later (server.lua), this file only
-- reads text.

local cjson = require "cjson.safe"
local util = require "digime.sandbox.util"

local type, tonumber, tostring = type, tonumber, tostring
local math_floor = math.floor

local _M = {}

_M.usage = [[
usage: digime-sandbox [options]
  --host ADDR            address to listen on (default 127.0.0.1)
  --port N               port, 0 = a free port (default 0)
  --contract APP_ID:CONTRACT_ID:PUBLIC_KEY_PEM_FILE
                         a contract the sandbox accepts (repeatable; default: the demo contract)
  --config FILE.json     the same settings as JSON (flags override it)
  --interactive          onboarding pages show an HTML consent page instead of consenting
  --library DIR          the user library: every regular file in DIR (DIR/metadata.json may map
                         names to {"metadata", "compression", "account"}); default: built in
  --generate COUNT:SIZE[:gzip|brotli|none|mixed]
                         COUNT generated JSON files of SIZE bytes each (k/m/g suffixes), in
                         place of the built-in library (next to --library's files if given)
  --big-file SIZE        adds big.bin, SIZE bytes (e.g. 64m, 2g) generated and encrypted as a
                         stream when served, never held in memory
  --sync-pace SECONDS    time per sync step: pending -> running (half the files) -> running
                         (all) -> completed; at most one step per poll (default 0.2; 0 = a sync
                         is completed at once)
  --partial              adds an account whose sync ends partial (ServiceAuthorizationError)
  --hostile-names        two built-in files named "constructor" and "__proto__" (names that
                         break clients keeping files in a plain object), in place of ordinary names
  --push-limit SIZE      the largest body a push to a library or provider takes (default 64m;
                         a longer one is refused with 413)
  --storage-limit SIZE   the largest object the cloud storage takes (default 256m); objects
                         over 1m are kept in temporary files, not in memory
  --tls                  serve HTTPS with a throw-away CA (its file is reported as ca_file)
  --cert FILE --key FILE with --tls: serve this certificate and key instead
  --latency MS           act as if MS milliseconds of round trip away: every byte arrives
                         MS/2 later each way, a new connection's first bytes one MS more (the
                         TCP handshake); TLS sits behind the delay (default 0: no relay)
  --bandwidth RATE       with or without --latency: bytes per second each way, shared by all
                         connections (k/m/g suffixes; default 0: no cap)
  --keepalive SECONDS    an idle keep-alive connection is closed after this long (default 5;
                         a new connection has 10 s, or this if longer, for its first request)
  --help                 this text
The first line on stdout is a JSON object with base_url, onboard_url, cloud_base_url,
control_url (and ca_file with --tls). SIGTERM or SIGINT stops the sandbox.
]]

local function defaults()
  return {
    host = "127.0.0.1",
    port = 0,
    contracts = {},          -- { application_id, contract_id, public_key_file | public_key }
    agents = nil,            -- nil: any agent; else { { name =, versions = { ... } }, ... }
    interactive = false,
    tls = false,
    cert = nil,
    key = nil,
    access_ttl = 3600,       -- seconds
    refresh_ttl = 30 * 24 * 3600,
    code_ttl = 600,          -- pre-authorization, reference and authorization codes
    session_ttl = 1800,      -- read sessions handed out with authorize/reference
    timestamp_window = 300,  -- seconds either side of now for the client JWT timestamp
    log_size = 500,          -- entries kept for GET /sandbox/log
    library = nil,           -- a directory whose files make the user library
    generate = nil,          -- { count =, size =, compression = "gzip"|"brotli"|"none"|"mixed" }
    big_file = nil,          -- bytes of big.bin, when wanted
    sync_pace = 0.2,         -- seconds per sync step
    partial = false,         -- an account whose sync ends with ServiceAuthorizationError
    hostile_names = false,   -- built-in files named "constructor" and "__proto__"
    push_limit = 64 * 1024 * 1024,      -- bytes of a push body (library or provider)
    storage_limit = 256 * 1024 * 1024,  -- bytes of one cloud storage object
    storage_memory = 1024 * 1024,       -- objects over this many bytes go to temporary files
    latency = 0,             -- ms of round trip (relay.lua)
    bandwidth = 0,           -- bytes/s each way, 0 = no cap
    keepalive = 5,           -- seconds an idle connection is kept
  }
end

local function is_count(v, min)
  return type(v) == "number" and v == math_floor(v) and v >= (min or 0) and v < 2 ^ 53
end

-- "123", "2k", "64m", "2g" (powers of 1024) -> bytes | nil
local function parse_size(text)
  if type(text) == "number" then
    return is_count(text) and math_floor(text) or nil
  end
  if type(text) ~= "string" then
    return nil
  end
  local digits, unit = text:lower():match("^(%d+)([kmg]?)b?$")
  if not digits then
    return nil
  end
  local n = tonumber(digits) * ({ [""] = 1, k = 1024, m = 1024 ^ 2, g = 1024 ^ 3 })[unit]
  if n >= 2 ^ 53 then
    return nil
  end
  return math_floor(n)
end
_M.parse_size = parse_size

local compressions = { gzip = true, brotli = true, none = true, mixed = true }

-- COUNT:SIZE[:gzip|brotli|none|mixed] -> { count, size, compression } | nil, err
local function parse_generate(text)
  local err = "--generate wants COUNT:SIZE[:gzip|brotli|none|mixed] (e.g. 50:2k:mixed), got "
              .. tostring(text)
  if type(text) ~= "string" then
    return nil, err
  end
  local count, size, comp = text:match("^(%d+):([^:]+):?(.*)$")
  if not count then
    return nil, err
  end
  size = parse_size(size)
  count = tonumber(count)
  if not size or count < 1 or count > 1000000 then
    return nil, err
  end
  if comp == "" then
    comp = "mixed"
  end
  if not compressions[comp] then
    return nil, err
  end
  if count * size > 1024 ^ 3 then
    return nil, "--generate: " .. text .. " is over 1 GiB in all; the generated files are kept in "
                .. "memory (use --big-file for a big file)"
  end
  return { count = math_floor(count), size = size, compression = comp }
end

local function parse_contract(spec)
  -- APP_ID:CONTRACT_ID:FILE; the file name may itself contain ':'.
  local app, contract, file = spec:match("^([^:]+):([^:]+):(.+)$")
  if not app then
    return nil, "--contract wants APP_ID:CONTRACT_ID:PUBLIC_KEY_PEM_FILE, got " .. spec
  end
  return { application_id = app, contract_id = contract, public_key_file = file }
end

local known_keys = {
  host = "string", port = "number", contracts = "table", agents = "table",
  interactive = "boolean", tls = "boolean", cert = "string", key = "string",
  access_ttl = "number", refresh_ttl = "number", code_ttl = "number", session_ttl = "number",
  timestamp_window = "number", log_size = "number",
  library = "string", generate = "string", big_file = "size", sync_pace = "number",
  partial = "boolean", push_limit = "size", storage_limit = "size", storage_memory = "size",
  latency = "number", bandwidth = "size", keepalive = "number",
  hostile_names = "boolean",
}

local function check_contract(c, where)
  if type(c) ~= "table" or type(c.application_id) ~= "string" or c.application_id == ""
     or type(c.contract_id) ~= "string" or c.contract_id == ""
     or (type(c.public_key_file) ~= "string" and type(c.public_key) ~= "string") then
    return nil, where .. ": a contract needs application_id, contract_id and "
                .. "public_key_file (or public_key, a PEM string)"
  end
  for k in pairs(c) do
    if k ~= "application_id" and k ~= "contract_id" and k ~= "public_key_file"
       and k ~= "public_key" then
      return nil, where .. ": unknown contract key " .. tostring(k)
    end
  end
  return true
end

local function check_agents(agents, where)
  if type(agents) ~= "table" then
    return nil, where .. ": agents must be an array"
  end
  for _, a in ipairs(agents) do
    if type(a) ~= "table" or type(a.name) ~= "string" then
      return nil, where .. ": each agent needs a name"
    end
    if a.versions ~= nil then
      if type(a.versions) ~= "table" then
        return nil, where .. ": agent versions must be an array of strings"
      end
      for _, v in ipairs(a.versions) do
        if type(v) ~= "string" then
          return nil, where .. ": agent versions must be an array of strings"
        end
      end
    end
  end
  return true
end

local function apply_json(cfg, file)
  local text, ferr = util.read_file(file)
  if not text then
    return nil, "--config: " .. tostring(ferr)
  end
  local t, err = cjson.decode(text)
  if type(t) ~= "table" then
    return nil, "--config " .. file .. ": " .. tostring(err or "a JSON object expected")
  end
  for k, v in pairs(t) do
    local want = known_keys[k]
    if not want then
      return nil, "--config " .. file .. ": unknown setting " .. tostring(k)
    end
    if want == "size" then
      if type(v) ~= "string" and type(v) ~= "number" then
        return nil, "--config " .. file .. ": " .. k .. " must be a size (bytes, or a string "
                    .. "such as \"64m\")"
      end
    elseif type(v) ~= want then
      return nil, "--config " .. file .. ": " .. k .. " must be a " .. want
    end
  end
  for k, v in pairs(t) do
    if k == "contracts" then
      for _, c in ipairs(v) do
        local ok, err2 = check_contract(c, "--config " .. file)
        if not ok then
          return nil, err2
        end
        cfg.contracts[#cfg.contracts + 1] = c
      end
    elseif k == "agents" then
      local ok, err2 = check_agents(v, "--config " .. file)
      if not ok then
        return nil, err2
      end
      cfg.agents = v
    else
      cfg[k] = v
    end
  end
  return true
end

-- Flags that take a value, and the flags that don't.
local valued = { host = true, port = true, contract = true, config = true, cert = true, key = true,
                 library = true, generate = true, ["big-file"] = true, ["sync-pace"] = true,
                 ["push-limit"] = true, ["storage-limit"] = true, latency = true,
                 bandwidth = true, keepalive = true }
local switches = { interactive = true, tls = true, help = true, partial = true }
switches["hostile-names"] = true

-- latency (ms), bandwidth (a size per second) and keepalive (s), checked and normalized in
-- place (also for POST /sandbox/latency): -> true | nil, err
function _M.check_network(t)
  local ms = t.latency
  if ms ~= nil and (type(ms) ~= "number" or not (ms >= 0 and ms <= 60000)) then
    return nil, "latency wants milliseconds 0..60000, got " .. tostring(ms)
  end
  if t.bandwidth ~= nil then
    local rate = parse_size(t.bandwidth)
    if not rate then
      return nil, "bandwidth wants bytes per second such as 1m (0 = no cap), got "
                  .. tostring(t.bandwidth)
    end
    t.bandwidth = rate
  end
  local ka = t.keepalive
  if ka ~= nil and (type(ka) ~= "number" or not (ka > 0 and ka <= 3600)) then
    return nil, "keepalive wants seconds 0..3600 (not 0), got " .. tostring(ka)
  end
  return true
end

-- The flags of argv, in order: -> { { name, value }, ... } | nil, err
local function read_argv(argv)
  local flags = {}
  local i, n = 1, #argv
  while i <= n do
    local a = argv[i]
    local name, inline = a:match("^%-%-([%w%-]+)=(.*)$")
    if not name then
      name = a:match("^%-%-([%w%-]+)$")
    end
    if not name then
      return nil, "unexpected argument: " .. a
    end
    if valued[name] then
      local v = inline
      if v == nil then
        i = i + 1
        v = argv[i]
        if v == nil then
          return nil, "--" .. name .. " needs a value"
        end
      end
      flags[#flags + 1] = { name, v }
    elseif switches[name] then
      if inline ~= nil then
        return nil, "--" .. name .. " takes no value"
      end
      flags[#flags + 1] = { name, true }
    else
      return nil, "unknown option: --" .. name
    end
    i = i + 1
  end
  return flags
end

-- Flags that set their setting as given (checked later, with the --config values), and the
-- switches that set theirs to true.
local plain_flags = { host = "host", cert = "cert", key = "key", library = "library",
                      generate = "generate", ["big-file"] = "big_file",
                      ["push-limit"] = "push_limit", ["storage-limit"] = "storage_limit",
                      bandwidth = "bandwidth" }
local switch_flags = { help = "help", interactive = "interactive", tls = "tls",
                       partial = "partial", ["hostile-names"] = "hostile_names" }

-- One command-line flag (not --config) into cfg: -> true | nil, err
local function apply_flag(cfg, name, v)
  if plain_flags[name] then
    cfg[plain_flags[name]] = v
  elseif switch_flags[name] then
    cfg[switch_flags[name]] = true
  elseif name == "port" then
    cfg.port = tonumber(v)
    if not is_count(cfg.port) or cfg.port > 65535 then
      return nil, "--port wants a number 0..65535, got " .. v
    end
  elseif name == "contract" then
    local c, err = parse_contract(v)
    if not c then
      return nil, err
    end
    cfg.contracts[#cfg.contracts + 1] = c
  elseif name == "sync-pace" then
    cfg.sync_pace = tonumber(v)
    if not cfg.sync_pace then
      return nil, "--sync-pace wants a number of seconds, got " .. v
    end
  elseif name == "latency" or name == "keepalive" then
    cfg[name] = tonumber(v) or v
  end
  return true
end

-- --config files first (in order), then the other flags over them: -> true | nil, err
local function apply_flags(cfg, flags)
  for _, f in ipairs(flags) do
    if f[1] == "config" then
      local ok, err = apply_json(cfg, f[2])
      if not ok then
        return nil, err
      end
    end
  end
  for _, f in ipairs(flags) do
    if f[1] ~= "config" then
      local ok, err = apply_flag(cfg, f[1], f[2])
      if not ok then
        return nil, err
      end
    end
  end
  return true
end

-- The generated files (--generate, --big-file), parsed in place: -> true | nil, err
local function check_generated(cfg)
  if cfg.generate ~= nil and type(cfg.generate) ~= "table" then
    local g, err = parse_generate(cfg.generate)
    if not g then
      return nil, err
    end
    cfg.generate = g
  end
  if cfg.big_file ~= nil then
    local size = parse_size(cfg.big_file)
    if not size or size < 1 then
      return nil, "--big-file wants a size such as 64m or 2g, got " .. tostring(cfg.big_file)
    end
    cfg.big_file = size
  end
  return true
end

-- The body limits, as bytes: -> true | nil, err
local function check_limits(cfg)
  for _, k in ipairs{ "push_limit", "storage_limit", "storage_memory" } do
    local size = parse_size(cfg[k])
    if not size then
      return nil, "--" .. k:gsub("_", "-") .. " wants a size such as 64m, got " .. tostring(cfg[k])
    end
    cfg[k] = size
  end
  return true
end

-- The library directory and the pace of a sync: -> true | nil, err
local function check_library(cfg)
  if type(cfg.sync_pace) ~= "number" or cfg.sync_pace < 0 or cfg.sync_pace > 3600
     or cfg.sync_pace ~= cfg.sync_pace then
    return nil, "sync_pace must be a number of seconds 0..3600"
  end
  if cfg.library ~= nil and (type(cfg.library) ~= "string" or cfg.library == "") then
    return nil, "library must be a directory"
  end
  return true
end

-- The port, the lifetimes and the TLS files: -> true | nil, err
local function check_server(cfg)
  if not is_count(cfg.port) or cfg.port > 65535 then
    return nil, "port must be a number 0..65535"
  end
  for _, k in ipairs{ "access_ttl", "refresh_ttl", "code_ttl", "session_ttl",
                      "timestamp_window", "log_size" } do
    if not is_count(cfg[k], 1) then
      return nil, k .. " must be a positive integer"
    end
    cfg[k] = math_floor(cfg[k])   -- JSON numbers are floats on Lua 5.4
  end
  cfg.port = math_floor(cfg.port)
  if (cfg.cert == nil) ~= (cfg.key == nil) then
    return nil, "--cert and --key go together"
  end
  if cfg.cert and not cfg.tls then
    return nil, "--cert/--key need --tls"
  end
  return true
end

function _M.parse(argv)
  local flags, err = read_argv(argv)
  if not flags then
    return nil, err
  end
  local cfg = defaults()
  local ok
  ok, err = apply_flags(cfg, flags)
  if not ok then
    return nil, err
  end
  -- In this order, so that the first error of a command line stays the one reported.
  for _, check in ipairs{ check_generated, _M.check_network, check_limits, check_library,
                          check_server } do
    ok, err = check(cfg)
    if not ok then
      return nil, err
    end
  end
  return cfg
end

return _M
