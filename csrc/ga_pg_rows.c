/* ga_pg_rows.c — the PostgreSQL store's reads: query parameters bound
 * from Lua values, results turned into Lua rows (integers, numbers, bools,
 * bytea, UTC timestamps as the SQLite store writes them), the per-connection
 * cache of prepared statements, store:query() in a READ ONLY transaction and
 * store:each() through a cursor; boxes that hand PGresults and blocks to the
 * Lua GC so a raise frees them. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ga_pg.h"


static int is_digit(char c) { return c >= '0' && c <= '9'; }

int pg_box_gc(lua_State *L) {
  box *b = (box *)luaL_checkudata(L, 1, BOX_MT);
  PQclear(b->res);
  if (b->mem) {
    if (b->release) b->release(b->mem);
    else free(b->mem);
  }
  b->res = NULL;
  b->mem = NULL;
  return 0;
}

static box *pg_newbox(lua_State *L) {
  box *b = (box *)ga_newuserdata(L, sizeof *b);
  b->res = NULL;
  b->mem = NULL;
  b->release = NULL;
  luaL_getmetatable(L, BOX_MT);
  lua_setmetatable(L, -2);
  return b;
}

static void pg_box_set(box *b, PGresult *r) {
  PQclear(b->res);
  b->res = r;
}

typedef struct {
  int n;
  Oid *types;
  const char **values;
  int *lengths, *formats;
  char (*num)[32];
  char *sig; /* one letter per parameter: i f b s n; the cache key's tail */
} params;

static params *params_alloc(int n) {
  size_t m = (size_t)(n > 0 ? n : 1);
  size_t size = sizeof(params) + m * (sizeof(Oid) + sizeof(char *) + 2 * sizeof(int) + 32 + 1) + 16;
  params *p = (params *)calloc(1, size);
  char *q;
  if (!p) return NULL;
  q = (char *)(p + 1);
  p->n = n;
  p->values = (const char **)(void *)q;
  q += m * sizeof(char *);
  p->types = (Oid *)(void *)q;
  q += m * sizeof(Oid);
  p->lengths = (int *)(void *)q;
  q += m * sizeof(int);
  p->formats = (int *)(void *)q;
  q += m * sizeof(int);
  p->num = (char(*)[32])(void *)q;
  q += m * 32;
  p->sig = q;
  return p;
}

/* Binds the Lua value at vidx to parameter i (0-based). NULL, or an error text. */
static const char *bind_value(lua_State *L, params *p, int i, int vidx) {
  long long iv;
  p->formats[i] = 0;
  p->lengths[i] = 0;
  switch (ga_store_param(L, vidx, &iv)) {
    case GA_PARAM_INT:
      snprintf(p->num[i], 32, "%lld", iv);
      p->types[i] = OID_INT8;
      p->sig[i] = 'i';
      p->values[i] = p->num[i];
      return NULL;
    case GA_PARAM_FLOAT: {
      double d = (double)lua_tonumber(L, vidx);
      if (d != d) snprintf(p->num[i], 32, "NaN");
      else if (d > 1.7976931348623157e308) snprintf(p->num[i], 32, "Infinity");
      else if (d < -1.7976931348623157e308) snprintf(p->num[i], 32, "-Infinity");
      else snprintf(p->num[i], 32, "%.17g", d);
      p->types[i] = OID_FLOAT8;
      p->sig[i] = 'f';
      p->values[i] = p->num[i];
      return NULL;
    }
    case GA_PARAM_TEXT: {
      size_t n;
      const char *s = lua_tolstring(L, vidx, &n);
      if (memchr(s, '\0', n)) return "PostgreSQL text cannot contain NUL bytes";
      p->types[i] = 0; /* let the statement decide; text where it cannot */
      p->sig[i] = 's';
      p->values[i] = s;
      return NULL;
    }
    case GA_PARAM_BOOL:
      p->types[i] = OID_BOOL;
      p->sig[i] = 'b';
      p->values[i] = lua_toboolean(L, vidx) ? "t" : "f";
      return NULL;
    case GA_PARAM_NULL:
      p->types[i] = 0;
      p->sig[i] = 'n';
      p->values[i] = NULL;
      return NULL;
    default: return luaL_typename(L, vidx);
  }
}

/* Looks up and binds every parameter of x from the table at pidx. The values
 * stay on the Lua stack (their strings must live until the statement ran).
 * Returns NULL, or an error message (pushed on the stack). */
static const char *bind_all(lua_State *L, int pidx, const char *src, const xlat *x, params *p) {
  int i;
  const char *bad;
  if (x->n == 0) return NULL;
  if (pidx == 0) return "no parameters given";
  luaL_checkstack(L, x->n + 8, "too many parameters");
  for (i = 0; i < x->n; i++) {
    const slot *sl = &x->slots[i];
    if (sl->nlen > 0) {
      lua_pushlstring(L, src + sl->off + 1, sl->nlen - 1);
      lua_gettable(L, pidx);
    } else {
      lua_rawgeti(L, pidx, i + 1);
    }
    if (lua_isnil(L, -1)) {
      if (sl->nlen > 0) {
        lua_pushlstring(L, src + sl->off, sl->nlen);
        return lua_pushfstring(L, "parameter %s has no value", lua_tostring(L, -1));
      }
      return lua_pushfstring(L, "parameter #%d has no value", i + 1);
    }
    bad = bind_value(L, p, i, lua_gettop(L));
    if (bad) return lua_pushfstring(L, "parameter %d: cannot bind a %s", i + 1, bad);
  }
  return NULL;
}

/* ---- query and each ---- */

/* "2024-02-29 23:59:58.12+00" (timestamptz in UTC) or the same without the
 * zone (timestamp) -> "2024-02-29 23:59:58.120", the SQLite store's text.
 * Anything else (BC, infinity, another zone) is pushed unchanged. */
static void push_timestamp(lua_State *L, const char *v, size_t n, int with_zone) {
  static const char shape[] = "dddd-dd-dd dd:dd:dd";
  char out[24];
  size_t i = 0, f = 0;
  int ok = n >= 19;
  for (i = 0; ok && i < 19; i++) ok = shape[i] == 'd' ? is_digit(v[i]) : v[i] == shape[i];
  if (ok) {
    memcpy(out, v, 19);
    out[19] = '.';
    i = 19;
    if (i < n && v[i] == '.') {
      for (i++; i < n && is_digit(v[i]); i++)
        if (f < 3) out[20 + f++] = v[i];
    }
    while (f < 3) out[20 + f++] = '0';
    ok = with_zone ? (n - i == 3 && memcmp(v + i, "+00", 3) == 0) : i == n;
  }
  if (ok) lua_pushlstring(L, out, 23);
  else lua_pushlstring(L, v, n);
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* bytea in hex output ("\x00ff") -> the bytes; anything else unchanged. */
static void push_bytea(lua_State *L, const char *v, size_t n) {
  luaL_Buffer b;
  size_t i;
  if (n < 2 || v[0] != '\\' || v[1] != 'x' || n % 2 != 0) {
    lua_pushlstring(L, v, n);
    return;
  }
  luaL_buffinit(L, &b);
  for (i = 2; i + 1 < n; i += 2) {
    int hi = hexval(v[i]), lo = hexval(v[i + 1]);
    luaL_addchar(&b, (char)(hi < 0 || lo < 0 ? 0 : hi * 16 + lo));
  }
  luaL_pushresult(&b);
}

/* One column value by type: integers as integers, float4/float8/numeric as
 * numbers (a numeric with no fraction as an integer), bool as boolean,
 * bytea as bytes, timestamps as UTC text, everything else as text. */
static void push_value(lua_State *L, const PGresult *r, int row, int col) {
  const char *v = PQgetvalue(r, row, col);
  size_t n = (size_t)PQgetlength(r, row, col);
  char *end;
  switch (PQftype(r, col)) {
    case OID_INT2:
    case OID_INT4:
    case OID_INT8: {
      long long x;
      errno = 0;
      x = strtoll(v, &end, 10);
      if (errno == 0 && *end == '\0') ga_pushint64(L, x);
      else lua_pushlstring(L, v, n);
      return;
    }
    case OID_NUMERIC: {
      long long x;
      errno = 0;
      x = strtoll(v, &end, 10);
      if (errno == 0 && *end == '\0' && end != v) {
        ga_pushint64(L, x);
        return;
      }
    }
      /* fall through */
    case OID_FLOAT4:
    case OID_FLOAT8: lua_pushnumber(L, (lua_Number)strtod(v, NULL)); return;
    case OID_BOOL: lua_pushboolean(L, v[0] == 't'); return;
    case OID_BYTEA: push_bytea(L, v, n); return;
    case OID_TIMESTAMPTZ: push_timestamp(L, v, n, 1); return;
    case OID_TIMESTAMP: push_timestamp(L, v, n, 0); return;
    default: lua_pushlstring(L, v, n);
  }
}

/* Pushes row `row` of r as a table keyed by column name; NULLs absent. */
static void push_row(lua_State *L, const PGresult *r, int row) {
  int i, ncols = PQnfields(r);
  lua_createtable(L, 0, ncols);
  for (i = 0; i < ncols; i++) {
    if (PQgetisnull(r, row, i)) continue;
    push_value(L, r, row, i);
    lua_setfield(L, -2, PQfname(r, i));
  }
}

static void xlat_release(void *p) {
  ga_pg_xlat_free((xlat *)p);
  free(p);
}

/* Translates and binds the statement at index 2 with the params at index 3
 * (nil: none). On success leaves the translated SQL (at *sqlidx), two boxes
 * and the bound values on the stack and returns 0; else pushes nil, err,
 * code and returns 3. */
static int prepare_args(lua_State *L, int *sqlidx, params **po) {
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len), *bad;
  int pidx = lua_isnoneornil(L, 3) ? 0 : 3;
  box *bx = pg_newbox(L), *bp;
  xlat *x = (xlat *)calloc(1, sizeof *x);
  params *p;
  if (!x) return ga_fail(L, "NOMEM", "out of memory");
  bx->mem = x;
  bx->release = xlat_release;
  if (ga_pg_translate(sql, len, x) != 0) return ga_fail(L, strcmp(x->err, "out of memory") == 0 ? "NOMEM" : "SQL", "%s", x->err);
  if (x->statements != 1 || !ga_pg_plain_read(x->sql.buf))
    return ga_fail(L, "READONLY", "query() runs one read-only statement");
  lua_pushstring(L, x->sql.buf);
  *sqlidx = lua_gettop(L);
  bp = pg_newbox(L);
  p = params_alloc(x->n);
  if (!p) return ga_fail(L, "NOMEM", "out of memory");
  bp->mem = p;
  bad = bind_all(L, pidx, sql, x, p);
  if (bad) return ga_fail(L, "BIND", "%s", bad);
  *po = p;
  return 0;
}

/* The cached prepared statement for (sql, the parameters' types), preparing
 * it on a miss (unknown types fall back to text where PostgreSQL cannot
 * infer them). Returns the entry, or NULL with *res holding the error
 * result (or NULL for out of memory). */
static qentry *cached_stmt(pgstore *s, const char *sql, params *p, PGresult **res) {
  size_t sqllen = strlen(sql), keylen = sqllen + 1 + (size_t)p->n;
  int i, victim = 0, tries;
  qentry *e;
  char name[24];
  *res = NULL;
  for (i = 0; i < QCACHE; i++) {
    e = &s->q[i];
    if (e->key && e->keylen == keylen && memcmp(e->key, sql, sqllen + 1) == 0 &&
        memcmp(e->key + sqllen + 1, p->sig, (size_t)p->n) == 0) {
      e->used = ++s->tick;
      return e;
    }
    if (s->q[i].used < s->q[victim].used) victim = i;
  }
  e = &s->q[victim];
  if (e->key) { /* evict: the server forgets it too */
    snprintf(name, sizeof name, "DEALLOCATE ga_q%u", e->id);
    PQclear(PQexec(s->conn, name));
    pg_qentry_free(e);
  }
  e->key = (char *)malloc(keylen);
  e->types = (Oid *)malloc(sizeof(Oid) * (size_t)(p->n > 0 ? p->n : 1));
  if (!e->key || !e->types) {
    pg_qentry_free(e);
    return NULL;
  }
  memcpy(e->key, sql, sqllen + 1);
  memcpy(e->key + sqllen + 1, p->sig, (size_t)p->n);
  e->keylen = keylen;
  e->nparams = p->n;
  memcpy(e->types, p->types, sizeof(Oid) * (size_t)p->n);
  e->id = ++s->next_id;
  snprintf(name, sizeof name, "ga_q%u", e->id);
  for (tries = 0; tries < 2; tries++) {
    PGresult *r = PQprepare(s->conn, name, sql, p->n, e->types);
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
      PQclear(r);
      e->used = ++s->tick;
      return e;
    }
    if (tries == 0 && (pg_state_is(r, "42P18") || pg_state_is(r, "42P08"))) { /* no type to infer: strings are text */
      int k, changed = 0;
      for (k = 0; k < p->n; k++)
        if (e->types[k] == 0) e->types[k] = OID_TEXT, changed = 1;
      if (changed) {
        PQclear(r);
        continue;
      }
    }
    *res = r;
    break;
  }
  pg_qentry_free(e);
  return NULL;
}

/* After BEGIN READ ONLY of query()/each(): their statements run at most
 * query_timeout (the transaction's own statement_timeout). 0, or -1 with err. */
static int set_query_timeout(PGconn *conn, const pgcfg *c, char *err, size_t errlen) {
  char sql[64];
  if (c->query_ms <= 0) return 0;
  snprintf(sql, sizeof sql, "SET LOCAL statement_timeout = %ld", c->query_ms);
  return pg_exec_ok(conn, c, sql, err, errlen);
}

/* True when a query()/each() statement was cancelled by query_timeout. */
static int query_timed_out(const pgcfg *c, const PGresult *r) { return c->query_ms > 0 && pg_state_is(r, "57014"); }

/* store:query(sql, params) -> { {col=value,...}, ... } | nil, err, code
 * One read-only statement, run in a READ ONLY transaction (a savepoint
 * inside each()); params: an array for ?/?N/$N, or a table keyed by name for
 * :name/@name/$name. NULL columns are absent. A lost connection is
 * re-established and the statement run once more (it only reads). */
int pg_query(lua_State *L) {
  pgstore *s = pg_check_store(L);
  params *p;
  const char *sql;
  box *b;
  int r, attempt, nrows, i, sqlidx;
  luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  if ((r = prepare_args(L, &sqlidx, &p)) != 0) return r;
  sql = lua_tostring(L, sqlidx);
  b = pg_newbox(L);
  for (attempt = 0;; attempt++) {
    PGresult *res = NULL;
    qentry *e;
    char name[24], err[512];
    int inner = s->each_depth > 0, ok;
    if ((r = pg_ensure(L, s)) != 0) return r;
    /* inside each()'s transaction even a failed prepare must not abort it */
    if (inner && pg_exec_ok(s->conn, &s->cfg, "SAVEPOINT ga_query", err, sizeof err) != 0)
      return ga_fail(L, PQstatus(s->conn) != CONNECTION_OK ? "CONNECT" : "SQL", "cannot begin query: %s", err);
    e = cached_stmt(s, sql, p, &res);
    if (!e) {
      if (!res) r = ga_fail(L, "NOMEM", "out of memory");
      else pg_box_set(b, res);
      if (inner && PQstatus(s->conn) == CONNECTION_OK)
        PQclear(PQexec(s->conn, "ROLLBACK TO SAVEPOINT ga_query; RELEASE SAVEPOINT ga_query"));
      if (!res) return r;
      if (PQstatus(s->conn) != CONNECTION_OK && attempt == 0 && !inner) continue;
      return pg_fail_result(L, s, res, "cannot prepare query");
    }
    snprintf(name, sizeof name, "ga_q%u", e->id);
    if (!inner && (pg_exec_ok(s->conn, &s->cfg, "BEGIN READ ONLY", err, sizeof err) != 0 ||
                   set_query_timeout(s->conn, &s->cfg, err, sizeof err) != 0)) {
      if (PQstatus(s->conn) != CONNECTION_OK && attempt == 0) continue;
      return ga_fail(L, PQstatus(s->conn) != CONNECTION_OK ? "CONNECT" : "SQL", "cannot begin query: %s", err);
    }
    res = PQexecPrepared(s->conn, name, p->n, p->values, NULL, NULL, 0);
    pg_box_set(b, res);
    ok = res && (PQresultStatus(res) == PGRES_TUPLES_OK || PQresultStatus(res) == PGRES_COMMAND_OK);
    /* nothing the query did survives it: the transaction is rolled back, and
     * session-level advisory locks it took (pg_advisory_lock(), which a
     * rollback keeps: the migration lock among them) are released */
    if (PQstatus(s->conn) == CONNECTION_OK)
      PQclear(PQexec(s->conn, !inner ? "ROLLBACK; " SQL_UNLOCK_ALL
                              : ok   ? "RELEASE SAVEPOINT ga_query; " SQL_UNLOCK_ALL
                                     : "ROLLBACK TO SAVEPOINT ga_query; RELEASE SAVEPOINT ga_query; " SQL_UNLOCK_ALL));
    if (!ok) {
      if (PQstatus(s->conn) != CONNECTION_OK && attempt == 0 && !inner) continue;
      if (pg_state_is(res, "0A000") && attempt == 0) { /* "cached plan must not change result type" */
        snprintf(name, sizeof name, "DEALLOCATE ga_q%u", e->id);
        PQclear(PQexec(s->conn, name));
        pg_qentry_free(e);
        continue;
      }
      if (pg_state_is(res, "25006")) return ga_fail(L, "READONLY", "query() runs one read-only statement");
      if (query_timed_out(&s->cfg, res))
        return ga_fail(L, "TIMEOUT", "query ran longer than query_timeout (%ld ms)", s->cfg.query_ms);
      return pg_fail_result(L, s, res, "query failed");
    }
    break;
  }
  nrows = PQntuples(b->res);
  lua_createtable(L, nrows, 0);
  for (i = 0; i < nrows; i++) {
    push_row(L, b->res, i);
    lua_rawseti(L, -2, i + 1);
  }
  pg_box_set(b, NULL);
  return 1;
}

/* Ends each()'s transaction, or its savepoint when nested. */
static void end_each(pgstore *s, int depth) {
  char sql[160];
  if (s->conn && PQstatus(s->conn) == CONNECTION_OK) {
    if (depth == 1) snprintf(sql, sizeof sql, "ROLLBACK; " SQL_UNLOCK_ALL);
    else snprintf(sql, sizeof sql, "ROLLBACK TO SAVEPOINT ga_each_%d; RELEASE SAVEPOINT ga_each_%d; " SQL_UNLOCK_ALL,
                  depth, depth);
    PQclear(PQexec(s->conn, sql));
  }
  if (s->each_depth > 0) s->each_depth--;
}

/* store:each(sql, params, fn) -> rows_seen | nil, err, code
 * Streams the rows of one read-only query to fn(row) through a cursor in a
 * READ ONLY transaction, FETCH_ROWS at a time (constant memory); fn
 * returning false stops. fn may query() the same store; persisting to it
 * meanwhile returns BUSY. An error raised by fn is re-raised after the
 * transaction is ended. */
int pg_each(lua_State *L) {
  pgstore *s = pg_check_store(L);
  params *p;
  box *b;
  qentry *e;
  PGresult *res = NULL;
  const char *decl;
  char sql[64], err[512];
  int r, depth, i, sqlidx, stop = 0;
  long long seen = 0;
  luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  lua_settop(L, 4);
  if ((r = prepare_args(L, &sqlidx, &p)) != 0) return r;
  if ((r = pg_ensure(L, s)) != 0) return r;
  b = pg_newbox(L);
  depth = s->each_depth + 1;
  if (depth == 1) snprintf(sql, sizeof sql, "BEGIN READ ONLY");
  else snprintf(sql, sizeof sql, "SAVEPOINT ga_each_%d", depth);
  if (pg_exec_ok(s->conn, &s->cfg, sql, err, sizeof err) != 0)
    return ga_fail(L, PQstatus(s->conn) != CONNECTION_OK ? "CONNECT" : "SQL", "cannot begin each(): %s", err);
  s->each_depth = depth;
  if (depth == 1 && set_query_timeout(s->conn, &s->cfg, err, sizeof err) != 0) {
    end_each(s, depth);
    return ga_fail(L, PQstatus(s->conn) != CONNECTION_OK ? "CONNECT" : "SQL", "cannot begin each(): %s", err);
  }
  e = cached_stmt(s, lua_tostring(L, sqlidx), p, &res); /* checks the statement and settles its types */
  if (!e) {
    r = res ? (pg_box_set(b, res), pg_fail_result(L, s, res, "cannot prepare query")) : ga_fail(L, "NOMEM", "out of memory");
    end_each(s, depth);
    return r;
  }
  for (i = 0; i < p->n; i++) p->types[i] = e->types[i];
  decl = lua_pushfstring(L, "DECLARE ga_each_%d NO SCROLL CURSOR FOR %s", depth, lua_tostring(L, sqlidx));
  res = PQexecParams(s->conn, decl, p->n, p->types, p->values, NULL, NULL, 0);
  pg_box_set(b, res);
  if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
    /* a statement that prepares but cannot be a cursor's query writes */
    int writes = pg_state_is(res, "25006") || pg_state_is(res, "42601") || pg_state_is(res, "0A000");
    r = writes                          ? ga_fail(L, "READONLY", "query() runs one read-only statement")
        : query_timed_out(&s->cfg, res) ? ga_fail(L, "TIMEOUT", "query ran longer than query_timeout (%ld ms)",
                                                  s->cfg.query_ms)
                                        : pg_fail_result(L, s, res, "query failed");
    end_each(s, depth);
    return r;
  }
  snprintf(sql, sizeof sql, "FETCH FORWARD %d FROM ga_each_%d", FETCH_ROWS, depth);
  while (!stop) {
    int nt;
    res = PQexec(s->conn, sql);
    pg_box_set(b, res);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
      r = query_timed_out(&s->cfg, res)
              ? ga_fail(L, "TIMEOUT", "query ran longer than query_timeout (%ld ms)", s->cfg.query_ms)
              : pg_fail_result(L, s, res, "query failed");
      end_each(s, depth);
      return r;
    }
    nt = PQntuples(res);
    for (i = 0; i < nt && !stop; i++) {
      lua_pushvalue(L, 4);
      push_row(L, res, i);
      if (lua_pcall(L, 1, 1, 0) != 0) {
        pg_box_set(b, NULL);
        end_each(s, depth);
        return lua_error(L);
      }
      seen++;
      stop = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
      lua_pop(L, 1);
      if (!s->conn) { /* fn closed the store */
        pg_box_set(b, NULL);
        return luaL_error(L, "store closed during each()");
      }
    }
    if (nt < FETCH_ROWS) break;
  }
  pg_box_set(b, NULL);
  end_each(s, depth);
  ga_pushint64(L, seen);
  return 1;
}
