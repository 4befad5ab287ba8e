--- One refresh of a token for every task, worker and host sharing a store: the first takes
-- the store's lock and refreshes; the others wait for the lock and take the token it left.
-- Refresh tokens rotate: the same token presented twice is refused and ends the session, so
-- a refresh token is presented only by a holder of the lock, and never by one that cannot
-- tell what the previous holder did with it (when the store fails or forgot, the refresh
-- fails with StoreError and the token stays unused: the caller may try again).
local errors = require "digime.errors"

local tostring, type = tostring, type

local _M = {}

-- A failure is remembered briefly: long enough for those waiting at that moment.
local FAIL_TTL = 60
-- Seconds a store that fails is tried again before the refresh fails: a restart of Redis
-- takes less than that.
local STORE_GRACE = 2

local function lock_error(err)
  if err.code == "LockTimeout" then
    return errors.sdk("RefreshLockTimeout", "another worker's or host's refresh of this token "
      .. "did not finish in time: " .. err.message)
  end
  return err
end

-- When the lock came after a wait and no new token is recorded: the previous holder's outcome.
local function after_wait(done)
  if done and done.failed then
    return nil, errors.sdk("RefreshFailed", "another worker's or host's refresh of this token "
      .. "failed: " .. tostring(done.failed), { retryable = true })
  end
  return nil, errors.store("RefreshOutcomeLost", "another worker's or host's refresh of this "
    .. "token ended with no outcome in the store (it died, or the store restarted); the token "
    .. "may have rotated, so it is not presented again")
end

--- Runs refresh() (-> new token | nil, err) once for `name` across the store's users.
-- reuse: a recorded token is taken even without waiting (the automatic path); without it, a
-- recorded token is taken when its refresh ended after `began` (epoch s: when the caller's
-- own refresh began; the two ran at the same time, however the lock went). done_ttl:
-- seconds the new token is kept for late callers. -> new token (and nil, true when another
-- made it) | nil, err
function _M.run(sdk, name, reuse, done_ttl, refresh, began)
  local store = sdk.shared
  local lock = store:lock(name)
  local ok, waited = lock:acquire(STORE_GRACE)
  if not ok then return nil, lock_error(waited) end
  local done, derr = store:done_get(name)
  if derr then
    lock:release()
    return nil, derr
  end
  local concurrent = done and began and type(done.at) == "number" and done.at >= began
  if done and done.token and (waited or reuse or concurrent) then
    lock:release()
    return done.token, nil, true
  end
  if waited then
    lock:release()
    return after_wait(done)
  end
  local new, err = refresh()
  if new then
    local put, perr = store:done_put(name, new, done_ttl)
    if not put then
      -- the new token still goes to the caller and on_token_refresh: it is not lost
      sdk:log("warn", "refreshed a token, but could not hand it to other hosts",
              { error = tostring(perr) })
    end
  else
    store:done_fail(name, type(err) == "table" and err.message or err, FAIL_TTL)
  end
  lock:release()
  return new, err
end

return _M
