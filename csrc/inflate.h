/* inflate.h: streaming gzip and brotli decoders, and the output buffer that the streaming
 * parts of the file format share (Lua-free).
 *
 * Decoders write into a caller's dm_buf and never past a soft `limit` on its length, so a
 * consumer that drains the buffer keeps memory bounded: input a call could not use is left
 * to the caller (*used tells how much was taken), output the decoder could not write yet
 * stays inside it (dm_inflater_pending). A hard cap, max_output, bounds the total output
 * of a stream (decompression bombs). */
#ifndef DIGIME_INFLATE_H
#define DIGIME_INFLATE_H

#include <stddef.h>

#define DM_ERRLEN 160

/* A growable byte buffer. Memory is wiped when it grows and when it is freed: it may hold
 * plaintext. A zeroed struct is an empty buffer. */
struct dm_buf {
    unsigned char *data;
    size_t len, cap;
};

int dm_buf_reserve(struct dm_buf *b, size_t extra);   /* 0, or -1 when out of memory */
int dm_buf_append(struct dm_buf *b, const void *p, size_t n);
void dm_buf_consume(struct dm_buf *b, size_t n);      /* drops the first n bytes */
void dm_buf_free(struct dm_buf *b);

enum dm_compression { DM_COMPRESSION_NONE, DM_COMPRESSION_GZIP, DM_COMPRESSION_BROTLI };

/* "none", "gzip" or "brotli": 0, or -1 for another name. */
int dm_compression_from_name(const char *name, enum dm_compression *out);
const char *dm_compression_name(enum dm_compression c);

typedef struct dm_inflater dm_inflater;

/* NULL only when out of memory. max_output = (size_t)-1 means no cap. */
dm_inflater *dm_inflater_new(enum dm_compression kind, size_t max_output);
void dm_inflater_free(dm_inflater *z);

/* Decodes from in[0..n) into out while out->len < limit; *used gets the bytes taken.
 * Returns 0, or -1 on corrupt data, data after the end of the stream, or output beyond
 * max_output (the inflater then stays failed: dm_inflater_error). */
int dm_inflater_update(dm_inflater *z, const unsigned char *in, size_t n, size_t *used,
                       struct dm_buf *out, size_t limit);
/* Decoded bytes held inside that did not fit under the limit: call update with n = 0. */
int dm_inflater_pending(const dm_inflater *z);
/* The input ended: flushes held output under the limit. 0 when the stream is complete, 1
 * when output is still held (drain, call again), -1 when it is truncated or failed. */
int dm_inflater_final(dm_inflater *z, struct dm_buf *out, size_t limit);
const char *dm_inflater_error(const dm_inflater *z);
size_t dm_inflater_total(const dm_inflater *z);        /* bytes produced so far */

#endif
