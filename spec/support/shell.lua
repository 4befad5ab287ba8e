-- Small helpers for specs that check the core against command-line tools (openssl, curl).
local _M = {}

function _M.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs a shell command; returns its exit status, combined output.
function _M.status(cmd)
  local f = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"__rc=$?\""))
  local out = f:read("*a")
  f:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return rc, (out:gsub("__rc=%d+%s*$", ""))
end

-- Runs a shell command; returns ok, combined output.
function _M.run(cmd)
  local rc, out = _M.status(cmd)
  return rc == 0, out
end

function _M.tmpdir()
  local f = assert(io.popen("mktemp -d"))
  local dir = f:read("*l")
  f:close()
  return dir
end

-- The absolute path of a directory.
function _M.absolute(dir)
  local f = assert(io.popen("cd " .. _M.quote(dir) .. " && pwd"))
  local abs = f:read("*l")
  f:close()
  return abs
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

--- Starts `lua5.4 script args...` in the background, for a loopback server that prints its
-- port as its first line; waits up to 10 s for it. -> pid, port, out (the file that has
-- the child's output), or raises with that output, naming the server `what`.
function _M.spawn_port_script(script, args, what)
  local socket = require "socket"
  local out = os.tmpname()
  local quoted = {}
  for i, a in ipairs(args or {}) do quoted[i] = _M.quote(a) end
  local inner = ("exec lua5.4 %s %s >%s 2>&1"):format(_M.quote(script), table.concat(quoted, " "),
                                                      _M.quote(out))
  local p = assert(io.popen("sh -c " .. _M.quote(inner) .. " & echo $!"))
  local pid = assert(tonumber(p:read("*l")), "no pid")
  p:close()
  local port
  local deadline = socket.gettime() + 10
  repeat
    local f = io.open(out, "rb")
    port = f and tonumber(f:read("*l"))
    if f then f:close() end
    if not port then socket.sleep(0.02) end
  until port or socket.gettime() > deadline
  if not port then
    local text = _M.read(out)
    os.execute("kill " .. pid .. " 2>/dev/null")
    os.remove(out)
    error(what .. " did not start: " .. text)
  end
  return pid, port, out
end

return _M
