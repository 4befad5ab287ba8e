-- The example web app (examples/openresty) in the machine's real nginx, against a sandbox
-- with consent pages (--interactive), driven over HTTP as a browser would (cookies kept,
-- redirects followed one by one and checked), then by headless Chromium.
--
-- Tagged nginx: the runner runs it once, under Lua 5.4 (nginx runs its own LuaJIT).
local sandbox = require "sandbox"
local nginx = require "nginx"
local sh = require "shell"
local core = require "digime.core"

local root = sh.absolute(sandbox.root)

-- The library the sandbox serves: names and contents that HTML and URLs must survive.
local HOSTILE = [[<b onmouseover="alert(1)">bold & 'quoted'.html]]   -- no "/" in a file name
local LIBRARY = {
  ["notes.txt"] = "Plain text notes.\nThe quick brown fox jumps over the lazy dog.\n",
  [HOSTILE] = [[</pre><script>alert("owned")</script><img src=x onerror=alert(1)> &amp; &lt;]],
  ["ünï cödé.json"] = '{"text":"Grüße ✓ 日本語"}',
  ["a+b %41?x=1#frag.txt"] = "plus, percent, question mark and hash in the name\n",
  ["photo.png"] = "\137PNG\r\n\26\n\0\0\0\rIHDR\0\0\0\1\0\0\0\1\8\6\0\0\0\31\21\196\137",
  ["empty.txt"] = "",
}
local METADATA = [[{
  "notes.txt": { "compression": "gzip" },
  "ünï cödé.json": { "compression": "brotli" },
  "a+b %41?x=1#frag.txt": { "compression": "gzip" }
}]]

local ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }
local function esc(s)
  return (s:gsub("[&<>\"']", ESC))
end

local function unesc(s)
  return (s:gsub("&lt;", "<"):gsub("&gt;", ">"):gsub("&quot;", '"'):gsub("&#39;", "'")
           :gsub("&amp;", "&"))
end

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function sha256_hex(s)
  return (core.sha256(s):gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- Lines of a file, or {}.
local function lines_of(path)
  local out = {}
  local f = io.open(path, "rb")
  if not f then return out end
  for line in f:lines() do out[#out + 1] = line end
  f:close()
  return out
end

describe("examples/openresty: the web app in nginx #nginx", function()
  local sb, server, app_url, libdir, limited_port

  -- A browser: keeps the app's session cookie, follows nothing by itself.
  local function browser()
    local b = { cookie = nil }
    function b.get(url)
      if url:sub(1, 1) == "/" then url = app_url .. url end
      local headers = {}
      if b.cookie and url:sub(1, #app_url + 1) == app_url .. "/" then
        headers.cookie = "digime_sid=" .. b.cookie
      end
      local res, err = sandbox.request{ url = url, headers = headers, timeout = 30 }
      assert(res, err)
      local set = res.headers["set-cookie"]
      if set and url:sub(1, #app_url) == app_url then
        res.cookie_header = set
        b.cookie = set:match("digime_sid=([^;]*)") or b.cookie
      end
      return res
    end
    return b
  end

  -- /connect -> the sandbox's consent page -> decision: the callback URL it sends back to.
  local function to_consent(b, start)
    local r = b.get(start or "/connect")
    assert.are.equal(302, r.status, r.body)
    local loc = r.headers.location
    local consent = b.get(loc)
    assert.are.equal(200, consent.status, consent.body)
    local code = consent.body:match('name="code" value="([^"]+)"')
    assert.is_truthy(code, consent.body)
    return loc, consent, code
  end

  local function decide(b, code, decision)
    local r = b.get(sb.onboard_url .. "consent?code=" .. code .. "&decision=" .. decision)
    assert.are.equal(302, r.status, r.body)
    local cb = r.headers.location
    assert.are.equal(app_url .. "/callback?", cb:sub(1, #app_url + 10))
    return cb
  end

  -- The whole first-time flow; returns the browser, connected.
  local function login()
    local b = browser()
    local _, _, code = to_consent(b)
    local r = b.get(decide(b, code, "accept"))
    assert.are.equal(302, r.status, r.body)
    assert.are.equal("/files", r.headers.location)
    return b
  end

  setup(function()
    libdir = sh.tmpdir()
    for name, data in pairs(LIBRARY) do sh.write(libdir .. "/" .. name, data) end
    sh.write(libdir .. "/metadata.json", METADATA)
    sb = sandbox.start{ args = { "--interactive", "--library", libdir, "--sync-pace", "0.1" } }

    -- The http{} lines of the example's nginx.conf that the app needs (its shared dicts, its
    -- log format, the rate limit's zone), and the lines of its server{} block.
    local conf = sh.read(root .. "/examples/openresty/nginx.conf")
    local http, limits = {}, {}
    for line in conf:gmatch("[^\n]+") do
      if line:match("^%s*lua_shared_dict ") or line:match("^%s*log_format ")
         or line:match("^%s*map ") or line:match("^%s*limit_req_zone ") then
        http[#http + 1] = line
      elseif line:match("^%s*limit_req ") or line:match("^%s*limit_req_status ") then
        limits[#limits + 1] = line
      end
    end
    assert.are.equal(6, #http)
    assert.are.equal(2, #limits)
    -- Which worker served what: the pid in an access log of its own (the path only: the
    -- callback's query carries the code and the state).
    http[#http + 1] = "log_format app_pid '$pid $status $uri';"

    -- The app listens on a second port with reuseport, so that the kernel spreads the
    -- connections over both workers (without it one worker may take them all).
    local app_port = nginx.free_port()
    limited_port = nginx.free_port()
    app_url = "http://127.0.0.1:" .. app_port
    server = nginx.start{
      workers = 2,
      http = table.concat(http, "\n"),
      server = "listen 127.0.0.1:" .. app_port .. " reuseport;\n"
        .. "access_log $PREFIX/logs/app.log app_pid;\n"
        .. "access_log $PREFIX/logs/access.log digime_app;\n"
        -- for the flood test: the number of keys in the app's store of started connections,
        -- and emptying it afterwards
        .. "location = /__states { content_by_lua_block { "
        .. "ngx.say(#ngx.shared.digime_app_states:get_keys(0)) } }\n"
        .. "location = /__flush_states { content_by_lua_block { "
        .. "ngx.shared.digime_app_states:flush_all() ngx.say('ok') } }\n"
        .. "include " .. root .. "/examples/openresty/locations.conf;",
      -- the app as nginx.conf serves it, rate limit included
      servers = { "listen 127.0.0.1:" .. limited_port .. ";\n" .. table.concat(limits, "\n")
        .. "\ninclude " .. root .. "/examples/openresty/locations.conf;" },
      -- As the example's init_by_lua_block, plus the app's directory on the path (the
      -- harness sets lua_package_path itself).
      init = ("package.path = %q .. package.path\nrequire \"digime\"\nrequire(\"app\").init()")
        :format(root .. "/examples/openresty/?.lua;"),
      env = { DIGIME_APP_URL = app_url, DIGIME_BASE_URL = sb.base_url,
              DIGIME_ONBOARD_URL = sb.onboard_url,
              DIGIME_TRANSPORT = os.getenv("DIGIME_TRANSPORT") },   -- unset: app.lua's choice
    }
  end)

  teardown(function()
    if server then server:stop() end
    if sb then sb:stop() end
    sh.rmdir(libdir)
  end)

  it("shows a start page with a Connect link", function()
    local r = browser().get("/")
    assert.are.equal(200, r.status)
    assert.matches("text/html; charset=utf-8", r.headers["content-type"], 1, true)
    assert.matches('<a class="button" id="connect" href="/connect">Connect your digi.me</a>', r.body, 1, true)
    assert.is_truthy(r.headers["content-security-policy"])
  end)

  it("connects: authorize redirect, consent page, callback, file list, every file", function()
    local b = browser()
    local loc, consent, code = to_consent(b)
    -- The redirect goes to digi.me's authorize page; neither it nor the cookie carries the
    -- code verifier (the cookie is a random session id, HttpOnly).
    assert.are.equal(sb.onboard_url .. "authorize?code=", loc:sub(1, #sb.onboard_url + 15))
    assert.is_nil(loc:lower():find("verifier"))
    assert.matches("Share your data", consent.body)
    local first_sid = b.cookie
    assert.matches("^%w+$", first_sid)
    assert.are.equal(32, #first_sid)

    local cb = decide(b, code, "accept")
    assert.is_nil(cb:lower():find("verifier"))
    local r = b.get(cb)
    assert.are.equal(302, r.status, r.body)
    assert.are.equal("/files", r.headers.location)
    assert.matches("HttpOnly", r.cookie_header, 1, true)
    assert.matches("SameSite=Lax", r.cookie_header, 1, true)
    assert.are_not.equal(first_sid, b.cookie)    -- a new session id at sign-in

    -- The same callback again: the state was used up.
    local again = b.get(cb)
    assert.are.equal(400, again.status)

    local files = b.get("/files")
    assert.are.equal(200, files.status, files.body)
    assert.matches('<strong id="sync-state">completed</strong>', files.body, 1, true)
    local manifest = sb:control("GET", "manifest")
    local links = {}
    local tbody = files.body:match('<tbody id="files">(.-)</tbody>')
    for href, text in tbody:gmatch('<a href="([^"]*)">([^<]*)</a>') do
      links[unesc(text)] = unesc(href)
    end
    local n = 0
    for name, sum in pairs(manifest.files) do
      n = n + 1
      local href = links[name]
      assert.is_truthy(href, "no link for " .. name)
      assert.are.equal("/file?name=", href:sub(1, 11))
      assert.is_nil(href:find("[^%w%%%-%._~=?/!*'()]"), href)   -- percent-encoded
      assert.are.equal(name, percent_decode(href:sub(12)))
      -- Each file's page shows exactly the file (text files), escaped.
      local page = b.get(href)
      assert.are.equal(200, page.status, page.body)
      assert.matches("<h1>" .. esc(name) .. "</h1>", page.body, 1, true)
      local pre = page.body:match('<pre id="content">(.-)</pre>')
      if name == "photo.png" then
        assert.is_nil(pre)
        assert.matches("binary data, not shown", page.body, 1, true)
      else
        assert.is_truthy(pre, page.body)
        assert.are.equal(sum, sha256_hex(unesc(pre)), name)
      end
    end
    assert.are.equal(n, manifest.count)
    assert.matches('<span id="file-count">' .. n .. "</span>", files.body, 1, true)

    -- No markup of a file name or content gets through unescaped.
    assert.is_nil(files.body:find("<b>", 1, true))
    local hostile = b.get(links[HOSTILE])
    assert.is_nil(hostile.body:find("<script>", 1, true))
    assert.is_nil(hostile.body:find("<img", 1, true))
    assert.matches("&lt;/pre&gt;&lt;script&gt;", hostile.body, 1, true)

    -- A file that is not there, and a request without a name.
    local missing = b.get("/file?name=" .. "no%20such%20file")
    assert.are.equal(404, missing.status)
    assert.matches("No such file", missing.body, 1, true)
    assert.are.equal(400, b.get("/file").status)

    -- The start page now knows the browser.
    assert.matches("Your digi.me is connected", b.get("/").body, 1, true)
  end)

  it("refuses a callback whose state is unknown or belongs to another browser", function()
    local b = browser()
    local r = b.get("/callback?success=true&state=" .. string.rep("x", 32) .. "&code=abc")
    assert.are.equal(400, r.status)
    assert.matches("This connection link is not valid", r.body, 1, true)
    assert.are.equal(400, b.get("/callback").status)
    assert.are.equal(400, b.get("/callback?state=%3Cscript%3E&success=true").status)

    -- A real state, but the callback comes from a browser without the session cookie that
    -- started it: refused, and the state is still good for its own browser.
    local _, _, code = to_consent(b)
    local cb = decide(b, code, "accept")
    local other = browser()
    local stolen = other.get(cb)
    assert.are.equal(400, stolen.status)
    assert.matches("started in another browser", stolen.body, 1, true)
    local mine = b.get(cb)
    assert.are.equal(302, mine.status, mine.body)
    assert.are.equal("/files", mine.headers.location)
    assert.are.equal("Not connected", other.get("/files").body:match("<h1>(.-)</h1>"))
  end)

  it("shows a clear page when the person declines (success=false), error code escaped", function()
    local b = browser()
    local _, _, code = to_consent(b)
    local cb = decide(b, code, "decline")
    assert.matches("success=false", cb, 1, true)
    assert.matches("errorCode=UserCancelled", cb, 1, true)
    local r = b.get(cb)
    assert.are.equal(200, r.status)
    assert.matches("digi.me was not connected", r.body, 1, true)
    assert.matches('<code id="error-code">UserCancelled</code>', r.body, 1, true)
    assert.are.equal("Not connected", b.get("/files").body:match("<h1>(.-)</h1>"))

    -- A hostile error code is shown as text.
    _, _, code = to_consent(b)
    cb = decide(b, code, "decline"):gsub("errorCode=UserCancelled",
                                         "errorCode=%%3Cscript%%3Ealert(1)%%3C%%2Fscript%%3E")
    r = b.get(cb)
    assert.are.equal(200, r.status)
    assert.matches('<code id="error-code">&lt;script&gt;alert(1)&lt;/script&gt;</code>', r.body, 1, true)
    assert.is_nil(r.body:find("<script>", 1, true))
  end)

  it("keeps the newest token when the SDK refreshes an expired access token", function()
    local b = login()
    -- Twice: refresh tokens rotate, so the second refresh works only if the app stored the
    -- token the first one returned.
    for _ = 1, 2 do
      sb:expire("access")
      local files = b.get("/files")
      assert.are.equal(200, files.status, files.body)
      assert.matches("notes.txt", files.body, 1, true)
    end
  end)

  it("sends the person through reauthorization when the refresh token has died", function()
    local b = login()
    local user = b.get("/").body:match("user <code>([^<]+)</code>")
    assert.is_truthy(user)
    local old_sid = b.cookie
    sb:expire("both")

    -- /files: the SDK's refresh fails with InvalidToken, so the app redirects to digi.me's
    -- reauthorize page.
    local loc, consent, code = to_consent(b, "/files")
    assert.are.equal(sb.onboard_url .. "user-reauth?code=", loc:sub(1, #sb.onboard_url + 17))
    assert.matches("Authorize again", consent.body, 1, true)
    local r = b.get(decide(b, code, "accept"))
    assert.are.equal(302, r.status, r.body)
    assert.are.equal("/files", r.headers.location)
    assert.are_not.equal(old_sid, b.cookie)

    local files = b.get("/files")
    assert.are.equal(200, files.status, files.body)
    assert.matches("notes.txt", files.body, 1, true)
    -- The same user, with a working token.
    assert.are.equal(user, b.get("/").body:match("user <code>([^<]+)</code>"))
    assert.are.equal(200, b.get("/file?name=notes.txt").status)
  end)

  it("serves a callback on another worker than the one that started the connection", function()
    assert.are.equal(2, #server:workers())
    local log = server.prefix .. "/logs/app.log"
    local function last_pid(path)
      local found
      for _, line in ipairs(lines_of(log)) do
        local pid, p = line:match("^(%d+) %d+ (/[^?]*)")
        if p == path then found = pid end
      end
      return found
    end
    local crossed = 0
    for _ = 1, 40 do
      local b = browser()
      local _, _, code = to_consent(b)
      local started = last_pid("/connect")
      local r = b.get(decide(b, code, "accept"))
      assert.are.equal(302, r.status, r.body)
      assert.are.equal("/files", r.headers.location)
      local finished = last_pid("/callback")
      assert.is_truthy(started and finished)
      if started ~= finished then
        crossed = crossed + 1
        assert.are.equal(200, b.get("/files").status)
        if crossed >= 2 then break end
      end
    end
    assert.is_true(crossed >= 2, "no callback was served by the other worker in 40 tries")
  end)

  it("headless Chromium clicks through connect, consent, callback and the file list", function()
    local ok, out = sh.run("sh " .. sh.quote(root .. "/spec/browser/install.sh"))
    assert.is_true(ok, out)
    local shots = root .. "/build/screenshots"
    ok, out = sh.run("cd " .. sh.quote(root .. "/spec/browser") .. " && node openresty_flow.js "
      .. sh.quote(app_url) .. " " .. sh.quote(shots) .. " notes.txt 'The quick brown fox' " .. sh.quote(HOSTILE))
    -- The screenshots' paths go to the test output (stderr shows in the runner's summary).
    for path in out:gmatch("screenshot: ([^\n]+)") do
      io.stderr:write("openresty_app_spec: screenshot ", path, "\n")
    end
    assert.is_true(ok, out)
    assert.matches("browser flow passed", out, 1, true)
  end)

  -- Issue 15 ------------------------------------------------------------------------------

  local function states()
    local r = browser().get("/__states")
    assert.are.equal(200, r.status)
    return tonumber(r.body)
  end

  local function authorize_calls()
    return sb:stats().by_path["/v1.7/oauth/authorize"] or 0
  end

  it("keeps one connection in progress per browser session (finding 2)", function()
    local b = browser()
    local _, _, first = to_consent(b)
    local before = states()
    for _ = 1, 30 do
      assert.are.equal(302, b.get("/connect").status)
    end
    assert.is_true(states() <= before, ("30 more /connect of one session: %d keys, were %d")
      :format(states(), before))
    -- the first connection was replaced: its callback is refused, the newest one works
    local stale = b.get(decide(b, first, "accept"))
    assert.are.equal(400, stale.status)
    local _, _, code = to_consent(b)
    local r = b.get(decide(b, code, "accept"))
    assert.are.equal(302, r.status, r.body)
    assert.are.equal("/files", r.headers.location)
  end)

  it("refuses (503) rather than evicts when flooded, and a real sign-in completes (finding 2)", function()
    local user = browser()
    local _, _, code = to_consent(user)       -- a real user, at digi.me's consent page
    local calls0 = authorize_calls()
    local socket = require "socket"
    local t0 = socket.gettime()
    local started, refused, n = 0, 0, 0
    -- a flood without cookies: every request is a new browser session
    while refused < 200 and n < 30000 do
      n = n + 1
      local r = browser().get("/connect")
      if r.status == 302 then
        started = started + 1
      else
        assert.are.equal(503, r.status, r.body)
        assert.are.equal("60", r.headers["retry-after"])
        refused = refused + 1
      end
    end
    io.stderr:write(("[openresty app flood: %d /connect in %.1f s, %d started before the store "
      .. "was full, %d refused, %d keys]\n"):format(n, socket.gettime() - t0, started, refused,
      states()))
    assert.are.equal(200, refused, "the store never filled up in 30000 requests")
    -- a refused /connect costs no call to digi.me
    assert.are.equal(started, authorize_calls() - calls0)
    -- the real user's connection survived the flood
    local r = user.get(decide(user, code, "accept"))
    assert.are.equal(302, r.status, r.body)
    assert.are.equal("/files", r.headers.location)
    assert.are.equal(200, user.get("/files").status)
    browser().get("/__flush_states")
    assert.are.equal(302, browser().get("/connect").status)
  end)

  it("has nginx.conf's rate limit in front of /connect (finding 2)", function()
    local url = "http://127.0.0.1:" .. limited_port
    local codes = {}
    for i = 1, 25 do
      local res = assert(sandbox.request{ url = url .. "/connect", timeout = 30 })
      codes[i] = res.status
    end
    local ok, limited = 0, 0
    for _, c in ipairs(codes) do
      if c == 302 then ok = ok + 1 elseif c == 429 then limited = limited + 1 end
    end
    io.stderr:write(("[openresty app rate limit: 25 /connect -> %d x 302, %d x 429]\n"):format(ok, limited))
    assert.are.equal(25, ok + limited, table.concat(codes, " "))
    assert.is_true(ok >= 10 and ok <= 12, table.concat(codes, " "))
    -- other pages are not limited
    for _ = 1, 15 do
      assert.are.equal(200, assert(sandbox.request{ url = url .. "/", timeout = 30 }).status)
    end
  end)

  it("logs no authorization code, state or token (finding 5)", function()
    local b = browser()
    local _, _, code = to_consent(b)
    local cb = decide(b, code, "accept")
    local q = {}
    for k, v in cb:match("%?(.*)$"):gmatch("([^&=]+)=([^&]*)") do q[k] = percent_decode(v) end
    assert.is_truthy(q.code and q.state, cb)
    local r = b.get(cb)
    assert.are.equal(302, r.status, r.body)
    assert.are.equal(200, b.get("/files").status)
    local seen = 0
    for _, log in ipairs{ "access.log", "app.log", "error.log" } do
      local text = sh.read(server.prefix .. "/logs/" .. log) or ""
      for _, secret in ipairs{ q.code, q.state, q.accountReference } do
        if secret and secret ~= "" then
          assert.is_nil(text:find(secret, 1, true), log .. " has a secret of the callback")
        end
      end
      assert.is_nil(text:find("code=", 1, true), log)
      if log == "access.log" then
        seen = select(2, text:gsub('"GET /callback"', ""))
      end
    end
    assert.is_true(seen >= 1, "the callback is not in the access log")
  end)

  it("left no errors in nginx's error log", function()
    local text = server:error_log()
    for _, bad in ipairs{ "[alert]", "[crit]", "[emerg]", "runtime error", "entry thread aborted" } do
      assert.is_nil(text:find(bad, 1, true), bad .. " in the error log:\n" .. text)
    end
  end)
end)

describe("examples/openresty over https: a __Host- session cookie (finding 7) #nginx", function()
  local sb, server, app_url, dir

  -- A request with the given cookie header; -> res
  local function get(url, cookie)
    if url:sub(1, 1) == "/" then url = app_url .. url end
    local res, err = sandbox.request{ url = url, headers = { cookie = cookie },
                                      cafile = url:match("^https://127") and dir .. "/cert.pem" or sb.ca_file,
                                      timeout = 30 }
    assert(res, err)
    return res
  end

  setup(function()
    dir = sh.tmpdir()
    local ok, out = sh.run("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1"
      .. " -addext subjectAltName=IP:127.0.0.1 -keyout " .. sh.quote(dir .. "/key.pem")
      .. " -out " .. sh.quote(dir .. "/cert.pem") .. " 2>&1")
    assert(ok, out)
    sb = sandbox.start{ args = { "--interactive" } }
    local conf = sh.read(root .. "/examples/openresty/nginx.conf")
    local http = {}
    for line in conf:gmatch("[^\n]+") do
      if line:match("^%s*lua_shared_dict ") then http[#http + 1] = line end
    end
    local port = nginx.free_port()
    app_url = "https://127.0.0.1:" .. port
    server = nginx.start{
      http = table.concat(http, "\n"),
      server = "listen 127.0.0.1:" .. port .. " ssl;\n"
        .. "ssl_certificate " .. dir .. "/cert.pem;\nssl_certificate_key " .. dir .. "/key.pem;\n"
        .. "include " .. root .. "/examples/openresty/locations.conf;",
      init = ("package.path = %q .. package.path\nrequire \"digime\"\nrequire(\"app\").init()")
        :format(root .. "/examples/openresty/?.lua;"),
      env = { DIGIME_APP_URL = app_url, DIGIME_BASE_URL = sb.base_url,
              DIGIME_ONBOARD_URL = sb.onboard_url },
    }
  end)

  teardown(function()
    if server then server:stop() end
    if sb then sb:stop() end
    if dir then sh.rmdir(dir) end
  end)

  -- /connect -> consent -> accept: the callback URL, and the session cookie /connect set
  local function start(cookie)
    local r = get("/connect", cookie)
    assert.are.equal(302, r.status, r.body)
    local set = r.headers["set-cookie"]
    local consent = get(r.headers.location)
    local code = assert(consent.body:match('name="code" value="([^"]+)"'), consent.body)
    local d = get(sb.onboard_url .. "consent?code=" .. code .. "&decision=accept")
    assert.are.equal(302, d.status, d.body)
    return d.headers.location, set
  end

  it("names the cookie __Host-digime_sid: Secure, Path=/, no Domain; a planted plain one is ignored", function()
    local cb, set = start()
    assert.is_truthy(set, "no cookie")
    local sid = set:match("^__Host%-digime_sid=(%w+);")
    assert.is_truthy(sid, set)
    assert.matches("; Path=/;", set, 1, true)
    assert.matches("; Secure", set, 1, true)
    assert.matches("HttpOnly", set, 1, true)
    assert.is_nil(set:lower():find("domain=", 1, true), set)
    -- the callback with the session in a cookie without the prefix (one a sibling subdomain
    -- could plant): not this browser's session
    assert.are.equal(400, get(cb, "digime_sid=" .. sid).status)
    -- with the real cookie: signed in, under a new __Host- session
    local r = get(cb, "__Host-digime_sid=" .. sid)
    assert.are.equal(302, r.status, r.body)
    assert.are.equal("/files", r.headers.location)
    local new_sid = r.headers["set-cookie"]:match("^__Host%-digime_sid=(%w+);")
    assert.is_truthy(new_sid)
    assert.matches("Your digi.me is connected", get("/", "__Host-digime_sid=" .. new_sid).body, 1, true)
    assert.matches("A digi.me example app", get("/", "digime_sid=" .. new_sid).body, 1, true)
  end)
end)
