/* ga_copy.c — core.copy(v): the deep copy scripts get of host values (the
 * context, a template's parts, the issues; genaudit.scripts.copy). Tables
 * are copied raw (lua_next / lua_rawset: no metamethod of the source runs),
 * keys and values alike, cycles and shared subtables kept (each source
 * table has one copy), metatables dropped; anything else is returned as is.
 *
 * Iterative, not recursive: the tables still to fill wait in a work list (a
 * Lua table), so a deeply nested value never grows the C stack. Everything
 * it allocates is a Lua object: an error (out of memory) leaks nothing. */
#include "ga_private.h"

/* the copy of the value at index idx (absolute), pushed: a table's copy from
 * seen (index `seen`), else a new table registered there and queued on
 * `work` (index `work`, n entries) */
static void copy_of(lua_State *L, int idx, int seen, int work, lua_Integer *n) {
  if (lua_type(L, idx) != LUA_TTABLE) {
    lua_pushvalue(L, idx);
    return;
  }
  lua_pushvalue(L, idx);
  lua_rawget(L, seen);
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  {
    /* sized as the source, so filling it never rehashes: its length (the
     * array part, about) and the rest of its entries */
    int len = (int)ga_rawlen(L, idx), count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
      lua_pop(L, 1);
      count++;
    }
    if (len > count) len = count;
    lua_createtable(L, len, count - len);
  }
  lua_pushvalue(L, idx);
  lua_pushvalue(L, -2);
  lua_rawset(L, seen); /* seen[src] = copy */
  lua_pushvalue(L, idx);
  lua_rawseti(L, work, (int)++*n); /* fill it later */
}

/* core.copy(v) -> a deep copy of v (see above) */
static int l_copy(lua_State *L) {
  int seen, work;
  lua_Integer n = 0, i;
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  if (lua_type(L, 1) != LUA_TTABLE) return 1;
  lua_createtable(L, 0, 8);
  seen = lua_gettop(L);
  lua_createtable(L, 8, 0);
  work = lua_gettop(L);
  copy_of(L, 1, seen, work, &n); /* the result, at work + 1 */
  for (i = 1; i <= n; i++) {
    int src, dst;
    lua_rawgeti(L, work, (int)i);
    src = lua_gettop(L);
    lua_pushvalue(L, src);
    lua_rawget(L, seen);
    dst = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, src) != 0) { /* key at -2, value at -1 */
      int k = lua_gettop(L) - 1, v = k + 1;
      luaL_checkstack(L, 4, "copy");
      copy_of(L, k, seen, work, &n);
      copy_of(L, v, seen, work, &n);
      lua_rawset(L, dst);
      lua_pop(L, 1); /* the value; the key stays for lua_next */
    }
    lua_settop(L, src - 1);
  }
  return 1;
}

void ga_open_copy(lua_State *L) {
  lua_pushcfunction(L, l_copy);
  lua_setfield(L, -2, "copy");
}
