-- The sync's compact file list (lua/digime/file_list.lua over core.file_list_index): it must
-- accept and refuse exactly what read_file_list does, with the same messages, give the same
-- names, dates and entries as lua-cjson, and never accept text that lua-cjson cannot decode
-- (an entry is decoded later, when a sink or a callback asks for it). The sync's own use of it
-- is in sync_spec.lua.
local core = require "digime.core"
local json = require "digime.json"
local read = require "digime.read"
local file_list = require "digime.file_list"

local function list_text(entries, state)
  return '{"status":{"state":"' .. (state or "running") .. '"},"fileList":[' .. table.concat(entries, ",") .. "]}"
end

-- What read_file_list makes of a text: its check over lua-cjson's decoding.
local function by_read(text)
  local doc = json.decode(text)
  if doc == nil then return nil, "not JSON" end
  return read.check_file_list(doc)
end

local ANSWERS = {
  list_text{ '{"name":"a.json","updatedDate":1568716294874,"schema":{"standard":"digime","version":"1.0.0"}}',
             '{"name":"b c.json","objectCount":2,"updatedDate":1.5e3}' },
  '{"status":{"state":"completed"}}',
  '{"status":{"state":"partial","details":{"acc1":{"state":"partial","error":{"code":"X"}}}},"fileList":[]}',
  ' { "fileList" : [ { "updatedDate" : 2 , "name" : "late.json" } ] , "status" : { "state" : "pending" } } ',
  list_text{ '{"n\\u0061me":"esc\\"aped\\u00e9\\ud83d\\ude00.json","updatedDate":3}' },
  '{"status":{"state":"running"},"fileList":[{"name":"first","updatedDate":1}],'
    .. '"fileList":[{"name":"second","updatedDate":2}]}',
  list_text{ '{"name":"dup","name":"last wins","updatedDate":1,"updatedDate":9}' },
  '{"fileL\\u0069st":[{"name":"x","updatedDate":1}],"status":{"state":"running"}}',
  -- refused, each for its own reason
  '[]', '"status"', '{}', '{"status":null}', '{"status":{"state":"lost"}}',
  '{"status":{"state":"running","details":5}}',
  '{"status":{"state":"running"},"fileList":null}',
  '{"status":{"state":"running"},"fileList":"x"}',
  list_text{ '{"name":"","updatedDate":1}' },
  list_text{ '{"name":"a","updatedDate":"1"}' },
  list_text{ '{"name":5,"updatedDate":1}' },
  list_text{ '{"updatedDate":1}' },
  list_text{ '{"name":"a","updatedDate":1}', "null" },
  list_text{ '{"name":"a","updatedDate":1}', '["name","updatedDate"]' },
  list_text{ '{"name":"dup","updatedDate":1,"name":7}' },
}

describe("file_list", function()
  it("accepts and refuses what read_file_list does, with the same messages and the same list", function()
    for _, text in ipairs(ANSWERS) do
      local want, werr = by_read(text)
      local got, gerr = file_list.parse(text)
      assert.are.equal(want == nil, got == nil, text)
      if want then
        assert.are.same(want.status, got.status, text)
        local entries = want.fileList or {}
        assert.are.equal(#entries, got.count, text)
        assert.are.equal(want.fileList ~= nil, got.listed, text)
        for i, e in ipairs(entries) do
          local name, updated = got:name_and_date(i)
          assert.are.equal(e.name, name, text)
          assert.are.equal(e.updatedDate, updated, text)
          assert.are.same(e, got:entry(i), text)
        end
        assert.are.same(entries, got:decoded(), text)
        assert.are.equal(got:decoded(), got:decoded(), "decoded once")
      else
        assert.are.equal(tostring(werr), tostring(gerr), text)
      end
    end
  end)

  it("refuses what is not JSON, and every cut of a list", function()
    for _, text in ipairs{ "", "{", '{"status":', "nul", '{"status":{"state":"running"}} x', "\0",
                           '{"status":{"state":"running"},"fileList":[1,]}', ('['):rep(70) .. (']'):rep(70) } do
      local list, err = file_list.parse(text)
      assert.is_nil(list, text)
      assert.are.equal("InvalidResponse", err.code, text)
    end
    local text = ANSWERS[1]
    for n = 1, #text - 1 do
      assert.is_nil(file_list.parse(text:sub(1, n)), text:sub(1, n))
    end
  end)

  it("nests as deep as lua-cjson decodes and no deeper", function()
    local function nested(depth)   -- the top object is 1 deep
      return '{"status":{"state":"running"},"x":' .. ("["):rep(depth - 1) .. ("]"):rep(depth - 1) .. "}"
    end
    assert.is_table(file_list.parse(nested(64)))
    assert.is_table(json.decode(nested(64)))
    assert.is_nil(file_list.parse(nested(65)))
    assert.is_nil(json.decode(nested(65)))
  end)

  it("never accepts what lua-cjson cannot decode, and then agrees with it (mutated lists)", function()
    local seeds = { ANSWERS[1], ANSWERS[4], ANSWERS[5], ANSWERS[6], ANSWERS[7] }
    local alphabet = '{}[]",:\\/u0123456789.eE+-abdfnrtlsx \t\n\0\255'
    local rand = 12345
    local function random(n)   -- a small LCG: the same cases on every interpreter and run
      rand = (rand * 1103515245 + 12345) % 2147483648
      return rand % n + 1
    end
    local accepted = 0
    for _ = 1, 4000 do
      local text = seeds[random(#seeds)]
      for _ = 1, random(3) do
        local at, op = random(#text), random(3)
        local ch = alphabet:sub(random(#alphabet)):sub(1, 1)
        if op == 1 then text = text:sub(1, at - 1) .. ch .. text:sub(at + 1)
        elseif op == 2 then text = text:sub(1, at) .. ch .. text:sub(at + 1)
        else text = text:sub(1, at - 1) .. text:sub(at + 1) end
      end
      local index = core.file_list_index(text)
      if index then
        accepted = accepted + 1
        local doc = json.decode(text)
        assert.is_not_nil(doc, text)
        local list = type(doc) == "table" and type(doc.fileList) == "table" and doc.fileList or nil
        local _, kind = index:info()
        if kind == "array" then
          assert.are.equal(#list, index:count(), text)
          for i = 1, index:count() do
            assert.are.same(list[i], json.decode(index:text(i)), text)
            local name, updated = index:name(i)
            if type(list[i]) == "table" then
              if name ~= nil then assert.are.equal(list[i].name, name, text) end
              if type(list[i].updatedDate) == "number" then assert.are.equal(list[i].updatedDate, updated, text) end
            end
          end
        end
      end
    end
    assert.is_true(accepted > 100, accepted .. " mutants accepted: the mutations are too rough to test agreement")
  end)

  it("is strict JSON where lua-cjson is lenient (numbers like 1. and raw control characters)", function()
    for _, text in ipairs{ "[1.]", "[-.5]", '["a\tb"]' } do
      assert.is_not_nil(json.decode(text), text)
      assert.is_nil(core.file_list_index(text), text)
    end
    for _, text in ipairs{ '["\\udc00"]', '["\\ud800"]', '["\\ud800\\u0041"]' } do
      assert.is_nil(json.decode(text), text)
      assert.is_nil(core.file_list_index(text), text)
    end
  end)

  it("can be freed early; a freed index is empty, never a read of freed memory", function()
    local index = assert(core.file_list_index(ANSWERS[1]))
    assert.are.equal(2, index:count())
    index:free()
    assert.are.equal(0, index:count())
    assert.are.same({ false, "absent" }, { index:info() })
    assert.has_error(function() index:text(1) end)
    assert.has_error(function() index:name(0) end)
    index:free()
    assert.has_error(function() core.file_list_index(ANSWERS[1], 0) end)
  end)
end)
