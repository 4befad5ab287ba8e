--- The default transport outside nginx: the C core's libcurl multi engine, driven by the
-- scheduler (yields inside digime.run, blocks outside).
--
-- A request may ask for its 2xx body to be decrypted: the body then flows through the C
-- pipeline (decrypt -> inflate) and only plaintext reaches Lua, chunk by chunk, with the
-- transfer paused while the consumer has not taken what is there (bounded memory).
local core = require "digime.core"
local scheduler = require "digime.scheduler"

local pcall, setmetatable, tostring = pcall, setmetatable, tostring
local match = string.match

local _M = {}
local mt = { __index = _M }

-- Plaintext waiting in C before the transfer pauses.
local MAX_BUFFERED = 1024 * 1024

--- opts: the SDK configuration (tls, proxy, timeouts, limits).
function _M.new(opts)
  return setmetatable({ opts = opts }, mt)
end

local function proxy_for(proxy, url)
  if not proxy then return nil end
  if match(url, "^https:") then return proxy.https or proxy.http end
  return proxy.http
end

local function is_2xx(status)
  return status >= 200 and status < 300
end

-- Drives a piped request: decides the compression once the headers are in, and hands the
-- plaintext to on_data as it comes. Returns the result, or nil, message, kind.
local function piped(handle, dec, req)
  local decrypt, on_data = req.decrypt, req.on_data
  local chosen          -- true once the compression is set; "raw" for a non-2xx answer

  local function choose()
    local status, headers = handle:headers()
    if not status then return true end
    if not is_2xx(status) then
      chosen = "raw"
      return true
    end
    local compression, err = decrypt.choose(status, headers)
    if not compression then
      scheduler.cancel(handle)
      return nil, err, "decrypt"
    end
    dec:set_compression(compression)
    chosen = true
    return true
  end

  local function deliver(chunk)
    if chunk ~= "" then
      local ok, err = on_data(chunk)
      if not ok then
        scheduler.cancel(handle)
        return nil, err or "the sink refused the data", "sink"
      end
    end
    return true
  end

  while true do
    local done = scheduler.await_progress(handle, not chosen)
    if not chosen then
      local ok, err, kind = choose()
      if not ok then return nil, err, kind end
    end
    if chosen == true and not done then
      local chunk, rerr, rkind = handle:read()
      if chunk == nil then return nil, rerr, rkind end
      local ok, err, kind = deliver(chunk)
      if not ok then return nil, err, kind end
    end
    if done then break end
  end
  local res, err, kind = handle:result()
  if not res then return nil, err, kind end
  if chosen == true then
    local ok, derr, dkind = deliver(res.body)
    if not ok then return nil, derr, dkind end
    res.body = nil
    res.piped = true
  end
  return res
end

--- req = { method, url, headers, body, timeout, max_body, fresh_connect,
--          decrypt = { key, max_output, choose = function(status, headers) -> compression },
--          on_data = function(plaintext_chunk) -> true | nil, err,
--          cancel = a table the engine request is put in while it runs (keys) }
-- Returns { status, headers, body, piped } or nil, message, kind (kinds as digime.core's
-- engine reports them, plus "sink" when on_data refused).
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
    fresh_connect = req.fresh_connect,
  }
  local dec
  if req.decrypt then
    local derr
    dec, derr = core.file_decryptor(req.decrypt.key,
      { compression = "deferred", max_output = req.decrypt.max_output })
    if not dec then return nil, derr, "decrypt" end
    add_opts.pipeline = dec
    add_opts.max_buffered = MAX_BUFFERED
  end
  local engine = scheduler.engine()
  local ok, handle = pcall(engine.add, engine, add_opts)
  if not ok then
    return nil, "cannot start the request: " .. tostring(handle), "other"
  end
  -- A caller may ask to be able to cancel what is in flight (a sync that is stopped).
  local cancel = req.cancel
  if cancel then cancel[handle] = true end
  local res, err, kind
  if dec then
    res, err, kind = piped(handle, dec, req)
  else
    scheduler.await(handle)
    res, err, kind = handle:result()
  end
  if cancel then cancel[handle] = nil end
  return res, err, kind
end

return _M
