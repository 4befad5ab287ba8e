-- The sandbox's discovery catalogue (doc/protocol.md "Discovery"): countries, platforms, categories and the
-- sources that the discovery endpoints (discovery.lua) query and the sample data set endpoint
-- (manage.lua) reads. Made up, but shaped like the real catalogue: numeric ids, references,
-- published states, logos, authorisation types, sample data sets. The three sources of the
-- built-in library's accounts keep their ids (Instagram 420, Fitbit 183, Spotify 312).
--
--   countries, platforms, categories, sources: arrays of wire-ready records (arrays that may
--   be empty are marked with wire.array); source_by_id; and on each source the internal
--   `samples` list ({id, name, description}), left out of the wire shape.

local wire = require "digime.sandbox.wire"

local ipairs = ipairs

local _M = {}

local LOGOS = "https://sandbox.invalid/discovery/"
local PUBLISHED = 1577836800000     -- 2020-01-01, ms

local function resource(kind, ref, mimetype, resize)
  return { mimetype = mimetype or "image/png", resize = resize or false, type = 0,
           url = LOGOS .. kind .. "/" .. ref .. (mimetype == "image/svg+xml" and ".svg" or ".png") }
end

-- Countries ------------------------------------------------------------------------------------

local COUNTRIES = {
  { 1, "NL", "Netherlands", "Europe" }, { 2, "GB", "United Kingdom", "Europe" },
  { 3, "US", "United States", "North America" }, { 4, "DE", "Germany", "Europe" },
  { 5, "FR", "France", "Europe" }, { 6, "BE", "Belgium", "Europe" },
  { 7, "ES", "Spain", "Europe" }, { 8, "IT", "Italy", "Europe" },
  { 9, "IE", "Ireland", "Europe" }, { 10, "CA", "Canada", "North America" },
  { 11, "AU", "Australia", "Oceania" }, { 12, "SE", "Sweden", "Europe" },
}

_M.countries = {}
local country_by_code = {}
for i, c in ipairs(COUNTRIES) do
  local rec = { id = c[1], code = c[2], name = c[3], json = { continent = c[4] },
                resource = resource("flags", c[2]:lower(), "image/svg+xml", true) }
  _M.countries[i] = rec
  country_by_code[c[2]] = rec
end

-- Platforms ------------------------------------------------------------------------------------

_M.platforms = {
  { id = 1, name = "Web", reference = "web" },
  { id = 2, name = "iOS", reference = "ios" },
  { id = 3, name = "Android", reference = "android" },
  { id = 4, name = "Wearable", reference = "wearable" },
}
local platform_by_ref = {}
for _, p in ipairs(_M.platforms) do
  platform_by_ref[p.reference] = p
end

-- Categories -----------------------------------------------------------------------------------

local CATEGORIES = {
  { 1, "Social", "social", "Posts, photos, friends and followers",
    "Bring in what you shared on social networks." },
  { 2, "Medical", "medical", "Health records from your doctor, hospital or pharmacy",
    "Medical records under MedMij (NL), the NHS (GB) and FHIR providers." },
  { 3, "Finance", "finance", "Bank accounts, cards and transactions",
    "Balances and transactions through open banking." },
  { 4, "Health & Fitness", "health-fitness", "Activity, sleep, heart rate and workouts",
    "Data from trackers, watches and fitness apps." },
  { 5, "Entertainment", "entertainment", "Music, video and what you played",
    "Listening and viewing history." },
  { 6, "Shopping", "shopping", "Orders and receipts", "Purchase history from shops." },
}

_M.categories = {}
local category_by_ref = {}
for i, c in ipairs(CATEGORIES) do
  local rec = { id = c[1], categoryTypeId = 1, name = c[2], reference = c[3], title = c[2],
                subTitle = c[4], expandedTitle = c[2] .. " sources", expandedSubTitle = c[5],
                json = { order = i }, resource = resource("categories", c[3]) }
  _M.categories[i] = rec
  category_by_ref[c[3]] = rec
end

-- Sources --------------------------------------------------------------------------------------

local ALL = {}
for i, c in ipairs(COUNTRIES) do
  ALL[i] = c[2]
end
local EU = { "NL", "GB", "DE", "FR", "BE", "ES", "IT", "IE", "SE" }
local WEB, APPS = { "web" }, { "web", "ios", "android" }

local function samples(list)
  local out = {}
  for i, s in ipairs(list) do
    out[i] = { id = s[1], name = s[1], description = s[2] }
  end
  return out
end

local DEFAULT = { "default", "A typical account with a few months of data" }

-- { id, name, reference, service id, category ref, countries, platforms, fields }
-- fields: type (1 pull, default; 2 push), status (approved), auth (saas), samples, alias,
-- abbreviation, medicalCenter, practitioner, dynamic
local SOURCES = {
  -- Social
  { 420, "Instagram", "instagram", 40, "social", ALL, APPS,
    { samples = samples{ DEFAULT, { "test", "A small account for tests" } } } },
  { 1, "Facebook", "facebook", 1, "social", ALL, APPS, { samples = samples{ DEFAULT } } },
  { 3, "Twitter", "twitter", 3, "social", ALL, APPS, { alias = { "X" } } },
  { 5, "Pinterest", "pinterest", 5, "social", ALL, APPS },
  { 7, "Flickr", "flickr", 7, "social", ALL, WEB },
  { 9, "LinkedIn", "linkedin", 9, "social", ALL, APPS },
  { 11, "Reddit", "reddit", 11, "social", { "US", "GB", "CA", "AU" }, APPS, { status = "pending" } },
  { 13, "Tumblr", "tumblr", 13, "social", ALL, WEB, { status = "deprecated" } },
  -- Medical
  { 701, "Sandbox Ziekenhuis Utrecht", "sandbox-ziekenhuis-utrecht", 601, "medical", { "NL" }, WEB,
    { abbreviation = "SZU", medicalCenter = "Sandbox Ziekenhuis Utrecht", alias = { "SZU Utrecht" } } },
  { 702, "Huisartsenpraktijk De Linde", "huisartsenpraktijk-de-linde", 602, "medical", { "NL" }, WEB,
    { medicalCenter = "Gezondheidscentrum De Linde", practitioner = "Dr. A. de Vries" } },
  { 703, "Apotheek Centraal", "apotheek-centraal", 603, "medical", { "NL" }, WEB,
    { medicalCenter = "Apotheek Centraal Rotterdam" } },
  { 704, "Sandbox Medisch Centrum Amsterdam", "sandbox-medisch-centrum-amsterdam", 604, "medical",
    { "NL" }, WEB, { abbreviation = "SMCA", medicalCenter = "Sandbox Medisch Centrum Amsterdam" } },
  { 705, "MedMij Sample Provider", "medmij-sample-provider", 605, "medical", { "NL" }, WEB,
    { status = "sampledataonly", samples = samples{ DEFAULT,
      { "gp-data", "A GP record: episodes, medication, lab results" },
      { "hospital-data", "A hospital record: admissions, letters, imaging" } } } },
  { 710, "NHS Sandbox GP Practice", "nhs-sandbox-gp-practice", 610, "medical", { "GB" }, APPS,
    { medicalCenter = "Riverside Surgery", practitioner = "Dr. J. Smith", alias = { "NHS GP" } } },
  { 711, "Sandbox Hospital Trust", "sandbox-hospital-trust", 611, "medical", { "GB" }, WEB,
    { status = "pending", abbreviation = "SHT" } },
  { 720, "Sandbox Health System", "sandbox-health-system", 620, "medical", { "US" }, APPS,
    { medicalCenter = "Sandbox Health System", alias = { "SHS FHIR" } } },
  { 721, "Sample Clinic", "sample-clinic", 621, "medical", { "US", "CA" }, WEB,
    { status = "sampledataonly", samples = samples{ DEFAULT } } },
  { 730, "Sandbox Klinikum Berlin", "sandbox-klinikum-berlin", 630, "medical", { "DE" }, WEB,
    { medicalCenter = "Sandbox Klinikum Berlin-Mitte", practitioner = "Dr. M. M\u{fc}ller" } },
  { 740, "H\u{f4}pital Sandbox Paris", "hopital-sandbox-paris", 640, "medical", { "FR" }, WEB,
    { abbreviation = "HSP", medicalCenter = "H\u{f4}pital Sandbox Paris" } },
  -- Finance
  { 801, "Sandbox Bank", "sandbox-bank", 701, "finance", { "NL", "BE" }, APPS },
  { 802, "Open Banking UK (Sandbox)", "open-banking-uk-sandbox", 702, "finance", { "GB" }, APPS,
    { alias = { "Open Banking" } } },
  { 803, "Sandbox Credit Union", "sandbox-credit-union", 703, "finance", { "US", "CA" }, WEB },
  { 804, "Sandbox Sparkasse", "sandbox-sparkasse", 704, "finance", { "DE" }, APPS },
  { 805, "Banque Sandbox", "banque-sandbox", 705, "finance", { "FR", "BE" }, WEB,
    { status = "deprecated" } },
  { 806, "Sample Bank", "sample-bank", 706, "finance", ALL, WEB,
    { status = "sampledataonly", samples = samples{ DEFAULT,
      { "high-spender", "Many card transactions over two years" } } } },
  -- Health & Fitness
  { 183, "Fitbit", "fitbit", 24, "health-fitness", ALL, { "web", "ios", "android", "wearable" },
    { samples = samples{ DEFAULT } } },
  { 184, "Garmin", "garmin", 25, "health-fitness", ALL, { "web", "wearable" } },
  { 185, "Strava", "strava", 26, "health-fitness", ALL, APPS },
  { 186, "Apple Health", "apple-health", 27, "health-fitness", ALL, { "ios" },
    { auth = "sdk", alias = { "HealthKit" } } },
  { 187, "Google Fit", "google-fit", 28, "health-fitness", ALL, { "android" },
    { auth = "sdk", status = "deprecated" } },
  { 188, "Oura", "oura", 29, "health-fitness", ALL, { "ios", "android", "wearable" } },
  { 189, "Withings", "withings", 30, "health-fitness", EU, APPS },
  { 190, "Polar", "polar", 31, "health-fitness", ALL, { "web", "wearable" }, { status = "pending" } },
  -- Entertainment
  { 312, "Spotify", "spotify", 19, "entertainment", ALL, APPS,
    { samples = samples{ DEFAULT, { "heavy-listener", "Ten thousand plays a month" } } } },
  { 313, "YouTube", "youtube", 20, "entertainment", ALL, APPS },
  { 314, "Deezer", "deezer", 21, "entertainment", { "FR", "DE", "GB", "NL", "BE", "ES", "IT" }, APPS },
  { 315, "SoundCloud", "soundcloud", 22, "entertainment", ALL, APPS },
  { 316, "Last.fm", "lastfm", 23, "entertainment", ALL, WEB, { status = "deprecated" } },
  -- Shopping
  { 901, "Sandbox Shop", "sandbox-shop", 801, "shopping", { "NL" }, WEB },
  { 902, "Sample Marketplace", "sample-marketplace", 802, "shopping", ALL, WEB,
    { status = "sampledataonly", samples = samples{ DEFAULT } } },
  -- Push sources: applications write to them, nothing is fetched
  { 950, "Sandbox Journal", "sandbox-journal", 850, "health-fitness", ALL, APPS,
    { type = 2, auth = "none" } },
  { 951, "Sandbox Medical Notes", "sandbox-medical-notes", 851, "medical", { "NL" }, WEB,
    { type = 2, auth = "none" } },
}

local TYPES = {
  [1] = { id = 1, name = "Pull", reference = "pull" },
  [2] = { id = 2, name = "Push", reference = "push" },
}

local function list_of(refs, by)
  local out = wire.array{}
  for i, r in ipairs(refs) do
    local rec = assert(by[r], r)
    out[i] = { id = rec.id, name = rec.name, reference = rec.reference, code = rec.code }
  end
  return out
end

local function strings(list)
  local out = wire.array{}
  for i, s in ipairs(list or {}) do
    out[i] = s
  end
  return out
end

_M.sources = {}
_M.source_by_id = {}
for i, row in ipairs(SOURCES) do
  local id, name, ref, service_id, cat, countries, platforms, f = row[1], row[2], row[3], row[4],
    row[5], row[6], row[7], row[8] or {}
  local status = f.status or "approved"
  local published = PUBLISHED + i * 7 * 86400000
  local src = {
    id = id, name = name, reference = ref, publishedStatus = status, publishedDate = published,
    onboardable = status == "approved" or status == "sampledataonly",
    dynamic = false,
    type = TYPES[f.type or 1],
    service = { id = service_id, name = name, reference = ref, publishedDate = published,
                publishedStatus = status == "sampledataonly" and "approved" or status },
    category = list_of({ cat }, category_by_ref),
    country = list_of(countries, country_by_code),
    platform = list_of(platforms, platform_by_ref),
    resource = { url = LOGOS .. "sources/" .. ref .. ".png", mimetype = "image/png" },
    alias = strings(f.alias),
    abbreviation = f.abbreviation,
    medicalCenter = f.medicalCenter,
    practitioner = f.practitioner,
    json = { authorisation = { type = f.auth or "saas" },
             sampleData = f.samples ~= nil, sourceType = (f.type == 2) and "push" or "pull" },
    samples = f.samples,     -- internal: GET permission-access/sample/datasets/{id}
  }
  _M.sources[i] = src
  _M.source_by_id[id] = src
end

return _M
