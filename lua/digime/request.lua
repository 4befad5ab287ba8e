--- One API call: sign (afresh on every attempt), send through the transport, retry what may be
-- retried, and turn the answer into a result or an error object (doc/protocol.md "Retries").
local core = require "digime.core"
local json = require "digime.json"
local errors = require "digime.errors"
local scheduler = require "digime.scheduler"

local type, pairs, tonumber, tostring = type, pairs, tonumber, tostring
local match, format = string.match, string.format
local min, random = math.min, math.random
local os_time = os.time

local _M = {}

local IDEMPOTENT = { GET = true, HEAD = true, DELETE = true, PUT = true, OPTIONS = true }
local RETRY_STATUS = { [429] = true, [502] = true, [503] = true, [504] = true }
-- Network failures that may happen again differently; a TLS or size failure will not.
local RETRY_NET = { connect = true, resolve = true, timeout = true, reset = true, other = true }
local NEVER_SENT = { connect = true, resolve = true }

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
                 Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

--- Seconds to wait from a Retry-After value (delta seconds or an HTTP date), or nil.
function _M.retry_after(value, now)
  if type(value) ~= "string" then return nil end
  local secs = match(value, "^%s*(%d+)%s*$")
  if secs then return tonumber(secs) end
  local d, mon, y, h, mi, s = match(value, "^%a+, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if not d or not MONTHS[mon] then return nil end
  -- os.time reads a table as local time; correct by the local offset of the same instant.
  local t = { year = tonumber(y), month = MONTHS[mon], day = tonumber(d),
              hour = tonumber(h), min = tonumber(mi), sec = tonumber(s), isdst = false }
  local as_local = os_time(t)
  local utc = os_time(os.date("!*t", as_local))
  local epoch = as_local + (as_local - utc)
  local delta = epoch - (now or core.time())
  return delta > 0 and delta or 0
end

local function log(sdk, level, message, fields)
  local logger = sdk.config.logger
  if logger then
    pcall(logger, level, message, fields)
  end
end

-- Exponential, capped at max_backoff, with up to a quarter more at random so that clients
-- that failed together do not retry together (the jitter scales with the delay: a caller who
-- asks for 10 ms backoffs gets 10-12.5 ms, not 10 ms plus a fixed 100 ms).
local function backoff(ro, attempt)
  local d = min(ro.backoff * 2 ^ (attempt - 1), ro.max_backoff)
  return d * (1 + 0.25 * random())
end

local function path_of(url)
  return match(url, "^https?://[^/]+(/[^?#]*)") or url
end

--- spec = { method, url, headers, sign = function() -> jwt | nil, err,
--           body = string | reader function, body_length (see transport/curl.lua),
--           idempotent = bool (POSTs that are safe to repeat),
--           single_use = bool (a POST the server refuses to carry out twice: a token exchange
--             or refresh; sent again when a kept-alive connection closed under it),
--           json = bool, max_json,
--           timeout, what = "name for messages",
--           decrypt = { key, max_output, choose }, on_data = function(chunk) -> ok, err,
--           on_attempt = function() (called before each attempt, e.g. to reset a buffer),
--           sink_once = bool (on_data cannot take the data twice: no retry once it had some) }
-- Returns the response (plus `json` when asked and the body is JSON) for a 2xx answer, and
-- for a DELETE answered 404 after an attempt whose answer was lost (`gone_before` set);
-- otherwise nil and an error object.
function _M.send(sdk, spec)
  local cfg = sdk.config
  local ro = cfg.retry_options
  local method = spec.method
  local idempotent = IDEMPOTENT[method] or spec.idempotent == true
  local started = core.monotonic()
  local attempt = 0
  local last_err
  local maybe_done = false   -- an earlier attempt may have been carried out by the server
  local delivered = 0
  local on_data = spec.on_data
  if on_data then
    local user = on_data
    on_data = function(chunk)
      delivered = delivered + #chunk
      return user(chunk)
    end
  end

  while true do
    attempt = attempt + 1
    local headers = {}
    for k, v in pairs(spec.headers or {}) do headers[k] = v end
    if spec.sign then
      local token, serr = spec.sign()
      if not token then return nil, serr end
      headers.authorization = "Bearer " .. token
    end

    if spec.on_attempt then spec.on_attempt() end
    local t0 = core.monotonic()
    local res, msg, kind = sdk.transport:request{
      method = method, url = spec.url, headers = headers, body = spec.body,
      body_length = spec.body_length,
      timeout = spec.timeout,
      -- a JSON answer is capped at its parse limit while it downloads, not after
      max_body = spec.max_body or (spec.json and min(cfg.limits.body, spec.max_json or cfg.limits.json)) or nil,
      decrypt = spec.decrypt, on_data = on_data, cancel = spec.cancel,
    }
    local elapsed = core.monotonic() - t0
    local retry, wait

    if not res and kind == "unavailable" then
      return nil, errors.sdk("TransportUnavailable", tostring(msg))
    elseif not res and kind == "request" then
      -- The transport would not send it (a header value with a line break, a bad URL): the
      -- same request would be refused again, and nothing reached the server.
      return nil, errors.sdk("RequestNotSent", tostring(msg), { attempts = attempt })
    elseif not res and kind == "cancelled" then
      return nil, errors.network(format("%s %s was cancelled", method, path_of(spec.url)), kind)
    elseif not res and kind == "stale" then
      -- The request went out once on a kept-alive connection that then closed without an
      -- answer: mostly the server had closed it idle as the request left (a keep-alive race),
      -- rarely a server that acted on it and died. The transport never sends it again by
      -- itself; here it is sent again, newly signed and counted as an attempt, only when a
      -- repeat is harmless (idempotent) or refused by the server itself (single_use: an
      -- authorization code or refresh token is good once), and at once: nothing is wrong with
      -- the server.
      last_err = errors.network(format("%s %s failed: %s", method, path_of(spec.url), tostring(msg)), kind)
      log(sdk, "info", "kept-alive connection closed before answering", { method = method,
          path = path_of(spec.url), attempt = attempt })
      retry = idempotent or spec.single_use == true
      maybe_done = true
      if retry and spec.sink_once and delivered > 0 then retry = false end
      wait = 0
    elseif not res and (kind == "decrypt" or kind == "sink") then
      -- The answer came but its content is bad, or the consumer refused it: not a network
      -- fault, and not something a second download would change.
      local e = kind == "decrypt"
        and errors.new("FileDecryptionError", "FileDecryptionError", tostring(msg))
        or errors.sdk("SinkError", tostring(msg))
      e.attempts = attempt
      return nil, e
    elseif not res then
      last_err = errors.network(format("%s %s failed: %s", method, path_of(spec.url), tostring(msg)), kind)
      log(sdk, "warn", "request failed", { method = method, path = path_of(spec.url),
                                            attempt = attempt, error = kind, ms = elapsed * 1000 })
      retry = RETRY_NET[kind] and (idempotent or NEVER_SENT[kind])
      maybe_done = maybe_done or not NEVER_SENT[kind]
      if retry and spec.sink_once and delivered > 0 then
        -- Part of the file is already in the caller's sink: a new download would repeat it.
        last_err.message = last_err.message .. " (after " .. delivered .. " bytes went to the sink)"
        retry = false
      end
    else
      log(sdk, "debug", "request done", { method = method, path = path_of(spec.url),
                                           attempt = attempt, status = res.status, ms = elapsed * 1000 })
      local status = res.status
      if status >= 200 and status < 300 then
        if spec.json then
          local body = res.body
          if method == "HEAD" or body == nil or body == "" then
            res.json = nil
          else
            local doc, jerr = json.decode(body, spec.max_json or cfg.limits.json)
            if doc == nil then
              return nil, errors.sdk("InvalidResponse", format("%s: the server's answer is not valid JSON (%s)",
                spec.what or path_of(spec.url), jerr), { status = status })
            end
            res.json = doc
          end
        end
        res.attempts = attempt
        return res
      end
      if status == 404 and method == "DELETE" and maybe_done then
        -- An earlier attempt's answer was lost after it may have been carried out: what it
        -- was to delete is gone, which is what a DELETE asks for.
        log(sdk, "info", "DELETE found nothing after an attempt whose answer was lost: done",
            { method = method, path = path_of(spec.url), attempt = attempt })
        res.attempts, res.gone_before = attempt, true
        return res
      end
      last_err = errors.from_response(res)
      if status >= 500 then maybe_done = true end
      if RETRY_STATUS[status] then
        retry = idempotent
      elseif status >= 500 and status ~= 501 then
        retry = idempotent
      elseif status == 406 and last_err.code == "InvalidRequest" and spec.sign then
        -- A replayed nonce (something between the SDK and the server sent a request twice,
        -- unchanged): a new attempt carries a new JWT.
        retry = idempotent
      end
      if retry then
        wait = _M.retry_after(res.headers and res.headers["retry-after"])
        last_err.retry_after = wait
      end
    end

    if not retry or attempt > ro.limit then
      last_err.attempts = attempt
      return nil, last_err
    end
    wait = wait or backoff(ro, attempt)
    if core.monotonic() - started + wait > ro.max_time then
      last_err.attempts = attempt
      return nil, last_err
    end
    log(sdk, "info", "retrying", { method = method, path = path_of(spec.url), attempt = attempt,
                                   wait = wait })
    scheduler.sleep(wait)
  end
end

--- Percent-encodes one path segment (RFC 3986 unreserved characters kept).
function _M.encode_segment(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return format("%%%02X", c:byte()) end))
end

return _M
