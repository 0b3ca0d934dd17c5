/* ga_core.c — the store methods every backend shares (ga_private.h, "Shared
 * store methods"): the start_async and migration option checks, flush() and
 * stats() over a backend's optional writer. The generic helpers are in
 * ga_aux.c, the module entry in ga_init.c. */
#include <stdio.h>
#include <string.h>
#include "ga_private.h"

void ga_check_async_opts(lua_State *L, int idx, ga_writer_opts *o) {
  static const char *const fulls[] = {"block", "error", NULL};
  long long q = 10000, b = 100, mb = 256LL * 1024 * 1024;
  int block = 1;
  if (!lua_isnoneornil(L, idx)) {
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, "queue");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &q) || q < 1 || q > 100000000))
      luaL_argerror(L, idx, "queue must be an integer 1..1e8");
    lua_getfield(L, idx, "batch");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &b) || b < 1 || b > 100000))
      luaL_argerror(L, idx, "batch must be an integer 1..100000");
    lua_getfield(L, idx, "max_bytes");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &mb) || mb < 1))
      luaL_argerror(L, idx, "max_bytes must be a positive integer");
    lua_getfield(L, idx, "on_full");
    if (!lua_isnil(L, -1)) block = luaL_checkoption(L, -1, NULL, fulls) == 0;
    lua_pop(L, 4);
  }
  memset(o, 0, sizeof *o);
  o->capacity = (size_t)q;
  o->batch = (int)b;
  o->max_bytes = (size_t)mb;
  o->block = block;
}

void ga_check_migrations(lua_State *L, int idx) {
  size_t i, n = ga_rawlen(L, idx);
  for (i = 1; i <= n; i++) {
    long long v;
    size_t len;
    const char *sql;
    lua_rawgeti(L, idx, (int)i);
    if (!lua_istable(L, -1)) luaL_argerror(L, idx, "migrations must be tables {version=, name=, sql=}");
    lua_getfield(L, -1, "version");
    if (!ga_tointeger(L, -1, &v) || v <= 0 || v > 2147483647)
      luaL_argerror(L, idx, "migration version must be a positive integer");
    lua_getfield(L, -2, "name");
    if (lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, idx, "migration name must be a string");
    lua_getfield(L, -3, "sql");
    if (lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, idx, "migration sql must be a string");
    sql = lua_tolstring(L, -1, &len);
    /* the SQL is run as a C string: a NUL would silently cut the migration */
    if (strlen(sql) != len) luaL_argerror(L, idx, "migration sql must not contain NUL bytes");
    lua_pop(L, 4);
  }
}

/* flush(): WRITE_FAILED reports the rows that failed since the last flush
 * that reported failures, once; a later flush of good rows returns true. */
int ga_store_flush(lua_State *L, ga_writer *w) {
  long long t = -1;
  uint64_t failed;
  char last[256];
  if (!lua_isnoneornil(L, 2) && (!ga_tointeger(L, 2, &t) || t < 0))
    return luaL_argerror(L, 2, "timeout_ms must be a non-negative integer");
  if (!w) { /* synchronous mode: every persist() already committed */
    lua_pushboolean(L, 1);
    return 1;
  }
  if (ga_writer_flush(w, (long)t) != 0) return ga_fail(L, "TIMEOUT", "rows still queued after %lld ms", t);
  failed = ga_writer_take_failed(w, last, sizeof last);
  if (failed > 0)
    return ga_fail(L, "WRITE_FAILED", "%llu row(s) could not be written; last error: %s",
                   (unsigned long long)failed, last);
  lua_pushboolean(L, 1);
  return 1;
}

int ga_store_stats(lua_State *L, ga_writer *w, uint64_t persisted) {
  ga_writer_stats st;
  memset(&st, 0, sizeof st);
  if (w) ga_writer_get_stats(w, &st);
  else st.written = st.queued = persisted;
  lua_createtable(L, 0, 11);
  lua_pushstring(L, w ? "async" : "sync");
  lua_setfield(L, -2, "mode");
#define F(name) (ga_pushint64(L, (long long)st.name), lua_setfield(L, -2, #name))
  F(queued); F(written); F(failed); F(batches); F(retries); F(pending); F(max_depth); F(pending_bytes);
#undef F
  if (st.last_error[0]) {
    lua_pushstring(L, st.last_error);
    lua_setfield(L, -2, "last_error");
  }
  return 1;
}
