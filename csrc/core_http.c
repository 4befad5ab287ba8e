/* core_http.c: the Lua face of the HTTP engine (http.h).
 *
 * Reference graph: an engine's uservalue maps each request it still holds (running, or
 * finished and not yet reported) from a light userdata of the C request to the request's
 * userdata, so a request in flight stays alive; a request's uservalue holds its engine
 * until it is reported or cancelled, and then its cached result table. The C objects
 * detach from each other on free, so the collector may finalise them in any order. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "compat.h"
#include "cipher.h"
#include "core_internal.h"
#include "http.h"

#define ENGINE_MT  "digime.http_engine"
#define REQUEST_MT "digime.http_request"

struct engine_ud {
    dm_http_engine *e;
};

struct request_ud {
    dm_http_request *r;
    dm_pipeline *pipe;  /* a reference, for `pipeline`: the request's sink */
    int body_bytes;     /* a 2xx body comes back as a bytes object (core_bytes.c) */
};

enum {
    O_METHOD, O_URL, O_HEADERS, O_BODY, O_TIMEOUT, O_CONNECT_TIMEOUT, O_VERIFY, O_CAFILE,
    O_CAPATH, O_PROXY, O_NO_PROXY, O_HTTP2, O_MAX_BODY, O_MAX_HEADERS, O_FOLLOW, O_PIPELINE,
    O_MAX_BUFFERED, O_FRESH_CONNECT, O_BODY_STREAM, O_BODY_LENGTH, O_BODY_BUFFER, O_MAX_IDLE,
    O_BODY_BYTES, O_COUNT
};

static const char *const option_names[O_COUNT] = {
    "method", "url", "headers", "body", "timeout", "connect_timeout", "verify", "cafile",
    "capath", "proxy", "no_proxy", "http2", "max_body", "max_headers", "follow", "pipeline",
    "max_buffered", "fresh_connect", "body_stream", "body_length", "body_buffer", "max_idle",
    "body_bytes"
};

static int option_error(lua_State *L, int opt, const char *what)
{
    return luaL_argerror(L, 2, lua_pushfstring(L, "option '%s' %s", option_names[opt], what));
}

static struct engine_ud *check_engine(lua_State *L)
{
    struct engine_ud *u = luaL_checkudata(L, 1, ENGINE_MT);

    if (u->e == NULL)
        luaL_error(L, "http engine is closed");
    return u;
}

static struct request_ud *check_request_ud(lua_State *L)
{
    struct request_ud *u = luaL_checkudata(L, 1, REQUEST_MT);

    if (u->r == NULL)
        luaL_error(L, "http request is freed");
    return u;
}

static dm_http_request *check_request(lua_State *L)
{
    return check_request_ud(L)->r;
}

/* ---- the file pipeline as the engine's sink: plain C, called from libcurl callbacks ---- */

static int sink_expect(void *ctx, long long size)
{
    return dm_pipeline_expect_size(ctx, (unsigned long long)size);
}

static int sink_write(void *ctx, const char *p, size_t n, size_t limit)
{
    return dm_pipeline_write(ctx, (const unsigned char *)p, n, limit);
}

static int sink_pump(void *ctx, size_t limit)
{
    return dm_pipeline_pump(ctx, limit);
}

static int sink_finish(void *ctx, size_t limit)
{
    return dm_pipeline_finish(ctx, limit);
}

static size_t sink_buffered(void *ctx)
{
    return dm_pipeline_buffered(ctx);
}

static const char *sink_error(void *ctx)
{
    return dm_pipeline_error(ctx);
}

/* ---- option parsing: values sit on the stack at base + O_xxx ---- */

static const char *opt_string(lua_State *L, int base, int opt, size_t *len, int binary)
{
    size_t n;
    const char *s;

    if (lua_isnil(L, base + opt))
        return NULL;
    if (lua_type(L, base + opt) != LUA_TSTRING)
        option_error(L, opt, "must be a string");
    s = lua_tolstring(L, base + opt, &n);
    if (!binary && strlen(s) != n)
        option_error(L, opt, "must not contain NUL");
    if (len != NULL)
        *len = n;
    return s;
}

static int opt_bool(lua_State *L, int base, int opt, int def)
{
    if (lua_isnil(L, base + opt))
        return def;
    if (lua_type(L, base + opt) != LUA_TBOOLEAN)
        option_error(L, opt, "must be a boolean");
    return lua_toboolean(L, base + opt);
}

static lua_Number opt_number(lua_State *L, int base, int opt)
{
    lua_Number x;

    if (lua_type(L, base + opt) != LUA_TNUMBER)
        option_error(L, opt, "must be a number");
    x = lua_tonumber(L, base + opt);
    if (!(x >= 0) || isinf(x))  /* NaN fails x >= 0 */
        option_error(L, opt, "must be a non-negative finite number");
    return x;
}

/* Seconds as a float to whole milliseconds; a positive value never rounds to 0 (= none). */
static long opt_ms(lua_State *L, int base, int opt, long def)
{
    lua_Number ms;

    if (lua_isnil(L, base + opt))
        return def;
    ms = ceil(opt_number(L, base, opt) * 1000);
    return ms > INT_MAX ? INT_MAX : (long)ms;
}

static size_t opt_size(lua_State *L, int base, int opt, size_t def)
{
    lua_Number x;

    if (lua_isnil(L, base + opt))
        return def;
    x = opt_number(L, base, opt);
    if (x != floor(x))
        option_error(L, opt, "must be an integer");
    return x >= (lua_Number)SIZE_MAX ? SIZE_MAX : (size_t)x;
}

/* Rejects unknown keys, then pushes every option's value (nil if absent), raw. */
static int push_options(lua_State *L)
{
    int i, base;

    lua_pushnil(L);
    while (lua_next(L, 2) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_argerror(L, 2, "option names must be strings");
        for (i = 0; i < O_COUNT; i++)
            if (strcmp(lua_tostring(L, -1), option_names[i]) == 0)
                break;
        if (i == O_COUNT)
            luaL_argerror(L, 2, lua_pushfstring(L, "unknown option '%s'", lua_tostring(L, -1)));
    }
    luaL_checkstack(L, O_COUNT + 8, "http options");
    base = lua_gettop(L) + 1;
    for (i = 0; i < O_COUNT; i++) {
        lua_pushstring(L, option_names[i]);
        lua_rawget(L, 2);
    }
    return base;
}

static void read_options(lua_State *L, int base, struct dm_http_options *o)
{
    dm_http_options_init(o);
    if (!lua_isnil(L, base + O_METHOD))
        o->method = opt_string(L, base, O_METHOD, NULL, 0);
    o->url = opt_string(L, base, O_URL, NULL, 0);
    if (o->url == NULL)
        option_error(L, O_URL, "is required");
    o->body = opt_string(L, base, O_BODY, &o->body_len, 1);
    o->timeout_ms = opt_ms(L, base, O_TIMEOUT, o->timeout_ms);
    o->connect_timeout_ms = opt_ms(L, base, O_CONNECT_TIMEOUT, o->connect_timeout_ms);
    o->verify = opt_bool(L, base, O_VERIFY, o->verify);
    o->cafile = opt_string(L, base, O_CAFILE, NULL, 0);
    o->capath = opt_string(L, base, O_CAPATH, NULL, 0);
    /* proxy = false turns proxying off, environment variables included */
    if (lua_type(L, base + O_PROXY) == LUA_TBOOLEAN && !lua_toboolean(L, base + O_PROXY))
        o->proxy = "";
    else
        o->proxy = opt_string(L, base, O_PROXY, NULL, 0);
    o->no_proxy = opt_string(L, base, O_NO_PROXY, NULL, 0);
    o->http2 = opt_bool(L, base, O_HTTP2, o->http2);
    o->max_body = opt_size(L, base, O_MAX_BODY, o->max_body);
    o->max_headers = opt_size(L, base, O_MAX_HEADERS, o->max_headers);
    o->follow = opt_bool(L, base, O_FOLLOW, o->follow);
    o->fresh_connect = opt_bool(L, base, O_FRESH_CONNECT, o->fresh_connect);
    if (!lua_isnil(L, base + O_MAX_IDLE)) {
        size_t secs = opt_size(L, base, O_MAX_IDLE, 0);
        if (secs < 1 || secs > 86400)
            option_error(L, O_MAX_IDLE, "must be between 1 and 86400 seconds");
        o->max_idle_s = (long)secs;
    }
    if (!lua_isnil(L, base + O_MAX_BUFFERED)) {
        o->max_buffered = opt_size(L, base, O_MAX_BUFFERED, o->max_buffered);
        if (o->max_buffered == 0)
            option_error(L, O_MAX_BUFFERED, "must be positive");
        o->stream = 1;  /* asked for: pause from the start */
    }
    if (!lua_isnil(L, base + O_MAX_BUFFERED) && lua_isnil(L, base + O_PIPELINE))
        option_error(L, O_MAX_BUFFERED, "needs a pipeline");
    if (!lua_isnil(L, base + O_HEADERS) && !lua_istable(L, base + O_HEADERS))
        option_error(L, O_HEADERS, "must be a table");
    o->body_stream = opt_bool(L, base, O_BODY_STREAM, 0);
    if (o->body_stream && o->body != NULL)
        option_error(L, O_BODY, "cannot be given with body_stream");
    if (!lua_isnil(L, base + O_BODY_LENGTH)) {
        size_t n = opt_size(L, base, O_BODY_LENGTH, 0);
        if (!o->body_stream)
            option_error(L, O_BODY_LENGTH, "needs body_stream");
        if (n > ((size_t)1 << 53) - 1 || (unsigned long long)n > (unsigned long long)LLONG_MAX)
            option_error(L, O_BODY_LENGTH, "is too large");
        o->body_length = (long long)n;
    }
    if (!lua_isnil(L, base + O_BODY_BUFFER)) {
        o->body_buffer = opt_size(L, base, O_BODY_BUFFER, o->body_buffer);
        if (!o->body_stream)
            option_error(L, O_BODY_BUFFER, "needs body_stream");
        if (o->body_buffer == 0 || o->body_buffer > (size_t)1 << 30)
            option_error(L, O_BODY_BUFFER, "must be between 1 and 2^30 bytes");
    }
}

/* ---- headers: a map {name = value} or an array of "Name: value" ---- */

static const char *header_string(lua_State *L, int idx, const char *what)
{
    size_t n;
    const char *s;

    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_argerror(L, 2, lua_pushfstring(L, "header %s must be a string", what));
    s = lua_tolstring(L, idx, &n);
    if (strlen(s) != n || strpbrk(s, "\r\n") != NULL)
        luaL_argerror(L, 2, lua_pushfstring(L, "header %s contains CR, LF or NUL", what));
    return s;
}

static void add_header(lua_State *L, dm_http_request *r, const char *line)
{
    char err[DM_HTTP_ERRLEN];

    /* the line is not quoted back: it may carry a token */
    if (dm_http_request_add_header(r, line, err) != 0)
        luaL_argerror(L, 2, err);
}

static void add_headers(lua_State *L, dm_http_request *r, int t)
{
    size_t i, n = lua_rawlen(L, t);

    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, t, (int)i);
        add_header(L, r, header_string(L, -1, "line"));
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        const char *name, *value;
        if (lua_type(L, -2) == LUA_TNUMBER) {
            lua_Number k = lua_tonumber(L, -2);
            if (k >= 1 && k <= (lua_Number)n && k == floor(k)) {
                lua_pop(L, 1);
                continue;  /* an array line, added above */
            }
        }
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_argerror(L, 2, "headers must be a map of names or an array of lines");
        name = header_string(L, -2, "name");
        value = header_string(L, -1, "value");
        if (name[0] == '\0' || strpbrk(name, ":; \t") != NULL)
            luaL_argerror(L, 2, lua_pushfstring(L, "invalid header name '%s'", name));
        /* libcurl sends "Name;" as an empty header ("Name:" would remove it) */
        add_header(L, r, value[0] ? lua_pushfstring(L, "%s: %s", name, value)
                                  : lua_pushfstring(L, "%s;", name));
        lua_pop(L, 2);
    }
}

/* ---- engine ---- */

static int l_http_engine(lua_State *L)
{
    char err[DM_HTTP_ERRLEN];
    struct engine_ud *u = compat_newuserdata(L, sizeof *u);

    u->e = NULL;
    luaL_setmetatable(L, ENGINE_MT);
    lua_newtable(L);
    compat_setuservalue(L, -2);
    u->e = dm_http_engine_new(err);
    if (u->e == NULL)
        return luaL_error(L, "%s", err);
    return 1;
}

static int l_engine_add(lua_State *L)
{
    struct engine_ud *eu = check_engine(L);
    struct request_ud *ru;
    struct dm_http_options o;
    struct dm_http_sink sink;
    dm_pipeline *pipe = NULL;
    char err[DM_HTTP_ERRLEN];
    int base, req;

    luaL_checktype(L, 2, LUA_TTABLE);
    base = push_options(L);
    read_options(L, base, &o);
    if (!lua_isnil(L, base + O_PIPELINE)) {
        pipe = dm_check_file_decryptor(L, base + O_PIPELINE);
        sink.ctx = pipe;
        sink.expect = sink_expect;
        sink.write = sink_write;
        sink.pump = sink_pump;
        sink.finish = sink_finish;
        sink.buffered = sink_buffered;
        sink.error = sink_error;
        o.sink = &sink;
    }

    ru = compat_newuserdata(L, sizeof *ru);
    ru->r = NULL;
    ru->pipe = NULL;
    ru->body_bytes = opt_bool(L, base, O_BODY_BYTES, 0);
    luaL_setmetatable(L, REQUEST_MT);
    req = lua_gettop(L);
    lua_newtable(L);
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "engine");
    compat_setuservalue(L, req);
    ru->r = dm_http_request_new(&o, err);
    if (ru->r == NULL)
        return luaL_error(L, "http request: %s", err);
    if (!lua_isnil(L, base + O_HEADERS))
        add_headers(L, ru->r, base + O_HEADERS);

    compat_getuservalue(L, 1);
    lua_pushlightuserdata(L, ru->r);
    lua_pushvalue(L, req);
    lua_rawset(L, -3);
    if (dm_http_engine_add(eu->e, ru->r, err) != 0) {
        lua_pushlightuserdata(L, ru->r);
        lua_pushnil(L);
        lua_rawset(L, -3);
        return luaL_error(L, "http request: %s", err);
    }
    if (pipe != NULL) {
        /* Only now, when nothing can raise any more (a request that failed to be added
         * never runs, so never touches its sink). The request holds its own reference:
         * closing the decryptor cannot pull the pipeline from under a transfer, and the
         * decryptor can no longer be fed from Lua. */
        dm_pipeline_retain(pipe);
        dm_pipeline_claim(pipe);
        ru->pipe = pipe;
    }
    lua_pushvalue(L, req);
    return 1;
}

static int l_engine_perform(lua_State *L)
{
    struct engine_ud *u = check_engine(L);
    char err[DM_HTTP_ERRLEN];
    int running;

    if (dm_http_engine_perform(u->e, &running, err) != 0)
        return luaL_error(L, "http engine: %s", err);
    lua_pushinteger(L, running);
    return 1;
}

static int l_engine_poll(lua_State *L)
{
    struct engine_ud *u = check_engine(L);
    lua_Number ms = luaL_checknumber(L, 2);
    char err[DM_HTTP_ERRLEN];

    luaL_argcheck(L, ms >= 0, 2, "timeout must be a non-negative number of milliseconds");
    if (dm_http_engine_poll(u->e, ms > INT_MAX ? INT_MAX : (int)ms, err) != 0)
        return luaL_error(L, "http engine: %s", err);
    return 0;
}

static int l_engine_finished(lua_State *L)
{
    struct engine_ud *u = check_engine(L);
    dm_http_request *r;
    int n = 0;

    lua_newtable(L);
    compat_getuservalue(L, 1);
    while ((r = dm_http_engine_next_finished(u->e)) != NULL) {
        lua_pushlightuserdata(L, r);
        lua_rawget(L, -2);
        /* reported: the engine lets go of it, and it of the engine */
        compat_getuservalue(L, -1);
        lua_pushnil(L);
        lua_setfield(L, -2, "engine");
        lua_pop(L, 1);
        lua_rawseti(L, -3, ++n);
        lua_pushlightuserdata(L, r);
        lua_pushnil(L);
        lua_rawset(L, -3);
    }
    lua_pop(L, 1);
    return 1;
}

static int l_engine_count(lua_State *L)
{
    struct engine_ud *u = luaL_checkudata(L, 1, ENGINE_MT);

    lua_pushinteger(L, u->e ? (lua_Integer)dm_http_engine_count(u->e) : 0);
    return 1;
}

static int l_engine_close(lua_State *L)
{
    struct engine_ud *u = luaL_checkudata(L, 1, ENGINE_MT);

    if (u->e != NULL) {
        dm_http_engine_free(u->e);
        u->e = NULL;
        lua_newtable(L);  /* the requests no longer need the engine to keep them */
        compat_setuservalue(L, 1);
    }
    return 0;
}

static int l_engine_gc(lua_State *L)
{
    struct engine_ud *u = luaL_checkudata(L, 1, ENGINE_MT);

    if (u->e != NULL) {
        dm_http_engine_free(u->e);
        u->e = NULL;
    }
    return 0;
}

/* ---- request ---- */

static int l_request_cancel(lua_State *L)
{
    dm_http_request *r = check_request(L);

    if (!dm_http_request_cancel(r)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    compat_getuservalue(L, 1);
    lua_getfield(L, -1, "engine");
    compat_getuservalue(L, -1);
    lua_pushlightuserdata(L, r);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 2);
    lua_pushnil(L);
    lua_setfield(L, -2, "engine");
    lua_pushboolean(L, 1);
    return 1;
}

static void push_response(lua_State *L, struct request_ud *u)
{
    dm_http_request *r = u->r;
    dm_pipeline *pipe = u->pipe;
    long status = dm_http_request_status(r);
    const struct dm_http_header *h;
    const char *body;
    size_t i, n, len;

    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)status);
    lua_setfield(L, -2, "status");
    h = dm_http_request_headers(r, &n);
    lua_createtable(L, 0, (int)(n < INT_MAX ? n : INT_MAX));
    for (i = 0; i < n; i++) {
        lua_pushlstring(L, h[i].name, h[i].name_len);
        lua_pushlstring(L, h[i].value, h[i].value_len);
        lua_rawset(L, -3);
    }
    lua_setfield(L, -2, "headers");
    if (pipe != NULL && dm_http_request_piped(r)) {
        /* the plaintext not yet taken by read() */
        body = (const char *)dm_pipeline_output(pipe, &len);
        lua_pushlstring(L, body, len);
        dm_pipeline_drain(pipe);
    } else if (u->body_bytes && status >= 200 && status <= 299) {
        struct dm_bytes *b = dm_new_bytes(L);
        b->data = dm_http_request_take_body(r, &b->len);
    } else {
        body = dm_http_request_body(r, &len);
        lua_pushlstring(L, body, len);
    }
    lua_setfield(L, -2, "body");
    lua_pushstring(L, dm_http_request_http_version(r));
    lua_setfield(L, -2, "http_version");
    lua_pushnumber(L, dm_http_request_time(r));
    lua_setfield(L, -2, "time");
    lua_pushinteger(L, (lua_Integer)dm_http_request_connects(r));
    lua_setfield(L, -2, "connects");
}

static int push_failure(lua_State *L, dm_http_request *r)
{
    lua_pushnil(L);
    lua_pushstring(L, dm_http_request_error(r));
    lua_pushstring(L, dm_http_kind_name(dm_http_request_kind(r)));
    return 3;
}

static int l_request_result(lua_State *L)
{
    struct request_ud *u = check_request_ud(L);
    dm_http_request *r = u->r;

    if (!dm_http_request_done(r))
        return luaL_error(L, "http request has not finished");
    /* a piped body is finished in full now (a no-op once it is) */
    if (dm_http_request_kind(r) == DM_HTTP_OK && dm_http_request_pump(r, 1) != 0)
        return push_failure(L, r);
    /* a piped body whose pipeline could not end (its compression never chosen) is not an
     * answer: nothing partial is presented as complete */
    if (dm_http_request_kind(r) == DM_HTTP_OK && u->pipe != NULL && dm_http_request_piped(r)
        && dm_pipeline_state(u->pipe) != DM_PIPE_DONE) {
        lua_pushnil(L);
        lua_pushliteral(L, "the piped body could not be finished (its compression was never set)");
        lua_pushliteral(L, "decrypt");
        return 3;
    }
    if (dm_http_request_kind(r) != DM_HTTP_OK) {
        lua_pushnil(L);
        lua_pushstring(L, dm_http_request_error(r));
        lua_pushstring(L, dm_http_kind_name(dm_http_request_kind(r)));
        return 3;
    }
    /* built once, then the C copy of the response is freed */
    compat_getuservalue(L, 1);
    lua_getfield(L, -1, "result");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        push_response(L, u);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, "result");
        dm_http_request_drop_response(r);
    }
    return 1;
}

/* req:headers() -> status, headers once the response's headers are in (during the transfer
 * too), or nil before that and after a failure. Lets a caller read a header that decides how
 * to treat the body (a digi.me file's compression) while the body is still coming. */
static int l_request_headers(lua_State *L)
{
    struct request_ud *u = check_request_ud(L);
    dm_http_request *r = u->r;
    long status = 0;
    size_t i, n;

    if (dm_http_request_done(r)) {
        if (dm_http_request_kind(r) != DM_HTTP_OK)
            return 0;
        compat_getuservalue(L, 1);
        lua_getfield(L, -1, "result");
        if (!lua_isnil(L, -1)) {
            lua_getfield(L, -1, "status");
            lua_getfield(L, -2, "headers");
            return 2;
        }
        lua_pushinteger(L, dm_http_request_status(r));
        lua_newtable(L);
        {
            const struct dm_http_header *h = dm_http_request_headers(r, &n);
            for (i = 0; i < n; i++) {
                lua_pushlstring(L, h[i].name, h[i].name_len);
                lua_pushlstring(L, h[i].value, h[i].value_len);
                lua_rawset(L, -3);
            }
        }
        return 2;
    }
    if (!dm_http_request_peek_headers(r, &status))
        return 0;
    lua_pushinteger(L, (lua_Integer)status);
    lua_newtable(L);
    n = dm_http_request_raw_count(r);
    for (i = 0; i < n; i++) {
        const char *name, *value;
        size_t nlen, vlen;
        dm_http_request_raw_header(r, i, &name, &nlen, &value, &vlen);
        lua_pushlstring(L, name, nlen);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushlstring(L, value, vlen);
        } else {  /* a repeated header: joined as in the finished view */
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, value, vlen);
            lua_concat(L, 3);
        }
        lua_rawset(L, -3);
    }
    return 2;
}

/* req:progress() -> ready, headers_in, room. ready: bytes the caller can move now, that is
 * the plaintext waiting for read() plus, for a streamed body, the room in its send buffer once
 * libcurl has asked for the body and enough is free (dm_http_request_body_ready); headers_in:
 * whether the response headers are in (or the request is done); room: the free bytes of the
 * send buffer right now (0 without an open streamed body). A reader or writer waits until
 * ready or headers_in says there is work, so it neither spins nor sleeps on a transfer that
 * paused for it. */
static int l_request_progress(lua_State *L)
{
    struct request_ud *u = check_request_ud(L);
    dm_http_request *r = u->r;
    long status = 0;
    size_t buffered = 0;

    if (u->pipe != NULL && dm_http_request_piped(r))
        buffered = dm_pipeline_buffered(u->pipe);
    buffered += dm_http_request_body_ready(r);
    lua_pushinteger(L, (lua_Integer)buffered);
    lua_pushboolean(L, dm_http_request_done(r) || dm_http_request_peek_headers(r, &status));
    lua_pushinteger(L, (lua_Integer)dm_http_request_body_room(r));
    return 3;
}

/* Why no more body can be written: the request's failure, or "ended" when it finished with an
 * answer (a server that answered before taking the whole body; result() gives it). */
static int push_body_closed(lua_State *L, dm_http_request *r)
{
    if (dm_http_request_kind(r) == DM_HTTP_OK) {
        lua_pushnil(L);
        lua_pushliteral(L, "the request ended before its body was all sent");
        lua_pushliteral(L, "ended");
        return 3;
    }
    return push_failure(L, r);
}

static dm_http_request *check_streamed(lua_State *L)
{
    dm_http_request *r = check_request(L);

    if (!dm_http_request_has_body_stream(r))
        luaL_error(L, "http request has no streamed body (body_stream)");
    else if (!dm_http_request_done(r) && !dm_http_request_body_open(r))
        luaL_error(L, "the streamed body is already finished");
    return r;
}

/* req:finish_body() -> true, or nil, message, kind (as write). */
static int l_request_finish_body(lua_State *L)
{
    dm_http_request *r = check_streamed(L);

    if (dm_http_request_done(r) || dm_http_request_finish_body(r) != 0)
        return push_body_closed(L, r);
    lua_pushboolean(L, 1);
    return 1;
}

/* req:write(data [, i]) -> bytes taken from data (from byte i on), false when the send buffer
 * is full, or nil, message, kind when no more body can go. req:write(nil) is finish_body(). */
static int l_request_write(lua_State *L)
{
    dm_http_request *r;
    const char *p;
    size_t len, taken;
    lua_Integer i;

    if (lua_isnoneornil(L, 2))
        return l_request_finish_body(L);
    r = check_streamed(L);
    luaL_checktype(L, 2, LUA_TSTRING);
    p = lua_tolstring(L, 2, &len);
    i = luaL_optinteger(L, 3, 1);
    luaL_argcheck(L, i >= 1 && (unsigned long long)(i - 1) <= (unsigned long long)len, 3,
                  "start out of range");
    if (dm_http_request_done(r))
        return push_body_closed(L, r);
    if (dm_http_request_write(r, p + (i - 1), len - (size_t)(i - 1), &taken) != 0)
        return push_body_closed(L, r);
    if (taken == 0 && (size_t)(i - 1) < len)
        lua_pushboolean(L, 0);
    else
        lua_pushinteger(L, (lua_Integer)taken);
    return 1;
}

static int l_request_gc(lua_State *L)
{
    struct request_ud *u = luaL_checkudata(L, 1, REQUEST_MT);

    if (u->r != NULL) {
        dm_http_request_free(u->r);
        u->r = NULL;
    }
    /* after the request: it can no longer call into the pipeline */
    dm_pipeline_release(u->pipe);
    u->pipe = NULL;
    return 0;
}

/* req:close(): frees the request's C side now (its buffers, its reference to the pipeline)
 * rather than at the next garbage collection, which does not see C memory and may come many
 * requests later. Only once the engine has reported the request (or it was never added);
 * the request is unusable afterwards. */
static int l_request_close(lua_State *L)
{
    struct request_ud *u = luaL_checkudata(L, 1, REQUEST_MT);

    if (u->r != NULL && !dm_http_request_detached(u->r))
        return luaL_error(L, "http request is still in its engine (cancel it first)");
    /* the cached result too: the caller has it, and the request's finaliser would keep it (a
     * body of megabytes) alive for one more collection */
    compat_getuservalue(L, 1);
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        lua_setfield(L, -2, "result");
    }
    lua_pop(L, 1);
    return l_request_gc(L);
}

/* The plaintext a piped body has produced so far ("" when none yet, and for bodies that are
 * not piped); nil, message, kind once the request has failed. Taking it lets a transfer
 * paused for output go on. */
static int l_request_read(lua_State *L)
{
    struct request_ud *u = check_request_ud(L);
    dm_http_request *r = u->r;

    if (u->pipe == NULL)
        return luaL_error(L, "http request has no pipeline");
    if (dm_http_request_pump(u->r, 0) != 0)
        return push_failure(L, r);
    if (!dm_http_request_piped(r)) {
        lua_pushliteral(L, "");
        return 1;
    }
    {
        size_t len;
        const char *out = (const char *)dm_pipeline_output(u->pipe, &len);
        lua_pushlstring(L, out, len);
        dm_pipeline_drain(u->pipe);
    }
    /* refills for the next read and resumes the transfer; a failure shows on that read */
    dm_http_request_pump(r, 0);
    return 1;
}

static const luaL_Reg engine_methods[] = {
    { "add", l_engine_add },
    { "perform", l_engine_perform },
    { "poll", l_engine_poll },
    { "finished", l_engine_finished },
    { "count", l_engine_count },
    { "close", l_engine_close },
    { NULL, NULL }
};

static const luaL_Reg request_methods[] = {
    { "cancel", l_request_cancel },
    { "close", l_request_close },
    { "result", l_request_result },
    { "read", l_request_read },
    { "headers", l_request_headers },
    { "progress", l_request_progress },
    { "write", l_request_write },
    { "finish_body", l_request_finish_body },
    { NULL, NULL }
};

static int l_engine_tostring(lua_State *L)
{
    struct engine_ud *u = luaL_checkudata(L, 1, ENGINE_MT);

    if (u->e == NULL)
        lua_pushliteral(L, ENGINE_MT " (closed)");
    else
        lua_pushfstring(L, ENGINE_MT " (%d requests)", (int)dm_http_engine_count(u->e));
    return 1;
}

static int l_request_tostring(lua_State *L)
{
    struct request_ud *u = luaL_checkudata(L, 1, REQUEST_MT);

    if (u->r == NULL || !dm_http_request_done(u->r))
        lua_pushliteral(L, REQUEST_MT " (running)");
    else
        lua_pushfstring(L, REQUEST_MT " (%s)", dm_http_kind_name(dm_http_request_kind(u->r)));
    return 1;
}

static void new_class(lua_State *L, const char *name, const luaL_Reg *methods,
                      lua_CFunction gc, lua_CFunction tostring)
{
    if (luaL_newmetatable(L, name)) {
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushstring(L, name);  /* getmetatable() gives the name, not the methods */
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
}

int dm_open_http(lua_State *L)
{
    new_class(L, ENGINE_MT, engine_methods, l_engine_gc, l_engine_tostring);
    new_class(L, REQUEST_MT, request_methods, l_request_gc, l_request_tostring);
    lua_pushcfunction(L, l_http_engine);
    lua_setfield(L, -2, "http_engine");
    return 0;
}
