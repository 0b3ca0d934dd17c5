/* ga_pg_conn.c — the PostgreSQL store's connection: settings shared by a
 * store and its writer, connect and reconnect with backoff, error messages
 * as one line that never holds the password, the URL without its password,
 * the store userdata (open, close, url, tostring, the driver table) and
 * core.pg_open. A lost connection is re-established in sync and async mode. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ga_pg.h"

/* Every session: UTC text timestamps, ISO dates, shortest exact floats, hex bytea. */
static const char SQL_SETUP[] =
    "SET TimeZone TO 'UTC'; SET DateStyle TO 'ISO, YMD'; SET IntervalStyle TO 'postgres';"
    " SET extra_float_digits TO 1; SET bytea_output TO 'hex'";

static char *dupstr(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = (char *)malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

/* ---- messages: one line, never a password ---- */

/* Copies msg into out as one line (newlines and tabs folded into spaces,
 * trimmed) with every occurrence of the password replaced by "***". */
void pg_clean_message(const pgcfg *c, const char *msg, char *out, size_t outlen) {
  size_t o = 0, pwlen = c && c->password ? strlen(c->password) : 0;
  int space = 0;
  if (outlen == 0) return;
  if (!msg) msg = "unknown error";
  while (*msg == ' ' || *msg == '\n' || *msg == '\t' || *msg == '\r') msg++;
  while (*msg && o + 1 < outlen) {
    if (pwlen && strncmp(msg, c->password, pwlen) == 0) {
      const char *stars = "***";
      while (*stars && o + 1 < outlen) out[o++] = *stars++;
      msg += pwlen;
      space = 0;
      continue;
    }
    if (*msg == '\n' || *msg == '\t' || *msg == '\r' || *msg == ' ') {
      space = 1;
      msg++;
      continue;
    }
    if (space && o > 0 && o + 2 < outlen) out[o++] = ' ';
    space = 0;
    out[o++] = *msg++;
  }
  out[o] = '\0';
}

int pg_state_is(const PGresult *r, const char *prefix) {
  const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  return st && strncmp(st, prefix, strlen(prefix)) == 0;
}

/* Writes the error of r (or of the connection) into err; returns its code:
 * CONNECT (the connection is gone), READONLY, CONSTRAINT or SQL. */
const char *pg_error(PGconn *conn, const PGresult *r, const pgcfg *c, char *err, size_t errlen) {
  const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
  if (!msg && r && *PQresultErrorMessage(r)) msg = PQresultErrorMessage(r);
  if (!msg) msg = PQerrorMessage(conn);
  pg_clean_message(c, msg, err, errlen);
  if (PQstatus(conn) != CONNECTION_OK || pg_state_is(r, "08") || pg_state_is(r, "57P")) return "CONNECT";
  if (pg_state_is(r, "25006")) return "READONLY";
  if (pg_state_is(r, "23")) return "CONSTRAINT";
  return "SQL";
}

/* Errors that say nothing about the rows: the batch is retried later. */
int pg_retryable(PGconn *conn, const PGresult *r) {
  return PQstatus(conn) != CONNECTION_OK || pg_state_is(r, "08") || pg_state_is(r, "40") || pg_state_is(r, "53") ||
         pg_state_is(r, "57") || pg_state_is(r, "58") || pg_state_is(r, "55P03");
}

/* Runs a statement without parameters or rows. 0, or -1 with err set. */
int pg_exec_ok(PGconn *conn, const pgcfg *c, const char *sql, char *err, size_t errlen) {
  PGresult *r = PQexec(conn, sql);
  int ok = r && (PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK);
  if (!ok) pg_error(conn, r, c, err, errlen);
  PQclear(r);
  return ok ? 0 : -1;
}

/* ---- the URL ---- */

/* The URL without a password: "user:secret@" loses ":secret", and a
 * password=... query parameter is dropped. */
static char *redact_url(const char *url) {
  size_t n = strlen(url), i, o = 0;
  char *out = (char *)malloc(n + 1);
  const char *auth = strstr(url, "://"), *end, *at = NULL, *colon = NULL, *q;
  if (!out) return NULL;
  if (!auth) {
    memcpy(out, url, n + 1);
    return out;
  }
  auth += 3;
  end = auth + strcspn(auth, "/?");
  for (q = auth; q < end; q++)
    if (*q == '@') at = q;
  if (at)
    for (q = auth; q < at; q++)
      if (*q == ':') {
        colon = q;
        break;
      }
  for (i = 0; i < n;) {
    const char *p = url + i;
    if (colon && p == colon) { /* skip ":password" up to the '@' */
      i = (size_t)(at - url);
      continue;
    }
    if (p >= end && (*p == '?' || *p == '&') && strncmp(p + 1, "password=", 9) == 0) {
      size_t skip = 1 + strcspn(p + 1, "&");
      if (*p == '?' && p[skip] == '&') { /* keep the '?' for the next parameter */
        out[o++] = '?';
        skip++;
      }
      i += skip;
      continue;
    }
    out[o++] = url[i++];
  }
  out[o] = '\0';
  return out;
}

static void cfg_free(pgcfg *c) {
  free(c->url);
  free(c->display);
  free(c->password);
  free(c->schema);
  c->url = c->display = c->password = c->schema = NULL;
}

/* Session settings, after every (re)connect. */
static int setup(PGconn *conn, const pgcfg *c, char *err, size_t errlen) {
  ga_buf b;
  int rc;
  ga_buf_init(&b);
  ga_buf_addstr(&b, SQL_SETUP);
  if (c->readonly) ga_buf_addstr(&b, "; SET default_transaction_read_only TO on");
  if (c->schema) {
    char *id = PQescapeIdentifier(conn, c->schema, strlen(c->schema));
    if (!id) {
      ga_buf_free(&b);
      pg_clean_message(c, PQerrorMessage(conn), err, errlen);
      return -1;
    }
    ga_buf_addstr(&b, "; SET search_path TO ");
    ga_buf_addstr(&b, id);
    PQfreemem(id);
  }
  ga_buf_addc(&b, '\0');
  if (b.oom) {
    ga_buf_free(&b);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  rc = pg_exec_ok(conn, c, b.buf, err, errlen);
  ga_buf_free(&b);
  return rc;
}

/* A library prints nothing: notices (IF NOT EXISTS, ...) are dropped. */
static void quiet(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

/* A new, set-up connection, or NULL with err set. The URL's own parameters
 * win over connect_timeout; client_encoding is always UTF8. */
PGconn *pg_connect(const pgcfg *c, char *err, size_t errlen) {
  static const char *const keys[] = {"connect_timeout", "fallback_application_name", "dbname", "client_encoding",
                                     NULL};
  char timeout[24];
  const char *vals[5];
  PGconn *conn;
  snprintf(timeout, sizeof timeout, "%ld", c->connect_timeout_s);
  vals[0] = timeout;
  vals[1] = "genaudit";
  vals[2] = c->url;
  vals[3] = "UTF8";
  vals[4] = NULL;
  conn = PQconnectdbParams(keys, vals, 1);
  if (!conn) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  if (PQstatus(conn) != CONNECTION_OK) {
    pg_clean_message(c, PQerrorMessage(conn), err, errlen);
    PQfinish(conn);
    return NULL;
  }
  PQsetNoticeProcessor(conn, quiet, NULL);
  if (setup(conn, c, err, errlen) != 0) {
    PQfinish(conn);
    return NULL;
  }
  return conn;
}

/* Re-establishes a lost connection: PQreset, then backoff from 50 ms
 * doubling to 1 s, for up to budget_ms. 0 when connected, -1 with err. */
int pg_reconnect(PGconn *conn, const pgcfg *c, long budget_ms, char *err, size_t errlen) {
  uint64_t start = ga_monotonic_ns();
  long backoff = 50;
  for (;;) {
    long elapsed;
    PQreset(conn);
    if (PQstatus(conn) == CONNECTION_OK) {
      if (setup(conn, c, err, errlen) == 0) return 0;
    } else {
      pg_clean_message(c, PQerrorMessage(conn), err, errlen);
    }
    elapsed = (long)((ga_monotonic_ns() - start) / 1000000u);
    if (elapsed + backoff > budget_ms) return -1;
    ga_sleep_ns((uint64_t)backoff * 1000000u);
    if (backoff < 1000) backoff *= 2;
  }
}

/* ---- the store ---- */

pgstore *pg_check_store(lua_State *L) {
  pgstore *s = (pgstore *)luaL_checkudata(L, 1, PG_MT);
  if (!s->conn) luaL_error(L, "attempt to use a closed store");
  return s;
}

void pg_qentry_free(qentry *e) {
  free(e->key);
  free(e->types);
  memset(e, 0, sizeof *e);
}

/* After a reconnect the server has none of our prepared statements. */
static void pg_forget_statements(pgstore *s) {
  int i;
  for (i = 0; i < QCACHE; i++) pg_qentry_free(&s->q[i]);
  s->insert_ready = 0;
}

static void store_close_impl(pgstore *s) {
  ga_writer_stop(s->base.writer); /* drains the queue: nothing acknowledged is dropped */
  s->base.writer = NULL;
  pg_forget_statements(s);
  if (s->conn) PQfinish(s->conn);
  s->conn = NULL;
  s->each_depth = 0;
  ga_chain_free(&s->chain);
  cfg_free(&s->cfg);
}

static void close_base(ga_store_base *b) { store_close_impl((pgstore *)b); }

static void describe(lua_State *L, ga_store_base *b) {
  pgstore *s = (pgstore *)b;
  if (!s->conn) lua_pushliteral(L, "genaudit.pg_store (closed)");
  else lua_pushfstring(L, "genaudit.pg_store (%s)", s->cfg.display);
}

/* store:url() -> the URL without its password */
static int l_store_url(lua_State *L) {
  pgstore *s = pg_check_store(L);
  lua_pushstring(L, s->cfg.display);
  return 1;
}

/* Makes sure the connection is up, re-establishing a lost one. 0, or pushes
 * nil, "CONNECT: ...", "CONNECT" and returns 3. */
int pg_ensure(lua_State *L, pgstore *s) {
  char err[512];
  if (PQstatus(s->conn) == CONNECTION_OK) return 0;
  if (s->each_depth > 0) return ga_fail(L, "CONNECT", "connection lost while each() was reading");
  if (pg_reconnect(s->conn, &s->cfg, s->cfg.reconnect_ms, err, sizeof err) != 0)
    return ga_fail(L, "CONNECT", "connection to %s lost and not re-established: %s", s->cfg.display, err);
  pg_forget_statements(s);
  s->reconnects++;
  return 0;
}

int pg_fail_result(lua_State *L, pgstore *s, const PGresult *r, const char *what) {
  char err[512];
  const char *code = pg_error(s->conn, r, &s->cfg, err, sizeof err);
  return ga_fail(L, code, "%s: %s", what, err);
}

/* core.pg_open(url, opts) -> store | nil, err, code
 * opts: connect_timeout (s, 10), reconnect_timeout (ms, 5000), lock_timeout
 * (ms, 30000; 0: none), query_timeout (ms, 0: none), schema, readonly. The URL is libpq's (postgresql://
 * or postgres://). */
static int l_pg_open(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  long long ct = 10, rt = 5000, lt = 30000, qt = 0;
  const char *schema = NULL;
  int readonly = 0;
  pgstore *s;
  char err[512];
  PQconninfoOption *opts;
  char *perr = NULL;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "connect_timeout");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &ct) || ct < 1 || ct > 3600))
      return luaL_argerror(L, 2, "connect_timeout must be an integer number of seconds (1-3600)");
    lua_getfield(L, 2, "reconnect_timeout");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &rt) || rt < 0 || rt > 3600000))
      return luaL_argerror(L, 2, "reconnect_timeout must be an integer number of ms (0-3600000)");
    lua_getfield(L, 2, "lock_timeout");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &lt) || lt < 0 || lt > 3600000))
      return luaL_argerror(L, 2, "lock_timeout must be an integer number of ms (0-3600000)");
    lua_getfield(L, 2, "query_timeout");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &qt) || qt < 0 || qt > 3600000))
      return luaL_argerror(L, 2, "query_timeout must be an integer number of ms (0-3600000)");
    lua_pop(L, 2);
    lua_getfield(L, 2, "schema");
    if (!lua_isnil(L, -1)) {
      size_t n = 0;
      if (lua_type(L, -1) == LUA_TSTRING) schema = lua_tolstring(L, -1, &n);
      if (!schema || n == 0 || n > 63 || strlen(schema) != n)
        return luaL_argerror(L, 2, "schema must be a name of 1 to 63 bytes");
    }
    lua_getfield(L, 2, "readonly");
    readonly = lua_toboolean(L, -1);
    lua_pop(L, 4); /* opts still holds the schema's string */
  }
  /* closed userdata first, then the resources: nothing leaks if Lua raises */
  s = (pgstore *)ga_newuserdata(L, sizeof *s);
  memset(s, 0, sizeof *s);
  ga_chain_init(&s->chain);
  luaL_getmetatable(L, PG_MT);
  lua_setmetatable(L, -2);
  s->cfg.readonly = readonly;
  s->base.readonly = readonly;
  s->cfg.connect_timeout_s = (long)ct;
  s->cfg.reconnect_ms = (long)rt;
  s->cfg.lock_ms = (long)lt;
  s->cfg.query_ms = (long)qt;
  s->cfg.url = dupstr(url);
  s->cfg.display = redact_url(url);
  s->cfg.schema = schema ? dupstr(schema) : NULL;
  if (!s->cfg.url || !s->cfg.display || (schema && !s->cfg.schema)) {
    cfg_free(&s->cfg);
    return ga_fail(L, "NOMEM", "out of memory");
  }
  opts = PQconninfoParse(url, &perr);
  if (!opts) {
    pg_clean_message(NULL, perr ? perr : "out of memory", err, sizeof err);
    PQfreemem(perr);
    lua_pushfstring(L, "invalid PostgreSQL URL %s: %s", s->cfg.display, err);
    cfg_free(&s->cfg);
    return ga_fail(L, "OPEN", "%s", lua_tostring(L, -1));
  }
  {
    PQconninfoOption *o;
    for (o = opts; o->keyword; o++)
      if (strcmp(o->keyword, "password") == 0 && o->val && *o->val) s->cfg.password = dupstr(o->val);
    PQconninfoFree(opts);
  }
  s->conn = pg_connect(&s->cfg, err, sizeof err);
  if (!s->conn) {
    lua_pushfstring(L, "cannot connect to %s: %s", s->cfg.display, err);
    cfg_free(&s->cfg);
    return ga_fail(L, "CONNECT", "%s", lua_tostring(L, -1));
  }
  return 1;
}

/* store:stats() adds the PostgreSQL-only `reconnects` count. */
static void pg_stats(lua_State *L, ga_store_base *b) {
  ga_pushint64(L, (long long)((pgstore *)b)->reconnects);
  lua_setfield(L, -2, "reconnects");
}

static ga_store_base *check_base(lua_State *L) { return &pg_check_store(L)->base; }

void ga_open_pg(lua_State *L) {
  static const luaL_Reg methods[] = {{"migrate", pg_migrate},
                                     {"schema_version", pg_schema_version},
                                     {"query", pg_query},
                                     {"each", pg_each},
                                     {"url", l_store_url},
                                     {"purge", pg_purge},
                                     {NULL, NULL}};
  static const ga_store_driver driver = {PG_MT,        methods,      check_base, close_base, describe,
                                         pg_check_row, pg_id_stored, pg_insert,  pg_start_writer, pg_stats,
                                         pg_put_script};
  ga_store_newclass(L, &driver);
  luaL_newmetatable(L, BOX_MT);
  lua_pushcfunction(L, pg_box_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_pg_open);
  lua_setfield(L, -2, "pg_open");
  lua_pushinteger(L, PQlibVersion());
  lua_setfield(L, -2, "libpq_version");
}
