/* jws.c: base64url, SHA-2 digests and PS512, as digi.me JWTs use them. */
#include "jws.h"

#include <openssl/err.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t dm_b64url_encoded_len(size_t n)
{
    return n / 3 * 4 + (n % 3 == 0 ? 0 : n % 3 + 1);
}

void dm_b64url_encode(const unsigned char *in, size_t n, char *out)
{
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned long v = (unsigned long)in[i] << 16 | (unsigned long)in[i + 1] << 8 | in[i + 2];
        *out++ = b64url_alphabet[v >> 18 & 63];
        *out++ = b64url_alphabet[v >> 12 & 63];
        *out++ = b64url_alphabet[v >> 6 & 63];
        *out++ = b64url_alphabet[v & 63];
    }
    if (n - i == 1) {
        unsigned long v = (unsigned long)in[i] << 16;
        *out++ = b64url_alphabet[v >> 18 & 63];
        *out++ = b64url_alphabet[v >> 12 & 63];
    } else if (n - i == 2) {
        unsigned long v = (unsigned long)in[i] << 16 | (unsigned long)in[i + 1] << 8;
        *out++ = b64url_alphabet[v >> 18 & 63];
        *out++ = b64url_alphabet[v >> 12 & 63];
        *out++ = b64url_alphabet[v >> 6 & 63];
    }
}

/* Value of one character, or -1. url selects '-' '_' and std selects '+' '/'. */
static int b64_value(unsigned char c, int url, int std)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (url && c == '-') return 62;
    if (url && c == '_') return 63;
    if (std && c == '+') return 62;
    if (std && c == '/') return 63;
    return -1;
}

/* Decodes n symbols (no padding) of the selected alphabets; strict about trailing bits. */
static long b64_decode_symbols(const char *in, size_t n, unsigned char *out, int url, int std,
                               const char **err)
{
    unsigned long acc = 0;
    int bits = 0;
    long len = 0;

    if (n % 4 == 1) {
        *err = "invalid base64 length";
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        int v = b64_value((unsigned char)in[i], url, std);
        if (v < 0) {
            *err = "invalid base64 character";
            return -1;
        }
        acc = (acc << 6 | (unsigned long)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[len++] = (unsigned char)(acc >> bits & 0xff);
        }
    }
    /* Leftover bits must be zero, so each byte string has exactly one encoding. */
    if (bits > 0 && (acc & ((1ul << bits) - 1)) != 0) {
        *err = "non-canonical base64 (trailing bits set)";
        return -1;
    }
    return len;
}

long dm_b64url_decode(const char *in, size_t n, unsigned char *out, const char **err)
{
    return b64_decode_symbols(in, n, out, 1, 0, err);
}

long dm_b64_decode_lenient(const char *in, size_t n, unsigned char *out, const char **err)
{
    size_t pad = 0;
    while (n > 0 && in[n - 1] == '=' && pad < 2) {
        n--;
        pad++;
    }
    if (pad > 0 && (n + pad) % 4 != 0) {
        *err = "invalid base64 padding";
        return -1;
    }
    return b64_decode_symbols(in, n, out, 1, 1, err);
}

void dm_sha256(const void *data, size_t n, unsigned char out[32])
{
    SHA256(data, n, out);
}

void dm_sha512(const void *data, size_t n, unsigned char out[64])
{
    SHA512(data, n, out);
}

/* Sets PSS over SHA-512 with MGF1-SHA-512 and the given salt length on a context. */
static int set_pss(EVP_PKEY_CTX *pctx, int saltlen)
{
    return EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1
        && EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, saltlen) == 1
        && EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha512()) == 1;
}

EVP_PKEY_CTX *dm_ps512_signer_new(EVP_PKEY *key, int saltlen, const char **err)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(key, NULL);
    int ok = ctx != NULL
          && EVP_PKEY_sign_init(ctx) == 1
          && EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha512()) == 1
          && set_pss(ctx, saltlen);
    ERR_clear_error();
    if (!ok) {
        EVP_PKEY_CTX_free(ctx);
        *err = "PS512 signing failed";
        return NULL;
    }
    return ctx;
}

int dm_ps512_sign(EVP_PKEY_CTX *signer, const void *data, size_t n,
                  unsigned char *sig, size_t *siglen, const char **err)
{
    unsigned char digest[64];
    *siglen = (size_t)EVP_PKEY_get_size(EVP_PKEY_CTX_get0_pkey(signer));
    dm_sha512(data, n, digest);
    int ok = EVP_PKEY_sign(signer, sig, siglen, digest, sizeof digest) == 1;
    ERR_clear_error();
    if (!ok) {
        *err = "PS512 signing failed";
        return -1;
    }
    return 0;
}

int dm_ps512_verify(EVP_PKEY *key, const void *data, size_t n,
                    const unsigned char *sig, size_t siglen, const char **err)
{
    if (siglen != (size_t)EVP_PKEY_get_size(key)) {
        *err = "signature length does not match the key";
        return 0;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int ok = md != NULL
          && EVP_DigestVerifyInit(md, &pctx, EVP_sha512(), NULL, key) == 1
          && set_pss(pctx, 64)
          && EVP_DigestVerify(md, sig, siglen, data, n) == 1;
    EVP_MD_CTX_free(md);
    ERR_clear_error();
    if (!ok)
        *err = "signature verification failed";
    return ok;
}
