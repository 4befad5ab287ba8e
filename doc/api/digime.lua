--- lua-digime: the Lua SDK for the digi.me personal-data API.
--
-- `require "digime"` gives this module: `digime.init` makes an SDK object (see `sdk` for its
-- methods), `digime.run`, `digime.spawn` and `digime.sleep` run calls concurrently, and
-- `digime.errors` describes the error objects (see `errors`).
--
-- Every function here and every `sdk:` method returns its result, or `nil` and an error
-- object; a bad argument (the wrong type, an unknown option key, `self` missing, a string
-- over its length limit) is a `TypeValidationError` naming the field. Nothing is raised.
--
-- This file documents the public face only; it is not loaded by the SDK.
-- @module digime
-- @usage
-- local digime = require "digime"
-- local sdk = assert(digime.init{ application_id = "my-app" })
-- local res, err = sdk:get_authorize_url{ contract = { id = "...", private_key = pem },
--                                         callback = "https://example.org/return", state = "s1" }

local digime = {}

--- The SDK's version ("0.1.0").
digime._VERSION = "0.1.0"

--- Creates an SDK object. Unknown keys are refused.
-- @tparam table opts
-- @tparam string opts.application_id your application's id (required)
-- @tparam[opt="https://api.digi.me/v1.7/"] string opts.base_url the API's base URL
--   (http(s)://host[:port]/path; a trailing `/` is added)
-- @tparam[opt="https://api.digi.me/apps/saas/"] string opts.onboard_url the onboarding pages
-- @tparam[opt="https://cloud.digi.me/v1/"] string opts.cloud_base_url the cloud storage API
-- @tparam[opt] table opts.retry_options `{ limit = 2, max_time = 30, backoff = 1, max_backoff = 10 }`:
--   retries of idempotent calls (and of any call that never reached the server)
-- @tparam[opt=30] number opts.timeout seconds without progress after which an attempt fails
--   (a stall limit: no byte moved either way for this long; a transfer that keeps moving,
--   a 3 GiB file for example, may take as long as it needs)
-- @tparam[opt=10] number opts.connect_timeout seconds to set up a connection
-- @tparam[opt] table opts.tls `{ verify = true, cafile =, capath = }`
-- @tparam[opt] table opts.proxy `{ http =, https =, no_proxy = }` (curl transport only)
-- @tparam[opt] string|table opts.transport `"curl"`, `"ngx"` (inside nginx, the default there),
--   or an object with `request(self, req)`
-- @tparam[opt] table opts.jwks `{ allowed = { base_url .. "jwks/oauth" }, ttl = 300, cooldown = 30,
--   max_size = 1 MiB, shared_dict = name }`: the keys that sign digi.me's tokens
-- @tparam[opt=60] number opts.clock_leeway seconds of clock skew tolerated on token times
-- @tparam[opt] table opts.limits `{ json = 16 MiB, headers = 256 KiB, body = 1 GiB }`
-- @tparam[opt] function opts.on_token_refresh `function(new_token, old_token)`
-- @tparam[opt] function opts.logger `function(level, message, fields)`; never given secrets
-- @tparam[opt] table opts.agent the agent object sent to digi.me
-- @treturn sdk the SDK object
-- @return or nil and a `TypeValidationError` / `DigiMeSDKError` `TransportUnavailable`
function digime.init(opts) end

--- Runs `fn(...)` as the first task of a scheduler and returns what it returns. Calls made
-- inside it, and inside the tasks it spawns, run concurrently (outside, each call blocks). An
-- error raised by `fn` is raised again here. Inside nginx, where every handler is already a
-- task, it simply calls `fn`.
-- @tparam function fn the task
-- @param ... its arguments
-- @return fn's results
-- @return or nil and a `TypeValidationError` (`fn` not a function) or `DigiMeSDKError`
--   `NestedRun` (called inside a task: use `digime.spawn`)
function digime.run(fn, ...) end

--- Starts `fn(...)` as a new task of the running `digime.run`; `task:wait()` returns its
-- results (or nil, err if it raised), `task:done()` says whether it ended.
-- @tparam function fn the task
-- @param ... its arguments
-- @return a task
-- @return or nil and a `TypeValidationError` or `DigiMeSDKError` `NotInTask` (called
--   outside `digime.run`)
function digime.spawn(fn, ...) end

--- Sleeps without blocking the other tasks (outside `digime.run`, simply sleeps).
-- @tparam number seconds a finite number >= 0
-- @return true, or nil and a `TypeValidationError`
function digime.sleep(seconds) end

--- The error objects' module: see `errors`.
digime.errors = {}

return digime
