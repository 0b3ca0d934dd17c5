/* ga_store_writer.c — the SQLite store's writer backend (ga_writer_backend):
 * the writer thread's own connection to the store's file, configured as the
 * store's (journal mode, synchronous, busy timeout, length limit), and the
 * batched INSERT transaction. The thread and queue are ga_writer.c's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ga_sqlite.h"

typedef struct {
  sqlite3 *db;
  sqlite3_stmt *insert;
  ga_chain chain; /* the writer's own chain */
} sqlite_conn;

int ga_sqlite_bind_cols(sqlite3_stmt *st, int first, const ga_text *cols, int n) {
  int i, rc = SQLITE_OK;
  for (i = 0; i < n && rc == SQLITE_OK; i++) {
    if (cols[i].set) rc = sqlite3_bind_text64(st, first + i, cols[i].p, cols[i].n, SQLITE_STATIC, SQLITE_UTF8);
    else rc = sqlite3_bind_null(st, first + i);
  }
  return rc;
}

int ga_sqlite_register_chain(sqlite3 *db, ga_chain *ch) {
  sqlite3_stmt *st = NULL;
  char host[256];
  int rc;
  if (ga_chain_ensure_id(ch) != 0) return SQLITE_ERROR;
  rc = sqlite3_prepare_v2(db, "INSERT INTO chains (chain_id, host, pid) VALUES (?1, ?2, ?3)", -1, &st, NULL);
  if (gethostname(host, sizeof host) != 0) host[0] = '\0';
  host[sizeof host - 1] = '\0';
  if (rc == SQLITE_OK) rc = sqlite3_bind_text(st, 1, ch->id, 26, SQLITE_STATIC);
  if (rc == SQLITE_OK) rc = host[0] ? sqlite3_bind_text(st, 2, host, -1, SQLITE_STATIC) : sqlite3_bind_null(st, 2);
  if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 3, (sqlite3_int64)getpid());
  if (rc == SQLITE_OK) rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(db);
  sqlite3_finalize(st);
  if (rc == SQLITE_OK) ga_chain_registered(ch);
  return rc;
}

/* SQLITE_OK, or the first bind's error (a value too big): the row is then
 * refused, never stored with a NULL in its place. The row is sealed at the
 * next position of the writer's chain (taken once its INSERT went in). */
static int bind_item(sqlite3_stmt *st, const ga_writer_item *it, ga_chain *ch, ga_seal *seal) {
  ga_text cols[GA_NCOLS];
  int rc;
  ga_writer_item_cols(it, cols);
  if (ga_chain_seal(ch, cols, ga_writer_item_digests(it), seal) != 0) return SQLITE_NOMEM;
  rc = ga_sqlite_bind_cols(st, 1, cols, GA_NCOLS);
  if (rc == SQLITE_OK) rc = ga_sqlite_bind_cols(st, GA_NCOLS + 1, seal->col, GA_SEAL_NCOLS);
  return rc;
}

/* -1: worth retrying (busy, locked, I/O, disk full); -2: will not get
 * better by waiting (read-only file, corruption, not a database). */
static int sqlite_failure_kind(sqlite3 *db) {
  switch (sqlite3_errcode(db) & 0xff) {
    case SQLITE_READONLY: case SQLITE_CORRUPT: case SQLITE_NOTADB: case SQLITE_CANTOPEN:
    case SQLITE_PERM: case SQLITE_AUTH:
      return -2;
    default:
      return -1;
  }
}

/* Writes one batch in one transaction: 0 when committed, -1/-2 (see
 * sqlite_failure_kind) when nothing of it was committed. A row SQLite refuses
 * for itself (a constraint) is counted failed, freed and set to NULL in
 * `batch`, so a retry skips it. */
static int sqlite_write_batch(void *conn, ga_writer *w, ga_writer_item **batch, int n) {
  sqlite_conn *c = (sqlite_conn *)conn;
  int i, rc;
  ga_seal seal;
  if (sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
    ga_writer_error(w, "cannot begin batch", sqlite3_errmsg(c->db));
    return sqlite_failure_kind(c->db);
  }
  ga_chain_begin(&c->chain);
  if (ga_chain_needs_register(&c->chain) && ga_sqlite_register_chain(c->db, &c->chain) != SQLITE_OK) {
    ga_writer_error(w, "cannot start the writer's chain", sqlite3_errmsg(c->db));
    rc = sqlite_failure_kind(c->db);
    sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
  }
  for (i = 0; i < n; i++) {
    if (!batch[i]) continue;
    rc = bind_item(c->insert, batch[i], &c->chain, &seal);
    if (rc != SQLITE_OK) {
      sqlite3_clear_bindings(c->insert);
      ga_writer_refuse(w, batch, i, sqlite3_errstr(rc));
      continue;
    }
    rc = sqlite3_step(c->insert);
    sqlite3_reset(c->insert);
    sqlite3_clear_bindings(c->insert);
    if (rc == SQLITE_DONE) {
      ga_chain_taken(&c->chain, &seal);
      continue;
    }
    rc &= 0xff;
    if (rc == SQLITE_CONSTRAINT || rc == SQLITE_MISMATCH || rc == SQLITE_TOOBIG || rc == SQLITE_ERROR) {
      ga_writer_refuse(w, batch, i, sqlite3_errmsg(c->db));
      continue;
    }
    ga_writer_error(w, "batch interrupted", sqlite3_errmsg(c->db));
    rc = sqlite_failure_kind(c->db);
    sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
  }
  if (c->chain.pend_seq == c->chain.seq) {
    /* every row was refused: nothing to commit, and a chain registered
     * without a row would read as one whose rows were deleted */
    sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
    return 0;
  }
  if (sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
    ga_writer_error(w, "cannot commit batch", sqlite3_errmsg(c->db));
    rc = sqlite_failure_kind(c->db);
    sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
  }
  ga_chain_commit(&c->chain);
  return 0;
}

static void sqlite_close(void *conn) {
  sqlite_conn *c = (sqlite_conn *)conn;
  if (!c) return;
  sqlite3_finalize(c->insert);
  sqlite3_close_v2(c->db);
  ga_chain_free(&c->chain);
  free(c);
}

static const ga_writer_backend sqlite_backend = {sqlite_write_batch, sqlite_close, 1};

ga_writer *ga_sqlite_writer_start(const ga_sqlite_writer_conf *conf, const ga_writer_opts *o, char *err,
                                  size_t errlen) {
  static const char *const syncs[] = {"OFF", "NORMAL", "FULL", "EXTRA"};
  sqlite_conn *c = (sqlite_conn *)calloc(1, sizeof *c);
  char jsql[64], ssql[64];
  if (!c) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  ga_chain_init(&c->chain);
  if (sqlite3_open_v2(conf->path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI, NULL) !=
      SQLITE_OK) {
    snprintf(err, errlen, "writer cannot open '%s': %s", conf->path,
             c->db ? sqlite3_errmsg(c->db) : "out of memory");
    goto fail;
  }
  sqlite3_busy_timeout(c->db, (int)conf->busy_timeout_ms);
  if (conf->length_limit > 0) sqlite3_limit(c->db, SQLITE_LIMIT_LENGTH, (int)conf->length_limit);
  /* the store's journal mode, not WAL: the store set it on the file already
   * (a no-op here for WAL; rollback-journal modes are per connection) */
  snprintf(jsql, sizeof jsql, "PRAGMA journal_mode=%s", conf->journal_mode);
  snprintf(ssql, sizeof ssql, "PRAGMA synchronous=%s", syncs[conf->synchronous & 3]);
  if (sqlite3_exec(c->db, jsql, NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_exec(c->db, ssql, NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_prepare_v3(c->db, conf->insert_sql, -1, SQLITE_PREPARE_PERSISTENT, &c->insert, NULL) != SQLITE_OK) {
    snprintf(err, errlen, "writer cannot prepare '%s': %s", conf->path, sqlite3_errmsg(c->db));
    goto fail;
  }
  return ga_writer_start_backend(&sqlite_backend, c, o, err, errlen);
fail:
  sqlite_close(c);
  return NULL;
}
