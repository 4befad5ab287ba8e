--- Error objects: what every call returns as its second value when it fails.
--
-- An error is a table `{ kind, code, message, status?, reference?, retryable?, attempts?,
-- network?, cause?, field? }`; `tostring(err)` gives one log line, never with a secret in it.
-- `digime.errors.is_error(v)` tells one apart.
--
-- Kinds and their codes:
--
-- * `TypeValidationError`: a bad argument; `field` names it. Strings have length limits
--   (bytes): ids (`application_id`, `contract.id`, `session_key`, `account_id`, ...) 256;
--   file names 1024; URLs (`base_url`, `callback`, `redirect_uri`) 2048; `private_key` and
--   token values 65536; any other string 4096. Never retried, never sent.
-- * `ServerError`: digi.me answered with an error: `code` and `message` as it gave them,
--   `status` (HTTP), `reference`; `retryable` for 429, 502, 503, 504.
-- * `SDKInvalidError`: this SDK's version is refused (`SDKInvalid`, `SDKVersionInvalid`).
-- * `FileDecryptionError`: a file's content does not decrypt or decompress.
-- * `NetworkError`: the network failed after the retries. `network` says how: `connect`,
--   `resolve`, `timeout` (no progress for `timeout` seconds), `reset`, `too_large`, `tls`,
--   `cancelled`, `other`. Codes: `NetworkError`; `TLSError` (network `tls`: the certificate
--   did not verify or the handshake failed; `retryable = false`, the same in the curl and the
--   nginx transports); `ServerUnreachable` (`read_all_files` gave up on a server that is gone:
--   `files` delivered, `not_delivered` of the `listed` files, `cause`).
-- * `DigiMeSDKError`: everything else, by `code`: `InvalidServerToken`, `JWKSError`,
--   `JWTError`, `InvalidResponse`, `TransportUnavailable`, `RequestNotSent`, `SyncTimeout`,
--   `SyncStalled`, `CallbackError`, `SinkError`, `StreamNotRewindable`, `RefreshLockTimeout`,
--   `NestedRun`, `NotInTask`.
--
-- Errors of calls that use a user token carry `user_access_token` when a refresh happened.
-- @module errors

local errors = {}

--- The kinds, as a set: `errors.kinds.NetworkError == true`.
errors.kinds = {}

--- Whether v is an error object of this SDK.
-- @param v anything
-- @treturn boolean
function errors.is_error(v) end

return errors
