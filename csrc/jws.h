/* jws.h: base64url, SHA-2 digests and PS512 signatures, as digi.me JWTs use them (Lua-free). */
#ifndef DIGIME_JWS_H
#define DIGIME_JWS_H

#include <stddef.h>
#include <openssl/evp.h>

/* Encoded length of n bytes in unpadded base64url. */
size_t dm_b64url_encoded_len(size_t n);
/* Writes the unpadded base64url of in to out (dm_b64url_encoded_len(n) bytes, no NUL). */
void dm_b64url_encode(const unsigned char *in, size_t n, char *out);

/* Strict base64url decoding: no padding, no whitespace, only [A-Za-z0-9_-], length mod 4 != 1,
 * unused trailing bits zero. out must hold n * 3 / 4 + 3 bytes. Returns the decoded length,
 * or -1 with *err set to a static message. */
long dm_b64url_decode(const char *in, size_t n, unsigned char *out, const char **err);

/* Lenient decoding of base64 or base64url, padding optional (for headers such as x-metadata). */
long dm_b64_decode_lenient(const char *in, size_t n, unsigned char *out, const char **err);

void dm_sha256(const void *data, size_t n, unsigned char out[32]);
void dm_sha512(const void *data, size_t n, unsigned char out[64]);

/* A context that signs PS512 (RSA-PSS, SHA-512, MGF1-SHA-512) with key and the given salt
 * length (64 for JWS PS512); NULL with *err set. Setting one up costs more than hashing a
 * JWT: a key object makes it once and signs with it every time (one thread at a time).
 * Free with EVP_PKEY_CTX_free. */
EVP_PKEY_CTX *dm_ps512_signer_new(EVP_PKEY *key, int saltlen, const char **err);
/* Signs data (hashed here). sig must hold EVP_PKEY_get_size(key) bytes. 0, or -1 with *err. */
int dm_ps512_sign(EVP_PKEY_CTX *signer, const void *data, size_t n,
                  unsigned char *sig, size_t *siglen, const char **err);
/* Returns 1 when valid, 0 when not (with *err set). The salt length is pinned to 64:
 * OpenSSL 3 would otherwise accept any salt length on verification. */
int dm_ps512_verify(EVP_PKEY *key, const void *data, size_t n,
                    const unsigned char *sig, size_t siglen, const char **err);

#endif
