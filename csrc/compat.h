/* compat.h: the few Lua C API differences between Lua 5.1/LuaJIT 2.1 and Lua 5.2-5.4. */
#ifndef DIGIME_COMPAT_H
#define DIGIME_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM < 502
#  ifndef luaL_newlib /* plain PUC 5.1; LuaJIT 2.1 already has luaL_setfuncs/luaL_newlib */
static inline void luaL_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    luaL_checkstack(L, nup, "too many upvalues");
    for (; l->name != NULL; l++) {
        int i;
        for (i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}
#    define luaL_newlib(L, l) (lua_newtable(L), luaL_setfuncs(L, (l), 0))
static inline void *luaL_testudata(lua_State *L, int i, const char *tname)
{
    void *p = lua_touserdata(L, i);
    if (p == NULL || !lua_getmetatable(L, i))
        return NULL;
    luaL_getmetatable(L, tname);
    if (!lua_rawequal(L, -1, -2))
        p = NULL;
    lua_pop(L, 2);
    return p;
}
#    define luaL_setmetatable(L, t) (luaL_getmetatable(L, t), lua_setmetatable(L, -2))
#  endif
#  ifndef lua_rawlen
#    define lua_rawlen(L, i) lua_objlen(L, (i))
#  endif
/* 5.1 has a single environment table per userdata; it serves as the uservalue. */
#  define compat_setuservalue(L, i) lua_setfenv(L, (i))
#  define compat_getuservalue(L, i) lua_getfenv(L, (i))
#else
#  define compat_setuservalue(L, i) lua_setuservalue(L, (i))
#  define compat_getuservalue(L, i) lua_getuservalue(L, (i))
#endif

#if LUA_VERSION_NUM >= 504
#  define compat_newuserdata(L, sz) lua_newuserdatauv(L, (sz), 1)
#else
#  define compat_newuserdata(L, sz) lua_newuserdata(L, (sz))
#endif

#define DIGIME_EXPORT __attribute__((visibility("default")))

#endif
