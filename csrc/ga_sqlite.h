/* ga_sqlite.h — private to the SQLite store's files (ga_store.c: open,
 * migrate, persist, close; ga_store_query.c: query/each under the
 * authorizer; ga_store_writer.c: the async writer's backend; ga_verify.c:
 * verify's snapshot reader and its worker thread): the store struct and what
 * one file calls in another. */
#ifndef GA_SQLITE_H
#define GA_SQLITE_H

#include <sqlite3.h>
#include "ga_store.h"

#define STORE_MT "genaudit.sqlite_store"
#define QCACHE 16

typedef struct {
  char *sql;
  size_t len;
  sqlite3_stmt *st;
  uint64_t used;
} qentry;

typedef struct {
  ga_store_base base; /* first: writer, persisted, ulid, readonly (ga_store.h) */
  sqlite3 *db; /* NULL once closed */
  sqlite3_stmt *insert;
  qentry q[QCACHE];
  uint64_t tick;
  int sync_level;     /* PRAGMA synchronous index, reused by the writer */
  int journal;        /* journal_mode index (JOURNALS), reused by the writer */
  long long length_limit; /* opts.length_limit (SQLITE_LIMIT_LENGTH), 0: SQLite's; reused by the writer */
  long busy_ms;
  uint64_t busy_t0;   /* when the current wait for a lock began (ns) */
  uint64_t deadline;  /* open(): no wait for a lock past this (ns, monotonic); 0 = none */
  uint64_t rng;       /* xorshift64 for the busy handler's jitter, never 0 */
  int guard;          /* preparing a query()/each() statement: the authorizer refuses */
  long query_ms;      /* opts.query_timeout: a query()/each() step runs at most this long; 0 = no limit */
  uint64_t query_deadline; /* the running query's (ns, monotonic); 0 = none */
  int query_timed_out;     /* the progress handler interrupted it */
  int refused;        /* the authorizer refused something while guard was set */
  ga_chain chain;     /* the hash chain sync persists append to (the async writer has its own) */
} store;

/* ---- ga_store.c ---- */
store *ga_sqlite_check(lua_State *L); /* the open store at index 1, or raises */
/* nil, "CODE: what: sqlite message", CODE for the connection's last error. */
int ga_sqlite_fail(lua_State *L, store *s, const char *what);

/* genaudit_sha256 and genaudit_record_hash on db, computing with h (a
 * hasher the thread that steps db's statements owns). SQLITE_OK or an error. */
int ga_sqlite_register_hashes(sqlite3 *db, ga_hasher *h);

/* ---- ga_verify.c ---- */
int ga_sqlite_snapshot_reader(lua_State *L); /* store:snapshot_reader(opts) */
void ga_sqlite_open_reader(lua_State *L);    /* registers the reader's class */

/* ---- ga_store_writer.c ---- */
/* Binds n text columns (unset: NULL) from parameter `first` on. SQLITE_OK or the first error. */
int ga_sqlite_bind_cols(sqlite3_stmt *st, int first, const ga_text *cols, int n);
/* Writes the chain's own row (chains: id, host, pid) in the open
 * transaction and marks it pending-registered. SQLITE_OK or an error code. */
int ga_sqlite_register_chain(sqlite3 *db, ga_chain *ch);

/* ---- ga_store_query.c ---- */
/* The connection's authorizer: refuses all but reads while s->guard is set. */
int ga_sqlite_authorize(void *arg, int action, const char *a1, const char *a2, const char *db, const char *trig);
/* The progress handler (installed with opts.query_timeout): interrupts a
 * query()/each() statement past its deadline. */
int ga_sqlite_query_progress(void *arg);
int ga_sqlite_query(lua_State *L); /* store:query(sql, params) */
int ga_sqlite_each(lua_State *L);  /* store:each(sql, params, fn) */

/* ga_sqlagg.c: genaudit_percentiles, genaudit_sum_ordered on db */
int ga_sqlite_register_aggregates(sqlite3 *db);

#endif
