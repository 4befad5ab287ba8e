--- Stands in for the user's browser in the examples: opens a consent URL on the sandbox
-- (which consents at once) and reads the redirect to the application's callback.
-- A real application sends the user to the URL and receives the callback on its own server.
local core = require "digime.core"
local urls = require "digime.urls"

local _M = {}

local function get(url, opts)
  local engine = core.http_engine()
  local req = engine:add{ method = opts and opts.method or "GET", url = url,
                          headers = opts and opts.headers, body = opts and opts.body, timeout = 10 }
  while engine:perform() > 0 do engine:poll(50) end
  engine:finished()
  return req:result()
end

--- Follows a consent URL; returns the callback's query parameters as a table.
function _M.consent(url)
  local res, err = get(url)
  if not res then return nil, err end
  local location = res.headers.location
  if res.status ~= 302 or not location then
    return nil, "the consent page answered " .. res.status .. " without a redirect"
  end
  return urls.parse_query(location:match("%?(.*)$"))
end

--- authorize -> consent -> exchange for the examples; returns the user's token.
function _M.login(sdk, contract)
  local auth = assert(sdk:get_authorize_url{ contract = contract, state = "example",
                                             callback = "https://app.example/digime/callback" })
  local cb = assert(_M.consent(auth.url))
  return assert(sdk:exchange_code_for_token{ contract = contract,
    authorization_code = cb.code, code_verifier = auth.code_verifier })
end

--- POSTs a JSON body to the sandbox's control endpoint.
function _M.control(control_url, path, json_body)
  return get(control_url .. path, { method = "POST", body = json_body,
                                    headers = { ["content-type"] = "application/json" } })
end

return _M
