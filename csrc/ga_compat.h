/* ga_compat.h — the one place that knows Lua 5.1/LuaJIT from Lua 5.4
 * (the only file that tests LUA_VERSION_NUM). Everything else in csrc/ writes
 * against the names defined here; helpers built on them are in ga_aux.h. */
#ifndef GA_COMPAT_H
#define GA_COMPAT_H

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#if LUA_VERSION_NUM >= 504
#define ga_newuserdata(L, sz) lua_newuserdatauv((L), (sz), 1)
#define ga_rawlen(L, i) lua_rawlen((L), (i))
#define ga_setuservalue(L, i) lua_setiuservalue((L), (i), 1)
#define ga_getuservalue(L, i) lua_getiuservalue((L), (i), 1)
#define GA_HAS_CLOSE 1
#define ga_absindex(L, i) lua_absindex((L), (i))
#else
/* LuaJIT 2.1 / Lua 5.1: one environment table per userdata stands in for the
 * uservalue; lua_objlen is the raw length. */
#define ga_newuserdata(L, sz) lua_newuserdata((L), (sz))
#define ga_rawlen(L, i) lua_objlen((L), (i))
#define ga_setuservalue(L, i) lua_setfenv((L), (i))
#define ga_getuservalue(L, i) lua_getfenv((L), (i))
#define GA_HAS_CLOSE 0
#define ga_absindex(L, i) ((i) > 0 || (i) <= LUA_REGISTRYINDEX ? (i) : lua_gettop(L) + (i) + 1)
#endif

#if LUA_VERSION_NUM >= 503
#define GA_HAS_INTEGER 1
#define ga_isinteger(L, i) lua_isinteger((L), (i))
#else
/* no integer subtype: every number is a double */
#define GA_HAS_INTEGER 0
#define ga_isinteger(L, i) 0
#endif

/* Pushes the "failure" value: nil on every version (luaL_pushfail is 5.4 only). */
#define ga_pushfail(L) lua_pushnil(L)

#endif
