-- The project stands alone: its docs exist, their relative links lead to files that exist,
-- the section names that code and docs cite are headings of the doc they name, and nothing
-- in the tree points at the team's private working notes (only at the project or at public
-- sources such as RFCs and digi.me's developer docs).
local sh = require "shell"

local DOCS = { "README.md", "CHANGELOG.md", "SECURITY.md", "doc/protocol.md",
               "doc/architecture.md", "doc/sandbox.md", "doc/core-api.md" }

-- The private notes' names, written so that this file does not match them itself.
local PRIVATE = [[design\.md|api[ ]doc|digime[-]api|toolchain\.md|\.\./shared]]

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function dir_of(path)
  return path:match("^(.*)/[^/]*$") or "."
end

-- The relative targets of the markdown links [text](target) of a text, without #fragments.
local function relative_links(text)
  local out = {}
  for target in text:gmatch("%]%(([^%)%s]+)[^%)]*%)") do
    if not target:match("^%a[%w+.-]*:") and not target:match("^#") then
      out[#out + 1] = (target:gsub("#.*$", ""))
    end
  end
  return out
end

local function headings(path)
  local list = {}
  for line in sh.read(path):gmatch("[^\n]+") do
    local h = line:match("^#+%s+(.-)%s*$")
    if h then list[#list + 1] = h end
  end
  return list
end

local function has_heading(list, name)
  for _, h in ipairs(list) do
    if h == name or h:sub(1, #name + 1) == name .. " " then return true end
  end
  return false
end

describe("docs", function()
  it("has every doc the README promises", function()
    for _, d in ipairs(DOCS) do
      assert.is_true(exists(d), d .. " is missing")
    end
    local readme = sh.read("README.md")
    for _, d in ipairs{ "doc/protocol.md", "doc/architecture.md", "doc/sandbox.md",
                        "doc/core-api.md", "CHANGELOG.md" } do
      assert.is_truthy(readme:find("](" .. d .. ")", 1, true), "README.md does not link to " .. d)
    end
  end)

  it("has no relative link in README.md or doc/*.md that leads nowhere", function()
    local broken = {}
    for _, d in ipairs(DOCS) do
      for _, target in ipairs(relative_links(sh.read(d))) do
        local path = dir_of(d) .. "/" .. target
        if target ~= "" and not exists(path) then
          broken[#broken + 1] = d .. " -> " .. target
        end
      end
    end
    assert.are.same({}, broken)
  end)

  it("finds the link checker's targets (a check of the check)", function()
    local links = relative_links("see [a](doc/x.md#part), [b](https://example.org/), [c](#here) "
                                 .. "and [d](../y.md \"title\")")
    assert.are.same({ "doc/x.md", "../y.md" }, links)
  end)

  it("cites only sections that exist: doc/NAME.md \"Section\" names a heading of it", function()
    local ok, out = sh.run([[grep -rnoE 'doc/[a-z-]+\.md`?,? "[^"]+"' --exclude-dir=.git ]]
                           .. [[--exclude-dir=build .]])
    assert.is_true(ok or out == "", out)
    local cache, missing, seen = {}, {}, 0
    for file, doc, name in out:gmatch("([^\n:]+):%d+:(doc/[%w%-]+%.md)`?,? \"([^\"]+)\"") do
      seen = seen + 1
      if not exists(doc) then
        missing[#missing + 1] = file .. ": " .. doc .. " does not exist"
      else
        cache[doc] = cache[doc] or headings(doc)
        if not has_heading(cache[doc], name) then
          missing[#missing + 1] = file .. ": " .. doc .. " has no section \"" .. name .. "\""
        end
      end
    end
    assert.is_true(seen > 20, "expected the code to cite the docs' sections, found " .. seen)
    assert.are.same({}, missing)
  end)

  it("points nowhere outside the project: no reference to the team's private notes", function()
    local ok, out = sh.run("grep -rnE '" .. PRIVATE .. "' --exclude-dir=.git --exclude-dir=build .")
    -- grep exits 1 when it finds nothing
    assert.is_false(ok, "references to private notes:\n" .. out)
    assert.are.equal("", out)
  end)
end)
