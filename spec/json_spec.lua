-- The SDK's JSON encoder: key order, arrays and objects, numbers, and string escaping (done in
-- C by core.json_quote) against a plain Lua reference and against cjson's decoder.
local json = require "digime.json"
local core = require "digime.core"
local cjson = require "cjson.safe"

-- The reference: the escaping rules written out in Lua (quote, backslash, the short escapes,
-- \u00XX for every other control character and DEL).
local SHORT = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
                ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
local function reference_quote(s)
  local out = {}
  for i = 1, #s do
    local c = s:sub(i, i)
    local b = c:byte()
    out[i] = SHORT[c] or ((b < 32 or b == 127) and ("\\u%04x"):format(b)) or c
  end
  return '"' .. table.concat(out) .. '"'
end

describe("digime.json encoder", function()
  it("quotes every single byte as the reference does, and cjson reads each back", function()
    for b = 0, 255 do
      local s = string.char(b)
      assert.are.equal(reference_quote(s), core.json_quote(s), "byte " .. b)
      if b < 128 then
        assert.are.equal(s, cjson.decode(core.json_quote(s)), "byte " .. b)
      end
    end
  end)

  it("quotes random strings (escapes at the ends, runs of them, long plain runs) as the reference", function()
    math.randomseed(8259)
    local alphabet = { '"', "\\", "\n", "\0", "\127", "\31", "a", "é", "/", " " }
    for _ = 1, 500 do
      local parts = {}
      for i = 1, math.random(0, 40) do
        parts[i] = math.random() < 0.2 and ("x"):rep(math.random(1, 300))
                   or alphabet[math.random(#alphabet)]
      end
      local s = table.concat(parts)
      assert.are.equal(reference_quote(s), core.json_quote(s))
      assert.are.equal(s, cjson.decode(json.encode(s)))
    end
    assert.are.equal('""', core.json_quote(""))
    assert.has_error(function() core.json_quote({}) end)
  end)

  it("keeps the order of an ordered object and drops its nil values", function()
    assert.are.equal('{"b":1,"a":"x","c":true}',
                     json.encode(json.object_of("b", 1, "a", "x", "z", nil, "c", true)))
    assert.are.equal('{"z":{"y":[1,2]}}', json.encode(json.object{ "z", json.object{ "y", { 1, 2 } } }))
  end)

  it("tells an empty array from an empty object, sorts plain objects, and writes numbers as JSON does", function()
    assert.are.equal("[]", json.encode(json.array()))
    assert.are.equal("{}", json.encode({}))
    assert.are.equal('{"a":1,"b":2}', json.encode({ b = 2, a = 1 }))
    assert.are.equal("[1,2.5,null,null,-3]", json.encode({ 1, 2.5, 0 / 0, math.huge, -3 }))
    assert.are.equal("1700000000000", json.encode(1700000000000))
  end)

  it("refuses what JSON cannot hold: functions, non-string keys, nesting past 64", function()
    assert.is_nil((json.encode(print)))
    assert.is_nil((json.encode({ [true] = 1 })))
    local deep = {}
    for _ = 1, 70 do deep = { deep } end
    local v, err = json.encode(deep)
    assert.is_nil(v)
    assert.matches("too deep", err)
  end)
end)
