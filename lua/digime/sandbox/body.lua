-- Request bodies read a chunk at a time (pushes, storage uploads): Content-Length and chunked
-- bodies alike, a size limit, an "Expect: 100-continue" answered only once the body is really
-- wanted, and big bodies spilled to a temporary file instead of memory.
--
--   body.continue(req)                       sends "100 Continue" when the client waits for it
--   body.declared(req) -> n | nil            the Content-Length, when the request has one
--   body.receive(req, opts) -> blob | nil, why
--       opts.limit  bytes; a longer body -> nil, "too_large" once it has been read to its end
--                   (discarded), so that a client that sends it all still reads the answer;
--                   more than opts.drain (256 MiB) past the limit -> nil, "too_large_closed"
--                   (the caller answers with "connection: close")
--       opts.spill  bytes kept in memory; past them the body goes to a temporary file
--                   (nil: always in memory)
--       other failures (the client went away, a disk error) -> nil, message
--       blob = { size, sha256 (hex), data = string | nil, path = temp file | nil }
--   body.discard(blob)                       removes a blob's temporary file
--   body.too_large(req, limit) -> bool       a declared length over limit + 1 MiB: answer 413
--                                            at once, with "connection: close", reading nothing
--                                            (a smaller excess: receive() reads and refuses it)
--   body.bytes(blob), body.source(blob)      the bytes, or a chunk source for streamed answers

local core = require "digime.core"
local digest = require "openssl.digest"
local http_headers = require "http.headers"
local util = require "digime.sandbox.util"

local type, tonumber, tostring = type, tonumber, tostring
local concat = table.concat
local math_huge = math.huge

local _M = {}

local TIMEOUT = 60                -- seconds to wait for the next chunk
local DRAIN = 256 * 1024 * 1024   -- bytes read past a limit before giving up on the client

local hex = util.hex

-- "100 Continue", once, when the request asked for it and the body is now wanted.
function _M.continue(req)
  if req.continued then
    return
  end
  req.continued = true
  local e = req.headers["expect"]
  if type(e) == "string" and e:lower():match("^%s*100%-continue%s*$") then
    local h = http_headers.new()
    h:append(":status", "100")
    pcall(req.stream.write_headers, req.stream, h, false, 10)
  end
end

function _M.declared(req)
  local cl = req.headers["content-length"]
  return cl and tonumber(cl:match("^%s*(%d+)%s*$"))
end

-- A declared length this far over the limit is answered at once; a smaller excess is read
-- and thrown away first, so that a client that sends its whole body before reading (many
-- simple clients do) gets the answer rather than a reset connection.
local SLACK = 1024 * 1024

function _M.too_large(req, limit)
  local n = _M.declared(req)
  return n ~= nil and n > limit + SLACK
end

-- A temporary file for a spilled body: -> path, handle | nil, err
local function temp_file()
  local path = os.tmpname()       -- created (mkstemp), empty, ours
  local f, err = io.open(path, "wb")
  if not f then
    os.remove(path)
    return nil, err
  end
  return path, f
end

-- A body being received (rx): its digest, its bytes in memory (parts) or in a temporary file
-- (path, file), and whether it has gone over the limit.

local WRITE_FAILED = "cannot write the body to a temporary file: "

local function drop_file(rx)
  if rx.file then
    rx.file:close()
    os.remove(rx.path)
    rx.file, rx.path = nil, nil
  end
end

-- Keeps a chunk under the limit: in memory, or in the file once the memory passes spill.
-- -> true | nil, why
local function keep(rx, chunk, spill)
  rx.digest:update(chunk)
  if rx.file then
    local ok, werr = rx.file:write(chunk)
    if not ok then
      return nil, WRITE_FAILED .. tostring(werr)
    end
    return true
  end
  rx.parts[#rx.parts + 1] = chunk
  rx.in_memory = rx.in_memory + #chunk
  if spill and rx.in_memory > spill then
    local p, f = temp_file()
    if not p then
      return nil, "cannot make a temporary file: " .. tostring(f)
    end
    rx.path, rx.file = p, f
    local ok, werr = f:write(concat(rx.parts))
    if not ok then
      return nil, WRITE_FAILED .. tostring(werr)
    end
    rx.parts = {}
  end
  return true
end

-- One chunk: kept, or (over the limit) counted and dropped until the drain allowance is
-- spent. -> true | nil, why
local function take(rx, chunk, limit, opts)
  local n = #chunk
  rx.size = rx.size + n
  if rx.over then
    if rx.size > limit + (opts.drain or DRAIN) then
      return nil, "too_large_closed"
    end
  elseif rx.size > limit then
    rx.over = true
    rx.parts = {}
    drop_file(rx)
  elseif n > 0 then
    local ok, why = keep(rx, chunk, opts.spill)
    if not ok then
      return nil, why
    end
  end
  rx.since_gc = rx.since_gc + n
  if rx.since_gc >= 8 * 1024 * 1024 then
    collectgarbage("step", 0)
    rx.since_gc = 0
  end
  return true
end

-- The blob of a body received whole and under the limit: -> blob | nil, err
local function finish(rx)
  local blob = { size = rx.size, sha256 = hex(rx.digest:final()) }
  if rx.file then
    local ok, err = rx.file:close()
    if not ok then
      os.remove(rx.path)
      return nil, WRITE_FAILED .. tostring(err)
    end
    blob.path = rx.path
  else
    blob.data = concat(rx.parts)
  end
  return blob
end

function _M.receive(req, opts)
  local limit = opts.limit or math_huge
  _M.continue(req)
  local rx = { digest = digest.new("sha256"), parts = {}, size = 0, in_memory = 0,
               over = false, since_gc = 0 }
  local function fail(why)
    drop_file(rx)
    return nil, why
  end
  while true do
    local chunk, err = req.stream:get_next_chunk(TIMEOUT)
    if chunk == nil then
      if err ~= nil then
        return fail("the body did not arrive: " .. tostring(err))
      end
      break
    end
    local ok, why = take(rx, chunk, limit, opts)
    if not ok then
      return fail(why)
    end
  end
  req._body = req._body or ""     -- consumed: nothing left for req:body()
  local state = req.stream.state
  if state == "open" or state == "half closed (local)" then
    -- lua-http ends a Content-Length body early, without an error, when the client closes
    return fail("the body ended before its declared length")
  end
  if rx.over then
    return nil, "too_large"
  end
  return finish(rx)
end

function _M.discard(blob)
  if blob and blob.path then
    os.remove(blob.path)
    blob.path = nil
  end
end

-- The bytes of a blob (reads a spilled one back): -> string | nil, err
function _M.bytes(blob)
  if blob.data then
    return blob.data
  end
  return util.read_file(blob.path)
end

-- A chunk source over a blob, for streamed answers (a spilled blob is opened now, so a later
-- delete or replace does not disturb a download under way): -> fn | nil, err
function _M.source(blob, chunk_size)
  chunk_size = chunk_size or 256 * 1024
  if blob.data then
    local data, i = blob.data, 1
    return function()
      if i > #data then
        return nil
      end
      local c = data:sub(i, i + chunk_size - 1)
      i = i + chunk_size
      return c
    end
  end
  local f, err = io.open(blob.path, "rb")
  if not f then
    return nil, err
  end
  return function()
    if not f then
      return nil
    end
    local c = f:read(chunk_size)
    if not c then
      f:close()
      f = nil
    end
    return c
  end
end

_M.sha256_hex = function(s)
  return hex(core.sha256(s))
end

return _M
