/* core.c: the Lua binding of the C core (module `digime.core`). Each part lives in its own
 * Lua-free file; this file only moves values between Lua and C. Misuse raises; expected
 * failures return nil, message. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/opensslv.h>
#ifndef DIGIME_NO_CURL
#include <curl/curl.h>
#endif
#include <zlib.h>
#include <brotli/decode.h>

#include "compat.h"
#include "cipher.h"
#include "core_internal.h"
#include "jws.h"
#include "keys.h"
#include "random.h"

#define VERSION "0.1.0"

/* A scratch buffer from Lua's allocator-independent heap, freed by the caller. */
static unsigned char *scratch(lua_State *L, size_t n)
{
    unsigned char *p = malloc(n > 0 ? n : 1);
    if (p == NULL)
        luaL_error(L, "out of memory");
    return p;
}

static size_t check_size(lua_State *L, int arg, lua_Number max)
{
    lua_Number n = luaL_checknumber(L, arg);
    if (n != n || n < 0 || n > max || (lua_Number)(size_t)n != n)
        luaL_argerror(L, arg, "expected a non-negative integer in range");
    return (size_t)n;
}

/* ---- random ---- */

static int l_random_bytes(lua_State *L)
{
    size_t n = check_size(L, 1, 1 << 24);
    unsigned char *buf = scratch(L, n);
    if (dm_random_bytes(buf, n) != 0) {
        free(buf);
        return luaL_error(L, "the CSPRNG failed");
    }
    lua_pushlstring(L, (const char *)buf, n);
    free(buf);
    return 1;
}

static int l_random_alnum(lua_State *L)
{
    size_t n = check_size(L, 1, 1 << 24);
    luaL_argcheck(L, n >= 1, 1, "length must be at least 1");
    char *buf = (char *)scratch(L, n);
    if (dm_random_alnum(buf, n) != 0) {
        free(buf);
        return luaL_error(L, "the CSPRNG failed");
    }
    lua_pushlstring(L, buf, n);
    free(buf);
    return 1;
}

/* ---- encoding and digests ---- */

static int l_b64url_encode(lua_State *L)
{
    size_t n;
    const unsigned char *in = (const unsigned char *)luaL_checklstring(L, 1, &n);
    size_t outlen = dm_b64url_encoded_len(n);
    char *out = (char *)scratch(L, outlen);
    dm_b64url_encode(in, n, out);
    lua_pushlstring(L, out, outlen);
    free(out);
    return 1;
}

/* A JSON string literal (RFC 8259, section 7): the quote, the backslash and the control
 * characters escaped (0x00-0x1f and 0x7f, the bytes Lua's %c matches in the C locale), every
 * other byte as it is. The SDK's JSON encoder quotes every string with it: a JWT's claims
 * hold the access token, which Lua's pattern matcher would scan at about 18 ns a byte. */
static int l_json_quote(lua_State *L)
{
    static const char hex[] = "0123456789abcdef";
    size_t n, run = 0;
    const char *s = luaL_checklstring(L, 1, &n);
    luaL_Buffer b;

    luaL_buffinit(L, &b);
    luaL_addchar(&b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6] = { '\\', 0, 0, 0, 0, 0 };
        size_t len = 2;
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f)
            continue;
        luaL_addlstring(&b, s + run, i - run);
        switch (c) {
        case '"':  esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            len = 6;
        }
        luaL_addlstring(&b, esc, len);
        run = i + 1;
    }
    luaL_addlstring(&b, s + run, n - run);
    luaL_addchar(&b, '"');
    luaL_pushresult(&b);
    return 1;
}

static int decode_with(lua_State *L, long (*decode)(const char *, size_t, unsigned char *,
                                                    const char **))
{
    size_t n;
    const char *in = luaL_checklstring(L, 1, &n);
    const char *err = NULL;
    unsigned char *out = scratch(L, n / 4 * 3 + 3);
    long len = decode(in, n, out, &err);
    if (len < 0) {
        free(out);
        return push_fail(L, err);
    }
    lua_pushlstring(L, (const char *)out, (size_t)len);
    free(out);
    return 1;
}

static int l_b64url_decode(lua_State *L) { return decode_with(L, dm_b64url_decode); }
static int l_b64_decode(lua_State *L) { return decode_with(L, dm_b64_decode_lenient); }

static int l_sha256(lua_State *L)
{
    size_t n;
    const char *in = luaL_checklstring(L, 1, &n);
    unsigned char md[32];
    dm_sha256(in, n, md);
    lua_pushlstring(L, (const char *)md, sizeof md);
    return 1;
}

static int l_sha512(lua_State *L)
{
    size_t n;
    const char *in = luaL_checklstring(L, 1, &n);
    unsigned char md[64];
    dm_sha512(in, n, md);
    lua_pushlstring(L, (const char *)md, sizeof md);
    return 1;
}

/* ---- keys ---- */

/* The userdata exists (with its metatable) before the key is loaded, so an error in
 * between cannot leak the key. */
static key_ud *new_key_ud(lua_State *L)
{
    key_ud *k = (key_ud *)compat_newuserdata(L, sizeof *k);
    k->pkey = NULL;
    k->signer = NULL;
    k->unwrap = NULL;
    luaL_setmetatable(L, KEY_MT);
    return k;
}

static int push_key_or_fail(lua_State *L, key_ud *k, EVP_PKEY *pkey, const char *err)
{
    if (pkey == NULL)
        return push_fail(L, err);
    k->pkey = pkey;
    return 1;
}

static int l_private_key(lua_State *L)
{
    size_t n;
    const char *pem = luaL_checklstring(L, 1, &n);
    const char *err = NULL;
    key_ud *k = new_key_ud(L);
    EVP_PKEY *pkey = dm_private_key_from_pem(pem, n, &err);
    return push_key_or_fail(L, k, pkey, err);
}

static int l_public_key(lua_State *L)
{
    size_t n;
    const char *pem = luaL_checklstring(L, 1, &n);
    const char *err = NULL;
    key_ud *k = new_key_ud(L);
    EVP_PKEY *pkey = dm_public_key_from_pem(pem, n, &err);
    return push_key_or_fail(L, k, pkey, err);
}

static int l_public_key_jwk(lua_State *L)
{
    size_t nlen, elen;
    const char *n64 = luaL_checklstring(L, 1, &nlen);
    const char *e64 = luaL_checklstring(L, 2, &elen);
    const char *err = NULL;
    key_ud *k = new_key_ud(L);
    unsigned char *n = scratch(L, nlen / 4 * 3 + 3);
    unsigned char *e = malloc(elen / 4 * 3 + 3);
    long nl = e ? dm_b64url_decode(n64, nlen, n, &err) : -1;
    long el = nl >= 0 ? dm_b64url_decode(e64, elen, e, &err) : -1;
    EVP_PKEY *pkey = NULL;
    if (e == NULL)
        err = "out of memory";
    else if (nl >= 0 && el >= 0)
        pkey = dm_public_key_from_jwk(n, (size_t)nl, e, (size_t)el, &err);
    free(n);
    free(e);
    return push_key_or_fail(L, k, pkey, err);
}

static int l_generate_key(lua_State *L)
{
    lua_Integer bits = luaL_optinteger(L, 1, 2048);
    luaL_argcheck(L, bits >= 1024 && bits <= 8192, 1, "bits must be within 1024..8192");
    const char *err = NULL;
    key_ud *k = new_key_ud(L);
    EVP_PKEY *pkey = dm_generate_key((int)bits, &err);
    return push_key_or_fail(L, k, pkey, err);
}

static int key_bits(lua_State *L)
{
    lua_pushinteger(L, dm_key_bits(dm_check_key(L, 1)->pkey));
    return 1;
}

static int key_size(lua_State *L)
{
    lua_pushinteger(L, EVP_PKEY_get_size(dm_check_key(L, 1)->pkey));
    return 1;
}

static int key_is_private(lua_State *L)
{
    lua_pushboolean(L, dm_key_is_private(dm_check_key(L, 1)->pkey));
    return 1;
}

static int check_format(lua_State *L, int arg, const char *standard, const char *pkcs1)
{
    const char *fmt = luaL_optstring(L, arg, standard);
    if (strcmp(fmt, standard) == 0)
        return 0;
    if (strcmp(fmt, pkcs1) == 0)
        return 1;
    return luaL_argerror(L, arg, lua_pushfstring(L, "expected \"%s\" or \"%s\"", standard, pkcs1));
}

static int key_public_pem(lua_State *L)
{
    key_ud *k = dm_check_key(L, 1);
    int pkcs1 = check_format(L, 2, "spki", "pkcs1");
    size_t len = 0;
    const char *err = NULL;
    char *pem = dm_public_pem(k->pkey, pkcs1, &len, &err);
    if (pem == NULL)
        return push_fail(L, err);
    lua_pushlstring(L, pem, len);
    OPENSSL_free(pem);
    return 1;
}

static key_ud *check_private(lua_State *L, int arg)
{
    key_ud *k = dm_check_key(L, arg);
    if (!dm_key_is_private(k->pkey))
        luaL_argerror(L, arg, "a private key is required");
    return k;
}

EVP_PKEY_CTX *dm_key_unwrap_ctx(lua_State *L, key_ud *k, int arg)
{
    const char *err = NULL;
    if (k->unwrap == NULL && (k->unwrap = dm_unwrap_ctx_new(k->pkey, &err)) == NULL)
        luaL_argerror(L, arg, "a private key is required");
    return k->unwrap;
}

static int key_private_pem(lua_State *L)
{
    key_ud *k = check_private(L, 1);
    int pkcs1 = check_format(L, 2, "pkcs8", "pkcs1");
    size_t len = 0;
    const char *err = NULL;
    char *pem = dm_private_pem(k->pkey, pkcs1, &len, &err);
    if (pem == NULL)
        return push_fail(L, err);
    lua_pushlstring(L, pem, len);
    dm_free_secret(pem, len);
    return 1;
}

static int key_jwk(lua_State *L)
{
    key_ud *k = dm_check_key(L, 1);
    unsigned char *n, *e;
    size_t nlen, elen;
    const char *err = NULL;
    if (dm_key_jwk(k->pkey, &n, &nlen, &e, &elen, &err) != 0)
        return push_fail(L, err);
    char *n64 = malloc(dm_b64url_encoded_len(nlen) + 1);
    char *e64 = malloc(dm_b64url_encoded_len(elen) + 1);
    if (n64 != NULL && e64 != NULL) {
        dm_b64url_encode(n, nlen, n64);
        dm_b64url_encode(e, elen, e64);
        lua_pushlstring(L, n64, dm_b64url_encoded_len(nlen));
        lua_pushlstring(L, e64, dm_b64url_encoded_len(elen));
    }
    int ok = n64 != NULL && e64 != NULL;
    OPENSSL_free(n);
    OPENSSL_free(e);
    free(n64);
    free(e64);
    if (!ok)
        return luaL_error(L, "out of memory");
    return 2;
}

static int key_sign_ps512(lua_State *L)
{
    key_ud *k = check_private(L, 1);
    size_t n;
    const char *data = luaL_checklstring(L, 2, &n);
    /* The salt length is a parameter only so that tests can forge salt-32 signatures. */
    lua_Integer saltlen = luaL_optinteger(L, 3, 64);
    luaL_argcheck(L, saltlen >= 0 && saltlen <= 256, 3, "salt length out of range");
    size_t siglen = (size_t)EVP_PKEY_get_size(k->pkey);
    unsigned char *sig = scratch(L, siglen);
    const char *err = NULL;
    int ok;
    if (saltlen == 64) {
        /* made once and kept: every JWT is signed with it */
        if (k->signer == NULL)
            k->signer = dm_ps512_signer_new(k->pkey, 64, &err);
        ok = k->signer != NULL && dm_ps512_sign(k->signer, data, n, sig, &siglen, &err) == 0;
    } else {
        EVP_PKEY_CTX *once = dm_ps512_signer_new(k->pkey, (int)saltlen, &err);
        ok = once != NULL && dm_ps512_sign(once, data, n, sig, &siglen, &err) == 0;
        EVP_PKEY_CTX_free(once);
    }
    if (!ok) {
        free(sig);
        return push_fail(L, err);
    }
    lua_pushlstring(L, (const char *)sig, siglen);
    free(sig);
    return 1;
}

static int key_verify_ps512(lua_State *L)
{
    key_ud *k = dm_check_key(L, 1);
    size_t n, siglen;
    const char *data = luaL_checklstring(L, 2, &n);
    const char *sig = luaL_checklstring(L, 3, &siglen);
    const char *err = NULL;
    if (dm_ps512_verify(k->pkey, data, n, (const unsigned char *)sig, siglen, &err)) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_pushstring(L, err);
    return 2;
}

static int key_oaep_encrypt(lua_State *L)
{
    key_ud *k = dm_check_key(L, 1);
    size_t n, outlen;
    const unsigned char *in = (const unsigned char *)luaL_checklstring(L, 2, &n);
    unsigned char *out = scratch(L, (size_t)EVP_PKEY_get_size(k->pkey));
    const char *err = NULL;
    if (dm_oaep_encrypt(k->pkey, in, n, out, &outlen, &err) != 0) {
        free(out);
        return push_fail(L, err);
    }
    lua_pushlstring(L, (const char *)out, outlen);
    free(out);
    return 1;
}

static int key_oaep_decrypt(lua_State *L)
{
    key_ud *k = dm_check_key(L, 1);
    EVP_PKEY_CTX *unwrap = dm_key_unwrap_ctx(L, k, 1);
    size_t n, outlen;
    const unsigned char *in = (const unsigned char *)luaL_checklstring(L, 2, &n);
    size_t cap = (size_t)EVP_PKEY_get_size(k->pkey);
    unsigned char *out = scratch(L, cap);
    const char *err = NULL;
    if (dm_oaep_unwrap(unwrap, in, n, out, &outlen, &err) != 0) {
        free(out);
        return push_fail(L, err);
    }
    lua_pushlstring(L, (const char *)out, outlen);
    OPENSSL_cleanse(out, cap);
    free(out);
    return 1;
}

static int key_gc(lua_State *L)
{
    key_ud *k = (key_ud *)luaL_checkudata(L, 1, KEY_MT);
    EVP_PKEY_CTX_free(k->signer);   /* each holds a reference to the key */
    EVP_PKEY_CTX_free(k->unwrap);
    k->signer = k->unwrap = NULL;
    EVP_PKEY_free(k->pkey);  /* OpenSSL clears private components on free */
    k->pkey = NULL;
    return 0;
}

static int key_tostring(lua_State *L)
{
    key_ud *k = (key_ud *)luaL_checkudata(L, 1, KEY_MT);
    if (k->pkey == NULL)
        lua_pushstring(L, "digime.key (freed)");
    else
        lua_pushfstring(L, "digime.key (RSA %d, %s)", dm_key_bits(k->pkey),
                        dm_key_is_private(k->pkey) ? "private" : "public");
    return 1;
}

/* ---- clocks ---- */

static double clock_seconds(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wall-clock seconds with sub-millisecond precision (JWT timestamps are in milliseconds). */
static int l_time(lua_State *L)
{
    lua_pushnumber(L, clock_seconds(CLOCK_REALTIME));
    return 1;
}

/* Seconds on a clock that never jumps: for deadlines and backoff. */
static int l_monotonic(lua_State *L)
{
    lua_pushnumber(L, clock_seconds(CLOCK_MONOTONIC));
    return 1;
}

static int l_sleep(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    luaL_argcheck(L, s >= 0 && s <= 86400, 1, "seconds out of range");
    struct timespec ts = { (time_t)s, (long)((s - (lua_Number)(time_t)s) * 1e9) };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    return 0;
}

static int l_pid(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

static int l_versions(lua_State *L)
{
    unsigned int br = BrotliDecoderVersion();
    lua_newtable(L);
    lua_pushstring(L, VERSION);
    lua_setfield(L, -2, "core");
    lua_pushstring(L, OpenSSL_version(OPENSSL_VERSION_STRING));
    lua_setfield(L, -2, "openssl");
#ifndef DIGIME_NO_CURL
    lua_pushstring(L, curl_version_info(CURLVERSION_NOW)->version);
    lua_setfield(L, -2, "curl");    /* absent from a build without libcurl (CURL=no) */
#endif
    lua_pushstring(L, zlibVersion());
    lua_setfield(L, -2, "zlib");
    lua_pushfstring(L, "%d.%d.%d", (int)(br >> 24), (int)(br >> 12 & 0xfff), (int)(br & 0xfff));
    lua_setfield(L, -2, "brotli");
    return 1;
}

static const luaL_Reg key_methods[] = {
    {"bits", key_bits},
    {"size", key_size},
    {"is_private", key_is_private},
    {"public_pem", key_public_pem},
    {"private_pem", key_private_pem},
    {"jwk", key_jwk},
    {"sign_ps512", key_sign_ps512},
    {"verify_ps512", key_verify_ps512},
    {"oaep_encrypt", key_oaep_encrypt},
    {"oaep_decrypt", key_oaep_decrypt},
    {NULL, NULL}
};

static const luaL_Reg module_functions[] = {
    {"random_bytes", l_random_bytes},
    {"random_alnum", l_random_alnum},
    {"b64url_encode", l_b64url_encode},
    {"b64url_decode", l_b64url_decode},
    {"json_quote", l_json_quote},
    {"b64_decode", l_b64_decode},
    {"sha256", l_sha256},
    {"sha512", l_sha512},
    {"private_key", l_private_key},
    {"public_key", l_public_key},
    {"public_key_jwk", l_public_key_jwk},
    {"generate_key", l_generate_key},
    {"time", l_time},
    {"monotonic", l_monotonic},
    {"sleep", l_sleep},
    {"pid", l_pid},
    {"versions", l_versions},
    {NULL, NULL}
};

DIGIME_EXPORT int luaopen_digime_core(lua_State *L)
{
    if (luaL_newmetatable(L, KEY_MT)) {
        luaL_newlib(L, key_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, key_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, key_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushliteral(L, "digime.key");
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);

    luaL_newlib(L, module_functions);
    lua_pushliteral(L, VERSION);
    lua_setfield(L, -2, "_VERSION");
#ifndef DIGIME_NO_CURL
    dm_open_http(L);    /* a build for nginx only (CURL=no) has no HTTP engine */
#endif
    dm_open_cipher(L);
    dm_open_bytes(L);
    dm_open_list(L);
    return 1;
}
