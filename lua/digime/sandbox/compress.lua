-- Compression of the library files (doc/sandbox.md "The library").
--
--   compress.all(jobs, stored?) -> true | nil, err   sets job.packed of each { plain, compression }
--   compress.stored[method](plain) -> stream          gzip / brotli without compression
--
-- Compression happens once, at startup, with the gzip and brotli command-line tools (lua-zlib
-- is not installed and the core only decompresses). A touched file, or every file when a tool
-- is missing, gets a stored encoding written here (gzip stored blocks, brotli uncompressed
-- meta-blocks): valid streams, so no process ever runs while the sandbox serves.

local util = require "digime.sandbox.util"

local tostring, pairs, ipairs = tostring, pairs, ipairs
local concat = table.concat
local byte = string.byte
local math_min = math.min

local _M = {}

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
_M.stored = STORED     -- method -> function(plain) -> stream

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

-- The tools over batches of files in a temporary directory: -> true | nil, err
local function with_tools(by)
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
        if not run("cd " .. util.sh_quote(dir) .. " && " .. tool.cmd .. " " .. concat(args, " ")
                   .. " >/dev/null 2>&1") then
          error(method .. " failed", 0)
        end
        for i = first, math_min(#list, first + 499) do
          list[i].packed = assert(util.read_file(dir .. "/f" .. i .. tool.suffix))
          os.remove(dir .. "/f" .. i .. tool.suffix)
          os.remove(dir .. "/f" .. i)
        end
      end
    end
  end)
  run("rm -rf -- " .. util.sh_quote(dir))
  if not ok then
    return nil, tostring(err)
  end
  return true
end

-- Sets job.packed for every job { plain =, compression = }, with the command-line tools
-- (stored = true: the stored encodings) -> true | nil, err
function _M.all(jobs, stored)
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
  return with_tools(by)
end

return _M
