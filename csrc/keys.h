/* keys.h: RSA keys from PEM and JWK, and back (Lua-free). Keys are OpenSSL EVP_PKEYs;
 * returned buffers are malloc'd and owned by the caller (private PEMs: free with
 * dm_free_secret). Errors are static messages that never contain key material. */
#ifndef DIGIME_KEYS_H
#define DIGIME_KEYS_H

#include <stddef.h>
#include <openssl/evp.h>

EVP_PKEY *dm_private_key_from_pem(const char *pem, size_t n, const char **err);
/* SPKI ("PUBLIC KEY"), PKCS#1 ("RSA PUBLIC KEY") or an X.509 certificate. */
EVP_PKEY *dm_public_key_from_pem(const char *pem, size_t n, const char **err);
/* From the raw big-endian bytes of a JWK's n and e. */
EVP_PKEY *dm_public_key_from_jwk(const unsigned char *n, size_t nlen,
                                 const unsigned char *e, size_t elen, const char **err);
EVP_PKEY *dm_generate_key(int bits, const char **err);

int dm_key_bits(const EVP_PKEY *key);
int dm_key_is_private(const EVP_PKEY *key);

/* pkcs1 = 0 writes SPKI / PKCS#8, pkcs1 = 1 the type-specific PKCS#1 form. */
char *dm_public_pem(EVP_PKEY *key, int pkcs1, size_t *len, const char **err);
char *dm_private_pem(EVP_PKEY *key, int pkcs1, size_t *len, const char **err);

/* The big-endian bytes of n and e. */
int dm_key_jwk(const EVP_PKEY *key, unsigned char **n, size_t *nlen,
               unsigned char **e, size_t *elen, const char **err);

void dm_free_secret(void *p, size_t len);

#endif
