-- Loaded by busted (--helper) in the ASan run: the interpreter runs with libasan preloaded, and
-- programs the specs start (curl, openssl, the sandbox, nginx) must not inherit that: curl
-- deadlocks under a preloaded ASan runtime. Every command the specs run goes through
-- io.popen or os.execute, so both get the environment cleaned first.
local prefix = "env -u LD_PRELOAD -u ASAN_OPTIONS -u UBSAN_OPTIONS "
local popen, execute = io.popen, os.execute

io.popen = function(cmd, mode)  -- luacheck: ignore 122
  return popen(prefix .. "sh -c " .. ("'" .. cmd:gsub("'", "'\\''") .. "'"), mode)
end

os.execute = function(cmd)  -- luacheck: ignore 122
  if cmd == nil then return execute() end
  return execute(prefix .. "sh -c " .. ("'" .. cmd:gsub("'", "'\\''") .. "'"))
end
