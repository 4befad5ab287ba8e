/* fuzz_decryptor.c: the digi.me file decryptor (dm_decryptor_*) and the reading pipeline
 * (dm_pipeline_*: decryptor -> inflater -> output) fed arbitrary bytes in arbitrary pieces.
 *
 * The key is the fixed test key (test_key.h, parsed once in LLVMFuzzerInitialize); seeds
 * are real files encrypted to it (make_seeds.sh), so mutations of their body get past the
 * key unwrap while mutations of the key segment exercise the unwrap failure.
 *
 * Input: 4 control bytes, then the file.
 *   c0: bits 0-1 compression (none, gzip, brotli, deferred); bit 2: the bare decryptor
 *       instead of the pipeline; bits 3-4 declared size (none, exact, 16 less, 16 more);
 *       bits 5-7 the soft output limit
 *   c1: bits 0-2 max_output; bits 3-4 the compression a deferred pipeline gets; bits 5-7
 *       the chunk before which it is set
 *   c2, c3: the chunking (maximum piece size, seed) */
#include <openssl/evp.h>

#include "fuzz_pipeline.h"
#include "test_key.h"
#include "../keys.h"

static EVP_PKEY *key;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *err = NULL;

    (void)argc;
    (void)argv;
    key = dm_private_key_from_pem(fuzz_test_key_pem, sizeof fuzz_test_key_pem - 1, &err);
    FUZZ_CHECK(key != NULL);
    return 0;
}

static unsigned long long declared(unsigned sel, size_t n)
{
    switch (sel & 3) {
    case 1: return n;
    case 2: return n >= 16 ? n - 16 : 0;
    default: return (unsigned long long)n + 16;
    }
}

/* The bare decryptor: output never runs ahead of the input, and a success means a valid
 * size and a plaintext 1..16 bytes shorter than the ciphertext. */
static void run_bare(uint8_t c0, uint8_t c2, uint8_t c3, const uint8_t *data, size_t n)
{
    const char *err = NULL;
    dm_decryptor *d = dm_decryptor_new(key, &err);
    size_t keysize = (size_t)EVP_PKEY_get_size(key), off = 0;
    struct dm_buf out = { NULL, 0, 0 };
    struct fuzz_split sp;
    int rc = 0;

    FUZZ_CHECK(d != NULL);
    FUZZ_CHECK(dm_decryptor_error(d)[0] == '\0');
    if (c0 >> 3 & 3)
        rc = dm_decryptor_expect_size(d, declared(c0 >> 3, n));
    fuzz_split_init(&sp, c2, c3);
    while (rc == 0 && off < n) {
        size_t k = fuzz_split_next(&sp, n - off);
        rc = dm_decryptor_update(d, data + off, k, &out);
        off += k;
        if (rc == 0)
            FUZZ_CHECK(off <= keysize + 16 ? out.len == 0 : out.len <= off - keysize - 16);
    }
    if (rc == 0)
        rc = dm_decryptor_final(d, &out);
    if (rc == 0) {
        FUZZ_CHECK(dm_file_size_valid(n, keysize));
        FUZZ_CHECK(out.len < n - keysize - 16 && out.len + 16 >= n - keysize - 16);
        FUZZ_CHECK(dm_decryptor_final(d, &out) == 0);       /* idempotent */
        FUZZ_CHECK(dm_decryptor_update(d, (const unsigned char *)"x", 1, &out) == -1); /* after the end */
    } else {
        FUZZ_CHECK(rc == -1);
        FUZZ_CHECK(dm_decryptor_error(d)[0] != '\0');
        FUZZ_CHECK(dm_decryptor_update(d, (const unsigned char *)"x", 1, &out) == -1);
        FUZZ_CHECK(dm_decryptor_final(d, &out) == -1);
    }
    dm_buf_free(&out);
    dm_decryptor_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };
    uint8_t c0 = fuzz_byte(&in), c1 = fuzz_byte(&in), c2 = fuzz_byte(&in), c3 = fuzz_byte(&in);
    struct fuzz_pipe_cfg cfg;
    struct dm_buf out = { NULL, 0, 0 };
    char err[DM_ERRLEN];

    if (c0 & 4) {
        run_bare(c0, c2, c3, in.p, in.n);
        return 0;
    }
    memset(&cfg, 0, sizeof cfg);
    cfg.deferred = (c0 & 3) == 3;
    cfg.comp = cfg.deferred ? DM_COMPRESSION_NONE : (enum dm_compression)(c0 & 3);
    cfg.late = (enum dm_compression)((c1 >> 3 & 3) % 3);
    cfg.set_at = c1 >> 5;
    cfg.limit = fuzz_limit(c0 >> 5);
    cfg.max_output = fuzz_max_output(c1);
    cfg.expect = (c0 >> 3 & 3) != 0;
    cfg.size = declared(c0 >> 3, in.n);
    cfg.split_max = c2;
    cfg.split_seed = c3;
    if (fuzz_pipe_run(key, &cfg, in.p, in.n, &out, err) == 0) {
        /* a complete file: its size obeys the rule */
        FUZZ_CHECK(dm_file_size_valid(in.n, (size_t)EVP_PKEY_get_size(key)));
    }
    dm_buf_free(&out);
    return 0;
}
