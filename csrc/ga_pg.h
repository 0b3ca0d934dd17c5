/* ga_pg.h — private to the PostgreSQL store's files: the structs and what
 * one file calls in another.
 *   ga_pg_conn.c    connection, reconnect, messages without the password,
 *                   the URL's redaction, the store userdata, core.pg_open
 *   ga_pg_sql.c     placeholder translation (plain C) and the first-word check
 *   ga_pg_rows.c    parameter binding, results as Lua rows, query() and each()
 *   ga_pg_migrate.c migrate() and schema_version()
 *   ga_pg_writer.c  what PostgreSQL can store of a row, persist()'s INSERT,
 *                   the async writer's COPY backend */
#ifndef GA_PG_H
#define GA_PG_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <libpq-fe.h>
#include "ga_store.h"

#define PG_MT "genaudit.pg_store"
#define BOX_MT "genaudit.pg_box"
#define QCACHE 16
#define MAX_PARAMS 65535
#define FETCH_ROWS 256

/* Built-in type OIDs (pg_type_d.h is a server header, not in libpq-dev). */
enum {
  OID_BOOL = 16, OID_BYTEA = 17, OID_INT8 = 20, OID_INT2 = 21, OID_INT4 = 23, OID_TEXT = 25,
  OID_FLOAT4 = 700, OID_FLOAT8 = 701, OID_TIMESTAMP = 1114, OID_TIMESTAMPTZ = 1184, OID_NUMERIC = 1700
};

#define SQL_UNLOCK_ALL "SELECT pg_advisory_unlock_all()" /* after every query()/each() */
#define INSERT_NAME "ga_insert"
#define INSERT_REG_NAME "ga_insert_reg" /* the INSERT with its chain's own row (a chain's first) */

/* ---- connection settings, shared by a store and its writer ---- */
typedef struct {
  char *url;      /* as given: may hold a password, never shown */
  char *display;  /* the URL without its password */
  char *password; /* scrubbed from every message; NULL when none */
  char *schema;   /* opts.schema: created by migrate(), first on search_path */
  int readonly;
  long connect_timeout_s;
  long reconnect_ms; /* how long to keep trying to re-establish a lost connection */
  long lock_ms;      /* how long migrate() waits for the migration lock (0: no limit) */
  long query_ms;     /* opts.query_timeout: statement_timeout of query()/each() (0: none) */
} pgcfg;

typedef struct {
  char *key; /* translated SQL, '\0', one type letter per parameter */
  size_t keylen;
  Oid *types; /* as prepared (after the text fallback) */
  int nparams;
  unsigned id; /* prepared as "ga_q<id>" */
  uint64_t used;
} qentry;

typedef struct {
  ga_store_base base; /* first: writer, persisted, ulid, readonly (ga_store.h) */
  PGconn *conn; /* NULL once closed */
  pgcfg cfg;
  qentry q[QCACHE];
  uint64_t tick;
  unsigned next_id;
  int insert_ready;
  ga_chain chain; /* the hash chain sync persists append to (the async writer has its own) */
  int each_depth; /* open each() calls: a read-only transaction is open */
  uint64_t reconnects;
} pgstore;

/* ---- boxes: PGresults and malloc'd blocks owned by the Lua GC, so a raise
 * (a memory error, an error in each()'s fn) frees them ---- */
typedef struct {
  PGresult *res;
  void *mem;
  void (*release)(void *); /* frees mem; NULL: free() */
} box;


/* One parameter slot: a name (offset and length in the source SQL, its
 * prefix included) or positional (nlen 0). */
/* One parameter slot: a name (offset and length in the source SQL, its
 * prefix included) or positional (nlen 0). */
typedef struct {
  size_t off, nlen;
} slot;

typedef struct {
  ga_buf sql;  /* the translated statement */
  slot *slots; /* [n] */
  int n, cap;
  int statements; /* non-empty statements seen */
  char err[128];  /* set when the text cannot be translated */
} xlat;

/* ---- ga_pg_conn.c ---- */
/* Copies msg into out as one line with every occurrence of the password
 * replaced by "***". c may be NULL. */
void pg_clean_message(const pgcfg *c, const char *msg, char *out, size_t outlen);
int pg_state_is(const PGresult *r, const char *prefix); /* SQLSTATE starts with prefix */
/* Writes the error of r (or of the connection) into err; returns its code:
 * CONNECT (the connection is gone), READONLY, CONSTRAINT or SQL. */
const char *pg_error(PGconn *conn, const PGresult *r, const pgcfg *c, char *err, size_t errlen);
int pg_retryable(PGconn *conn, const PGresult *r); /* says nothing about the rows: retry later */
int pg_exec_ok(PGconn *conn, const pgcfg *c, const char *sql, char *err, size_t errlen); /* 0, or -1 + err */
PGconn *pg_connect(const pgcfg *c, char *err, size_t errlen); /* new, set up; NULL + err */
/* Re-establishes a lost connection with backoff for up to budget_ms; 0 or -1 + err. */
int pg_reconnect(PGconn *conn, const pgcfg *c, long budget_ms, char *err, size_t errlen);
pgstore *pg_check_store(lua_State *L); /* the open store at index 1, or raises */
void pg_qentry_free(qentry *e);
/* Makes sure the connection is up, re-establishing a lost one. 0, or pushes
 * nil, "CONNECT: ...", "CONNECT" and returns 3. */
int pg_ensure(lua_State *L, pgstore *s);
int pg_fail_result(lua_State *L, pgstore *s, const PGresult *r, const char *what); /* the triple for r */

/* ---- ga_pg_sql.c: no lua_State ---- */
/* Translates one statement's placeholders (?, ?N, $N, :name, @name, $name)
 * into $N, leaving every literal, quoted identifier, comment and dollar
 * quote byte for byte; x->statements counts the statements, and with one the
 * output stops at its end. 0, or -1 with x->err. x->sql is NUL-terminated;
 * free x with ga_pg_xlat_free either way. */
int ga_pg_translate(const char *src, size_t len, xlat *x);
void ga_pg_xlat_free(xlat *x);
/* False when the (translated, NUL-terminated) statement's first word starts
 * a command query() refuses (transaction control, SET, COPY, DDL, DML...). */
int ga_pg_plain_read(const char *q);

/* ---- ga_pg_rows.c ---- */
int pg_box_gc(lua_State *L); /* the box metatable's __gc */
int pg_query(lua_State *L);  /* store:query(sql, params) */
int pg_purge(lua_State *L);  /* store:purge(older_than, what) (ga_pg_writer.c) */
int pg_each(lua_State *L);   /* store:each(sql, params, fn) */

/* ---- ga_pg_migrate.c ---- */
int pg_migrate(lua_State *L);        /* store:migrate(list) */
int pg_schema_version(lua_State *L); /* store:schema_version() */

/* ---- ga_pg_writer.c: the driver's write half (ga_store.h) ---- */
int pg_check_row(ga_store_base *b, const ga_row *row, char *err, size_t errlen);
int pg_id_stored(lua_State *L, ga_store_base *b, const char *id26);
int pg_insert(lua_State *L, ga_store_base *b, const ga_row *row);
int pg_put_script(lua_State *L, ga_store_base *b, const ga_script *sc);
ga_writer *pg_start_writer(ga_store_base *b, ga_writer_opts *o, const char **code, char *err, size_t errlen);

#endif
