-- Where the library's files come from (doc/sandbox.md "The library"): the built-in library
-- (13 small files over 2 accounts, awkward names included), --generate COUNT:SIZE[:compression]
-- and --library DIR. Each gives file specs { name, account (id), compression, plain, metadata,
-- raw }, which library.lua compresses and turns into files.
--
--   sources.builtin(accounts, hostile_names) -> specs
--   sources.generated(gen, accounts) -> specs          gen = { count, size, compression }
--   sources.dir(dir, accounts, add_account) -> specs | nil, err
--   sources.raw(mimetype, account_ids, extra?) -> raw metadata

local cjson = require "cjson.safe"
local wire = require "digime.sandbox.wire"
local util = require "digime.sandbox.util"

local type, tostring, pairs, ipairs = type, tostring, pairs, ipairs
local concat, sort = table.concat, table.sort
local format, rep = string.format, string.rep
local math_max = math.max

local _M = {}

local SCHEMA = { standard = "digime", version = "1.0.0" }

-- The built-in library -----------------------------------------------------------------------

local function mapped(account, object_type, count)
  return { objectCount = count, objectType = object_type, serviceGroup = account.group,
           serviceName = account.serviceTypeReference, schema = util.copy(SCHEMA) }
end

-- Raw metadata (a file that is not mapped data).
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
    parts[i] = wire.encode(r)
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
function _M.builtin(accounts, hostile_names)
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
  add("with space.json", A, "gzip", wire.encode{ note = "pushed by an app", list = { 1, 2, 3 } },
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

function _M.generated(gen, accounts)
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

-- The names of the regular files in dir (sorted, metadata.json left out): -> names | nil, err
local function dir_names(dir)
  local p = io.popen("find -L " .. util.sh_quote(dir) .. " -mindepth 1 -maxdepth 1 -type f"
                     .. " -print0 2>/dev/null; echo \"rc=$?\"")
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
  return names
end

-- dir/metadata.json, decoded ({} when there is none): -> table | nil, err
local function dir_metadata(dir)
  local mtext = util.read_file(dir .. "/metadata.json")
  if not mtext then
    return {}
  end
  local m, err = cjson.decode(mtext)
  if type(m) ~= "table" then
    return nil, "--library " .. dir .. "/metadata.json: " .. tostring(err or "an object expected")
  end
  return m
end

-- The account of a file: metadata.json's "account", else the first of its metadata's
-- accounts, else the library's first. -> id | nil, err
local function dir_account_id(name, m, accounts)
  local acc_id = m.account
  if acc_id == nil and type(m.metadata) == "table" and type(m.metadata.accounts) == "table"
     and type(m.metadata.accounts[1]) == "table" then
    acc_id = m.metadata.accounts[1].accountid
  end
  if acc_id ~= nil and type(acc_id) ~= "string" then
    return nil, "--library metadata.json: account of " .. name .. " must be a string"
  end
  return acc_id or accounts[1].id
end

-- The spec of dir/name, with its metadata.json entry m. known: accounts by id, to which
-- add_account(id) adds. -> spec | nil, err
local function dir_spec(dir, name, m, accounts, known, add_account)
  local plain, err = util.read_file(dir .. "/" .. name)
  if not plain then
    return nil, "--library: " .. tostring(err)
  end
  if m ~= nil and type(m) ~= "table" then
    return nil, "--library metadata.json: the entry of " .. name .. " must be an object"
  end
  m = m or {}
  local comp = m.compression
  if comp ~= nil and comp ~= "gzip" and comp ~= "brotli" and comp ~= "none" then
    return nil, "--library metadata.json: compression of " .. name
                .. " must be gzip, brotli or none"
  end
  local acc_id, why = dir_account_id(name, m, accounts)
  if not acc_id then
    return nil, why
  end
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
  return { name = name, account = acc.id, compression = comp, plain = plain,
           metadata = metadata, raw = metadata.mimetype ~= nil and metadata.objectType == nil }
end

-- Every regular file of dir, with dir/metadata.json's entries: -> specs | nil, err
function _M.dir(dir, accounts, add_account)
  local names, err = dir_names(dir)
  if not names then
    return nil, err
  end
  local meta
  meta, err = dir_metadata(dir)
  if not meta then
    return nil, err
  end
  local known = {}
  for _, a in ipairs(accounts) do
    known[a.id] = a
  end
  local specs = {}
  for _, name in ipairs(names) do
    local spec
    spec, err = dir_spec(dir, name, meta[name], accounts, known, add_account)
    if not spec then
      return nil, err
    end
    specs[#specs + 1] = spec
  end
  return specs
end

_M.raw = raw

return _M
