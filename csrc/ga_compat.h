/* ga_compat.h — the one place that knows Lua 5.1/LuaJIT from Lua 5.4.
 * Everything else in csrc/ writes against the 5.4 names used here. */
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

/* Pushes the "failure" value: nil on every version (luaL_pushfail is 5.4 only). */
#define ga_pushfail(L) lua_pushnil(L)

/* True when the value at idx is a number holding an integer; stores it in *out.
 * On 5.4 a float with an integral value counts too (42.0 from cjson). */
int ga_tointeger(lua_State *L, int idx, long long *out);

/* Pushes a 64-bit integer: a Lua integer on 5.4, a double on LuaJIT (exact up
 * to 2^53, which every token count and duration in µs stays under). */
void ga_pushint64(lua_State *L, long long v);

#endif
