-- Discovery (doc/protocol.md "Discovery"), CONTRACT claims, over discovery_data.lua:
--
--   POST discovery/sources     {limit?, offset?, sort?: {name|id|publishedDate: "asc"|"desc"},
--                               query?: {search?, queryString?, include?, filter?}}
--   POST discovery/countries   {limit?, offset?, query?: {include?, filter?: {id?}}}
--   POST discovery/platforms   (the same)
--   POST discovery/categories  (the same)
--   A JSON object body, or none (no filter). -> 200 {"data": [...], "limit", "offset", "total"}
--   total counts every match, data is the page [offset, offset + limit). limit defaults to 100
--   (at most 1000), offset to 0. Sources come sorted by id unless `sort` says otherwise, the
--   others by id.
--
-- Source filters (all given ones must hold):
--   filter.id [n], filter.sourceId n          the source's id
--   filter.publishedStatus [s]                approved|pending|deprecated|blocked|sampledataonly
--   filter.service.id / country.id / category.id / platform.id / type.id [n]
--                                             any of the source's (type: 1 pull, 2 push)
--   filter.reference [s], filter.alias [s]    exact (case-insensitive)
--   query.search {name, abbreviation, alias, medicalCenter, practitioner: [s]}
--                                             a source matches when any term is part of the
--                                             named field (case-insensitive), in any field
--   query.queryString s                       free text: part of the name, reference, an alias,
--                                             the abbreviation, medical center, practitioner,
--                                             service, category or country name or code
-- query.include [field]: the records keep only these fields (dotted paths reach into objects
-- and into each element of arrays: "category.name"), and always their id; unknown fields are
-- ignored. Malformed parameters (a wrong type) -> 400 ValidationErrors saying which.

local wire = require "digime.sandbox.wire"
local util = require "digime.sandbox.util"
local data = require "digime.sandbox.discovery_data"

local type, tostring, pairs, ipairs = type, tostring, pairs, ipairs
local getmetatable = getmetatable
local sort = table.sort
local math_floor, math_min = math.floor, math.min

local _M = {}

local DEFAULT_LIMIT, MAX_LIMIT = 100, 1000

local bad = wire.invalid_params
local is_object, is_list = util.is_object, util.is_list

local function is_int(v)
  return type(v) == "number" and v == math_floor(v) and v >= 0 and v < 2 ^ 53
end

local function list_of(v, check, what)
  if v == nil then
    return true
  end
  if not is_list(v) then
    return nil, what .. " must be an array"
  end
  for _, x in ipairs(v) do
    if not check(x) then
      return nil, what .. " must hold " .. (check == is_int and "numbers" or "strings")
    end
  end
  return true
end

local function is_string(v)
  return type(v) == "string"
end

local copy = util.copy

-- The wire shape of a record (internal fields dropped).
local function public(rec)
  local c = copy(rec)
  c.samples = nil
  return c
end

-- include: keep the listed (dotted) fields, and the id.
local function pick(src, dst, segs, i)
  local k = segs[i]
  local v = src[k]
  if v == nil then
    return
  end
  if i == #segs then
    dst[k] = copy(v)
    return
  end
  if type(v) ~= "table" then
    return
  end
  if getmetatable(v) ~= nil or v[1] ~= nil then     -- an array: into each element
    local out = type(dst[k]) == "table" and dst[k] or wire.array{}
    for j, e in ipairs(v) do
      if type(e) == "table" then
        out[j] = type(out[j]) == "table" and out[j] or {}
        pick(e, out[j], segs, i + 1)
      end
    end
    dst[k] = out
  else
    dst[k] = type(dst[k]) == "table" and dst[k] or {}
    pick(v, dst[k], segs, i + 1)
  end
end

local function project(rec, include)
  if not include then
    return public(rec)
  end
  local out = { id = rec.id }
  for _, field in ipairs(include) do
    local segs = {}
    for s in field:gmatch("[^.]+") do
      segs[#segs + 1] = s
    end
    if #segs > 0 and segs[1] ~= "samples" then
      pick(rec, out, segs, 1)
    end
  end
  return out
end

-- Paging: -> limit, offset | nil, response
local function paging(body)
  local limit, offset = body.limit, body.offset
  if limit ~= nil and (not is_int(limit) or limit > MAX_LIMIT) then
    return nil, bad("limit must be an integer 0.." .. MAX_LIMIT)
  end
  if offset ~= nil and not is_int(offset) then
    return nil, bad("offset must be a non-negative integer")
  end
  return math_floor(limit or DEFAULT_LIMIT), math_floor(offset or 0)
end

local function page(list, limit, offset, include)
  local out = wire.array{}
  for i = offset + 1, math_min(#list, offset + limit) do
    out[#out + 1] = project(list[i], include)
  end
  return wire.json_doc(200, { data = out, limit = limit, offset = offset, total = #list })
end

-- The query's include list and filter: -> include, filter | nil, response
local function query_parts(body)
  local q = body.query
  if q == nil then
    return nil, {}
  end
  if not is_object(q) then
    return false, bad("query must be an object")
  end
  local ok, why = list_of(q.include, is_string, "query.include")
  if not ok then
    return false, bad(why)
  end
  local f = q.filter
  if f ~= nil and not is_object(f) then
    return false, bad("query.filter must be an object")
  end
  return q.include, f or {}
end

-- The request body and its query's include list and filter: -> body, include, filter | nil,
-- response
local function query_of(req)
  local body, err = wire.decode_object(req:body())
  if not body then
    return nil, bad("the body must be a JSON object (" .. tostring(err) .. ")")
  end
  local include, filter = query_parts(body)
  if include == false then
    return nil, filter
  end
  return body, include, filter
end

-- countries / platforms / categories
local function simple(list)
  return function(_, req)
    local body, include, filter = query_of(req)
    if not body then
      return include
    end
    local ok, why = list_of(filter.id, is_int, "query.filter.id")
    if not ok then
      return bad(why)
    end
    local limit, offset = paging(body)
    if not limit then
      return offset
    end
    local wanted
    if filter.id then
      wanted = {}
      for _, id in ipairs(filter.id) do
        wanted[id] = true
      end
    end
    local hits = {}
    for _, rec in ipairs(list) do
      if not wanted or wanted[rec.id] then
        hits[#hits + 1] = rec
      end
    end
    return page(hits, limit, offset, include)
  end
end

-- Sources -----------------------------------------------------------------------------------

local ID_FILTERS = { "service", "country", "category", "platform", "type" }
local SEARCH_FIELDS = { "name", "abbreviation", "alias", "medicalCenter", "practitioner" }

local function set_of(list, lower)
  local s = {}
  for _, v in ipairs(list) do
    s[lower and v:lower() or v] = true
  end
  return s
end

local function contains(hay, needle)
  return type(hay) == "string" and hay:lower():find(needle, 1, true) ~= nil
end

local function any_contains(v, needle)
  if type(v) == "table" then
    for _, x in ipairs(v) do
      if contains(x, needle) then
        return true
      end
    end
    return false
  end
  return contains(v, needle)
end

-- Validates the source parameters: -> checks | nil, message
local function source_checks(filter, q)
  local ok, why = list_of(filter.id, is_int, "query.filter.id")
  if not ok then
    return nil, why
  end
  ok, why = list_of(filter.publishedStatus, is_string, "query.filter.publishedStatus")
  if not ok then
    return nil, why
  end
  for _, k in ipairs(ID_FILTERS) do
    local v = filter[k]
    if v ~= nil then
      if not is_object(v) then
        return nil, "query.filter." .. k .. " must be {\"id\": [numbers]}"
      end
      ok, why = list_of(v.id, is_int, "query.filter." .. k .. ".id")
      if not ok then
        return nil, why
      end
    end
  end
  if filter.sourceId ~= nil and not is_int(filter.sourceId) then
    return nil, "query.filter.sourceId must be a number"
  end
  for _, k in ipairs{ "reference", "alias" } do
    ok, why = list_of(filter[k], is_string, "query.filter." .. k)
    if not ok then
      return nil, why
    end
  end
  if q.search ~= nil then
    if not is_object(q.search) then
      return nil, "query.search must be an object"
    end
    for k, v in pairs(q.search) do
      ok, why = list_of(v, is_string, "query.search." .. tostring(k))
      if not ok then
        return nil, why
      end
    end
  end
  if q.queryString ~= nil and type(q.queryString) ~= "string" then
    return nil, "query.queryString must be a string"
  end
  return true
end

local function ids_hit(values, wanted)
  if type(values) ~= "table" then
    return false
  end
  if values.id ~= nil then          -- one object (type, service)
    return wanted[values.id] == true
  end
  for _, v in ipairs(values) do
    if wanted[v.id] then
      return true
    end
  end
  return false
end

local function search_hit(src, search)
  local any_term = false
  for _, field in ipairs(SEARCH_FIELDS) do
    local terms = search[field]
    for _, t in ipairs(terms or {}) do
      any_term = true
      if any_contains(src[field], t:lower()) then
        return true
      end
    end
  end
  return not any_term
end

local function text_hit(src, text)
  local needle = text:lower()
  if needle:match("^%s*$") then
    return true
  end
  needle = needle:match("^%s*(.-)%s*$")
  if contains(src.name, needle) or contains(src.reference, needle)
     or any_contains(src.alias, needle) or contains(src.abbreviation, needle)
     or contains(src.medicalCenter, needle) or contains(src.practitioner, needle)
     or contains(src.service.name, needle) then
    return true
  end
  for _, list in ipairs{ src.category, src.country } do
    for _, c in ipairs(list) do
      if contains(c.name, needle) or (c.code and c.code:lower() == needle) then
        return true
      end
    end
  end
  return false
end

local SORT_KEYS = { name = true, id = true, publishedDate = true }

local function sort_of(body)
  local s = body.sort
  if s == nil then
    return {}
  end
  if not is_object(s) then
    return nil, "sort must be an object such as {\"name\": \"asc\"}"
  end
  local order = {}
  for k, v in pairs(s) do
    if not SORT_KEYS[k] then
      return nil, "sort by " .. tostring(k) .. " is not supported (name, id, publishedDate)"
    end
    if v ~= "asc" and v ~= "desc" then
      return nil, "sort." .. k .. " must be asc or desc"
    end
    order[#order + 1] = { k, v }
  end
  -- name first, then id, then publishedDate: a stable reading of an unordered object
  local rank = { name = 1, publishedDate = 2, id = 3 }
  sort(order, function(a, b) return rank[a[1]] < rank[b[1]] end)
  return order
end

local function sources(_, req)
  local body, include, filter = query_of(req)
  if not body then
    return include
  end
  local q = body.query or {}
  local ok, why = source_checks(filter, q)
  if not ok then
    return bad(why)
  end
  local order
  order, why = sort_of(body)
  if not order then
    return bad(why)
  end
  local limit, offset = paging(body)
  if not limit then
    return offset
  end

  local ids = filter.id and set_of(filter.id)
  local statuses = filter.publishedStatus and set_of(filter.publishedStatus)
  local refs = filter.reference and set_of(filter.reference, true)
  local aliases = filter.alias and set_of(filter.alias, true)
  local by_kind = {}
  for _, k in ipairs(ID_FILTERS) do
    if filter[k] and filter[k].id then
      by_kind[k] = set_of(filter[k].id)
    end
  end

  local hits = {}
  for _, src in ipairs(data.sources) do
    local hit = (not ids or ids[src.id])
      and (filter.sourceId == nil or src.id == filter.sourceId)
      and (not statuses or statuses[src.publishedStatus])
      and (not refs or refs[src.reference:lower()])
    if hit and aliases then
      hit = false
      for _, a in ipairs(src.alias) do
        hit = hit or aliases[a:lower()] == true
      end
    end
    for k, wanted in pairs(by_kind) do
      hit = hit and ids_hit(src[k], wanted)
    end
    hit = hit and (q.search == nil or search_hit(src, q.search))
    hit = hit and (q.queryString == nil or text_hit(src, q.queryString))
    if hit then
      hits[#hits + 1] = src
    end
  end
  if #order > 0 then
    sort(hits, function(a, b)
      for _, o in ipairs(order) do
        local k, dir = o[1], o[2]
        local x, y = a[k], b[k]
        if k == "name" then
          x, y = x:lower(), y:lower()
        end
        if x ~= y then
          if dir == "asc" then
            return x < y
          end
          return x > y
        end
      end
      return a.id < b.id
    end)
  else
    sort(hits, function(a, b) return a.id < b.id end)
  end
  return page(hits, limit, offset, include)
end

local by_id = function(a, b) return a.id < b.id end
local countries, platforms, categories = {}, {}, {}
for i, c in ipairs(data.countries) do countries[i] = c end
for i, p in ipairs(data.platforms) do platforms[i] = p end
for i, c in ipairs(data.categories) do categories[i] = c end
sort(countries, by_id)
sort(platforms, by_id)
sort(categories, by_id)

-- The endpoints (routes.lua maps them).
_M.sources = sources
_M.countries = simple(countries)
_M.platforms = simple(platforms)
_M.categories = simple(categories)

_M.project = project

return _M
