-- Runs inside the nginx that spec/ngx_transport_spec.lua starts: SDK calls made from nginx
-- handlers, answered as JSON so the spec can check them from outside.
--
--   init_by_lua_block { require("ngx_app").setup{ base_url = ..., onboard_url = ... } }
--   location = /login { content_by_lua_block { require("ngx_app").login() } }
local cjson = require "cjson.safe"
local digime = require "digime"
local core = require "digime.core"
local demo = require "digime.sandbox.demo_contract"

local _M = {}

local CALLBACK = "https://app.example.org/return"

_M.contract = { id = demo.contract_id, private_key = demo.private_key }

-- Made in init_by_lua (the master), before nginx forks its workers: preloading must be safe.
function _M.setup(urls, extra)
  local opts = {
    application_id = demo.application_id, base_url = urls.base_url,
    onboard_url = urls.onboard_url, cloud_base_url = urls.cloud_base_url,
    timeout = 5, retry_options = { limit = 2, max_time = 10 },
  }
  for k, v in pairs(extra or {}) do opts[k] = v end
  _M.urls = urls
  _M.sdk = assert(digime.init(opts))
  return _M.sdk
end

local function error_view(err)
  if type(err) ~= "table" then return { message = tostring(err) } end
  return { kind = err.kind, code = err.code, message = err.message, status = err.status,
           attempts = err.attempts, network = err.network, retryable = err.retryable }
end
_M.error_view = error_view

function _M.reply(status, doc)
  ngx.status = status
  ngx.header["content-type"] = "application/json"
  ngx.say(cjson.encode(doc))
end

-- Query string of a URL as a table.
local function query_of(url)
  local q = {}
  for k, v in (url:match("%?(.*)$") or ""):gmatch("([^&=]+)=([^&]*)") do
    q[ngx.unescape_uri(k)] = ngx.unescape_uri(v)
  end
  return q
end

-- authorize -> consent (the onboard URL, fetched through the SDK's own transport) ->
-- exchange. -> token | nil, err
function _M.login(sdk)
  sdk = sdk or _M.sdk
  local res, err = sdk:get_authorize_url{ contract = _M.contract, callback = CALLBACK,
                                          state = "s-" .. ngx.worker.pid() }
  if not res then return nil, err end
  local page, perr = sdk.transport:request{ method = "GET", url = res.url, timeout = 5 }
  if not page then return nil, { message = "consent: " .. tostring(perr) } end
  local q = query_of(page.headers.location or "")
  if q.success ~= "true" then
    return nil, { message = "consent failed: " .. tostring(page.status) .. " " .. tostring(page.headers.location) }
  end
  return sdk:exchange_code_for_token{ contract = _M.contract, authorization_code = q.code,
                                      code_verifier = res.code_verifier }
end

-- Whole-flow handler: login, a read session, the whole library through read_all_files
-- (?concurrency=N), answered as JSON { files = { name = sha256 hex }, ... }.
function _M.flow()
  local sdk = _M.sdk
  local token, err = _M.login(sdk)
  if not token then return _M.reply(500, { step = "login", error = error_view(err) }) end
  local session, serr = sdk:read_session{ contract = _M.contract, user_access_token = token }
  if not session then return _M.reply(500, { step = "session", error = error_view(serr) }) end
  local files, count, failures = {}, 0, {}
  local res, ferr = sdk:read_all_files{
    contract = _M.contract, user_access_token = token, session_key = session.session.key,
    concurrency = tonumber(ngx.var.arg_concurrency) or 5, poll_interval = 0.2, max_time = 60,
    on_file_data = function(file)
      files[file.file_name] = _M.hex_sha256(file.file_data)
      count = count + 1
    end,
    on_file_error = function(failure)
      failures[#failures + 1] = { file = failure.file_name, error = error_view(failure.error) }
    end,
  }
  if not res then return _M.reply(500, { step = "sync", error = error_view(ferr), failures = failures }) end
  return _M.reply(200, { files = files, count = count, failures = failures,
                         state = res.status and res.status.state })
end

function _M.hex_sha256(data)
  return (core.sha256(data):gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local sessions = {}
-- A read session for a token (read_session, cached per access token value).
function _M.session_key(token)
  local key = sessions[token.access_token.value]
  if key then return key end
  local res, err = _M.sdk:read_session{ contract = _M.contract, user_access_token = token }
  if not res then error("read_session: " .. tostring(err)) end
  key = res.session.key
  sessions[token.access_token.value] = key
  return key
end

local function rss_kib()
  local f = io.open("/proc/self/status")
  local text = f:read("*a")
  f:close()
  return tonumber(text:match("VmRSS:%s*(%d+)"))
end

-- /bigfile?path=P: big.bin read into a file through a sink; the worker's RSS around it.
function _M.bigfile()
  local token, err = _M.login()
  if not token then return _M.reply(500, { step = "login", error = error_view(err) }) end
  collectgarbage()
  local before = rss_kib()
  local out = assert(io.open(ngx.unescape_uri(ngx.var.arg_path), "wb"))
  local res, rerr = _M.sdk:read_file{ contract = _M.contract, user_access_token = token,
    session_key = _M.session_key(token), file_name = "big.bin", sink = out }
  out:close()
  collectgarbage()
  return _M.reply(res and 200 or 500, { rss_before_kib = before, rss_after_kib = rss_kib(),
    error = not res and error_view(rerr) or nil, has_data = res and res.file_data ~= nil })
end

-- /iterate: the library through the sdk:files iterator; { names = {...}, failures = n }.
function _M.iterate()
  local token, err = _M.login()
  if not token then return _M.reply(500, { step = "login", error = error_view(err) }) end
  local names, failures = {}, 0
  for file, ferr in _M.sdk:files{ contract = _M.contract, user_access_token = token,
                                  session_key = _M.session_key(token), poll_interval = 0.2 } do
    if file then names[#names + 1] = file.file_name else failures = failures + 1; names.err = error_view(ferr) end
  end
  return _M.reply(200, { names = names, failures = failures })
end

-- /small: authorize -> consent -> exchange -> read_accounts: one user's whole visit.
function _M.small()
  local token, err = _M.login()
  if not token then return _M.reply(500, { step = "login", error = error_view(err) }) end
  local res, rerr = _M.sdk:read_accounts{ contract = _M.contract, user_access_token = token }
  if not res then return _M.reply(500, { step = "accounts", error = error_view(rerr) }) end
  return _M.reply(200, { ok = true })
end

-- /storage: cloud storage round trips through the ngx transport: 3 MiB from a string
-- (content-length), 3 MiB from a reader of unknown length (chunked), an empty file.
function _M.storage()
  local sdk, c = _M.sdk, _M.contract
  local st, err = sdk:create_provisional_storage{ contract = c }
  if not st then return _M.reply(500, { step = "create", error = error_view(err) }) end
  local id = st.storage.id
  local data = core.random_bytes(3 * 1024 * 1024)
  local pos = 1
  local function reader()
    if pos > #data then return nil end
    local piece = data:sub(pos, pos + 100000 - 1)
    pos = pos + #piece
    return piece
  end
  local out = {}
  for name, source in pairs{ ["string.bin"] = data, ["reader.bin"] = reader, ["empty.bin"] = "" } do
    local up, uerr = sdk:upload_file_to_storage{ contract = c, storage_id = id, path = "/t",
                                                file_name = name, file_data = source }
    if not up then return _M.reply(500, { step = "upload " .. name, error = error_view(uerr) }) end
    local back, berr = sdk:download_storage_file{ contract = c, storage_id = id, path = "/t/" .. name }
    if not back then return _M.reply(500, { step = "download " .. name, error = error_view(berr) }) end
    out[name] = back.file_data == (name == "empty.bin" and "" or data)
  end
  return _M.reply(200, out)
end

-- Benchmarks (bench/ngx.lua) ----------------------------------------------------------------

-- /bench/auth?n=N: N logins in a row; their times in ms, sorted.
function _M.bench_auth()
  local times = {}
  _M.login()   -- warm-up: JWKS cached, pools filled
  for i = 1, tonumber(ngx.var.arg_n) or 30 do
    ngx.update_time()
    local t0 = ngx.now()
    local token, err = _M.login()
    if not token then return _M.reply(500, { error = error_view(err) }) end
    ngx.update_time()
    times[i] = (ngx.now() - t0) * 1000
  end
  table.sort(times)
  return _M.reply(200, { times = times })
end

-- /bench/read?file=NAME: one file through the decryptor into a byte-counting sink.
function _M.bench_read()
  local token, err = _M.login()
  if not token then return _M.reply(500, { error = error_view(err) }) end
  local key = _M.session_key(token)
  local bytes = 0
  ngx.update_time()
  local t0 = ngx.now()
  local res, rerr = _M.sdk:read_file{ contract = _M.contract, user_access_token = token,
    session_key = key, file_name = ngx.var.arg_file,
    sink = function(chunk) if chunk then bytes = bytes + #chunk end return true end }
  ngx.update_time()
  if not res then return _M.reply(500, { error = error_view(rerr) }) end
  return _M.reply(200, { bytes = bytes, seconds = ngx.now() - t0, rss_kib = rss_kib() })
end

-- /bench/sync?concurrency=N: a whole-library sync (read_all_files, light threads) into
-- byte-counting sinks; its wall time and the files and bytes it delivered.
function _M.bench_sync()
  local token, err = _M.login()
  if not token then return _M.reply(500, { error = error_view(err) }) end
  local key = _M.session_key(token)
  local bytes = 0
  ngx.update_time()
  local t0 = ngx.now()
  local res, rerr = _M.sdk:read_all_files{ contract = _M.contract, user_access_token = token,
    session_key = key, concurrency = tonumber(ngx.var.arg_concurrency), poll_interval = 0.05,
    sink = function() return function(chunk) if chunk then bytes = bytes + #chunk end return true end end }
  ngx.update_time()
  if not res then return _M.reply(500, { error = error_view(rerr) }) end
  return _M.reply(200, { files = res.files, failures = res.failures, bytes = bytes,
                         seconds = ngx.now() - t0, rss_kib = rss_kib() })
end

-- Transport checks -----------------------------------------------------------------------

-- GET/POST through the SDK's transport; JSON { status, body, headers, err, kind, ... }.
-- Query: url (required), method, n (requests in a row), timeout, max_body, pause (s between).
function _M.transport()
  local args = ngx.req.get_uri_args()
  local out = {}
  for i = 1, tonumber(args.n) or 1 do
    local res, err, kind = _M.sdk.transport:request{
      method = args.method or "GET", url = args.url, timeout = tonumber(args.timeout) or 5,
      max_body = tonumber(args.max_body), body = args.method == "POST" and "x=1" or nil,
      headers = args.header and { ["x-test"] = args.header } or nil,
    }
    out[i] = res and { status = res.status, body = #res.body <= 16384 and res.body or nil,
                       body_size = #res.body, body_sha256 = _M.hex_sha256(res.body),
                       headers = res.headers }
             or { err = err, kind = kind }
    if args.pause then ngx.sleep(tonumber(args.pause)) end
  end
  return _M.reply(200, out)
end

-- /filter?url=U&sink=ok|refuse&headers_hook=ok|refuse: U's answer through the SDK's
-- transport with a file body filter (spec/support/filter_case.lua).
function _M.filter()
  return _M.reply(200, require("filter_case")(_M.sdk.transport, ngx.req.get_uri_args()))
end

-- Fixtures the transport is pointed at, served by the same nginx. /fixture/raw writes bytes
-- of its own on the raw connection: what a broken or hostile server could send.
local RAW = {
  close_delimited = "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n" .. string.rep("z", 100000),
  truncated = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
  truncated_chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\n0123",
  bad_chunk = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
  huge_chunk = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc",
  chunk_trailers = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n"
    .. "2\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n",
  continue = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
  bad_status = "HTTQ/9 2000 What\r\n\r\n",
  bad_header = "HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 0\r\n\r\n",
  bad_length = "HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n",
  big_headers = "HTTP/1.1 200 OK\r\n" .. string.rep("x-big: " .. string.rep("h", 1000) .. "\r\n", 400)
    .. "content-length: 0\r\n\r\n",
  endless_header = "HTTP/1.1 200 OK\r\nx-long: " .. string.rep("l", 600000),
  repeated = "HTTP/1.1 200 OK\r\nx-r: a\r\nX-R: b\r\ncontent-length: 0\r\n\r\n",
  gzip_te = "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
}
_M.RAW = RAW

-- Valid answers that /fixture/mutant damages at random.
local TEMPLATES = {
  "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n{\"a\":[1,2,3,4,5]}",
  "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: b\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n",
  "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\ncontent-length: 5\r\n\r\nnope!",
  "HTTP/1.0 200 OK\r\n\r\nuntil the end",
  "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
}

-- The template damaged by 1-4 random mutations, the same for the same seed.
local function mutant(seed)
  math.randomseed(seed)
  local r = math.random
  local s = TEMPLATES[r(#TEMPLATES)]
  for _ = 1, r(4) do
    local at = r(#s)
    local m = r(7)
    if m == 1 then       -- flip a byte
      s = s:sub(1, at - 1) .. string.char(r(0, 255)) .. s:sub(at + 1)
    elseif m == 2 then   -- cut
      s = s:sub(1, at)
    elseif m == 3 then   -- drop a range
      s = s:sub(1, at - 1) .. s:sub(at + r(16))
    elseif m == 4 then   -- insert random bytes
      local junk = {}
      for i = 1, r(32) do junk[i] = string.char(r(0, 255)) end
      s = s:sub(1, at) .. table.concat(junk) .. s:sub(at + 1)
    elseif m == 5 then   -- a number made huge or negative
      s = s:gsub("%d+", ({ "99999999999999999999", "-1", "0", "ffffffff" })[r(4)], 1)
    elseif m == 6 then   -- a segment repeated
      s = s:sub(1, at) .. s:sub(at, at + r(64)):rep(r(50)) .. s:sub(at + 1)
    else                 -- a line break lost or doubled
      s = s:gsub("\r\n", ({ "\n", "\r\n\r\n", "\r", "" })[r(4)], 1)
    end
  end
  return s
end
_M.mutant = mutant

local KINDS = { connect = true, resolve = true, timeout = true, reset = true, tls = true,
                too_large = true, other = true }

-- /fuzz?from=A&to=B: the transport against mutants A..B; answers the ones whose outcome broke
-- the contract (a raise, or a result or error of the wrong shape) and a tally of outcomes.
function _M.fuzz()
  local base = "http://127.0.0.1:" .. ngx.var.arg_port .. "/fixture/mutant?seed="
  local bad, tally = {}, {}
  for seed = tonumber(ngx.var.arg_from), tonumber(ngx.var.arg_to) do
    local ok, res, err, kind = pcall(_M.sdk.transport.request, _M.sdk.transport,
      { method = "GET", url = base .. seed, timeout = 2, max_body = 4096 })
    local outcome
    if not ok then
      outcome = "raised: " .. tostring(res)
    elseif res then
      if type(res.status) ~= "number" or type(res.body) ~= "string" or type(res.headers) ~= "table" then
        outcome = "bad result"
      else
        outcome = "status " .. res.status
      end
    elseif type(err) ~= "string" or not KINDS[kind] then
      outcome = "bad error: " .. tostring(err) .. " / " .. tostring(kind)
    else
      outcome = "error " .. kind
    end
    tally[outcome:match("^%a+ ?%w*")] = (tally[outcome:match("^%a+ ?%w*")] or 0) + 1
    if outcome:match("^raised") or outcome:match("^bad") then
      bad[#bad + 1] = { seed = seed, outcome = outcome }
    end
  end
  return _M.reply(200, { bad = bad, tally = tally })
end

function _M.fixture()
  local what = ngx.var.uri:match("^/fixture/(.*)$")
  local args = ngx.req.get_uri_args()
  if what == "mutant" then
    local sock = assert(ngx.req.socket(true))
    sock:send(mutant(tonumber(args.seed)))
    return
  elseif what == "raw" then
    local sock = assert(ngx.req.socket(true))
    sock:send(RAW[args.case] or "HTTP/1.1 500 x\r\ncontent-length: 0\r\n\r\n")
    return
  elseif what == "file" then
    -- body (base64url) as the answer, with status, x-compression, and content-length unless
    -- chunked=1 (then sent in two flushed pieces: chunked transfer-encoding)
    local body = core.b64url_decode(args.body or "") or ""
    ngx.status = tonumber(args.status) or 200
    ngx.header["x-compression"] = args.compression
    if args.chunked then
      local half = math.floor(#body / 2)
      ngx.print(body:sub(1, half))
      ngx.flush(true)
      ngx.print(body:sub(half + 1))
    else
      ngx.header["content-length"] = #body
      ngx.print(body)
    end
    return
  elseif what == "chunked" then
    for i = 1, 5 do
      ngx.print(string.rep(tostring(i), 1000))
      ngx.flush(true)
    end
    return
  elseif what == "trickle" then
    -- n pieces, one every ms: slower in all than a timeout, never idle for as long
    for i = 1, tonumber(args.n) or 10 do
      ngx.print(tostring(i % 10))
      ngx.flush(true)
      ngx.sleep((tonumber(args.ms) or 100) / 1000)
    end
    return
  elseif what == "slow" then
    ngx.sleep((tonumber(args.ms) or 1000) / 1000)
    ngx.say("slow")
    return
  elseif what == "big" then
    local n = tonumber(args.n) or 1000
    ngx.header["content-length"] = n
    ngx.print(string.rep("b", n))
    return
  elseif what == "conn" then
    -- which connection served this (connection serial number)
    ngx.header["content-type"] = "text/plain"
    ngx.print(ngx.var.connection)
    return
  end
  ngx.status = 404
  ngx.say("no fixture ", what)
end

-- Workers acting together ---------------------------------------------------------------
--
-- Each worker runs a timer that waits for the next "go" in the `results` dict and then does
-- the action named there at the same moment as the other workers; each writes its outcome
-- under "result:<seq>:<pid>". The spec reads them through /results.

local actions = {}

-- authorize -> consent -> exchange: the exchange verifies a server token (JWKS).
function actions.exchange()
  local token, err = _M.login()
  if not token then return { error = error_view(err) } end
  return { ok = true, jwks_fetches = _M.sdk.stats.jwks_fetches }
end

-- A refresh of the token the spec stored under "token" (JSON).
function actions.refresh()
  local token = cjson.decode(ngx.shared.results:get("token"))
  local new, err = _M.sdk:refresh_token{ contract = _M.contract, user_access_token = token }
  if not new then return { error = error_view(err) } end
  return { ok = true, access = new.access_token.value, refresh = new.refresh_token.value }
end

-- A fresh login, its token stored for the next refresh action.
function actions.store_token()
  local token, err = _M.login()
  if not token then return { error = error_view(err) } end
  ngx.shared.results:set("token", cjson.encode(token))
  return { ok = true }
end

-- Refreshes of the tokens the spec stored under "tokens" (a JSON array), all at once, each
-- in its own light thread: { results = [ { ok, access, refresh } | { error } ], jwks_fetches }
function actions.refresh_many()
  local tokens = cjson.decode(ngx.shared.results:get("tokens"))
  local threads = {}
  for i, token in ipairs(tokens) do
    threads[i] = ngx.thread.spawn(function()
      local new, err = _M.sdk:refresh_token{ contract = _M.contract, user_access_token = token }
      if not new then return { error = error_view(err) } end
      return { ok = true, access = new.access_token.value, refresh = new.refresh_token.value,
               token = new }
    end)
  end
  local results = {}
  for i, t in ipairs(threads) do
    local ok, r = ngx.thread.wait(t)
    results[i] = ok and r or { error = { message = tostring(r) } }
  end
  return { ok = true, results = results, jwks_fetches = _M.sdk.stats.jwks_fetches }
end

-- POST /fleet { action, at = epoch seconds, tokens? }: the next action for every worker of
-- this nginx, at a moment the spec chose for several nginx at once; answers its sequence.
function _M.fleet()
  ngx.req.read_body()
  local job = cjson.decode(ngx.req.get_body_data() or "")
  local results = ngx.shared.results
  if job.tokens then results:set("tokens", cjson.encode(job.tokens)) end
  results:set("action", job.action)
  results:set("at", job.at)
  return _M.reply(200, { seq = results:incr("seq", 1, 0) })
end

function _M.start_worker_loop()
  local results = ngx.shared.results
  local function loop(premature)
    if premature then return end
    local seen = results:get("seq") or 0
    while not ngx.worker.exiting() do
      local seq = results:get("seq") or 0
      if seq > seen then
        seen = seq
        local at = results:get("at") or 0      -- start together
        ngx.update_time()
        if at > ngx.now() then ngx.sleep(at - ngx.now()) end
        local action = actions[results:get("action")]
        local ok, out = pcall(action)
        if not ok then out = { error = { message = tostring(out) } } end
        out.pid = ngx.worker.pid()
        results:set("result:" .. seq .. ":" .. ngx.worker.pid(), cjson.encode(out))
      end
      ngx.sleep(0.01)
    end
  end
  ngx.timer.at(0, loop)
end

-- /go?action=NAME: the next action for every worker; answers its sequence number.
function _M.go()
  local results = ngx.shared.results
  results:set("action", ngx.var.arg_action)
  ngx.update_time()
  results:set("at", ngx.now() + 0.2)
  local seq = results:incr("seq", 1, 0)
  return _M.reply(200, { seq = seq })
end

-- /results?seq=N: the outcomes so far of action N, one per worker.
function _M.results()
  local results = ngx.shared.results
  local out = {}
  for _, key in ipairs(results:get_keys(0)) do
    local seq = key:match("^result:(%d+):")
    if seq and tonumber(seq) == tonumber(ngx.var.arg_seq) then
      out[#out + 1] = cjson.decode(results:get(key))
    end
  end
  return _M.reply(200, out)
end

_M.json = cjson
return _M
