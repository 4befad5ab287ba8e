/* http.h: a libcurl multi engine with a Lua-free API.
 *
 * An engine owns a multi handle (and so its connection cache). A request owns an easy
 * handle, its settings and the response it collects. Requests are created on their own,
 * then added to one engine; the engine reports them once finished and forgets them.
 * Nothing here ever calls out of C while libcurl works: callbacks only fill buffers.
 *
 * Lifetimes are independent: freeing a request detaches it from its engine, freeing an
 * engine cancels the requests still running and detaches every request it holds, so the
 * two may be freed in either order. */
#ifndef DIGIME_HTTP_H
#define DIGIME_HTTP_H

#include <stddef.h>

#define DM_HTTP_DEFAULT_TIMEOUT_MS         30000L
#define DM_HTTP_DEFAULT_CONNECT_TIMEOUT_MS 10000L
#define DM_HTTP_DEFAULT_MAX_BODY           ((size_t)64 * 1024 * 1024)
#define DM_HTTP_DEFAULT_MAX_HEADERS        ((size_t)256 * 1024)
#define DM_HTTP_DEFAULT_MAX_BUFFERED       ((size_t)1024 * 1024)
#define DM_HTTP_DEFAULT_BODY_BUFFER        ((size_t)1024 * 1024)
/* A non-2xx body is cut here (the SDK's error parser reads no more) and its connection closed */
#define DM_HTTP_MAX_ERROR_BODY             ((size_t)64 * 1024)
#define DM_HTTP_ERRLEN                     256
#define DM_HTTP_MAX_IDLE_CONNECTIONS       64L   /* idle keep-alive connections an engine keeps */

typedef struct dm_http_engine dm_http_engine;
typedef struct dm_http_request dm_http_request;

/* How a request ended. DM_HTTP_OK is any complete HTTP response, 4xx and 5xx included. */
enum dm_http_kind {
    DM_HTTP_OK = 0,
    DM_HTTP_CONNECT,   /* refused or unreachable: the request never reached the server */
    DM_HTTP_RESOLVE,   /* name resolution failed: never reached the server either */
    DM_HTTP_TIMEOUT,
    DM_HTTP_RESET,     /* connection closed or reset before a full answer */
    DM_HTTP_TLS,
    DM_HTTP_TOO_LARGE, /* max_body or max_headers exceeded */
    DM_HTTP_CANCELLED,
    DM_HTTP_DECRYPT,   /* the sink refused the body (a file that does not decrypt or inflate) */
    DM_HTTP_BODY,      /* a streamed request body broke its contract (shorter or longer than
                        * body_length) */
    DM_HTTP_STALE,     /* a reused keep-alive connection closed before any answer; the request
                        * went out on it once and was not sent again (the server may or may not
                        * have received it) */
    DM_HTTP_OTHER
};

/* A C consumer of 2xx response bodies (the file pipeline of cipher.h). The engine feeds it
 * from its write callback, so its functions must be plain C that never calls out to Lua.
 * Other statuses are buffered as usual (max_body) and never reach the sink. `limit` is a
 * soft bound on the sink's undrained output: a sink that reaches it holds the rest of its
 * work back and says so by returning 1. Return values: 0 done, 1 work held back, -1 failed
 * (message from error). */
struct dm_http_sink {
    void *ctx;
    int (*expect)(void *ctx, long long size);  /* the declared content-length; may be NULL */
    int (*write)(void *ctx, const char *p, size_t n, size_t limit);
    int (*pump)(void *ctx, size_t limit);      /* moves held-back work on */
    int (*finish)(void *ctx, size_t limit);    /* the body ended */
    size_t (*buffered)(void *ctx);             /* output not yet taken by the consumer */
    const char *(*error)(void *ctx);
};

struct dm_http_options {
    const char *method;        /* "GET", "HEAD", "POST", or any token sent as is */
    const char *url;
    const char *body;          /* NULL: no body */
    size_t body_len;
    int body_stream;           /* the body is written while the transfer runs
                                * (dm_http_request_write); not with body, nor for GET or HEAD */
    long long body_length;     /* with body_stream: its exact length (content-length), or -1:
                                * unknown (chunked over HTTP/1.1) */
    size_t body_buffer;        /* with body_stream: bytes of body held in C at most */
    long timeout_ms;           /* no byte moved for this long fails it (a stall); 0 = none */
    long connect_timeout_ms;   /* 0 = libcurl's default */
    int verify;                /* TLS peer and host name verification */
    const char *cafile, *capath;
    const char *proxy;         /* NULL: libcurl's default (proxy environment variables); "": none */
    const char *no_proxy;
    int http2;                 /* offer HTTP/2 over TLS through ALPN */
    int follow;                /* follow redirects (at most 10) */
    int fresh_connect;         /* a new connection, closed after the transfer (no reuse) */
    long max_idle_s;           /* a pooled connection idle this many seconds or more is not
                                * reused (keep it below the server's keep-alive timeout);
                                * 0 = libcurl's default (118 s) */
    size_t max_body;           /* bytes of response body */
    size_t max_headers;        /* bytes of response header lines, all responses of the transfer */
    const struct dm_http_sink *sink;  /* NULL: bodies are buffered; else copied into the request */
    size_t max_buffered;       /* with a sink: pause the transfer while this much output waits */
    int stream;                /* pause from the start (else from the first
                                * dm_http_request_pump) */
};

/* One response header: the name lower-cased, repeated headers joined with ", ". */
struct dm_http_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

const char *dm_http_kind_name(enum dm_http_kind kind);

/* Engines. The first engine created in a process initialises libcurl. An engine belongs to
 * the process that created it: in a forked child add, perform and poll fail, and freeing
 * it there releases memory without touching libcurl (its connections are the parent's). */
dm_http_engine *dm_http_engine_new(char err[DM_HTTP_ERRLEN]);
void dm_http_engine_free(dm_http_engine *e);
int dm_http_engine_perform(dm_http_engine *e, int *running, char err[DM_HTTP_ERRLEN]);
int dm_http_engine_poll(dm_http_engine *e, int timeout_ms, char err[DM_HTTP_ERRLEN]);
dm_http_request *dm_http_engine_next_finished(dm_http_engine *e);  /* detaches it; NULL if none */
size_t dm_http_engine_count(const dm_http_engine *e);  /* running + not yet reported */

/* Requests. Functions returning int give 0 on success, -1 with a message in err. */
void dm_http_options_init(struct dm_http_options *o);
dm_http_request *dm_http_request_new(const struct dm_http_options *o, char err[DM_HTTP_ERRLEN]);
int dm_http_request_add_header(dm_http_request *r, const char *line, char err[DM_HTTP_ERRLEN]);
int dm_http_engine_add(dm_http_engine *e, dm_http_request *r, char err[DM_HTTP_ERRLEN]);
int dm_http_request_cancel(dm_http_request *r);  /* 1 if it was running and is now cancelled */
void dm_http_request_free(dm_http_request *r);

/* Results, once dm_http_request_done(). */
int dm_http_request_done(const dm_http_request *r);
/* In no engine: never added, or reported. */
int dm_http_request_detached(const dm_http_request *r);
enum dm_http_kind dm_http_request_kind(const dm_http_request *r);
const char *dm_http_request_error(const dm_http_request *r);   /* "" on DM_HTTP_OK */
long dm_http_request_status(const dm_http_request *r);
const char *dm_http_request_http_version(const dm_http_request *r);
double dm_http_request_time(const dm_http_request *r);         /* seconds */
long dm_http_request_connects(const dm_http_request *r);       /* new connections it made */
const char *dm_http_request_body(const dm_http_request *r, size_t *len);
const struct dm_http_header *dm_http_request_headers(const dm_http_request *r, size_t *count);
/* The body's buffer, handed over (malloc'd; the caller frees it), or NULL when it is empty;
 * the request keeps an empty body. */
char *dm_http_request_take_body(dm_http_request *r, size_t *len);
/* Frees body and headers once copied out. */
void dm_http_request_drop_response(dm_http_request *r);

/* While the transfer runs: 1 with *status set once the final response's header block is
 * complete, so a consumer can act on the headers before the body has arrived (the digi.me
 * file's compression is named in one). The lines are then read one by one, names lower-cased,
 * repeats not joined. 0 before that, and once the request is done (use the joined view). */
int dm_http_request_peek_headers(const dm_http_request *r, long *status);
size_t dm_http_request_raw_count(const dm_http_request *r);
void dm_http_request_raw_header(const dm_http_request *r, size_t i, const char **name, size_t *nlen,
                             const char **value, size_t *vlen);

/* Requests with a sink. piped: the answer is 2xx and its body went to the sink (decided at
 * its first byte, or at the end for an empty body). */
int dm_http_request_has_sink(const dm_http_request *r);
int dm_http_request_piped(const dm_http_request *r);
/* The consumer took the sink's output (or wants it all, all = 1, once done): moves held-back
 * work on, finishes the sink after the transfer ended, and resumes a transfer paused for
 * output. The first call with all = 0 turns pausing on. Returns 0, or -1 when the request
 * has failed (kind and message then say why, also while it is still running). */
int dm_http_request_pump(dm_http_request *r, int all);

/* Streamed request bodies (body_stream). The body goes through a bounded buffer of
 * body_buffer bytes that libcurl's read callback drains; when it finds the buffer empty and
 * the body not ended, the upload pauses (CURL_READFUNC_PAUSE) until the next write or finish.
 * Nothing here calls out of C: the writer learns of room through dm_http_request_body_ready.
 *
 * write: copies up to n bytes and sets *taken (0 when the buffer is full). Returns 0, or -1
 *   when no more body can go: the request has ended (kind and message say how; DM_HTTP_OK when
 *   the server answered before taking the whole body), or these bytes would pass body_length,
 *   which ends the request at once with DM_HTTP_BODY (it is then reported finished).
 * finish: the body is complete. Returns 0, or -1 as write; a body shorter than body_length
 *   ends the request with DM_HTTP_BODY.
 * Both need body_stream and a body not yet finished (the caller checks:
 * dm_http_request_body_open). */
int dm_http_request_write(dm_http_request *r, const char *p, size_t n, size_t *taken);
int dm_http_request_finish_body(dm_http_request *r);
int dm_http_request_has_body_stream(const dm_http_request *r);
int dm_http_request_body_open(const dm_http_request *r);   /* body_stream and not yet finished */
/* Free bytes in the send buffer while the body is open and the request not done; else 0. */
size_t dm_http_request_body_room(const dm_http_request *r);
/* What a writer waiting for room needs: the room, once libcurl has asked for the body at least
 * once (a request that never reaches the server never asks) and at least a quarter of the
 * buffer, or all that body_length still lacks, is free; else 0. */
size_t dm_http_request_body_ready(const dm_http_request *r);

#ifdef DIGIME_FUZZ
/* Test hooks for csrc/fuzz/fuzz_http_headers.c, compiled only with -DDIGIME_FUZZ (never into
 * the Lua module). They drive the header-line parser exactly as libcurl's header callback and
 * the end of a successful transfer do, without a network:
 *   dm_http_fuzz_request: a request that was never added to an engine (free: dm_http_request_free);
 *   dm_http_fuzz_header_line: one header line as libcurl delivers it (CRLF included) through
 *     on_header; returns what on_header returns to libcurl (n, or 0 to abort the transfer);
 *   dm_http_fuzz_finish: what complete() does with the headers of a finished transfer: -1 (and
 *     the response dropped) when the header block never ended, else the joined view is built
 *     (dm_http_request_headers) and the raw lines are freed; 0, or -1 when out of memory. */
dm_http_request *dm_http_fuzz_request(size_t max_headers);
size_t dm_http_fuzz_header_line(dm_http_request *r, const char *p, size_t n);
int dm_http_fuzz_finish(dm_http_request *r);
#endif

#endif
