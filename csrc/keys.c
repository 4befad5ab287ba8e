/* keys.c: RSA keys from PEM and JWK, and back, with OpenSSL 3 APIs only (no hand-made DER). */
#include "keys.h"

#include <string.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/decoder.h>
#include <openssl/encoder.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#define MAX_PEM (64 * 1024)
#define MAX_RSA_BITS 16384

/* Refuses a passphrase prompt: an encrypted key must never block on a terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf; (void)size; (void)rwflag; (void)u;
    return -1;
}

/* memmem is a GNU extension; PEM inputs are small, so a plain scan will do. */
static int contains(const char *hay, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; m <= n && i <= n - m; i++)
        if (memcmp(hay + i, needle, m) == 0)
            return 1;
    return 0;
}

static int is_rsa(const EVP_PKEY *key)
{
    return EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA;
}

static EVP_PKEY *only_rsa(EVP_PKEY *key, const char **err)
{
    if (key != NULL && !is_rsa(key)) {
        EVP_PKEY_free(key);
        *err = "not an RSA key";
        return NULL;
    }
    return key;
}

EVP_PKEY *dm_private_key_from_pem(const char *pem, size_t n, const char **err)
{
    if (n == 0 || n > MAX_PEM || !contains(pem, n, "-----BEGIN ")) {
        *err = "not a PEM private key";
        return NULL;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)n);
    EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL) : NULL;
    BIO_free(bio);
    ERR_clear_error();
    if (key == NULL) {
        *err = "invalid or encrypted PEM private key (PKCS#1 or PKCS#8 RSA expected)";
        return NULL;
    }
    return only_rsa(key, err);
}

EVP_PKEY *dm_public_key_from_pem(const char *pem, size_t n, const char **err)
{
    EVP_PKEY *key = NULL;

    if (n == 0 || n > MAX_PEM || !contains(pem, n, "-----BEGIN ")) {
        *err = "not a PEM public key";
        return NULL;
    }
    if (contains(pem, n, "-----BEGIN CERTIFICATE-----")) {
        BIO *bio = BIO_new_mem_buf(pem, (int)n);
        X509 *cert = bio ? PEM_read_bio_X509(bio, NULL, no_passphrase, NULL) : NULL;
        BIO_free(bio);
        if (cert != NULL) {
            key = X509_get_pubkey(cert);
            X509_free(cert);
        }
    } else {
        /* The decoder reads both SPKI and the type-specific PKCS#1 form. */
        const unsigned char *p = (const unsigned char *)pem;
        size_t left = n;
        OSSL_DECODER_CTX *dctx = OSSL_DECODER_CTX_new_for_pkey(
            &key, "PEM", NULL, "RSA", EVP_PKEY_PUBLIC_KEY, NULL, NULL);
        if (dctx != NULL && OSSL_DECODER_from_data(dctx, &p, &left) != 1)
            key = NULL;
        OSSL_DECODER_CTX_free(dctx);
    }
    ERR_clear_error();
    if (key == NULL) {
        *err = "invalid PEM public key (SPKI, PKCS#1 or certificate expected)";
        return NULL;
    }
    return only_rsa(key, err);
}

EVP_PKEY *dm_public_key_from_jwk(const unsigned char *n, size_t nlen,
                                 const unsigned char *e, size_t elen, const char **err)
{
    EVP_PKEY *key = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    BIGNUM *bn_n = NULL, *bn_e = NULL;

    if (nlen == 0 || nlen > MAX_RSA_BITS / 8 || elen == 0 || elen > 8) {
        *err = "JWK n or e has an invalid size";
        return NULL;
    }
    bn_n = BN_bin2bn(n, (int)nlen, NULL);
    bn_e = BN_bin2bn(e, (int)elen, NULL);
    if (bn_n == NULL || bn_e == NULL || BN_num_bits(bn_n) < 512 || !BN_is_odd(bn_n)
        || !BN_is_odd(bn_e) || BN_is_one(bn_e)) {
        *err = "JWK n or e is not a valid RSA public key";
        goto done;
    }
    bld = OSSL_PARAM_BLD_new();
    if (bld == NULL
        || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n)
        || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e)
        || (params = OSSL_PARAM_BLD_to_param(bld)) == NULL
        || (ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) == NULL
        || EVP_PKEY_fromdata_init(ctx) != 1
        || EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1) {
        key = NULL;
        *err = "JWK could not be turned into an RSA key";
    }
done:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    ERR_clear_error();
    return key;
}

EVP_PKEY *dm_generate_key(int bits, const char **err)
{
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (ctx == NULL || EVP_PKEY_keygen_init(ctx) != 1
        || EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, bits) != 1
        || EVP_PKEY_generate(ctx, &key) != 1) {
        key = NULL;
        *err = "RSA key generation failed";
    }
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    return key;
}

int dm_key_bits(const EVP_PKEY *key)
{
    return EVP_PKEY_get_bits(key);
}

int dm_key_is_private(const EVP_PKEY *key)
{
    /* Asks only the size of d: fetching the value would copy the private exponent into a
     * fresh BIGNUM (allocated, converted and wiped) at every call, a measurable part of a
     * file's cost when every signature and every decryptor asks. */
    OSSL_PARAM query[] = { OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_D, NULL, 0), OSSL_PARAM_END };
    int has = EVP_PKEY_get_params(key, query) == 1 && OSSL_PARAM_modified(query)
           && query[0].return_size > 0;
    ERR_clear_error();
    return has;
}

/* Copies a memory BIO's contents into a malloc'd buffer. */
static char *bio_contents(BIO *bio, size_t *len)
{
    char *data;
    long n = BIO_get_mem_data(bio, &data);
    if (n <= 0)
        return NULL;
    char *out = OPENSSL_malloc((size_t)n);
    if (out != NULL) {
        memcpy(out, data, (size_t)n);
        *len = (size_t)n;
    }
    return out;
}

static char *encode_pem(EVP_PKEY *key, int selection, const char *structure, size_t *len,
                        const char **err)
{
    char *out = NULL;
    BIO *bio = BIO_new(BIO_s_secmem());
    OSSL_ENCODER_CTX *ectx = OSSL_ENCODER_CTX_new_for_pkey(key, selection, "PEM", structure, NULL);
    if (bio != NULL && ectx != NULL && OSSL_ENCODER_to_bio(ectx, bio) == 1)
        out = bio_contents(bio, len);
    OSSL_ENCODER_CTX_free(ectx);
    BIO_free(bio);  /* secure memory BIOs clear themselves */
    ERR_clear_error();
    if (out == NULL)
        *err = "PEM encoding failed";
    return out;
}

char *dm_public_pem(EVP_PKEY *key, int pkcs1, size_t *len, const char **err)
{
    return encode_pem(key, EVP_PKEY_PUBLIC_KEY,
                      pkcs1 ? "type-specific" : "SubjectPublicKeyInfo", len, err);
}

char *dm_private_pem(EVP_PKEY *key, int pkcs1, size_t *len, const char **err)
{
    return encode_pem(key, EVP_PKEY_KEYPAIR, pkcs1 ? "type-specific" : "PrivateKeyInfo", len, err);
}

static unsigned char *bn_param(const EVP_PKEY *key, const char *name, size_t *len)
{
    BIGNUM *bn = NULL;
    unsigned char *out = NULL;
    if (EVP_PKEY_get_bn_param(key, name, &bn) == 1) {
        int n = BN_num_bytes(bn);
        out = OPENSSL_malloc(n > 0 ? (size_t)n : 1);
        if (out != NULL)
            *len = (size_t)BN_bn2bin(bn, out);
    }
    BN_free(bn);
    return out;
}

int dm_key_jwk(const EVP_PKEY *key, unsigned char **n, size_t *nlen,
               unsigned char **e, size_t *elen, const char **err)
{
    *n = bn_param(key, OSSL_PKEY_PARAM_RSA_N, nlen);
    *e = bn_param(key, OSSL_PKEY_PARAM_RSA_E, elen);
    ERR_clear_error();
    if (*n == NULL || *e == NULL) {
        OPENSSL_free(*n);
        OPENSSL_free(*e);
        *n = *e = NULL;
        *err = "could not read the key's modulus and exponent";
        return -1;
    }
    return 0;
}

void dm_free_secret(void *p, size_t len)
{
    OPENSSL_clear_free(p, len);
}
