/* fuzz_b64url.c: base64url and base64 decoding (jws.c), and the C half of server-token checks.
 *
 * JWT splitting is not done in C: lua/digime/jwt.lua splits a compact JWS with a Lua pattern
 * and parses its JSON with lua-cjson. What the C core sees of a token is the base64url of
 * its three segments and the PS512 verification of "header.payload" with the signature;
 * mode 2 below does exactly that to the segments of the same pattern.
 *
 * Input: 1 control byte, then the text.
 *   mode 0 (c0 % 3): strict base64url. When it decodes, encoding the bytes again gives the
 *     input back (one encoding per byte string), and the lenient decoder agrees.
 *   mode 1: the lenient decoder (base64 or base64url, padding optional). When it decodes,
 *     encoding again gives the input with '+' '/' mapped to '-' '_' and the padding removed.
 *   mode 2: the text as a token: three non-empty [A-Za-z0-9_-] segments joined by dots (the
 *     pattern of jwt.lua); each decoded strictly, the signature checked over "h.p" with the
 *     JWS test key (seeds carry tokens it signed, so mutations reach a real verification).
 * Output buffers are exactly as large as the longest possible decoding, so a write past the
 * decoded length is caught by ASan (the Lua binding allocates n / 4 * 3 + 3). */
#include <openssl/evp.h>

#include "fuzz_common.h"
#include "test_key.h"
#include "../jws.h"
#include "../keys.h"

static EVP_PKEY *key;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *err = NULL;

    (void)argc;
    (void)argv;
    /* a public key, as a JWKS gives it */
    key = dm_public_key_from_pem(fuzz_jws_public_pem, sizeof fuzz_jws_public_pem - 1, &err);
    FUZZ_CHECK(key != NULL && !dm_key_is_private(key));
    return 0;
}

/* The longest decoding of n symbols: 6 bits each, whole bytes. */
static size_t max_decoded(size_t n)
{
    return n / 4 * 3 + (n % 4 == 0 ? 0 : n % 4 - 1);
}

/* Decodes into a buffer of exactly the longest possible size (1 byte for an empty input, so
 * that malloc(0) is never asked). Returns the length or -1; *out is malloc'd either way. */
static long decode(long (*fn)(const char *, size_t, unsigned char *, const char **),
                   const char *s, size_t n, unsigned char **out)
{
    const char *err = NULL;
    size_t cap = max_decoded(n);
    long len;

    *out = malloc(cap ? cap : 1);
    FUZZ_CHECK(*out != NULL);
    len = fn(s, n, *out, &err);
    if (len < 0) {
        FUZZ_CHECK(len == -1 && err != NULL && err[0] != '\0');
    } else {
        FUZZ_CHECK((size_t)len <= cap);
    }
    return len;
}

/* encode(bytes) must equal want[0..wn). */
static void check_encodes_to(const unsigned char *bytes, size_t len, const char *want, size_t wn)
{
    size_t elen = dm_b64url_encoded_len(len);
    char *enc = malloc(elen ? elen : 1);

    FUZZ_CHECK(enc != NULL);
    dm_b64url_encode(bytes, len, enc);
    FUZZ_CHECK(elen == wn && memcmp(enc, want, wn) == 0);
    free(enc);
}

static void strict(const char *s, size_t n)
{
    unsigned char *a, *b;
    long la = decode(dm_b64url_decode, s, n, &a);

    if (la >= 0) {
        check_encodes_to(a, (size_t)la, s, n);
        /* the lenient decoder accepts everything the strict one does, with the same bytes */
        long lb = decode(dm_b64_decode_lenient, s, n, &b);
        FUZZ_CHECK(lb == la && memcmp(a, b, (size_t)la) == 0);
        free(b);
    }
    free(a);
}

static void lenient(const char *s, size_t n)
{
    unsigned char *a;
    long la = decode(dm_b64_decode_lenient, s, n, &a);

    if (la >= 0) {
        char *norm = malloc(n ? n : 1);
        size_t m = n;
        FUZZ_CHECK(norm != NULL);
        while (m > 0 && s[m - 1] == '=')
            m--;
        FUZZ_CHECK(n - m <= 2);
        for (size_t i = 0; i < m; i++)
            norm[i] = s[i] == '+' ? '-' : s[i] == '/' ? '_' : s[i];
        check_encodes_to(a, (size_t)la, norm, m);
        free(norm);
    }
    free(a);
}

static int seg_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
        || c == '_' || c == '-';
}

static void token(const char *s, size_t n)
{
    size_t dots[2], nd = 0;
    unsigned char *h, *p, *sig;
    long lh, lp, ls;
    const char *err = NULL;

    /* ^([%w_%-]+)%.([%w_%-]+)%.([%w_%-]+)$ */
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.') {
            if (nd == 2)
                return;
            dots[nd++] = i;
        } else if (!seg_char(s[i])) {
            return;
        }
    }
    if (nd != 2 || dots[0] == 0 || dots[1] == dots[0] + 1 || dots[1] == n - 1)
        return;
    lh = decode(dm_b64url_decode, s, dots[0], &h);
    lp = decode(dm_b64url_decode, s + dots[0] + 1, dots[1] - dots[0] - 1, &p);
    ls = decode(dm_b64url_decode, s + dots[1] + 1, n - dots[1] - 1, &sig);
    if (ls >= 0) {
        int v = dm_ps512_verify(key, s, dots[1], sig, (size_t)ls, &err);
        FUZZ_CHECK(v == 0 || v == 1);
        if (v == 0)
            FUZZ_CHECK(err != NULL && err[0] != '\0');
        else
            /* a valid signature over bytes that are not base64url cannot come from a signer */
            FUZZ_CHECK(lh >= 0 && lp >= 0);
    }
    free(h);
    free(p);
    free(sig);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };
    uint8_t mode = fuzz_byte(&in) % 3;
    /* a copy of exactly the text's size: no terminator to lean on */
    char *s = malloc(in.n ? in.n : 1);

    FUZZ_CHECK(s != NULL);
    if (in.n > 0)
        memcpy(s, in.p, in.n);
    if (mode == 0)
        strict(s, in.n);
    else if (mode == 1)
        lenient(s, in.n);
    else
        token(s, in.n);
    free(s);
    return 0;
}
