-- Everything the sandbox remembers: users, codes, tokens, sessions, syncs, nonces, faults, the
-- consent decision of auto mode, stats and the request log. All of it is forgotten by
-- POST /sandbox/reset; keys and contracts (server.lua) are not state.
--
-- One process, one cqueues thread: handlers run one at a time between yields, so plain
-- tables need no locking.

local core = require "digime.core"

local os_time = os.time
local pairs, ipairs, type = pairs, ipairs, type
local table_remove = table.remove

local _M = {}
local mt = { __index = _M }

local function random(n)
  return core.random_alnum(n or 32)
end
_M.random = random

function _M.new(cfg)
  local self = setmetatable({ cfg = cfg }, mt)
  self:reset()
  return self
end

function _M:reset()
  -- Requests in flight (a hang, a delay) outlive a reset; keep their count right.
  local inflight = self.stats and self.stats.inflight or 0
  local downloads = self.stats and self.stats.inflight_downloads or 0
  local open = self.stats and self.stats.connections_open or 0
  self.users = {}        -- id -> { id, identifier, consents = { client_id -> consent_id },
                         --        the library view (library.lua): removed, revoked,
                         --        reauthorized, pushed, pushed_by_name; storages (client_id ->
                         --        storage id) }
  self.references = {}   -- reference id -> { type = "cloudId"|"accountId", value, client_id }
  self.storages = {}     -- storage id -> storage (storage.lua)
  self.pushes = {}       -- every push, in order (GET /sandbox/pushes)
  self.page_codes = {}   -- preauthorization / reference code -> pending onboarding page
  self.auth_codes = {}   -- authorization code -> { client_id, code_challenge, user_id, ... }
  self.access = {}       -- access token value -> { user_id, client_id, consent_id, expires_on }
  self.refresh = {}      -- refresh token value -> { user_id, client_id, expires_on, current }
  self.sessions = {}     -- session key -> { client_id, user_id, actions, expiry (ms) }
  self.syncs = {}        -- user id -> { step = 0..3, at = monotonic time of the last step }
  self.nonces = {}       -- nonce -> timestamp (ms) of the JWT that used it
  self.nonce_count = 0
  self.nonce_prune_at = nil   -- 10,000
  self.faults = {}       -- in creation order
  self.fault_seq = 0
  self.consent = { decision = "accept", error_code = "UserCancelled" }
  self.log = {}
  self.stats = {
    requests = 0, by_path = {}, by_status = {},
    jwks_fetches = 0, foreign_jwks_fetches = 0,
    inflight = inflight, max_inflight = 0,
    inflight_downloads = downloads, max_inflight_downloads = 0,
    downloads = 0, download_bytes = 0,
    faults_applied = 0, tokens_issued = 0, refreshes = 0,
    pushes = 0, provider_pushes = 0, push_bytes = 0,
    storage_uploads = 0, storage_upload_bytes = 0, storage_downloads = 0,
    -- Connections (conns.lua): accepted, open now (kept over a reset), the most open at once;
    -- TLS handshakes, full and resumed.
    connections = 0, connections_open = open, max_connections_open = open,
    tls_handshakes = 0, tls_resumed = 0,
    -- The same for the connections that carried a request outside /sandbox/.
    api_connections = 0, api_tls_handshakes = 0, api_tls_resumed = 0,
    nonce_replays = 0,     -- client JWTs refused because their nonce was used before
  }
end

-- Nonces ------------------------------------------------------------------------------------

-- A nonce only needs remembering while its JWT's timestamp is inside the window: after that
-- the timestamp check refuses a replay anyway. Pruned when the table has doubled since the
-- last pruning (never below 10,000): a window full of live nonces (a sync of 100,000 files)
-- must not be scanned again at every request.
function _M:nonce_used(nonce)
  return self.nonces[nonce] ~= nil
end

function _M:remember_nonce(nonce, ts_ms, now_ms)
  self.nonces[nonce] = ts_ms
  self.nonce_count = self.nonce_count + 1
  if self.nonce_count > (self.nonce_prune_at or 10000) then
    local horizon = now_ms - 2 * self.cfg.timestamp_window * 1000
    local n = 0
    for k, ts in pairs(self.nonces) do
      if ts < horizon then
        self.nonces[k] = nil
      else
        n = n + 1
      end
    end
    self.nonce_count = n
    self.nonce_prune_at = n * 2 > 10000 and n * 2 or 10000
  end
end

-- Users and tokens --------------------------------------------------------------------------

function _M:new_user()
  local user = { id = random(24), identifier = random(24), consents = {} }
  self.users[user.id] = user
  return user
end

function _M.consent_id(_, user, client_id)
  local c = user.consents[client_id]
  if not c then
    c = random(24)
    user.consents[client_id] = c
  end
  return c
end

-- Issues an access/refresh pair for user under client_id; returns the token endpoint payload.
function _M:issue_tokens(user, client_id)
  local now = os_time()
  local consent = self:consent_id(user, client_id)
  local at, rt = random(48), random(48)
  local at_exp, rt_exp = now + self.cfg.access_ttl, now + self.cfg.refresh_ttl
  self.access[at] = { user_id = user.id, client_id = client_id, consent_id = consent,
                      expires_on = at_exp }
  self.refresh[rt] = { user_id = user.id, client_id = client_id, consent_id = consent,
                       expires_on = rt_exp, current = true, access_token = at }
  self.stats.tokens_issued = self.stats.tokens_issued + 1
  return {
    access_token = { expires_on = at_exp, value = at },
    refresh_token = { expires_on = rt_exp, value = rt },
    sub = user.id,
    consentid = consent,
    identifier = { id = user.identifier },
    token_type = "Bearer",
  }
end

-- The record of an access token, when it is live (or, with allow_expired, when it was ever
-- issued): -> rec, user | nil
function _M:access_token(value, allow_expired)
  if type(value) ~= "string" then
    return nil
  end
  local rec = self.access[value]
  if not rec then
    return nil
  end
  local user = self.users[rec.user_id]
  if not user then
    return nil
  end
  if not allow_expired and rec.expires_on <= os_time() then
    return nil
  end
  return rec, user
end

-- Expires the current tokens of one user (or of all users): what = access|refresh|both.
function _M:expire(what, user_id)
  local past = os_time() - 1
  local n = 0
  local function sweep(tbl)
    for _, rec in pairs(tbl) do
      -- Rotated refresh tokens are dead already; leave them out of the count.
      if (user_id == nil or rec.user_id == user_id) and rec.expires_on > past
         and rec.current ~= false then
        rec.expires_on = past
        n = n + 1
      end
    end
  end
  if what == "access" or what == "both" then
    sweep(self.access)
  end
  if what == "refresh" or what == "both" then
    sweep(self.refresh)
  end
  return n
end

-- Forgets a user: its record, tokens, codes, sessions and sync (storages: storage.lua).
function _M:delete_user(user_id)
  self.users[user_id] = nil
  for k, rec in pairs(self.access) do
    if rec.user_id == user_id then
      self.access[k] = nil
    end
  end
  for k, rec in pairs(self.refresh) do
    if rec.user_id == user_id then
      self.refresh[k] = nil
    end
  end
  for k, rec in pairs(self.auth_codes) do
    if rec.user_id == user_id then
      self.auth_codes[k] = nil
    end
  end
  for k, rec in pairs(self.page_codes) do
    if rec.user_id == user_id then
      self.page_codes[k] = nil
    end
  end
  for k, s in pairs(self.sessions) do
    if s.user_id == user_id then
      self.sessions[k] = nil
    end
  end
  self.syncs[user_id] = nil
end

-- Sessions ----------------------------------------------------------------------------------

function _M:new_session(client_id, user_id, actions)
  local key = random(32)
  local expiry = (os_time() + self.cfg.session_ttl) * 1000
  self.sessions[key] = { client_id = client_id, user_id = user_id, actions = actions,
                         expiry = expiry }
  return { expiry = expiry, key = key }
end

-- Faults ------------------------------------------------------------------------------------

function _M:add_fault(f)
  self.fault_seq = self.fault_seq + 1
  f.id = self.fault_seq
  for _, a in ipairs(f.actions or {}) do
    a.id = f.id            -- the action a random fault applies carries the fault's id
  end
  self.faults[#self.faults + 1] = f
  return f.id
end

local function fault_matches(f, method, path)
  if f.method and f.method ~= method then
    return false
  end
  if f.match == "exact" then
    return path == f.path
  end
  return path:sub(1, #f.path) == f.path
end

-- A random fault's draw for one request (control.lua documents it): u = the first 4 bytes of
-- sha256(seed "\n" key "\n" n) as a big-endian integer / 2^32, v = the next 4 bytes so.
-- The request fails when u < probability, with the action whose weight interval holds
-- v * (sum of weights). -> the chosen action | nil
local function draw(f, key, n)
  local h = core.sha256(f.seed .. "\n" .. key .. "\n" .. n)
  local b1, b2, b3, b4, b5, b6, b7, b8 = h:byte(1, 8)
  local u = (((b1 * 256 + b2) * 256 + b3) * 256 + b4) / 4294967296
  if u >= f.probability then
    return nil
  end
  local v = (((b5 * 256 + b6) * 256 + b7) * 256 + b8) / 4294967296 * f.total_weight
  local acc = 0
  for i, a in ipairs(f.actions) do
    acc = acc + a.weight
    if v < acc or i == #f.actions then
      return a, i
    end
  end
end

-- One matching request for a random fault: -> the action to apply | nil
local function take_random(f, method, path)
  if f.count and f.count <= 0 then
    return nil
  end
  f.matched = f.matched + 1
  local key, n
  if f.by == "sequence" then
    key, n = "", f.matched
  else
    key = method .. " " .. (f.match == "exact" and "" or path:sub(#f.path + 1))
    n = (f.seen[key] or 0) + 1
    f.seen[key] = n
  end
  local a, i = draw(f, key, n)
  if not a then
    return nil
  end
  f.applied = f.applied + 1
  f.applied_by[i] = f.applied_by[i] + 1
  if f.by ~= "sequence" then
    f.faulted[key] = (f.faulted[key] or 0) + 1
  end
  if f.count then
    f.count = f.count - 1
  end
  return a
end

-- Takes one use of the first fault that matches: token faults (`token` true) only when a
-- token is being answered, the others when a request arrives. A random fault (one with a
-- probability) that does not fire lets the request on to the faults after it, and stays
-- listed when its count is used up (its record stays readable).
function _M:take_fault(method, path, token)
  for i, f in ipairs(self.faults) do
    if (f.action == "token") == (token == true) and fault_matches(f, method, path) then
      local a
      if f.probability then
        a = take_random(f, method, path)
      else
        a = f
        f.count = f.count - 1
        if f.count <= 0 then
          table_remove(self.faults, i)
        end
      end
      if a then
        self.stats.faults_applied = self.stats.faults_applied + 1
        return a
      end
    end
  end
  return nil
end

-- Stats and log -----------------------------------------------------------------------------

function _M:record(entry)
  local s = self.stats
  s.requests = s.requests + 1
  s.by_path[entry.path] = (s.by_path[entry.path] or 0) + 1
  local st = tostring(entry.status or "none")
  s.by_status[st] = (s.by_status[st] or 0) + 1
  local log = self.log
  log[#log + 1] = entry
  if #log > self.cfg.log_size then
    table_remove(log, 1)
  end
end

return _M
