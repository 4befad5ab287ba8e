-- The user library (doc/sandbox.md "The library"; doc/protocol.md "Reading a library", "The
-- file format"): the files a user's
-- sync produces, their plaintext, compression and metadata, the accounts they come from, the
-- progression of a sync, and the encryption of a file per request.
--
--   library.new(cfg) -> lib | nil, err     built once at startup; compressed once at startup
--   lib.files (array, list order), lib.by_name, lib.accounts
--   lib:serve(file, key, head) -> response  encrypted to `key` (a digime.key) per request;
--                                           big.bin as a stream, never in memory
--   lib:manifest() -> { count, files = { name = sha256 hex } }
--   lib:touch(name, content?) -> file | nil, err       new content, new updatedDate
--   lib:reset()                                        back to the files as built
--   library.start_sync(app, user_id, instant), library.sync_answer(app, user_id) -> body text
--
-- Each user sees the library through its own record (state.users[id]): accounts it deleted
-- (user.removed) and their files are gone, files it pushed (user.pushed) come after the
-- library's, revoked accounts (user.revoked) need authorization again, reauthorized ones
-- (user.reauthorized) no longer do:
--   library.user_files(app, user) -> array      library.user_file(app, user, name) -> file
--   library.user_accounts(app, user) -> array   library.account_records_of(app, user) -> array
--   library.pushed_file(name, bytes, metadata, account_ids) -> file (raw, uncompressed)
--
-- Sources of files: the built-in library (13 small files over 2 accounts, awkward names
-- included), --library DIR, --generate COUNT:SIZE[:compression], and --big-file SIZE (big.bin).
--
-- Compression happens once, at startup, with the gzip and brotli command-line tools (lua-zlib
-- is not installed and the core only decompresses). A touched file, or every file when a tool
-- is missing, gets a stored encoding written here (gzip stored blocks, brotli uncompressed
-- meta-blocks): valid streams, so no process ever runs while the sandbox serves.
--
-- Encryption uses luaossl (AES-256-CBC, PKCS#7) and the core's RSA-OAEP key wrap, on purpose
-- not the core's file encryptor: a bug in the core's file cipher must not be mirrored by the
-- server the SDK is tested against.
--
-- Sync progression (per user): pending -> running with the first half of the files ->
-- running with all of them -> completed (partial with --partial). A step takes at least
-- --sync-pace seconds and a poll advances at most one step, so every poller sees every
-- running step in order, however slowly it polls. --sync-pace 0: completed at once. Files can
-- be fetched at any time, whatever the sync shows: the library exists before the sync.

local cjson = require "cjson.safe"
local core = require "digime.core"
local cipher = require "openssl.cipher"
local digest = require "openssl.digest"
local wire = require "digime.sandbox.wire"
local util = require "digime.sandbox.util"

local type, tostring, pairs, ipairs = type, tostring, pairs, ipairs
local concat, sort = table.concat, table.sort
local byte, format, rep = string.byte, string.format, string.rep
local math_floor, math_ceil, math_max, math_min = math.floor, math.ceil, math.max, math.min

local _M = {}
local mt = { __index = _M }

local BIG_NAME = "big.bin"
local CHUNK = 256 * 1024          -- bytes of plaintext per streamed chunk
local SCHEMA = { standard = "digime", version = "1.0.0" }
local RETRY_AFTER = 60            -- seconds, in the partial account's error

-- Helpers -----------------------------------------------------------------------------------

local hex, now_ms, copy, read_all = util.hex, util.now_ms, util.copy, util.read_file
local encode = wire.encode

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function write_all(path, data)
  local f, err = io.open(path, "wb")
  if not f then
    return nil, err
  end
  f:write(data)
  f:close()
  return true
end

local function run(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

-- "Tue, 15 Nov 1994 08:12:31 GMT" of a millisecond time.
function _M.http_date(ms)
  return os.date("!%a, %d %b %Y %H:%M:%S GMT", math_floor(ms / 1000))
end

-- Accounts ----------------------------------------------------------------------------------

-- The two accounts of every library, and the one --partial adds. Ids look like the API's
-- ("<serviceTypeId>_<reference>").
local BASE_ACCOUNTS = {
  { id = "40_SbInstagram01", serviceGroupId = 1, serviceGroupName = "Social",
    serviceTypeId = 40, serviceTypeName = "Instagram", serviceTypeReference = "instagram",
    sourceId = 420, username = "sandbox.instagram", group = "social" },
  { id = "24_SbFitbit01", serviceGroupId = 4, serviceGroupName = "Health & Fitness",
    serviceTypeId = 24, serviceTypeName = "Fitbit", serviceTypeReference = "fitbit",
    sourceId = 183, username = "sandbox.fitbit", group = "health" },
}
local PARTIAL_ACCOUNT = {
  id = "19_SbSpotify01", serviceGroupId = 5, serviceGroupName = "Entertainment",
  serviceTypeId = 19, serviceTypeName = "Spotify", serviceTypeReference = "spotify",
  sourceId = 312, username = "sandbox.spotify", group = "entertainment", partial = true,
}

local function make_account(spec, created)
  local a = copy(spec)
  a.reference = core.b64url_encode(core.sha256("account " .. a.id)):gsub("[^%w]", ""):sub(1, 32)
  a.type = "USER"
  a.createdDate = created
  a.updatedDate = created
  a.sample = false
  a.providerFavIcon = "https://sandbox.invalid/icons/" .. (a.serviceTypeReference or "app") .. ".png"
  a.providerLogo = "https://sandbox.invalid/logos/" .. (a.serviceTypeReference or "app") .. ".png"
  return a
end

-- An account only named by a --library metadata.json.
local function generic_account(id, n)
  return { id = id, serviceGroupId = 99, serviceGroupName = "Imported", serviceTypeId = 900 + n,
           serviceTypeName = "Sandbox " .. id, serviceTypeReference = "sandbox" .. n,
           sourceId = 9000 + n, group = "imported" }
end

-- The wire shape of an account (doc/protocol.md "Reading a library"); needs_auth: its source authorization is gone.
local function account_record(a, needs_auth)
  local r = {}
  for _, k in ipairs{ "id", "reference", "type", "createdDate", "updatedDate", "serviceGroupId",
                      "serviceGroupName", "serviceTypeId", "serviceTypeName",
                      "serviceTypeReference", "sourceId", "username", "providerFavIcon",
                      "providerLogo", "sample" } do
    r[k] = a[k]
  end
  if needs_auth == nil then
    needs_auth = a.partial
  end
  r.accessTokenStatus = { authorized = not needs_auth }
  if needs_auth then
    r.accessTokenStatus.expiresAt = a.createdDate
  end
  return r
end

-- The built-in library --------------------------------------------------------------------

local function mapped(account, object_type, count)
  return { objectCount = count, objectType = object_type, serviceGroup = account.group,
           serviceName = account.serviceTypeReference, schema = copy(SCHEMA) }
end

local function raw(mimetype, account_ids, extra)
  local accounts = {}
  for i, id in ipairs(account_ids) do
    accounts[i] = { accountid = id }
  end
  local m = { mimetype = mimetype, accounts = accounts }
  for k, v in pairs(extra or {}) do
    m[k] = v
  end
  return m
end

local function json_array(records)
  local parts = {}
  for i, r in ipairs(records) do
    parts[i] = encode(r)
  end
  return "[" .. concat(parts, ",") .. "]", #records
end

local function posts(prefix, n, kind)
  local out = {}
  for i = 1, n do
    out[i] = { id = prefix .. "-" .. i, type = kind, createdtime = 1690000000000 + i * 86400000,
               caption = kind .. " number " .. i .. " from the digi.me sandbox" }
  end
  return out
end

-- The two built-in names that are also the names of an object's inherited members in
-- JavaScript (and Lua metatable fields): with --hostile-names the files get them, to test
-- clients that keep files in a plain table; by default they have names a real library has.
local ORDINARY_NAMES = { constructor = "instagram_comments.json", __proto__ = "pushed_note.txt" }

-- { name, account index, compression, text, raw metadata? , objectType }
local function builtin_specs(accounts, hostile_names)
  local A, B = accounts[1], accounts[2]
  local specs = {}
  local function add(name, acc, comp, records_or_text, object_type, raw_meta)
    if not hostile_names then name = ORDINARY_NAMES[name] or name end
    local text, count
    if type(records_or_text) == "table" then
      text, count = json_array(records_or_text)
    else
      text, count = records_or_text, 1
    end
    specs[#specs + 1] = {
      name = name, account = acc.id, compression = comp, plain = text,
      metadata = raw_meta or mapped(acc, object_type, count), raw = raw_meta ~= nil,
    }
  end
  add("instagram_posts.json", A, "gzip", posts("ig-post", 5, "post"), "post")
  add("instagram_media.json", A, "brotli", posts("ig-media", 4, "media"), "media")
  add("instagram_profile.json", A, nil, { { id = "ig-profile", username = A.username,
      fullname = "Sandbox Person", bio = "Lives on loopback." } }, "profile")
  add("constructor", A, "gzip", posts("ig-comment", 3, "comment"), "comment")
  add("__proto__", A, "brotli", "A pushed note.\n", nil,
      raw("text/plain", { A.id }, { reference = { "proto-note" }, tags = { "sandbox" } }))
  add("a.b.c.json", A, "none", posts("ig-like", 2, "like"), "like")
  add("with space.json", A, "gzip", encode{ note = "pushed by an app", list = { 1, 2, 3 } },
      nil, raw("application/json", { A.id }, { appid = "sandbox-app", created = 1690000000000 }))
  add("\u{fc}n\u{ef}.json", B, "brotli", {
      { id = "fb-ünï", text = "Grüße, ünïcödé ✓ 日本語" } }, "note")
  add("fitbit_activity.json", B, "gzip", posts("fb-activity", 6, "activity"), "activity")
  add("fitbit_sleep.json", B, "brotli", posts("fb-sleep", 4, "sleep"), "sleep")
  add("fitbit_profile.json", B, nil, { { id = "fb-profile", username = B.username,
      height = 180, weight = 75 } }, "profile")
  add("notes.txt", B, nil, "Plain text, not compressed, shared by both accounts.\n"
      .. rep("The quick brown fox jumps over the lazy dog. ", 20) .. "\n", nil,
      raw("text/plain", { A.id, B.id }))
  add("empty.txt", B, nil, "", nil, raw("text/plain", { B.id }))
  return specs
end

-- Generated files ---------------------------------------------------------------------------

local WORDS = {
  "data", "digi", "me", "sandbox", "lorem", "ipsum", "dolor", "sit", "amet", "walk", "photo",
  "sleep", "heart", "rate", "song", "album", "post", "like", "comment", "share", "run", "city",
  "river", "mountain", "coffee", "tea", "friend", "family", "work", "holiday", "sun", "rain",
  "snow", "cloud", "green", "blue", "red", "yellow", "quiet", "loud", "fast", "slow", "early",
  "late", "morning", "evening", "night", "week", "month", "year", "north", "south", "east",
  "west", "apple", "bread", "cheese", "garden", "library", "market", "museum", "park", "station",
}

-- A deterministic generator (xorshift64*), the same on every run and machine.
local function rng(seed)
  local x = seed ~ 0x2545F4914F6CDD1D
  if x == 0 then
    x = 1
  end
  return function(n)
    x = x ~ (x >> 12)
    x = x ~ (x << 25)
    x = x ~ (x >> 27)
    local v = (x * 0x2545F4914F6CDD1D) >> 11
    return v % n
  end
end

-- A JSON array of records, exactly `size` bytes (whitespace pads the end): -> text, records
local function generated_text(index, size)
  if size < 2 then
    return rep(" ", size), 0
  end
  local r = rng(index * 1000003 + size)
  local parts, len, n = { "[" }, 1, 0
  while true do
    local words = {}
    for i = 1, 3 + r(10) do
      words[i] = WORDS[1 + r(#WORDS)]
    end
    local rec = format('{"id":"g%d-%d","createdDate":%d,"value":%d,"text":"%s"}', index, n + 1,
                       1690000000000 + n * 60000, r(100000), concat(words, " "))
    local sep = n > 0 and 1 or 0
    if len + sep + #rec + 1 > size then
      break
    end
    if sep == 1 then
      parts[#parts + 1] = ","
    end
    parts[#parts + 1] = rec
    len = len + sep + #rec
    n = n + 1
  end
  parts[#parts + 1] = rep(" ", size - len - 1)
  parts[#parts + 1] = "]"
  return concat(parts), n
end

local MIXED = { "gzip", "brotli", "none" }

local function generated_specs(gen, accounts)
  local specs = {}
  local width = math_max(4, #tostring(gen.count))
  for i = 1, gen.count do
    local acc = accounts[(i - 1) % 2 + 1]
    local comp = gen.compression
    if comp == "mixed" then
      comp = MIXED[(i - 1) % 3 + 1]
    end
    if comp == "none" then
      comp = nil   -- no "compression" in x-metadata, as for most uncompressed files
    end
    local text, n = generated_text(i, gen.size)
    specs[i] = { name = format("gen-%0" .. width .. "d.json", i), account = acc.id,
                 compression = comp, plain = text,
                 metadata = mapped(acc, acc.group == "social" and "post" or "activity", n) }
  end
  return specs
end

-- --library DIR --------------------------------------------------------------------------

local MIME = { json = "application/json", txt = "text/plain", csv = "text/csv",
               xml = "application/xml", html = "text/html", pdf = "application/pdf",
               png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg", gif = "image/gif" }

local function dir_specs(dir, accounts, add_account)
  local p = io.popen("find -L " .. sh_quote(dir) .. " -mindepth 1 -maxdepth 1 -type f -print0"
                     .. " 2>/dev/null; echo \"rc=$?\"")
  local out = p:read("a")
  p:close()
  local rc = out:match("rc=(%d+)%s*$")
  if rc ~= "0" then
    return nil, "--library " .. dir .. ": not a readable directory"
  end
  out = out:gsub("rc=%d+%s*$", "")
  local names = {}
  for path in out:gmatch("([^%z]+)%z") do
    local name = path:match("([^/]+)$")
    if name ~= "metadata.json" then
      names[#names + 1] = name
    end
  end
  sort(names)

  local meta = {}
  local mtext = read_all(dir .. "/metadata.json")
  if mtext then
    local m, err = cjson.decode(mtext)
    if type(m) ~= "table" then
      return nil, "--library " .. dir .. "/metadata.json: " .. tostring(err or "an object expected")
    end
    meta = m
  end

  local known = {}
  for _, a in ipairs(accounts) do
    known[a.id] = a
  end
  local specs = {}
  for _, name in ipairs(names) do
    local plain, err = read_all(dir .. "/" .. name)
    if not plain then
      return nil, "--library: " .. tostring(err)
    end
    local m = meta[name]
    if m ~= nil and type(m) ~= "table" then
      return nil, "--library metadata.json: the entry of " .. name .. " must be an object"
    end
    m = m or {}
    local comp = m.compression
    if comp ~= nil and comp ~= "gzip" and comp ~= "brotli" and comp ~= "none" then
      return nil, "--library metadata.json: compression of " .. name
                  .. " must be gzip, brotli or none"
    end
    local acc_id = m.account
    if acc_id == nil and type(m.metadata) == "table" and type(m.metadata.accounts) == "table"
       and type(m.metadata.accounts[1]) == "table" then
      acc_id = m.metadata.accounts[1].accountid
    end
    if acc_id ~= nil and type(acc_id) ~= "string" then
      return nil, "--library metadata.json: account of " .. name .. " must be a string"
    end
    acc_id = acc_id or accounts[1].id
    local acc = known[acc_id]
    if not acc then
      acc = add_account(acc_id)
      known[acc_id] = acc
    end
    local metadata = m.metadata
    if metadata ~= nil and type(metadata) ~= "table" then
      return nil, "--library metadata.json: metadata of " .. name .. " must be an object"
    end
    local ext = name:match("%.([%w]+)$")
    metadata = metadata or raw(MIME[ext and ext:lower() or ""] or "application/octet-stream",
                               { acc.id })
    specs[#specs + 1] = { name = name, account = acc.id, compression = comp, plain = plain,
                          metadata = metadata, raw = metadata.mimetype ~= nil
                                                      and metadata.objectType == nil }
  end
  return specs
end

-- Compression -------------------------------------------------------------------------------

-- Stored (uncompressed) encodings, written here: valid gzip (deflate stored blocks) and brotli
-- (uncompressed meta-blocks) streams that any decoder must read. Used for touched files, so
-- nothing runs a process once the sandbox serves, and at startup when a tool is missing.
local CRC_TABLE = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    c = (c & 1) == 1 and (0xEDB88320 ~ (c >> 1)) or (c >> 1)
  end
  CRC_TABLE[i] = c
end

local function crc32(s)
  local crc = 0xFFFFFFFF
  for i = 1, #s, 4096 do
    local bytes = { byte(s, i, math_min(#s, i + 4095)) }
    for j = 1, #bytes do
      crc = CRC_TABLE[(crc ~ bytes[j]) & 0xFF] ~ (crc >> 8)
    end
  end
  return crc ~ 0xFFFFFFFF
end

local function le32(n)
  return string.pack("<I4", n & 0xFFFFFFFF)
end

local function gzip_stored(s)
  local out = { "\31\139\8\0\0\0\0\0\0\255" }
  local n = #s
  local i = 1
  repeat
    local len = math_min(65535, n - i + 1)
    local last = i + len > n
    out[#out + 1] = string.pack("<BI2I2", last and 1 or 0, len, len ~ 0xFFFF)
    out[#out + 1] = s:sub(i, i + len - 1)
    i = i + len
  until last
  out[#out + 1] = le32(crc32(s))
  out[#out + 1] = le32(n)
  return concat(out)
end

local function brotli_stored(s)
  if s == "" then
    return "\6"              -- WBITS 16, ISLAST, ISLASTEMPTY
  end
  local out = {}
  local i, first = 1, true
  while i <= #s do
    local len = math_min(32768, #s - i + 1)
    local v
    if first then             -- WBITS 16 (0), ISLAST 0, MNIBBLES 4 (00), MLEN-1, ISUNCOMPRESSED
      v = ((len - 1) << 4) | (1 << 20)
    else
      v = ((len - 1) << 3) | (1 << 19)
    end
    first = false
    out[#out + 1] = string.pack("<I3", v)
    out[#out + 1] = s:sub(i, i + len - 1)
    i = i + len
  end
  out[#out + 1] = "\3"       -- ISLAST, ISLASTEMPTY
  return concat(out)
end

local STORED = { gzip = gzip_stored, brotli = brotli_stored }
_M.stored = STORED

local TOOLS = {
  gzip = { cmd = "gzip -n -k -6 --", suffix = ".gz" },
  brotli = { cmd = "brotli -k -q 6 --", suffix = ".br" },
}

local function have_tool(name)
  if os.getenv("DIGIME_SANDBOX_NO_TOOLS") then   -- tests of the fallback
    return false
  end
  return run("command -v " .. name .. " >/dev/null 2>&1")
end

-- Sets job.packed for every job { plain =, compression = }, with the command-line tools
-- (stored = true: the stored encodings) -> true | nil, err
local function compress_all(jobs, stored)
  local by = { gzip = {}, brotli = {} }
  for _, j in ipairs(jobs) do
    local list = by[j.compression]
    if not list then
      j.packed = j.plain
    elseif stored then
      j.packed = STORED[j.compression](j.plain)
    else
      list[#list + 1] = j
    end
  end
  for method, list in pairs(by) do
    if #list > 0 and not have_tool(method) then
      io.stderr:write("digime-sandbox: no ", method, " command; ", method,
                      " files are stored uncompressed in the ", method, " format\n")
      for _, j in ipairs(list) do
        j.packed = STORED[method](j.plain)
      end
      by[method] = {}
    end
  end
  if #by.gzip == 0 and #by.brotli == 0 then
    return true
  end
  local p = io.popen("mktemp -d 2>/dev/null")
  local dir = p and p:read("l")
  if p then
    p:close()
  end
  if not dir or dir == "" then
    return nil, "cannot make a temporary directory (mktemp -d)"
  end
  local ok, err = pcall(function()
    for method, list in pairs(by) do
      local tool = TOOLS[method]
      for first = 1, #list, 500 do
        local args = {}
        for i = first, math_min(#list, first + 499) do
          local f = "f" .. i
          assert(write_all(dir .. "/" .. f, list[i].plain))
          args[#args + 1] = f
        end
        if not run("cd " .. sh_quote(dir) .. " && " .. tool.cmd .. " " .. concat(args, " ")
                   .. " >/dev/null 2>&1") then
          error(method .. " failed", 0)
        end
        for i = first, math_min(#list, first + 499) do
          list[i].packed = assert(read_all(dir .. "/f" .. i .. tool.suffix))
          os.remove(dir .. "/f" .. i .. tool.suffix)
          os.remove(dir .. "/f" .. i)
        end
      end
    end
  end)
  run("rm -rf -- " .. sh_quote(dir))
  if not ok then
    return nil, tostring(err)
  end
  return true
end

-- Files -------------------------------------------------------------------------------------

local function x_metadata(file)
  local v = { metadata = file.metadata }
  if file.compression then
    v.compression = file.compression
  end
  if file.pushed then
    -- its metadata marks arrays that may be empty (accounts: [])
    return core.b64url_encode(wire.doc(v))
  end
  return core.b64url_encode(encode(v))
end

-- Derived fields of a file after its content or metadata changed.
local function refresh(file)
  file.x_metadata = x_metadata(file)
  if not file.big then
    file.size = #file.plain
    file.sha256 = hex(core.sha256(file.plain))
  end
end

local function snapshot(file)
  return { plain = file.plain, packed = file.packed, sha256 = file.sha256,
           updated = file.updated, metadata = copy(file.metadata), version = file.version }
end

-- big.bin: its plaintext is the AES-256-CTR keystream of a key derived from its size and
-- version, so the served bytes and the manifest hash come from the same generator.
local ZEROS = rep("\0", CHUNK)

local function big_source(file)
  local key = core.sha256("digime-sandbox big.bin " .. file.size .. " v" .. file.version)
  local ctr = cipher.new("aes-256-ctr"):encrypt(key, rep("\0", 16))
  local left = file.size
  return function()
    if left <= 0 then
      return nil
    end
    local n = math_min(left, CHUNK)
    left = left - n
    return ctr:update(n == CHUNK and ZEROS or ZEROS:sub(1, n))
  end
end

-- Builds the library from cfg -> lib | nil, err
function _M.new(cfg)
  local created = now_ms() - 30 * 86400000
  local accounts = {}
  for i, spec in ipairs(BASE_ACCOUNTS) do
    accounts[i] = make_account(spec, created)
  end
  local extra = 0
  local function add_account(id)
    extra = extra + 1
    local a = make_account(generic_account(id, extra), created)
    accounts[#accounts + 1] = a
    return a
  end

  local specs = {}
  local function append(list)
    for _, s in ipairs(list) do
      specs[#specs + 1] = s
    end
  end
  if cfg.library then
    local list, err = dir_specs(cfg.library, accounts, add_account)
    if not list then
      return nil, err
    end
    append(list)
  end
  if cfg.generate then
    append(generated_specs(cfg.generate, accounts))
  end
  if not cfg.library and not cfg.generate then
    append(builtin_specs(accounts, cfg.hostile_names))
  end
  if cfg.partial then
    local a = make_account(PARTIAL_ACCOUNT, created)
    accounts[#accounts + 1] = a
  end

  local ok, err = compress_all(specs)
  if not ok then
    return nil, err
  end

  local self = setmetatable({ files = {}, by_name = {}, accounts = accounts, cfg = cfg }, mt)
  local base = now_ms() - 3600 * 1000
  for i, s in ipairs(specs) do
    if self.by_name[s.name] then
      return nil, "two library files are named " .. s.name
    end
    local comp = s.compression
    local file = { name = s.name, account = s.account, plain = s.plain, packed = s.packed,
                   compression = comp, metadata = s.metadata, raw = s.raw or false,
                   updated = base + i * 1000, version = 0 }
    refresh(file)
    file.orig = snapshot(file)
    self.files[#self.files + 1] = file
    self.by_name[s.name] = file
  end
  if cfg.big_file then
    if self.by_name[BIG_NAME] then
      return nil, "--big-file: the library already has a file named " .. BIG_NAME
    end
    local file = { name = BIG_NAME, account = accounts[1].id, big = true, size = cfg.big_file,
                   version = 0, raw = true,
                   metadata = raw("application/octet-stream", { accounts[1].id }),
                   updated = base + (#specs + 1) * 1000 }
    refresh(file)
    file.orig = snapshot(file)
    self.files[#self.files + 1] = file
    self.by_name[BIG_NAME] = file
    self.big = file
  end
  return self
end

-- The hash of big.bin, computed by streaming its generator (once per version). Inside a
-- cqueues coroutine it yields between chunks, and callers that arrive meanwhile wait for the
-- computation under way instead of starting their own.
function _M:big_sha256(file)
  local cq = package.loaded["cqueues"]
  local inside = cq ~= nil and select(2, cq.running()) == true
  while not file.sha256 and file.hashing and inside do
    cq.sleep(0.01)
  end
  if file.sha256 then
    return file.sha256
  end
  local job = { version = file.version }
  file.hashing = job
  local d = digest.new("sha256")
  local n = 0
  for chunk in big_source(file) do
    d:update(chunk)
    n = n + 1
    if inside and n % 8 == 0 then
      cq.sleep(0)
      if file.hashing ~= job then
        -- touched, reset or finished elsewhere meanwhile
        return self:big_sha256(file)
      end
    end
  end
  local h = hex(d:final())
  if file.hashing == job and file.version == job.version then
    file.hashing = nil
    file.sha256 = h
    if job.version == file.orig.version then
      file.orig.sha256 = h
    end
  end
  return h
end

function _M:sha256(file)
  if file.big then
    return self:big_sha256(file)
  end
  return file.sha256
end

-- { count, files = { name = sha256 hex } }
function _M:manifest()
  local files = {}
  for _, f in ipairs(self.files) do
    files[f.name] = self:sha256(f)
  end
  return { count = #self.files, files = files }
end

-- "sha256  name" lines, in list order (sha256sum's format).
function _M:manifest_text()
  local lines = {}
  for i, f in ipairs(self.files) do
    lines[i] = self:sha256(f) .. "  " .. f.name .. "\n"
  end
  return concat(lines)
end

-- A file list entry (doc/protocol.md "Reading a library").
function _M.list_entry(file)
  local e = { name = file.name, updatedDate = file.updated }
  local m = file.metadata
  if not file.raw then
    e.schema = m.schema
    e.serviceGroup = m.serviceGroup
    e.serviceName = m.serviceName
    e.objectCount = m.objectCount
    e.objectType = m.objectType
  end
  return e
end

-- Touching -------------------------------------------------------------------------------

-- The next content of a touched file: a JSON array gains a first record, a JSON object a
-- first key, anything else a line.
local function touched_text(plain, version)
  local mark = '{"sandboxTouch":' .. version .. '}'
  local lead, body = plain:match("^(%s*)(.*)$")
  if body:match("^%[%s*%]%s*$") then
    return lead .. "[" .. mark .. "]", 1
  elseif body:match("^%[.*%]%s*$") then
    return lead .. "[" .. mark .. "," .. body:sub(2), 1
  elseif body:match("^{%s*}%s*$") then
    return lead .. mark
  elseif body:match("^{.*}%s*$") then
    return lead .. '{"sandboxTouch":' .. version .. "," .. body:sub(2)
  end
  return plain .. "touched by the sandbox (" .. version .. ")\n"
end

-- New content (given, or derived from the current one) and a later updatedDate.
-- -> file | nil, err
function _M:touch(name, content)
  local file = self.by_name[name]
  if not file then
    return nil, "no such file: " .. tostring(name)
  end
  local version = file.version + 1
  if file.big then
    if content ~= nil then
      return nil, BIG_NAME .. " is generated; it takes no content"
    end
    file.sha256, file.hashing = nil, nil
  else
    local plain, added = content, nil
    if plain == nil then
      plain, added = touched_text(file.plain, version)
    end
    local job = { plain = plain, compression = file.compression }
    assert(compress_all({ job }, true))   -- stored: no process while serving
    file.plain, file.packed = plain, job.packed
    if added and not file.raw and type(file.metadata.objectCount) == "number" then
      file.metadata = copy(file.metadata)
      file.metadata.objectCount = file.metadata.objectCount + added
    end
  end
  file.version = version
  file.updated = math_max(now_ms(), file.updated + 1)
  refresh(file)
  return file
end

-- Back to the library as built.
function _M:reset()
  for _, f in ipairs(self.files) do
    local o = f.orig
    f.plain, f.packed, f.updated, f.version = o.plain, o.packed, o.updated, o.version
    f.metadata = copy(o.metadata)
    if f.big then
      f.hashing = nil
      f.sha256 = o.sha256
    end
    refresh(f)
    if not f.big then
      f.sha256 = o.sha256
    end
  end
end

-- Serving ------------------------------------------------------------------------------------

-- The length of a file as served to `key` (doc/protocol.md "The file format").
function _M.served_length(file, key)
  local n = file.big and file.size or #file.packed
  return key:size() + 16 + (n // 16 + 1) * 16
end

-- The response of a file GET (or HEAD, with head true), encrypted to `key`: a fresh AES key
-- and IV per request, wrapped with RSA-OAEP (SHA-1) by the core.
function _M.serve(_, file, key, head)
  local headers = {
    ["content-type"] = "application/octet-stream",
    ["x-metadata"] = file.x_metadata,
    ["last-modified"] = _M.http_date(file.updated),
  }
  local length = _M.served_length(file, key)
  if head then
    return { status = 200, headers = headers, body = "", content_length = length }
  end
  local aes_key, iv = core.random_bytes(32), core.random_bytes(16)
  local prefix = key:oaep_encrypt(aes_key) .. iv
  local enc = cipher.new("aes-256-cbc"):encrypt(aes_key, iv)
  if not file.big then
    return { status = 200, headers = headers, body = prefix .. enc:final(file.packed) }
  end
  -- big.bin: generated, encrypted and written a chunk at a time.
  local source = big_source(file)
  local stage = 0
  local function next_chunk()
    if stage == 0 then
      stage = 1
      return prefix
    elseif stage == 1 then
      local plain = source()
      if plain then
        return enc:update(plain)
      end
      stage = 2
      return enc:final()
    end
    return nil
  end
  return { status = 200, headers = headers, stream = next_chunk, content_length = length }
end

-- Accounts as the API lists them.
function _M:account_records()
  local list = {}
  for i, a in ipairs(self.accounts) do
    list[i] = account_record(a)
  end
  return list
end

-- Summary for GET /sandbox/library.
function _M:summary()
  local list = {}
  for i, f in ipairs(self.files) do
    list[i] = { name = f.name, size = f.size, compression = f.compression or "none",
                packed_size = f.packed and #f.packed or nil, updatedDate = f.updated,
                account = f.account, version = f.version, raw = f.raw }
  end
  return list
end

-- Each user's view ---------------------------------------------------------------------------

-- Does this account of this user need its source authorized again?
function _M.needs_auth(user, a)
  if user and user.revoked and user.revoked[a.id] then
    return true
  end
  return a.partial == true and not (user and user.reauthorized and user.reauthorized[a.id])
end

local function removed(user, account_id)
  return user ~= nil and user.removed ~= nil and user.removed[account_id] == true
end

-- The library's accounts this user still has.
function _M.user_accounts(app, user)
  local list = {}
  for _, a in ipairs(app.library.accounts) do
    if not removed(user, a.id) then
      list[#list + 1] = a
    end
  end
  return list
end

function _M.account_records_of(app, user)
  local list = {}
  for i, a in ipairs(_M.user_accounts(app, user)) do
    list[i] = account_record(a, _M.needs_auth(user, a))
  end
  return list
end

-- The library's files minus those of removed accounts, then the user's pushed files.
function _M.user_files(app, user)
  local lib = app.library
  if not user or (not user.removed and not user.pushed) then
    return lib.files
  end
  local list = {}
  for _, f in ipairs(lib.files) do
    if not removed(user, f.account) then
      list[#list + 1] = f
    end
  end
  for _, f in ipairs(user.pushed or {}) do
    list[#list + 1] = f
  end
  return list
end

function _M.user_file(app, user, name)
  local f = user and user.pushed_by_name and user.pushed_by_name[name]
  if f then
    return f
  end
  f = app.library.by_name[name]
  if f and not removed(user, f.account) then
    return f
  end
  return nil
end

-- A file pushed to a user's library: raw metadata, served uncompressed.
function _M.pushed_file(name, bytes, metadata, account_ids)
  local file = { name = name, account = account_ids[1], accounts = account_ids, plain = bytes,
                 packed = bytes, metadata = metadata, raw = true, pushed = true,
                 updated = now_ms(), version = 0 }
  refresh(file)
  return file
end

-- Sync progression ----------------------------------------------------------------------------

-- (Re)starts a user's sync: pending now (or completed at once when instant or pace 0).
function _M.start_sync(app, user_id, instant)
  local pace = app.cfg.sync_pace or 0
  local sync = { step = 0, at = core.monotonic() }
  if instant or pace <= 0 then
    sync.step = 3
  end
  app.state.syncs[user_id] = sync
  return sync
end

-- Advances a sync by at most one step, when its pace allows: -> step (0..3)
local function advance(app, sync)
  local pace = app.cfg.sync_pace or 0
  local now = core.monotonic()
  if sync.step < 3 and now - sync.at >= pace then
    sync.step = sync.step + 1
    sync.at = now
  end
  return sync.step
end

-- The body of GET permission-access/query/{sessionKey} for a user, as JSON text.
function _M.sync_answer(app, user_id)
  local user = app.state.users[user_id]
  local files, accounts = _M.user_files(app, user), _M.user_accounts(app, user)
  local sync = app.state.syncs[user_id] or _M.start_sync(app, user_id)
  local step = advance(app, sync)
  if step == 0 then
    return encode{ status = { state = "pending" } }
  end
  local done = step >= 3
  local details, any_partial = {}, false
  for _, a in ipairs(accounts) do
    if not done then
      details[a.id] = { state = "running" }
    elseif _M.needs_auth(user, a) then
      any_partial = true
      details[a.id] = { state = "partial", error = {
        code = "ServiceAuthorizationError", statusCode = 511,
        message = "Service authorization required", reauth = true,
        retryAfter = RETRY_AFTER } }
    else
      details[a.id] = { state = "completed" }
    end
  end
  local state = (not done and "running") or (any_partial and "partial") or "completed"
  local n = #files
  local visible = step == 1 and math_ceil(n / 2) or n
  local list = {}
  for i = 1, visible do
    list[i] = _M.list_entry(files[i])
  end
  local body = { status = { state = state, details = details } }
  if #list == 0 then
    -- cjson would write an empty table as {}
    local text = encode(body)
    return text:sub(1, -2) .. ',"fileList":[]}'
  end
  body.fileList = list
  return encode(body)
end

return _M
