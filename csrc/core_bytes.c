/* core_bytes.c: a bytes object, a C buffer owned by a userdata. An HTTP answer's body can come
 * back as one (engine:add{ body_bytes = true }) instead of a Lua string, and a consumer in C
 * (core.file_list_index) takes its buffer over without a copy: a body of many megabytes then
 * never sits in the Lua heap, where the collector would let the heap grow by as much again.
 *   #bytes, bytes:len() -> its length (0 once taken or freed)
 *   bytes:string() -> a copy as a Lua string
 *   bytes:free() releases the buffer now (the collector does it otherwise) */
#include <stdlib.h>
#include <string.h>

#include "core_internal.h"

#define BYTES_MT "digime.bytes"

struct dm_bytes *dm_new_bytes(lua_State *L)
{
    struct dm_bytes *b = compat_newuserdata(L, sizeof *b);

    b->data = NULL;
    b->len = 0;
    luaL_setmetatable(L, BYTES_MT);
    return b;
}

struct dm_bytes *dm_test_bytes(lua_State *L, int idx)
{
    return luaL_testudata(L, idx, BYTES_MT);
}

char *dm_take_bytes(struct dm_bytes *b, size_t *len)
{
    char *data = b->data;

    *len = b->len;
    b->data = NULL;
    b->len = 0;
    return data;
}

static int bytes_len(lua_State *L)
{
    struct dm_bytes *b = luaL_checkudata(L, 1, BYTES_MT);

    lua_pushinteger(L, (lua_Integer)b->len);
    return 1;
}

static int bytes_string(lua_State *L)
{
    struct dm_bytes *b = luaL_checkudata(L, 1, BYTES_MT);

    lua_pushlstring(L, b->data ? b->data : "", b->len);
    return 1;
}

static int bytes_free(lua_State *L)
{
    struct dm_bytes *b = luaL_checkudata(L, 1, BYTES_MT);
    size_t len;

    free(dm_take_bytes(b, &len));
    return 0;
}

static const luaL_Reg bytes_methods[] = {
    {"len", bytes_len},
    {"string", bytes_string},
    {"free", bytes_free},
    {NULL, NULL}
};

int dm_open_bytes(lua_State *L)
{
    if (luaL_newmetatable(L, BYTES_MT)) {
        luaL_newlib(L, bytes_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, bytes_len);
        lua_setfield(L, -2, "__len");
        lua_pushcfunction(L, bytes_free);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, BYTES_MT);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    return 0;
}
