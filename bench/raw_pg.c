/* bench/raw_pg.c — the raw-libpq baseline of bench/pg_persist.lua: the
 * least a C program can do to store the same snapshots in PostgreSQL,
 * sealed as genaudit seals them (README, "Tamper evidence"; bench/seal.h).
 *
 *   raw_pg SRC_URL DST_URL ROWS BATCH
 *
 * Reads the column values of the rows already in SRC_URL's store (a genaudit
 * store the benchmark filled through persist_generation, so the bytes are
 * exactly the ones genaudit wrote: json columns keep their text) and writes
 * ROWS rows into DST_URL (a freshly migrated genaudit store: same schema,
 * CHECKs, triggers and indexes) cycling over them. Each row gets a fresh
 * 26-char id and a created_at from the wall clock, as genaudit's do, and the
 * next position of one chain, registered in `chains` with its first row.
 *   BATCH = 1   genaudit's sync path: the same two prepared statements as
 *               csrc/ga_pg_writer.c (the first row's INSERT carries the
 *               chain's registration in a CTE), one PQexecPrepared per row in
 *               autocommit (one transaction per row), created_at and
 *               chain_seq as text parameters, every other column binary;
 *   BATCH > 1   the async writer's path: BEGIN, the chain's row (first batch),
 *               one COPY ... FROM STDIN of BATCH rows in COPY's text format
 *               (one PQputCopyData per row), COMMIT.
 * The seal is computed per row with libcrypto: the SHA-256 of the four
 * payloads (the system prompt's reused while it is the same as the last
 * row's, as genaudit's chain does), prev_hash = the previous row's
 * record_hash, record_hash over the canonical encoding. The session runs in
 * UTC (as genaudit's connections do), so created_at reads back as written and
 * the rows verify. Only the write loop is timed. Prints one line:
 *   rows=N seconds=S rows_per_s=R cpu_us_per_row=C batch=B
 * (C: this process's CPU time over the loop, per row; the server's is not in it).
 * Exit status 0, 2 on a usage error, or 1 with a message on stderr. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <libpq-fe.h>
#include "seal.h"

#define NCOPY 16   /* the columns copied from SRC (SQL_SOURCE's order) */
#define MAX_SRC 64 /* source rows kept */
#define NPARAMS 26

#define COLUMNS                                                                                   \
  "id, created_at, org_id, user_id, platform, template_id, template_version, status, content, " \
  "error, final_system_prompt, final_user_prompt, token_metrics, performance_metrics, "          \
  "repair_metrics, request_params, replay_of, drafts, final_system_prompt_sha256, "              \
  "final_user_prompt_sha256, content_sha256, drafts_sha256, chain_id, chain_seq, prev_hash, record_hash"
#define VALUES                                                                                            \
  " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22," \
  " $23, $24, $25, $26)"
/* The same statements genaudit prepares and sends (csrc/ga_pg_writer.c). */
static const char SQL_INSERT[] = "INSERT INTO generation_snapshots (" COLUMNS ") VALUES" VALUES;
static const char SQL_INSERT_REG[] = "WITH c AS (INSERT INTO chains (chain_id, host, pid) VALUES ($23, $27, $28::integer))"
                                     " INSERT INTO generation_snapshots (" COLUMNS ") VALUES" VALUES;
static const char SQL_COPY[] = "COPY generation_snapshots (" COLUMNS ") FROM STDIN";
static const char SQL_REGISTER[] = "INSERT INTO chains (chain_id, host, pid) VALUES ($1, $2, $3::integer)";
/* the 16 columns of the insert after id and created_at, in its order */
static const char SQL_SOURCE[] =
    "SELECT org_id, user_id, platform, template_id, template_version, status, content, error,"
    " final_system_prompt, final_user_prompt, token_metrics, performance_metrics, repair_metrics,"
    " request_params, replay_of, drafts FROM generation_snapshots ORDER BY chain_id, chain_seq LIMIT 64";

/* SQL_SOURCE's columns */
enum { S_ORG_ID, S_USER_ID, S_PLATFORM, S_TEMPLATE_ID, S_TEMPLATE_VERSION, S_STATUS, S_CONTENT, S_ERROR,
       S_SYSTEM, S_USER, S_TOKEN_METRICS, S_PERFORMANCE_METRICS, S_REPAIR_METRICS, S_REQUEST_PARAMS,
       S_REPLAY_OF, S_DRAFTS };
/* the payloads, in the order of the digest columns ($19..$22) */
static const int PAYLOAD[4] = {S_SYSTEM, S_USER, S_CONTENT, S_DRAFTS};
/* the record fields that come from SRC's columns */
static const int FROM_SRC[BS_NFIELDS] = {
    -1, -1, -1, -1, -1, S_ORG_ID, S_USER_ID, S_PLATFORM, S_TEMPLATE_ID, S_TEMPLATE_VERSION, S_STATUS, S_ERROR,
    S_REPLAY_OF, S_REQUEST_PARAMS, S_TOKEN_METRICS, S_PERFORMANCE_METRICS, S_REPAIR_METRICS, -1, -1, -1, -1};

typedef struct {
  char *p[NCOPY];
  int n[NCOPY]; /* -1: NULL */
} src_row;

/* A growing byte buffer for one COPY line. */
typedef struct {
  char *p;
  size_t len, cap;
} buf;

static int die(PGconn *conn, const char *what) {
  fprintf(stderr, "raw_pg: %s: %s", what, conn ? PQerrorMessage(conn) : "out of memory\n");
  return 1;
}

/* Connects and sets the session as genaudit's (UTC, ISO dates). NULL on failure (message printed). */
static PGconn *connect_to(const char *url) {
  PGconn *conn = PQconnectdb(url);
  PGresult *r;
  if (!conn || PQstatus(conn) != CONNECTION_OK) {
    die(conn, "cannot connect");
    PQfinish(conn);
    return NULL;
  }
  r = PQexec(conn, "SET TimeZone TO 'UTC'; SET DateStyle TO 'ISO, YMD'");
  if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
    die(conn, "cannot set the session up");
    PQclear(r);
    PQfinish(conn);
    return NULL;
  }
  PQclear(r);
  return conn;
}

/* Copies up to MAX_SRC rows of SRC's columns. 0, or 1 (message printed). */
static int load_source(const char *url, src_row *rows, int *count) {
  PGconn *conn = connect_to(url);
  PGresult *r = NULL;
  int n, i, rc = 1;
  *count = 0;
  if (!conn) return 1;
  r = PQexec(conn, SQL_SOURCE);
  if (!r || PQresultStatus(r) != PGRES_TUPLES_OK || PQnfields(r) != NCOPY) {
    die(conn, "cannot read source rows");
    goto cleanup;
  }
  for (n = 0; n < PQntuples(r) && n < MAX_SRC; n++) {
    for (i = 0; i < NCOPY; i++) {
      int len = PQgetlength(r, n, i);
      if (PQgetisnull(r, n, i)) {
        rows[n].p[i] = NULL;
        rows[n].n[i] = -1;
        continue;
      }
      rows[n].p[i] = (char *)malloc((size_t)len + 1);
      if (!rows[n].p[i]) {
        die(NULL, "cannot copy source rows");
        goto cleanup;
      }
      memcpy(rows[n].p[i], PQgetvalue(r, n, i), (size_t)len + 1);
      rows[n].n[i] = len;
    }
    *count = n + 1;
  }
  if (*count == 0) {
    fprintf(stderr, "raw_pg: %s holds no snapshot to copy\n", url);
    goto cleanup;
  }
  rc = 0;
cleanup:
  PQclear(r);
  PQfinish(conn);
  return rc;
}

/* Runs a statement without results. 0, or 1 (message printed). */
static int exec_ok(PGconn *conn, const char *sql) {
  PGresult *r = PQexec(conn, sql);
  int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
  if (!ok) die(conn, sql);
  PQclear(r);
  return ok ? 0 : 1;
}

static int prepare(PGconn *conn, const char *name, const char *sql, int nparams) {
  PGresult *r = PQprepare(conn, name, sql, nparams, NULL);
  int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
  if (!ok) die(conn, "cannot prepare (is DST a migrated genaudit store?)");
  PQclear(r);
  return ok ? 0 : 1;
}

static int buf_add(buf *b, const char *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 16384;
    char *q;
    while (cap < b->len + n) cap *= 2;
    q = (char *)realloc(b->p, cap);
    if (!q) return -1;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

/* The bytes COPY's text format escapes, as the letter after the backslash. */
static const char COPY_ESCAPE[256] = {['\\'] = '\\', ['\t'] = 't', ['\n'] = 'n', ['\r'] = 'r'};

/* One column in COPY's text format: \N for NULL; backslash, tab, newline, CR escaped. */
static int copy_field(buf *b, const char *p, size_t n) {
  size_t i, run = 0;
  if (!p) return buf_add(b, "\\N", 2);
  for (i = 0; i < n; i++) {
    char esc[2] = {'\\', COPY_ESCAPE[(unsigned char)p[i]]};
    if (!esc[1]) continue;
    if (buf_add(b, p + run, i - run) != 0 || buf_add(b, esc, 2) != 0) return -1;
    run = i + 1;
  }
  return buf_add(b, p + run, n - run);
}

int main(int argc, char **argv) {
  static src_row src[MAX_SRC];
  PGconn *conn = NULL;
  bs_hasher h = {0};
  buf line = {NULL, 0, 0};
  long rows, batch, i;
  int nsrc = 0, rc = 1, c, registered = 0;
  uint64_t counter = 0;
  char id[26], created[24], chain_id[27], prev[65], record[65], digest[4][65], last_sys_digest[65];
  char host[256], pid[24], seq[24];
  char *last_sys = NULL;
  size_t last_sys_n = 0;
  double t0, t1, c0, c1;
  if (argc != 5 || (rows = atol(argv[3])) <= 0 || (batch = atol(argv[4])) <= 0) {
    fprintf(stderr, "usage: raw_pg SRC_URL DST_URL ROWS BATCH\n");
    return 2;
  }
  if (bs_hasher_open(&h) != 0) {
    fprintf(stderr, "raw_pg: libcrypto has no SHA-256\n");
    goto cleanup;
  }
  if (load_source(argv[1], src, &nsrc) != 0) goto cleanup;
  if (!(conn = connect_to(argv[2]))) goto cleanup;
  if (batch == 1 && (prepare(conn, "ins", SQL_INSERT, NPARAMS) != 0 ||
                     prepare(conn, "ins_reg", SQL_INSERT_REG, NPARAMS + 2) != 0))
    goto cleanup;
  if (gethostname(host, sizeof host) != 0) host[0] = '\0';
  host[sizeof host - 1] = '\0';
  snprintf(pid, sizeof pid, "%ld", (long)getpid());
  bs_make_id(chain_id, bs_now_ms(), (uint64_t)getpid() << 20);
  chain_id[26] = '\0';
  memcpy(prev, BS_ZERO_HASH, 65);
  t0 = bs_clock_s(CLOCK_MONOTONIC);
  c0 = bs_clock_s(CLOCK_PROCESS_CPUTIME_ID);
  for (i = 0; i < rows; i++) {
    const src_row *r = &src[i % nsrc];
    int64_t ms = bs_now_ms();
    bs_text f[BS_NFIELDS];
    int k;
    if (batch > 1 && i % batch == 0) { /* a batch begins: its transaction, the chain's row, the COPY */
      PGresult *res;
      if (exec_ok(conn, "BEGIN") != 0) goto cleanup;
      if (!registered) {
        const char *v[3] = {chain_id, host[0] ? host : NULL, pid};
        res = PQexecParams(conn, SQL_REGISTER, 3, NULL, v, NULL, NULL, 0);
        if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
          PQclear(res);
          rc = die(conn, "cannot register the chain");
          goto cleanup;
        }
        PQclear(res);
        registered = 1;
      }
      res = PQexec(conn, SQL_COPY);
      if (!res || PQresultStatus(res) != PGRES_COPY_IN) {
        PQclear(res);
        rc = die(conn, "cannot start COPY");
        goto cleanup;
      }
      PQclear(res);
    }
    bs_make_id(id, ms, ++counter);
    bs_make_time(created, ms);
    for (k = 0; k < 4; k++) {
      const char *pp = r->p[PAYLOAD[k]];
      size_t pn = (size_t)r->n[PAYLOAD[k]];
      if (r->n[PAYLOAD[k]] < 0) continue;
      if (k == 0 && last_sys && last_sys_n == pn && memcmp(last_sys, pp, pn) == 0) {
        memcpy(digest[0], last_sys_digest, 65);
        continue;
      }
      if (bs_sha256_hex(&h, pp, pn, digest[k]) != 0) {
        fprintf(stderr, "raw_pg: libcrypto failed\n");
        goto cleanup;
      }
      if (k == 0) {
        char *copy = (char *)malloc(pn ? pn : 1);
        if (copy) {
          memcpy(copy, pp, pn);
          free(last_sys);
          last_sys = copy;
          last_sys_n = pn;
          memcpy(last_sys_digest, digest[0], 65);
        }
      }
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
      fprintf(stderr, "raw_pg: libcrypto failed\n");
      goto cleanup;
    }
    {
      /* the 26 columns in the statement's order */
      const char *v[NPARAMS + 2];
      int len[NPARAMS + 2], fmt[NPARAMS + 2];
      v[0] = id, len[0] = 26;
      v[1] = created, len[1] = 23;
      for (c = 0; c < NCOPY; c++) v[c + 2] = r->p[c], len[c + 2] = r->n[c] >= 0 ? r->n[c] : 0;
      for (c = 0; c < 4; c++) v[18 + c] = r->n[PAYLOAD[c]] >= 0 ? digest[c] : NULL, len[18 + c] = 64;
      v[22] = chain_id, len[22] = 26;
      v[23] = seq, len[23] = (int)strlen(seq);
      v[24] = prev, len[24] = 64;
      v[25] = record, len[25] = 64;
      if (batch == 1) {
        PGresult *res;
        int reg = !registered;
        for (c = 0; c < NPARAMS; c++) fmt[c] = 1;
        fmt[1] = fmt[23] = 0; /* created_at and chain_seq as text, as genaudit sends them */
        v[NPARAMS] = host[0] ? host : NULL, v[NPARAMS + 1] = pid;
        len[NPARAMS] = len[NPARAMS + 1] = 0;
        fmt[NPARAMS] = fmt[NPARAMS + 1] = 0;
        res = PQexecPrepared(conn, reg ? "ins_reg" : "ins", reg ? NPARAMS + 2 : NPARAMS, v, len, fmt, 0);
        if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
          PQclear(res);
          rc = die(conn, "cannot insert");
          goto cleanup;
        }
        PQclear(res);
        registered = 1;
      } else {
        int bad = 0;
        line.len = 0;
        for (c = 0; c < NPARAMS && !bad; c++)
          bad = (c && buf_add(&line, "\t", 1) != 0) || copy_field(&line, v[c], (size_t)len[c]) != 0;
        if (bad || buf_add(&line, "\n", 1) != 0) {
          rc = die(NULL, "cannot build a COPY line");
          goto cleanup;
        }
        if (PQputCopyData(conn, line.p, (int)line.len) != 1) {
          rc = die(conn, "cannot send COPY data");
          goto cleanup;
        }
      }
    }
    memcpy(prev, record, 65);
    if (batch > 1 && (i % batch == batch - 1 || i == rows - 1)) { /* the batch ends */
      PGresult *res;
      int ok;
      if (PQputCopyEnd(conn, NULL) != 1) {
        rc = die(conn, "cannot end COPY");
        goto cleanup;
      }
      res = PQgetResult(conn);
      ok = res && PQresultStatus(res) == PGRES_COMMAND_OK;
      PQclear(res);
      while ((res = PQgetResult(conn)) != NULL) PQclear(res);
      if (!ok) {
        rc = die(conn, "COPY refused");
        goto cleanup;
      }
      if (exec_ok(conn, "COMMIT") != 0) goto cleanup;
    }
  }
  t1 = bs_clock_s(CLOCK_MONOTONIC);
  c1 = bs_clock_s(CLOCK_PROCESS_CPUTIME_ID);
  printf("rows=%ld seconds=%.6f rows_per_s=%.1f cpu_us_per_row=%.2f batch=%ld\n", rows, t1 - t0,
         (double)rows / (t1 - t0), (c1 - c0) * 1e6 / (double)rows, batch);
  rc = 0;
cleanup:
  free(last_sys);
  free(line.p);
  PQfinish(conn);
  bs_hasher_close(&h);
  for (i = 0; i < MAX_SRC; i++) /* static, so NULL where nothing was copied */
    for (c = 0; c < NCOPY; c++) free(src[i].p[c]);
  return rc;
}
