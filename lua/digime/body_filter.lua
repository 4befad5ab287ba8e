--- Body filters: where the body of a 2xx answer goes when a caller wants it transformed and
-- streamed (a file download) rather than handed back as a string. A filter is a stage made
-- from the answer's headers (a core object that transforms bytes) followed by a consumer (a
-- sink, or a buffer). The request layer hands one to the transport as `req.body_filter`; what
-- a transport does with it is in doc/architecture.md "The transport contract". Nothing here
-- knows what a stage does: file_body.lua makes the one that decrypts a digi.me file.
--
-- For a transport, per attempt:
--   filter:stage() -> stage | nil, err, kind   (optional: a transport that runs the stage
--       itself, in C, calls it before sending; write() then takes the stage's output)
--   filter:headers(status, headers) -> true | nil, err, kind   (a 2xx answer's headers)
--   filter:write(bytes) -> true | nil, err, kind               (the body, piece by piece)
--   filter:finish() -> true | nil, err, kind                   (the body ended as framed)
--   filter:close()                                             (always, at the end)
-- For the request layer: filter:reset() before each attempt; filter.delivered, the bytes that
-- have gone to the consumer. For the caller: data() (without a sink), end_sink().
local sink = require "digime.sink"

local setmetatable = setmetatable
local concat = table.concat

local _M = {}

local filter = {}
filter.__index = filter

--- opts = {
--   open = function(status, headers, prepared) -> stage | nil, err: the stage for this answer,
--     a core object with update(bytes) -> out | nil, err; finish() -> out | nil, err; close().
--     `prepared` is what prepare made when the transport asked for the stage ahead.
--   prepare = function() -> stage | nil, err: the stage made before the answer, which open
--     then completes (for a transport that runs it in C from the start of the transfer).
--   kind = the failure kind of the stage ("decrypt" for a file).
--   sink = a function or an object with a write method (sink.lua); without one, the output
--     is kept for data(). }
function _M.new(opts)
  local f = setmetatable({ open = opts.open, prepare = opts.prepare, kind = opts.kind,
                           delivered = 0 }, filter)
  if opts.sink then
    f.to_sink, f.close_sink = sink.wrap(opts.sink)
  else
    f.parts = {}
  end
  return f
end

-- Hands output to the consumer. -> true | nil, err, "sink"
local function deliver(self, out)
  if out == "" then return true end
  self.delivered = self.delivered + #out
  local parts = self.parts
  if parts then
    parts[#parts + 1] = out
    return true
  end
  local ok, err = self.to_sink(out)
  if not ok then return nil, err or "the sink refused the data", "sink" end
  return true
end

--- A new attempt: what a failed one kept is dropped (a sink cannot take it back: see
-- request.lua's sink_once).
function filter:reset()
  self:close()
  if self.parts then self.parts = {} end
end

function filter:stage()
  local s, err = self.prepare()
  if not s then return nil, err, self.kind end
  self.current, self.staged = s, true
  return s
end

function filter:headers(status, headers)
  local s, err = self.open(status, headers, self.staged and self.current or nil)
  if not s then return nil, err, self.kind end
  self.current = s
  return true
end

function filter:write(bytes)
  if self.staged then return deliver(self, bytes) end
  local out, err = self.current:update(bytes)
  if not out then return nil, err, self.kind end
  return deliver(self, out)
end

function filter:finish()
  if self.staged then return true end   -- the transport's engine finished the stage
  local out, err = self.current:finish()
  if not out then return nil, err, self.kind end
  return deliver(self, out)
end

--- Frees the stage (its C memory is not the collector's to see); the filter can serve another
-- attempt.
function filter:close()
  local s = self.current
  self.current, self.staged = nil, nil
  if s then s:close() end
end

--- The output kept (a filter without a sink).
function filter:data()
  return concat(self.parts)
end

--- Tells a function sink that the body has ended (sink(nil)). -> true | nil, err
function filter:end_sink()
  if self.close_sink then return self.close_sink() end
  return true
end

return _M
