--- The SDK object that `digime.init` returns; call its methods as `sdk:name{ ... }`.
--
-- Common options: `contract = { id = "...", private_key = "<PEM>" }` (your contract with
-- digi.me) and `user_access_token` (the table `exchange_code_for_token` returned: `{
-- access_token = { value, expiry }, refresh_token = { value, expiry }, user = { id },
-- consent_id }`). A call that uses a user token refreshes it when it has expired and returns
-- the token in force as `user_access_token`: keep that one for the next call.
--
-- Errors: every method returns `nil, err` with err one of the `errors` kinds. Common to all:
-- `TypeValidationError` (a bad option), `NetworkError` (the network failed after the
-- retries; `TLSError` when TLS verification failed, never retried), `ServerError` (digi.me
-- answered with an error), `DigiMeSDKError` (`InvalidServerToken`, `JWKSError`,
-- `InvalidResponse`, `TransportUnavailable`, ...). Only the ones special to a method are
-- listed under it.
-- @classmod sdk

local sdk = {}

--- Authorization
-- @section auth

--- The URL that starts the authorization of a new user (or of an existing user's new
-- contract): send the user there.
-- @tparam table opts
-- @tparam table opts.contract
-- @tparam string opts.callback where digi.me sends the user back
-- @tparam string opts.state echoed on the callback (may be "")
-- @tparam[opt] number opts.service_id onboard this service straight away
-- @tparam[opt] table opts.user_access_token an existing user's token
-- @tparam[opt] table opts.session_options `{ pull = { scope, limits, sourceFetch, ... } }`
-- @tparam[opt] string opts.source_type `"pull"` or `"push"`
-- @tparam[opt] table opts.sample_data `{ data_set, auto_onboard }`
-- @tparam[opt] string opts.locale
-- @tparam[opt] boolean opts.include_sample_data_only_sources
-- @tparam[opt] string opts.storage_id bind this provisional storage to the user
-- @tparam[opt] boolean opts.trigger_query
-- @treturn table `{ url, code_verifier, session = { expiry, key } }`: keep `code_verifier` for
--   `exchange_code_for_token`
function sdk:get_authorize_url(opts) end

--- The URL that authorizes an existing user again (their refresh token has died).
-- @tparam table opts `contract, callback, user_access_token`, and optional `state, locale,
--   session_options, trigger_query` as for `get_authorize_url`
-- @treturn table `{ url, code_verifier, session, user_access_token }`
function sdk:get_reauthorize_url(opts) end

--- Exchanges the callback's `code` for the user's token.
-- @tparam table opts `{ contract, authorization_code, code_verifier }`
-- @treturn table the user access token
function sdk:exchange_code_for_token(opts) end

--- Refreshes a user token by hand (calls refresh by themselves when needed).
-- @tparam table opts `{ contract, user_access_token }`
-- @treturn table the new token
-- @return or nil and a `ServerError` `InvalidToken` once the refresh token has died
function sdk:refresh_token(opts) end

--- Onboarding and accounts
-- @section onboard

--- The URL that adds a service to a user's library.
-- @tparam table opts `{ contract, callback, user_access_token, service_id?, source_type?,
--   sample_data?, session_options?, locale?, include_sample_data_only_sources?, trigger_query? }`
-- @treturn table `{ url, session, user_access_token }`
function sdk:get_onboard_service_url(opts) end

--- The URL that authorizes an account again (its source authorization expired).
-- @tparam table opts `{ contract, callback, user_access_token, account_id, locale? }`
-- @treturn table `{ url, session, user_access_token }`
function sdk:get_reauthorize_account_url(opts) end

--- The URL where the user withdraws the application's permission for one account.
-- @tparam table opts `{ contract, user_access_token, account_id, redirect_uri }`
-- @treturn table `{ location, user_access_token }`
function sdk:get_revoke_account_permission_url(opts) end

--- Reading the library
-- @section read

--- Starts a read session (and a sync of the user's sources).
-- @tparam table opts `{ contract, user_access_token, session_options? }`
-- @treturn table `{ session = { expiry, key }, user_access_token }`
function sdk:read_session(opts) end

--- One poll of the library: its sync state and its files.
-- @tparam table opts `{ contract, user_access_token, session_key }`
-- @treturn table `{ status = { state, details? }, fileList = { { name, updatedDate }, ... }?,
--   user_access_token }`
function sdk:read_file_list(opts) end

--- One file, decrypted and decompressed as it arrives.
-- @tparam table opts
-- @tparam table opts.contract
-- @tparam table opts.user_access_token
-- @tparam string opts.session_key
-- @tparam string opts.file_name
-- @tparam[opt] function|file opts.sink where the plaintext goes instead of `file_data`: a
--   function called with each chunk and finally with nil (returning a false value stops the
--   read with `SinkError`), or a file handle open for writing (written with `:write`, left
--   open). Memory stays bounded whatever the file's size.
-- @tparam[opt] number opts.max_size the largest plaintext taken without a sink
-- @treturn table `{ file_data (without a sink), file_name, file_metadata, last_modified,
--   compression, user_access_token }`
-- @return or nil and a `FileDecryptionError` or `DigiMeSDKError` `SinkError`
function sdk:read_file(opts) end

--- A file's metadata, from a HEAD request.
-- @tparam table opts `{ contract, user_access_token, session_key, file_name }`
-- @treturn table `{ file_metadata, file_name, compression, user_access_token }`
function sdk:read_file_metadata(opts) end

--- The user's accounts as the server sends them.
-- @tparam table opts `{ contract, user_access_token }`
-- @treturn table `{ accounts = { { id, reference, type, serviceTypeName, ... } }, user_access_token }`
function sdk:read_accounts(opts) end

--- The whole library: polls the file list until the sync is done and downloads every new or
-- updated file, `concurrency` at a time.
-- @tparam table opts
-- @tparam table opts.contract
-- @tparam table opts.user_access_token
-- @tparam string opts.session_key
-- @tparam[opt] function opts.on_file_data `function(file, sync)`: each file as `read_file`
--   returns it, plus `file_list`
-- @tparam[opt] function opts.on_file_error `function({ error, file_name, file_list }, sync)`
-- @tparam[opt] function opts.on_status_change `function(state, sync)`
-- @tparam[opt] function opts.sink a factory `function(file_name, entry) -> sink` giving each
--   file its own sink (a function or a file handle, as for `read_file`); not a file handle itself
-- @tparam[opt=5] integer opts.concurrency downloads in flight at most
-- @tparam[opt=3] number opts.poll_interval seconds between polls
-- @tparam[opt=600] number opts.max_time seconds for the whole sync
-- @tparam[opt=100] integer opts.max_unchanged_polls polls without change before `SyncStalled`
-- @treturn table `{ status, files = <count delivered>, failures = <count failed>, polls,
--   account_problems = { { account_id, code, message, reauth, ... } }, user_access_token,
--   stopped? }`; `sync:stop()` in a callback stops it
-- @return or nil and an error whose `result` is the table above: `DigiMeSDKError`
--   `SyncTimeout` (past `max_time`), `SyncStalled`, `CallbackError` (a callback raised), or
--   `NetworkError` `ServerUnreachable` when the server is gone (three files in a row failed
--   with refused or reset connections after their retries; `err.files` delivered,
--   `err.not_delivered` of the `err.listed` files not)
function sdk:read_all_files(opts) end

--- The whole-library sync as an iterator: `for file, err in sdk:files{...} do ... end`, with
-- the options of `read_all_files` but the callbacks. A file that failed gives `false, err` and
-- the loop goes on; a fatal error (or a bad option) gives `false, err` and ends it.
-- @tparam table opts
-- @return the iterator
function sdk:files(opts) end

--- Writing and managing
-- @section write

--- Pushes data to the user's library (`type = "library"`) or to a provider (`type = "provider"`).
-- @tparam table opts
-- @tparam table opts.contract
-- @tparam table opts.user_access_token
-- @tparam string opts.type `"library"` or `"provider"`
-- @tparam table opts.data library: `{ file_data (a string, file handle or reader function),
--   file_name, file_descriptor = { mimeType, accounts, reference?, tags? } }`; provider: a JSON table
-- @tparam[opt] string opts.version provider only: `"stu3"` or `"3.0.2"`
-- @tparam[opt] string opts.standard provider only: `"fhir"`
-- @tparam[opt] string opts.account_id provider only
-- @treturn table `{ user_access_token }`
-- @return or nil and a `DigiMeSDKError` `StreamNotRewindable` (a reader function could not be
--   sent again after a token refresh)
function sdk:push_data(opts) end

--- Deletes the user and their library.
-- @tparam table opts `{ contract, user_access_token }`
-- @treturn table `{ deleted = true, status }`
function sdk:delete_user(opts) end

--- Deletes one account of the user.
-- @tparam table opts `{ contract, user_access_token, account_id }`
-- @treturn table `{ deleted = true, status }`
function sdk:delete_account(opts) end

--- A portability report.
-- @tparam table opts `{ contract, user_access_token, format = "xml", service_type = "medmij",
--   from?, to? }`
-- @treturn table `{ file = <report text>, user_access_token }`
function sdk:get_portability_report(opts) end

--- A source's sample data sets.
-- @tparam table opts `{ contract, source_id }`
-- @treturn table `{ data_sets = { [id] = { name, description } } }`
function sdk:get_service_sample_data_sets(opts) end

--- The contract as digi.me describes it.
-- @tparam table opts `{ contract }`
-- @treturn table `{ id, accessType, application = { id, name, ... }, expirationDate, ... }`
function sdk:get_contract_details(opts) end

--- Discovery
-- @section discovery

--- Sources. @tparam table opts `{ contract, sources_body_params? }`
-- @treturn table `{ data, limit, offset, total }`
function sdk:query_sources(opts) end

--- Countries. @tparam table opts `{ contract, countries_body_params? }`
-- @treturn table `{ data }`
function sdk:query_countries(opts) end

--- Platforms. @tparam table opts `{ contract, platforms_body_params? }`
-- @treturn table `{ data }`
function sdk:query_platforms(opts) end

--- Categories. @tparam table opts `{ contract, categories_body_params? }`
-- @treturn table `{ data }`
function sdk:query_categories(opts) end

--- Cloud storage
-- @section storage

--- A provisional storage for a user not authorized yet.
-- @tparam table opts `{ contract }`
-- @treturn table `{ storage = { id, kid } }`
function sdk:create_provisional_storage(opts) end

--- The user's storage.
-- @tparam table opts `{ contract, user_access_token }`
-- @treturn table `{ storage = { id, kid }, user_access_token }`
function sdk:get_user_storage(opts) end

--- The files of a storage folder.
-- @tparam table opts `{ contract, storage_id, path?, recursive? }`
-- @treturn table `{ files = { { id, name, originalName, originalPath, path } }, total }`
function sdk:list_storage_files(opts) end

--- Uploads a file (encrypted by the SDK).
-- @tparam table opts `{ contract, storage_id, file_name, file_data (a string, file handle or
--   reader function), path? }`
-- @treturn table `{ uploaded = true, status }`
function sdk:upload_file_to_storage(opts) end

--- Downloads a file, decrypted as it arrives.
-- @tparam table opts `{ contract, storage_id, path, sink? }` (sink as for `read_file`)
-- @treturn table `{ file_data (without a sink), status }`
function sdk:download_storage_file(opts) end

--- Deletes a file, or a folder (a path ending in "/").
-- @tparam table opts `{ contract, storage_id, path }`
-- @treturn table `{ deleted = true, status }`
function sdk:delete_storage_files(opts) end

--- Logging
-- @section log

--- Passes a line to the configured logger.
-- @tparam string level `"debug"`, `"info"`, `"warn"` or `"error"`
-- @tparam string message
-- @tparam[opt] table fields
function sdk:log(level, message, fields) end

return sdk
