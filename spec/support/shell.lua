-- Small helpers for specs that check the core against command-line tools (openssl, curl).
local _M = {}

function _M.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs a shell command; returns ok, combined output.
function _M.run(cmd)
  local f = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"__rc=$?\""))
  local out = f:read("*a")
  f:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return rc == 0, (out:gsub("__rc=%d+%s*$", ""))
end

function _M.tmpdir()
  local f = assert(io.popen("mktemp -d"))
  local dir = f:read("*l")
  f:close()
  return dir
end

function _M.write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
  return path
end

function _M.read(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function _M.rmdir(dir)
  if dir and dir:match("^/tmp/") then os.execute("rm -rf " .. _M.quote(dir)) end
end

return _M
