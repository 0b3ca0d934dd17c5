/* ga_store_common.c — what every snapshot store backend shares (the
 * contract is in ga_store.h): the option and migration-list checks, the
 * methods persist (preamble and sync-vs-async branch), start_async, flush,
 * stats and close over a backend's driver table, the class registration,
 * and what a query parameter binds as. */
#include <stdio.h>
#include <string.h>
#include "ga_store.h"

void ga_check_async_opts(lua_State *L, int idx, ga_writer_opts *o) {
  static const char *const fulls[] = {"block", "error", NULL};
  long long q = 10000, b = 100, mb = 256LL * 1024 * 1024, linger = 0;
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
    lua_getfield(L, idx, "linger_ms");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &linger) || linger < 0 || linger > 1000))
      luaL_argerror(L, idx, "linger_ms must be an integer 0..1000");
    lua_pop(L, 5);
  }
  memset(o, 0, sizeof *o);
  o->capacity = (size_t)q;
  o->batch = (int)b;
  o->max_bytes = (size_t)mb;
  o->block = block;
  o->linger_ms = (long)linger;
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

void ga_migration_get(lua_State *L, int idx, size_t i, long long *version, const char **name, size_t *namelen,
                      const char **sql) {
  lua_rawgeti(L, idx, (int)i);
  lua_getfield(L, -1, "version");
  ga_tointeger(L, -1, version);
  lua_getfield(L, -2, "name");
  *name = lua_tolstring(L, -1, namelen);
  lua_getfield(L, -3, "sql");
  *sql = lua_tostring(L, -1);
}

int ga_store_param(lua_State *L, int idx, long long *iv) {
  switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
      return ga_exactint(L, idx, iv) ? GA_PARAM_INT : GA_PARAM_FLOAT;
    case LUA_TSTRING: return GA_PARAM_TEXT;
    case LUA_TBOOLEAN: return GA_PARAM_BOOL;
    case LUA_TLIGHTUSERDATA: return ga_isnull(L, idx) ? GA_PARAM_NULL : GA_PARAM_BAD;
    default: return GA_PARAM_BAD;
  }
}

static const ga_store_driver *driver(lua_State *L) {
  return (const ga_store_driver *)lua_touserdata(L, lua_upvalueindex(1));
}

/* store:persist(row) -> id | nil, err, code. Writes (or queues) nothing
 * unless the whole row is valid and this database can hold it. */
static int l_persist(lua_State *L) {
  const ga_store_driver *d = driver(L);
  ga_store_base *b = d->check(L);
  ga_row row;
  char err[512];
  int explicit_id, r;
  luaL_checktype(L, 2, LUA_TTABLE);
  if (b->readonly) return ga_fail(L, "READONLY", "store was opened read-only");
  /* async: the documents' JSON is left to the writer's threads (ga_tape.c) */
  if ((b->writer ? ga_row_build_deferred(L, 2, &row, ga_writer_scratch(b->writer), err, sizeof err)
                 : ga_row_build(L, 2, &row, err, sizeof err)) != 0) {
    ga_row_free(&row);
    return ga_fail(L, "INVALID", "%s", err);
  }
  explicit_id = row.col[GA_COL_ID].set;
  if (ga_row_stamp(&row, &b->ulid) != 0) {
    ga_row_free(&row);
    return ga_fail(L, "ULID", "cannot generate a snapshot id");
  }
  /* a deferred row is checked with its documents' upper bounds: passing
   * then means passing; otherwise its exact JSON decides (and says why) */
  if (d->check_row(b, &row, err, sizeof err) != 0 &&
      (!row.deferred || ga_row_materialize(&row) != 0 || d->check_row(b, &row, err, sizeof err) != 0)) {
    ga_row_free(&row);
    return ga_fail(L, row.deferred ? "NOMEM" : "INVALID", "%s", row.deferred ? "out of memory" : err);
  }
  if (b->writer) {
    int top = lua_gettop(L);
    /* a row that brings its id: refused now if it is queued or stored
     * already. The id enters the writer's id set first and the database is
     * asked second: a row with that id leaves the set only once committed (or
     * given up), so one committed in between is seen by the database check. */
    if (explicit_id) {
      if ((r = ga_writer_reserve_id(b->writer, row.id, err, sizeof err)) != 0) {
        ga_row_free(&row);
        return ga_fail(L, ga_writer_push_code(r), "%s", err);
      }
      if (d->id_stored(L, b, row.id) == 1) {
        ga_writer_release_id(b->writer, row.id);
        ga_row_free(&row);
        return ga_fail(L, "CONSTRAINT", "a snapshot with id %.26s is stored already", row.id);
      }
    }
    lua_settop(L, top);
    /* a deferred row whose JSON bound or whose tape (which can be larger:
     * an empty string is 3 bytes of JSON, 18 of tape) exceeds max_bytes is
     * made JSON first: the queue then holds and checks its exact bytes */
    if (row.deferred &&
        (ga_writer_row_bytes(&row) > ga_writer_max_bytes(b->writer) ||
         ga_writer_row_held(&row) > ga_writer_max_bytes(b->writer)) &&
        ga_row_materialize(&row) != 0) {
      if (explicit_id) ga_writer_release_id(b->writer, row.id);
      ga_row_free(&row);
      return ga_fail(L, "NOMEM", "out of memory");
    }
    r = ga_writer_push(b->writer, &row, explicit_id ? GA_ID_RESERVED : 0, err, sizeof err);
    if (r != 0 && explicit_id) ga_writer_release_id(b->writer, row.id);
    ga_row_keep(&row, ga_writer_scratch(b->writer)); /* the row's bytes are the queue's copy now */
    if (r != 0) return ga_fail(L, ga_writer_push_code(r), "%s", err);
    lua_pushlstring(L, row.id, 26);
    return 1;
  }
  r = d->insert(L, b, &row);
  if (r != 0) {
    ga_row_free(&row);
    return r;
  }
  b->persisted++;
  lua_pushlstring(L, row.id, 26);
  ga_row_free(&row);
  return 1;
}

/* store:put_script(path, source) -> digest | nil, err, code. Stores the
 * exact bytes of a template, rule or policy script once, under the SHA-256
 * of those bytes: a digest stored already is a no-op success. A source that
 * is not UTF-8 or holds a NUL byte is stored as its base64 (encoding
 * 'base64'); the digest is always over the raw bytes. path must be UTF-8
 * without NUL (any store's text holds it). */
static int l_put_script(lua_State *L) {
  const ga_store_driver *d = driver(L);
  ga_store_base *b = d->check(L);
  size_t pathlen, srclen;
  const char *path = luaL_checklstring(L, 2, &pathlen);
  const char *src = luaL_checklstring(L, 3, &srclen);
  ga_script sc;
  int r;
  if (b->readonly) return ga_fail(L, "READONLY", "store was opened read-only");
  if (pathlen == 0 || memchr(path, '\0', pathlen) || !ga_utf8_valid(path, pathlen))
    return ga_fail(L, "INVALID", "script path must be non-empty UTF-8 without NUL bytes");
  if (ga_sha256_hex(src, srclen, sc.digest) != 0) return ga_fail(L, "DIGEST", "sha256: libcrypto failed");
  sc.path = path;
  sc.pathlen = pathlen;
  if (!memchr(src, '\0', srclen) && ga_utf8_valid(src, srclen)) {
    sc.encoding = "text";
    sc.source = src;
    sc.sourcelen = srclen;
  } else {
    char *out;
    if (srclen > ((size_t)-1 - 3) / 4 * 3) return ga_fail(L, "INVALID", "script source too long");
    out = (char *)lua_newuserdata(L, (srclen + 2) / 3 * 4 + 1); /* the GC owns it: nothing leaks on a raise */
    sc.encoding = "base64";
    sc.source = out;
    sc.sourcelen = ga_base64_encode((const unsigned char *)src, srclen, out);
  }
  r = d->put_script(L, b, &sc);
  if (r != 0) return r;
  lua_pushlstring(L, sc.digest, 64);
  return 1;
}

/* store:start_async{ queue = 10000, batch = 100, max_bytes = 256 MiB,
 *   on_full = "block" | "error", linger_ms = 0 } -> true | nil, err, code
 * From now on persist() checks and queues rows for a writer thread with its
 * own connection; flush() waits for them; close() drains them. */
static int l_start_async(lua_State *L) {
  const ga_store_driver *d = driver(L);
  ga_store_base *b = d->check(L);
  ga_writer_opts o;
  const char *code = "ASYNC";
  char err[1024];
  ga_check_async_opts(L, 2, &o);
  if (b->readonly) return ga_fail(L, "READONLY", "store was opened read-only");
  if (b->writer) return ga_fail(L, "ASYNC", "the store is already in async mode");
  b->writer = d->start_writer(b, &o, &code, err, sizeof err);
  if (!b->writer) return ga_fail(L, code, "%s", err);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_flush(lua_State *L) {
  ga_store_base *b = driver(L)->check(L);
  return ga_store_flush(L, b->writer);
}

static int l_stats(lua_State *L) {
  const ga_store_driver *d = driver(L);
  ga_store_base *b = d->check(L);
  ga_store_stats(L, b->writer, b->persisted);
  if (d->stats) d->stats(L, b);
  return 1;
}

/* store:close() -> true; also __gc and __close. */
static int l_close(lua_State *L) {
  const ga_store_driver *d = driver(L);
  d->close((ga_store_base *)luaL_checkudata(L, 1, d->tname));
  lua_pushboolean(L, 1);
  return 1;
}

static int l_tostring(lua_State *L) {
  const ga_store_driver *d = driver(L);
  d->describe(L, (ga_store_base *)luaL_checkudata(L, 1, d->tname));
  return 1;
}

void ga_store_newclass(lua_State *L, const ga_store_driver *d) {
  static const luaL_Reg shared[] = {{"persist", l_persist}, {"start_async", l_start_async}, {"flush", l_flush},
                                    {"stats", l_stats},     {"close", l_close},             {"put_script", l_put_script},
                                    {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", l_close},
#if GA_HAS_CLOSE
                                  {"__close", l_close},
#endif
                                  {"__tostring", l_tostring},
                                  {NULL, NULL}};
  /* ga_newclass's own metamethods are replaced below by the closures over d */
  ga_newclass(L, d->tname, d->methods, l_close, l_tostring);
  luaL_getmetatable(L, d->tname);
  lua_getfield(L, -1, "__index");
  lua_pushlightuserdata(L, (void *)(uintptr_t)d);
  luaL_setfuncs(L, shared, 1);
  lua_pop(L, 1);
  lua_pushlightuserdata(L, (void *)(uintptr_t)d);
  luaL_setfuncs(L, meta, 1);
  lua_pop(L, 1);
}
