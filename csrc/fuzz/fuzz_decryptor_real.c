/* fuzz_decryptor_real.c: the file pipeline past the key unwrap.
 *
 * At start-up the target wraps a fixed AES-256 key with the test key's public part (one
 * RSA-OAEP operation); every input then becomes a file that really unwraps:
 *   wrapped key || fixed IV || AES-256-CBC data built from the input,
 * so the fuzzer explores the CBC padding check and the inflaters behind the decryptor.
 * Each run is checked against a reference computed apart: the expected plaintext (PKCS#7
 * removed by hand, not by OpenSSL) decompressed in one piece by a fresh inflater. The
 * chunked, flow-controlled pipeline must agree with it on success or failure and on every
 * output byte.
 *
 * Input: 4 control bytes, then the payload.
 *   c0: bits 0-1 compression (none, gzip, brotli, deferred); bits 2-3 how the payload
 *       becomes the AES data: 0-1 it is the plaintext, encrypted with PKCS#7 padding (a
 *       valid file: the inflaters see the fuzzer's bytes); 2 it is the padded plaintext,
 *       encrypted without padding, so its last block is the fuzzer's padding (cut to whole
 *       blocks, at least one); 3 it is the ciphertext itself; bit 4: declare the exact size
 *       first; bits 5-7 the soft output limit
 *   c1: bits 0-2 max_output; bits 3-4 the compression a deferred pipeline gets; bits 5-7
 *       the chunk before which it is set
 *   c2, c3: the chunking (maximum piece size, seed) */
#include <openssl/evp.h>

#include "fuzz_pipeline.h"
#include "test_key.h"
#include "../keys.h"

static EVP_PKEY *key;
static unsigned char header[1024 + 16];
static size_t header_len;
static const unsigned char aes_key[32] = "digime fuzz: fixed AES-256 key!";
static const unsigned char iv[16] = "fixed IV, 16 B.";

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *err = NULL;
    size_t wrapped = 0;

    (void)argc;
    (void)argv;
    key = dm_private_key_from_pem(fuzz_test_key_pem, sizeof fuzz_test_key_pem - 1, &err);
    FUZZ_CHECK(key != NULL);
    FUZZ_CHECK((size_t)EVP_PKEY_get_size(key) + 16 <= sizeof header);
    FUZZ_CHECK(dm_oaep_encrypt(key, aes_key, sizeof aes_key, header, &wrapped, &err) == 0);
    FUZZ_CHECK(wrapped == (size_t)EVP_PKEY_get_size(key));
    memcpy(header + wrapped, iv, sizeof iv);
    header_len = wrapped + sizeof iv;
    return 0;
}

/* AES-256-CBC with the fixed key and IV, in one piece; padding on or off. */
static void aes(int enc, int pad, const unsigned char *in, size_t n, struct dm_buf *out)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int l1 = 0, l2 = 0;

    FUZZ_CHECK(ctx != NULL);
    FUZZ_CHECK(EVP_CipherInit_ex(ctx, EVP_aes_256_cbc(), NULL, aes_key, iv, enc) == 1);
    FUZZ_CHECK(EVP_CIPHER_CTX_set_padding(ctx, pad) == 1);
    FUZZ_CHECK(dm_buf_reserve(out, n + 32) == 0);
    FUZZ_CHECK(EVP_CipherUpdate(ctx, out->data + out->len, &l1, in, (int)n) == 1);
    FUZZ_CHECK(EVP_CipherFinal_ex(ctx, out->data + out->len + l1, &l2) == 1);
    out->len += (size_t)l1 + (size_t)l2;
    EVP_CIPHER_CTX_free(ctx);
}

/* PKCS#7 removal by hand: the plaintext length, or -1 for bad padding. */
static long unpad(const unsigned char *p, size_t n)
{
    unsigned v;

    if (n == 0 || n % 16 != 0)
        return -1;
    v = p[n - 1];
    if (v < 1 || v > 16)
        return -1;
    for (size_t i = n - v; i < n; i++)
        if (p[i] != v)
            return -1;
    return (long)(n - v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };
    uint8_t c0 = fuzz_byte(&in), c1 = fuzz_byte(&in), c2 = fuzz_byte(&in), c3 = fuzz_byte(&in);
    int mode = c0 >> 2 & 3;
    struct fuzz_pipe_cfg cfg;
    struct dm_buf file = { NULL, 0, 0 }, plain = { NULL, 0, 0 };
    struct dm_buf ref = { NULL, 0, 0 }, out = { NULL, 0, 0 };
    const unsigned char *ref_plain = NULL;
    long ref_len = -1;   /* -1: the file does not decrypt */
    int ref_ok, ok;
    char err[DM_ERRLEN];

    FUZZ_CHECK(dm_buf_append(&file, header, header_len) == 0);
    if (mode <= 1) {
        aes(1, 1, in.p, in.n, &file);
        ref_plain = in.p;
        ref_len = (long)in.n;
    } else if (mode == 2) {
        size_t n = in.n / 16 * 16;
        FUZZ_CHECK(dm_buf_append(&plain, in.p, n) == 0);
        if (n == 0) {
            static const unsigned char zero[16];
            FUZZ_CHECK(dm_buf_append(&plain, zero, 16) == 0);
            if (in.n > 0)
                memcpy(plain.data, in.p, in.n);
        }
        aes(1, 0, plain.data, plain.len, &file);
        ref_plain = plain.data;
        ref_len = unpad(plain.data, plain.len);
    } else {
        FUZZ_CHECK(dm_buf_append(&file, in.p, in.n) == 0);
        if (in.n > 0 && in.n % 16 == 0) {
            aes(0, 0, in.p, in.n, &plain);
            ref_plain = plain.data;
            ref_len = unpad(plain.data, plain.len);
        }
    }

    memset(&cfg, 0, sizeof cfg);
    cfg.deferred = (c0 & 3) == 3;
    cfg.comp = cfg.deferred ? DM_COMPRESSION_NONE : (enum dm_compression)(c0 & 3);
    cfg.late = (enum dm_compression)((c1 >> 3 & 3) % 3);
    cfg.set_at = c1 >> 5;
    cfg.limit = fuzz_limit(c0 >> 5);
    cfg.max_output = fuzz_max_output(c1);
    cfg.expect = c0 >> 4 & 1;
    cfg.size = file.len;
    cfg.split_max = c2;
    cfg.split_seed = c3;

    ref_ok = ref_len >= 0
          && fuzz_inflate_oneshot(cfg.deferred ? cfg.late : cfg.comp, cfg.max_output,
                                  ref_plain, (size_t)ref_len, &ref) == 0;
    ok = fuzz_pipe_run(key, &cfg, file.data, file.len, &out, err) == 0;
    FUZZ_CHECK(ok == ref_ok);
    if (ok)
        FUZZ_CHECK(fuzz_buf_equal(&out, &ref));
    if (ref_len < 0 && !ok && (cfg.deferred ? cfg.late : cfg.comp) == DM_COMPRESSION_NONE
        && cfg.max_output >= file.len)
        /* size and padding failures give the one message that tells nothing apart */
        FUZZ_CHECK(strcmp(err, DM_DECRYPT_FAILED) == 0 || strncmp(err, "File size", 9) == 0);
    dm_buf_free(&file);
    dm_buf_free(&plain);
    dm_buf_free(&ref);
    dm_buf_free(&out);
    return 0;
}
