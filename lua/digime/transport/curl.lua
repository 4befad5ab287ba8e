--- The default transport outside nginx: the C core's libcurl multi engine
-- (transport/curl_engine.lua holds the process's engine and the waits on it), driven by the
-- scheduler (yields inside digime.run, blocks outside).
--
-- It keeps the contract of doc/architecture.md "The transport contract" (what a request
-- carries, request bodies, body filters, results and failure kinds, keep-alive and `stale`,
-- cancelling). What is libcurl's own:
--
-- * A body filter's transform runs in C: the filter's stage() is the engine request's
--   `pipeline`, fed from libcurl's write callback, so a 2xx body never passes through Lua
--   before it is transformed; its output goes to the filter chunk by chunk, the transfer
--   paused while more than MAX_BUFFERED bytes of it wait (bounded memory).
-- * A reader body is read only when the engine has room for the next chunk (one chunk plus a
--   1 MiB send buffer in memory), never inside a C callback, so the reader may yield.
-- * Kept-alive connections live in the engine's pool; `fresh_connect` (keepalive = false)
--   and max_idle are set here, and libcurl's own resend on a dead pooled connection is
--   refused in C (kind "stale").
local scheduler = require "digime.scheduler"
local curl_engine = require "digime.transport.curl_engine"

local pcall, setmetatable, tostring, type = pcall, setmetatable, tostring, type
local match = string.match

local _M = {}
local mt = { __index = _M }

-- A filter stage's output waiting in C before the transfer pauses.
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

-- Feeds a streamed body into the engine request: reads the next chunk only when the engine
-- says there is room for it (which it never says before libcurl has asked for the body), and
-- waits for room through the scheduler. Returns true once the body is complete or the request
-- ended on its own (its result then says how); nil, message, "body" when the reader failed
-- (the request is then cancelled).
local function feed_body(handle, read)
  local chunk, pos = nil, 1
  while true do
    if chunk == nil then
      if handle:progress() == 0 then
        if curl_engine.await(handle, true) then return true end
      else
        local ok, c, err = scheduler.pcall(read)
        local why
        if not ok then
          why = "it raised: " .. tostring(c)
        elseif c == nil and err ~= nil then
          why = tostring(err)
        elseif c ~= nil and type(c) ~= "string" then
          why = "it returned a " .. type(c) .. ", not a string"
        end
        if why then
          curl_engine.cancel(handle)
          return nil, "the body reader failed: " .. why, "body"
        end
        if c == nil then
          handle:finish_body()   -- a failure (a body shorter than body_length) shows in result()
          return true
        end
        if c ~= "" then chunk, pos = c, 1 end
      end
    else
      local n = handle:write(chunk, pos)
      if n == nil then return true end   -- ended or failed: result() says how
      if n == false then
        if curl_engine.await(handle, true) then return true end
      else
        pos = pos + n
        if pos > #chunk then chunk = nil end
      end
    end
  end
end

-- Drives a request whose 2xx body goes through a body filter: the filter's stage runs in
-- the engine; the filter has the headers before any of the body, then the stage's output as
-- it comes. Returns the result, or nil, message, kind.
local function filtered(handle, filter)
  local open          -- true once the filter has the headers; "raw" for a non-2xx answer

  local function fail(err, kind)
    curl_engine.cancel(handle)
    return nil, err, kind
  end

  while true do
    local done = curl_engine.await(handle, true, not open)
    if not open then
      local status, headers = handle:headers()
      if status and not is_2xx(status) then
        open = "raw"
      elseif status then
        local ok, err, kind = filter:headers(status, headers)
        if not ok then return fail(err, kind) end
        open = true
      end
    end
    if open == true and not done then
      local chunk, rerr, rkind = handle:read()
      if chunk == nil then return nil, rerr, rkind end
      if chunk ~= "" then
        local ok, err, kind = filter:write(chunk)
        if not ok then return fail(err, kind) end
      end
    end
    if done then break end
  end
  local res, err, kind = handle:result()
  if not res then return nil, err, kind end
  if open == true then
    local ok, ferr, fkind = true, nil, nil
    if res.body ~= "" then ok, ferr, fkind = filter:write(res.body) end
    if ok then ok, ferr, fkind = filter:finish() end
    if not ok then return nil, ferr, fkind end
    res.body = nil
    res.piped = true
  end
  return res
end

-- What a caller's `cancel` table holds while a request runs: a handle with its own cancel.
local cancel_mt = { __index = { cancel = function(self) curl_engine.cancel(self.req) end } }

--- req and its result: doc/architecture.md "The transport contract". The result adds
-- `connects` (the new connections the transfer made).
function _M:request(req)
  local o = self.opts
  local read = req.body
  if type(read) ~= "function" then read = nil end
  local filter = req.body_filter
  if read and filter then
    return nil, "cannot start the request: a streamed body with a body filter", "request"
  end
  local add_opts = {
    method = req.method,
    url = req.url,
    headers = req.headers,
    body = not read and req.body or nil,
    body_stream = read and true or nil,
    body_length = read and req.body_length or nil,
    timeout = req.timeout or o.timeout,
    connect_timeout = o.connect_timeout,
    verify = o.tls.verify,
    cafile = o.tls.cafile,
    capath = o.tls.capath,
    proxy = proxy_for(o.proxy, req.url),
    no_proxy = o.proxy and o.proxy.no_proxy,
    max_body = req.max_body or o.limits.body,
    max_headers = o.limits.headers,
    -- Kept alive and reused (the engine never sends a request twice on its own: a reused
    -- connection that dies before answering ends the request with kind "stale").
    fresh_connect = not o.keepalive or nil,
    max_idle = o.keepalive and math.floor(o.keepalive.idle) or nil,
    body_bytes = req.body_bytes,
  }
  if filter then
    local stage, serr, skind = filter:stage()
    if not stage then return nil, serr, skind end
    add_opts.pipeline = stage
    add_opts.max_buffered = MAX_BUFFERED
  end
  local engine = curl_engine.engine()
  local ok, handle = pcall(engine.add, engine, add_opts)
  if not ok then
    if filter then filter:close() end
    return nil, "cannot start the request: " .. tostring(handle), "request"
  end
  -- A caller may ask to be able to cancel what is in flight (a sync that is stopped).
  local cancel, ticket = req.cancel, nil
  if cancel then
    ticket = setmetatable({ req = handle }, cancel_mt)
    cancel[ticket] = true
  end
  local res, err, kind
  if filter then
    res, err, kind = filtered(handle, filter)
  else
    local fed = true
    if read then fed, err, kind = feed_body(handle, read) end
    if fed then
      curl_engine.await(handle)
      res, err, kind = handle:result()
    end
  end
  if ticket then cancel[ticket] = nil end
  -- Their C memory (buffers, the filter stage's state) is freed now: the collector does not
  -- see it, and would free it only many requests later.
  pcall(handle.close, handle)
  if filter then filter:close() end
  return res, err, kind
end

return _M
