/* cipher.h: the digi.me file format's key wrap (Lua-free). The streaming file decryptor and
 * encryptor join it with the reading and storage work. */
#ifndef DIGIME_CIPHER_H
#define DIGIME_CIPHER_H

#include <stddef.h>
#include <openssl/evp.h>

/* RSA-OAEP with SHA-1 and MGF1-SHA-1, empty label. out must hold EVP_PKEY_get_size(key) bytes.
 * Return 0, or -1 with *err set to a static message. */
int dm_oaep_encrypt(EVP_PKEY *key, const unsigned char *in, size_t n,
                    unsigned char *out, size_t *outlen, const char **err);
int dm_oaep_decrypt(EVP_PKEY *key, const unsigned char *in, size_t n,
                    unsigned char *out, size_t *outlen, const char **err);

#endif
