-- The user library (doc/sandbox.md "The library"; doc/protocol.md "Reading a library", "The
-- file format"): the files a user's sync produces, their plaintext, compression and metadata,
-- and the accounts they come from. Built once at startup; touched and reset by the control API.
--
--   library.new(cfg) -> lib | nil, err     built once at startup; compressed once at startup
--   lib.files (array, list order), lib.by_name, lib.accounts, lib.big (big.bin, if any)
--   lib:serve(file, key, head) -> response  encrypted to `key` (a digime.key) per request
--   lib:sha256(file), lib:big_sha256(file) -> hex of the plaintext
--   lib:manifest() -> { count, files = { name = sha256 hex } }, lib:manifest_text()
--   lib:touch(name, content?) -> file | nil, err       new content, new updatedDate
--   lib:reset()                                        back to the files as built
--   lib:summary() -> array                             GET /sandbox/library
--   library.pushed_file(name, bytes, metadata, account_ids) -> file (raw, uncompressed)
--
-- The parts live beside it: where the files come from (library_sources.lua: the built-in
-- library, --library DIR, --generate; and --big-file SIZE here), the accounts
-- (library_accounts.lua), compression (compress.lua), the file as served, encrypted
-- (file_format.lua), and each user's view of the library and its sync (library_view.lua).

local core = require "digime.core"
local util = require "digime.sandbox.util"
local accounts_mod = require "digime.sandbox.library_accounts"
local sources = require "digime.sandbox.library_sources"
local compress = require "digime.sandbox.compress"
local file_format = require "digime.sandbox.file_format"

local type, tostring, ipairs, setmetatable = type, tostring, ipairs, setmetatable
local concat = table.concat
local math_max = math.max

local hex, now_ms, copy = util.hex, util.now_ms, util.copy

local _M = {}
local mt = { __index = _M }

local BIG_NAME = "big.bin"

-- Derived fields of a file after its content or metadata changed.
local function refresh(file)
  file.x_metadata = file_format.x_metadata(file)
  if not file.big then
    file.size = #file.plain
    file.sha256 = hex(core.sha256(file.plain))
  end
end

local function snapshot(file)
  return { plain = file.plain, packed = file.packed, sha256 = file.sha256,
           updated = file.updated, metadata = copy(file.metadata), version = file.version }
end

-- The accounts and file specs cfg asks for: -> accounts, specs | nil, err
local function collect(cfg, created)
  local accounts = accounts_mod.base(created)
  local extra = 0
  local function add_account(id)
    extra = extra + 1
    local a = accounts_mod.generic(id, extra, created)
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
    local list, err = sources.dir(cfg.library, accounts, add_account)
    if not list then
      return nil, err
    end
    append(list)
  end
  if cfg.generate then
    append(sources.generated(cfg.generate, accounts))
  end
  if not cfg.library and not cfg.generate then
    append(sources.builtin(accounts, cfg.hostile_names))
  end
  if cfg.partial then
    accounts[#accounts + 1] = accounts_mod.partial(created)
  end
  return accounts, specs
end

local function add_file(self, file)
  refresh(file)
  file.orig = snapshot(file)
  self.files[#self.files + 1] = file
  self.by_name[file.name] = file
end

-- Builds the library from cfg -> lib | nil, err
function _M.new(cfg)
  local accounts, specs = collect(cfg, now_ms() - 30 * 86400000)
  if not accounts then
    return nil, specs
  end
  local ok, err = compress.all(specs)
  if not ok then
    return nil, err
  end

  local self = setmetatable({ files = {}, by_name = {}, accounts = accounts, cfg = cfg }, mt)
  local base = now_ms() - 3600 * 1000
  for i, s in ipairs(specs) do
    if self.by_name[s.name] then
      return nil, "two library files are named " .. s.name
    end
    add_file(self, { name = s.name, account = s.account, plain = s.plain, packed = s.packed,
                     compression = s.compression, metadata = s.metadata, raw = s.raw or false,
                     updated = base + i * 1000, version = 0 })
  end
  if cfg.big_file then
    if self.by_name[BIG_NAME] then
      return nil, "--big-file: the library already has a file named " .. BIG_NAME
    end
    add_file(self, { name = BIG_NAME, account = accounts[1].id, big = true,
                     size = cfg.big_file, version = 0, raw = true,
                     metadata = sources.raw("application/octet-stream", { accounts[1].id }),
                     updated = base + (#specs + 1) * 1000 })
    self.big = self.by_name[BIG_NAME]
  end
  return self
end

-- The response of a file GET (or HEAD, with head true), encrypted to `key`.
function _M.serve(_, file, key, head)
  return file_format.response(file, key, head)
end

-- The hash of big.bin (computed once per version, by streaming its generator).
function _M.big_sha256(_, file)
  return file_format.big_sha256(file)
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
    assert(compress.all({ job }, true))   -- stored: no process while serving
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

-- A file pushed to a user's library: raw metadata, served uncompressed.
function _M.pushed_file(name, bytes, metadata, account_ids)
  local file = { name = name, account = account_ids[1], accounts = account_ids, plain = bytes,
                 packed = bytes, metadata = metadata, raw = true, pushed = true,
                 updated = now_ms(), version = 0 }
  refresh(file)
  return file
end

return _M
