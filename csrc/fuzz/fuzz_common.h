/* fuzz_common.h: helpers shared by the libFuzzer targets in csrc/fuzz/ (test code only).
 *
 * The targets are linked against the same csrc sources as the Lua module (not copies). Inputs
 * start with a few control bytes (modes, limits, the chunking seed) followed by the data, so
 * a seed is a real file behind a short prefix and the fuzzer mutates both. */
#ifndef DIGIME_FUZZ_COMMON_H
#define DIGIME_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../inflate.h"

/* A broken invariant is a bug: abort so that libFuzzer records the input as a crash. */
#define FUZZ_CHECK(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond);   \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* Reads control bytes off the front of the input; 0 once it is exhausted. */
struct fuzz_in {
    const uint8_t *p;
    size_t n;
};

static inline uint8_t fuzz_byte(struct fuzz_in *in)
{
    uint8_t b;

    if (in->n == 0)
        return 0;
    b = in->p[0];
    in->p++;
    in->n--;
    return b;
}

/* Chunk sizes derived from the input: a seed and a maximum piece size taken from two control
 * bytes drive a small PRNG (the data itself stays contiguous, so seeds are real files). */
struct fuzz_split {
    uint64_t s;
    size_t max;
};

static inline void fuzz_split_init(struct fuzz_split *sp, uint8_t maxsel, uint8_t seed)
{
    static const size_t maxes[16] = {
        1, 2, 3, 5, 7, 15, 16, 17, 31, 64, 100, 255, 1024, 4096, 65536, (size_t)-1
    };

    sp->max = maxes[maxsel & 15];
    sp->s = 0x9e3779b97f4a7c15ull ^ ((uint64_t)seed << 32 | maxsel);
}

static inline size_t fuzz_split_next(struct fuzz_split *sp, size_t left)
{
    size_t k;

    /* xorshift64 */
    sp->s ^= sp->s << 13;
    sp->s ^= sp->s >> 7;
    sp->s ^= sp->s << 17;
    k = sp->max == (size_t)-1 ? left : 1 + (size_t)(sp->s % sp->max);
    return k < left ? k : left;
}

/* Soft output limits (the consumer's max_buffered) and caps on decompressed output. The
 * caps stay bounded: a few KB of brotli can expand to gigabytes. */
static inline size_t fuzz_limit(uint8_t sel)
{
    static const size_t limits[8] = { (size_t)-1, 1, 7, 16, 100, 4096, 65536, (size_t)-1 };

    return limits[sel & 7];
}

static inline size_t fuzz_max_output(uint8_t sel)
{
    static const size_t caps[8] = { 0, 1, 10, 100, 4096, 65536, (size_t)1 << 20, (size_t)16 << 20 };

    return caps[sel & 7];
}

/* Whole-input, whole-output decode through a fresh inflater: the reference that a chunked
 * run must agree with. 0 with the output in out, or -1. */
static inline int fuzz_inflate_oneshot(enum dm_compression kind, size_t max_output,
                                       const uint8_t *in, size_t n, struct dm_buf *out)
{
    dm_inflater *z = dm_inflater_new(kind, max_output);
    size_t used = 0;
    int rc;

    FUZZ_CHECK(z != NULL);
    rc = dm_inflater_update(z, in, n, &used, out, (size_t)-1);
    if (rc == 0) {
        /* with no output limit everything is taken or the inflater fails */
        FUZZ_CHECK(used == n);
        FUZZ_CHECK(!dm_inflater_pending(z));
        rc = dm_inflater_final(z, out, (size_t)-1);
        FUZZ_CHECK(rc != 1);
    }
    if (rc != 0)
        FUZZ_CHECK(dm_inflater_error(z)[0] != '\0');
    FUZZ_CHECK(dm_inflater_total(z) <= max_output || rc != 0);
    dm_inflater_free(z);
    return rc == 0 ? 0 : -1;
}

static inline int fuzz_buf_equal(const struct dm_buf *a, const struct dm_buf *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

#endif
