/* bench/raw_insert.c — the raw-C baseline of bench/persist_sync.lua and
 * bench/async.lua: the least a program can do to store the same snapshots.
 *
 *   raw_insert SRC DST ROWS BATCH
 *
 * Reads the column values of the rows already in SRC (a genaudit store the
 * benchmark filled through persist_generation, so the bytes are exactly the
 * ones genaudit wrote) and inserts ROWS rows into DST (a freshly migrated
 * genaudit store: same schema, CHECKs, generated columns and indexes) cycling
 * over them, through one prepared INSERT, BATCH rows per transaction (1 =
 * autocommit: one transaction per row). Each row gets a fresh 26-char id and
 * a created_at from the wall clock, as genaudit's do. WAL, synchronous=NORMAL.
 * Only the insert loop is timed. Prints one line:
 *   rows=N seconds=S rows_per_s=R
 * Exit status 0, or 1 with a message on stderr. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sqlite3.h>

#define NCOPY 15   /* the columns after id and created_at */
#define MAX_SRC 64 /* source rows kept */

/* The same statement genaudit prepares (csrc/ga_store.c). */
static const char SQL_INSERT[] =
    "INSERT INTO generation_snapshots (id, created_at, org_id, user_id, platform, template_id,"
    " template_version, status, content, error, final_system_prompt, final_user_prompt,"
    " token_metrics, performance_metrics, repair_metrics, request_params, replay_of)"
    " VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17)";
static const char SQL_SOURCE[] =
    "SELECT org_id, user_id, platform, template_id, template_version, status, content, error,"
    " final_system_prompt, final_user_prompt, token_metrics, performance_metrics, repair_metrics,"
    " request_params, replay_of FROM generation_snapshots ORDER BY rowid LIMIT 64";

typedef struct {
  char *p[NCOPY];
  int n[NCOPY]; /* -1: NULL */
} src_row;

static const char B32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static int die(sqlite3 *db, const char *what) {
  fprintf(stderr, "raw_insert: %s: %s\n", what, db ? sqlite3_errmsg(db) : "out of memory");
  return 1;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 10 chars of ms time, 16 chars of a counter: unique and sortable. */
static void make_id(char out[26], int64_t ms, uint64_t counter) {
  int i;
  for (i = 9; i >= 0; i--, ms >>= 5) out[i] = B32[ms & 31];
  for (i = 25; i >= 10; i--, counter >>= 5) out[i] = B32[counter & 31];
}

/* "YYYY-MM-DD HH:MM:SS.mmm" UTC, as genaudit stamps rows. */
static void make_time(char out[24], int64_t ms) {
  time_t s = (time_t)(ms / 1000);
  struct tm tm;
  int frac = (int)(ms % 1000);
  gmtime_r(&s, &tm);
  strftime(out, 20, "%Y-%m-%d %H:%M:%S", &tm);
  out[19] = '.';
  out[20] = (char)('0' + frac / 100);
  out[21] = (char)('0' + frac / 10 % 10);
  out[22] = (char)('0' + frac % 10);
  out[23] = '\0';
}

static int load_source(const char *path, src_row *rows, int *count) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int n = 0, rc = 1, i;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(db, SQL_SOURCE, -1, &st, NULL) != SQLITE_OK) {
    die(db, "cannot read source rows");
    goto cleanup;
  }
  while (n < MAX_SRC && sqlite3_step(st) == SQLITE_ROW) {
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
    n++;
  }
  if (n == 0) {
    fprintf(stderr, "raw_insert: %s holds no snapshot to copy\n", path);
    goto cleanup;
  }
  *count = n;
  rc = 0;
cleanup:
  sqlite3_finalize(st);
  sqlite3_close(db);
  return rc;
}

int main(int argc, char **argv) {
  static src_row src[MAX_SRC];
  sqlite3 *db = NULL;
  sqlite3_stmt *ins = NULL;
  long rows, batch, i;
  int nsrc = 0, rc = 1, c;
  uint64_t counter = 0;
  char id[26], created[24];
  double t0, t1;
  if (argc != 5 || (rows = atol(argv[3])) <= 0 || (batch = atol(argv[4])) <= 0) {
    fprintf(stderr, "usage: raw_insert SRC DST ROWS BATCH\n");
    return 2;
  }
  if (load_source(argv[1], src, &nsrc) != 0) return 1;
  if (sqlite3_open_v2(argv[2], &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) return die(db, "cannot open DST");
  if (sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_exec(db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_busy_timeout(db, 5000) != SQLITE_OK ||
      sqlite3_prepare_v3(db, SQL_INSERT, -1, SQLITE_PREPARE_PERSISTENT, &ins, NULL) != SQLITE_OK) {
    rc = die(db, "cannot prepare DST (is it a migrated genaudit store?)");
    goto cleanup;
  }
  t0 = mono_s();
  for (i = 0; i < rows; i++) {
    const src_row *r = &src[i % nsrc];
    int64_t ms = now_ms();
    if (batch > 1 && i % batch == 0 && sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
      rc = die(db, "cannot begin");
      goto cleanup;
    }
    make_id(id, ms, ++counter);
    make_time(created, ms);
    sqlite3_bind_text(ins, 1, id, 26, SQLITE_STATIC);
    sqlite3_bind_text(ins, 2, created, 23, SQLITE_STATIC);
    for (c = 0; c < NCOPY; c++) {
      if (r->n[c] < 0) sqlite3_bind_null(ins, c + 3);
      else sqlite3_bind_text(ins, c + 3, r->p[c], r->n[c], SQLITE_STATIC);
    }
    if (sqlite3_step(ins) != SQLITE_DONE) {
      rc = die(db, "cannot insert");
      goto cleanup;
    }
    sqlite3_reset(ins);
    if (batch > 1 && (i % batch == batch - 1 || i == rows - 1) &&
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
      rc = die(db, "cannot commit");
      goto cleanup;
    }
  }
  t1 = mono_s();
  printf("rows=%ld seconds=%.6f rows_per_s=%.1f\n", rows, t1 - t0, (double)rows / (t1 - t0));
  rc = 0;
cleanup:
  sqlite3_finalize(ins);
  sqlite3_close(db);
  for (i = 0; i < nsrc; i++)
    for (c = 0; c < NCOPY; c++) free(src[i].p[c]);
  return rc;
}
