/* fuzz_inflate.h: the streaming inflater (inflate.h) driven as the pipeline drives it: input
 * in arbitrary pieces, a soft limit on undrained output, a small max_output. The run must
 * agree with a one-piece decode of the same input (same success, same bytes), never write
 * past the limit or the cap, and always make progress once its output is drained.
 *
 * Input: 3 control bytes, then the compressed stream.
 *   c0: bits 0-2 max_output (0 B .. 16 MiB), bits 3-5 the soft output limit
 *   c1, c2: the chunking (maximum piece size, seed) */
#ifndef DIGIME_FUZZ_INFLATE_H
#define DIGIME_FUZZ_INFLATE_H

#include "fuzz_common.h"

static inline void fuzz_inflate_take(struct dm_buf *out, size_t limit, struct dm_buf *all)
{
    if (limit != (size_t)-1)
        FUZZ_CHECK(out->len <= limit);
    FUZZ_CHECK(dm_buf_append(all, out->data, out->len) == 0);
    out->len = 0;
}

static inline int fuzz_inflate_run(enum dm_compression kind, const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };
    uint8_t c0 = fuzz_byte(&in), c1 = fuzz_byte(&in), c2 = fuzz_byte(&in);
    size_t max_output = fuzz_max_output(c0), limit = fuzz_limit(c0 >> 3), off = 0;
    struct dm_buf out = { NULL, 0, 0 }, all = { NULL, 0, 0 }, ref = { NULL, 0, 0 };
    struct fuzz_split sp;
    dm_inflater *z = dm_inflater_new(kind, max_output);
    int rc = 0, ref_rc, idle = 0;

    FUZZ_CHECK(z != NULL);
    fuzz_split_init(&sp, c1, c2);
    while (rc == 0 && off < in.n) {
        size_t k = fuzz_split_next(&sp, in.n - off), done = 0;
        /* the decoder may take only part of the piece when the output reaches the limit:
         * drain and hand over the rest, as the pipeline does */
        while (rc == 0) {
            size_t used = 0, before = all.len;
            rc = dm_inflater_update(z, in.p + off + done, k - done, &used, &out, limit);
            FUZZ_CHECK(rc == 0 || rc == -1);
            FUZZ_CHECK(used <= k - done);
            done += used;
            fuzz_inflate_take(&out, limit, &all);
            if (done == k && !dm_inflater_pending(z))
                break;
            idle = used == 0 && all.len == before ? idle + 1 : 0;
            FUZZ_CHECK(idle < 64);
        }
        off += k;
    }
    while (rc == 0) {
        size_t before = all.len;
        rc = dm_inflater_final(z, &out, limit);
        FUZZ_CHECK(rc >= -1 && rc <= 1);
        fuzz_inflate_take(&out, limit, &all);
        if (rc != 1)
            break;
        rc = 0;
        idle = all.len == before ? idle + 1 : 0;
        FUZZ_CHECK(idle < 64);
    }
    FUZZ_CHECK(dm_inflater_total(z) == all.len);
    if (rc == 0) {
        FUZZ_CHECK(all.len <= max_output);
        FUZZ_CHECK(dm_inflater_error(z)[0] == '\0');
    } else {
        FUZZ_CHECK(dm_inflater_error(z)[0] != '\0');
        FUZZ_CHECK(dm_inflater_final(z, &out, limit) == -1);   /* stays failed */
    }
    ref_rc = fuzz_inflate_oneshot(kind, max_output, in.p, in.n, &ref);
    FUZZ_CHECK(rc == ref_rc);
    if (rc == 0)
        FUZZ_CHECK(fuzz_buf_equal(&all, &ref));
    dm_inflater_free(z);
    dm_buf_free(&out);
    dm_buf_free(&all);
    dm_buf_free(&ref);
    return 0;
}

#endif
