/* fuzz_http_headers.c: the response header parser of http.c (on_header, add_header_line,
 * join_headers), reached through the DIGIME_FUZZ hooks declared in http.h.
 *
 * libcurl hands its header callback one line at a time, CRLF included, for every response
 * of a transfer (1xx, redirects, the final answer, trailers). The input is cut into such
 * lines at '\n' (a last line without one is delivered too), each in a buffer of exactly its
 * size. A model written apart from http.c says what must come out:
 *   - a line starting "HTTP/" starts a new response: the lines so far are forgotten;
 *   - after CR/LF are stripped, an empty line ends the header block;
 *   - a line starting with a space or tab continues the previous value (obsolete folding),
 *     trimmed, joined with one space when that value is not empty;
 *   - a line without ':' is ignored; else the name (lower-cased) is what precedes the first
 *     ':' and the value what follows it, spaces and tabs trimmed;
 *   - the total size of the lines is capped by max_headers: the line that would pass the cap
 *     aborts the transfer (the callback returns 0) and nothing more is delivered;
 *   - at the end, a transfer whose header block ended gets the joined view: one entry per
 *     name, sorted by name, values of repeated names joined with ", " in arrival order.
 *
 * Input: 2 control bytes, then the header bytes.
 *   c0 bit 7 set: max_headers is the default (256 KiB); else ((c0 & 0x7f) << 8 | c1) bytes. */
#include "fuzz_common.h"
#include "../http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct mhdr {
    const char *name, *value;   /* into the model's arena */
    size_t nlen, vlen;
};

struct model {
    struct mhdr *h;
    size_t n;
    int done;
    char *arena;                /* every name and value, never moved */
    size_t used, cap;
};

static int is_sp(char c)
{
    return c == ' ' || c == '\t';
}

static void trim(const char **p, size_t *len)
{
    while (*len > 0 && is_sp(**p))
        (*p)++, (*len)--;
    while (*len > 0 && is_sp((*p)[*len - 1]))
        (*len)--;
}

/* Appends to the arena; returns where the bytes went. The arena is sized for the whole input
 * up front (each input byte lands there at most once; a folding line's separator space takes
 * the place of its trimmed leading blank), so pointers stay valid. */
static char *arena_put(struct model *m, const char *p, size_t len, int lower)
{
    char *at = m->arena + m->used;

    FUZZ_CHECK(m->used + len <= m->cap);
    for (size_t i = 0; i < len; i++)
        at[i] = lower && p[i] >= 'A' && p[i] <= 'Z' ? (char)(p[i] + 32) : p[i];
    m->used += len;
    return at;
}

static void model_line(struct model *m, const char *p, size_t len)
{
    const char *colon, *v;
    size_t vlen;

    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        m->n = 0;
        m->done = 0;
        return;
    }
    while (len > 0 && (p[len - 1] == '\r' || p[len - 1] == '\n'))
        len--;
    if (len == 0) {
        m->done = 1;
        return;
    }
    if (is_sp(p[0])) {
        struct mhdr *last;
        trim(&p, &len);
        if (m->n == 0 || len == 0)
            return;
        last = &m->h[m->n - 1];
        /* the last value always ends the arena: it grows in place */
        FUZZ_CHECK(last->value + last->vlen == m->arena + m->used);
        if (last->vlen > 0)
            arena_put(m, " ", 1, 0);
        arena_put(m, p, len, 0);
        last->vlen = (size_t)(m->arena + m->used - last->value);
        return;
    }
    colon = memchr(p, ':', len);
    if (colon == NULL)
        return;
    v = colon + 1;
    vlen = len - (size_t)(v - p);
    trim(&v, &vlen);
    m->h[m->n].name = arena_put(m, p, (size_t)(colon - p), 1);
    m->h[m->n].nlen = (size_t)(colon - p);
    m->h[m->n].value = arena_put(m, v, vlen, 0);
    m->h[m->n].vlen = vlen;
    m->n++;
}

static void check_raw(const dm_http_request *r, const struct model *m)
{
    FUZZ_CHECK(dm_http_request_raw_count(r) == m->n);
    for (size_t i = 0; i < m->n; i++) {
        const char *name, *value;
        size_t nlen, vlen;
        dm_http_request_raw_header(r, i, &name, &nlen, &value, &vlen);
        FUZZ_CHECK(nlen == m->h[i].nlen && memcmp(name, m->h[i].name, nlen) == 0);
        FUZZ_CHECK(vlen == m->h[i].vlen && memcmp(value, m->h[i].value, vlen) == 0);
    }
}

static int cmp_name(const char *a, size_t an, const char *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);

    if (c != 0)
        return c;
    return an < bn ? -1 : an > bn;
}

static int cmp_mhdr(const void *pa, const void *pb)
{
    const struct mhdr *a = pa, *b = pb;

    return cmp_name(a->name, a->nlen, b->name, b->nlen);
}

/* The joined view the model expects: the raw list grouped by name in arrival order (a
 * stable sort: ties broken by position), values joined with ", ". */
static void check_joined(const dm_http_request *r, struct model *m)
{
    struct mhdr *sorted = malloc((m->n ? m->n : 1) * sizeof *sorted);
    size_t *order = malloc((m->n ? m->n : 1) * sizeof *order);
    const struct dm_http_header *h;
    size_t count = 0, k = 0;

    FUZZ_CHECK(sorted != NULL && order != NULL);
    /* insertion order kept by sorting indexes with a position tie-break */
    for (size_t i = 0; i < m->n; i++)
        order[i] = i;
    for (size_t i = 1; i < m->n; i++) {          /* merge-free: a simple stable sort */
        size_t j = i, x = order[i];
        while (j > 0 && cmp_mhdr(&m->h[order[j - 1]], &m->h[x]) > 0) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = x;
    }
    for (size_t i = 0; i < m->n; i++)
        sorted[i] = m->h[order[i]];
    h = dm_http_request_headers(r, &count);
    for (size_t i = 0; i < m->n;) {
        size_t j = i, off = 0;
        FUZZ_CHECK(k < count);
        FUZZ_CHECK(h[k].name_len == sorted[i].nlen
                   && memcmp(h[k].name, sorted[i].name, sorted[i].nlen) == 0);
        for (; j < m->n && cmp_mhdr(&sorted[i], &sorted[j]) == 0; j++) {
            if (j > i) {
                FUZZ_CHECK(off + 2 <= h[k].value_len && memcmp(h[k].value + off, ", ", 2) == 0);
                off += 2;
            }
            FUZZ_CHECK(off + sorted[j].vlen <= h[k].value_len
                       && memcmp(h[k].value + off, sorted[j].value, sorted[j].vlen) == 0);
            off += sorted[j].vlen;
        }
        FUZZ_CHECK(off == h[k].value_len);
        k++;
        i = j;
    }
    FUZZ_CHECK(k == count);
    free(sorted);
    free(order);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };
    uint8_t c0 = fuzz_byte(&in), c1 = fuzz_byte(&in);
    size_t max_headers = c0 & 0x80 ? DM_HTTP_DEFAULT_MAX_HEADERS : (size_t)((c0 & 0x7f) << 8 | c1);
    dm_http_request *r = dm_http_fuzz_request(max_headers);
    struct model m;
    size_t off = 0, bytes = 0, lines = 0;
    int aborted = 0, rc;

    FUZZ_CHECK(r != NULL);
    memset(&m, 0, sizeof m);
    m.cap = in.n + 1;
    m.arena = malloc(m.cap);
    m.h = malloc((in.n + 1) * sizeof *m.h);
    FUZZ_CHECK(m.arena != NULL && m.h != NULL);
    while (off < in.n && !aborted) {
        const uint8_t *nl = memchr(in.p + off, '\n', in.n - off);
        size_t len = nl ? (size_t)(nl - (in.p + off)) + 1 : in.n - off;
        char *line = malloc(len);
        size_t ret;

        FUZZ_CHECK(line != NULL);
        memcpy(line, in.p + off, len);
        ret = dm_http_fuzz_header_line(r, line, len);
        if (len > max_headers - bytes) {
            FUZZ_CHECK(ret == 0);
            aborted = 1;
        } else {
            FUZZ_CHECK(ret == len);
            bytes += len;
            model_line(&m, line, len);
        }
        free(line);
        off += len;
        if (++lines % 64 == 0)
            check_raw(r, &m);
    }
    check_raw(r, &m);
    rc = dm_http_fuzz_finish(r);
    if (aborted || !m.done) {
        FUZZ_CHECK(rc == -1);
        FUZZ_CHECK(dm_http_request_raw_count(r) == 0);
    } else {
        FUZZ_CHECK(rc == 0);
        FUZZ_CHECK(dm_http_request_raw_count(r) == 0);   /* the raw lines were freed */
        check_joined(r, &m);
    }
    dm_http_request_free(r);
    free(m.arena);
    free(m.h);
    return 0;
}
