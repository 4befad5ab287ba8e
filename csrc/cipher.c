/* cipher.c: the digi.me file format behind cipher.h: RSA-OAEP key wrap, streaming
 * decryptor and encryptor, and the reading pipeline. */
#include "cipher.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#include "keys.h"
#include "random.h"

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

static int is_rsa(EVP_PKEY *key)
{
    return EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA;
}

EVP_PKEY_CTX *dm_unwrap_ctx_new(EVP_PKEY *key, const char **err)
{
    EVP_PKEY_CTX *ctx = NULL;

    if (is_rsa(key) && dm_key_is_private(key))
        ctx = oaep_ctx(key, 1);
    ERR_clear_error();
    if (ctx == NULL)
        *err = "an RSA private key is required";
    return ctx;
}

int dm_oaep_unwrap(EVP_PKEY_CTX *unwrap, const unsigned char *in, size_t n,
                   unsigned char *out, size_t *outlen, const char **err)
{
    size_t keysize = (size_t)EVP_PKEY_get_size(EVP_PKEY_CTX_get0_pkey(unwrap));
    *outlen = keysize;
    /* One message for every failure: OAEP errors must not be told apart (padding oracle). */
    int ok = n == keysize && EVP_PKEY_decrypt(unwrap, out, outlen, in, n) == 1;
    ERR_clear_error();
    if (!ok) {
        *err = "RSA-OAEP decryption failed (wrong key or corrupt data)";
        return -1;
    }
    return 0;
}

int dm_file_size_valid(unsigned long long total, size_t keysize)
{
    unsigned long long head = (unsigned long long)keysize + 16;

    return total >= head + 16 && (total - head) % 16 == 0;
}

/* EVP takes int lengths: long inputs go through in slices. */
#define SLICE ((size_t)1 << 30)

/* ---- decryptor ---- */

enum dec_state { DEC_HEADER, DEC_BODY, DEC_DONE, DEC_FAILED };

struct dm_decryptor {
    EVP_PKEY_CTX *unwrap;       /* own copy, until the key segment is unwrapped */
    size_t keysize, hdr_len, have;
    unsigned char *hdr;         /* key segment || IV, as it arrives */
    EVP_CIPHER_CTX *ctx;
    unsigned long long total, expected;
    int has_expected;
    enum dec_state state;
    char err[DM_ERRLEN];
};

static void dec_wipe(dm_decryptor *d)
{
    if (d->hdr != NULL) {
        OPENSSL_cleanse(d->hdr, d->hdr_len);
        free(d->hdr);
        d->hdr = NULL;
    }
    EVP_PKEY_CTX_free(d->unwrap);  /* holds its own reference to the key */
    d->unwrap = NULL;
    EVP_CIPHER_CTX_free(d->ctx);  /* wipes the AES key schedule */
    d->ctx = NULL;
}

static int dec_fail(dm_decryptor *d, const char *fmt, ...)
{
    va_list ap;

    if (d->state != DEC_FAILED) {
        va_start(ap, fmt);
        vsnprintf(d->err, sizeof d->err, fmt, ap);
        va_end(ap);
        d->state = DEC_FAILED;
        dec_wipe(d);
    }
    return -1;
}

dm_decryptor *dm_decryptor_from(const EVP_PKEY_CTX *unwrap, const char **err)
{
    dm_decryptor *d = calloc(1, sizeof *d);

    if (d == NULL) {
        *err = "out of memory";
        return NULL;
    }
    d->keysize = (size_t)EVP_PKEY_get_size(EVP_PKEY_CTX_get0_pkey((EVP_PKEY_CTX *)unwrap));
    d->hdr_len = d->keysize + 16;
    d->hdr = malloc(d->hdr_len);
    d->ctx = EVP_CIPHER_CTX_new();
    /* a copy costs a thirtieth of setting a context up */
    d->unwrap = EVP_PKEY_CTX_dup(unwrap);
    if (d->hdr == NULL || d->ctx == NULL || d->unwrap == NULL) {
        dec_wipe(d);
        free(d);
        ERR_clear_error();
        *err = "out of memory";
        return NULL;
    }
    d->state = DEC_HEADER;
    return d;
}

dm_decryptor *dm_decryptor_new(EVP_PKEY *key, const char **err)
{
    EVP_PKEY_CTX *unwrap = dm_unwrap_ctx_new(key, err);
    dm_decryptor *d = unwrap != NULL ? dm_decryptor_from(unwrap, err) : NULL;

    EVP_PKEY_CTX_free(unwrap);
    return d;
}

int dm_decryptor_expect_size(dm_decryptor *d, unsigned long long total)
{
    if (d->state == DEC_FAILED)
        return -1;
    if (!dm_file_size_valid(total, d->keysize))
        return dec_fail(d, "File size not valid: %llu", total);
    if (total < d->total)
        return dec_fail(d, "file longer than its declared size (%llu bytes)", total);
    d->expected = total;
    d->has_expected = 1;
    return 0;
}

/* The header is complete: unwrap the AES key and start AES-256-CBC. */
static int dec_unwrap(dm_decryptor *d)
{
    unsigned char *aes = malloc(d->keysize);
    size_t aeslen = 0;
    const char *e = NULL;
    int ok;

    ok = aes != NULL
      && dm_oaep_unwrap(d->unwrap, d->hdr, d->keysize, aes, &aeslen, &e) == 0
      && aeslen == 32
      && EVP_DecryptInit_ex(d->ctx, EVP_aes_256_cbc(), NULL, aes, d->hdr + d->keysize) == 1;
    if (aes != NULL) {
        OPENSSL_cleanse(aes, d->keysize);
        free(aes);
    }
    OPENSSL_cleanse(d->hdr, d->hdr_len);
    free(d->hdr);
    d->hdr = NULL;
    EVP_PKEY_CTX_free(d->unwrap);
    d->unwrap = NULL;
    ERR_clear_error();
    if (!ok)
        return dec_fail(d, "%s", DM_DECRYPT_FAILED);
    d->state = DEC_BODY;
    return 0;
}

int dm_decryptor_update(dm_decryptor *d, const unsigned char *in, size_t n, struct dm_buf *out)
{
    if (d->state == DEC_FAILED)
        return -1;
    if (d->state == DEC_DONE)
        return dec_fail(d, "file data after the end");
    if (d->has_expected && n > d->expected - d->total)
        return dec_fail(d, "file longer than its declared size (%llu bytes)", d->expected);
    d->total += n;
    if (d->state == DEC_HEADER) {
        size_t k = d->hdr_len - d->have;
        if (k > n)
            k = n;
        if (k > 0)
            memcpy(d->hdr + d->have, in, k);
        d->have += k;
        in += k;
        n -= k;
        if (d->have < d->hdr_len)
            return 0;
        if (dec_unwrap(d) != 0)
            return -1;
    }
    while (n > 0) {
        size_t k = n < SLICE ? n : SLICE;
        int outl = 0;
        if (dm_buf_reserve(out, k + 16) != 0)
            return dec_fail(d, "out of memory");
        if (EVP_DecryptUpdate(d->ctx, out->data + out->len, &outl, in, (int)k) != 1) {
            ERR_clear_error();
            return dec_fail(d, "%s", DM_DECRYPT_FAILED);
        }
        out->len += (size_t)outl;
        in += k;
        n -= k;
    }
    return 0;
}

int dm_decryptor_final(dm_decryptor *d, struct dm_buf *out)
{
    int outl = 0;

    if (d->state == DEC_FAILED)
        return -1;
    if (d->state == DEC_DONE)
        return 0;
    if (d->has_expected && d->total != d->expected)
        return dec_fail(d, "file truncated: %llu of %llu bytes", d->total, d->expected);
    if (!dm_file_size_valid(d->total, d->keysize))
        return dec_fail(d, "File size not valid: %llu", d->total);
    if (dm_buf_reserve(out, 32) != 0)
        return dec_fail(d, "out of memory");
    if (EVP_DecryptFinal_ex(d->ctx, out->data + out->len, &outl) != 1) {
        ERR_clear_error();
        return dec_fail(d, "%s", DM_DECRYPT_FAILED);
    }
    out->len += (size_t)outl;
    d->state = DEC_DONE;
    dec_wipe(d);
    return 0;
}

const char *dm_decryptor_error(const dm_decryptor *d)
{
    return d->state == DEC_FAILED ? d->err : "";
}

void dm_decryptor_free(dm_decryptor *d)
{
    if (d == NULL)
        return;
    dec_wipe(d);
    OPENSSL_cleanse(d, sizeof *d);
    free(d);
}

/* ---- encryptor ---- */

struct dm_encryptor {
    EVP_CIPHER_CTX *ctx;
    unsigned char *hdr;   /* wrapped key || IV, until it goes out */
    size_t hdr_len;
    int done;
};

static void enc_wipe(dm_encryptor *e)
{
    if (e->hdr != NULL) {
        OPENSSL_cleanse(e->hdr, e->hdr_len);
        free(e->hdr);
        e->hdr = NULL;
    }
    EVP_CIPHER_CTX_free(e->ctx);
    e->ctx = NULL;
}

dm_encryptor *dm_encryptor_new(EVP_PKEY *key, const char **err)
{
    unsigned char aes[32];
    size_t keysize, wrapped = 0;
    dm_encryptor *e;
    int ok;

    if (!is_rsa(key)) {
        *err = "an RSA key is required";
        return NULL;
    }
    e = calloc(1, sizeof *e);
    if (e == NULL) {
        *err = "out of memory";
        return NULL;
    }
    keysize = (size_t)EVP_PKEY_get_size(key);
    e->hdr_len = keysize + 16;
    e->hdr = malloc(e->hdr_len);
    e->ctx = EVP_CIPHER_CTX_new();
    if (e->hdr == NULL || e->ctx == NULL) {
        enc_wipe(e);
        free(e);
        *err = "out of memory";
        return NULL;
    }
    /* OpenSSL's RSA encryption uses only n and e, so a private key object serves as well */
    ok = dm_random_bytes(aes, sizeof aes) == 0
      && dm_random_bytes(e->hdr + keysize, 16) == 0
      && dm_oaep_encrypt(key, aes, sizeof aes, e->hdr, &wrapped, err) == 0
      && wrapped == keysize
      && EVP_EncryptInit_ex(e->ctx, EVP_aes_256_cbc(), NULL, aes, e->hdr + keysize) == 1;
    OPENSSL_cleanse(aes, sizeof aes);
    ERR_clear_error();
    if (!ok) {
        enc_wipe(e);
        free(e);
        *err = "file encryption setup failed";
        return NULL;
    }
    return e;
}

static int enc_header(dm_encryptor *e, struct dm_buf *out, const char **err)
{
    if (e->hdr == NULL)
        return 0;
    if (dm_buf_append(out, e->hdr, e->hdr_len) != 0) {
        *err = "out of memory";
        return -1;
    }
    OPENSSL_cleanse(e->hdr, e->hdr_len);
    free(e->hdr);
    e->hdr = NULL;
    return 0;
}

int dm_encryptor_update(dm_encryptor *e, const unsigned char *in, size_t n, struct dm_buf *out,
                        const char **err)
{
    if (e->done) {
        *err = "file encryptor already finished";
        return -1;
    }
    if (enc_header(e, out, err) != 0)
        return -1;
    while (n > 0) {
        size_t k = n < SLICE ? n : SLICE;
        int outl = 0;
        if (dm_buf_reserve(out, k + 16) != 0) {
            *err = "out of memory";
            return -1;
        }
        if (EVP_EncryptUpdate(e->ctx, out->data + out->len, &outl, in, (int)k) != 1) {
            ERR_clear_error();
            *err = "AES-256-CBC encryption failed";
            return -1;
        }
        out->len += (size_t)outl;
        in += k;
        n -= k;
    }
    return 0;
}

int dm_encryptor_final(dm_encryptor *e, struct dm_buf *out, const char **err)
{
    int outl = 0;

    if (e->done) {
        *err = "file encryptor already finished";
        return -1;
    }
    if (enc_header(e, out, err) != 0)
        return -1;
    if (dm_buf_reserve(out, 16) != 0) {
        *err = "out of memory";
        return -1;
    }
    if (EVP_EncryptFinal_ex(e->ctx, out->data + out->len, &outl) != 1) {
        ERR_clear_error();
        *err = "AES-256-CBC encryption failed";
        return -1;
    }
    out->len += (size_t)outl;
    e->done = 1;
    enc_wipe(e);
    return 0;
}

void dm_encryptor_free(dm_encryptor *e)
{
    if (e == NULL)
        return;
    enc_wipe(e);
    free(e);
}

/* ---- pipeline ---- */

/* Input is decrypted in pieces of this size, then inflated, so the decrypted-but-not-yet
 * inflated bytes stay small whatever a caller hands over at once. */
#define PIECE ((size_t)64 * 1024)

struct dm_pipeline {
    int refs, claimed;
    enum dm_pipeline_state state;
    dm_decryptor *dec;
    dm_inflater *inf;    /* NULL while the compression is deferred */
    size_t max_output;
    struct dm_buf mid;   /* decrypted, not yet inflated */
    struct dm_buf out;   /* plaintext for the consumer */
    char err[DM_ERRLEN];
};

static int pipe_fail(dm_pipeline *p, const char *msg)
{
    if (p->state != DM_PIPE_FAILED) {
        snprintf(p->err, sizeof p->err, "%s", msg);
        p->state = DM_PIPE_FAILED;
        /* nothing partial survives a failure */
        dm_buf_free(&p->out);
        dm_buf_free(&p->mid);
        dm_decryptor_free(p->dec);
        p->dec = NULL;
    }
    return -1;
}

dm_pipeline *dm_pipeline_new(const EVP_PKEY_CTX *unwrap, enum dm_compression c, int deferred,
                             size_t max_output, const char **err)
{
    dm_pipeline *p = calloc(1, sizeof *p);

    if (p == NULL) {
        *err = "out of memory";
        return NULL;
    }
    p->refs = 1;
    p->state = DM_PIPE_FRESH;
    p->dec = dm_decryptor_from(unwrap, err);
    if (p->dec == NULL) {
        free(p);
        return NULL;
    }
    p->max_output = max_output;
    if (deferred)
        return p;
    p->inf = dm_inflater_new(c, max_output);
    if (p->inf == NULL) {
        dm_decryptor_free(p->dec);
        free(p);
        *err = "out of memory";
        return NULL;
    }
    return p;
}

void dm_pipeline_retain(dm_pipeline *p)
{
    p->refs++;
}

void dm_pipeline_release(dm_pipeline *p)
{
    if (p == NULL || --p->refs > 0)
        return;
    dm_decryptor_free(p->dec);
    dm_inflater_free(p->inf);
    dm_buf_free(&p->mid);
    dm_buf_free(&p->out);
    free(p);
}

int dm_pipeline_set_compression(dm_pipeline *p, enum dm_compression c)
{
    if (p->inf != NULL || p->state == DM_PIPE_FAILED)
        return -1;
    p->inf = dm_inflater_new(c, p->max_output);
    if (p->inf == NULL)
        return pipe_fail(p, "out of memory");
    return 0;
}

int dm_pipeline_compression_set(const dm_pipeline *p)
{
    return p->inf != NULL;
}

int dm_pipeline_claim(dm_pipeline *p)
{
    if (p->claimed || p->state != DM_PIPE_FRESH)
        return -1;
    p->claimed = 1;
    return 0;
}

int dm_pipeline_claimed(const dm_pipeline *p)
{
    return p->claimed;
}

int dm_pipeline_expect_size(dm_pipeline *p, unsigned long long total)
{
    if (p->state == DM_PIPE_FAILED)
        return -1;
    if (p->dec != NULL && dm_decryptor_expect_size(p->dec, total) != 0)
        return pipe_fail(p, dm_decryptor_error(p->dec));
    return 0;
}

static int held_back(const dm_pipeline *p)
{
    return p->mid.len > 0 || (p->inf != NULL && dm_inflater_pending(p->inf));
}

int dm_pipeline_pump(dm_pipeline *p, size_t limit)
{
    size_t used = 0;

    if (p->state == DM_PIPE_FAILED)
        return -1;
    if (p->inf == NULL)
        return held_back(p);   /* the compression is not known yet */
    if (held_back(p)) {
        int rc = dm_inflater_update(p->inf, p->mid.data, p->mid.len, &used, &p->out, limit);
        dm_buf_consume(&p->mid, used);
        if (rc != 0)
            return pipe_fail(p, dm_inflater_error(p->inf));
    }
    return held_back(p);
}

int dm_pipeline_write(dm_pipeline *p, const unsigned char *in, size_t n, size_t limit)
{
    if (p->state == DM_PIPE_FAILED)
        return -1;
    if (p->state == DM_PIPE_ENDING || p->state == DM_PIPE_DONE)
        return pipe_fail(p, "file data after the end");
    p->state = DM_PIPE_RUNNING;
    while (n > 0) {
        size_t k = n < PIECE ? n : PIECE;
        if (dm_decryptor_update(p->dec, in, k, &p->mid) != 0)
            return pipe_fail(p, dm_decryptor_error(p->dec));
        in += k;
        n -= k;
        if (dm_pipeline_pump(p, limit) < 0)
            return -1;
    }
    return held_back(p);
}

int dm_pipeline_finish(dm_pipeline *p, size_t limit)
{
    int rc;

    if (p->state == DM_PIPE_FAILED)
        return -1;
    if (p->state == DM_PIPE_DONE)
        return 0;
    if (p->state != DM_PIPE_ENDING) {
        p->state = DM_PIPE_ENDING;
        if (dm_decryptor_final(p->dec, &p->mid) != 0)
            return pipe_fail(p, dm_decryptor_error(p->dec));
        dm_decryptor_free(p->dec);
        p->dec = NULL;
    }
    if (p->inf == NULL)
        return 1;              /* ends once the compression is known */
    rc = dm_pipeline_pump(p, limit);
    if (rc != 0)
        return rc;
    rc = dm_inflater_final(p->inf, &p->out, limit);
    if (rc < 0)
        return pipe_fail(p, dm_inflater_error(p->inf));
    if (rc > 0)
        return 1;
    p->state = DM_PIPE_DONE;
    dm_buf_free(&p->mid);
    return 0;
}

const unsigned char *dm_pipeline_output(const dm_pipeline *p, size_t *len)
{
    static const unsigned char empty[1];

    *len = p->out.len;
    return p->out.data ? p->out.data : empty;
}

void dm_pipeline_drain(dm_pipeline *p)
{
    p->out.len = 0;
}

size_t dm_pipeline_buffered(const dm_pipeline *p)
{
    return p->out.len;
}

enum dm_pipeline_state dm_pipeline_state(const dm_pipeline *p)
{
    return p->state;
}

const char *dm_pipeline_error(const dm_pipeline *p)
{
    return p->state == DM_PIPE_FAILED ? p->err : "";
}
