--- The default transport outside nginx: the C core's libcurl multi engine, driven by the
-- scheduler (yields inside digime.run, blocks outside).
--
-- A request may ask for its 2xx body to be decrypted: the body then flows through the C
-- pipeline (decrypt -> inflate) and only plaintext reaches Lua, chunk by chunk, with the
-- transfer paused while the consumer has not taken what is there (bounded memory).
--
-- Request bodies: the contract every transport keeps (this one and transport/ngx.lua).
--
--   req.body = nil          no body (a POST, PUT or PATCH says "content-length: 0").
--   req.body = "bytes"      sent as is, with its content-length.
--   req.body = read         a reader function: read() -> chunk | nil (the end) | nil, err.
--     * Called in the caller's coroutine (never inside a C callback), so it may yield; a raise
--       counts as an error. A chunk is a string; "" is skipped; anything else is an error.
--     * Called only when the transport can take the next chunk: not before the connection is up
--       and the request line and headers are on their way (a request that never reaches the
--       server leaves the reader untouched), and at most one chunk ahead of what the connection
--       has taken, so memory stays bounded (one chunk plus a fixed send buffer, 1 MiB here)
--       whatever the body's size.
--     * Never called again once it returned nil or an error, or once the request has ended.
--     * req.body_length = n (optional): the exact byte count, sent as content-length. Without it
--       the length is unknown: "transfer-encoding: chunked" over HTTP/1.1 (HTTP/2 frames need
--       none). A reader that gives fewer or more bytes than body_length fails the request with
--       kind "body" (message saying which), without hanging and without sending the excess.
--     * A reader error (nil, err; a raise; a chunk that is not a string) aborts the request and
--       returns nil, "the body reader failed: <err as text>", "body".
--     * A server may answer before it has taken the whole body (an error such as 413 or 401,
--       usually): the reader is not called again, and that answer is the result.
--     * A transfer failure while the reader still has data returns the failure as usual
--       (nil, message, kind); the reader is not called again.
--     * A reader is consumed by one request: a caller that sends again (a retry, a token
--       refresh) gives a new or rewound reader. Not combined with `decrypt`.
local core = require "digime.core"
local scheduler = require "digime.scheduler"

local pcall, setmetatable, tostring, type = pcall, setmetatable, tostring, type
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
        if scheduler.await_progress(handle) then return true end
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
          scheduler.cancel(handle)
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
        if scheduler.await_progress(handle) then return true end
      else
        pos = pos + n
        if pos > #chunk then chunk = nil end
      end
    end
  end
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

--- req = { method, url, headers, body (string | reader function), body_length, timeout,
--          max_body,
--          decrypt = { key, max_output, choose = function(status, headers) -> compression },
--          on_data = function(plaintext_chunk) -> true | nil, err,
--          cancel = a table the engine request is put in while it runs (keys) }
-- Returns { status, headers, body, piped } or nil, message, kind (kinds as digime.core's
-- engine reports them, plus "sink" when on_data refused and "body" for a reader's failure).
function _M:request(req)
  local o = self.opts
  local read = req.body
  if type(read) ~= "function" then read = nil end
  if read and req.decrypt then
    return nil, "cannot start the request: a streamed body with decrypt", "request"
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
    return nil, "cannot start the request: " .. tostring(handle), "request"
  end
  -- A caller may ask to be able to cancel what is in flight (a sync that is stopped).
  local cancel = req.cancel
  if cancel then cancel[handle] = true end
  local res, err, kind
  if dec then
    res, err, kind = piped(handle, dec, req)
  else
    local fed = true
    if read then fed, err, kind = feed_body(handle, read) end
    if fed then
      scheduler.await(handle)
      res, err, kind = handle:result()
    end
  end
  if cancel then cancel[handle] = nil end
  -- Their C memory (buffers, the decryptor's cipher and inflate state) is freed now: the
  -- collector does not see it, and would free it only many requests later.
  pcall(handle.close, handle)
  if dec then dec:close() end
  return res, err, kind
end

return _M
