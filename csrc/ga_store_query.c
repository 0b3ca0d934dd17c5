/* ga_store_query.c — the SQLite store's reads: store:query() and
 * store:each() over one read-only statement with bound parameters, a small
 * per-store LRU cache of prepared statements, and the authorizer that keeps
 * a query from writing, changing the schema or the session. */
#include <stdlib.h>
#include <string.h>
#include "ga_sqlite.h"

/* True when only whitespace and semicolons remain (one statement given). */
static int only_space(const char *p) {
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ';') p++;
  return *p == '\0';
}

/* PRAGMAs query() may run: pure reads. `args` 1: with or without an
 * argument (a table or index name, a row limit); 0: only without one (with
 * an argument they set something). Everything else is refused. */
static const struct { const char *name; int args; } read_pragmas[] = {
    {"table_info", 1},      {"table_xinfo", 1},    {"index_list", 1},      {"index_info", 1},
    {"index_xinfo", 1},     {"foreign_key_list", 1}, {"foreign_key_check", 1}, {"integrity_check", 1},
    {"quick_check", 1},     {"user_version", 0},   {"application_id", 0},  {"schema_version", 0},
    {"data_version", 0},    {"page_count", 0},     {"page_size", 0},       {"freelist_count", 0},
    {"encoding", 0},        {"synchronous", 0},     {"foreign_keys", 0},
    {"busy_timeout", 0},    {"query_only", 0},     {"locking_mode", 0},    {"trusted_schema", 0},
    {"hard_heap_limit", 0}, {"soft_heap_limit", 0}, {"cache_size", 0},     {"compile_options", 0},
    {"database_list", 0},   {"table_list", 0},     {"collation_list", 0},  {"function_list", 0},
    {"module_list", 0},     {"pragma_list", 0},    {NULL, 0}};

/* The authorizer of a store's connection. While a query()/each() statement
 * is prepared (s->guard) it allows reading tables, calling functions and
 * the PRAGMAs above, and refuses everything else: writes, schema changes,
 * transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE),
 * ATTACH/DETACH, PRAGMAs that set something. It runs while the statement is
 * compiled, before any of it runs: a refused PRAGMA (busy_timeout,
 * hard_heap_limit, ... which SQLite applies as it compiles them) changes
 * nothing. Outside query()/each() it allows everything (the store's own SQL). */
int ga_sqlite_authorize(void *arg, int action, const char *a1, const char *a2, const char *db, const char *trig) {
  store *s = (store *)arg;
  int i;
  (void)db;
  (void)trig;
  if (!s->guard) return SQLITE_OK;
  switch (action) {
    case SQLITE_SELECT: case SQLITE_READ: case SQLITE_RECURSIVE: return SQLITE_OK;
    case SQLITE_UPDATE:
      /* SQLite asks this while it sets up a table-valued function (json_each,
       * pragma_table_xinfo) in a read; a real UPDATE of the schema table is
       * refused by SQLite itself (writable_schema cannot be set here) and by
       * the read-only check of query() */
      if (a1 && (strcmp(a1, "sqlite_master") == 0 || strcmp(a1, "sqlite_temp_master") == 0)) return SQLITE_OK;
      break;
    case SQLITE_FUNCTION:
      /* the two functions that can change the process: refused even if enabled */
      if (a2 && (sqlite3_stricmp(a2, "load_extension") == 0 || sqlite3_stricmp(a2, "fts3_tokenizer") == 0)) break;
      return SQLITE_OK;
    case SQLITE_PRAGMA:
      for (i = 0; a1 && read_pragmas[i].name; i++)
        if (sqlite3_stricmp(a1, read_pragmas[i].name) == 0) {
          if (a2 && !read_pragmas[i].args) break;
          return SQLITE_OK;
        }
      break;
    default: break;
  }
  s->refused = 1;
  return SQLITE_DENY;
}

/* Prepares sql for query()/each() under the authorizer. SQLITE_AUTH when it
 * refused something (nothing of the statement ran). */
static int prepare_guarded(store *s, const char *sql, size_t len, unsigned flags, sqlite3_stmt **st,
                           const char **tail) {
  int rc;
  s->guard = 1;
  s->refused = 0;
  rc = sqlite3_prepare_v3(s->db, sql, (int)len, flags, st, tail);
  s->guard = 0;
  if (rc == SQLITE_OK && s->refused) { /* cannot happen (a DENY fails the prepare), but never run it */
    sqlite3_finalize(*st);
    *st = NULL;
    rc = SQLITE_AUTH;
  }
  if (rc != SQLITE_OK && s->refused) rc = SQLITE_AUTH;
  return rc;
}

/* Finds or prepares the statement for sql in the per-store LRU cache. Only a
 * single read-only statement is cached: a hit reports an empty tail, so caching
 * "SELECT 1; DELETE ..." would let its second call pass query()'s check.
 * Returns NULL with the SQLite error left in the connection, or NULL with
 * SQLITE_OK there when sql holds no statement at all. */
static sqlite3_stmt *cached_stmt(store *s, const char *sql, size_t len, const char **tail) {
  int i, victim = 0;
  sqlite3_stmt *st = NULL;
  char *copy;
  for (i = 0; i < QCACHE; i++) {
    if (s->q[i].st && s->q[i].len == len && memcmp(s->q[i].sql, sql, len) == 0) {
      s->q[i].used = ++s->tick;
      *tail = "";
      return s->q[i].st;
    }
    if (s->q[i].used < s->q[victim].used) victim = i;
  }
  if (prepare_guarded(s, sql, len, SQLITE_PREPARE_PERSISTENT, &st, tail) != SQLITE_OK || !st) return NULL;
  if (!only_space(*tail) || !sqlite3_stmt_readonly(st)) return st; /* refused by the caller, never cached */
  copy = (char *)malloc(len + 1);
  if (!copy) return st; /* usable, just not cached: caller finalizes uncached ones */
  memcpy(copy, sql, len);
  copy[len] = '\0';
  sqlite3_finalize(s->q[victim].st);
  free(s->q[victim].sql);
  s->q[victim].sql = copy;
  s->q[victim].len = len;
  s->q[victim].st = st;
  s->q[victim].used = ++s->tick;
  return st;
}

static int is_cached(store *s, sqlite3_stmt *st) {
  int i;
  for (i = 0; i < QCACHE; i++)
    if (s->q[i].st == st) return 1;
  return 0;
}

/* Binds one Lua value at vidx to parameter i. Returns NULL or an error text
 * (a type that cannot be bound, or SQLite refusing the value: too big). */
static const char *bind_value(lua_State *L, sqlite3_stmt *st, int i, int vidx) {
  long long iv;
  int rc;
  switch (ga_store_param(L, vidx, &iv)) {
    case GA_PARAM_INT: rc = sqlite3_bind_int64(st, i, (sqlite3_int64)iv); break;
    case GA_PARAM_FLOAT: rc = sqlite3_bind_double(st, i, (double)lua_tonumber(L, vidx)); break;
    case GA_PARAM_TEXT: {
      size_t n;
      const char *p = lua_tolstring(L, vidx, &n);
      rc = sqlite3_bind_text64(st, i, p, n, SQLITE_TRANSIENT, SQLITE_UTF8);
      break;
    }
    case GA_PARAM_BOOL: rc = sqlite3_bind_int(st, i, lua_toboolean(L, vidx)); break;
    case GA_PARAM_NULL: rc = sqlite3_bind_null(st, i); break;
    default: return luaL_typename(L, vidx);
  }
  if (rc == SQLITE_OK) return NULL;
  return rc == SQLITE_TOOBIG ? "value (too big for the database)" : sqlite3_errstr(rc);
}

/* Steps a query()/each() statement under the authorizer too: a statement
 * SQLite compiles while it runs (a pragma_xxx() table, a re-prepare after a
 * schema change) gets the same check. */
static int step_guarded(store *s, sqlite3_stmt *st) {
  int rc;
  s->guard = 1;
  rc = sqlite3_step(st);
  s->guard = 0;
  return rc;
}

/* The progress handler (installed with opts.query_timeout): interrupts a
 * query()/each() statement past its deadline, so a query that never ends
 * (an endless recursive CTE) returns TIMEOUT instead of holding the
 * connection forever. The store's own statements have no deadline. */
int ga_sqlite_query_progress(void *arg) {
  store *s = (store *)arg;
  if (s->query_deadline && ga_monotonic_ns() > s->query_deadline) {
    s->query_timed_out = 1;
    return 1;
  }
  return 0;
}

static void query_deadline_start(store *s) {
  s->query_timed_out = 0;
  s->query_deadline = s->query_ms ? ga_monotonic_ns() + (uint64_t)s->query_ms * 1000000u : 0;
}

/* The error of a failed query()/each() step: TIMEOUT when the progress handler stopped it. */
static int fail_query(lua_State *L, store *s) {
  s->query_deadline = 0;
  if (s->query_timed_out) {
    s->query_timed_out = 0;
    return ga_fail(L, "TIMEOUT", "query ran longer than query_timeout (%ld ms)", s->query_ms);
  }
  return ga_sqlite_fail(L, s, "query failed");
}

/* Releases a statement obtained from prepare_bound. */
static void release(store *s, sqlite3_stmt *st) {
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (!is_cached(s, st)) sqlite3_finalize(st);
}

/* Prepares one read-only statement (from the cache unless `fresh`) and binds
 * the params table at index 3. Returns the statement, or NULL after pushing
 * nil, err, code (3 values). */
static sqlite3_stmt *prepare_bound(lua_State *L, store *s, int fresh) {
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len), *tail = NULL, *bad = NULL;
  sqlite3_stmt *st = NULL;
  int nparams, i;
  s->refused = 0;
  if (fresh) {
    if (prepare_guarded(s, sql, len, 0, &st, &tail) != SQLITE_OK) st = NULL;
  } else {
    st = cached_stmt(s, sql, len, &tail);
  }
  if ((!st && sqlite3_errcode(s->db) == SQLITE_OK) || s->refused) { /* empty sql, or refused by authorize() */
    ga_fail(L, "READONLY", "query() runs one read-only statement");
    return NULL;
  }
  if (!st) {
    ga_sqlite_fail(L, s, "cannot prepare query");
    return NULL;
  }
  if (!only_space(tail) || !sqlite3_stmt_readonly(st)) {
    if (!is_cached(s, st)) sqlite3_finalize(st);
    ga_fail(L, "READONLY", "query() runs one read-only statement");
    return NULL;
  }
  nparams = sqlite3_bind_parameter_count(st);
  for (i = 1; i <= nparams && !bad; i++) {
    const char *pname = sqlite3_bind_parameter_name(st, i);
    if (lua_isnoneornil(L, 3)) {
      bad = "no parameters given";
      break;
    }
    if (pname && pname[0] != '?') ga_rawgetfield(L, 3, pname + 1);
    else lua_rawgeti(L, 3, i);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      bad = pname ? lua_pushfstring(L, "parameter %s has no value", pname)
                  : lua_pushfstring(L, "parameter #%d has no value", i);
      break;
    }
    bad = bind_value(L, st, i, lua_gettop(L));
    if (bad) bad = lua_pushfstring(L, "parameter %d: cannot bind a %s", i, bad);
    else lua_pop(L, 1);
  }
  if (bad) {
    release(s, st);
    ga_fail(L, "BIND", "%s", bad);
    return NULL;
  }
  return st;
}

/* Pushes the current row of st as a table keyed by column name. */
static void push_row(lua_State *L, sqlite3_stmt *st, int ncols) {
  int i;
  lua_createtable(L, 0, ncols);
  for (i = 0; i < ncols; i++) {
    switch (sqlite3_column_type(st, i)) {
      case SQLITE_INTEGER: {
        /* a REAL column's integral value can come out of a sorter as an
         * INTEGER (SELECT * ... ORDER BY): keep it a float, as declared */
        const char *decl = sqlite3_column_decltype(st, i);
        if (decl && strcmp(decl, "REAL") == 0) lua_pushnumber(L, (lua_Number)sqlite3_column_double(st, i));
        else ga_pushint64(L, (long long)sqlite3_column_int64(st, i));
        break;
      }
      case SQLITE_FLOAT: lua_pushnumber(L, (lua_Number)sqlite3_column_double(st, i)); break;
      case SQLITE_NULL: continue;
      default: {
        const char *p = (const char *)sqlite3_column_blob(st, i);
        lua_pushlstring(L, p ? p : "", (size_t)sqlite3_column_bytes(st, i));
      }
    }
    lua_setfield(L, -2, sqlite3_column_name(st, i));
  }
}

/* store:query(sql, params) -> { {col=value,...}, ... } | nil, err, code
 * Read-only statements only; params: an array for ?/?N, or a table keyed by
 * name for :name/@name/$name. NULL columns are absent from the row table. */
int ga_sqlite_query(lua_State *L) {
  store *s = ga_sqlite_check(L);
  sqlite3_stmt *st;
  int ncols, rc, nrows = 0;
  luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  st = prepare_bound(L, s, 0);
  if (!st) return 3;
  ncols = sqlite3_column_count(st);
  lua_newtable(L);
  query_deadline_start(s); /* one deadline for all of the call's steps */
  while ((rc = step_guarded(s, st)) == SQLITE_ROW) {
    push_row(L, st, ncols);
    lua_rawseti(L, -2, ++nrows);
  }
  if (rc != SQLITE_DONE) {
    int r = fail_query(L, s);
    release(s, st);
    return r;
  }
  s->query_deadline = 0;
  release(s, st);
  return 1;
}

/* store:each(sql, params, fn) -> rows_seen | nil, err, code
 * Streams the rows of one read-only statement to fn(row) without building a
 * result table (constant memory, for exports); fn returning false stops.
 * An error raised by fn is re-raised after the statement is released. */
int ga_sqlite_each(lua_State *L) {
  store *s = ga_sqlite_check(L);
  sqlite3_stmt *st;
  int ncols, rc;
  long long n = 0;
  luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  st = prepare_bound(L, s, 1); /* its own statement: fn may query the same store */
  if (!st) return 3;
  ncols = sqlite3_column_count(st);
  /* each step has its own deadline (fn's time between steps is not counted) */
  while ((query_deadline_start(s), rc = step_guarded(s, st)) == SQLITE_ROW) {
    int stop;
    s->query_deadline = 0; /* fn may query() the store: that call sets its own */
    lua_pushvalue(L, 4);
    push_row(L, st, ncols);
    if (lua_pcall(L, 1, 1, 0) != 0) {
      sqlite3_finalize(st);
      return lua_error(L);
    }
    n++;
    stop = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!s->db) { /* fn closed the store: the statement kept it as a zombie */
      sqlite3_finalize(st);
      return luaL_error(L, "store closed during each()");
    }
    if (stop) {
      rc = SQLITE_DONE;
      break;
    }
  }
  if (rc != SQLITE_DONE) {
    int r = fail_query(L, s);
    sqlite3_finalize(st);
    return r;
  }
  s->query_deadline = 0;
  sqlite3_finalize(st);
  ga_pushint64(L, n);
  return 1;
}
