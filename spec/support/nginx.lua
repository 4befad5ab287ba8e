-- Test helper: runs the machine's real nginx (Debian's, with libnginx-mod-http-lua) in a
-- prefix of its own, loading this checkout's SDK and its LuaJIT build of the core.
--
--   local nginx = require "nginx"               -- busted's lpath has ./spec/support/?.lua
--   local n = nginx.start{
--     http = [[ lua_shared_dict digime 1m; ]],   -- extra http{} directives (optional)
--     server = [[ location = /t { content_by_lua_block { ngx.say("hi") } } ]],
--     servers = { "listen ...; ..." },          -- more server{} blocks, given whole (optional)
--     init = [[ ... ]],                         -- init_by_lua_block body (optional)
--     init_worker = [[ ... ]],                  -- init_worker_by_lua_block body (optional)
--     env = { SANDBOX_BASE = "http://..." },    -- env directives: readable with os.getenv
--     workers = 1, worker_connections = 1024,
--     cpath = "build/openresty",                -- where digime/core.so is (default build/luajit)
--   }
--   n.url .. "/t"; n.port; n.prefix; n:get("/t") -> status, body, headers
--   n:error_log() -> text; n:stop()
--
-- Pitfalls of Debian's nginx handled here: the ndk module loads first, by absolute path;
-- lua_package_path keeps ";;" (resty.core lives in the default path); workers run as root
-- because the checkout need not be readable by nobody; a full stop, never a HUP, after a
-- rebuild of the core.
local socket = require "socket"
local sandbox = require "sandbox"

local _M = {}

local root = sandbox.root
local sh_quote = sandbox.sh_quote

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

--- A TCP port free now on 127.0.0.1.
function _M.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function abs_root()
  local f = assert(io.popen("cd " .. sh_quote(root) .. " && pwd"))
  local dir = f:read("*l")
  f:close()
  return dir
end

local CONF = [[
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
user root;
worker_processes %d;
pid %s/logs/nginx.pid;
error_log %s/logs/error.log info;
%s
events { worker_connections %d; }
http {
  access_log %s/logs/access.log;
  client_body_temp_path %s/tmp/body;
  proxy_temp_path %s/tmp/proxy;
  fastcgi_temp_path %s/tmp/fastcgi;
  uwsgi_temp_path %s/tmp/uwsgi;
  scgi_temp_path %s/tmp/scgi;
  lua_package_path "%s/lua/?.lua;%s/lua/?/init.lua;%s/spec/support/?.lua;;";
  lua_package_cpath "%s/%s/?.so;;";
  %s
  %s
  %s
  server {
    listen 127.0.0.1:%d;
    %s
  }
  %s
}
]]

local Nginx = {}
Nginx.__index = Nginx

--- Starts nginx; raises if it does not answer on its port within opts.timeout (10 s).
function _M.start(opts)
  opts = opts or {}
  local dir = abs_root()
  local prefix = assert(io.popen("mktemp -d /tmp/digime-nginx.XXXXXX")):read("*l")
  os.execute("mkdir -p " .. sh_quote(prefix) .. "/conf " .. sh_quote(prefix) .. "/logs "
             .. sh_quote(prefix) .. "/tmp")
  local port = opts.port or _M.free_port()
  local env_lines = {}
  for k, v in pairs(opts.env or {}) do
    env_lines[#env_lines + 1] = "env " .. k .. "=" .. v .. ";"
  end
  local servers = {}
  for i, s in ipairs(opts.servers or {}) do
    servers[i] = "server {\n" .. s .. "\n}"
  end
  local conf = string.format(CONF, opts.workers or 1, prefix, prefix,
    table.concat(env_lines, "\n"), opts.worker_connections or 1024,
    prefix, prefix, prefix, prefix, prefix, prefix, dir, dir, dir, dir, opts.cpath or "build/luajit",
    opts.http or "",
    opts.init and ("init_by_lua_block {\n" .. opts.init .. "\n}") or "",
    opts.init_worker and ("init_worker_by_lua_block {\n" .. opts.init_worker .. "\n}") or "",
    port, opts.server or "", table.concat(servers, "\n"))
  conf = conf:gsub("%$PREFIX", prefix)
  write_file(prefix .. "/conf/nginx.conf", conf)

  local cmd = string.format(
    "(nginx -p %s -c conf/nginx.conf -e %s/logs/error.log -g 'daemon off;' "
    .. ">%s/logs/stdout 2>&1 </dev/null & echo $! >%s/logs/master.pid) >/dev/null 2>&1",
    sh_quote(prefix), sh_quote(prefix), sh_quote(prefix), sh_quote(prefix))
  os.execute(cmd)
  local self = setmetatable({ prefix = prefix, port = port, url = "http://127.0.0.1:" .. port },
                            Nginx)
  local deadline = socket.gettime() + (opts.timeout or 10)
  while true do
    local pid = read_file(prefix .. "/logs/master.pid")
    self.pid = self.pid or (pid and tonumber(pid:match("%d+")))
    local c = socket.tcp()
    c:settimeout(0.2)
    local ok = c:connect("127.0.0.1", port)
    c:close()
    if ok then break end
    if socket.gettime() > deadline or (self.pid and not self:alive()) then
      local log = self:error_log() .. (read_file(prefix .. "/logs/stdout") or "")
      self:stop()
      error("nginx did not start:\n" .. log)
    end
    socket.sleep(0.05)
  end
  return self
end

function Nginx:alive()
  return self.pid ~= nil and os.execute("kill -0 " .. self.pid .. " 2>/dev/null")
    and read_file("/proc/" .. self.pid .. "/status") ~= nil
    and not (read_file("/proc/" .. self.pid .. "/status") or ""):match("State:%s+Z")
end

function Nginx:error_log()
  return read_file(self.prefix .. "/logs/error.log") or ""
end

--- The worker processes' pids.
function Nginx:workers()
  local out = {}
  local f = io.popen("pgrep -P " .. (self.pid or 0))
  for line in f:lines() do out[#out + 1] = tonumber(line) end
  f:close()
  return out
end

--- One blocking request to this nginx: status, body, headers (lower-case names).
function Nginx:request(method, path, body, headers, timeout)
  local res, err = sandbox.request{ method = method, url = self.url .. path, body = body,
                                    headers = headers, timeout = timeout or 30 }
  if not res then return nil, err end
  return res.status, res.body, res.headers
end

function Nginx:get(path, timeout)
  return self:request("GET", path, nil, nil, timeout)
end

--- Stops nginx (QUIT, then KILL after 5 s) and removes its prefix unless keep is true.
function Nginx:stop(keep)
  if self.pid then
    os.execute("kill -QUIT " .. self.pid .. " 2>/dev/null")
    local deadline = socket.gettime() + 5
    while self:alive() and socket.gettime() < deadline do socket.sleep(0.05) end
    if self:alive() then os.execute("kill -KILL " .. self.pid .. " 2>/dev/null") end
    -- workers of a killed master
    os.execute("pkill -KILL -f " .. sh_quote("nginx -p " .. self.prefix) .. " 2>/dev/null")
    self.pid = nil
  end
  if not keep and self.prefix and self.prefix:match("^/tmp/digime%-nginx") then
    os.execute("rm -rf " .. sh_quote(self.prefix))
  end
end

return _M
