-- The spec's side of a scripted, recording HTTP server child on loopback (flow.capture's proxy,
-- security_server.lua): both answer GET /__log (the requests since the last clear),
-- POST /__script (a JSON array of answers, appended) and POST /__clear, and run until killed.
local cjson = require "cjson"
local sandbox = require "sandbox"

local _M = {}

-- The methods of a server object { origin, pid, out }: name labels a failed control call,
-- timeout (seconds) bounds it. -> a metatable, to which the caller may add methods.
function _M.class(name, timeout)
  local class = {}
  class.__index = class

  local function control(self, method, path, body)
    local res, err = sandbox.request{ method = method, url = self.origin .. path, body = body,
                                      timeout = timeout }
    assert(res and res.status == 200, name .. " " .. path .. ": "
           .. tostring(err or (res.status .. " " .. res.body)))
    return cjson.decode(res.body)
  end

  function class:script(entries)
    return control(self, "POST", "/__script", cjson.encode(entries))
  end

  function class:requests()
    return control(self, "GET", "/__log")
  end

  function class:clear()
    return control(self, "POST", "/__clear")
  end

  function class:stop()
    if self.pid then
      os.execute("kill " .. self.pid .. " 2>/dev/null")
      self.pid = nil
      os.remove(self.out)
    end
  end

  return class
end

return _M
