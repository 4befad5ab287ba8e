-- The busted hooks a describe block over one sandbox registers: stop the sandbox when the block
-- ends, reset it before each test. get() returns the block's sandbox (nil if it never started).
local busted = require "busted"

local _M = {}

-- hook: busted's lazy_teardown (default, for a lazy_setup start) or teardown (for a setup start).
function _M.stop_after(get, hook)
  busted[hook or "lazy_teardown"](function()
    local sb = get()
    if sb then sb:stop() end
  end)
end

-- Registered before the block's own before_each, so the reset comes first, as it did inline.
function _M.reset_before(get)
  busted.before_each(function()
    get():reset()
  end)
end

-- Both: the block's sandbox stopped at its end and reset before each of its tests.
function _M.stop_and_reset(get, hook)
  _M.stop_after(get, hook)
  _M.reset_before(get)
end

return _M
