/* fuzz_private_key.c: RSA private keys from PEM (dm_private_key_from_pem; PKCS#1, PKCS#8,
 * and everything else: encrypted keys, other key types, truncations, garbage).
 *
 * Input: the PEM text. Every key accepted must be private, survive the PEM round trip in
 * both forms, pass the public checks of fuzz_keys.h, and (up to FUZZ_MAX_OP_BITS) take a
 * file decryptor whose key unwrap fails cleanly on a zero key segment and a PS512 signature
 * attempt: the key's parts may be inconsistent, which OpenSSL does not check on load. */
#include "fuzz_keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void private_ops(EVP_PKEY *key)
{
    int size = EVP_PKEY_get_size(key);
    const char *err = NULL;
    dm_decryptor *d;
    struct dm_buf out = { NULL, 0, 0 };
    unsigned char *zeros, *sig;
    size_t siglen = 0;

    if (dm_key_bits(key) > FUZZ_MAX_OP_BITS || size <= 0)
        return;
    d = dm_decryptor_new(key, &err);
    FUZZ_CHECK(d != NULL);
    zeros = calloc(1, (size_t)size + 32);
    FUZZ_CHECK(zeros != NULL);
    /* an all-zero key segment is never a valid OAEP block */
    FUZZ_CHECK(dm_decryptor_update(d, zeros, (size_t)size + 32, &out) == -1);
    FUZZ_CHECK(strcmp(dm_decryptor_error(d), DM_DECRYPT_FAILED) == 0);
    FUZZ_CHECK(out.len == 0);
    dm_decryptor_free(d);
    free(zeros);
    sig = malloc((size_t)size);
    FUZZ_CHECK(sig != NULL);
    EVP_PKEY_CTX *signer = dm_ps512_signer_new(key, 64, &err);
    if (signer != NULL && dm_ps512_sign(signer, "h.p", 3, sig, &siglen, &err) == 0)
        FUZZ_CHECK(siglen == (size_t)size);
    else
        FUZZ_CHECK(err != NULL && err[0] != '\0');
    EVP_PKEY_CTX_free(signer);
    free(sig);
    dm_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *pem = malloc(size ? size : 1);
    const char *err = NULL;
    EVP_PKEY *key;

    FUZZ_CHECK(pem != NULL);
    if (size)
        memcpy(pem, data, size);
    key = dm_private_key_from_pem(pem, size, &err);
    if (key == NULL) {
        FUZZ_CHECK(err != NULL && err[0] != '\0');
    } else {
        FUZZ_CHECK(EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA);
        FUZZ_CHECK(dm_key_is_private(key));
        for (int pkcs1 = 0; pkcs1 <= 1; pkcs1++) {
            size_t len = 0;
            char *out = dm_private_pem(key, pkcs1, &len, &err);
            if (out != NULL && len <= 64 * 1024) {   /* keys.c's MAX_PEM */
                EVP_PKEY *back = dm_private_key_from_pem(out, len, &err);
                FUZZ_CHECK(back != NULL);
                FUZZ_CHECK(EVP_PKEY_eq(key, back) == 1);
                EVP_PKEY_free(back);
            }
            if (out != NULL)
                dm_free_secret(out, len);
        }
        fuzz_check_public_parts(key);
        fuzz_public_ops(key);
        private_ops(key);
        EVP_PKEY_free(key);
    }
    free(pem);
    return 0;
}
