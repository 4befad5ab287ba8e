--- PS512 signs and verifies per second through digime.core, with a 2048-bit key.
-- Usage: lua5.4 bench/ps512.lua [seconds]   (after `eval "$(make -s env)"`)
local core = require "digime.core"

local seconds = tonumber(arg and arg[1]) or 2
local key = core.generate_key(2048)
local data = ("eyJhbGciOiJQUzUxMiIsInR5cCI6IkpXVCJ9." .. ("x"):rep(300))
local sig = key:sign_ps512(data)

local function rate(fn)
  local n, start = 0, core.monotonic()
  local deadline = start + seconds
  repeat
    for _ = 1, 10 do fn() end
    n = n + 10
  until core.monotonic() >= deadline
  return n / (core.monotonic() - start)
end

local signs = rate(function() key:sign_ps512(data) end)
local verifies = rate(function() assert(key:verify_ps512(data, sig)) end)
print(("core PS512 sign/s %.0f verify/s %.0f (%s, %s)"):format(signs, verifies,
  (rawget(_G, "jit") and rawget(_G, "jit").version) or _VERSION, core.versions().openssl))
