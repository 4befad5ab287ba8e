-- The busted hooks a describe block over one sandbox (or capture proxy) registers: stop it when
-- the block ends, reset (clear) it before each test. get() returns the block's sandbox (nil if
-- it never started).
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

-- The block's own sandbox: started with opts (sandbox.start) in busted's setup and handed to
-- set, stopped at the block's end, and reset before each test when reset is true.
function _M.own(opts, set, reset)
  local sb
  busted.setup(function()
    sb = require("sandbox").start(opts)
    set(sb)
  end)
  _M.stop_after(function() return sb end, "teardown")
  if reset then
    _M.reset_before(function() return sb end)
  end
end

-- A capture proxy (flow.capture) over a block: stopped when the block ends, its record cleared
-- before each test. get() returns the block's capture (nil if it never started).
function _M.stop_and_clear(get, hook)
  _M.stop_after(get, hook)
  busted.before_each(function()
    get():clear()
  end)
end

return _M
