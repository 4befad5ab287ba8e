/* inflate.c: streaming gzip (zlib) and brotli decoders behind inflate.h. */
#include "inflate.h"

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <brotli/decode.h>
#include <openssl/crypto.h>
#include <zlib.h>

/* Output is produced in steps of at most this much, so the caps are checked often. */
#define STEP ((size_t)64 * 1024)

/* ---- buffers ---- */

int dm_buf_reserve(struct dm_buf *b, size_t extra)
{
    size_t need, cap;
    unsigned char *p;

    if (extra <= b->cap - b->len)
        return 0;
    if (extra > SIZE_MAX - b->len)
        return -1;
    need = b->len + extra;
    cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    /* not realloc: the old block is wiped before it goes back to the allocator */
    p = malloc(cap);
    if (p == NULL)
        return -1;
    if (b->len > 0)
        memcpy(p, b->data, b->len);
    if (b->data != NULL) {
        OPENSSL_cleanse(b->data, b->cap);
        free(b->data);
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

int dm_buf_append(struct dm_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (dm_buf_reserve(b, n) != 0)
        return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void dm_buf_consume(struct dm_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

void dm_buf_free(struct dm_buf *b)
{
    if (b->data != NULL) {
        OPENSSL_cleanse(b->data, b->cap);
        free(b->data);
    }
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- names ---- */

int dm_compression_from_name(const char *name, enum dm_compression *out)
{
    if (strcmp(name, "none") == 0)
        *out = DM_COMPRESSION_NONE;
    else if (strcmp(name, "gzip") == 0)
        *out = DM_COMPRESSION_GZIP;
    else if (strcmp(name, "brotli") == 0)
        *out = DM_COMPRESSION_BROTLI;
    else
        return -1;
    return 0;
}

const char *dm_compression_name(enum dm_compression c)
{
    switch (c) {
    case DM_COMPRESSION_GZIP: return "gzip";
    case DM_COMPRESSION_BROTLI: return "brotli";
    case DM_COMPRESSION_NONE: break;
    }
    return "none";
}

/* ---- decoders ---- */

/* The decoders' windows hold plaintext: their memory is wiped before it is freed. Each
 * block carries its size in a 16-byte prefix (which keeps malloc's alignment). */
static void *wiped_alloc(size_t n)
{
    unsigned char *p;

    if (n > SIZE_MAX - 16)
        return NULL;
    p = malloc(n + 16);
    if (p == NULL)
        return NULL;
    memcpy(p, &n, sizeof n);
    return p + 16;
}

static void wiped_free(void *q)
{
    unsigned char *p;
    size_t n;

    if (q == NULL)
        return;
    p = (unsigned char *)q - 16;
    memcpy(&n, p, sizeof n);
    OPENSSL_cleanse(q, n);
    free(p);
}

static voidpf z_alloc(voidpf opaque, uInt items, uInt size)
{
    (void)opaque;
    if (size != 0 && items > SIZE_MAX / size)
        return Z_NULL;
    return wiped_alloc((size_t)items * size);
}

static void z_free(voidpf opaque, voidpf p)
{
    (void)opaque;
    wiped_free(p);
}

static void *br_alloc(void *opaque, size_t n)
{
    (void)opaque;
    return wiped_alloc(n);
}

static void br_free(void *opaque, void *p)
{
    (void)opaque;
    wiped_free(p);
}

struct dm_inflater {
    enum dm_compression kind;
    z_stream zs;
    BrotliDecoderState *br;
    size_t max_output, total;
    int ended;    /* the compressed stream is complete */
    int pending;  /* the decoder may hold output that did not fit */
    int failed;
    char err[DM_ERRLEN];
};

static int fail(dm_inflater *z, const char *fmt, ...)
{
    va_list ap;

    if (!z->failed) {
        va_start(ap, fmt);
        vsnprintf(z->err, sizeof z->err, fmt, ap);
        va_end(ap);
        z->failed = 1;
    }
    return -1;
}

dm_inflater *dm_inflater_new(enum dm_compression kind, size_t max_output)
{
    dm_inflater *z = calloc(1, sizeof *z);

    if (z == NULL)
        return NULL;
    z->kind = kind;
    z->max_output = max_output;
    if (kind == DM_COMPRESSION_GZIP) {
        z->zs.zalloc = z_alloc;
        z->zs.zfree = z_free;
        /* 16 + MAX_WBITS: a gzip wrapper, nothing else (no zlib, no raw deflate) */
        if (inflateInit2(&z->zs, 16 + MAX_WBITS) != Z_OK) {
            free(z);
            return NULL;
        }
    } else if (kind == DM_COMPRESSION_BROTLI) {
        z->br = BrotliDecoderCreateInstance(br_alloc, br_free, NULL);
        if (z->br == NULL) {
            free(z);
            return NULL;
        }
    }
    return z;
}

void dm_inflater_free(dm_inflater *z)
{
    if (z == NULL)
        return;
    if (z->kind == DM_COMPRESSION_GZIP)
        inflateEnd(&z->zs);
    else if (z->kind == DM_COMPRESSION_BROTLI)
        BrotliDecoderDestroyInstance(z->br);
    OPENSSL_cleanse(z, sizeof *z);
    free(z);
}

/* One decoding step: at most n bytes in, at most room bytes out. */
static int step(dm_inflater *z, const unsigned char *in, size_t n, size_t *took,
                unsigned char *out, size_t room, size_t *got)
{
    if (z->kind == DM_COMPRESSION_NONE) {
        size_t k = n < room ? n : room;
        if (k > 0)
            memcpy(out, in, k);
        *took = *got = k;
        return 0;
    }
    if (z->kind == DM_COMPRESSION_GZIP) {
        uInt avail = n > UINT_MAX ? UINT_MAX : (uInt)n;
        int rc;
        z->zs.next_in = (Bytef *)(uintptr_t)in;
        z->zs.avail_in = avail;
        z->zs.next_out = out;
        z->zs.avail_out = (uInt)room;
        rc = inflate(&z->zs, Z_NO_FLUSH);
        *took = avail - z->zs.avail_in;
        *got = room - z->zs.avail_out;
        z->pending = z->zs.avail_out == 0;
        switch (rc) {
        case Z_STREAM_END:
            z->ended = 1;
            z->pending = 0;
            return 0;
        case Z_OK:
        case Z_BUF_ERROR:  /* no progress possible: more input needed */
            return 0;
        case Z_MEM_ERROR:
            return fail(z, "out of memory");
        case Z_NEED_DICT:
            return fail(z, "gzip: corrupt data (a preset dictionary is required)");
        default:
            return fail(z, "gzip: corrupt data (%s)", z->zs.msg ? z->zs.msg : "invalid stream");
        }
    }
    {
        size_t ain = n, aout = room;
        const uint8_t *nin = in;
        uint8_t *nout = out;
        BrotliDecoderResult r = BrotliDecoderDecompressStream(z->br, &ain, &nin, &aout, &nout, NULL);
        *took = n - ain;
        *got = room - aout;
        switch (r) {
        case BROTLI_DECODER_RESULT_SUCCESS:
            z->ended = 1;
            z->pending = 0;
            return 0;
        case BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT:
            z->pending = 0;
            return 0;
        case BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT:
            z->pending = 1;
            return 0;
        default:
            return fail(z, "brotli: corrupt data (%s)",
                        BrotliDecoderErrorString(BrotliDecoderGetErrorCode(z->br)));
        }
    }
}

int dm_inflater_update(dm_inflater *z, const unsigned char *in, size_t n, size_t *used,
                       struct dm_buf *out, size_t limit)
{
    static const unsigned char none[1];

    *used = 0;
    if (z->failed)
        return -1;
    if (in == NULL)
        in = none, n = 0;
    for (;;) {
        size_t room, chunk, left, took = 0, got = 0;

        if (z->ended) {
            if (*used < n)
                return fail(z, "%s: data after the end of the compressed stream",
                            dm_compression_name(z->kind));
            return 0;
        }
        if (*used == n && !z->pending)
            return 0;
        room = out->len < limit ? limit - out->len : 0;
        if (room == 0)
            return 0;
        chunk = room < STEP ? room : STEP;
        left = z->max_output - z->total;
        if (left < chunk)
            chunk = left + 1;  /* room for one byte too many: that tells an overflow */
        if (dm_buf_reserve(out, chunk) != 0)
            return fail(z, "out of memory");
        if (step(z, in + *used, n - *used, &took, out->data + out->len, chunk, &got) != 0)
            return -1;
        *used += took;
        out->len += got;
        z->total += got;
        if (z->total > z->max_output)
            return fail(z, "decompressed size exceeds max_output (%zu bytes)", z->max_output);
        if (took == 0 && got == 0 && !z->ended) {
            z->pending = 0;
            return 0;  /* the decoder needs more input */
        }
    }
}

int dm_inflater_pending(const dm_inflater *z)
{
    return z->pending;
}

int dm_inflater_final(dm_inflater *z, struct dm_buf *out, size_t limit)
{
    size_t used;

    if (dm_inflater_update(z, NULL, 0, &used, out, limit) != 0)
        return -1;
    if (z->pending)
        return 1;
    if (z->kind != DM_COMPRESSION_NONE && !z->ended)
        return fail(z, "%s: truncated stream", dm_compression_name(z->kind));
    return 0;
}

const char *dm_inflater_error(const dm_inflater *z)
{
    return z->failed ? z->err : "";
}

size_t dm_inflater_total(const dm_inflater *z)
{
    return z->total;
}
