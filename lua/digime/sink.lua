--- Sinks: where a downloaded body's plaintext goes, chunk by chunk (read_file,
-- download_storage_file): a function, or a file handle (written with :write, left open).
local scheduler = require "digime.scheduler"

local type, pcall, tostring = type, pcall, tostring

local _M = {}

--- Wraps a sink (a function, or a file handle) as write(chunk) -> true | nil, err, plus
-- close() for the end. Raising, or returning nil/false with an error, stops the read.
function _M.wrap(sink)
  if type(sink) == "function" then
    local function call(chunk)
      local ok, r1, r2 = scheduler.pcall(sink, chunk)   -- a sink may yield (Lua 5.1 too)
      if not ok then return nil, "the sink raised: " .. tostring(r1) end
      if not r1 and r2 ~= nil then return nil, "the sink failed: " .. tostring(r2) end
      return true
    end
    return call, function() return call(nil) end
  end
  return function(chunk)
    local ok, r1, r2 = pcall(sink.write, sink, chunk)
    if not ok then return nil, "the sink raised: " .. tostring(r1) end
    if not r1 then return nil, "the sink failed: " .. tostring(r2) end
    return true
  end, function() return true end
end


return _M
