/* http.c: the libcurl multi engine behind http.h. */
#include "http.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#define MAX_REDIRECTS 10L

enum req_state {
    REQ_NEW,       /* created, not added yet */
    REQ_RUNNING,   /* in the engine's multi handle */
    REQ_FINISHED,  /* done, queued in the engine until reported */
    REQ_DONE       /* done and detached from any engine */
};

/* Why a callback stopped the transfer (libcurl then reports CURLE_WRITE_ERROR). */
enum abort_reason { ABORT_NONE, ABORT_BODY, ABORT_HEADERS, ABORT_NOMEM, ABORT_SINK,
                   ABORT_ANSWERED, /* a complete answer ended an HTTP/2 upload early */
                   ABORT_CUT,      /* a non-2xx body reached DM_HTTP_MAX_ERROR_BODY: kept, cut */
                   ABORT_RESEND    /* libcurl was about to send the request a second time */ };

/* Where the current response's body goes: decided at its first byte (or at the end). */
enum route { ROUTE_UNDECIDED, ROUTE_BUFFER, ROUTE_SINK };

/* The sink's progress once the transfer has ended. */
enum sink_state { SINK_OPEN, SINK_FINISHING, SINK_DONE, SINK_FAILED };

struct buf {
    char *data;
    size_t len, cap;
};

/* The send buffer of a streamed body: a ring of cap bytes, len of them from head on. */
struct ring {
    char *data;
    size_t cap, head, len;
};

/* A header line as received: offsets into the request's raw header bytes. */
struct raw_header {
    size_t name_off, name_len, value_off, value_len;
};

struct req_list {
    dm_http_request *head, *tail;
    size_t n;
};

struct dm_http_engine {
    CURLM *multi;
    CURLSH *share;      /* TLS sessions and DNS answers, for every request of the engine */
    pid_t pid;
    struct req_list running, finished;
};

struct dm_http_request {
    CURL *easy;
    struct curl_slist *headers;
    pid_t pid;
    enum req_state state;
    dm_http_engine *engine;
    dm_http_request *prev, *next;  /* in the engine's running or finished list */
    int has_body, has_content_type;
    long long body_size;        /* a string body's length */
    unsigned long long resp_bytes;  /* body bytes of the current response taken so far */
    size_t max_body, max_headers, header_bytes;
    size_t cut_at;              /* a non-2xx body ends here (0: not cut) */
    int headers_done;           /* the blank line ending the last response's headers came */
    int sends;                  /* times libcurl has put the request on a connection */
    size_t header_bytes_at_send;
    long connects;              /* new connections this transfer made (0: a reused one) */
    enum abort_reason aborted;
    /* a sink for 2xx bodies */
    int has_sink;
    struct dm_http_sink sink;
    enum route route;
    enum sink_state sink_state;
    size_t max_buffered;
    int streaming;              /* pause while max_buffered bytes of output wait */
    int paused;                 /* the write callback returned CURL_WRITEFUNC_PAUSE */
    int backlog;                /* the sink holds work back */
    /* a streamed request body */
    int body_stream;
    int body_ended;             /* the writer said the body is complete */
    int body_asked;             /* libcurl has called the read callback */
    int send_paused;            /* the read callback returned CURL_READFUNC_PAUSE */
    long long body_length;      /* -1: unknown */
    unsigned long long body_written, body_taken;  /* bytes in from the writer, out to libcurl */
    struct ring send;
    /* the response */
    struct buf body;
    struct buf raw_bytes;
    struct raw_header *raw;
    size_t nraw, raw_cap;
    struct dm_http_header *hdrs;   /* joined view, built when the transfer succeeds */
    size_t nhdrs;
    char *hdr_data;
    enum dm_http_kind kind;
    long status;
    const char *version;
    double time;
    long stall_ms;              /* the timeout: no byte moved for this long fails it; 0 = none */
    long long moved_at;         /* when bytes last moved (monotonic ms) */
    curl_off_t moved;           /* bytes moved either way, as last seen */
    char errbuf[CURL_ERROR_SIZE];
    char message[DM_HTTP_ERRLEN];
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;

/* libcurl's global state is made on first use, never at load time: a module preloaded by
 * a master process that forks has then set up nothing its children would share. */
static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* Objects inherited through fork() are the parent's: the child must not drive or close
 * their connections (closing a TLS connection would write on the parent's socket). */
static int owned(pid_t pid)
{
    return pid == getpid();
}

static void set_err(char err[DM_HTTP_ERRLEN], const char *msg)
{
    snprintf(err, DM_HTTP_ERRLEN, "%s", msg);
}

const char *dm_http_kind_name(enum dm_http_kind kind)
{
    switch (kind) {
    case DM_HTTP_OK: return "ok";
    case DM_HTTP_CONNECT: return "connect";
    case DM_HTTP_RESOLVE: return "resolve";
    case DM_HTTP_TIMEOUT: return "timeout";
    case DM_HTTP_RESET: return "reset";
    case DM_HTTP_TLS: return "tls";
    case DM_HTTP_TOO_LARGE: return "too_large";
    case DM_HTTP_CANCELLED: return "cancelled";
    case DM_HTTP_DECRYPT: return "decrypt";
    case DM_HTTP_BODY: return "body";
    case DM_HTTP_STALE: return "stale";
    case DM_HTTP_OTHER: break;
    }
    return "other";
}

static enum dm_http_kind classify(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_PROXY:  /* proxy handshake failed: the request was not sent either */
        return DM_HTTP_CONNECT;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return DM_HTTP_RESOLVE;
    case CURLE_OPERATION_TIMEDOUT:
        return DM_HTTP_TIMEOUT;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return DM_HTTP_RESET;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_USE_SSL_FAILED:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
        return DM_HTTP_TLS;
    case CURLE_FILESIZE_EXCEEDED:
        return DM_HTTP_TOO_LARGE;
    default:
        return DM_HTTP_OTHER;
    }
}

/* Grows b to hold need more bytes, never beyond limit unless need alone requires it. */
static int buf_reserve(struct buf *b, size_t need, size_t limit)
{
    size_t want, cap;
    char *p;

    if (need > (size_t)-1 - b->len)
        return -1;
    want = b->len + need;
    if (want <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 4096;
    while (cap < want)
        cap = cap > (size_t)-1 / 2 ? want : cap * 2;
    if (cap > limit && want <= limit)
        cap = limit;
    p = realloc(b->data, cap);
    if (p == NULL)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

static void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static void list_push(struct req_list *l, dm_http_request *r)
{
    r->next = NULL;
    r->prev = l->tail;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    l->n++;
}

static void list_unlink(struct req_list *l, dm_http_request *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        l->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        l->tail = r->prev;
    r->prev = r->next = NULL;
    l->n--;
}

/* Request headers carry bearer tokens: wipe them before they go back to the allocator. */
static void free_request_headers(dm_http_request *r)
{
    struct curl_slist *s;

    for (s = r->headers; s != NULL; s = s->next)
        OPENSSL_cleanse(s->data, strlen(s->data));
    curl_slist_free_all(r->headers);
    r->headers = NULL;
}

/* A streamed body may be personal data: wiped before it goes back to the allocator. */
static void free_send_buffer(dm_http_request *r)
{
    if (r->send.data != NULL) {
        OPENSSL_cleanse(r->send.data, r->send.cap);
        free(r->send.data);
    }
    r->send.data = NULL;
    r->send.cap = r->send.head = r->send.len = 0;
}

/* Ends the transfer side of a request: the easy handle, its request headers and the send
 * buffer of a streamed body. */
static void release_transfer(dm_http_request *r)
{
    if (r->easy != NULL && owned(r->pid))
        curl_easy_cleanup(r->easy);
    r->easy = NULL;
    free_request_headers(r);
    free_send_buffer(r);
}

static void free_raw_headers(dm_http_request *r)
{
    buf_free(&r->raw_bytes);
    free(r->raw);
    r->raw = NULL;
    r->nraw = r->raw_cap = 0;
}

void dm_http_request_drop_response(dm_http_request *r)
{
    buf_free(&r->body);
    free_raw_headers(r);
    free(r->hdrs);
    free(r->hdr_data);
    r->hdrs = NULL;
    r->hdr_data = NULL;
    r->nhdrs = 0;
}

static void set_cancelled(dm_http_request *r)
{
    r->state = REQ_DONE;
    r->kind = DM_HTTP_CANCELLED;
    snprintf(r->message, sizeof r->message, "request cancelled");
    release_transfer(r);
    dm_http_request_drop_response(r);
}

/* ---- libcurl callbacks: they only fill buffers (or feed the C sink) ---- */

static size_t sink_limit(const dm_http_request *r)
{
    return r->streaming ? r->max_buffered : SIZE_MAX;
}

static void sink_failed(dm_http_request *r)
{
    r->kind = DM_HTTP_DECRYPT;
    snprintf(r->message, sizeof r->message, "%s", r->sink.error(r->sink.ctx));
}

/* The first body byte of a response: 2xx bodies go to the sink, others are buffered. */
static int decide_route(dm_http_request *r)
{
    long status = 0;
    curl_off_t length = -1;

    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || status > 299)
        r->cut_at = DM_HTTP_MAX_ERROR_BODY;
    if (!r->has_sink || status < 200 || status > 299) {
        r->route = ROUTE_BUFFER;
        return 0;
    }
    r->route = ROUTE_SINK;
    /* a declared length lets the sink judge the size before it decrypts anything */
    if (r->sink.expect != NULL
        && curl_easy_getinfo(r->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) == CURLE_OK
        && length >= 0 && r->sink.expect(r->sink.ctx, (long long)length) != 0)
        return -1;
    return 0;
}

static size_t sink_body(dm_http_request *r, const char *p, size_t len)
{
    int rc;

    if (r->aborted == ABORT_SINK)
        return 0;
    /* Hold the transfer while the consumer has not drained; libcurl keeps this chunk and
     * hands it over again once curl_easy_pause(CURLPAUSE_CONT) resumes it. */
    if (r->streaming && (r->backlog || r->sink.buffered(r->sink.ctx) >= r->max_buffered)) {
        r->paused = 1;
        return CURL_WRITEFUNC_PAUSE;
    }
    rc = r->sink.write(r->sink.ctx, p, len, sink_limit(r));
    if (rc < 0) {
        r->aborted = ABORT_SINK;
        return 0;
    }
    r->backlog = rc > 0;
    return len;
}

/* Over HTTP/2, libcurl 7.88 keeps a transfer open after the server's complete answer while
 * the request body is not all sent, waiting for flow-control window the server will never
 * give (curl issues 10433 and 15316, fixed in later releases): an early error answer (401,
 * 413) would hang until the timeout. So once the final answer is complete by its
 * content-length and the upload is not, the transfer ends here with that answer. HTTP/1.1
 * needs none of this: libcurl stops sending on an error answer by itself. */
static int answered_early(dm_http_request *r)
{
    long version = 0, status = 0;
    curl_off_t length = -1, sent = 0;
    long long total;

    if (!r->has_body || !r->headers_done || r->easy == NULL)
        return 0;
    if (curl_easy_getinfo(r->easy, CURLINFO_HTTP_VERSION, &version) != CURLE_OK
        || version != CURL_HTTP_VERSION_2_0
        || curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK || status < 200
        || curl_easy_getinfo(r->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) != CURLE_OK)
        return 0;
    if (status == 204 || status == 304)
        length = 0;  /* never a body */
    if (length < 0 || r->resp_bytes < (unsigned long long)length)
        return 0;
    if (r->body_stream)
        total = r->body_length >= 0 ? r->body_length
              : r->body_ended ? (long long)r->body_written : -1;
    else
        total = r->body_size;
    if (curl_easy_getinfo(r->easy, CURLINFO_SIZE_UPLOAD_T, &sent) != CURLE_OK)
        return 0;
    if (total >= 0 && sent >= total)
        return 0;  /* the upload is done: libcurl ends the transfer itself */
    r->aborted = ABORT_ANSWERED;
    return 1;
}

/* A 2xx body of a declared length gets one buffer of that size (a large answer, such as a
 * library's file list, is then not grown by doubling, copy after copy). Never beyond
 * max_body; a server that declares more than it sends costs address space, not memory:
 * pages never written are not resident. Best effort: buf_reserve grows it anyway. */
static void reserve_declared(dm_http_request *r)
{
    curl_off_t length = -1;
    char *data;

    if (r->cut_at > 0)
        return;   /* an error answer: kept short */
    if (curl_easy_getinfo(r->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) != CURLE_OK
        || length <= 0 || (unsigned long long)length > (unsigned long long)r->max_body)
        return;
    data = malloc((size_t)length);
    if (data != NULL) {
        r->body.data = data;
        r->body.cap = (size_t)length;
    }
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    dm_http_request *r = ud;
    size_t len = size * n, taken;

    if (r->route == ROUTE_UNDECIDED && decide_route(r) != 0) {
        r->aborted = ABORT_SINK;
        return 0;
    }
    if (r->route == ROUTE_SINK) {
        taken = sink_body(r, p, len);
    } else {
        if (r->cut_at > 0 && r->cut_at < r->max_body && len > r->cut_at - r->body.len) {
            /* An error answer's body: keep its start, stop the transfer (which closes an
             * HTTP/1 connection, resets an HTTP/2 stream) and answer with what came. */
            len = r->cut_at - r->body.len;
            if (buf_reserve(&r->body, len, r->cut_at) == 0) {
                memcpy(r->body.data + r->body.len, p, len);
                r->body.len += len;
            }
            r->aborted = ABORT_CUT;
            return 0;
        }
        if (len > r->max_body - r->body.len) {
            r->aborted = ABORT_BODY;
            return 0;
        }
        if (r->body.data == NULL)
            reserve_declared(r);
        if (buf_reserve(&r->body, len, r->max_body) != 0) {
            r->aborted = ABORT_NOMEM;
            return 0;
        }
        memcpy(r->body.data + r->body.len, p, len);
        r->body.len += len;
        taken = len;
    }
    if (taken == len && len > 0) {
        r->resp_bytes += len;
        if (answered_early(r))
            return 0;  /* the chunk is kept: complete() takes the answer as it is */
    }
    return taken;
}

/* Tells libcurl which directions stay paused: receiving while the sink waits for its
 * consumer, sending while a streamed body waits for its writer. */
static void update_pause(dm_http_request *r)
{
    if (r->state == REQ_RUNNING && r->easy != NULL && owned(r->pid))
        curl_easy_pause(r->easy, (r->paused ? CURLPAUSE_RECV : 0)
                                 | (r->send_paused ? CURLPAUSE_SEND : 0));
}

/* libcurl wants body bytes: from the send buffer; none there, the upload pauses until the
 * writer adds some or ends the body. */
static size_t on_read(char *p, size_t size, size_t n, void *ud)
{
    dm_http_request *r = ud;
    size_t want = size * n, k, first;
    struct ring *b = &r->send;

    r->body_asked = 1;
    if (r->body_length >= 0 && r->body_taken >= (unsigned long long)r->body_length)
        return 0;  /* all of it went: libcurl does not ask again, but never hang if it does */
    if (b->len == 0) {
        if (r->body_ended)
            return 0;
        r->send_paused = 1;
        return CURL_READFUNC_PAUSE;
    }
    k = want < b->len ? want : b->len;
    first = b->cap - b->head < k ? b->cap - b->head : k;
    memcpy(p, b->data + b->head, first);
    memcpy(p + first, b->data, k - first);
    b->head = (b->head + k) % b->cap;
    b->len -= k;
    if (b->len == 0)
        b->head = 0;
    r->body_taken += k;
    return k;
}

/* libcurl rewinds a body it must send again (a redirect, a resend on a new connection).
 * Only a body none of which has been taken yet can start again: the rest is gone. */
static int on_seek(void *ud, curl_off_t offset, int origin)
{
    dm_http_request *r = ud;

    return offset == 0 && origin == SEEK_SET && r->body_taken == 0 ? CURL_SEEKFUNC_OK
                                                                   : CURL_SEEKFUNC_CANTSEEK;
}

/* libcurl puts a request on a new connection by itself, unchanged, when a reused keep-alive
 * connection dies before any answer comes (RFC 9112 9.3.1 allows that for idempotent
 * requests only). The caller signs each attempt afresh (a nonce is good once) and counts
 * it, and some requests must never be repeated: the second sending is refused here and the
 * transfer ends as DM_HTTP_STALE. A redirect is told apart by the answer that came before it. */
static int on_prereq(void *ud, char *conn_primary_ip, char *conn_local_ip,
                     int conn_primary_port, int conn_local_port)
{
    dm_http_request *r = ud;

    (void)conn_primary_ip; (void)conn_local_ip; (void)conn_primary_port; (void)conn_local_port;
    if (r->sends > 0 && r->header_bytes == r->header_bytes_at_send) {
        r->aborted = ABORT_RESEND;
        return CURL_PREREQFUNC_ABORT;
    }
    r->sends++;
    r->header_bytes_at_send = r->header_bytes;
    return CURL_PREREQFUNC_OK;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

static int raw_append(dm_http_request *r, const char *p, size_t len, int lower)
{
    size_t i;

    if (buf_reserve(&r->raw_bytes, len, r->max_headers) != 0)
        return -1;
    for (i = 0; i < len; i++) {
        char c = p[i];
        r->raw_bytes.data[r->raw_bytes.len++] = lower && c >= 'A' && c <= 'Z' ? c + 32 : c;
    }
    return 0;
}

/* Adds one header line (CRLF stripped). Lines are stored name then value, so a folded
 * continuation line only has to extend the bytes at the end. */
static int add_header_line(dm_http_request *r, const char *p, size_t len)
{
    const char *colon, *v;
    size_t vlen;
    struct raw_header *h;

    if (is_space(p[0])) {  /* obsolete line folding */
        while (len > 0 && is_space(*p))
            p++, len--;
        while (len > 0 && is_space(p[len - 1]))
            len--;
        if (r->nraw == 0 || len == 0)
            return 0;
        h = &r->raw[r->nraw - 1];
        if (h->value_len > 0) {
            if (raw_append(r, " ", 1, 0) != 0)
                return -1;
            h->value_len++;
        }
        if (raw_append(r, p, len, 0) != 0)
            return -1;
        h->value_len += len;
        return 0;
    }
    colon = memchr(p, ':', len);
    if (colon == NULL)
        return 0;  /* not a header; libcurl has already judged the response */
    v = colon + 1;
    vlen = len - (size_t)(v - p);
    while (vlen > 0 && is_space(*v))
        v++, vlen--;
    while (vlen > 0 && is_space(v[vlen - 1]))
        vlen--;
    if (r->nraw == r->raw_cap) {
        size_t cap = r->raw_cap ? r->raw_cap * 2 : 16;
        struct raw_header *nr = realloc(r->raw, cap * sizeof *nr);
        if (nr == NULL)
            return -1;
        r->raw = nr;
        r->raw_cap = cap;
    }
    h = &r->raw[r->nraw];
    h->name_off = r->raw_bytes.len;
    h->name_len = (size_t)(colon - p);
    if (raw_append(r, p, h->name_len, 1) != 0)
        return -1;
    h->value_off = r->raw_bytes.len;
    h->value_len = vlen;
    if (raw_append(r, v, vlen, 0) != 0)
        return -1;
    r->nraw++;
    return 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    dm_http_request *r = ud;
    size_t len = size * n;

    /* Counted over every response of the transfer (1xx, redirects), so none is unbounded. */
    if (len > r->max_headers - r->header_bytes) {
        r->aborted = ABORT_HEADERS;
        return 0;
    }
    r->header_bytes += len;
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        /* a new response (after a 1xx or a followed redirect): only the last one counts */
        r->nraw = 0;
        r->raw_bytes.len = 0;
        r->headers_done = 0;
        r->route = ROUTE_UNDECIDED;
        r->resp_bytes = 0;
        return len;
    }
    while (len > 0 && (p[len - 1] == '\r' || p[len - 1] == '\n'))
        len--;
    if (len == 0) {
        r->headers_done = 1;
        if (answered_early(r))  /* an answer without a body (content-length: 0) */
            return 0;
    } else if (add_header_line(r, p, len) != 0) {
        r->aborted = ABORT_NOMEM;
        return 0;
    }
    return size * n;
}

/* The start of the raw header bytes. A response whose header lines all have an empty name
 * and value (a line ":", which libcurl passes on) stored no byte, so raw_bytes.data is still
 * NULL; NULL + 0, and NULL given to memcmp or memcpy even for 0 bytes, are undefined
 * behaviour (found by csrc/fuzz/fuzz_http_headers.c under UBSan): point at "" instead. */
static const char *raw_base(const dm_http_request *r)
{
    return r->raw_bytes.data != NULL ? r->raw_bytes.data : "";
}

/* ---- the joined header view ---- */

struct sort_entry {
    const char *name;
    size_t name_len, index;
};

static int cmp_entry(const void *pa, const void *pb)
{
    const struct sort_entry *a = pa, *b = pb;
    size_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
    int c = memcmp(a->name, b->name, n);

    if (c != 0)
        return c;
    if (a->name_len != b->name_len)
        return a->name_len < b->name_len ? -1 : 1;
    return a->index < b->index ? -1 : a->index > b->index;  /* keeps arrival order */
}

static int same_name(const struct sort_entry *a, const struct sort_entry *b)
{
    return a->name_len == b->name_len && memcmp(a->name, b->name, a->name_len) == 0;
}

/* Sorting by name groups repeated headers in O(n log n): a server sending thousands of
 * them must not cost quadratic time. */
static int join_headers(dm_http_request *r)
{
    struct sort_entry *ent;
    size_t i, j, total = 0, n = r->nraw;
    char *out;

    if (n == 0)
        return 0;
    ent = malloc(n * sizeof *ent);
    r->hdrs = malloc(n * sizeof *r->hdrs);
    for (i = 0; i < n; i++)
        total += r->raw[i].name_len + r->raw[i].value_len + 2;
    r->hdr_data = malloc(total ? total : 1);
    if (ent == NULL || r->hdrs == NULL || r->hdr_data == NULL) {
        free(ent);
        return -1;
    }
    for (i = 0; i < n; i++) {
        ent[i].name = raw_base(r) + r->raw[i].name_off;
        ent[i].name_len = r->raw[i].name_len;
        ent[i].index = i;
    }
    qsort(ent, n, sizeof *ent, cmp_entry);
    out = r->hdr_data;
    for (i = 0; i < n; i = j) {
        struct dm_http_header *h = &r->hdrs[r->nhdrs++];
        memcpy(out, ent[i].name, ent[i].name_len);
        h->name = out;
        h->name_len = ent[i].name_len;
        out += ent[i].name_len;
        h->value = out;
        for (j = i; j < n && same_name(&ent[i], &ent[j]); j++) {
            const struct raw_header *rh = &r->raw[ent[j].index];
            if (j > i) {
                memcpy(out, ", ", 2);
                out += 2;
            }
            memcpy(out, raw_base(r) + rh->value_off, rh->value_len);
            out += rh->value_len;
        }
        h->value_len = (size_t)(out - h->value);
    }
    free(ent);
    return 0;
}

/* A complete answer: a 2xx body (empty ones too) ends in the sink. */
static void finish_sink(dm_http_request *r)
{
    int rc;

    if (!r->has_sink || r->status < 200 || r->status > 299)
        return;
    r->route = ROUTE_SINK;
    buf_free(&r->body);
    rc = r->sink.finish(r->sink.ctx, sink_limit(r));
    if (rc < 0) {
        sink_failed(r);
        r->sink_state = SINK_FAILED;
        dm_http_request_drop_response(r);
    } else {
        r->sink_state = rc > 0 ? SINK_FINISHING : SINK_DONE;
    }
}

/* Records how the transfer ended; the response is kept only for a complete answer. */
static void complete(dm_http_request *r, CURLcode rc)
{
    long version = 0;

    if (rc == CURLE_WRITE_ERROR && (r->aborted == ABORT_ANSWERED || r->aborted == ABORT_CUT))
        rc = CURLE_OK;  /* the answer is complete (answered_early), or cut on purpose (on_body) */
    curl_easy_getinfo(r->easy, CURLINFO_NUM_CONNECTS, &r->connects);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
        /* libcurl 7.88 takes a connection closed in the middle of the headers for a
         * complete answer without a body; so is a lone 1xx. Neither is the answer. */
        if (!r->headers_done || r->status < 200) {
            r->kind = DM_HTTP_RESET;
            snprintf(r->message, sizeof r->message,
                     "connection closed before the end of the response headers");
            dm_http_request_drop_response(r);
            return;
        }
        r->kind = DM_HTTP_OK;
        r->message[0] = '\0';
        curl_easy_getinfo(r->easy, CURLINFO_HTTP_VERSION, &version);
        curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME, &r->time);
        r->version = version == CURL_HTTP_VERSION_1_0 ? "1.0"
                   : version == CURL_HTTP_VERSION_1_1 ? "1.1"
                   : version == CURL_HTTP_VERSION_2_0 ? "2"
                   : version == CURL_HTTP_VERSION_3 ? "3" : "";
        if (join_headers(r) == 0) {
            free_raw_headers(r);
            finish_sink(r);
            return;
        }
        rc = CURLE_OUT_OF_MEMORY;
    }
    if (rc == CURLE_WRITE_ERROR && r->aborted == ABORT_BODY) {
        r->kind = DM_HTTP_TOO_LARGE;
        snprintf(r->message, sizeof r->message, "response body larger than max_body (%zu bytes)",
                 r->max_body);
    } else if (rc == CURLE_WRITE_ERROR && r->aborted == ABORT_HEADERS) {
        r->kind = DM_HTTP_TOO_LARGE;
        snprintf(r->message, sizeof r->message,
                 "response headers larger than max_headers (%zu bytes)", r->max_headers);
    } else if (rc == CURLE_WRITE_ERROR && r->aborted == ABORT_NOMEM) {
        r->kind = DM_HTTP_OTHER;
        snprintf(r->message, sizeof r->message, "out of memory");
    } else if (rc == CURLE_WRITE_ERROR && r->aborted == ABORT_SINK) {
        sink_failed(r);
        r->sink_state = SINK_FAILED;
    } else if ((rc == CURLE_ABORTED_BY_CALLBACK && r->aborted == ABORT_RESEND)
               || (rc == CURLE_SEND_FAIL_REWIND && r->sends == 1
                   && r->header_bytes == r->header_bytes_at_send)) {
        /* a streamed body cannot be rewound: libcurl's resend fails before on_prereq */
        r->kind = DM_HTTP_STALE;
        snprintf(r->message, sizeof r->message,
                 "the reused connection closed before any answer (not sent again)");
    } else {
        r->kind = classify(rc);
        snprintf(r->message, sizeof r->message, "%s",
                 r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc));
    }
    dm_http_request_drop_response(r);
}

/* ---- engines ---- */

dm_http_engine *dm_http_engine_new(char err[DM_HTTP_ERRLEN])
{
    dm_http_engine *e;

    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK) {
        snprintf(err, DM_HTTP_ERRLEN, "libcurl initialisation failed: %s",
                 curl_easy_strerror(global_rc));
        return NULL;
    }
    e = calloc(1, sizeof *e);
    if (e == NULL || (e->multi = curl_multi_init()) == NULL
        || (e->share = curl_share_init()) == NULL) {
        if (e != NULL && e->multi != NULL)
            curl_multi_cleanup(e->multi);
        free(e);
        set_err(err, "out of memory");
        return NULL;
    }
    /* The multi handle already pools connections for all its requests; TLS sessions (for
     * resumption when a new connection is needed) and DNS answers are shared through the
     * share handle. One engine is driven by one thread: no lock callbacks needed. */
    curl_share_setopt(e->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_share_setopt(e->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    /* Idle connections kept: libcurl's default (4 x the transfers in flight) shrinks as a
     * burst ends and would close connections the next burst needs. */
    curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, (long)DM_HTTP_MAX_IDLE_CONNECTIONS);
    e->pid = getpid();
    return e;
}

void dm_http_engine_free(dm_http_engine *e)
{
    dm_http_request *r;

    while ((r = e->running.head) != NULL) {
        if (owned(e->pid))
            curl_multi_remove_handle(e->multi, r->easy);
        list_unlink(&e->running, r);
        r->engine = NULL;
        set_cancelled(r);
    }
    while ((r = e->finished.head) != NULL) {
        list_unlink(&e->finished, r);
        r->engine = NULL;
        r->state = REQ_DONE;
    }
    if (owned(e->pid)) {
        curl_multi_cleanup(e->multi);   /* closes the pooled connections first */
        curl_share_cleanup(e->share);
    }
    free(e);
}

static int check_owned(const dm_http_engine *e, char err[DM_HTTP_ERRLEN])
{
    if (owned(e->pid))
        return 0;
    set_err(err, "http engine used in a forked process");
    return -1;
}

/* ---- the timeout: a stall limit, not a cap on the whole transfer ----
 * A request fails with DM_HTTP_TIMEOUT once no byte has moved either way for stall_ms, however
 * long a transfer that keeps moving takes (a 3 GiB file at any pace). Time the SDK itself
 * holds the transfer (a paused consumer, a body writer that has not written yet) is not a
 * stall of the server's. libcurl's own low-speed check counts whole seconds only. */
static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static curl_off_t bytes_moved(dm_http_request *r)
{
    curl_off_t dl = 0, ul = 0;
    long hdr = 0;
    curl_easy_getinfo(r->easy, CURLINFO_SIZE_DOWNLOAD_T, &dl);
    curl_easy_getinfo(r->easy, CURLINFO_SIZE_UPLOAD_T, &ul);
    curl_easy_getinfo(r->easy, CURLINFO_HEADER_SIZE, &hdr);
    return dl + ul + hdr;
}

static void check_stalls(dm_http_engine *e)
{
    long long now = now_ms();
    dm_http_request *r, *next;

    for (r = e->running.head; r != NULL; r = next) {
        curl_off_t m;
        next = r->next;
        if (r->stall_ms <= 0)
            continue;
        m = bytes_moved(r);
        if (m != r->moved || r->paused || r->send_paused || r->backlog) {
            r->moved = m;
            r->moved_at = now;
            continue;
        }
        if (now - r->moved_at < r->stall_ms)
            continue;
        r->kind = DM_HTTP_TIMEOUT;
        snprintf(r->message, sizeof r->message,
                 "timed out: no data moved for %ld ms (the timeout)", r->stall_ms);
        dm_http_request_drop_response(r);
        curl_multi_remove_handle(e->multi, r->easy);
        release_transfer(r);
        list_unlink(&e->running, r);
        r->state = REQ_FINISHED;
        list_push(&e->finished, r);
    }
}

/* Milliseconds until the nearest stall limit (for the poll), or -1 when none runs. */
static long long next_stall(dm_http_engine *e)
{
    long long now = now_ms(), best = -1;
    dm_http_request *r;

    for (r = e->running.head; r != NULL; r = r->next) {
        long long left;
        if (r->stall_ms <= 0)
            continue;
        left = r->moved_at + r->stall_ms - now;
        if (left < 0)
            left = 0;
        if (best < 0 || left < best)
            best = left;
    }
    return best;
}

int dm_http_engine_perform(dm_http_engine *e, int *running, char err[DM_HTTP_ERRLEN])
{
    CURLMcode mc;
    CURLMsg *msg;
    int left;

    if (check_owned(e, err) != 0)
        return -1;
    mc = curl_multi_perform(e->multi, running);
    if (mc != CURLM_OK) {
        set_err(err, curl_multi_strerror(mc));
        return -1;
    }
    check_stalls(e);
    while ((msg = curl_multi_info_read(e->multi, &left)) != NULL) {
        char *priv = NULL;
        dm_http_request *r;
        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        r = (dm_http_request *)priv;
        complete(r, msg->data.result);
        curl_multi_remove_handle(e->multi, r->easy);
        release_transfer(r);
        list_unlink(&e->running, r);
        r->state = REQ_FINISHED;
        list_push(&e->finished, r);
    }
    return 0;
}

int dm_http_engine_poll(dm_http_engine *e, int timeout_ms, char err[DM_HTTP_ERRLEN])
{
    CURLMcode mc;

    if (check_owned(e, err) != 0)
        return -1;
    {
        long long stall = next_stall(e);
        if (stall >= 0 && stall + 1 < timeout_ms)
            timeout_ms = (int)stall + 1;
    }
    mc = curl_multi_poll(e->multi, NULL, 0, timeout_ms, NULL);
    if (mc != CURLM_OK) {
        set_err(err, curl_multi_strerror(mc));
        return -1;
    }
    return 0;
}

dm_http_request *dm_http_engine_next_finished(dm_http_engine *e)
{
    dm_http_request *r = e->finished.head;

    if (r != NULL) {
        list_unlink(&e->finished, r);
        r->engine = NULL;
        r->state = REQ_DONE;
    }
    return r;
}

size_t dm_http_engine_count(const dm_http_engine *e)
{
    return e->running.n + e->finished.n;
}

/* ---- requests ---- */

void dm_http_options_init(struct dm_http_options *o)
{
    memset(o, 0, sizeof *o);
    o->method = "GET";
    o->timeout_ms = DM_HTTP_DEFAULT_TIMEOUT_MS;
    o->connect_timeout_ms = DM_HTTP_DEFAULT_CONNECT_TIMEOUT_MS;
    o->verify = 1;
    o->http2 = 1;
    o->max_body = DM_HTTP_DEFAULT_MAX_BODY;
    o->max_headers = DM_HTTP_DEFAULT_MAX_HEADERS;
    o->max_buffered = DM_HTTP_DEFAULT_MAX_BUFFERED;
    o->body_length = -1;
    o->body_buffer = DM_HTTP_DEFAULT_BODY_BUFFER;
}

/* An HTTP method is a token (RFC 9110 5.6.2). */
static int is_token(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 32 || c >= 127 || strchr("\"(),/:;<=>?@[\\]{}", c) != NULL)
            return 0;
    }
    return 1;
}

#define SETOPT(opt, val) \
    do { \
        if ((rc = curl_easy_setopt(r->easy, opt, val)) != CURLE_OK) \
            goto fail; \
    } while (0)

static CURLcode set_method(dm_http_request *r, const struct dm_http_options *o)
{
    CURLcode rc = CURLE_OK;
    const char *m = o->method;
    int is_post = strcmp(m, "POST") == 0;

    if (strcmp(m, "HEAD") == 0) {
        SETOPT(CURLOPT_NOBODY, 1L);
        return CURLE_OK;
    }
    if (o->body_stream) {
        /* the read callback feeds it; an unknown length (-1) goes chunked over HTTP/1.1 */
        SETOPT(CURLOPT_POST, 1L);
        SETOPT(CURLOPT_READFUNCTION, on_read);
        SETOPT(CURLOPT_READDATA, r);
        SETOPT(CURLOPT_SEEKFUNCTION, on_seek);
        SETOPT(CURLOPT_SEEKDATA, r);
        SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(o->body_length >= 0 ? o->body_length : -1));
        r->has_body = 1;
        if (!is_post)
            SETOPT(CURLOPT_CUSTOMREQUEST, m);
        return CURLE_OK;
    }
    /* POST, PUT and PATCH without a body still say "content-length: 0" (servers may
     * answer 411 otherwise); other methods without a body send none. */
    if (o->body != NULL || is_post || strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0) {
        /* the size first: COPYPOSTFIELDS then copies that many bytes, NULs included */
        SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(o->body ? o->body_len : 0));
        SETOPT(CURLOPT_COPYPOSTFIELDS, o->body ? o->body : "");
        r->body_size = o->body ? (long long)o->body_len : 0;
        r->has_body = 1;
        if (!is_post)
            SETOPT(CURLOPT_CUSTOMREQUEST, m);
    } else if (strcmp(m, "GET") != 0) {
        SETOPT(CURLOPT_CUSTOMREQUEST, m);
    }
fail:
    return rc;
}

dm_http_request *dm_http_request_new(const struct dm_http_options *o, char err[DM_HTTP_ERRLEN])
{
    dm_http_request *r;
    CURLcode rc;

    if (o->url == NULL) {
        set_err(err, "no url");
        return NULL;
    }
    if (!is_token(o->method)) {
        set_err(err, "invalid method");
        return NULL;
    }
    if (o->body != NULL && strcmp(o->method, "HEAD") == 0) {
        set_err(err, "a HEAD request has no body");
        return NULL;
    }
    if (o->sink != NULL && strcmp(o->method, "HEAD") == 0) {
        set_err(err, "a HEAD request has no body to pipe");
        return NULL;
    }
    if (o->body_stream && (strcmp(o->method, "HEAD") == 0 || strcmp(o->method, "GET") == 0)) {
        set_err(err, "a GET or HEAD request cannot stream a body");
        return NULL;
    }
    if (o->body_stream && o->body != NULL) {
        set_err(err, "a body and a streamed body together");
        return NULL;
    }
    if (o->body_stream && o->body_length < -1) {
        set_err(err, "invalid body_length");
        return NULL;
    }
    r = calloc(1, sizeof *r);
    if (r == NULL || (r->easy = curl_easy_init()) == NULL
        || (r->headers = curl_slist_append(NULL, "Expect:")) == NULL) {
        /* "Expect:" stops libcurl's 100-continue round trip before large bodies */
        if (r != NULL)
            curl_easy_cleanup(r->easy);
        free(r);
        set_err(err, "out of memory");
        return NULL;
    }
    r->pid = getpid();
    r->max_body = o->max_body;
    r->max_headers = o->max_headers;
    if (o->sink != NULL) {
        r->has_sink = 1;
        r->sink = *o->sink;
        r->max_buffered = o->max_buffered > 0 ? o->max_buffered : DM_HTTP_DEFAULT_MAX_BUFFERED;
        r->streaming = o->stream;
    }
    if (o->body_stream) {
        r->body_stream = 1;
        r->body_length = o->body_length;
        r->send.cap = o->body_buffer > 0 ? o->body_buffer : DM_HTTP_DEFAULT_BODY_BUFFER;
        r->send.data = malloc(r->send.cap);
        if (r->send.data == NULL) {
            r->send.cap = 0;
            set_err(err, "out of memory");
            dm_http_request_free(r);
            return NULL;
        }
    }

    SETOPT(CURLOPT_PRIVATE, (char *)r);
    SETOPT(CURLOPT_ERRORBUFFER, r->errbuf);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_URL, o->url);
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(CURLOPT_WRITEDATA, r);
    SETOPT(CURLOPT_HEADERFUNCTION, on_header);
    SETOPT(CURLOPT_HEADERDATA, r);
    r->stall_ms = o->timeout_ms;  /* a stall limit (check_stalls), not CURLOPT_TIMEOUT_MS */
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
    SETOPT(CURLOPT_SSL_VERIFYPEER, o->verify ? 1L : 0L);
    SETOPT(CURLOPT_SSL_VERIFYHOST, o->verify ? 2L : 0L);
    if (o->cafile != NULL)
        SETOPT(CURLOPT_CAINFO, o->cafile);
    if (o->capath != NULL)
        SETOPT(CURLOPT_CAPATH, o->capath);
    /* No proxy given: libcurl's default, which honours http_proxy, https_proxy and no_proxy
     * from the environment as every curl-based tool does; "" turns all proxying off. */
    if (o->proxy != NULL)
        SETOPT(CURLOPT_PROXY, o->proxy);
    if (o->no_proxy != NULL)
        SETOPT(CURLOPT_NOPROXY, o->no_proxy);
    SETOPT(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    /* a libcurl built without HTTP/2 refuses 2TLS: HTTP/1.1 is then all it can do anyway */
    curl_easy_setopt(r->easy, CURLOPT_HTTP_VERSION,
                     o->http2 ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1);
    SETOPT(CURLOPT_FOLLOWLOCATION, o->follow ? 1L : 0L);
    SETOPT(CURLOPT_FRESH_CONNECT, o->fresh_connect ? 1L : 0L);
    /* A connection that will never be reused is closed when its transfer ends, not left
     * in libcurl's cache. */
    SETOPT(CURLOPT_FORBID_REUSE, o->fresh_connect ? 1L : 0L);
    if (o->max_idle_s > 0)
        SETOPT(CURLOPT_MAXAGE_CONN, o->max_idle_s);
    /* Over TLS, where ALPN may offer HTTP/2, wait for a connection that may multiplex rather
     * than open another (libcurl knows after the first handshake; plain http:// stays 1.1). */
    if (o->http2 && strncmp(o->url, "https://", 8) == 0)
        SETOPT(CURLOPT_PIPEWAIT, 1L);
    SETOPT(CURLOPT_PREREQFUNCTION, on_prereq);
    SETOPT(CURLOPT_PREREQDATA, r);
    SETOPT(CURLOPT_MAXREDIRS, MAX_REDIRECTS);
    /* Fails early on a declared content-length; on_body enforces the limit in any case.
     * Not for HEAD, whose content-length describes a body that never comes, nor with a
     * sink: max_body then bounds only the buffered (non-2xx) bodies. */
    if (strcmp(o->method, "HEAD") != 0 && o->sink == NULL && o->max_body > 0
        && o->max_body <= (size_t)INT64_MAX)
        SETOPT(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_body);
    if ((rc = set_method(r, o)) != CURLE_OK)
        goto fail;
    return r;
fail:
    set_err(err, curl_easy_strerror(rc));
    dm_http_request_free(r);
    return NULL;
}

static int is_content_type(const char *line)
{
    static const char ct[] = "content-type";
    size_t i;

    for (i = 0; ct[i] != '\0'; i++) {
        char c = line[i];
        if ((c >= 'A' && c <= 'Z' ? c + 32 : c) != ct[i])
            return 0;
    }
    return line[i] == ':' || line[i] == ';';
}

int dm_http_request_add_header(dm_http_request *r, const char *line, char err[DM_HTTP_ERRLEN])
{
    struct curl_slist *s;

    if (r->state != REQ_NEW) {
        set_err(err, "request already added");
        return -1;
    }
    if (strpbrk(line, "\r\n") != NULL) {
        set_err(err, "header contains CR or LF");
        return -1;
    }
    /* "Name: value"; libcurl also reads "Name:" as "remove" and "Name;" as "send empty" */
    if (line[strcspn(line, ":;")] == '\0' || strchr(":;", line[0]) != NULL) {
        set_err(err, "header is not \"Name: value\"");
        return -1;
    }
    s = curl_slist_append(r->headers, line);
    if (s == NULL) {
        set_err(err, "out of memory");
        return -1;
    }
    r->headers = s;
    r->has_content_type |= is_content_type(line);
    return 0;
}

int dm_http_engine_add(dm_http_engine *e, dm_http_request *r, char err[DM_HTTP_ERRLEN])
{
    CURLMcode mc;

    if (check_owned(e, err) != 0)
        return -1;
    if (r->state != REQ_NEW) {
        set_err(err, "request already added");
        return -1;
    }
    /* libcurl would label a body "application/x-www-form-urlencoded"; bodies go as given */
    if (r->has_body && !r->has_content_type) {
        struct curl_slist *s = curl_slist_append(r->headers, "Content-Type:");
        if (s == NULL) {
            set_err(err, "out of memory");
            return -1;
        }
        r->headers = s;
        r->has_content_type = 1;
    }
    if (curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers) != CURLE_OK
        || curl_easy_setopt(r->easy, CURLOPT_SHARE, e->share) != CURLE_OK) {
        set_err(err, "out of memory");
        return -1;
    }
    mc = curl_multi_add_handle(e->multi, r->easy);
    if (mc != CURLM_OK) {
        set_err(err, curl_multi_strerror(mc));
        return -1;
    }
    r->state = REQ_RUNNING;
    r->engine = e;
    r->moved_at = now_ms();
    list_push(&e->running, r);
    return 0;
}

int dm_http_request_cancel(dm_http_request *r)
{
    if (r->state == REQ_RUNNING) {
        if (owned(r->engine->pid))
            curl_multi_remove_handle(r->engine->multi, r->easy);
        list_unlink(&r->engine->running, r);
        r->engine = NULL;
    } else if (r->state != REQ_NEW) {
        return 0;
    }
    set_cancelled(r);
    return 1;
}

void dm_http_request_free(dm_http_request *r)
{
    if (r->state == REQ_RUNNING || r->state == REQ_FINISHED) {
        if (r->state == REQ_RUNNING) {
            if (owned(r->engine->pid))
                curl_multi_remove_handle(r->engine->multi, r->easy);
            list_unlink(&r->engine->running, r);
        } else {
            list_unlink(&r->engine->finished, r);
        }
    }
    release_transfer(r);
    dm_http_request_drop_response(r);
    free(r);
}

int dm_http_request_detached(const dm_http_request *r)
{
    return r->state == REQ_NEW || r->state == REQ_DONE;
}

int dm_http_request_done(const dm_http_request *r)
{
    return r->state == REQ_FINISHED || r->state == REQ_DONE;
}

enum dm_http_kind dm_http_request_kind(const dm_http_request *r)
{
    return r->kind;
}

const char *dm_http_request_error(const dm_http_request *r)
{
    return r->message;
}

long dm_http_request_status(const dm_http_request *r)
{
    return r->status;
}

const char *dm_http_request_http_version(const dm_http_request *r)
{
    return r->version ? r->version : "";
}

long dm_http_request_connects(const dm_http_request *r)
{
    return r->connects;
}

double dm_http_request_time(const dm_http_request *r)
{
    return r->time;
}

const char *dm_http_request_body(const dm_http_request *r, size_t *len)
{
    *len = r->body.len;
    return r->body.data ? r->body.data : "";
}

char *dm_http_request_take_body(dm_http_request *r, size_t *len)
{
    char *data = r->body.data;

    *len = r->body.len;
    memset(&r->body, 0, sizeof r->body);
    if (*len == 0) {
        free(data);
        return NULL;
    }
    return data;
}

int dm_http_request_peek_headers(const dm_http_request *r, long *status)
{
    if (r->state != REQ_RUNNING || !r->headers_done || r->easy == NULL || !owned(r->pid))
        return 0;
    if (curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, status) != CURLE_OK)
        return 0;
    return *status >= 200;
}

size_t dm_http_request_raw_count(const dm_http_request *r)
{
    return r->nraw;
}

void dm_http_request_raw_header(const dm_http_request *r, size_t i, const char **name, size_t *nlen,
                             const char **value, size_t *vlen)
{
    *name = raw_base(r) + r->raw[i].name_off;
    *nlen = r->raw[i].name_len;
    *value = raw_base(r) + r->raw[i].value_off;
    *vlen = r->raw[i].value_len;
}

const struct dm_http_header *dm_http_request_headers(const dm_http_request *r, size_t *count)
{
    *count = r->nhdrs;
    return r->hdrs;
}

int dm_http_request_has_sink(const dm_http_request *r)
{
    return r->has_sink;
}

int dm_http_request_piped(const dm_http_request *r)
{
    return r->has_sink && r->route == ROUTE_SINK;
}

int dm_http_request_pump(dm_http_request *r, int all)
{
    size_t limit;
    int rc;

    if (!r->has_sink)
        return 0;
    if (!all)
        r->streaming = 1;
    limit = all ? SIZE_MAX : sink_limit(r);
    if (dm_http_request_done(r)) {
        if (r->kind != DM_HTTP_OK)
            return -1;
        if (r->sink_state == SINK_FINISHING) {
            rc = r->sink.finish(r->sink.ctx, limit);
            if (rc < 0) {
                sink_failed(r);
                r->sink_state = SINK_FAILED;
                dm_http_request_drop_response(r);
                return -1;
            }
            if (rc == 0)
                r->sink_state = SINK_DONE;
        }
        return 0;
    }
    if (r->state != REQ_RUNNING || r->route != ROUTE_SINK)
        return 0;
    if (r->aborted == ABORT_SINK) {
        sink_failed(r);
        return -1;
    }
    if (r->backlog) {
        rc = r->sink.pump(r->sink.ctx, limit);
        if (rc < 0) {
            /* resumed, the write callback refuses the held chunk and the transfer ends */
            r->aborted = ABORT_SINK;
            sink_failed(r);
        }
        r->backlog = rc > 0;
    }
    if (r->paused && !r->backlog
        && (r->aborted == ABORT_SINK || r->sink.buffered(r->sink.ctx) < r->max_buffered)
        && owned(r->pid)) {
        r->paused = 0;
        /* may call on_body at once with the chunk it held; that can pause again */
        update_pause(r);
    }
    return r->aborted == ABORT_SINK ? -1 : 0;
}

/* ---- streamed request bodies ---- */

/* Ends a request whose streamed body broke its contract, at once: out of the multi handle and
 * onto the engine's finished list, reported by dm_http_engine_next_finished as any other. */
static void fail_body(dm_http_request *r, const char *msg)
{
    dm_http_engine *e = r->engine;

    r->kind = DM_HTTP_BODY;
    snprintf(r->message, sizeof r->message, "%s", msg);
    if (r->state == REQ_RUNNING) {
        if (owned(e->pid))
            curl_multi_remove_handle(e->multi, r->easy);
        list_unlink(&e->running, r);
        r->state = REQ_FINISHED;
        list_push(&e->finished, r);
    } else {
        r->state = REQ_DONE;
    }
    release_transfer(r);
    dm_http_request_drop_response(r);
}

int dm_http_request_has_body_stream(const dm_http_request *r)
{
    return r->body_stream;
}

int dm_http_request_body_open(const dm_http_request *r)
{
    return r->body_stream && !r->body_ended;
}

int dm_http_request_write(dm_http_request *r, const char *p, size_t n, size_t *taken)
{
    struct ring *b = &r->send;
    size_t k, tail, first;
    char msg[DM_HTTP_ERRLEN];

    *taken = 0;
    if (dm_http_request_done(r))
        return -1;
    if (r->body_length >= 0 && n > (unsigned long long)r->body_length - r->body_written) {
        snprintf(msg, sizeof msg, "the streamed body is longer than its body_length (%lld bytes)",
                 r->body_length);
        fail_body(r, msg);
        return -1;
    }
    k = b->cap - b->len < n ? b->cap - b->len : n;
    if (k == 0)
        return 0;
    tail = (b->head + b->len) % b->cap;
    first = b->cap - tail < k ? b->cap - tail : k;
    memcpy(b->data + tail, p, first);
    memcpy(b->data, p + first, k - first);
    b->len += k;
    r->body_written += k;
    *taken = k;
    if (r->send_paused) {
        r->send_paused = 0;
        update_pause(r);
    }
    return 0;
}

int dm_http_request_finish_body(dm_http_request *r)
{
    char msg[DM_HTTP_ERRLEN];

    if (dm_http_request_done(r))
        return -1;
    if (r->body_length >= 0 && r->body_written < (unsigned long long)r->body_length) {
        snprintf(msg, sizeof msg, "the streamed body ended after %llu of its %lld bytes (body_length)",
                 r->body_written, r->body_length);
        fail_body(r, msg);
        return -1;
    }
    r->body_ended = 1;
    if (r->send_paused) {
        r->send_paused = 0;
        update_pause(r);
    }
    return 0;
}

size_t dm_http_request_body_room(const dm_http_request *r)
{
    if (!dm_http_request_body_open(r) || dm_http_request_done(r))
        return 0;
    return r->send.cap - r->send.len;
}

size_t dm_http_request_body_ready(const dm_http_request *r)
{
    size_t room = dm_http_request_body_room(r);

    if (!r->body_asked || room == 0)
        return 0;
    if (room >= r->send.cap / 4)
        return room;
    if (r->body_length >= 0 && room >= (unsigned long long)r->body_length - r->body_written)
        return room;
    return 0;
}

#ifdef DIGIME_FUZZ
/* ---- test hooks for the fuzz target (see http.h); not built into the module ---- */

dm_http_request *dm_http_fuzz_request(size_t max_headers)
{
    dm_http_request *r = calloc(1, sizeof *r);

    if (r == NULL)
        return NULL;
    r->pid = getpid();
    r->state = REQ_NEW;
    r->max_body = DM_HTTP_DEFAULT_MAX_BODY;
    r->max_headers = max_headers;
    return r;
}

size_t dm_http_fuzz_header_line(dm_http_request *r, const char *p, size_t n)
{
    /* libcurl hands over char *; on_header never writes through it */
    return on_header((char *)(uintptr_t)p, 1, n, r);
}

int dm_http_fuzz_finish(dm_http_request *r)
{
    if (r->aborted != ABORT_NONE || !r->headers_done) {
        dm_http_request_drop_response(r);
        return -1;
    }
    if (join_headers(r) != 0) {
        dm_http_request_drop_response(r);
        return -1;
    }
    free_raw_headers(r);
    return 0;
}
#endif
