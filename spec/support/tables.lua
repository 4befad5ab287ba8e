-- Table helpers the specs share: a deep copy, the sorted keys, the number of keys.
local _M = {}

function _M.copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = _M.copy(v) end
  return c
end

function _M.keys_of(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

function _M.count_keys(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

return _M
