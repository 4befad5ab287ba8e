-- Helpers of spec/security_spec.lua: scripted loopback servers, a secrets ledger that scans
-- error texts and log lines for leaks, JWT forging with keys the spec holds, and test PKI
-- made with the openssl command line.
local cjson = require "cjson"
local core = require "digime.core"
local scripted = require "scripted"
local shell = require "shell"

local _M = {}

local q = shell.quote

local function script_dir()
  local src = debug.getinfo(1, "S").source
  local path = src:sub(1, 1) == "@" and src:sub(2) or "./spec/support/security_util.lua"
  return path:match("^(.*)/[^/]*$") or "."
end

-- Servers ----------------------------------------------------------------------------------

local Server = scripted.class("security_server", 20)

--- Starts spec/support/security_server.lua: -> server { origin, port, pid }
function _M.server(ttl)
  local pid, port, out = shell.spawn_port_script(script_dir() .. "/security_server.lua",
                                                 { ttl or 900 }, "security_server")
  return setmetatable({ pid = pid, port = port, out = out,
                        origin = "http://127.0.0.1:" .. port }, Server)
end

-- Its requests() are [{ method, target, headers }].

-- Secrets ----------------------------------------------------------------------------------
--
-- The ledger holds every secret the spec saw (token values, verifiers, codes, AES keys in
-- several encodings, the base64 body of private keys), and every text the SDK produced (error
-- texts, log lines). check() scans all texts for all secrets.

local Ledger = {}
Ledger.__index = Ledger

function _M.ledger()
  return setmetatable({ short = {}, windows = {}, texts = {}, counts = {} }, Ledger)
end

-- Secrets are indexed by their 16-character windows: a text leaks when any of its windows is
-- one (a whole secret, or any 16-character piece of one), which costs one table look-up per
-- character of text whatever the number of secrets. Shorter secrets are searched for whole.
local WINDOW = 16

local function add_windows(self, s, kind, from)
  for i = from or 1, #s - WINDOW + 1 do
    self.windows[s:sub(i, i + WINDOW - 1)] = kind
  end
end

function Ledger:secret(s, kind)
  kind = kind or "other"
  if type(s) ~= "string" or #s < 8 then return end
  if #s < WINDOW then
    if self.short[s] then return end
    self.short[s] = kind
  else
    if self.windows[s:sub(1, WINDOW)] then return end
    add_windows(self, s, kind)
  end
  self.counts[kind] = (self.counts[kind] or 0) + 1
end

--- A private key PEM: any 16-character window of its base64 body is secret (a partial leak
-- counts), whatever the line breaks around it.
function Ledger:pem(pem, kind)
  kind = kind or "private key"
  local body = {}
  for line in pem:gmatch("[^\r\n]+") do
    if not line:match("^%-%-%-%-%-") then body[#body + 1] = line end
  end
  -- The DER prefix of every RSA key of a given size is the same public ASN.1 header: leave
  -- out the windows that lie wholly in the first 40 characters (they are no secret).
  add_windows(self, table.concat(body), kind, 41 - WINDOW + 1)
  self.counts[kind] = (self.counts[kind] or 0) + 1
end

--- Raw key bytes (an AES key): raw, hex (both cases), base64 and base64url.
function Ledger:bytes(raw, kind)
  local hex = raw:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
  self:secret(raw, kind)
  self:secret(hex, kind)
  self:secret(hex:upper(), kind)
  local b64u = core.b64url_encode(raw)
  self:secret(b64u, kind)
  self:secret((b64u:gsub("%-", "+"):gsub("_", "/")), kind)
end

--- A user access token table (the SDK's shape).
function Ledger:token(t)
  if type(t) ~= "table" then return end
  if type(t.access_token) == "table" then self:secret(t.access_token.value, "access token") end
  if type(t.refresh_token) == "table" then self:secret(t.refresh_token.value, "refresh token") end
end

-- A readable, deep, stable dump of a value (for log fields).
local function dump(v, depth, seen)
  depth, seen = depth or 0, seen or {}
  if type(v) ~= "table" then return tostring(v) end
  if seen[v] or depth > 8 then return "{...}" end
  seen[v] = true
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = tostring(k) .. "=" .. dump(v[k], depth + 1, seen)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end
_M.dump = dump

--- The text of an error as a user could print or log it: tostring, and every string or
-- number field, through the chain of causes. (The user_access_token an error may carry is a
-- result field handed back on purpose, not text: it is left out.)
function _M.error_text(err)
  if type(err) ~= "table" then return tostring(err) end
  local parts, seen, e = {}, {}, err
  while type(e) == "table" and not seen[e] do
    seen[e] = true
    parts[#parts + 1] = tostring(e)
    local keys = {}
    for k, v in pairs(e) do
      if type(v) == "string" or type(v) == "number" then keys[#keys + 1] = tostring(k) end
    end
    table.sort(keys)
    for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. tostring(e[k]) end
    e = e.cause
  end
  return table.concat(parts, "\n")
end

function Ledger:error(err, where)
  if err == nil then return end
  self.texts[#self.texts + 1] = { where = where or "error", text = _M.error_text(err) }
end

function Ledger:line(level, message, fields)
  self.texts[#self.texts + 1] = { where = "log",
    text = tostring(level) .. " " .. tostring(message) .. " " .. dump(fields) }
end

function Ledger:text(where, text)
  self.texts[#self.texts + 1] = { where = where, text = text }
end

-- A compact JWS in a text: every client JWT carries a token or a verifier in its payload.
local JWS = "eyJ[%w_%-]+%.[%w_%-]+%.?"

--- -> nil when clean; else a description of the first leak (secret masked).
function Ledger:leak(text)
  for s, kind in pairs(self.short) do
    if text:find(s, 1, true) then return kind .. " (" .. #s .. " bytes)" end
  end
  -- as it is, and with line breaks and JSON/%q escapes removed (a PEM body across lines)
  local flat = text:gsub("\\n", ""):gsub("[\r\n\\]", "")
  for _, t in ipairs{ text, flat } do
    local windows = self.windows
    for i = 1, #t - WINDOW + 1 do
      local kind = windows[t:sub(i, i + WINDOW - 1)]
      if kind then return kind .. " (a 16-character piece of it)" end
    end
  end
  if text:find(JWS) then return "a compact JWS" end
  return nil
end

--- -> number of texts checked; raises naming every leak.
function Ledger:check()
  local bad = {}
  for _, t in ipairs(self.texts) do
    local what = self:leak(t.text)
    if what then
      bad[#bad + 1] = ("%s: %s leaked in: %s"):format(t.where, what, t.text:sub(1, 300))
    end
  end
  if #bad > 0 then
    error(#bad .. " text(s) carry secrets:\n" .. table.concat(bad, "\n"), 2)
  end
  return #self.texts
end

-- JWTs -------------------------------------------------------------------------------------

local b64e = core.b64url_encode

--- An ordered JSON object text from { k1, v1, k2, v2, ... } (v encoded with cjson).
function _M.ordered(list)
  local parts = {}
  for i = 1, #list, 2 do
    parts[#parts + 1] = cjson.encode(list[i]) .. ":" .. cjson.encode(list[i + 1])
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

--- header/payload: a table (cjson) or a JSON text; sig: "ps512" (key), "salt32", "rs512",
--- "hs512" (secret), "none", or a function(input) -> raw signature.
function _M.jws(header, payload, key, sig)
  local h = type(header) == "string" and header or cjson.encode(header)
  local p = type(payload) == "string" and payload or cjson.encode(payload)
  local input = b64e(h) .. "." .. b64e(p)
  return input .. "." .. b64e(_M.signature(input, key, sig or "ps512"))
end

function _M.signature(input, key, how)
  if type(how) == "function" then return how(input) end
  if how == "none" then return "" end
  if how == "ps512" then return key:sign_ps512(input) end
  if how == "salt32" then return key:sign_ps512(input, 32) end
  error("unknown signature kind " .. tostring(how))
end

-- PKCS#1 v1.5 (RS512) and HMAC (HS512) signatures, made by the openssl command line.
function _M.openssl_signature(dir, input, args)
  local inp = shell.write(dir .. "/sig-input", input)
  local out = dir .. "/sig-output"
  local ok, text = shell.run("openssl dgst -sha512 -binary " .. args .. " -out " .. q(out)
                             .. " " .. q(inp))
  assert(ok, "openssl dgst: " .. text)
  local sig = shell.read(out)
  os.remove(inp)
  os.remove(out)
  return sig
end

function _M.rs512(dir, key_file)
  return function(input)
    return _M.openssl_signature(dir, input, "-sign " .. q(key_file))
  end
end

function _M.hs512(dir, secret)
  local hex = secret:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
  return function(input)
    return _M.openssl_signature(dir, input, "-mac HMAC -macopt hexkey:" .. hex)
  end
end

-- Keys and certificates by the openssl command line -----------------------------------------

local function run(cmd)
  local ok, text = shell.run(cmd)
  assert(ok, cmd .. "\n" .. text)
  return text
end

--- A new RSA key PEM (PKCS#8; 2048 bits unless told) in dir/name.key: -> pem, path
function _M.rsa_key(dir, name, bits)
  local path = dir .. "/" .. name .. ".key"
  run(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:%d -out %s"):format(bits or 2048, q(path)))
  return shell.read(path), path
end

--- Test PKI in dir: a CA, a second CA, and server certificates (EC P-256 keys) for
--- 127.0.0.1/localhost (good), the same names but expired in 2020 (expired), and another
--- host name only (wrong_host); the good key serves all three.
-- -> { ca, other_ca, key, good, expired, wrong_host } (paths)
function _M.pki(dir)
  local p = function(n) return dir .. "/" .. n end
  local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  local ca_ext = '-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"'
  run(("openssl req -x509 %s -keyout %s -out %s -days 30 -subj '/CN=security spec CA' %s")
      :format(ec, q(p"ca.key"), q(p"ca.pem"), ca_ext))
  run(("openssl req -x509 %s -keyout %s -out %s -days 30 -subj '/CN=security spec other CA' %s")
      :format(ec, q(p"other_ca.key"), q(p"other_ca.pem"), ca_ext))
  run(("openssl req -new %s -keyout %s -out %s -subj '/CN=localhost'")
      :format(ec, q(p"server.key"), q(p"server.csr")))
  shell.write(p"ca.cnf", table.concat({
    "[ca]", "default_ca = c",
    "[c]", "dir = " .. dir, "database = " .. p"index.txt", "new_certs_dir = " .. dir,
    "serial = " .. p"serial", "default_md = sha256", "policy = pol", "unique_subject = no",
    "copy_extensions = none",
    "[pol]", "commonName = supplied",
    "[good]", "subjectAltName = DNS:localhost,IP:127.0.0.1",
    "basicConstraints = critical,CA:FALSE", "extendedKeyUsage = serverAuth",
    "[wrong]", "subjectAltName = DNS:wrong-host.example,IP:10.255.255.1",
    "basicConstraints = critical,CA:FALSE", "extendedKeyUsage = serverAuth", "",
  }, "\n"))
  shell.write(p"index.txt", "")
  shell.write(p"serial", "1000\n")
  local function sign(out, ext, dates)
    run(("openssl ca -batch -config %s -cert %s -keyfile %s -in %s -out %s -notext -extensions %s %s")
        :format(q(p"ca.cnf"), q(p"ca.pem"), q(p"ca.key"), q(p"server.csr"), q(out), ext, dates))
  end
  sign(p"good.pem", "good", "-days 30")
  -- OpenSSL 3.0's x509 has no -not_before; `openssl ca` takes explicit dates.
  sign(p"expired.pem", "good", "-startdate 20200101000000Z -enddate 20200201000000Z")
  sign(p"wrong_host.pem", "wrong", "-days 30")
  return { ca = p"ca.pem", other_ca = p"other_ca.pem", key = p"server.key", good = p"good.pem",
           expired = p"expired.pem", wrong_host = p"wrong_host.pem" }
end

return _M
