/* fuzz_public_key.c: RSA public keys from untrusted bytes (keys.c), as a JWKS delivers them.
 *
 * Input: 1 control byte, then
 *   c0 even: a PEM (SPKI, PKCS#1 or a certificate; anything at all) for
 *     dm_public_key_from_pem;
 *   c0 odd: a JWK's raw n and e for dm_public_key_from_jwk: the next byte % 10 is the length
 *     of e (0..9: the limit is 8), then e, then n (the rest).
 * Every key accepted is checked with fuzz_keys.h; a JWK key's n and e read back as given
 * (without leading zero bytes). */
#include "fuzz_keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The big-endian bytes without leading zeros. */
static void strip(const unsigned char **p, size_t *n)
{
    while (*n > 0 && **p == 0)
        (*p)++, (*n)--;
}

static void from_jwk(struct fuzz_in *in)
{
    size_t elen = fuzz_byte(in) % 10;
    const unsigned char *e, *n;
    size_t nlen;
    const char *err = NULL;
    EVP_PKEY *key;
    unsigned char *e2, *n2;

    if (elen > in->n)
        elen = in->n;
    /* exact-size copies: a read past either is caught */
    e2 = malloc(elen ? elen : 1);
    n2 = malloc(in->n - elen ? in->n - elen : 1);
    FUZZ_CHECK(e2 != NULL && n2 != NULL);
    if (elen)
        memcpy(e2, in->p, elen);
    nlen = in->n - elen;
    if (nlen)
        memcpy(n2, in->p + elen, nlen);
    key = dm_public_key_from_jwk(n2, nlen, e2, elen, &err);
    if (key == NULL) {
        FUZZ_CHECK(err != NULL && err[0] != '\0');
    } else {
        unsigned char *rn = NULL, *re = NULL;
        size_t rnlen = 0, relen = 0;
        n = n2;
        e = e2;
        strip(&n, &nlen);
        strip(&e, &elen);
        FUZZ_CHECK(!dm_key_is_private(key));
        FUZZ_CHECK(dm_key_jwk(key, &rn, &rnlen, &re, &relen, &err) == 0);
        FUZZ_CHECK(rnlen == nlen && memcmp(rn, n, nlen) == 0);
        FUZZ_CHECK(relen == elen && memcmp(re, e, elen) == 0);
        FUZZ_CHECK(dm_key_bits(key) >= 512);
        OPENSSL_free(rn);
        OPENSSL_free(re);
        fuzz_check_public_parts(key);
        fuzz_public_ops(key);
        EVP_PKEY_free(key);
    }
    free(e2);
    free(n2);
}

static void from_pem(struct fuzz_in *in)
{
    char *pem = malloc(in->n ? in->n : 1);
    const char *err = NULL;
    EVP_PKEY *key;

    FUZZ_CHECK(pem != NULL);
    if (in->n)
        memcpy(pem, in->p, in->n);
    key = dm_public_key_from_pem(pem, in->n, &err);
    if (key == NULL) {
        FUZZ_CHECK(err != NULL && err[0] != '\0');
    } else {
        FUZZ_CHECK(EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA);
        fuzz_check_public_parts(key);
        fuzz_public_ops(key);
        EVP_PKEY_free(key);
    }
    free(pem);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };

    if (fuzz_byte(&in) & 1)
        from_jwk(&in);
    else
        from_pem(&in);
    return 0;
}
