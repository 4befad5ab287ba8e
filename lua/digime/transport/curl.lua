--- The default transport outside nginx: the C core's libcurl multi engine, driven by the
-- scheduler (yields inside digime.run, blocks outside).
local scheduler = require "digime.scheduler"

local pcall, setmetatable, match = pcall, setmetatable, string.match

local _M = {}
local mt = { __index = _M }

--- opts: the SDK configuration (tls, proxy, timeouts, limits).
function _M.new(opts)
  return setmetatable({ opts = opts }, mt)
end

local function proxy_for(proxy, url)
  if not proxy then return nil end
  if match(url, "^https:") then return proxy.https or proxy.http end
  return proxy.http
end

--- req = { method, url, headers, body, timeout, max_body }; returns
-- { status, headers, body } or nil, message, kind (kinds as digime.core's engine reports).
function _M:request(req)
  local o = self.opts
  local add_opts = {
    method = req.method,
    url = req.url,
    headers = req.headers,
    body = req.body,
    timeout = req.timeout or o.timeout,
    connect_timeout = o.connect_timeout,
    verify = o.tls.verify,
    cafile = o.tls.cafile,
    capath = o.tls.capath,
    proxy = proxy_for(o.proxy, req.url),
    no_proxy = o.proxy and o.proxy.no_proxy,
    max_body = req.max_body or o.limits.body,
    max_headers = o.limits.headers,
  }
  local engine = scheduler.engine()
  local ok, handle = pcall(engine.add, engine, add_opts)
  if not ok then
    return nil, "cannot start the request: " .. tostring(handle), "other"
  end
  scheduler.await(handle)
  return handle:result()
end

return _M
