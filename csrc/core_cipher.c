/* core_cipher.c: the Lua face of the file format (cipher.h) and of the decoders (inflate.h).
 *
 *   core.file_decryptor(key, { compression =, max_output =, size = })  -> decryptor | nil, err
 *   core.file_encryptor(key)                                           -> encryptor
 *   core.inflater(kind, { max_output = })                              -> inflater
 *
 * Each object has :update(chunk), :finish() and :close(). Misuse raises (a wrong argument, a
 * method on a closed or finished object, a decryptor handed to an HTTP request); a file
 * that does not decrypt or inflate gives nil, message, and the object stays failed. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "compat.h"
#include "cipher.h"
#include "core_internal.h"
#include "inflate.h"
#include "keys.h"

#define DECRYPTOR_MT "digime.file_decryptor"
#define ENCRYPTOR_MT "digime.file_encryptor"
#define INFLATER_MT  "digime.inflater"

/* Default cap on a file's decompressed (or, with "none", decrypted) size. */
#define DEFAULT_MAX_OUTPUT ((size_t)1 << 30)

struct decryptor_ud {
    dm_pipeline *p;   /* one reference; an HTTP request holds its own */
    int finished;
};

struct encryptor_ud {
    dm_encryptor *e;
    int finished;
};

struct inflater_ud {
    dm_inflater *z;
    int finished;
};

/* ---- options ---- */

static void check_option_names(lua_State *L, int t, const char *const names[])
{
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        int i, known = 0;
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_argerror(L, t, "option names must be strings");
        for (i = 0; names[i] != NULL; i++)
            known |= strcmp(lua_tostring(L, -1), names[i]) == 0;
        if (!known)
            luaL_argerror(L, t, lua_pushfstring(L, "unknown option '%s'", lua_tostring(L, -1)));
    }
}

/* A byte count: a non-negative integer, or math.huge for "no limit". */
static size_t opt_bytes(lua_State *L, int t, const char *name, size_t def)
{
    lua_Number x;
    size_t v = def;

    lua_getfield(L, t, name);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_argerror(L, t, lua_pushfstring(L, "option '%s' must be a number", name));
        x = lua_tonumber(L, -1);
        if (x == HUGE_VAL)
            v = SIZE_MAX;
        else if (!(x >= 0) || x != floor(x) || x >= 9007199254740992.0)
            luaL_argerror(L, t, lua_pushfstring(L,
                "option '%s' must be a non-negative integer or math.huge", name));
        else
            v = (size_t)x;
    }
    lua_pop(L, 1);
    return v;
}

static enum dm_compression check_compression(lua_State *L, int arg, const char *name)
{
    enum dm_compression c = DM_COMPRESSION_NONE;

    if (name != NULL && dm_compression_from_name(name, &c) != 0)
        luaL_argerror(L, arg, lua_pushfstring(L,
            "compression must be \"gzip\", \"brotli\" or \"none\", not \"%s\"", name));
    return c;
}

/* ---- file decryptor (the pipeline) ---- */

static const char *const decryptor_options[] = { "compression", "max_output", "size", NULL };

static int l_file_decryptor(lua_State *L)
{
    EVP_PKEY_CTX *unwrap = dm_key_unwrap_ctx(L, dm_check_key(L, 1), 1);
    enum dm_compression c = DM_COMPRESSION_NONE;
    int deferred = 0;
    size_t max_output = DEFAULT_MAX_OUTPUT;
    lua_Number size = -1;
    struct decryptor_ud *u;
    const char *err = NULL;

    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        check_option_names(L, 2, decryptor_options);
        lua_getfield(L, 2, "compression");
        if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
            luaL_argerror(L, 2, "option 'compression' must be a string");
        if (lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "deferred") == 0)
            deferred = 1;
        else
            c = check_compression(L, 2, lua_tostring(L, -1));
        lua_pop(L, 1);
        max_output = opt_bytes(L, 2, "max_output", max_output);
        lua_getfield(L, 2, "size");
        if (!lua_isnil(L, -1)) {
            size = lua_tonumber(L, -1);
            if (lua_type(L, -1) != LUA_TNUMBER || !(size >= 0) || size != floor(size)
                || size >= 9007199254740992.0)
                luaL_argerror(L, 2, "option 'size' must be a non-negative integer");
        }
        lua_pop(L, 1);
    }
    u = compat_newuserdata(L, sizeof *u);
    u->p = NULL;
    u->finished = 0;
    luaL_setmetatable(L, DECRYPTOR_MT);
    u->p = dm_pipeline_new(unwrap, c, deferred, max_output, &err);
    if (u->p == NULL)
        return luaL_error(L, "file decryptor: %s", err);
    /* a declared size is judged before any decryption, as the reference SDK does */
    if (size >= 0 && dm_pipeline_expect_size(u->p, (unsigned long long)size) != 0)
        return push_fail(L, dm_pipeline_error(u->p));
    return 1;
}

static struct decryptor_ud *check_decryptor(lua_State *L)
{
    struct decryptor_ud *u = luaL_checkudata(L, 1, DECRYPTOR_MT);

    if (u->p == NULL)
        luaL_error(L, "file decryptor is closed");
    if (dm_pipeline_claimed(u->p))
        luaL_error(L, "file decryptor is attached to an http request");
    if (u->finished)
        luaL_error(L, "file decryptor is finished");
    return u;
}

/* dec:set_compression(kind) for a decryptor made with compression = "deferred"; allowed
 * while an http request feeds it (that is what it is for). */
static int l_decryptor_set_compression(lua_State *L)
{
    struct decryptor_ud *u = luaL_checkudata(L, 1, DECRYPTOR_MT);
    enum dm_compression c = check_compression(L, 2, luaL_checkstring(L, 2));

    if (u->p == NULL)
        return luaL_error(L, "file decryptor is closed");
    if (dm_pipeline_compression_set(u->p))
        return luaL_error(L, "file decryptor: the compression is already set");
    if (dm_pipeline_set_compression(u->p, c) != 0)
        return push_fail(L, dm_pipeline_error(u->p));
    lua_pushboolean(L, 1);
    return 1;
}

static int push_output(lua_State *L, dm_pipeline *p)
{
    size_t len;
    const unsigned char *out = dm_pipeline_output(p, &len);

    lua_pushlstring(L, (const char *)out, len);
    dm_pipeline_drain(p);
    return 1;
}

static int l_decryptor_update(lua_State *L)
{
    struct decryptor_ud *u = check_decryptor(L);
    size_t n;
    const char *in = luaL_checklstring(L, 2, &n);

    if (dm_pipeline_write(u->p, (const unsigned char *)in, n, SIZE_MAX) < 0)
        return push_fail(L, dm_pipeline_error(u->p));
    return push_output(L, u->p);
}

static int l_decryptor_finish(lua_State *L)
{
    struct decryptor_ud *u = check_decryptor(L);

    if (!dm_pipeline_compression_set(u->p))
        return luaL_error(L, "file decryptor: set_compression was never called");
    if (dm_pipeline_finish(u->p, SIZE_MAX) != 0)
        return push_fail(L, dm_pipeline_error(u->p));
    u->finished = 1;
    return push_output(L, u->p);
}

static int l_decryptor_close(lua_State *L)
{
    struct decryptor_ud *u = luaL_checkudata(L, 1, DECRYPTOR_MT);

    dm_pipeline_release(u->p);
    u->p = NULL;
    return 0;
}

static int l_decryptor_tostring(lua_State *L)
{
    struct decryptor_ud *u = luaL_checkudata(L, 1, DECRYPTOR_MT);
    static const char *const states[] = { "fresh", "running", "ending", "done", "failed" };

    if (u->p == NULL)
        lua_pushliteral(L, DECRYPTOR_MT " (closed)");
    else
        lua_pushfstring(L, DECRYPTOR_MT " (%s%s)", states[dm_pipeline_state(u->p)],
                        dm_pipeline_claimed(u->p) ? ", piped" : "");
    return 1;
}

/* For core_http.c (core_internal.h). */
dm_pipeline *dm_check_file_decryptor(lua_State *L, int idx)
{
    struct decryptor_ud *u = luaL_testudata(L, idx, DECRYPTOR_MT);

    if (u == NULL)
        luaL_error(L, "option 'pipeline' must be a file decryptor (core.file_decryptor)");
    if (u->p == NULL)
        luaL_error(L, "option 'pipeline': file decryptor is closed");
    if (u->finished || dm_pipeline_claimed(u->p) || dm_pipeline_state(u->p) != DM_PIPE_FRESH)
        luaL_error(L, "option 'pipeline': file decryptor already used");
    return u->p;
}

/* ---- file encryptor ---- */

static int l_file_encryptor(lua_State *L)
{
    EVP_PKEY *key = dm_check_key(L, 1)->pkey;
    struct encryptor_ud *u = compat_newuserdata(L, sizeof *u);
    const char *err = NULL;

    u->e = NULL;
    u->finished = 0;
    luaL_setmetatable(L, ENCRYPTOR_MT);
    u->e = dm_encryptor_new(key, &err);
    if (u->e == NULL)
        return luaL_error(L, "file encryptor: %s", err);
    return 1;
}

static struct encryptor_ud *check_encryptor(lua_State *L)
{
    struct encryptor_ud *u = luaL_checkudata(L, 1, ENCRYPTOR_MT);

    if (u->e == NULL)
        luaL_error(L, "file encryptor is closed");
    if (u->finished)
        luaL_error(L, "file encryptor is finished");
    return u;
}

static int push_buf(lua_State *L, struct dm_buf *b)
{
    lua_pushlstring(L, b->data ? (const char *)b->data : "", b->len);
    dm_buf_free(b);
    return 1;
}

static int l_encryptor_update(lua_State *L)
{
    struct encryptor_ud *u = check_encryptor(L);
    size_t n;
    const char *in = luaL_checklstring(L, 2, &n);
    struct dm_buf out = { NULL, 0, 0 };
    const char *err = NULL;

    if (dm_encryptor_update(u->e, (const unsigned char *)in, n, &out, &err) != 0) {
        dm_buf_free(&out);
        return luaL_error(L, "file encryptor: %s", err);
    }
    return push_buf(L, &out);
}

static int l_encryptor_finish(lua_State *L)
{
    struct encryptor_ud *u = check_encryptor(L);
    struct dm_buf out = { NULL, 0, 0 };
    const char *err = NULL;

    if (dm_encryptor_final(u->e, &out, &err) != 0) {
        dm_buf_free(&out);
        return luaL_error(L, "file encryptor: %s", err);
    }
    u->finished = 1;
    return push_buf(L, &out);
}

static int l_encryptor_close(lua_State *L)
{
    struct encryptor_ud *u = luaL_checkudata(L, 1, ENCRYPTOR_MT);

    dm_encryptor_free(u->e);
    u->e = NULL;
    return 0;
}

static int l_encryptor_tostring(lua_State *L)
{
    struct encryptor_ud *u = luaL_checkudata(L, 1, ENCRYPTOR_MT);

    lua_pushstring(L, u->e == NULL ? ENCRYPTOR_MT " (closed)"
                    : u->finished ? ENCRYPTOR_MT " (finished)" : ENCRYPTOR_MT);
    return 1;
}

/* ---- inflater ---- */

static const char *const inflater_options[] = { "max_output", NULL };

static int l_inflater(lua_State *L)
{
    enum dm_compression c = check_compression(L, 1, luaL_checkstring(L, 1));
    size_t max_output = DEFAULT_MAX_OUTPUT;
    struct inflater_ud *u;

    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        check_option_names(L, 2, inflater_options);
        max_output = opt_bytes(L, 2, "max_output", max_output);
    }
    u = compat_newuserdata(L, sizeof *u);
    u->z = NULL;
    u->finished = 0;
    luaL_setmetatable(L, INFLATER_MT);
    u->z = dm_inflater_new(c, max_output);
    if (u->z == NULL)
        return luaL_error(L, "inflater: out of memory");
    return 1;
}

static struct inflater_ud *check_inflater(lua_State *L)
{
    struct inflater_ud *u = luaL_checkudata(L, 1, INFLATER_MT);

    if (u->z == NULL)
        luaL_error(L, "inflater is closed");
    if (u->finished)
        luaL_error(L, "inflater is finished");
    return u;
}

static int l_inflater_update(lua_State *L)
{
    struct inflater_ud *u = check_inflater(L);
    size_t n, used = 0;
    const char *in = luaL_checklstring(L, 2, &n);
    struct dm_buf out = { NULL, 0, 0 };

    /* with no limit on the output the decoder takes all of the input, or fails */
    if (dm_inflater_update(u->z, (const unsigned char *)in, n, &used, &out, SIZE_MAX) != 0) {
        dm_buf_free(&out);
        return push_fail(L, dm_inflater_error(u->z));
    }
    return push_buf(L, &out);
}

static int l_inflater_finish(lua_State *L)
{
    struct inflater_ud *u = check_inflater(L);
    struct dm_buf out = { NULL, 0, 0 };

    if (dm_inflater_final(u->z, &out, SIZE_MAX) != 0) {
        dm_buf_free(&out);
        return push_fail(L, dm_inflater_error(u->z));
    }
    u->finished = 1;
    return push_buf(L, &out);
}

static int l_inflater_close(lua_State *L)
{
    struct inflater_ud *u = luaL_checkudata(L, 1, INFLATER_MT);

    dm_inflater_free(u->z);
    u->z = NULL;
    return 0;
}

static int l_inflater_tostring(lua_State *L)
{
    struct inflater_ud *u = luaL_checkudata(L, 1, INFLATER_MT);

    lua_pushstring(L, u->z == NULL ? INFLATER_MT " (closed)" : INFLATER_MT);
    return 1;
}

/* ---- registration ---- */

static const luaL_Reg decryptor_methods[] = {
    { "update", l_decryptor_update },
    { "finish", l_decryptor_finish },
    { "set_compression", l_decryptor_set_compression },
    { "close", l_decryptor_close },
    { NULL, NULL }
};

static const luaL_Reg encryptor_methods[] = {
    { "update", l_encryptor_update },
    { "finish", l_encryptor_finish },
    { "close", l_encryptor_close },
    { NULL, NULL }
};

static const luaL_Reg inflater_methods[] = {
    { "update", l_inflater_update },
    { "finish", l_inflater_finish },
    { "close", l_inflater_close },
    { NULL, NULL }
};

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
        lua_pushstring(L, name);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
}

int dm_open_cipher(lua_State *L)
{
    new_class(L, DECRYPTOR_MT, decryptor_methods, l_decryptor_close, l_decryptor_tostring);
    new_class(L, ENCRYPTOR_MT, encryptor_methods, l_encryptor_close, l_encryptor_tostring);
    new_class(L, INFLATER_MT, inflater_methods, l_inflater_close, l_inflater_tostring);
    lua_pushcfunction(L, l_file_decryptor);
    lua_setfield(L, -2, "file_decryptor");
    lua_pushcfunction(L, l_file_encryptor);
    lua_setfield(L, -2, "file_encryptor");
    lua_pushcfunction(L, l_inflater);
    lua_setfield(L, -2, "inflater");
    return 0;
}
