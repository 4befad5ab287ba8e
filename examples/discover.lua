--- The source catalogue: sources for a country and a category.
-- Usage: lua examples/discover.lua BASE_URL [COUNTRY_CODE] [CATEGORY_NAME]
local digime = require "digime"
local demo = require "digime.sandbox.demo_contract"   -- a TEST-ONLY contract

local base_url, country_code, category_name = arg[1], arg[2] or "NL", arg[3] or "Medical"
if not base_url then
  io.stderr:write("usage: discover.lua BASE_URL [COUNTRY_CODE] [CATEGORY_NAME]\n")
  os.exit(2)
end
local function check(v, err)
  if v == nil then io.stderr:write("failed: ", tostring(err), "\n"); os.exit(1) end
  return v
end

local sdk = check(digime.init{ application_id = demo.application_id, base_url = base_url })
local contract = { id = demo.contract_id, private_key = demo.private_key }

local function find(list, field, wanted)
  for _, item in ipairs(list) do
    if type(item[field]) == "string" and item[field]:lower() == wanted:lower() then return item end
  end
end

local countries = check(sdk:query_countries{ contract = contract }).data
local categories = check(sdk:query_categories{ contract = contract }).data
local country = check(find(countries, "code", country_code), "no country " .. country_code)
local category = check(find(categories, "name", category_name), "no category " .. category_name)
print(("%d countries, %d categories, %d platforms"):format(#countries, #categories,
  #check(sdk:query_platforms{ contract = contract }).data))

local sources = check(sdk:query_sources{ contract = contract, sources_body_params = {
  limit = 50, query = { filter = { country = { id = { country.id } }, category = { id = { category.id } } } } } })
print(("%s sources in %s (%d):"):format(category.name, country.name or country.code, sources.total))
for _, s in ipairs(sources.data) do print(("  %d  %s"):format(s.id, tostring(s.name))) end
