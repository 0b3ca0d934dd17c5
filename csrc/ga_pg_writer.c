/* ga_pg_writer.c — writing snapshots to PostgreSQL: what its text can
 * hold of a row (checked before anything is written or queued), persist()'s
 * prepared INSERT in sync mode (retried once with the same id over a lost
 * connection), and the async writer's backend (ga_writer.c's thread): a COPY
 * per batch, row by row in savepoints when the COPY was refused or a lost
 * connection left its commit unknown. A snapshot is reported persisted only
 * once its transaction committed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ga_pg.h"

#define SNAPSHOT_COLUMNS                                                                          \
  "id, created_at, org_id, user_id, platform, template_id, template_version, status, content, " \
  "error, final_system_prompt, final_user_prompt, token_metrics, performance_metrics, "          \
  "repair_metrics, request_params, replay_of, drafts, final_system_prompt_sha256, "              \
  "final_user_prompt_sha256, content_sha256, drafts_sha256, chain_id, chain_seq, prev_hash, record_hash"
#define SNAPSHOT_VALUES                                                                                   \
  " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22," \
  " $23, $24, $25, $26)"
#define NPARAMS (GA_NCOLS + GA_SEAL_NCOLS)
static const char SQL_INSERT[] = "INSERT INTO generation_snapshots (" SNAPSHOT_COLUMNS ") VALUES" SNAPSHOT_VALUES;
/* $23 is chain_id; $27, $28 the chain's host and pid */
static const char SQL_INSERT_REG[] =
    "WITH c AS (INSERT INTO chains (chain_id, host, pid) VALUES ($23, $27, $28::integer))"
    " INSERT INTO generation_snapshots (" SNAPSHOT_COLUMNS ") VALUES" SNAPSHOT_VALUES;
static const char SQL_COPY[] = "COPY generation_snapshots (" SNAPSHOT_COLUMNS ") FROM STDIN";
static const char SQL_ID_STORED[] = "SELECT 1 FROM generation_snapshots WHERE id = $1";
static const char SQL_REGISTER[] = "INSERT INTO chains (chain_id, host, pid) VALUES ($1, $2, $3::integer)";
static const char SQL_HEAD[] =
    "SELECT chain_seq, record_hash, EXISTS (SELECT 1 FROM chains WHERE chain_id = $1)"
    " FROM (SELECT 0::bigint AS chain_seq, NULL::text AS record_hash UNION ALL"
    " (SELECT chain_seq, record_hash FROM generation_snapshots WHERE chain_id = $1"
    " ORDER BY chain_seq DESC LIMIT 1)) h ORDER BY chain_seq DESC LIMIT 1";
static const char SQL_PUT_SCRIPT[] =
    "INSERT INTO scripts (digest, path, encoding, source) VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO NOTHING";

/* ---- rows: what PostgreSQL text can hold ---- */

/* Bytes of a btree index entry's column that always fit: PostgreSQL refuses
 * an entry over ~2700 bytes (1/3 of a page), which compression may or may
 * not bring under. org_id and template_id are indexed
 * (migrations/postgresql/0004). */
#define PG_INDEXED_MAX 2000
/* A field (and one message) is at most 1 GB in PostgreSQL. */
#define PG_FIELD_MAX (1073741823 - 1024)

/* The row's text as PostgreSQL can store it: no NUL bytes (TEXT cannot hold
 * them; json's ->> cannot extract \u0000), valid UTF-8; and what the
 * table's columns and indexes would refuse at insert (async mode must not
 * acknowledge such a row): a field over 1 GB, an indexed column over
 * PG_INDEXED_MAX bytes, a repair_count over the integer column's range.
 * 0, or -1 with err. */
static int pg_row_check(const ga_row *row, char *err, size_t errlen) {
  int i;
  size_t total = 0;
  long long rc;
  for (i = 0; i < GA_NCOLS; i++) {
    const ga_text *t = &row->col[i];
    size_t n = ga_row_len(row, i); /* a deferred document's bound: persist() rechecks its JSON */
    if (!t->set) continue;
    total += n;
    if (n > PG_FIELD_MAX || total > PG_FIELD_MAX) {
      snprintf(err, errlen, "%s: the row is over PostgreSQL's limit of 1 GB per field and message", ga_col_names[i]);
      return -1;
    }
    if ((i == GA_COL_ORG_ID || i == GA_COL_TEMPLATE_ID) && t->n > PG_INDEXED_MAX) {
      snprintf(err, errlen, "%s: %zu bytes are over the %d an indexed column holds", ga_col_names[i], t->n,
               PG_INDEXED_MAX);
      return -1;
    }
  }
  rc = row->repair_count; /* as written into repair_metrics */
  if (rc > 2147483647) {
    snprintf(err, errlen, "repair_info.repair_count: over the range of PostgreSQL's integer column (2147483647)");
    return -1;
  }
  for (i = 0; i < GA_NCOLS; i++) {
    const ga_text *t = &row->col[i];
    int json = i == GA_COL_TOKEN_METRICS || i == GA_COL_PERFORMANCE_METRICS || i == GA_COL_REPAIR_METRICS ||
               i == GA_COL_REQUEST_PARAMS || i == GA_COL_DRAFTS;
    unsigned tf = ga_row_json_flags(row, i); /* a deferred document: what its JSON will hold */
    if (!t->set) continue;
    if (json && row->deferred) {
      if (tf & GA_TAPE_NUL) {
        snprintf(err, errlen, "%s: PostgreSQL text cannot contain NUL bytes", ga_col_names[i]);
        return -1;
      }
      if (tf & GA_TAPE_BADUTF8) {
        snprintf(err, errlen, "%s: PostgreSQL text must be valid UTF-8", ga_col_names[i]);
        return -1;
      }
      continue;
    }
    if (memchr(t->p, '\0', t->n) || (json && ga_json_has_nul_escape(t->p, t->n))) {
      snprintf(err, errlen, "%s: PostgreSQL text cannot contain NUL bytes", ga_col_names[i]);
      return -1;
    }
    if (!ga_utf8_valid(t->p, t->n)) { /* PostgreSQL's rules are Unicode's */
      snprintf(err, errlen, "%s: PostgreSQL text must be valid UTF-8", ga_col_names[i]);
      return -1;
    }
  }
  return 0;
}

/* The INSERT's parameters: the row's columns, its seal's, and (for
 * SQL_INSERT_REG) the chain's host and pid. created_at and chain_seq as text
 * (parsed as timestamptz, bigint), every other column in binary format,
 * which for text and json is the bytes themselves (exact length). */
typedef struct {
  const char *values[NPARAMS + 2];
  int lengths[NPARAMS + 2], formats[NPARAMS + 2];
  char created[32], host[256], pid[24];
} pgparams;

static void insert_params(const ga_text *cols, const ga_seal *seal, pgparams *pp) {
  const char **values = pp->values;
  int *lengths = pp->lengths, *formats = pp->formats, i;
  char *created = pp->created;
  for (i = 0; i < NPARAMS; i++) {
    const ga_text *t = i < GA_NCOLS ? &cols[i] : &seal->col[i - GA_NCOLS];
    values[i] = t->set ? t->p : NULL;
    lengths[i] = t->set ? (int)t->n : 0;
    formats[i] = 1;
  }
  formats[GA_NCOLS + GA_SEAL_CHAIN_SEQ] = 0;
  values[GA_NCOLS + GA_SEAL_CHAIN_SEQ] = seal->seq; /* NUL-terminated */
  if (cols[GA_COL_CREATED_AT].set) {
    size_t n = cols[GA_COL_CREATED_AT].n < 31 ? cols[GA_COL_CREATED_AT].n : 31;
    memcpy(created, cols[GA_COL_CREATED_AT].p, n);
    created[n] = '\0';
    values[GA_COL_CREATED_AT] = created;
  }
  formats[GA_COL_CREATED_AT] = 0;
}

/* The chain's host and pid, after the row's parameters (SQL_INSERT_REG)
 * or alone at $2, $3 (SQL_REGISTER: values[0] set by the caller). */
static void host_params(pgparams *pp, int at) {
  if (gethostname(pp->host, sizeof pp->host) != 0) pp->host[0] = '\0';
  pp->host[sizeof pp->host - 1] = '\0';
  snprintf(pp->pid, sizeof pp->pid, "%ld", (long)getpid());
  pp->values[at] = pp->host[0] ? pp->host : NULL;
  pp->values[at + 1] = pp->pid;
  pp->lengths[at] = pp->lengths[at + 1] = 0;
  pp->formats[at] = pp->formats[at + 1] = 0;
}

/* Reads the chain's head back from the database (after a lost connection
 * left a commit unknown). 0, or -1 with err. */
static int chain_resync(PGconn *conn, const pgcfg *cfg, ga_chain *ch, char *err, size_t errlen) {
  const char *v[1];
  PGresult *r;
  int ok;
  if (!ch->id[0]) { /* no row sealed yet: nothing to read */
    ch->stale = 0;
    return 0;
  }
  v[0] = ch->id;
  r = PQexecParams(conn, SQL_HEAD, 1, NULL, v, NULL, NULL, 0);
  ok = r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
  if (!ok) pg_error(conn, r, cfg, err, errlen);
  else
    ga_chain_resync(ch, strtoll(PQgetvalue(r, 0, 0), NULL, 10), PQgetisnull(r, 0, 1) ? NULL : PQgetvalue(r, 0, 1),
                    PQgetvalue(r, 0, 2)[0] == 't');
  PQclear(r);
  return ok ? 0 : -1;
}

/* Whether the row with this id (26 bytes) is in: 1, 0, -1 (cannot tell). */
static int id_in(PGconn *conn, const char *id26) {
  const char *v[1];
  char id[27];
  PGresult *r;
  int in;
  memcpy(id, id26, 26);
  id[26] = '\0';
  v[0] = id;
  r = PQexecParams(conn, SQL_ID_STORED, 1, NULL, v, NULL, NULL, 0);
  in = r && PQresultStatus(r) == PGRES_TUPLES_OK ? PQntuples(r) > 0 : -1;
  PQclear(r);
  return in;
}

/* ---- scripts ---- */

/* store:put_script() for PostgreSQL (the digest and encoding are
 * ga_store_common.c's, so path and source are UTF-8 without NUL): one
 * INSERT ... ON CONFLICT DO NOTHING on the store's own connection,
 * committed before it returns 0 — in async mode too, so a script is durable
 * before the row naming it is queued. Idempotent, so a connection lost
 * meanwhile is re-established and the INSERT simply sent again. 0, or the
 * error triple and 3. */
int pg_put_script(lua_State *L, ga_store_base *b, const ga_script *sc) {
  pgstore *s = (pgstore *)b;
  const char *values[4];
  int lengths[4], formats[4] = {1, 1, 1, 1}, attempt;
  if (s->each_depth > 0)
    return ga_fail(L, "BUSY", "cannot store a script while each() reads from this store (use another store object)");
  if (sc->pathlen > PG_FIELD_MAX || sc->sourcelen > PG_FIELD_MAX || sc->pathlen + sc->sourcelen > PG_FIELD_MAX)
    return ga_fail(L, "INVALID", "script: over PostgreSQL's limit of 1 GB per field and message");
  values[0] = sc->digest;
  lengths[0] = 64;
  values[1] = sc->path;
  lengths[1] = (int)sc->pathlen;
  values[2] = sc->encoding;
  lengths[2] = (int)strlen(sc->encoding);
  values[3] = sc->source;
  lengths[3] = (int)sc->sourcelen;
  for (attempt = 0;; attempt++) {
    PGresult *r;
    int rc = pg_ensure(L, s);
    if (rc != 0) return rc;
    r = PQexecParams(s->conn, SQL_PUT_SCRIPT, 4, NULL, values, lengths, formats, 0);
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
      PQclear(r);
      return 0;
    }
    if (PQstatus(s->conn) != CONNECTION_OK && attempt == 0) {
      PQclear(r);
      continue;
    }
    rc = pg_fail_result(L, s, r, "cannot store script");
    PQclear(r);
    return rc;
  }
}

/* ---- persist ---- */

/* store:persist(row) -> id | nil, err, code. Checks the whole row first;
 * then one INSERT, committed before the id is returned. A connection lost
 * meanwhile is re-established and the INSERT retried once with the same id:
 * a duplicate of that id then means the first attempt committed. */
int pg_check_row(ga_store_base *b, const ga_row *row, char *err, size_t errlen) {
  (void)b;
  return pg_row_check(row, err, errlen);
}

/* Whether a row with this id is stored already (async mode, a row that
 * brings its id): 1, 0, or -1 when it cannot be asked now (inside each(), or
 * the connection is down: the writer finds out). */
int pg_id_stored(lua_State *L, ga_store_base *b, const char *id26) {
  pgstore *s = (pgstore *)b;
  const char *v[1];
  char id[27];
  PGresult *r;
  int dup;
  if (s->each_depth != 0 || pg_ensure(L, s) != 0) return -1;
  memcpy(id, id26, 26);
  id[26] = '\0';
  v[0] = id;
  r = PQexecParams(s->conn, SQL_ID_STORED, 1, NULL, v, NULL, NULL, 0);
  dup = r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0;
  PQclear(r);
  return dup;
}

/* persist() in sync mode (the preamble is ga_store_common.c's): one INSERT
 * (with the chain's own row, for a chain's first snapshot), the row sealed
 * at the next position of this store's chain, committed before it returns
 * 0; else the error triple pushed and 3. A connection lost meanwhile is
 * re-established once: if the row is in, the lost attempt committed;
 * otherwise the chain's head is read back and the row sealed again. */
int pg_insert(lua_State *L, ga_store_base *b, const ga_row *row) {
  pgstore *s = (pgstore *)b;
  pgparams pp;
  ga_seal seal;
  char err[512];
  int attempt, in, resealed = 0;
  if (s->each_depth > 0)
    return ga_fail(L, "BUSY", "cannot persist while each() reads from this store (use another store object)");
  for (attempt = 0;; attempt++) {
    PGresult *r;
    int rc = pg_ensure(L, s), reg;
    if (rc != 0) return rc;
    if (s->chain.stale && chain_resync(s->conn, &s->cfg, &s->chain, err, sizeof err) != 0)
      return ga_fail(L, "CONNECT", "cannot read the store's chain: %s", err);
    if (!s->insert_ready) {
      int i;
      for (i = 0; i < 2; i++) {
        r = PQprepare(s->conn, i ? INSERT_REG_NAME : INSERT_NAME, i ? SQL_INSERT_REG : SQL_INSERT,
                      i ? NPARAMS + 2 : NPARAMS, NULL);
        if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
          if (PQstatus(s->conn) != CONNECTION_OK && attempt == 0) break;
          if (PQstatus(s->conn) != CONNECTION_OK) s->chain.stale = 1;
          rc = pg_fail_result(L, s, r, "cannot prepare insert (is the store migrated?)");
          PQclear(r);
          return rc;
        }
        PQclear(r);
      }
      if (i < 2) {
        PQclear(r);
        s->chain.stale = 1;
        continue;
      }
      s->insert_ready = 1;
    }
    ga_chain_begin(&s->chain);
    if (ga_chain_seal(&s->chain, row->col, NULL, &seal) != 0) return ga_fail(L, "NOMEM", "cannot seal the row");
    insert_params(row->col, &seal, &pp);
    reg = ga_chain_needs_register(&s->chain);
    if (reg) host_params(&pp, NPARAMS);
    r = PQexecPrepared(s->conn, reg ? INSERT_REG_NAME : INSERT_NAME, reg ? NPARAMS + 2 : NPARAMS, pp.values,
                       pp.lengths, pp.formats, 0);
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
      PQclear(r);
      if (reg) ga_chain_registered(&s->chain);
      ga_chain_taken(&s->chain, &seal);
      ga_chain_commit(&s->chain);
      return 0;
    }
    if (PQstatus(s->conn) != CONNECTION_OK) {
      /* the commit is unknown, and with it the chain's head: read back
       * before any later row, whatever happens to this one */
      PQclear(r);
      s->chain.stale = 1;
      rc = pg_ensure(L, s);
      if (rc != 0) return rc;
      in = id_in(s->conn, row->col[GA_COL_ID].p);
      if (attempt > 0 && in == 0)
        return ga_fail(L, "CONNECT", "connection lost twice while persisting; the row was not stored");
      if (in == 1) { /* the lost attempt had committed */
        if (chain_resync(s->conn, &s->cfg, &s->chain, err, sizeof err) != 0)
          return ga_fail(L, "CONNECT", "cannot read the store's chain: %s", err);
        return 0;
      }
      if (in < 0) return ga_fail(L, "CONNECT", "connection lost while persisting; the row may be stored");
      continue;
    }
    if (!resealed && pg_state_is(r, "23505")) {
      /* the chain's position or registration is taken: this store's idea of
       * its head is behind the database's (never expected); read it back
       * and seal the row again, once */
      const char *cn = PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME);
      if (cn && (strcmp(cn, "snapshots_chain") == 0 || strcmp(cn, "chains_pkey") == 0)) {
        PQclear(r);
        resealed = 1;
        s->chain.stale = 1;
        attempt--; /* not a connection attempt */
        continue;
      }
    }
    rc = pg_fail_result(L, s, r, "cannot persist snapshot");
    PQclear(r);
    return rc;
  }
}

/* store:purge(older_than, what) -> rows purged | nil, err, code: the
 * SQLite store's (ga_store.c): in one transaction, the purge recorded (with
 * the count of rows it covers), then the rows' payloads set to NULL and
 * purged_by set. older_than is UTC 'YYYY-MM-DD HH:MM:SS'. */
int pg_purge(lua_State *L) {
#define PURGE_COND                                                                                     \
  " WHERE created_at < ($1::timestamp AT TIME ZONE 'UTC') AND purged_at IS NULL AND record_hash IS NOT NULL"
  static const char rec[] = "INSERT INTO purges (older_than, what, rows) SELECT $1::text, $2::text, count(*)"
                            " FROM generation_snapshots" PURGE_COND " RETURNING purge_id, rows";
  static const char upd[] =
      "UPDATE generation_snapshots SET final_system_prompt = NULL, final_user_prompt = NULL,"
      " content = NULL, drafts = NULL, purged_at = now(), purged_by = $2::bigint" PURGE_COND;
#undef PURGE_COND
  pgstore *s = pg_check_store(L);
  size_t n, wn;
  const char *cutoff = luaL_checklstring(L, 2, &n);
  const char *what = luaL_checklstring(L, 3, &wn);
  const char *v[2];
  char err[512], id[32];
  long long rows = 0;
  PGresult *r;
  int rc;
  if (!ga_utc_seconds_valid(cutoff, n)) return ga_fail(L, "INVALID", "purge: older_than must be 'YYYY-MM-DD HH:MM:SS' (UTC), not in the future");
  if (wn != 8 || memcmp(what, "payloads", 8) != 0) return ga_fail(L, "INVALID", "purge: what must be 'payloads'");
  if (s->each_depth > 0) return ga_fail(L, "BUSY", "cannot purge while each() reads from this store");
  rc = pg_ensure(L, s);
  if (rc != 0) return rc;
  if (pg_exec_ok(s->conn, &s->cfg, "BEGIN", err, sizeof err) != 0) return ga_fail(L, "CONNECT", "cannot purge: %s", err);
  v[0] = cutoff;
  v[1] = what;
  r = PQexecParams(s->conn, rec, 2, NULL, v, NULL, NULL, 0);
  if (!r || PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) goto failed;
  snprintf(id, sizeof id, "%s", PQgetvalue(r, 0, 0));
  rows = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
  PQclear(r);
  v[1] = id;
  r = PQexecParams(s->conn, upd, 2, NULL, v, NULL, NULL, 0);
  if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) goto failed;
  if (strtoll(PQcmdTuples(r), NULL, 10) != rows) { /* a concurrent purge took some: start again */
    PQclear(r);
    PQclear(PQexec(s->conn, "ROLLBACK"));
    return ga_fail(L, "BUSY", "purge: another purge ran at the same time; try again");
  }
  PQclear(r);
  if (pg_exec_ok(s->conn, &s->cfg, "COMMIT", err, sizeof err) != 0) return ga_fail(L, "CONNECT", "cannot purge: %s", err);
  lua_pushinteger(L, (lua_Integer)rows);
  return 1;
failed:
  rc = pg_fail_result(L, s, r, "cannot purge");
  PQclear(r);
  if (PQstatus(s->conn) == CONNECTION_OK) PQclear(PQexec(s->conn, "ROLLBACK"));
  return rc;
}

/* ---- async mode: the writer thread's PostgreSQL backend ---- */

typedef struct {
  PGconn *conn;
  const pgcfg *cfg; /* the store's: it outlives the writer */
  ga_chain chain;   /* the writer's own chain */
  int insert_ready;
  int uncertain; /* a batch's commit may have happened unseen: its ids may be in already */
  char *copybuf; /* reused across batches */
  size_t copycap;
} pgwriter;

static void pgw_close(void *conn) {
  pgwriter *c = (pgwriter *)conn;
  if (!c) return;
  if (c->conn) PQfinish(c->conn);
  ga_chain_free(&c->chain);
  free(c->copybuf);
  free(c);
}

/* The bytes COPY's text format escapes, as the letter after the backslash. */
static const char COPY_ESCAPE[256] = {['\\'] = '\\', ['\t'] = 't', ['\n'] = 'n', ['\r'] = 'r'};

/* Appends one column in COPY's text format: \N for NULL; backslash, tab,
 * newline and CR escaped (the row was checked: no NUL bytes). The runs
 * between escapes are found through COPY_ESCAPE (one load per byte). */
static void copy_field(ga_buf *b, const ga_text *t) {
  size_t i, run = 0;
  const unsigned char *p = (const unsigned char *)t->p;
  if (!t->set) {
    ga_buf_add(b, "\\N", 2);
    return;
  }
  for (i = 0; i < t->n; i++) {
    char e = COPY_ESCAPE[p[i]];
    if (!e) continue;
    ga_buf_add(b, t->p + run, i - run);
    ga_buf_addc(b, '\\');
    ga_buf_addc(b, e);
    run = i + 1;
  }
  ga_buf_add(b, t->p + run, t->n - run);
}

/* The batch as one COPY (its own transaction). 0 committed; -1 retry
 * later; -2 the server refused the data (a row's fault, perhaps). */
/* Writes the chain's own row in the open transaction. 0, or -1 (retry) / -2. */
static int pgw_register(pgwriter *c, ga_writer *w) {
  pgparams pp;
  char err[512];
  PGresult *r;
  int rc = 0;
  pp.values[0] = c->chain.id;
  pp.lengths[0] = 0;
  pp.formats[0] = 0;
  host_params(&pp, 1);
  r = PQexecParams(c->conn, SQL_REGISTER, 3, NULL, pp.values, pp.lengths, pp.formats, 0);
  if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
    pg_error(c->conn, r, c->cfg, err, sizeof err);
    ga_writer_error(w, "cannot start the writer's chain", err);
    rc = pg_retryable(c->conn, r) ? -1 : -2;
  } else {
    ga_chain_registered(&c->chain);
  }
  PQclear(r);
  return rc;
}

/* The batch as one COPY, in one transaction with the chain's own row when
 * the batch starts the chain. 0 committed; -1 retry later; -2 the server
 * refused the data (a row's fault, perhaps). */
static int pgw_copy(pgwriter *c, ga_writer *w, ga_writer_item **batch, int n) {
  PGresult *r;
  ga_buf b;
  ga_seal seal;
  char err[512];
  int i, rc = 0;
  ga_chain_begin(&c->chain);
  if (pg_exec_ok(c->conn, c->cfg, "BEGIN", err, sizeof err) != 0) {
    ga_writer_error(w, "cannot begin batch", err);
    return -1;
  }
  if (ga_chain_ensure_id(&c->chain) != 0) rc = -1;
  if (rc == 0 && ga_chain_needs_register(&c->chain)) rc = pgw_register(c, w);
  if (rc != 0) {
    if (PQstatus(c->conn) == CONNECTION_OK) PQclear(PQexec(c->conn, "ROLLBACK"));
    return rc;
  }
  r = PQexec(c->conn, SQL_COPY);
  if (!r || PQresultStatus(r) != PGRES_COPY_IN) {
    pg_error(c->conn, r, c->cfg, err, sizeof err);
    ga_writer_error(w, "cannot start COPY", err);
    rc = pg_retryable(c->conn, r) ? -1 : -2;
    PQclear(r);
    if (PQstatus(c->conn) == CONNECTION_OK) PQclear(PQexec(c->conn, "ROLLBACK"));
    return rc;
  }
  PQclear(r);
  ga_buf_init(&b);
  b.buf = c->copybuf; /* reuse the last batch's buffer */
  b.cap = c->copycap;
  for (i = 0; i < n && rc == 0; i++) {
    ga_text cols[GA_NCOLS];
    int k;
    if (!batch[i]) continue;
    ga_writer_item_cols(batch[i], cols);
    if (ga_chain_seal(&c->chain, cols, ga_writer_item_digests(batch[i]), &seal) != 0) {
      rc = -1;
      break;
    }
    ga_chain_taken(&c->chain, &seal); /* the COPY takes every row or none */
    b.len = 0;
    for (k = 0; k < GA_NCOLS; k++) {
      if (k) ga_buf_addc(&b, '\t');
      copy_field(&b, &cols[k]);
    }
    for (k = 0; k < GA_SEAL_NCOLS; k++) {
      ga_buf_addc(&b, '\t');
      copy_field(&b, &seal.col[k]);
    }
    ga_buf_addc(&b, '\n');
    if (b.oom || PQputCopyData(c->conn, b.buf, (int)b.len) != 1) rc = -1;
  }
  c->copybuf = b.buf;
  c->copycap = b.cap;
  if (b.oom) { /* ga_buf dropped nothing, but stopped growing: start afresh next time */
    free(c->copybuf);
    c->copybuf = NULL;
    c->copycap = 0;
  }
  if (PQputCopyEnd(c->conn, rc == 0 ? NULL : "genaudit: batch abandoned") != 1) rc = -1;
  r = PQgetResult(c->conn);
  if (rc == 0 && (!r || PQresultStatus(r) != PGRES_COMMAND_OK)) {
    pg_error(c->conn, r, c->cfg, err, sizeof err);
    ga_writer_error(w, "batch refused", err);
    rc = pg_retryable(c->conn, r) ? -1 : -2;
  }
  PQclear(r);
  while ((r = PQgetResult(c->conn)) != NULL) PQclear(r);
  if (rc == 0 && pg_exec_ok(c->conn, c->cfg, "COMMIT", err, sizeof err) != 0) {
    ga_writer_error(w, "cannot commit batch", err);
    rc = -1;
  } else if (rc != 0 && PQstatus(c->conn) == CONNECTION_OK) {
    PQclear(PQexec(c->conn, "ROLLBACK"));
  }
  if (rc == 0) ga_chain_commit(&c->chain);
  if (rc == -1 && PQstatus(c->conn) != CONNECTION_OK) c->uncertain = 1;
  return rc;
}

/* The batch row by row in one transaction, each row in a savepoint: a row
 * the server refuses is counted failed, the others are written. While
 * uncertain, a duplicate of a row's own id means it is in already. */
static int pgw_rows(pgwriter *c, ga_writer *w, ga_writer_item **batch, int n) {
  char err[512], err2[256];
  int i;
  if (!c->insert_ready) {
    PGresult *r = PQprepare(c->conn, INSERT_NAME, SQL_INSERT, NPARAMS, NULL);
    int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) {
      pg_error(c->conn, r, c->cfg, err, sizeof err);
      ga_writer_error(w, "cannot prepare insert", err);
    }
    PQclear(r);
    if (!ok) return -1;
    c->insert_ready = 1;
  }
  if (pg_exec_ok(c->conn, c->cfg, "BEGIN", err, sizeof err) != 0) {
    ga_writer_error(w, "cannot begin batch", err);
    return -1;
  }
  ga_chain_begin(&c->chain);
  snprintf(err, sizeof err, "no random source for the chain's id");
  if (ga_chain_ensure_id(&c->chain) != 0) goto interrupted;
  if (ga_chain_needs_register(&c->chain) && pgw_register(c, w) != 0) goto interrupted;
  for (i = 0; i < n; i++) {
    ga_text cols[GA_NCOLS];
    pgparams pp;
    ga_seal seal;
    PGresult *r;
    if (!batch[i]) continue;
    if (pg_exec_ok(c->conn, c->cfg, "SAVEPOINT ga_row", err, sizeof err) != 0) goto interrupted;
    ga_writer_item_cols(batch[i], cols);
    if (c->uncertain && id_in(c->conn, cols[GA_COL_ID].p) == 1) { /* committed by the attempt whose answer was lost */
      if (pg_exec_ok(c->conn, c->cfg, "RELEASE SAVEPOINT ga_row", err, sizeof err) != 0) goto interrupted;
      continue;
    }
    if (ga_chain_seal(&c->chain, cols, ga_writer_item_digests(batch[i]), &seal) != 0) goto interrupted;
    insert_params(cols, &seal, &pp);
    r = PQexecPrepared(c->conn, INSERT_NAME, NPARAMS, pp.values, pp.lengths, pp.formats, 0);
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
      PQclear(r);
      if (pg_exec_ok(c->conn, c->cfg, "RELEASE SAVEPOINT ga_row", err, sizeof err) != 0) goto interrupted;
      ga_chain_taken(&c->chain, &seal);
      continue;
    }
    pg_error(c->conn, r, c->cfg, err, sizeof err);
    if (pg_retryable(c->conn, r)) {
      PQclear(r);
      goto interrupted;
    }
    if (pg_exec_ok(c->conn, c->cfg, "ROLLBACK TO SAVEPOINT ga_row", err2, sizeof err2) != 0) {
      PQclear(r);
      goto interrupted;
    }
    PQclear(r);
    ga_writer_refuse(w, batch, i, err);
  }
  if (c->chain.pend_seq == c->chain.seq && !c->chain.registered) {
    /* no row went in: a chain registered without a row would read as one
     * whose rows were deleted */
    PQclear(PQexec(c->conn, "ROLLBACK"));
    return 0;
  }
  if (pg_exec_ok(c->conn, c->cfg, "COMMIT", err, sizeof err) != 0) {
    ga_writer_error(w, "cannot commit batch", err);
    if (PQstatus(c->conn) != CONNECTION_OK) c->uncertain = 1;
    return -1;
  }
  ga_chain_commit(&c->chain);
  return 0;
interrupted:
  ga_writer_error(w, "batch interrupted", err);
  if (PQstatus(c->conn) == CONNECTION_OK) PQclear(PQexec(c->conn, "ROLLBACK"));
  return -1;
}

/* One batch: COPY, or row by row when the COPY was refused or a lost
 * connection left it unknown whether the last attempt committed. 0 when
 * committed, -1 to retry (the writer backs off). */
static int pgw_write_batch(void *conn, ga_writer *w, ga_writer_item **batch, int n) {
  pgwriter *c = (pgwriter *)conn;
  char err[512];
  int rc;
  if (PQstatus(c->conn) != CONNECTION_OK) {
    if (pg_reconnect(c->conn, c->cfg, 0, err, sizeof err) != 0) {
      ga_writer_error(w, "cannot reconnect", err);
      return -1;
    }
    c->insert_ready = 0;
  }
  if (c->uncertain && chain_resync(c->conn, c->cfg, &c->chain, err, sizeof err) != 0) {
    ga_writer_error(w, "cannot read the writer's chain", err);
    return -1;
  }
  if (!c->uncertain) {
    rc = pgw_copy(c, w, batch, n);
    if (rc != -2) return rc;
  }
  rc = pgw_rows(c, w, batch, n);
  if (rc == 0) c->uncertain = 0;
  return rc;
}

static const ga_writer_backend pg_backend = {pgw_write_batch, pgw_close, 0};

/* start_async() for PostgreSQL: the writer's own connection, its INSERT
 * prepared (for the row-by-row path), then the thread, which COPYs the rows
 * in batches of one transaction each. */
ga_writer *pg_start_writer(ga_store_base *b, ga_writer_opts *o, const char **code, char *err, size_t errlen) {
  pgstore *s = (pgstore *)b;
  char msg[512];
  pgwriter *c;
  PGresult *r;
  c = (pgwriter *)calloc(1, sizeof *c);
  if (!c) {
    *code = "NOMEM";
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  c->cfg = &s->cfg;
  ga_chain_init(&c->chain);
  c->conn = pg_connect(&s->cfg, msg, sizeof msg);
  if (!c->conn) {
    pgw_close(c);
    snprintf(err, errlen, "writer cannot connect to %s: %s", s->cfg.display, msg);
    return NULL;
  }
  r = PQprepare(c->conn, INSERT_NAME, SQL_INSERT, NPARAMS, NULL);
  if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
    pg_error(c->conn, r, &s->cfg, msg, sizeof msg);
    PQclear(r);
    pgw_close(c);
    snprintf(err, errlen, "writer cannot prepare insert (is the store migrated?): %s", msg);
    return NULL;
  }
  PQclear(r);
  c->insert_ready = 1;
  return ga_writer_start_backend(&pg_backend, c, o, err, errlen);
}
