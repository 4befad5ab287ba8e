-- The bad-argument probes the specs feed to every public call (the values the Node SDK's own
-- tests refuse, in Lua), and the check that a call refused one with a TypeValidationError.
local assert = require "luassert"

local _M = {}

-- STD-INVALID: values no string or record argument takes (nil last: it ends a vararg list).
function _M.std_invalid()
  return {
    { "true", true }, { "false", false }, { "{}", {} }, { "an array", { 1, 2 } },
    { "0", 0 }, { "NaN", 0 / 0 }, { '""', "" }, { "a function", function() end },
    { "a coroutine", coroutine.create(function() end) }, { "nil", nil },
  }
end

-- NON-OBJECT: present but not a record.
function _M.non_object()
  return {
    { "true", true }, { "false", false }, { "an array", { 1, 2 } }, { "0", 0 },
    { "NaN", 0 / 0 }, { '""', "" }, { "a function", function() end },
    { "a coroutine", coroutine.create(function() end) }, { '"x"', "x" },
  }
end

-- err is a TypeValidationError whose message names field (when given); what labels the probe.
function _M.refused_err(err, field, what)
  assert.is_table(err, what .. ": no error object")
  assert.are.equal("TypeValidationError", err.kind, what .. ": " .. tostring(err))
  if field then
    assert.is_truthy(tostring(err.message):find(field, 1, true),
      what .. ": the message does not name " .. field .. ": " .. tostring(err.message))
  end
end

-- The call answered nil, err with err as refused_err wants.
function _M.refused(field, what, res, err)
  assert.is_nil(res, what .. ": expected a refusal")
  _M.refused_err(err, field, what)
end

return _M
