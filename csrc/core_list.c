/* core_list.c: core.file_list_index(text [, max_depth]) -> index | nil, err; the Lua face of
 * listscan.c. text is a string (copied) or a bytes object (core_bytes.c: its buffer is taken
 * over, and the bytes object left empty). The index keeps the text outside the Lua heap: a
 * sync holds a library's list for as long as it runs, and the collector lets its heap grow to
 * about twice what is live, so a list held as a Lua string would cost twice its size.
 *   index:count() -> number of entries of "fileList" (0 when it is not an array)
 *   index:info() -> top_is_object, list_kind ("absent"|"array"|"other"), status_text?
 *   index:check(i) -> is_object, has_name (a non-empty string), name_escaped, has_updated
 *   index:name(i) -> name (its raw bytes; nil when absent or escaped), updatedDate?
 *   index:text(i) -> the JSON text of entry i
 *   index:free() releases the copy and the entries at once (the collector does it otherwise) */
#include <stdlib.h>
#include <string.h>

#include "core_internal.h"
#include "listscan.h"

#define LIST_MT "digime.file_list_index"

typedef struct {
    struct dm_list_scan scan;
    char *text;   /* the copy the scan's offsets point into; NULL once freed */
    size_t len;
} list_ud;

static list_ud *check_index(lua_State *L)
{
    return luaL_checkudata(L, 1, LIST_MT);
}

static void free_index(list_ud *u)
{
    dm_list_scan_free(&u->scan);
    memset(&u->scan, 0, sizeof u->scan);   /* info() and count() then see an empty index */
    free(u->text);
    u->text = NULL;
    u->len = 0;
}

static int l_file_list_index(lua_State *L)
{
    struct dm_bytes *bytes = dm_test_bytes(L, 1);
    const char *text = NULL;
    size_t n = 0;
    lua_Integer depth = luaL_optinteger(L, 2, 64);
    const char *err = NULL;
    list_ud *u;

    if (bytes == NULL)
        text = luaL_checklstring(L, 1, &n);
    luaL_argcheck(L, depth >= 1 && depth <= 1000, 2, "max_depth must be 1..1000");
    /* the userdata first: whatever it then holds, the collector frees */
    u = compat_newuserdata(L, sizeof *u);
    memset(u, 0, sizeof *u);
    luaL_setmetatable(L, LIST_MT);
    if (bytes != NULL) {
        u->text = dm_take_bytes(bytes, &n);   /* taken over: no copy */
    } else {
        if ((u->text = malloc(n ? n : 1)) == NULL)
            return push_fail(L, "out of memory");
        memcpy(u->text, text, n);
    }
    u->len = n;
    if (dm_list_scan(u->text, n, (int)depth, &u->scan, &err) != 0) {
        free_index(u);
        return push_fail(L, err);
    }
    return 1;
}

/* Entry i of argument 2 (raises when there is none: the caller counts first). */
static const struct dm_list_entry *check_entry(lua_State *L, list_ud *u)
{
    lua_Integer i = luaL_checkinteger(L, 2);
    luaL_argcheck(L, i >= 1 && (size_t)i <= u->scan.count, 2, "no such entry");
    return &u->scan.entries[i - 1];
}

static int index_count(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)check_index(L)->scan.count);
    return 1;
}

static int index_info(lua_State *L)
{
    list_ud *u = check_index(L);
    static const char *const kinds[] = { "absent", "array", "other" };

    lua_pushboolean(L, u->scan.top_is_object);
    lua_pushstring(L, kinds[u->scan.list]);
    if (u->scan.status_end == 0)
        return 2;
    lua_pushlstring(L, u->text + u->scan.status_start, u->scan.status_end - u->scan.status_start);
    return 3;
}

static int index_check(lua_State *L)
{
    const struct dm_list_entry *e = check_entry(L, check_index(L));

    lua_pushboolean(L, (e->flags & DM_ENTRY_OBJECT) != 0);
    lua_pushboolean(L, (e->flags & DM_ENTRY_NAME) && e->name_len > 0);
    lua_pushboolean(L, (e->flags & DM_ENTRY_ESCAPED) != 0);
    lua_pushboolean(L, (e->flags & DM_ENTRY_UPDATED) != 0);
    return 4;
}

static int index_name(lua_State *L)
{
    list_ud *u = check_index(L);
    const struct dm_list_entry *e = check_entry(L, u);

    if ((e->flags & DM_ENTRY_NAME) && !(e->flags & DM_ENTRY_ESCAPED))
        lua_pushlstring(L, u->text + e->name_start, e->name_len);
    else
        lua_pushnil(L);
    if (e->flags & DM_ENTRY_UPDATED)
        lua_pushnumber(L, e->updated);
    else
        lua_pushnil(L);
    return 2;
}

static int index_text(lua_State *L)
{
    list_ud *u = check_index(L);
    const struct dm_list_entry *e = check_entry(L, u);

    lua_pushlstring(L, u->text + e->start, e->end - e->start);
    return 1;
}

static int index_free(lua_State *L)
{
    free_index(check_index(L));
    return 0;
}

static const luaL_Reg index_methods[] = {
    {"count", index_count},
    {"info", index_info},
    {"check", index_check},
    {"name", index_name},
    {"text", index_text},
    {"free", index_free},
    {NULL, NULL}
};

int dm_open_list(lua_State *L)
{
    if (luaL_newmetatable(L, LIST_MT)) {
        luaL_newlib(L, index_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, index_free);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, LIST_MT);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_file_list_index);
    lua_setfield(L, -2, "file_list_index");
    return 0;
}
