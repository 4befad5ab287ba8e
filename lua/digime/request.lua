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

-- One attempt: signs afresh, hands the request to the transport.
-- -> res | nil, message, kind; plus the seconds it took. A signing failure is kind "sign".
local function attempt_once(sdk, spec)
  local cfg = sdk.config
  local headers = {}
  for k, v in pairs(spec.headers or {}) do headers[k] = v end
  if spec.sign then
    local token, serr = spec.sign()
    if not token then return nil, serr, "sign", 0 end
    headers.authorization = "Bearer " .. token
  end
  if spec.on_attempt then spec.on_attempt() end
  local filter = spec.body_filter
  if filter then filter:reset() end
  local t0 = core.monotonic()
  local res, msg, kind = sdk.transport:request{
    method = spec.method, url = spec.url, headers = headers, body = spec.body,
    body_length = spec.body_length,
    timeout = spec.timeout,
    -- a JSON answer is capped at its parse limit while it downloads, not after
    max_body = spec.max_body or (spec.json and min(cfg.limits.body, spec.max_json or cfg.limits.json)) or nil,
    body_filter = filter, cancel = spec.cancel, body_bytes = spec.body_bytes,
  }
  return res, msg, kind, core.monotonic() - t0
end

-- A 2xx answer's JSON body decoded into res.json (when the spec asks for JSON).
-- -> res | nil, err
local function decode(sdk, spec, res)
  if not spec.json then return res end
  local body = res.body
  if spec.method == "HEAD" or body == nil or body == "" then
    res.json = nil
    return res
  end
  local doc, jerr = json.decode(body, spec.max_json or sdk.config.limits.json)
  if doc == nil then
    return nil, errors.sdk("InvalidResponse", format("%s: the server's answer is not valid JSON (%s)",
      spec.what or path_of(spec.url), jerr), { status = res.status })
  end
  res.json = doc
  return res
end

-- What a failure without an answer means. st: { idempotent, attempt, maybe_done }.
-- -> "fail", err | "error", err, retry, wait
local function classify_failure(sdk, spec, st, msg, kind, elapsed)
  local method, path = spec.method, path_of(spec.url)
  if kind == "sign" then
    return "fail", msg
  elseif kind == "unavailable" then
    return "fail", errors.sdk("TransportUnavailable", tostring(msg))
  elseif kind == "request" then
    -- The transport would not send it (a header value with a line break, a bad URL): the
    -- same request would be refused again, and nothing reached the server.
    return "fail", errors.sdk("RequestNotSent", tostring(msg), { attempts = st.attempt })
  elseif kind == "cancelled" then
    return "fail", errors.network(format("%s %s was cancelled", method, path), kind)
  elseif kind == "decrypt" or kind == "sink" then
    -- The answer came but its content is bad, or the consumer refused it: not a network
    -- fault, and not something a second download would change.
    local e = kind == "decrypt"
      and errors.new("FileDecryptionError", "FileDecryptionError", tostring(msg))
      or errors.sdk("SinkError", tostring(msg))
    e.attempts = st.attempt
    return "fail", e
  end
  local err = errors.network(format("%s %s failed: %s", method, path, tostring(msg)), kind)
  local retry, wait
  if kind == "stale" then
    -- The request went out once on a kept-alive connection that then closed without an
    -- answer: mostly the server had closed it idle as the request left (a keep-alive race),
    -- rarely a server that acted on it and died. The transport never sends it again by
    -- itself; here it is sent again, newly signed and counted as an attempt, only when a
    -- repeat is harmless (idempotent) or refused by the server itself (single_use: an
    -- authorization code or refresh token is good once), and at once: nothing is wrong with
    -- the server.
    log(sdk, "info", "kept-alive connection closed before answering",
        { method = method, path = path, attempt = st.attempt })
    retry, wait = st.idempotent or spec.single_use == true, 0
    st.maybe_done = true
  else
    log(sdk, "warn", "request failed", { method = method, path = path, attempt = st.attempt,
                                         error = kind, ms = elapsed * 1000 })
    retry = RETRY_NET[kind] and (st.idempotent or NEVER_SENT[kind])
    st.maybe_done = st.maybe_done or not NEVER_SENT[kind]
  end
  local delivered = spec.body_filter and spec.body_filter.delivered or 0
  if retry and spec.sink_once and delivered > 0 then
    -- Part of the file is already in the caller's sink: a new download would repeat it.
    err.message = err.message .. " (after " .. delivered .. " bytes went to the sink)"
    retry = false
  end
  return "error", err, retry, wait
end

-- What an answer means. -> "done", res | "fail", err | "error", err, retry, wait
local function classify_answer(sdk, spec, st, res, elapsed)
  local method, status = spec.method, res.status
  log(sdk, "debug", "request done", { method = method, path = path_of(spec.url),
                                       attempt = st.attempt, status = status, ms = elapsed * 1000 })
  if status >= 200 and status < 300 then
    local decoded, derr = decode(sdk, spec, res)
    if not decoded then return "fail", derr end
    res.attempts = st.attempt
    return "done", res
  end
  if status == 404 and method == "DELETE" and st.maybe_done then
    -- An earlier attempt's answer was lost after it may have been carried out: what it
    -- was to delete is gone, which is what a DELETE asks for.
    log(sdk, "info", "DELETE found nothing after an attempt whose answer was lost: done",
        { method = method, path = path_of(spec.url), attempt = st.attempt })
    res.attempts, res.gone_before = st.attempt, true
    return "done", res
  end
  local err = errors.from_response(res)
  if status >= 500 then st.maybe_done = true end
  local retry = false
  if RETRY_STATUS[status] or (status >= 500 and status ~= 501) then
    retry = st.idempotent
  elseif status == 406 and err.code == "InvalidRequest" and spec.sign then
    -- A replayed nonce (something between the SDK and the server sent a request twice,
    -- unchanged): a new attempt carries a new JWT.
    retry = st.idempotent
  end
  local wait
  if retry then
    wait = _M.retry_after(res.headers and res.headers["retry-after"])
    err.retry_after = wait
  end
  return "error", err, retry, wait
end

--- spec = { method, url, headers, sign = function() -> jwt | nil, err,
--           body = string | reader function, body_length (doc/architecture.md "Request bodies"),
--           idempotent = bool (POSTs that are safe to repeat),
--           single_use = bool (a POST the server refuses to carry out twice: a token exchange
--             or refresh; sent again when a kept-alive connection closed under it),
--           json = bool, max_json,
--           timeout, what = "name for messages",
--           body_filter = where a 2xx body goes (body_filter.lua; reset before each attempt),
--           cancel = a table the transport keeps the in-flight request's handle in,
--           body_bytes = bool (a 2xx body may come back as a core bytes object),
--           on_attempt = function() (called before each attempt, e.g. to reset a buffer),
--           sink_once = bool (the filter's sink cannot take the data twice: no retry once it
--             had some) }
-- Returns the response (plus `json` when asked and the body is JSON) for a 2xx answer, and
-- for a DELETE answered 404 after an attempt whose answer was lost (`gone_before` set);
-- otherwise nil and an error object. Each attempt: attempt_once, then classify_failure or
-- classify_answer say whether it is done, failed for good, or may be retried.
function _M.send(sdk, spec)
  local ro = sdk.config.retry_options
  local started = core.monotonic()
  -- maybe_done: an earlier attempt may have been carried out by the server
  local st = { idempotent = IDEMPOTENT[spec.method] or spec.idempotent == true, attempt = 0,
               maybe_done = false }

  while true do
    st.attempt = st.attempt + 1
    local res, msg, kind, elapsed = attempt_once(sdk, spec)
    local outcome, value, retry, wait
    if res then
      outcome, value, retry, wait = classify_answer(sdk, spec, st, res, elapsed)
    else
      outcome, value, retry, wait = classify_failure(sdk, spec, st, msg, kind, elapsed)
    end
    if outcome == "done" then return value end
    if outcome == "fail" then return nil, value end

    if not retry or st.attempt > ro.limit then
      value.attempts = st.attempt
      return nil, value
    end
    wait = wait or backoff(ro, st.attempt)
    if core.monotonic() - started + wait > ro.max_time then
      value.attempts = st.attempt
      return nil, value
    end
    log(sdk, "info", "retrying", { method = spec.method, path = path_of(spec.url),
                                   attempt = st.attempt, wait = wait })
    scheduler.sleep(wait)
  end
end

--- Percent-encodes one path segment (RFC 3986 unreserved characters kept).
function _M.encode_segment(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return format("%%%02X", c:byte()) end))
end

return _M
