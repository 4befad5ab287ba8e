--- Request bodies from the caller's data (push_data, upload_file_to_storage): a string, a
-- file handle or a reader function, read in chunks, sent as a streamed body, read again from
-- its start when an attempt must be repeated and it can be.
local errors = require "digime.errors"
local scheduler = require "digime.scheduler"

local type, pcall, tostring = type, pcall, tostring
local sub = string.sub

local _M = {}

local function invalid(field, problem)
  return errors.validation(field, problem)
end

-- Bytes taken from a string or read from a file handle at a time: with the engine's 1 MiB send
-- buffer, about what a streamed body holds in memory (a reader function picks its own size).
local CHUNK = 256 * 1024

local function not_rewindable(field, what)
  return errors.sdk("StreamNotRewindable", field .. " " .. what .. ", so it cannot be sent " ..
    "again (after a token refresh or a retry); send again with fresh data (nothing was " ..
    "stored by the refused attempt)")
end

-- Openers: open(started) -> next_raw | nil, err, once per start of the source.
local function string_opener(src, data)
  src.length = #data
  src.rewindable = true
  return function()
    local pos = 1
    return function()
      if pos > #data then return nil end
      local chunk = sub(data, pos, pos + CHUNK - 1)
      pos = pos + CHUNK
      return chunk
    end
  end
end

local function reader_opener(src, data, field)
  src.not_rewindable = not_rewindable(field, "is a reader function")
  return function()
    return function()
      local ok, chunk = scheduler.pcall(data)   -- a reader may yield (Lua 5.1 too)
      if not ok then return nil, errors.sdk("SinkError", "the reader raised: " .. tostring(chunk)) end
      if chunk == nil or chunk == "" then return nil end
      if type(chunk) ~= "string" then
        return nil, invalid(field, "reader returned a " .. type(chunk) .. ", not a string")
      end
      return chunk
    end
  end
end

-- A file handle (or anything with read, and seek when it can be rewound): read from where it
-- stands; its length known when it can seek. -> open | nil, err
local function handle_opener(src, data, field)
  local ok, at = pcall(data.seek, data, "cur")
  if ok and type(at) == "number" then
    src.rewindable = true
    local eok, size = pcall(data.seek, data, "end")
    if eok and type(size) == "number" and size >= at then src.length = size - at end
    local sok, back = pcall(data.seek, data, "set", at)
    if not sok or back ~= at then
      return nil, errors.sdk("SinkError", "seeking in " .. field .. " failed: " .. tostring(back))
    end
  else
    src.not_rewindable = not_rewindable(field, "cannot be rewound")
  end
  return function(started)
    if started and src.rewindable then
      local sok, back = pcall(data.seek, data, "set", at)
      if not sok or back ~= at then
        return nil, errors.sdk("SinkError", "rewinding " .. field .. " failed: " .. tostring(back))
      end
    end
    return function()
      local rok, chunk = pcall(data.read, data, CHUNK)
      if not rok then
        return nil, errors.sdk("SinkError", "reading " .. field .. " failed: " .. tostring(chunk))
      end
      if chunk == nil or chunk == "" then return nil end
      if type(chunk) ~= "string" then
        return nil, errors.sdk("SinkError", "reading " .. field .. " gave a " .. type(chunk))
      end
      return chunk
    end
  end
end

--- A data source (a string, a file handle or a reader function) read in chunks, that can be
-- read again from its start when possible. field names it in messages; limit: bytes at most
-- (more is a TypeValidationError, checked up front when the length is known).
-- Returns src or nil, err:
--   src.length      the byte count when known in advance (a string; a file handle that can
--                   seek: from where it stands to its end), else nil
--   src.start()     -> next | nil, err: the first start reads from the beginning; a later one
--                   starts over (a string), seeks back to where the handle stood, or fails
--                   with StreamNotRewindable (a reader function, a handle that cannot seek).
--                   next() -> chunk | nil (the end) | nil, err; "" from a reader or a handle
--                   also ends the data.
--   src.rewindable    true for a string and a file handle that can seek
--   src.not_rewindable the StreamNotRewindable error of a source that is not rewindable
function _M.data_source(data, field, limit)
  local src = {}
  local open, oerr
  if type(data) == "string" then
    open = string_opener(src, data)
  elseif type(data) == "function" then
    open = reader_opener(src, data, field)
  else
    open, oerr = handle_opener(src, data, field)
    if not open then return nil, oerr end
  end
  if src.length and src.length > limit then
    return nil, invalid(field, "is larger than limits.body")
  end

  local started = false
  function src.start()
    if started and not src.rewindable then return nil, src.not_rewindable end
    local next_raw, err = open(started)
    started = true
    if not next_raw then return nil, err end
    local size = 0
    return function()
      local chunk, cerr = next_raw()
      if chunk == nil then return nil, cerr end
      size = size + #chunk
      if size > limit then return nil, invalid(field, "is larger than limits.body") end
      return chunk
    end
  end
  return src
end

--- A data source as a request body for request.send: a reader function (spec.body, the
-- transports' contract) that starts the source at its first call, so an attempt that never
-- reached the server leaves it untouched, and starts it again on the next attempt when the
-- one before read from it (rewound, or StreamNotRewindable). wrap(next) -> next', close may
-- transform the chunks (storage encrypts them); close() ends what wrap made.
-- Returns b = { read (spec.body), on_attempt (spec.on_attempt), close(),
--               failure() -> the source's or the transform's error object, if it failed }.
function _M.streamed_body(src, wrap)
  local b = {}
  local next_chunk, close_wrap, failure

  function b.close()
    if close_wrap then close_wrap() end
    next_chunk, close_wrap = nil, nil
  end

  function b.on_attempt()
    b.close()
    failure = nil
  end

  function b.failure()
    return failure
  end

  function b.read()
    if failure then return nil, failure end
    if not next_chunk then
      local n, err = src.start()
      if not n then
        failure = err
        return nil, err
      end
      if wrap then
        next_chunk, close_wrap = wrap(n)
      else
        next_chunk = n
      end
    end
    local chunk, err = next_chunk()
    if chunk == nil and err ~= nil then failure = err end
    return chunk, err
  end
  return b
end

--- The error of a request that sent a streamed body: the source's own error when it failed
-- (the transport only saw it as text), else a body that broke its declared length (the data
-- changed size while it was sent) as SinkError, else err as it is.
function _M.body_error(b, err)
  local failure = b.failure()
  if failure then
    if type(err) == "table" and failure ~= err then
      failure.user_access_token = err.user_access_token
      failure.attempts = err.attempts
    end
    return failure
  end
  if type(err) == "table" and err.kind == "NetworkError" and err.network == "body" then
    return errors.sdk("SinkError", err.message, { user_access_token = err.user_access_token,
                                                  attempts = err.attempts })
  end
  return err
end

return _M
