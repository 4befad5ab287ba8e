/* fuzz_pipeline.h: drives the file pipeline (cipher.h) the way its consumers do (the Lua
 * binding, and the HTTP engine with flow control), checking its contract on every call:
 *   - the output never exceeds the soft limit when it was drained before the call;
 *   - the total output never exceeds max_output;
 *   - a call that holds work back (returns 1) makes progress once the output is drained;
 *   - DONE only after finish returned 0, FAILED with a message after any -1, and a failed
 *     pipeline stays failed. */
#ifndef DIGIME_FUZZ_PIPELINE_H
#define DIGIME_FUZZ_PIPELINE_H

#include "fuzz_common.h"
#include "../cipher.h"

struct fuzz_pipe_cfg {
    enum dm_compression comp;
    int deferred;              /* compression chosen later, with dm_pipeline_set_compression */
    enum dm_compression late;  /* ... this one */
    size_t set_at;             /* ... before this chunk (past the last chunk: before finish) */
    size_t limit, max_output;
    int expect;                /* declare a size first */
    unsigned long long size;
    uint8_t split_max, split_seed;
};

/* Moves the pipeline's output into all, checking the limit. */
static inline void fuzz_pipe_take(dm_pipeline *p, const struct fuzz_pipe_cfg *c,
                                  struct dm_buf *all)
{
    size_t len;
    const unsigned char *o = dm_pipeline_output(p, &len);

    if (c->limit != (size_t)-1)
        FUZZ_CHECK(len <= c->limit);
    FUZZ_CHECK(dm_buf_append(all, o, len) == 0);
    dm_pipeline_drain(p);
    FUZZ_CHECK(dm_pipeline_buffered(p) == 0);
    if (c->max_output != (size_t)-1)
        FUZZ_CHECK(all->len <= c->max_output);
}

/* Pumps held-back work until none is left (rc 1 -> 0) or the pipeline fails. */
static inline int fuzz_pipe_drain(dm_pipeline *p, const struct fuzz_pipe_cfg *c, int rc,
                                  struct dm_buf *all)
{
    int idle = 0;

    fuzz_pipe_take(p, c, all);
    while (rc == 1 && dm_pipeline_compression_set(p)) {
        size_t before = all->len;
        rc = dm_pipeline_pump(p, c->limit);
        fuzz_pipe_take(p, c, all);
        /* drained output and still held back, yet nothing came out: a livelock */
        idle = all->len == before ? idle + 1 : 0;
        FUZZ_CHECK(idle < 64);
    }
    return rc;
}

static inline void fuzz_pipe_failed(dm_pipeline *p)
{
    FUZZ_CHECK(dm_pipeline_state(p) == DM_PIPE_FAILED);
    FUZZ_CHECK(dm_pipeline_error(p)[0] != '\0');
    FUZZ_CHECK(dm_pipeline_buffered(p) == 0);   /* nothing partial survives a failure */
    /* stays failed */
    FUZZ_CHECK(dm_pipeline_write(p, (const unsigned char *)"x", 1, 1) == -1);
    FUZZ_CHECK(dm_pipeline_pump(p, 1) == -1);
    FUZZ_CHECK(dm_pipeline_finish(p, 1) == -1);
}

/* Runs data through a new pipeline. 0 with the plaintext in out, or -1 (*err: its message,
 * copied into errbuf). */
static inline int fuzz_pipe_run(EVP_PKEY *key, const struct fuzz_pipe_cfg *c,
                                const uint8_t *data, size_t n, struct dm_buf *out,
                                char errbuf[DM_ERRLEN])
{
    const char *err = NULL;
    EVP_PKEY_CTX *unwrap = dm_unwrap_ctx_new(key, &err);
    dm_pipeline *p = unwrap ? dm_pipeline_new(unwrap, c->comp, c->deferred, c->max_output, &err)
                            : NULL;
    struct fuzz_split sp;
    size_t off = 0, chunk = 0;
    int rc = 0, idle = 0;

    EVP_PKEY_CTX_free(unwrap);    /* the pipeline holds its own copy */
    FUZZ_CHECK(p != NULL);
    FUZZ_CHECK(dm_pipeline_state(p) == DM_PIPE_FRESH);
    FUZZ_CHECK(dm_pipeline_compression_set(p) == !c->deferred);
    if (c->expect && dm_pipeline_expect_size(p, c->size) != 0)
        goto failed;
    fuzz_split_init(&sp, c->split_max, c->split_seed);
    while (off < n) {
        size_t k = fuzz_split_next(&sp, n - off);
        if (c->deferred && chunk == c->set_at)
            FUZZ_CHECK(dm_pipeline_set_compression(p, c->late) == 0);
        rc = dm_pipeline_write(p, data + off, k, c->limit);
        FUZZ_CHECK(rc >= -1 && rc <= 1);
        if (!dm_pipeline_compression_set(p)) {
            /* deferred: decrypted bytes wait, nothing comes out */
            FUZZ_CHECK(dm_pipeline_buffered(p) == 0);
        }
        rc = fuzz_pipe_drain(p, c, rc, out);
        if (rc < 0)
            goto failed;
        off += k;
        chunk++;
    }
    if (c->deferred && !dm_pipeline_compression_set(p)) {
        /* the input ended with the compression still open: finish must wait for it */
        rc = dm_pipeline_finish(p, c->limit);
        if (rc < 0)
            goto failed;
        FUZZ_CHECK(rc == 1);
        FUZZ_CHECK(dm_pipeline_state(p) == DM_PIPE_ENDING);
        FUZZ_CHECK(dm_pipeline_set_compression(p, c->late) == 0);
    }
    /* the compression can be chosen once only */
    FUZZ_CHECK(dm_pipeline_set_compression(p, DM_COMPRESSION_NONE) == -1);
    for (;;) {
        size_t before = out->len;
        rc = dm_pipeline_finish(p, c->limit);
        FUZZ_CHECK(rc >= -1 && rc <= 1);
        fuzz_pipe_take(p, c, out);
        if (rc != 1)
            break;
        idle = out->len == before ? idle + 1 : 0;
        FUZZ_CHECK(idle < 64);
    }
    if (rc < 0)
        goto failed;
    FUZZ_CHECK(dm_pipeline_state(p) == DM_PIPE_DONE);
    FUZZ_CHECK(dm_pipeline_finish(p, c->limit) == 0);        /* idempotent */
    FUZZ_CHECK(dm_pipeline_write(p, (const unsigned char *)"x", 1, c->limit) == -1); /* after the end */
    FUZZ_CHECK(dm_pipeline_state(p) == DM_PIPE_FAILED);
    dm_pipeline_release(p);
    return 0;
failed:
    snprintf(errbuf, DM_ERRLEN, "%s", dm_pipeline_error(p));
    fuzz_pipe_failed(p);
    dm_pipeline_release(p);
    return -1;
}

#endif
