/* fuzz_keys.h: checks every key that keys.c accepts (fuzz_public_key.c, fuzz_private_key.c):
 * its n and e survive the JWK form, its public PEM (SPKI and PKCS#1) parses back to the same
 * key, and the operations the SDK runs on such a key fail cleanly rather than crash. */
#ifndef DIGIME_FUZZ_KEYS_H
#define DIGIME_FUZZ_KEYS_H

#include <openssl/evp.h>

#include "fuzz_common.h"
#include "../cipher.h"
#include "../jws.h"
#include "../keys.h"

/* Keys larger than this are parsed and converted, but no RSA operation is run with them:
 * a hostile 16384-bit private key costs the fuzzer seconds per input, not coverage. */
#define FUZZ_MAX_OP_BITS 4096

static inline void fuzz_check_public_parts(EVP_PKEY *key)
{
    unsigned char *n = NULL, *e = NULL;
    size_t nlen = 0, elen = 0;
    const char *err = NULL;

    FUZZ_CHECK(dm_key_bits(key) > 0);
    if (dm_key_jwk(key, &n, &nlen, &e, &elen, &err) == 0) {
        EVP_PKEY *back = dm_public_key_from_jwk(n, nlen, e, elen, &err);
        /* the JWK path refuses small or even moduli that a PEM may carry */
        if (back != NULL) {
            FUZZ_CHECK(EVP_PKEY_eq(key, back) == 1);
            EVP_PKEY_free(back);
        }
        OPENSSL_free(n);
        OPENSSL_free(e);
    } else {
        FUZZ_CHECK(err != NULL && n == NULL && e == NULL);
    }
    for (int pkcs1 = 0; pkcs1 <= 1; pkcs1++) {
        size_t len = 0;
        char *pem = dm_public_pem(key, pkcs1, &len, &err);
        /* keys.c refuses PEMs over 64 KiB (MAX_PEM); a re-encoding may be a little longer
         * than the input was */
        if (pem != NULL && len <= 64 * 1024) {
            EVP_PKEY *back = dm_public_key_from_pem(pem, len, &err);
            FUZZ_CHECK(back != NULL);
            FUZZ_CHECK(EVP_PKEY_eq(key, back) == 1);
            FUZZ_CHECK(!dm_key_is_private(back));
            EVP_PKEY_free(back);
        }
        OPENSSL_free(pem);
    }
}

/* Public operations: verification of a signature that cannot be valid, and a key wrap. */
static inline void fuzz_public_ops(EVP_PKEY *key)
{
    int size = EVP_PKEY_get_size(key);
    const char *err = NULL;
    unsigned char *sig, wrapped[FUZZ_MAX_OP_BITS / 8];
    size_t wlen = 0;

    if (dm_key_bits(key) > FUZZ_MAX_OP_BITS || size <= 0)
        return;
    sig = calloc(1, (size_t)size);
    FUZZ_CHECK(sig != NULL);
    FUZZ_CHECK(dm_ps512_verify(key, "h.p", 3, sig, (size_t)size, &err) == 0);
    free(sig);
    if (dm_oaep_encrypt(key, (const unsigned char *)"0123456789abcdef0123456789abcdef", 32,
                        wrapped, &wlen, &err) == 0)
        FUZZ_CHECK(wlen == (size_t)size);
}

#endif
