/* ga_core.c — the module entry `genaudit.core`: shared helpers for the other
 * files (error triples, class registration, integer conversion) and
 * luaopen_genaudit_core, the only exported symbol. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "ga_private.h"

void ga_rawgetfield(lua_State *L, int idx, const char *k) {
  idx = ga_absindex(L, idx);
  lua_pushstring(L, k);
  lua_rawget(L, idx);
}

int ga_fail(lua_State *L, const char *code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  ga_pushfail(L);
  lua_pushfstring(L, "%s: %s", code, msg);
  lua_pushstring(L, code);
  return 3;
}

void ga_newclass(lua_State *L, const char *tname, const luaL_Reg *methods,
                 lua_CFunction gc, lua_CFunction tostr) {
  luaL_newmetatable(L, tname);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
#if GA_HAS_CLOSE
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__close");
#endif
  lua_pushcfunction(L, tostr);
  lua_setfield(L, -2, "__tostring");
  lua_pushstring(L, tname);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
}

int ga_tointeger(lua_State *L, int idx, long long *out) {
  if (lua_type(L, idx) != LUA_TNUMBER) return 0;
#if LUA_VERSION_NUM >= 503
  if (lua_isinteger(L, idx)) {
    *out = (long long)lua_tointeger(L, idx);
    return 1;
  }
#endif
  {
    lua_Number d = lua_tonumber(L, idx);
    /* 2^63 bounds: anything outside does not fit a long long. */
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0)) return 0;
    if (floor(d) != d) return 0;
    *out = (long long)d;
    return 1;
  }
}

void ga_pushint64(lua_State *L, long long v) {
#if LUA_VERSION_NUM >= 503
  lua_pushinteger(L, (lua_Integer)v);
#else
  lua_pushnumber(L, (lua_Number)v);
#endif
}

GA_EXPORT int luaopen_genaudit_core(lua_State *L) {
  lua_newtable(L);
  ga_open_clock(L);
  ga_open_ulid(L);
  ga_open_json(L);
  ga_open_jsondec(L);
  ga_open_store(L);
  ga_open_pg(L);
  ga_open_meter(L);
  ga_open_fs(L);
  ga_open_http(L);
  lua_pushliteral(L, "0.1.0");
  lua_setfield(L, -2, "_VERSION");
  return 1;
}
