--- Pushing data: to the user's library, or to a provider (doc/protocol.md). A push is never sent
-- twice except after a token refresh, and then only when its data can be sent again.
local json = require "digime.json"
local errors = require "digime.errors"
local validate = require "digime.validate"
local jwt = require "digime.jwt"
local request = require "digime.request"
local user_call = require "digime.user_call"
local scheduler = require "digime.scheduler"

local type, pcall, tostring, ipairs = type, pcall, tostring, ipairs
local sub = string.sub

local _M = {}

local seg = request.encode_segment

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
  local started = false
  local open   -- () -> next_raw, once per start
  if type(data) == "string" then
    src.length = #data
    open = function()
      local pos = 1
      return function()
        if pos > #data then return nil end
        local chunk = sub(data, pos, pos + CHUNK - 1)
        pos = pos + CHUNK
        return chunk
      end
    end
    src.rewindable = true
  elseif type(data) == "function" then
    open = function()
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
    src.not_rewindable = not_rewindable(field, "is a reader function")
  else
    -- a file handle (or anything with read, and seek when it can be rewound)
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
    open = function()
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
  if src.length and src.length > limit then
    return nil, invalid(field, "is larger than limits.body")
  end

  function src.start()
    if started and not src.rewindable then return nil, src.not_rewindable end
    local next_raw, err = open()
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

local function check_descriptor(d)
  local field = "data.file_descriptor"
  if not validate.is_record(d) then return nil, invalid(field, "must be a table") end
  local ok, err = validate.string(d.mimeType, field .. ".mimeType")
  if not ok then return nil, err end
  if not validate.is_array(d.accounts) then
    return nil, invalid(field .. ".accounts", "must be an array of { accountId = ... }")
  end
  for i, a in ipairs(d.accounts) do
    if type(a) ~= "table" or type(a.accountId) ~= "string" then
      return nil, invalid(field .. ".accounts[" .. i .. "]", "must be { accountId = string }")
    end
  end
  for _, k in ipairs{ "reference", "tags" } do
    if d[k] ~= nil then
      if not validate.is_array(d[k]) then return nil, invalid(field .. "." .. k, "must be an array of strings") end
      for i, v in ipairs(d[k]) do
        if type(v) ~= "string" then return nil, invalid(field .. "." .. k .. "[" .. i .. "]", "must be a string") end
      end
    end
  end
  return true
end

local is_data_source = validate.is_data_source

local PUSH_OPTS = validate.set{ "contract", "user_access_token", "type", "data", "version",
                                "standard", "account_id" }

local function push_library(sdk, opts)
  local data = opts.data
  if not validate.is_record(data) then return nil, invalid("data", "must be a table") end
  local ok, err = validate.options(data, validate.set{ "file_data", "file_name", "file_descriptor" }, "data")
  if not ok then return nil, err end
  if not is_data_source(data.file_data) then
    return nil, invalid("data.file_data", "must be a string, a file handle or a reader function")
  end
  ok, err = validate.string(data.file_name, "data.file_name")
  if not ok then return nil, err end
  ok, err = check_descriptor(data.file_descriptor)
  if not ok then return nil, err end
  local _, jerr = json.encode(data.file_descriptor)
  if jerr then return nil, invalid("data.file_descriptor", "cannot be sent as JSON: " .. tostring(jerr)) end
  local key, kerr = jwt.contract_key(opts.contract)
  if not key then return nil, kerr end
  -- FILEDESC: the descriptor as given, signed once per push (doc/protocol.md "Request JWTs").
  local descriptor_jwt, derr = jwt.sign(key, nil, json.object_of("metadata", data.file_descriptor))
  if not descriptor_jwt then return nil, derr end
  -- The data streams from its source into the request: memory stays bounded whatever its size.
  local src, serr = _M.data_source(data.file_data, "data.file_data", sdk.config.limits.body)
  if not src then return nil, serr end
  local body = _M.streamed_body(src)
  local tries = 0
  local res, rerr = user_call.send_with(sdk, opts.contract, opts.user_access_token, function()
    -- A resend after a token refresh: only data that can be read again from its start. A
    -- one-shot source fails even if the refused attempt took none of it (the server may
    -- answer 401 before it asks for the body): whether it did is a race, the error is not.
    tries = tries + 1
    if tries > 1 and not src.rewindable then return nil, src.not_rewindable end
    return {
      method = "POST", url = sdk.config.base_url .. "permission-access/import",
      headers = { ["content-type"] = "application/octet-stream", filedescriptor = descriptor_jwt },
      body = body.read, body_length = src.length, on_attempt = body.on_attempt,
      what = "permission-access/import",
    }
  end, function() return {} end)
  body.close()
  if not res then return nil, _M.body_error(body, rerr) end
  return res
end

local function push_provider(sdk, opts)
  if not validate.is_record(opts.data) then return nil, invalid("data", "must be a table") end
  if opts.version ~= "stu3" and opts.version ~= "3.0.2" then
    return nil, invalid("version", 'must be "stu3" or "3.0.2"')
  end
  if opts.standard ~= "fhir" then return nil, invalid("standard", 'must be "fhir"') end
  local ok, err = validate.header_string(opts.account_id, "account_id")
  if not ok then return nil, err end
  local body, jerr = json.encode(opts.data)
  if not body then return nil, invalid("data", "cannot be encoded as JSON: " .. jerr) end
  return user_call.send(sdk, opts.contract, opts.user_access_token, {
    method = "POST",
    url = sdk.config.base_url .. "permission-access/import/h:accountId/" .. seg(opts.standard) ..
          "/" .. seg(opts.version),
    headers = { ["content-type"] = "application/json", accountid = opts.account_id },
    body = body, what = "provider push",
  }, function() return {} end)
end

--- sdk:push_data{ contract, user_access_token, type = "library", data = { file_data,
--   file_name, file_descriptor = { mimeType, accounts, reference?, tags? } } }
-- sdk:push_data{ contract, user_access_token, type = "provider", data = <JSON table>,
--   version = "stu3"|"3.0.2", standard = "fhir", account_id }
-- -> { user_access_token }. file_data: a string, a file handle (rewound if a token refresh
-- needs a resend) or a reader function (one-shot: a resend fails with StreamNotRewindable).
function _M.push_data(sdk, opts)
  local ok, err = validate.options(opts, PUSH_OPTS, "push_data")
  if not ok then return nil, err end
  ok, err = validate.contract(opts.contract)
  if not ok then return nil, err end
  ok, err = validate.user_access_token(opts.user_access_token, "user_access_token")
  if not ok then return nil, err end
  if opts.type == "library" then
    -- The provider-only options have no meaning here: given, they are a mistake to report.
    for _, k in ipairs{ "account_id", "standard", "version" } do
      if opts[k] ~= nil then return nil, invalid(k, 'applies only to type = "provider"') end
    end
    return push_library(sdk, opts)
  elseif opts.type == "provider" then
    return push_provider(sdk, opts)
  end
  return nil, invalid("type", 'must be "library" or "provider"')
end

return _M
