-- The fuzz corpora (csrc/fuzz/corpus/<target>/) through the Lua API of digime.core: every
-- committed seed and every input that once crashed a libFuzzer target (regress-*), plus hostile
-- inputs of the same kinds (truncated PEMs, decompression bombs, garbage), must give a clean
-- result: a value, or nil and a message (and a kind, for HTTP). Seeds whose meaning is known
-- also have their result checked, so a broken seed cannot pass unnoticed.
--
-- Each file is read the way its C target reads it (control bytes, then data; see the header
-- comment of csrc/fuzz/fuzz_<target>.c). The Lua API has no soft output limit and no chunking
-- of its own: both are replaced by feeding each input whole and in 13-byte pieces, which must
-- agree.
local core = require "digime.core"
local socket = require "socket"

local CORPUS = "csrc/fuzz/corpus/"
local FAILED = "file decryption failed (wrong key or corrupt data)"
local CAPS = { [0] = 0, 1, 10, 100, 4096, 65536, 1048576, 16777216 }   -- fuzz_max_output()
local KINDS = { [0] = "none", "gzip", "brotli" }

local read = require("shell").read

local function files(target)
  local p = assert(io.popen("ls -1 " .. CORPUS .. target))
  local names = {}
  for name in p:lines() do names[#names + 1] = name end
  p:close()
  assert(#names > 0, "no corpus for " .. target)
  return names
end

-- Bit fields without bit operators (LuaJIT has none built in): bits lo..lo+n-1 of byte b.
local function bits(b, lo, n)
  return math.floor(b / 2 ^ lo) % 2 ^ n
end

-- A result is clean when it is a string, or nil and a non-empty message.
local function assert_clean(s, err)
  if s == nil then
    assert.is_string(err)
    assert.is_true(#err > 0)
  else
    assert.is_string(s)
  end
end

-- A key result is clean when it is a key, or nil and a message.
local function assert_clean_key(key, err)
  if key == nil then
    assert.is_string(err)
  else
    assert.is_number(key:bits())
  end
end

-- Checks a named seed's known outcome: true (success), a string (the plaintext), or
-- { err = "pattern" } (a failure whose message matches).
local function check_expected(want, s, err, name)
  if want == nil then return end
  if type(want) == "table" then
    assert(s == nil, name .. ": expected a failure")
    assert(err:find(want.err, 1, true), name .. ": message " .. tostring(err))
  else
    assert(s ~= nil, name .. ": expected success, got " .. tostring(err))
    if type(want) == "string" then assert(s == want, name .. ": wrong output") end
  end
end

-- Each corpus file of target through load(data) -> key | nil, err: a key passes check_key, a
-- refusal is clean, and the files want names come out as it says.
local function check_keys(target, want, load, check_key)
  for _, name in ipairs(files(target)) do
    local key, err = load(read(CORPUS .. target .. "/" .. name))
    if key then
      check_key(key)
    else
      assert_clean(key, err)
    end
    check_expected(want[name], key, err, name)
  end
end

-- A deterministic byte generator (Park-Miller: exact in doubles, so LuaJIT agrees).
local function garbage(n, seed)
  local x, t = seed or 1, {}
  for i = 1, n do
    x = (x * 16807) % 2147483647
    t[i] = string.char(x % 256)
  end
  return table.concat(t)
end

local FOX = ("The quick brown fox jumps over the lazy dog.\n"):rep(40)
local JSON = '{"fileid":"a","objects":[{"id":1,"text":"hi"}]}'
local file_key = assert(core.private_key(read("csrc/fuzz/test_key.pem")))
local jws_key = assert(core.public_key(assert(core.private_key(read("csrc/fuzz/jws_key.pem")))
  :public_pem()))

-- Feeds chunks of data (all at once when step is nil) to obj:update, then obj:finish.
-- before(i) runs before chunk i (and with i = #chunks + 1 before finish).
local function feed(obj, data, step, before)
  local out, i = {}, 0
  step = step or math.max(#data, 1)
  for pos = 1, #data, step do
    i = i + 1
    if before then before(i) end
    local s, err = obj:update(data:sub(pos, pos + step - 1))
    assert_clean(s, err)
    if not s then obj:close() return nil, err end
    out[#out + 1] = s
  end
  if before then before(i + 1) end
  local s, err = obj:finish()
  assert_clean(s, err)
  obj:close()
  if not s then return nil, err end
  out[#out + 1] = s
  return table.concat(out)
end

-- Runs fn(step) whole and in 13-byte pieces; both must give the same result.
local function both_ways(fn)
  local s1, e1 = fn(nil)
  local s2, e2 = fn(13)
  assert.equal(s1 == nil, s2 == nil)
  if s1 then assert.equal(s1, s2) end
  return s1, e1, e2
end

local function inflate(kind, data, max_output, step)
  return feed(core.inflater(kind, { max_output = max_output }), data, step)
end

-- The decryptor options a fuzz_decryptor / fuzz_decryptor_real input selects.
local function decryptor_run(c0, c1, file, declared, step)
  local comp = c0 % 4
  local opts = { max_output = CAPS[c1 % 8], compression = comp == 3 and "deferred" or KINDS[comp] }
  local late, set_at = KINDS[bits(c1, 3, 2) % 3], bits(c1, 5, 3)
  if declared then opts.size = declared end
  local d, err = core.file_decryptor(file_key, opts)
  if not d then
    assert_clean(d, err)
    return nil, err
  end
  local set = comp ~= 3
  -- the C target sets the compression before chunk set_at (numbered from 0); Lua counts
  -- from 1 and calls before(#chunks + 1) ahead of finish, where an unset one is set at last
  return feed(d, file, step, function(i)
    if not set and (i - 1 == set_at or i == math.ceil(#file / (step or math.max(#file, 1))) + 1) then
      assert.is_true(d:set_compression(late))
      set = true
    end
  end)
end

describe("fuzz corpora through digime.core", function()
  it("b64url: strict and lenient decoding round-trip, tokens verify only when signed", function()
    local want = {
      ["seed-strict-1"] = "A", ["seed-strict-2"] = "AB", ["seed-strict-3"] = "ABC",
      ["seed-strict-empty"] = "", ["seed-strict-bits"] = { err = "trailing bits" },
      ["seed-strict-pad"] = { err = "character" }, ["seed-strict-len1"] = { err = "length" },
      ["seed-lenient-pad"] = "AB", ["seed-lenient-pad2"] = "A", ["seed-lenient-std"] = "\251\255",
      ["seed-lenient-3pad"] = { err = "base64" },
    }
    local verified = {}
    for _, name in ipairs(files("b64url")) do
      local data = read(CORPUS .. "b64url/" .. name)
      local mode, text = (data:byte(1) or 0) % 3, data:sub(2)
      if mode == 0 then
        local s, err = core.b64url_decode(text)
        assert_clean(s, err)
        if s then
          assert.equal(text, core.b64url_encode(s))
          assert.equal(s, core.b64_decode(text))
        end
        check_expected(want[name], s, err, name)
      elseif mode == 1 then
        local s, err = core.b64_decode(text)
        assert_clean(s, err)
        if s then
          local norm = text:gsub("=+$", ""):gsub("%+", "-"):gsub("/", "_")
          assert.is_true(#text - #norm <= 2)
          assert.equal(norm, core.b64url_encode(s))
        end
        check_expected(want[name], s, err, name)
      else
        local h, p, sig64 = text:match("^([%w_%-]+)%.([%w_%-]+)%.([%w_%-]+)$")
        if h then
          assert_clean(core.b64url_decode(h))
          assert_clean(core.b64url_decode(p))
          local sig, err = core.b64url_decode(sig64)
          assert_clean(sig, err)
          if sig then
            local ok, verr = jws_key:verify_ps512(h .. "." .. p, sig)
            assert.is_boolean(ok)
            if not ok then assert.is_string(verr) end
            verified[name] = ok
          end
        end
      end
    end
    -- the seed token was signed by `openssl dgst` (PSS, SHA-512, salt 64): the core agrees
    assert.is_true(verified["seed-token"])
    assert.is_false(verified["seed-token-badsig"])
    assert.is_nil(verified["seed-token-4parts"])
  end)

  it("public_key: PEMs and JWKs", function()
    local want = {
      ["seed-spki"] = true, ["seed-pkcs1"] = true, ["seed-cert"] = true, ["seed-jwk"] = true,
      ["seed-jwk-e3"] = true, ["seed-jwk-zeros"] = true,
      ["seed-ec"] = { err = "" }, ["seed-rsa-pss"] = { err = "" }, ["seed-private"] = { err = "" },
      ["seed-truncated"] = { err = "" }, ["seed-jwk-short"] = { err = "JWK" },
    }
    -- the first byte picks PEM (even) or JWK (odd); for a JWK the second is e's length
    local function load(data)
      if (data:byte(1) or 0) % 2 == 0 then
        return core.public_key(data:sub(2))
      end
      local elen = math.min((data:byte(2) or 0) % 10, math.max(#data - 2, 0))
      local e, n = data:sub(3, 2 + elen), data:sub(3 + elen)
      return core.public_key_jwk(core.b64url_encode(n), core.b64url_encode(e))
    end
    check_keys("public_key", want, load, function(key)
      assert.is_false(key:is_private())
      assert.is_true(key:bits() > 0)
      local n64, e64 = key:jwk()
      assert.is_string(n64)
      assert.is_string(e64)
    end)
  end)

  it("private_key: PKCS#1, PKCS#8 and everything else", function()
    local want = {
      ["seed-pkcs8.pem"] = true, ["seed-pkcs1.pem"] = true, ["seed-rsa512.pem"] = true,
      ["seed-encrypted-pkcs8.pem"] = { err = "encrypted" },
      ["seed-encrypted-pkcs1.pem"] = { err = "encrypted" },
      ["seed-ec.pem"] = { err = "RSA" }, ["seed-rsa-pss.pem"] = { err = "RSA" },
      ["seed-public.pem"] = { err = "" }, ["seed-truncated.pem"] = { err = "" },
      ["seed-empty-der.pem"] = { err = "" },
    }
    check_keys("private_key", want, core.private_key, function(key)
      assert.is_true(key:is_private())
      assert.is_string(key:private_pem())
    end)
  end)

  for _, kind in ipairs({ "gzip", "brotli" }) do
    it("inflate_" .. kind .. ": streams, bombs and garbage", function()
      local want = {
        ["seed-text-whole"] = FOX, ["seed-text-bytes"] = FOX, ["seed-text-17"] = FOX,
        ["seed-json"] = JSON, ["seed-empty"] = "",
        ["seed-bomb-capped"] = { err = "exceeds max_output" },
        ["seed-bomb-1m"] = ("\0"):rep(1048576),
        ["seed-two-members"] = { err = "data after the end" },
        ["seed-truncated"] = { err = "truncated stream" },
        ["seed-garbage"] = { err = "corrupt data" },
      }
      for _, name in ipairs(files("inflate_" .. kind)) do
        local data = read(CORPUS .. "inflate_" .. kind .. "/" .. name)
        local cap, stream = CAPS[(data:byte(1) or 0) % 8], data:sub(4)
        local s, err = both_ways(function(step) return inflate(kind, stream, cap, step) end)
        assert_clean(s, err)
        if s then assert.is_true(#s <= cap) end
        check_expected(want[name], s, err, name)
      end
    end)
  end

  it("decryptor: files encrypted to the test key, and broken ones", function()
    local want = {
      ["seed-none-whole"] = FOX, ["seed-none-small-pieces"] = FOX, ["seed-gzip"] = FOX,
      ["seed-gzip-json-sized"] = JSON, ["seed-brotli"] = FOX, ["seed-deferred-gzip"] = FOX,
      ["seed-deferred-late"] = FOX, ["seed-bare"] = FOX, ["seed-bare-sized"] = FOX,
      ["seed-empty"] = "",
      ["seed-bomb-gz"] = { err = "exceeds max_output" },
      ["seed-wrong-key"] = { err = FAILED }, ["seed-cut-block"] = { err = FAILED },
      ["seed-bad-padding"] = { err = FAILED }, ["seed-cut-5"] = { err = "File size not valid" },
      ["seed-size-short"] = { err = "longer than its declared size" },
      ["seed-size-long"] = { err = "file truncated" },
      ["seed-tiny"] = { err = "File size not valid" },
    }
    for _, name in ipairs(files("decryptor")) do
      local data = read(CORPUS .. "decryptor/" .. name)
      local c0, c1 = data:byte(1) or 0, data:byte(2) or 0
      local file = data:sub(5)
      local sel, declared = bits(c0, 3, 2), nil
      if sel == 1 then declared = #file
      elseif sel == 2 then declared = math.max(#file - 16, 0)
      elseif sel == 3 then declared = #file + 16 end
      if bits(c0, 2, 1) == 1 then   -- the bare decryptor: no decompression, no cap
        c0, c1 = 0, 7
      end
      local s, err = both_ways(function(step) return decryptor_run(c0, c1, file, declared, step) end)
      assert_clean(s, err)
      check_expected(want[name], s, err, name)
    end
  end)

  it("decryptor_real: what the target builds past the key unwrap", function()
    local keysize = file_key:size()
    local function encrypt(plain)
      local e = core.file_encryptor(file_key)
      local f = e:update(plain) .. e:finish()
      e:close()
      return f
    end
    local function unpad(p)
      local v = p:byte(#p)
      if #p == 0 or #p % 16 ~= 0 or v < 1 or v > 16 or p:sub(-v) ~= string.char(v):rep(v) then
        return nil
      end
      return p:sub(1, -v - 1)
    end
    local want = {
      ["seed-none"] = FOX, ["seed-none-limit1"] = FOX, ["seed-gzip"] = FOX,
      ["seed-gzip-json"] = JSON, ["seed-brotli"] = FOX, ["seed-deferred-gzip"] = FOX,
      ["seed-deferred-brotli"] = JSON, ["seed-empty"] = "",
      ["seed-gzip-two-members"] = { err = "data after the end" },
      ["seed-gzip-bomb"] = { err = "exceeds max_output" },
      ["seed-brotli-bomb"] = { err = "exceeds max_output" },
      ["seed-brotli-cut"] = { err = "truncated stream" },
      ["seed-pad-1"] = "0123456789abcde", ["seed-pad-6"] = "0123456789",
      ["seed-pad-16"] = "0123456789abcdef",
      ["seed-pad-17"] = { err = FAILED }, ["seed-pad-bad"] = { err = FAILED },
      ["seed-raw-odd"] = { err = "File size not valid" },
    }
    for _, name in ipairs(files("decryptor_real")) do
      local data = read(CORPUS .. "decryptor_real/" .. name)
      local c0, c1 = data:byte(1) or 0, data:byte(2) or 0
      local payload, mode = data:sub(5), bits(c0, 2, 2)
      local file, ref_plain
      if mode <= 1 then
        file, ref_plain = encrypt(payload), payload
      elseif mode == 2 then
        -- CBC: dropping the padding block of an encryption of whole blocks leaves a file
        -- whose last plaintext block (the payload's own) is read as its padding
        local n = math.floor(#payload / 16) * 16
        local blocks = n > 0 and payload:sub(1, n) or (payload .. ("\0"):rep(16)):sub(1, 16)
        file = encrypt(blocks)
        file = file:sub(1, #file - 16)
        ref_plain = unpad(blocks)
      else
        file = encrypt(""):sub(1, keysize + 16) .. payload
      end
      local declared = bits(c0, 4, 1) == 1 and #file or nil
      local s, err = both_ways(function(step) return decryptor_run(c0, c1, file, declared, step) end)
      assert_clean(s, err)
      if mode <= 2 then
        -- the reference: the expected plaintext, decompressed in one piece
        local ref
        if ref_plain then
          local comp = c0 % 4 == 3 and KINDS[bits(c1, 3, 2) % 3] or KINDS[c0 % 4]
          ref = inflate(comp, ref_plain, CAPS[c1 % 8])
        end
        assert(ref == s, name .. ": the pipeline and the reference disagree")
      end
      check_expected(want[name], s, err, name)
    end
  end)
end)

-- ---- the HTTP header parser, through a raw loopback server ----

-- Serves one raw response (bytes as given) to one request; returns req:result() and what
-- req:headers() showed while the body was held back (when hold is set).
local function raw_exchange(response, hold)
  local srv = assert(socket.bind("127.0.0.1", 0))
  srv:settimeout(0)
  local _, port = srv:getsockname()
  local engine = core.http_engine()
  local req = engine:add{ url = ("http://127.0.0.1:%d/"):format(port), timeout = 5,
                          proxy = "", fresh_connect = true }
  local conn, sent, done, peek = nil, false, false, nil
  local deadline = socket.gettime() + 5
  while not done and socket.gettime() < deadline do
    engine:perform()
    for _, r in ipairs(engine:finished()) do done = done or r == req end
    if not conn then
      conn = srv:accept()
      if conn then conn:settimeout(1) end
    end
    if conn and not sent then
      assert(conn:send(response))
      sent = true
      if not hold then conn:shutdown("send") end
    elseif conn and hold and not peek then
      local status, headers = req:headers()
      if status then
        peek = { status = status, headers = headers }
        assert(conn:send(hold))
        conn:shutdown("send")
      end
    end
    if not done then engine:poll(5) end
  end
  assert(done, "the request did not finish")
  local res, err, kind = req:result()
  if conn then conn:close() end
  srv:close()
  engine:close()
  return res, err, kind, peek
end

local function assert_clean_http(res, err, kind)
  if res then
    assert.is_number(res.status)
    assert.is_table(res.headers)
    for k, v in pairs(res.headers) do
      assert.is_string(k)
      assert.is_string(v)
    end
  else
    assert.is_string(err)
    assert.is_string(kind)
  end
end

describe("fuzz corpus of the HTTP header parser", function()
  it("every header block served raw gives a clean result", function()
    for _, name in ipairs(files("http_headers")) do
      local block = read(CORPUS .. "http_headers/" .. name):sub(3)
      local res, err, kind = raw_exchange(block)
      assert_clean_http(res, err, kind)
      if name == "seed-typical" then
        assert.equal(200, res.status)
        assert.equal("a=1, b=2", res.headers["set-cookie"])
      end
    end
  end)

  -- regress-null-raw-bytes: header lines ":" (empty name and value; libcurl passes them on)
  -- store no byte, so with nothing else in the block both views of the headers offset a NULL
  -- pointer: undefined behaviour, caught by UBSan in fuzz_http_headers.
  it("headers with an empty name and value (':') read back cleanly, while running and after", function()
    -- nothing but ':' lines: the raw bytes stay unallocated; the body is held back until
    -- req:headers() has shown them (no content-length: the body ends with the connection)
    local res, err, kind, peek = raw_exchange("HTTP/1.1 200 OK\r\n:\r\n:\r\n\r\n", "ok")
    assert(res, tostring(err) .. " " .. tostring(kind))
    assert.equal(200, res.status)
    assert.equal("ok", res.body)
    assert.equal(", ", res.headers[""])
    assert.is_table(peek)
    assert.equal(200, peek.status)
    assert.equal(", ", peek.headers[""])
    -- mixed with ordinary headers
    res = raw_exchange("HTTP/1.1 200 OK\r\n:\r\nA: b\r\n:x\r\nContent-Length: 0\r\n\r\n")
    assert.equal(", x", res.headers[""])
    assert.equal("b", res.headers["a"])
  end)
end)

-- ---- hostile inputs of the same kinds, beyond the corpora ----

describe("hostile inputs through digime.core", function()
  it("every prefix of a PEM key is refused cleanly or parses", function()
    local priv = read("csrc/fuzz/test_key.pem")
    local pub = file_key:public_pem()
    for n = 0, #priv, 7 do assert_clean_key(core.private_key(priv:sub(1, n))) end
    for n = 0, #pub, 5 do assert_clean_key(core.public_key(pub:sub(1, n))) end
    -- the last byte alone missing (the newline) still parses; more does not
    assert.is_truthy(core.private_key(priv:sub(1, -2)))
    assert.is_nil(core.private_key(priv:sub(1, -40)))
  end)

  it("garbage through every decoder", function()
    for i, n in ipairs({ 0, 1, 3, 4, 15, 16, 17, 100, 143, 144, 160, 1000, 5000 }) do
      local g = garbage(n, i)
      assert_clean(core.b64url_decode(g))
      assert_clean(core.b64_decode(g))
      assert_clean_key(core.private_key(g))
      assert_clean_key(core.private_key("-----BEGIN PRIVATE KEY-----\n" .. g))
      assert_clean_key(core.public_key("-----BEGIN PUBLIC KEY-----\n" .. g))
      assert_clean_key(core.public_key_jwk(core.b64url_encode(g), "AQAB"))
      for _, kind in ipairs({ "gzip", "brotli", "none" }) do
        assert_clean(inflate(kind, g, 4096))
      end
      for _, comp in ipairs({ "none", "gzip", "brotli" }) do
        local s, err = feed(assert(core.file_decryptor(file_key, { compression = comp })), g, 7)
        assert.is_nil(s)
        assert.is_string(err)
      end
    end
  end)

  it("garbage behind a real key segment fails as one message, whatever the compression", function()
    local e = core.file_encryptor(file_key)
    local head = (e:update("") .. e:finish()):sub(1, file_key:size() + 16)
    e:close()
    for i = 1, 20 do
      local g = garbage(16 * i, 100 + i)
      for _, comp in ipairs({ "none", "gzip", "brotli" }) do
        local s, err = feed(assert(core.file_decryptor(file_key, { compression = comp })), head .. g, 5)
        -- random plaintext may end in valid padding (about 1 in 256) and then fails to inflate
        assert_clean(s, err)
        if not s and comp == "none" then assert.equal(FAILED, err) end
      end
    end
  end)

  it("decompression bombs stop at max_output, also behind the decryptor", function()
    local gz = read(CORPUS .. "inflate_gzip/seed-bomb-1m"):sub(4)
    local br = read(CORPUS .. "inflate_brotli/seed-bomb-1m"):sub(4)
    for _, c in ipairs({ { "gzip", gz }, { "brotli", br } }) do
      local kind, bomb = c[1], c[2]
      local s, err = inflate(kind, bomb, 1000)
      assert.is_nil(s)
      assert.matches("exceeds max_output %(1000 bytes%)", err)
      assert.equal(1048576, #assert(inflate(kind, bomb, 1048576)))
      local enc = core.file_encryptor(file_key)
      local file = enc:update(bomb) .. enc:finish()
      enc:close()
      s, err = feed(assert(core.file_decryptor(file_key, { compression = kind, max_output = 4096 })),
                    file, 64)
      assert.is_nil(s)
      assert.matches("exceeds max_output", err)
    end
  end)

  it("hostile JWK members", function()
    local n64 = file_key:jwk()
    local cases = {
      { "", "AQAB" }, { n64, "" }, { n64, core.b64url_encode(("\1"):rep(9)) },
      { core.b64url_encode(("\255"):rep(2049)), "AQAB" }, { core.b64url_encode("\2"), "AQAB" },
      { n64, "AQ" }, { n64, "Ag" }, { "!!!!", "AQAB" }, { n64 .. "=", "AQAB" },
    }
    for _, c in ipairs(cases) do
      local key, err = core.public_key_jwk(c[1], c[2])
      assert.is_nil(key)
      assert.is_string(err)
    end
  end)
end)

describe("fuzz corpus of the file list scan", function()
  it("every file list seed gives an index or a message, at its depth and a byte shorter", function()
    for _, name in ipairs(files("list_scan")) do
      local input = read(CORPUS .. "list_scan/" .. name)
      local depth, text = 1 + input:byte(1) % 80, input:sub(2)
      for _, t in ipairs{ text, text:sub(1, -2) } do
        local index, err = core.file_list_index(t, depth)
        if index then
          for i = 1, index:count() do
            assert.is_string(index:text(i))
            index:name(i)
          end
        else
          assert_clean(nil, err)
        end
      end
      if name == "seed-typical" then
        local index = assert(core.file_list_index(text, depth))
        assert.are.equal(2, index:count())
        assert.are.same({ "18_4_10_1_1.json", 1568716294874 }, { index:name(1) })
      end
    end
  end)
end)
