-- Control entries for the network side (control.lua documents them): the latency and
-- bandwidth of the relay, and the open connections.

local wire = require "digime.sandbox.wire"
local config = require "digime.sandbox.config"
local conns = require "digime.sandbox.conns"

local _M = {}

local handlers = {}
_M.handlers = handlers

local function view(cfg)
  return { ms = cfg.latency, bandwidth = cfg.bandwidth, keepalive = cfg.keepalive }
end

handlers["GET latency"] = function(app)
  return wire.json(200, view(app.cfg))
end

-- {"ms"?, "bandwidth"?, "keepalive"?}: the fields given change, the others stay.
handlers["POST latency"] = function(app, body)
  local t = { latency = body.ms, bandwidth = body.bandwidth, keepalive = body.keepalive }
  local ok, err = config.check_network(t)
  if not ok then
    return wire.error(400, "BadRequest", err)
  end
  local cfg = app.cfg
  for k, v in pairs(t) do
    cfg[k] = v
  end
  return wire.json(200, view(cfg))
end

handlers["GET connections"] = function(app)
  return wire.json_doc(200, wire.array(conns.list(app)))
end

-- {"close": "idle"|"all"}: closes the idle keep-alive connections (with "all", those in the
-- middle of a request too; the control request's own connection stays open).
handlers["POST connections"] = function(app, body, req)
  local what = body.close
  if what ~= "idle" and what ~= "all" then
    return wire.error(400, "BadRequest", "close must be idle or all")
  end
  return wire.json(200, { closed = conns.close(app, what == "all", conns.of(req.stream)) })
end

return _M
