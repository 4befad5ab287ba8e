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

-- Sets the dotted path field ("a.b.c") of table t to v.
local function set_path(t, field, v)
  local head, last = field:match("^(.*)%.([^.]+)$")
  if head then
    for key in head:gmatch("[^.]+") do t = t[key] end
  end
  t[last or field] = v
end

-- Feeds every STD-INVALID value to each (dotted) field of each call in names (a name or a list),
-- through the spec's own probe(name, mutate, field, what).
function _M.std_invalid_fields(probe, names, fields)
  for _, name in ipairs(type(names) == "table" and names or { names }) do
    for _, p in ipairs(_M.std_invalid()) do
      for _, field in ipairs(fields) do
        probe(name, function(a) set_path(a, field, p[2]) end, field, field .. " = " .. p[1])
      end
    end
  end
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
