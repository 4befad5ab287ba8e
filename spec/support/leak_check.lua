-- The closing test of a spec whose SDK objects log through flow: no secret (token, key,
-- code verifier) in any error or log line the spec produced.
local busted = require "busted"
local assert = require "luassert"
local flow = require "flow"

local _M = {}

-- some_errors: the spec also expects to have produced errors, and that some were checked.
function _M.it_leaks_nothing(some_errors)
  busted.it("leaks no secret into errors or log lines", function()
    local errors_checked = flow.assert_no_secrets()
    if some_errors then assert.is_true(errors_checked > 0) end
  end)
end

return _M
