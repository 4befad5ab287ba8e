-- The findings of the security review of issue 15, each attacked over real HTTP on loopback
-- (the example app's findings: spec/openresty_app_spec.lua).
--   1. an error answer to a file download is cut at 64 KiB in both transports (peak RSS of a
--      child process and of an nginx worker against an endless chunked 404 / 5xx body)
--   3. application_id and contract.id must look like digi.me ids
--   4. ".", ".." and empty names and path segments never reach a URL
--   6. the sandbox's control API: JSON only, loopback Host and Origin, bodies capped
--   8. errors keep the user's token out of their plain fields
local flow = require "flow"
local sec = require "security_util"
local shell = require "shell"
local nginx = require "nginx"
local cjson = require "cjson"

local MIB = 1024 * 1024
-- What the hostile server would send if let: far past limits.body (1 GiB).
local ENDLESS = 2048 * MIB
-- Peak resident set a download may add, whatever the error answer's size.
local RSS_BOUND_KIB = 32 * 1024

local FILES = { "a.json", "b.json", "c.json", "d.json", "e.json", "f.json" }

-- The hostile server's script: every file GET of session "s" answers `status` with an endless
-- chunked body; the file list (for a sync) names FILES, completed.
local function script_endless(host, status)
  host:clear()
  local list = {}
  for i, name in ipairs(FILES) do list[i] = { name = name, updatedDate = i } end
  host:script{
    { method = "GET", path = "/v1.7/permission-access/query/s/", count = -1, status = status,
      headers = { { "Content-Type", "application/json" } }, endless = ENDLESS },
    { method = "GET", path = "/v1.7/permission-access/query/s", count = -1,
      body = { status = { state = "completed" }, fileList = list } },
  }
end

-- The file GETs the server saw, and the most bytes it managed to send to one of them.
local function file_gets(host)
  local n, most = 0, 0
  for _, r in ipairs(host:requests()) do
    if r.target:find("^/v1%.7/permission%-access/query/s/") then
      n = n + 1
      most = math.max(most, r.sent or 0)
    end
  end
  return n, most
end

local CASES = {
  { call = "read_file", status = 404, gets = 1, failures = 1 },
  { call = "read_file", status = 503, gets = 3, failures = 1 },        -- retried twice
  { call = "read_all_files", status = 404, gets = #FILES, failures = #FILES },
  { call = "read_all_files", status = 500, gets = 3 * #FILES, failures = #FILES },
}

describe("finding 1: error answers to file downloads", function()
  local host

  lazy_setup(function() host = sec.server() end)
  lazy_teardown(function() if host then host:stop() end end)

  describe("curl transport", function()
    for _, case in ipairs(CASES) do
      it(("%s answered %d with an endless body: peak RSS of a child bounded, the answer cut")
         :format(case.call, case.status), function()
        script_endless(host, case.status)
        local cmd = table.concat({ "cd", shell.quote(flow.sandbox.root), "&&", "lua5.4",
          "spec/support/error_body_read.lua", shell.quote(host.origin), case.call }, " ")
        local ok, out = shell.run(cmd)
        assert(ok, out)
        local line = assert(out:match("(kind=[^\n]*)"), out)
        local before = tonumber(line:match("hwm_before_kb=(%d+)"))
        local hwm = tonumber(line:match(" hwm_kb=(%d+)"))
        local gets, most = file_gets(host)
        io.stderr:write(("[curl %s %d: VmHWM %d -> %d KiB, %d file GETs, at most %.1f MiB sent "
          .. "to one, %s s]\n"):format(case.call, case.status, before, hwm, gets, most / MIB,
          line:match("seconds=([%d.]+)")))
        assert.are.equal("ServerError", line:match("kind=(%S+)"), line)
        assert.are.equal(tostring(case.status), line:match("status=(%S+)"), line)
        assert.are.equal(tostring(case.failures), line:match("failures=(%d+)"), line)
        assert.are.equal(case.gets, gets)
        assert.is_true(hwm - before < RSS_BOUND_KIB,
          ("peak RSS grew by %.1f MiB"):format((hwm - before) / 1024))
        -- the download stopped early: what the server got out is its socket buffers' worth
        assert.is_true(most < 64 * MIB, ("%.1f MiB sent to one download"):format(most / MIB))
      end)
    end
  end)

  describe("ngx transport #nginx", function()
    local n

    lazy_setup(function()
      n = nginx.start{
        init = ([[
          local digime = require "digime"
          local flow = require "flow"
          local cjson = require "cjson"
          local sdk = assert(digime.init{ application_id = flow.APP_ID, base_url = %q,
            retry_options = { backoff = 0.01, max_backoff = 0.05 }, timeout = 60 })
          local function hwm()
            local f = io.open("/proc/self/status")
            local text = f:read("*a")
            f:close()
            return tonumber(text:match("VmHWM:%%s*(%%d+)"))
          end
          local function token()
            return { access_token = { value = "ebr-at", expiry = os.time() + 3600 },
                     refresh_token = { value = "ebr-rt", expiry = os.time() + 86400 } }
          end
          EBR = function()
            collectgarbage()
            local before = hwm()
            local e, failures = nil, 0
            if ngx.var.arg_call == "read_file" then
              local res, err = sdk:read_file{ contract = flow.contract(), user_access_token = token(),
                                              session_key = "s", file_name = "f.json" }
              if not res then e, failures = err, 1 end
            else
              local res, err = sdk:read_all_files{ contract = flow.contract(),
                user_access_token = token(), session_key = "s", max_unchanged_polls = 1,
                poll_interval = 0.01,
                on_file_error = function(f) failures = failures + 1; e = f.error end }
              if not res then e = err end
            end
            ngx.say(cjson.encode{ kind = e and e.kind, status = e and e.status,
              failures = failures, hwm_before_kb = before, hwm_kb = hwm() })
          end
        ]]):format(host.origin .. "/v1.7/"),
        server = [[ location = /ebr { content_by_lua_block { EBR() } } ]],
      }
    end)
    lazy_teardown(function() if n then n:stop() end end)

    for _, case in ipairs(CASES) do
      it(("%s answered %d with an endless body: peak RSS of the nginx worker bounded")
         :format(case.call, case.status), function()
        script_endless(host, case.status)
        local status, body = n:get("/ebr?call=" .. case.call, 120)
        assert.are.equal(200, status, tostring(body) .. n:error_log():sub(-2000))
        local doc = cjson.decode(body)
        local gets, most = file_gets(host)
        io.stderr:write(("[ngx %s %d: worker VmHWM %d -> %d KiB, %d file GETs, at most %.1f MiB "
          .. "sent to one]\n"):format(case.call, case.status, doc.hwm_before_kb, doc.hwm_kb, gets,
          most / MIB))
        assert.are.equal("ServerError", doc.kind, body)
        assert.are.equal(case.status, doc.status, body)
        assert.are.equal(case.failures, doc.failures, body)
        assert.are.equal(case.gets, gets)
        assert.is_true(doc.hwm_kb - doc.hwm_before_kb < RSS_BOUND_KIB,
          ("worker peak RSS grew by %.1f MiB"):format((doc.hwm_kb - doc.hwm_before_kb) / 1024))
        assert.is_true(most < 64 * MIB, ("%.1f MiB sent to one download"):format(most / MIB))
      end)
    end
  end)
end)

describe("findings 3 and 4: ids and URL segments", function()
  local sb, sdk, token, session_key
  local pem = flow.demo.private_key

  lazy_setup(function()
    sb = flow.start()
    sdk = assert(flow.sdk(sb))
    token = flow.login(sdk)
    session_key = assert(sdk:read_session{ contract = flow.contract(), user_access_token = token })
      .session.key
  end)
  lazy_teardown(function() if sb then sb:stop() end end)

  -- No piece of the PEM's base64 body (16 characters) in a text.
  local function assert_no_pem(text)
    local b64 = pem:gsub("%-%-%-%-%-[^\n]*%-%-%-%-%-", ""):gsub("%s", "")
    for i = 1, #b64 - 15, 8 do
      assert.is_falsy(text:find(b64:sub(i, i + 15), 1, true), "the key is echoed: " .. text)
    end
    assert.is_falsy(text:find("BEGIN", 1, true), text)
  end

  it("finding 3: refuses a PEM, a token or a long text as contract.id, sending nothing", function()
    local before = #sb:log()
    local bad = { pem, "demo contract", "a/b", "-leading-dash", ("x"):rep(65),
                  "ab\r\nX-Injected: 1", "eyJhbGciOiJQUzUxMiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl" .. ("A"):rep(40) }
    for _, id in ipairs(bad) do
      local res, err = sdk:get_authorize_url(flow.authorize_opts{
        contract = { id = id, private_key = pem } })
      assert.is_nil(res)
      assert.are.equal("TypeValidationError", err.kind, tostring(err))
      assert.are.equal("contract.id", err.field)
      assert.is_truthy(tostring(err):find("not a digi.me id", 1, true), tostring(err))
      assert_no_pem(tostring(err))
      local res2, err2 = sdk:read_file{ contract = { id = id, private_key = pem },
        user_access_token = token, session_key = session_key, file_name = "x.json" }
      assert.is_nil(res2)
      assert.are.equal("TypeValidationError", err2.kind, tostring(err2))
    end
    assert.are.equal(before, #sb:log(), "a request reached the sandbox")
    for _, entry in ipairs(sb:log()) do
      assert_no_pem(tostring(entry.client_id))
    end
  end)

  it("finding 3: refuses a PEM as application_id, and takes ids of the digi.me shape", function()
    local s, err = flow.digime.init{ application_id = pem, base_url = sb.base_url }
    assert.is_nil(s)
    assert.are.equal("TypeValidationError", err.kind)
    assert.are.equal("application_id", err.field)
    assert_no_pem(tostring(err))
    for _, id in ipairs{ "fJI8P5Z4cIhP3HawlXVvxWBrbyj5QkTF", "demo-app", "a", "my_app.v2", ("x"):rep(64) } do
      assert.is_table(flow.digime.init{ application_id = id, base_url = sb.base_url }, id)
    end
    -- the demo ids work end to end (the login of lazy_setup), and so does a 32-character one
    assert.is_table(token)
  end)

  -- { call, options (session_key and file_name filled in below), the field it refuses }
  local function calls(bad)
    local c = flow.contract()
    local t, k = token, session_key
    return {
      { "read_file", { contract = c, user_access_token = t, session_key = k, file_name = bad },
        "file_name" },
      { "read_file", { contract = c, user_access_token = t, session_key = bad, file_name = "x.json" },
        "session_key" },
      { "read_file_metadata", { contract = c, user_access_token = t, session_key = k,
        file_name = bad }, "file_name" },
      { "read_file_list", { contract = c, user_access_token = t, session_key = bad }, "session_key" },
      { "read_all_files", { contract = c, user_access_token = t, session_key = bad }, "session_key" },
      { "get_portability_report", { contract = c, user_access_token = t, format = "xml",
        service_type = bad }, "service_type" },
      { "list_storage_files", { contract = c, storage_id = bad }, "storage_id" },
      { "download_storage_file", { contract = c, storage_id = "st", path = "a/" .. bad .. "/b.txt" }, "path" },
      { "delete_storage_files", { contract = c, storage_id = "st", path = bad .. "/x" }, "path" },
      { "upload_file_to_storage", { contract = c, storage_id = "st", file_name = bad, file_data = "x" },
        "file_name" },
      { "upload_file_to_storage", { contract = c, storage_id = "st", path = "/" .. bad .. "/",
        file_name = "f", file_data = "x" }, "path" },
    }
  end

  it("finding 4: '.', '..' and empty names never reach a URL", function()
    local before = #sb:log()
    for _, bad in ipairs{ ".", ".." } do
      for _, row in ipairs(calls(bad)) do
        local res, err = sdk[row[1]](sdk, row[2])
        assert.is_nil(res, row[1] .. " " .. row[3] .. " = " .. bad)
        assert.are.equal("TypeValidationError", err.kind, row[1] .. ": " .. tostring(err))
        assert.are.equal(row[3], err.field, row[1] .. ": " .. tostring(err))
      end
    end
    for _, row in ipairs(calls("")) do
      if row[3] ~= "path" then   -- an empty storage path segment is folded ("a//b" is "a/b")
        local res, err = sdk[row[1]](sdk, row[2])
        assert.is_nil(res, row[1] .. " " .. row[3] .. " empty")
        assert.are.equal("TypeValidationError", err.kind, row[1] .. ": " .. tostring(err))
      end
    end
    assert.are.equal(before, #sb:log(), "a request reached the sandbox")
  end)

  it("finding 4: '...' is a name like any other (control)", function()
    local res, err = sdk:read_file{ contract = flow.contract(), user_access_token = token,
                                    session_key = session_key, file_name = "..." }
    -- "..." is a name like any other: it goes to the server (which has no such file)
    assert.is_nil(res)
    assert.are.equal("ServerError", err.kind, tostring(err))
    assert.are.equal(404, err.status)
  end)
end)

describe("finding 8: errors keep the user's token out of their fields", function()
  local sb, sdk, token

  lazy_setup(function()
    sb = flow.start()
    sdk = assert(flow.sdk(sb))
    token = flow.login(sdk)
  end)
  lazy_teardown(function() if sb then sb:stop() end end)

  local function assert_hidden(err, t, what)
    local text = cjson.encode(err)
    for _, v in ipairs{ t.access_token.value, t.refresh_token.value } do
      assert.is_falsy(text:find(v, 1, true), what .. ": cjson.encode(err) has a token: " .. text)
      assert.is_falsy(tostring(err):find(v, 1, true), what .. ": tostring(err) has a token")
    end
    for k in pairs(err) do
      assert.are_not.equal("user_access_token", k, what)
      assert.are_not.equal("result", k, what)
    end
  end

  it("a refreshed token is kept (err.user_access_token, digime.token_of) but not serialised", function()
    sb:expire("access")
    local res, err = sdk:read_file{ contract = flow.contract(), user_access_token = token,
                                    session_key = "no-such-session", file_name = "x.json" }
    assert.is_nil(res)
    assert.are.equal("ServerError", err.kind, tostring(err))
    local fresh = err.user_access_token
    assert.is_table(fresh, "the refreshed token is lost")
    assert.are_not.equal(token.access_token.value, fresh.access_token.value)
    assert_hidden(err, fresh, "read_file")
    assert.are.equal(fresh, flow.digime.token_of(err))
    assert.are.equal(fresh, flow.digime.errors.token_of(err))
    token = fresh
    -- an error made with the token among its fields hides it as well
    local made = flow.digime.errors.new("ServerError", "X", "m", { user_access_token = fresh })
    assert.are.equal(fresh, made.user_access_token)
    assert_hidden(made, fresh, "errors.new")
    assert.is_nil(flow.digime.token_of({ user_access_token = fresh }), "not an SDK error")
  end)

  it("a failed sync keeps its result and token off the error's fields", function()
    sb:fault{ path = "/v1.7/permission-access/query/", action = "status", status = 400, count = 1,
              body = { error = { code = "InvalidRequest", message = "no" } } }
    local session = assert(sdk:read_session{ contract = flow.contract(), user_access_token = token })
    local res, err = sdk:read_all_files{ contract = flow.contract(), user_access_token = token,
      session_key = session.session.key, poll_interval = 0.01 }
    assert.is_nil(res)
    assert.is_table(err.result, tostring(err))
    assert.is_table(err.user_access_token)
    assert_hidden(err, token, "read_all_files")
    assert.are.equal(err.user_access_token, flow.digime.token_of(err))
  end)
end)

describe("finding 6: the sandbox's control API", function()
  local socket = require "socket"
  local sb, host, port
  local FAULT = cjson.encode{ path = "/v1.7/never", action = "status", status = 500 }
  local JSON = "Content-Type: application/json"
  local HOST   -- "Host: 127.0.0.1:<port>", once the sandbox runs

  lazy_setup(function()
    sb = flow.start()
    host, port = sb.control_url:match("^http://([^:/]+):(%d+)")
    assert(host, "the sandbox is not on plain http: " .. sb.control_url)
    HOST = "Host: " .. host .. ":" .. port
  end)
  lazy_teardown(function() if sb then sb:stop() end end)

  -- One request on a connection of its own: -> status (nil when the connection was dropped)
  local function raw(method, path, headers, body)
    local c = socket.tcp()
    c:settimeout(10)
    assert(c:connect(host, tonumber(port)))
    local out = { method .. " " .. path .. " HTTP/1.1" }
    for _, h in ipairs(headers) do out[#out + 1] = h end
    if body then out[#out + 1] = "Content-Length: " .. #body end
    out[#out + 1] = "Connection: close"
    c:send(table.concat(out, "\r\n") .. "\r\n\r\n" .. (body or ""))
    local text = c:receive("*a") or ""
    c:close()
    return tonumber(text:match("^HTTP/1%.%d (%d+)")), text
  end


  local function hwm_kb(pid)
    local f = assert(io.open("/proc/" .. pid .. "/status"))
    local text = f:read("*a")
    f:close()
    return tonumber(text:match("VmHWM:%s*(%d+)"))
  end

  it("refuses cross-site, DNS-rebound and non-JSON requests, and takes loopback JSON ones", function()
    sb:clear_faults()
    local rows = {
      { 415, { HOST, "Content-Type: text/plain" }, "a cross-site form or simple fetch (text/plain)" },
      { 415, { HOST, "Content-Type: application/x-www-form-urlencoded" }, "a form" },
      { 415, { HOST }, "no content type" },
      { 403, { "Host: evil.example", JSON }, "a DNS-rebound name" },
      { 403, { "Host: evil.example:" .. port, JSON }, "a DNS-rebound name with the port" },
      { 403, { "Host: 127.0.0.1.evil.example", JSON }, "a lookalike name" },
      { 403, { HOST, JSON, "Origin: http://evil.example" }, "a cross-site page" },
      { 403, { HOST, JSON, "Origin: null" }, "an opaque origin" },
      { 403, { HOST, JSON, "Sec-Fetch-Site: cross-site" }, "a cross-site fetch" },
      { 403, { "Host: evil.example", "Content-Type: text/plain", "Origin: http://evil.example" },
        "the attack of the review" },
      { 200, { HOST, JSON }, "a test's request" },
      { 200, { "Host: localhost:" .. port, "Content-Type: application/json; charset=utf-8",
               "Origin: http://localhost:" .. port }, "localhost, same origin" },
      { 200, { "Host: [::1]:" .. port, JSON }, "[::1]" },
    }
    local accepted = 0
    for _, row in ipairs(rows) do
      local status, text = raw("POST", "/sandbox/fault", row[2], FAULT)
      assert.are.equal(row[1], status, row[3] .. ": " .. text)
      if row[1] == 200 then accepted = accepted + 1 end
    end
    assert.are.equal(accepted, #sb:faults(), "faults recorded")
    -- and the consent switch of the review's attack
    assert.are.equal(403, raw("POST", "/sandbox/consent", { "Host: evil.example",
      "Content-Type: text/plain", "Origin: http://evil.example" }, '{"decision":"decline"}'))
    sb:clear_faults()
  end)

  it("caps a control request's body at 1 MiB, declared or chunked, in bounded memory", function()
    local big = cjson.encode{ path = "/v1.7/never", action = "status", status = 500,
                              body = ("x"):rep(MIB + 10) }
    assert.are.equal(413, raw("POST", "/sandbox/fault", { HOST, JSON }, big))
    -- 300 MiB chunked: refused once past the cap, the connection closed
    local before = hwm_kb(sb.pid)
    local c = socket.tcp()
    c:settimeout(10)
    assert(c:connect(host, tonumber(port)))
    c:send("POST /sandbox/fault HTTP/1.1\r\n" .. HOST .. "\r\n" .. JSON
           .. "\r\nTransfer-Encoding: chunked\r\n\r\n")
    local piece = ("%x\r\n"):format(MIB) .. ("y"):rep(MIB) .. "\r\n"
    local sent = 0
    for _ = 1, 300 do
      if not c:send(piece) then break end
      sent = sent + 1
    end
    c:settimeout(5)
    local line = c:receive("*l")
    c:close()
    local after = hwm_kb(sb.pid)
    io.stderr:write(("[sandbox control: %d MiB sent of 300, VmHWM %d -> %d KiB]\n")
      :format(sent, before, after))
    assert.are.equal("413", line and line:match("^HTTP/1%.%d (%d+)"), tostring(line))
    assert.is_true(after - before < 32 * 1024, ("the sandbox grew by %.1f MiB"):format((after - before) / 1024))
    assert.is_true(sent < 300, "the sandbox read all 300 MiB")
    assert.are.equal(0, #sb:faults())
  end)
end)
