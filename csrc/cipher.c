/* cipher.c: the digi.me file format's RSA-OAEP key wrap. */
#include "cipher.h"

#include <openssl/err.h>
#include <openssl/rsa.h>

static EVP_PKEY_CTX *oaep_ctx(EVP_PKEY *key, int decrypt)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(key, NULL);
    if (ctx == NULL)
        return NULL;
    int ok = (decrypt ? EVP_PKEY_decrypt_init(ctx) : EVP_PKEY_encrypt_init(ctx)) == 1
          && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) == 1
          /* Set both digests explicitly: the wire format is SHA-1, whatever the defaults become. */
          && EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1()) == 1
          && EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha1()) == 1;
    if (!ok) {
        EVP_PKEY_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int dm_oaep_encrypt(EVP_PKEY *key, const unsigned char *in, size_t n,
                    unsigned char *out, size_t *outlen, const char **err)
{
    EVP_PKEY_CTX *ctx = oaep_ctx(key, 0);
    *outlen = (size_t)EVP_PKEY_get_size(key);
    int ok = ctx != NULL && EVP_PKEY_encrypt(ctx, out, outlen, in, n) == 1;
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    if (!ok) {
        *err = "RSA-OAEP encryption failed (input too long for the key?)";
        return -1;
    }
    return 0;
}

int dm_oaep_decrypt(EVP_PKEY *key, const unsigned char *in, size_t n,
                    unsigned char *out, size_t *outlen, const char **err)
{
    EVP_PKEY_CTX *ctx = oaep_ctx(key, 1);
    *outlen = (size_t)EVP_PKEY_get_size(key);
    /* One message for every failure: OAEP errors must not be told apart (padding oracle). */
    int ok = ctx != NULL && n == (size_t)EVP_PKEY_get_size(key)
          && EVP_PKEY_decrypt(ctx, out, outlen, in, n) == 1;
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    if (!ok) {
        *err = "RSA-OAEP decryption failed (wrong key or corrupt data)";
        return -1;
    }
    return 0;
}
