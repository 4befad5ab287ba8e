-- One request through a transport with a file body filter (lua/digime/file_body.lua), the
-- same code whichever transport runs it: spec/ngx_transport_spec.lua runs it with the ngx
-- transport inside nginx (ngx_app.filter) and with the curl transport in busted, against the
-- same answers, to check that both keep the body-filter contract of doc/architecture.md
-- "The transport contract" alike.
local file_body = require "digime.file_body"
local jwt = require "digime.jwt"
local demo = require "digime.sandbox.demo_contract"

local concat = table.concat

-- opts: url, sink ("ok" | "refuse" | nil: no sink, the plaintext kept), headers_hook ("ok" |
-- "refuse": the filter's compression hook refuses the answer's headers).
-- -> { status, piped, body, data, err, kind, delivered }
return function(transport, opts)
  local key = assert(jwt.contract_key{ id = demo.contract_id, private_key = demo.private_key })
  local got = {}
  local sink
  if opts.sink then
    sink = function(chunk)
      if chunk and opts.sink == "refuse" then return nil, "full" end
      got[#got + 1] = chunk
      return true
    end
  end
  local filter = file_body.new{ key = key, max_output = 1024 * 1024, sink = sink,
    compression = function(_, headers)
      if opts.headers_hook == "refuse" then return nil, "no usable x-compression" end
      return headers["x-compression"] or "none"
    end }
  local res, err, kind = transport:request{ method = "GET", url = opts.url, timeout = 10,
                                            body_filter = filter }
  local out = { err = err, kind = kind, delivered = filter.delivered }
  if res then
    out.status, out.piped, out.body = res.status, res.piped, res.body
    if res.piped then out.data = sink and concat(got) or filter:data() end
  end
  return out
end
