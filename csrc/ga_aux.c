/* ga_aux.c — the generic helpers declared in ga_aux.h (Lua's lauxlib to
 * ga_init.c's linit): error triples, class registration, integers across
 * Lua versions, genaudit.null, the byte buffer, the sleep. Depends on no
 * other file of csrc/. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ga_aux.h"

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
  if (GA_HAS_CLOSE) {
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__close");
  }
  lua_pushcfunction(L, tostr);
  lua_setfield(L, -2, "__tostring");
  lua_pushstring(L, tname);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
}

int ga_tointeger(lua_State *L, int idx, long long *out) {
  if (lua_type(L, idx) != LUA_TNUMBER) return 0;
  if (ga_isinteger(L, idx)) {
    *out = (long long)lua_tointeger(L, idx);
    return 1;
  }
  {
    lua_Number d = lua_tonumber(L, idx);
    /* 2^63 bounds: anything outside does not fit a long long. */
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0)) return 0;
    if (floor(d) != d) return 0;
    *out = (long long)d;
    return 1;
  }
}

int ga_exactint(lua_State *L, int idx, long long *out) {
  if (lua_type(L, idx) != LUA_TNUMBER) return 0;
  if (GA_HAS_INTEGER) {
    if (!ga_isinteger(L, idx)) return 0;
    *out = (long long)lua_tointeger(L, idx);
    return 1;
  }
  return ga_tointeger(L, idx, out) && *out > -GA_INT53 && *out < GA_INT53;
}

void ga_pushint64(lua_State *L, long long v) {
  if (GA_HAS_INTEGER) lua_pushinteger(L, (lua_Integer)v);
  else lua_pushnumber(L, (lua_Number)v);
}

void ga_pushnull(lua_State *L) { lua_pushlightuserdata(L, NULL); }

int ga_isnull(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == NULL;
}

void ga_sleep_ns(uint64_t ns) {
  struct timespec ts;
  ts.tv_sec = (time_t)(ns / 1000000000u);
  ts.tv_nsec = (long)(ns % 1000000000u);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

void ga_buf_init(ga_buf *b) { memset(b, 0, sizeof *b); }

void ga_buf_free(ga_buf *b) {
  free(b->buf);
  ga_buf_init(b);
}

int ga_buf_grow(ga_buf *b, size_t need) {
  size_t cap;
  char *p;
  if (b->oom) return -1;
  if (b->len + need <= b->cap) return 0;
  cap = b->cap ? b->cap : 1024; /* a metric document fits, without regrowing */
  while (cap < b->len + need) cap *= 2;
  p = (char *)realloc(b->buf, cap);
  if (!p) {
    b->oom = 1;
    return -1;
  }
  b->buf = p;
  b->cap = cap;
  return 0;
}
