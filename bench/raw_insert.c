/* bench/raw_insert.c — the raw-C baseline of bench/persist_sync.lua and
 * bench/async.lua: the least a program can do to store the same snapshots,
 * sealed as genaudit seals them (README, "Tamper evidence").
 *
 *   raw_insert SRC DST ROWS BATCH [MODE]
 *
 * Reads the column values of the rows already in SRC (a genaudit store the
 * benchmark filled through persist_generation, so the bytes are exactly the
 * ones genaudit wrote) and inserts ROWS rows into DST (a freshly migrated
 * genaudit store: same schema, CHECKs, generated columns, indexes and
 * triggers) cycling over them, through one prepared INSERT of the columns
 * genaudit writes, BATCH rows per transaction (1 = autocommit: one
 * transaction per row). Each row gets a fresh 26-char id and a created_at
 * from the wall clock, as genaudit's do, and the next position of one chain
 * (chain_seq 1, 2, ...), registered in `chains` in the first transaction.
 * MODE (default hash):
 *   hash   the seal computed per row in plain C with libcrypto (bench/seal.h,
 *          the same encoding as csrc/ga_chain.c): the SHA-256 of the four
 *          payloads, prev_hash = the previous row's record_hash, record_hash
 *          over the canonical encoding — the floor for a sealed store written
 *          by one thread (genaudit's synchronous persist);
 *   ahead  the same seal, the payloads' SHA-256 computed by a second thread
 *          ahead of the insert loop (a ring of RING rows), the record hash
 *          (which needs prev_hash) by the inserting thread — the floor for a
 *          sealed store written as genaudit's async writer writes it (its
 *          hasher thread digests queued rows while the writer thread inserts);
 *          the second thread starts with the timer and its CPU time counts;
 *   plain  the same bytes with no hashing in the loop: the payload digests
 *          computed once per source row before the timer starts, prev_hash 64
 *          zeros and a constant record_hash — the floor without the chain's
 *          work (the rows do not verify).
 * WAL, synchronous=NORMAL. Only the insert loop is timed. Prints one line:
 *   rows=N seconds=S rows_per_s=R cpu_us_per_row=C mode=M
 * (C: this process's CPU time, user + system, every thread, over the loop,
 * per row).
 * Exit status 0, 2 on a usage error, or 1 with a message on stderr. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>
#include "seal.h"

#define NCOPY 16   /* the columns copied from SRC (SQL_SOURCE's order) */
#define MAX_SRC 64 /* source rows kept */

/* The same statement genaudit prepares (csrc/ga_store.c). */
static const char SQL_INSERT[] =
    "INSERT INTO generation_snapshots (id, created_at, org_id, user_id, platform, template_id,"
    " template_version, status, content, error, final_system_prompt, final_user_prompt,"
    " token_metrics, performance_metrics, repair_metrics, request_params, replay_of, drafts,"
    " final_system_prompt_sha256, final_user_prompt_sha256, content_sha256, drafts_sha256,"
    " chain_id, chain_seq, prev_hash, record_hash)"
    " VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,"
    "?19,?20,?21,?22,?23,?24,?25,?26)";
static const char SQL_SOURCE[] =
    "SELECT org_id, user_id, platform, template_id, template_version, status, content, error,"
    " final_system_prompt, final_user_prompt, token_metrics, performance_metrics, repair_metrics,"
    " request_params, replay_of, drafts FROM generation_snapshots ORDER BY rowid LIMIT 64";
static const char SQL_CHAIN[] = "INSERT INTO chains (chain_id, host, pid) VALUES (?1, ?2, ?3)";

/* SQL_SOURCE's columns */
enum { S_ORG_ID, S_USER_ID, S_PLATFORM, S_TEMPLATE_ID, S_TEMPLATE_VERSION, S_STATUS, S_CONTENT, S_ERROR,
       S_SYSTEM, S_USER, S_TOKEN_METRICS, S_PERFORMANCE_METRICS, S_REPAIR_METRICS, S_REQUEST_PARAMS,
       S_REPLAY_OF, S_DRAFTS };
/* the payloads, in the order of the digest columns (?19..?22) */
static const int PAYLOAD[4] = {S_SYSTEM, S_USER, S_CONTENT, S_DRAFTS};
/* the record fields that come from SRC's columns (BS_CREATED_AT+1 .. BS_REPAIR_METRICS) */
static const int FROM_SRC[BS_NFIELDS] = {
    -1, -1, -1, -1, -1, S_ORG_ID, S_USER_ID, S_PLATFORM, S_TEMPLATE_ID, S_TEMPLATE_VERSION, S_STATUS, S_ERROR,
    S_REPLAY_OF, S_REQUEST_PARAMS, S_TOKEN_METRICS, S_PERFORMANCE_METRICS, S_REPAIR_METRICS, -1, -1, -1, -1};

#define RING 256   /* ahead mode: rows whose digests the second thread may compute ahead */

/* plain mode's record_hash: any 64 hex digits (nothing checks it at insert) */
static const char PLAIN_HASH[] = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

typedef struct {
  char *p[NCOPY];
  int n[NCOPY];          /* -1: NULL */
  char digest[4][65];    /* plain mode: the payloads' digests, computed before the timer */
} src_row;

static int die(sqlite3 *db, const char *what) {
  fprintf(stderr, "raw_insert: %s: %s\n", what, db ? sqlite3_errmsg(db) : "out of memory");
  return 1;
}

static int load_source(const char *path, src_row *rows, int *count, bs_hasher *h) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int n = 0, rc = 1, i, step = SQLITE_ROW;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(db, SQL_SOURCE, -1, &st, NULL) != SQLITE_OK) {
    die(db, "cannot read source rows");
    goto cleanup;
  }
  while (n < MAX_SRC && (step = sqlite3_step(st)) == SQLITE_ROW) {
    for (i = 0; i < NCOPY; i++) {
      const void *p = sqlite3_column_blob(st, i);
      int len = sqlite3_column_bytes(st, i);
      if (sqlite3_column_type(st, i) == SQLITE_NULL) {
        rows[n].p[i] = NULL;
        rows[n].n[i] = -1;
        continue;
      }
      rows[n].p[i] = (char *)malloc((size_t)len + 1);
      if (!rows[n].p[i]) {
        die(NULL, "cannot copy source rows");
        goto cleanup;
      }
      if (len) memcpy(rows[n].p[i], p, (size_t)len);
      rows[n].n[i] = len;
    }
    for (i = 0; i < 4; i++) {
      const src_row *r = &rows[n];
      if (r->n[PAYLOAD[i]] >= 0 && bs_sha256_hex(h, r->p[PAYLOAD[i]], (size_t)r->n[PAYLOAD[i]], rows[n].digest[i]) != 0) {
        fprintf(stderr, "raw_insert: libcrypto failed\n");
        goto cleanup;
      }
    }
    n++;
  }
  if (step != SQLITE_ROW && step != SQLITE_DONE) {
    die(db, "cannot read source rows");
    goto cleanup;
  }
  if (n == 0) {
    fprintf(stderr, "raw_insert: %s holds no snapshot to copy\n", path);
    goto cleanup;
  }
  rc = 0;
cleanup:
  *count = n;
  sqlite3_finalize(st);
  sqlite3_close(db);
  return rc;
}

/* The digests of r's payloads that are set (the system prompt's through the
 * hasher's prompt cache, as genaudit's chain does): 0 or -1. */
static int row_digests(bs_hasher *h, const src_row *r, char d[4][65]) {
  int k;
  for (k = 0; k < 4; k++) {
    const char *pp = r->p[PAYLOAD[k]];
    size_t pn = (size_t)r->n[PAYLOAD[k]];
    if (r->n[PAYLOAD[k]] < 0) continue;
    if ((k == 0 ? bs_system_digest(h, pp, pn, d[k]) : bs_sha256_hex(h, pp, pn, d[k])) != 0) return -1;
  }
  return 0;
}

/* ahead mode: the second thread's digests, rows [consumed, produced) ready
 * in ring[row % RING]. */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  const src_row *src;
  int nsrc, failed, stop, producer_waiting, consumer_waiting;
  long rows, produced, consumed;
  char ring[RING][4][65];
  bs_hasher h;
} ahead;

static void *ahead_main(void *arg) {
  ahead *a = (ahead *)arg;
  long i;
  for (i = 0; i < a->rows; i++) {
    int ok, stop;
    pthread_mutex_lock(&a->mu);
    while (i - a->consumed >= RING && !a->stop) {
      a->producer_waiting = 1;
      pthread_cond_wait(&a->cv, &a->mu);
      a->producer_waiting = 0;
    }
    stop = a->stop;
    pthread_mutex_unlock(&a->mu);
    if (stop) break;
    ok = row_digests(&a->h, &a->src[i % a->nsrc], a->ring[i % RING]) == 0;
    pthread_mutex_lock(&a->mu);
    if (ok) a->produced = i + 1;
    else a->failed = 1;
    if (a->consumer_waiting) pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    if (!ok) break;
  }
  return NULL;
}

/* ahead mode: copies row i's digests out of the ring (waiting for them): 0,
 * or -1 when the second thread failed. */
static int ahead_take(ahead *a, long i, char d[4][65]) {
  int rc = 0;
  pthread_mutex_lock(&a->mu);
  while (a->produced <= i && !a->failed) {
    a->consumer_waiting = 1;
    pthread_cond_wait(&a->cv, &a->mu);
    a->consumer_waiting = 0;
  }
  if (a->produced > i) memcpy(d, a->ring[i % RING], sizeof a->ring[0]);
  else rc = -1;
  a->consumed = i + 1;
  /* one wake-up per half ring, not per row */
  if (a->producer_waiting && a->produced - a->consumed <= RING / 2) pthread_cond_broadcast(&a->cv);
  pthread_mutex_unlock(&a->mu);
  return rc;
}

/* Registers the chain (as csrc/ga_store_writer.c does), inside the open transaction. */
static int register_chain(sqlite3 *db, const char chain_id[27]) {
  sqlite3_stmt *st = NULL;
  char host[256];
  int rc = sqlite3_prepare_v2(db, SQL_CHAIN, -1, &st, NULL);
  if (gethostname(host, sizeof host) != 0) host[0] = '\0';
  host[sizeof host - 1] = '\0';
  if (rc == SQLITE_OK) rc = sqlite3_bind_text(st, 1, chain_id, 26, SQLITE_STATIC);
  if (rc == SQLITE_OK) rc = host[0] ? sqlite3_bind_text(st, 2, host, -1, SQLITE_STATIC) : sqlite3_bind_null(st, 2);
  if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 3, (sqlite3_int64)getpid());
  if (rc == SQLITE_OK) rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
  sqlite3_finalize(st);
  return rc;
}

static int bind_text(sqlite3_stmt *st, int i, const char *p, int n) {
  return p ? sqlite3_bind_text(st, i, p, n, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

int main(int argc, char **argv) {
  static src_row src[MAX_SRC];
  sqlite3 *db = NULL;
  sqlite3_stmt *ins = NULL;
  static ahead ah; /* ~66 KB: static, zeroed */
  bs_hasher h = {0};
  long rows, batch, i;
  int nsrc = 0, rc = 1, c, hash, use_ahead = 0, started = 0;
  pthread_t thread;
  uint64_t counter = 0;
  const char *mode = argc == 6 ? argv[5] : "hash";
  char id[26], created[24], chain_id[27], prev[65], record[65], digest[4][65];
  double t0, t1, c0, c1;
  if (argc < 5 || argc > 6 || (rows = atol(argv[3])) <= 0 || (batch = atol(argv[4])) <= 0 ||
      (strcmp(mode, "hash") != 0 && strcmp(mode, "ahead") != 0 && strcmp(mode, "plain") != 0)) {
    fprintf(stderr, "usage: raw_insert SRC DST ROWS BATCH [hash|ahead|plain]\n");
    return 2;
  }
  hash = strcmp(mode, "plain") != 0;
  use_ahead = strcmp(mode, "ahead") == 0;
  pthread_mutex_init(&ah.mu, NULL);
  pthread_cond_init(&ah.cv, NULL);
  if (bs_hasher_open(&h) != 0 || bs_hasher_open(&ah.h) != 0) {
    fprintf(stderr, "raw_insert: libcrypto has no SHA-256\n");
    goto cleanup;
  }
  if (load_source(argv[1], src, &nsrc, &h) != 0) goto cleanup;
  if (sqlite3_open_v2(argv[2], &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
    rc = die(db, "cannot open DST");
    goto cleanup;
  }
  if (sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_exec(db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_busy_timeout(db, 5000) != SQLITE_OK ||
      sqlite3_prepare_v3(db, SQL_INSERT, -1, SQLITE_PREPARE_PERSISTENT, &ins, NULL) != SQLITE_OK) {
    rc = die(db, "cannot prepare DST (is it a migrated genaudit store?)");
    goto cleanup;
  }
  bs_make_id(chain_id, bs_now_ms(), (uint64_t)getpid() << 20);
  chain_id[26] = '\0';
  memcpy(prev, BS_ZERO_HASH, 65);
  ah.src = src;
  ah.nsrc = nsrc;
  ah.rows = rows;
  t0 = bs_clock_s(CLOCK_MONOTONIC);
  c0 = bs_clock_s(CLOCK_PROCESS_CPUTIME_ID);
  if (use_ahead) {
    if (pthread_create(&thread, NULL, ahead_main, &ah) != 0) {
      fprintf(stderr, "raw_insert: cannot start the digest thread\n");
      goto cleanup;
    }
    started = 1;
  }
  for (i = 0; i < rows; i++) {
    const src_row *r = &src[i % nsrc];
    int64_t ms = bs_now_ms();
    int b = SQLITE_OK, first = i == 0, own_txn = batch > 1 || first;
    if (own_txn && (batch == 1 || i % batch == 0) && sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
      rc = die(db, "cannot begin");
      goto cleanup;
    }
    if (first && register_chain(db, chain_id) != SQLITE_OK) {
      rc = die(db, "cannot register the chain");
      goto cleanup;
    }
    bs_make_id(id, ms, ++counter);
    bs_make_time(created, ms);
    if (hash) {
      bs_text f[BS_NFIELDS];
      char seq[24];
      int k;
      if ((use_ahead ? ahead_take(&ah, i, digest) : row_digests(&h, r, digest)) != 0) {
        fprintf(stderr, "raw_insert: libcrypto failed\n");
        goto cleanup;
      }
      for (k = 0; k < BS_NFIELDS; k++) {
        int s = FROM_SRC[k];
        f[k].p = s >= 0 && r->n[s] >= 0 ? r->p[s] : NULL;
        f[k].n = s >= 0 && r->n[s] >= 0 ? (size_t)r->n[s] : 0;
      }
      snprintf(seq, sizeof seq, "%ld", i + 1);
      f[BS_ID] = (bs_text){id, 26};
      f[BS_CHAIN_ID] = (bs_text){chain_id, 26};
      f[BS_CHAIN_SEQ] = (bs_text){seq, strlen(seq)};
      f[BS_PREV_HASH] = (bs_text){prev, 64};
      f[BS_CREATED_AT] = (bs_text){created, 23};
      for (k = 0; k < 4; k++) f[BS_SYSTEM_SHA + k] = (bs_text){r->n[PAYLOAD[k]] >= 0 ? digest[k] : NULL, 64};
      if (bs_record_hash(&h, f, record) != 0) {
        fprintf(stderr, "raw_insert: libcrypto failed\n");
        goto cleanup;
      }
    } else {
      memcpy(digest, r->digest, sizeof digest);
      memcpy(record, PLAIN_HASH, 65);
    }
    b = sqlite3_bind_text(ins, 1, id, 26, SQLITE_STATIC);
    if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 2, created, 23, SQLITE_STATIC);
    for (c = 0; b == SQLITE_OK && c < NCOPY; c++) b = bind_text(ins, c + 3, r->p[c], r->n[c]);
    for (c = 0; b == SQLITE_OK && c < 4; c++) b = bind_text(ins, 19 + c, r->n[PAYLOAD[c]] >= 0 ? digest[c] : NULL, 64);
    if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 23, chain_id, 26, SQLITE_STATIC);
    if (b == SQLITE_OK) b = sqlite3_bind_int64(ins, 24, (sqlite3_int64)(i + 1));
    if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 25, prev, 64, SQLITE_STATIC);
    if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 26, record, 64, SQLITE_STATIC);
    if (b != SQLITE_OK) {
      rc = die(db, "cannot bind");
      goto cleanup;
    }
    if (sqlite3_step(ins) != SQLITE_DONE) {
      rc = die(db, "cannot insert");
      goto cleanup;
    }
    sqlite3_reset(ins);
    if (hash) memcpy(prev, record, 65); /* plain: prev_hash stays 64 zeros */
    if (own_txn && (batch == 1 || i % batch == batch - 1 || i == rows - 1) &&
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
      rc = die(db, "cannot commit");
      goto cleanup;
    }
  }
  t1 = bs_clock_s(CLOCK_MONOTONIC);
  c1 = bs_clock_s(CLOCK_PROCESS_CPUTIME_ID);
  printf("rows=%ld seconds=%.6f rows_per_s=%.1f cpu_us_per_row=%.2f mode=%s\n", rows, t1 - t0,
         (double)rows / (t1 - t0), (c1 - c0) * 1e6 / (double)rows, mode);
  rc = 0;
cleanup:
  if (started) { /* done, or failed: the digest thread stops */
    pthread_mutex_lock(&ah.mu);
    ah.stop = 1;
    pthread_cond_broadcast(&ah.cv);
    pthread_mutex_unlock(&ah.mu);
    pthread_join(thread, NULL);
  }
  bs_hasher_close(&ah.h);
  sqlite3_finalize(ins);
  sqlite3_close(db);
  bs_hasher_close(&h);
  for (i = 0; i < MAX_SRC; i++) /* static, so NULL where nothing was copied */
    for (c = 0; c < NCOPY; c++) free(src[i].p[c]);
  return rc;
}
