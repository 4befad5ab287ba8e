-- Tells a resumed TLS handshake from a full one, for the stats (luaossl has no
-- SSL_session_reused).
--
-- TLS 1.3: the ClientHello (read ahead of the handshake and put back) offers a session
-- ticket in its pre_shared_key extension; OpenSSL's tickets begin with the name of the
-- ticket key that sealed them, so a ticket that begins with this server's key name is one
-- it issued, and it accepts it (the sandbox runs for less than a ticket's 2 h lifetime).
-- TLS 1.2: a resumed session keeps its master secret, so a master secret seen before means
-- a resumption (by session id or ticket alike).

local byte, sub = string.byte, string.sub

local _M = {}

local MAX_HELLO = 64 * 1024
local MAX_SECRETS = 10000

local function u16(s, i)
  local a, b = byte(s, i, i + 1)
  return a * 256 + b
end

local function u24(s, i)
  local a, b, c = byte(s, i, i + 2)
  return (a * 256 + b) * 256 + c
end

-- The identities of a pre_shared_key extension's data.
local function psk_identities(data)
  local out = {}
  if #data < 2 then
    return out
  end
  local stop = 2 + u16(data, 1)
  local i = 3
  while i + 1 <= stop and i + 1 <= #data do
    local n = u16(data, i)
    out[#out + 1] = sub(data, i + 2, i + 1 + n)
    i = i + 2 + n + 4          -- identity, obfuscated_ticket_age
  end
  return out
end

-- Parses a ClientHello handshake message (its body after the 4-byte header).
-- -> { session_id, psk = { identity, ... } } | nil
local function parse_hello(m)
  local i = 1 + 2 + 32                      -- client_version, random
  if #m < i then
    return nil
  end
  local sid_len = byte(m, i)
  local hello = { session_id = sub(m, i + 1, i + sid_len), psk = {} }
  i = i + 1 + sid_len
  if #m < i + 1 then
    return nil
  end
  i = i + 2 + u16(m, i)                     -- cipher_suites
  if #m < i then
    return nil
  end
  i = i + 1 + byte(m, i)                    -- compression_methods
  if #m < i + 1 then
    return hello
  end
  local stop = i + 1 + u16(m, i)
  i = i + 2
  while i + 3 <= stop and i + 3 <= #m do
    local kind, n = u16(m, i), u16(m, i + 2)
    if kind == 41 then                      -- pre_shared_key
      hello.psk = psk_identities(sub(m, i + 4, i + 3 + n))
    end
    i = i + 4 + n
  end
  return hello
end

-- Reads the ClientHello ahead of the handshake, leaving every byte for it.
-- -> hello | nil (not a ClientHello, or it did not come)
function _M.client_hello(socket, timeout)
  local head = socket:xread(5, "b", timeout)
  if not head then
    return nil
  end
  local got = head
  local hello
  if #head == 5 and byte(head, 1) == 22 then
    local len = u16(head, 4)
    local body = len <= MAX_HELLO and socket:xread(len, "b", timeout) or nil
    if body then
      got = got .. body
      -- One record holds the whole ClientHello unless it is huge; then no peek.
      if byte(body, 1) == 1 and u24(body, 2) + 4 <= #body then
        hello = parse_hello(sub(body, 5, 4 + u24(body, 2)))
      end
    end
  end
  socket:unget(got)
  return hello
end

-- info = { ticket_name, secrets = {} } (per TLS context, made by new_info).
function _M.new_info(ctx)
  local keys = ctx.getTicketKeys and ctx:getTicketKeys()
  return { ticket_name = keys and sub(keys, 1, 16) or nil, secrets = {}, n_secrets = 0 }
end

-- -> true when the handshake just done on ssl resumed a session
function _M.resumed(info, ssl, hello)
  if ssl:getVersion() >= 0x0304 then
    local name = info.ticket_name
    for _, id in ipairs(hello and hello.psk or {}) do
      if name and sub(id, 1, 16) == name then
        return true
      end
    end
    return false
  end
  local secret = ssl:getMasterKey()
  if not secret then
    return false
  end
  if info.secrets[secret] then
    return true
  end
  if info.n_secrets >= MAX_SECRETS then
    info.secrets, info.n_secrets = {}, 0
  end
  info.secrets[secret] = true
  info.n_secrets = info.n_secrets + 1
  return false
end

return _M
