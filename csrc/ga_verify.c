/* ga_verify.c — store:snapshot_reader(opts): the reads of one verify() on
 * SQLite at ONE snapshot of the database, on one thread or two.
 *
 * The reader begins a read transaction on the store's own connection (the
 * main thread's: every query verify() makes through the store sees the same
 * snapshot, so a purge or an append committed while verify runs is either
 * all in it or not at all). With opts.worker it also opens a second,
 * read-only connection to the same file, with the same SQL functions
 * (genaudit_sha256, genaudit_record_hash: ga_store.c) over its own hasher,
 * begins a read transaction there at the same snapshot, and reader:start()
 * runs a list of read-only statements (the later halves of the chains'
 * position ranges) on a worker thread over it, buffering their small result
 * rows; reader:each(k, fn) hands job k's rows to fn on the main thread, in
 * order, while the worker runs the next one (at most AHEAD jobs buffered).
 *
 * One snapshot on two connections. Debian's libsqlite3 is built without
 * SQLITE_ENABLE_SNAPSHOT (no sqlite3_snapshot_get/open), so the reader
 * proves instead that no commit happened while the two read transactions
 * began: PRAGMA data_version on the worker's connection, read (t1) before
 * the main connection's transaction begins, and read again (t2) inside the
 * worker's own transaction, begun after the main one. SQLite changes a
 * connection's data_version whenever a read transaction finds the database
 * changed (a commit by any other connection: in WAL mode a new wal-index
 * header, in rollback mode a new change counter) since that connection's
 * last one. Equal values mean no commit between t1 and t2, so both
 * transactions, begun in between, see the same committed state. A commit
 * in the window (a busy writer) makes the values differ: both transactions
 * are ended and the reader tries again, up to SNAP_TRIES times, then falls
 * back to one thread (the main connection's snapshot alone). A false
 * difference (a WAL restart without a commit) only costs a retry.
 *
 * Memory: each job's rows (~300 bytes each: ids, hashes, status codes; the
 * payloads never leave SQLite) until the main thread takes them. The thread
 * is joined on every path (close, __gc, __close, an error raised by fn). */
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include "ga_sqlite.h"

#define READER_MT "genaudit.sqlite_reader"
#define AHEAD 2       /* jobs the worker may run ahead of the one the main thread takes */
#define SNAP_TRIES 20 /* attempts at one snapshot on both connections */
#define MAX_PARAMS 8

enum { P_NULL, P_INT, P_TEXT };
typedef struct {
  int type;
  long long iv;
  char *s;
  size_t n;
} jparam;

enum { J_PENDING, J_DONE, J_FAILED };
typedef struct {
  char *sql;
  size_t sqllen;
  int nparams;
  jparam p[MAX_PARAMS];
  ga_buf out;          /* the rows: per column a tag ('n', 'i', 'f', 's') and its value */
  long long nrows;
  int ncols;
  char *names;         /* ncols NUL-terminated column names, one after another */
  unsigned char *real; /* per column: declared REAL (an integral value is pushed as a float, as query() does) */
  int state;           /* under mu */
  char code[16];
  char err[512];
} job;

typedef struct {
  store *s;           /* the store (kept alive by the reader's uservalue) */
  sqlite3 *db;        /* the worker's connection; NULL: one thread */
  ga_hasher h;        /* the worker connection's SQL functions' */
  int main_txn;       /* the reader began the main connection's transaction */
  long long mmap_prev;
  int mmap_set;       /* the main connection's mmap_size to restore */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int sync_init;
  pthread_t th;
  int started;
  job *jobs;
  int njobs;
  int taken;          /* jobs the main thread has taken; under mu */
  int stop;           /* under mu, read by the progress handler atomically */
  long query_ms;      /* the store's query_timeout, per step */
  uint64_t deadline;  /* the worker's current step (worker thread only) */
  int timed_out;
  int closed;
  int busy;           /* 1 while reader:each runs its callback: no close, no nested each */
  uint64_t worker_cpu_ns; /* the worker thread's CPU time, set as it ends (under mu) */
  uint64_t wait_ns;       /* the main thread's waits for a job (main thread only) */
} reader;

/* The first column of the first row of sql on db, or -1. */
static long long db_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  long long v = -1;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW &&
      sqlite3_column_type(st, 0) != SQLITE_NULL)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

static int db_exec(sqlite3 *db, const char *sql) { return sqlite3_exec(db, sql, NULL, NULL, NULL); }

/* Begins a read transaction on db: BEGIN, then a read (a deferred BEGIN
 * takes its snapshot at the first read). SQLITE_OK or an error code. */
static int begin_read(sqlite3 *db) {
  int rc = db_exec(db, "BEGIN");
  if (rc == SQLITE_OK) rc = db_exec(db, "SELECT count(*) FROM sqlite_master");
  if (rc != SQLITE_OK && !sqlite3_get_autocommit(db)) db_exec(db, "ROLLBACK");
  return rc;
}

static void end_read(sqlite3 *db) {
  if (sqlite3_get_autocommit(db)) return;
  if (db_exec(db, "COMMIT") != SQLITE_OK) db_exec(db, "ROLLBACK");
}

static const char *code_of(sqlite3 *db) {
  int rc = sqlite3_extended_errcode(db) & 0xff;
  return rc == SQLITE_BUSY || rc == SQLITE_LOCKED ? "BUSY" : rc == SQLITE_READONLY ? "READONLY" : "SQLITE";
}

/* The worker connection's progress handler: stops a step when the reader
 * closes or the step outlives query_timeout. */
static int worker_progress(void *arg) {
  reader *r = (reader *)arg;
  if (__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) return 1;
  if (r->deadline && ga_monotonic_ns() > r->deadline) {
    r->timed_out = 1;
    return 1;
  }
  return 0;
}

static void job_fail(job *j, const char *code, const char *what, const char *msg) {
  snprintf(j->code, sizeof j->code, "%s", code);
  snprintf(j->err, sizeof j->err, "%s: %s", what, msg);
}

static void put_u64(ga_buf *b, char tag, uint64_t v) {
  char x[9];
  x[0] = tag;
  memcpy(x + 1, &v, 8);
  ga_buf_add(b, x, 9);
}

/* Whether sql (n bytes) begins, after white space, with SELECT, WITH or
 * VALUES (a query: not a transaction, savepoint, attach or pragma). */
static int is_select(const char *sql, size_t n) {
  static const char *const kw[] = {"select", "with", "values"};
  size_t i = 0, k;
  while (i < n && (sql[i] == ' ' || sql[i] == '\t' || sql[i] == '\n' || sql[i] == '\r')) i++;
  for (k = 0; k < sizeof kw / sizeof kw[0]; k++) {
    size_t m = strlen(kw[k]), c;
    if (n - i <= m) continue;
    for (c = 0; c < m && (sql[i + c] | 0x20) == kw[k][c]; c++) {
    }
    if (c == m && !((sql[i + m] | 0x20) >= 'a' && (sql[i + m] | 0x20) <= 'z') && sql[i + m] != '_') return 1;
  }
  return 0;
}

/* Runs job j on the worker's connection; J_DONE or J_FAILED. */
static int run_job(reader *r, job *j) {
  sqlite3_stmt *st = NULL;
  const char *tail = NULL;
  int rc, i;
  size_t namelen = 0;
  rc = sqlite3_prepare_v2(r->db, j->sql, (int)j->sqllen, &st, &tail);
  if (rc != SQLITE_OK || !st) {
    job_fail(j, rc != SQLITE_OK ? code_of(r->db) : "READONLY", "cannot prepare query",
             rc != SQLITE_OK ? sqlite3_errmsg(r->db) : "no statement");
    sqlite3_finalize(st);
    return J_FAILED;
  }
  /* sqlite3_stmt_readonly is also true of BEGIN, COMMIT, ROLLBACK, SAVEPOINT,
   * ATTACH and DETACH: any of them would move the worker off its snapshot */
  if (!sqlite3_stmt_readonly(st) || (tail && *tail) || !is_select(j->sql, j->sqllen)) {
    job_fail(j, "READONLY", "query failed", "the worker runs one read-only statement");
    sqlite3_finalize(st);
    return J_FAILED;
  }
  for (i = 0, rc = SQLITE_OK; i < j->nparams && rc == SQLITE_OK; i++) {
    if (j->p[i].type == P_INT) rc = sqlite3_bind_int64(st, i + 1, (sqlite3_int64)j->p[i].iv);
    else if (j->p[i].type == P_TEXT) rc = sqlite3_bind_text64(st, i + 1, j->p[i].s, j->p[i].n, SQLITE_STATIC, SQLITE_UTF8);
    else rc = sqlite3_bind_null(st, i + 1);
  }
  if (rc != SQLITE_OK) {
    job_fail(j, "BIND", "cannot bind", sqlite3_errstr(rc));
    sqlite3_finalize(st);
    return J_FAILED;
  }
  j->ncols = sqlite3_column_count(st);
  for (i = 0; i < j->ncols; i++) namelen += strlen(sqlite3_column_name(st, i)) + 1;
  j->names = (char *)malloc(namelen + 1);
  j->real = (unsigned char *)malloc((size_t)j->ncols + 1);
  if (!j->names || !j->real) {
    job_fail(j, "NOMEM", "query failed", "out of memory");
    sqlite3_finalize(st);
    return J_FAILED;
  }
  for (i = 0, namelen = 0; i < j->ncols; i++) {
    const char *nm = sqlite3_column_name(st, i), *decl = sqlite3_column_decltype(st, i);
    size_t n = strlen(nm) + 1;
    memcpy(j->names + namelen, nm, n);
    namelen += n;
    j->real[i] = decl && strcmp(decl, "REAL") == 0;
  }
  for (;;) {
    r->timed_out = 0;
    r->deadline = r->query_ms > 0 ? ga_monotonic_ns() + (uint64_t)r->query_ms * 1000000u : 0;
    rc = sqlite3_step(st);
    r->deadline = 0;
    if (rc != SQLITE_ROW) break;
    for (i = 0; i < j->ncols; i++) {
      switch (sqlite3_column_type(st, i)) {
        case SQLITE_INTEGER: put_u64(&j->out, 'i', (uint64_t)sqlite3_column_int64(st, i)); break;
        case SQLITE_FLOAT: {
          double d = sqlite3_column_double(st, i);
          uint64_t u;
          memcpy(&u, &d, 8);
          put_u64(&j->out, 'f', u);
          break;
        }
        case SQLITE_NULL: ga_buf_addc(&j->out, 'n'); break;
        default: {
          const char *p = (const char *)sqlite3_column_blob(st, i);
          uint32_t n = (uint32_t)sqlite3_column_bytes(st, i);
          char x[5];
          x[0] = 's';
          memcpy(x + 1, &n, 4);
          ga_buf_add(&j->out, x, 5);
          if (n) ga_buf_add(&j->out, p ? p : "", p ? n : 0);
        }
      }
    }
    j->nrows++;
    if (j->out.oom) break;
  }
  if (j->out.oom) job_fail(j, "NOMEM", "query failed", "out of memory buffering the worker's rows");
  else if (rc != SQLITE_DONE && r->timed_out) {
    snprintf(j->code, sizeof j->code, "TIMEOUT");
    snprintf(j->err, sizeof j->err, "query ran longer than query_timeout (%ld ms)", r->query_ms);
  } else if (rc != SQLITE_DONE) job_fail(j, code_of(r->db), "query failed", sqlite3_errmsg(r->db));
  sqlite3_finalize(st);
  return j->out.oom || rc != SQLITE_DONE ? J_FAILED : J_DONE;
}

static void *worker_main(void *arg) {
  reader *r = (reader *)arg;
  int i, failed = 0;
  for (i = 0; i < r->njobs; i++) {
    int stop, state;
    pthread_mutex_lock(&r->mu);
    while (!r->stop && i - r->taken >= AHEAD) pthread_cond_wait(&r->cv, &r->mu);
    stop = r->stop;
    pthread_mutex_unlock(&r->mu);
    if (stop || failed) {
      job_fail(&r->jobs[i], "SQLITE", "query failed", stop ? "the reader was closed" : "an earlier job failed");
      state = J_FAILED;
    } else {
      state = run_job(r, &r->jobs[i]);
    }
    if (state == J_FAILED) failed = 1;
    pthread_mutex_lock(&r->mu);
    r->jobs[i].state = state;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
  }
  {
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) {
      pthread_mutex_lock(&r->mu);
      r->worker_cpu_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
      pthread_mutex_unlock(&r->mu);
    }
  }
  return NULL;
}

static void job_release(job *j) {
  ga_buf_free(&j->out);
  free(j->names);
  free(j->real);
  j->names = NULL;
  j->real = NULL;
}

static void free_jobs(reader *r) {
  int i, k;
  for (i = 0; i < r->njobs; i++) {
    job_release(&r->jobs[i]);
    free(r->jobs[i].sql);
    for (k = 0; k < r->jobs[i].nparams; k++) free(r->jobs[i].p[k].s);
  }
  free(r->jobs);
  r->jobs = NULL;
  r->njobs = 0;
}

/* Stops and joins the worker, closes its connection, ends the main
 * connection's transaction and restores its mmap_size. Idempotent. */
static void reader_close(reader *r) {
  if (r->closed) return;
  r->closed = 1;
  if (r->started) {
    pthread_mutex_lock(&r->mu);
    __atomic_store_n(&r->stop, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->th, NULL);
    r->started = 0;
  }
  free_jobs(r);
  if (r->db) {
    end_read(r->db);
    sqlite3_close_v2(r->db);
    r->db = NULL;
  }
  ga_hasher_free(&r->h);
  if (r->s && r->s->db) {
    if (r->main_txn) end_read(r->s->db);
    if (r->mmap_set) {
      char sql[64];
      snprintf(sql, sizeof sql, "PRAGMA mmap_size=%lld", r->mmap_prev);
      db_exec(r->s->db, sql);
    }
  }
  r->main_txn = 0;
  r->mmap_set = 0;
  if (r->sync_init) {
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    r->sync_init = 0;
  }
}

static reader *check_reader(lua_State *L) {
  reader *r = (reader *)luaL_checkudata(L, 1, READER_MT);
  if (r->closed) luaL_error(L, "attempt to use a closed snapshot reader");
  return r;
}

static int l_reader_gc(lua_State *L) {
  reader_close((reader *)luaL_checkudata(L, 1, READER_MT)); /* never busy: each holds the reader */
  return 0;
}

/* close (and __close): refused from inside the reader's own each(), whose
 * loop still reads the job's rows (closing frees them). */
static int l_reader_close(lua_State *L) {
  reader *r = (reader *)luaL_checkudata(L, 1, READER_MT);
  if (r->busy) return luaL_error(L, "reader:close: called from inside reader:each");
  reader_close(r);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_reader_tostring(lua_State *L) {
  reader *r = (reader *)luaL_checkudata(L, 1, READER_MT);
  lua_pushfstring(L, "genaudit.sqlite_reader (%s)", r->closed ? "closed" : r->db ? "two threads" : "one thread");
  return 1;
}

/* reader:parallel() -> whether a worker connection reads the same snapshot */
static int l_reader_parallel(lua_State *L) {
  reader *r = check_reader(L);
  lua_pushboolean(L, r->db != NULL);
  return 1;
}

/* reader:stats() -> { worker_cpu_us (the worker thread's CPU time, once it
 * has ended; 0 before), wait_us (the main thread's waits for the worker's
 * jobs), jobs } */
static int l_reader_stats(lua_State *L) {
  reader *r = check_reader(L);
  uint64_t cpu;
  pthread_mutex_lock(&r->mu);
  cpu = r->worker_cpu_ns;
  pthread_mutex_unlock(&r->mu);
  lua_createtable(L, 0, 3);
  ga_pushint64(L, (long long)(cpu / 1000u));
  lua_setfield(L, -2, "worker_cpu_us");
  ga_pushint64(L, (long long)(r->wait_ns / 1000u));
  lua_setfield(L, -2, "wait_us");
  lua_pushinteger(L, r->njobs);
  lua_setfield(L, -2, "jobs");
  return 1;
}

/* reader:start({ { sql, { params } }, ... }) -> true | nil, err, code
 * The worker runs each statement in turn on its connection (parameters:
 * integers, strings, genaudit.null). Once per reader; raises on misuse. */
static int l_reader_start(lua_State *L) {
  reader *r = check_reader(L);
  size_t n, i;
  int rc;
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!r->db) return luaL_error(L, "reader:start: the reader has no worker connection");
  if (r->started || r->jobs) return luaL_error(L, "reader:start: started already");
  n = ga_rawlen(L, 2);
  if (n == 0 || n > 1000000) return luaL_error(L, "reader:start: 1 to 1000000 jobs expected");
  r->jobs = (job *)calloc(n, sizeof *r->jobs);
  if (!r->jobs) return ga_fail(L, "NOMEM", "cannot start the verify worker: out of memory");
  r->njobs = (int)n;
  for (i = 0; i < n; i++) {
    job *j = &r->jobs[i];
    const char *sql;
    size_t len, np, k;
    lua_rawgeti(L, 2, (int)i + 1);
    if (!lua_istable(L, -1)) return luaL_error(L, "reader:start: job %d is not a table", (int)i + 1);
    lua_rawgeti(L, -1, 1);
    sql = lua_tolstring(L, -1, &len);
    if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "reader:start: job %d has no SQL", (int)i + 1);
    ga_buf_init(&j->out);
    j->sql = (char *)malloc(len + 1);
    if (!j->sql) return ga_fail(L, "NOMEM", "cannot start the verify worker: out of memory");
    memcpy(j->sql, sql, len + 1);
    j->sqllen = len;
    lua_pop(L, 1);
    lua_rawgeti(L, -1, 2);
    np = lua_istable(L, -1) ? ga_rawlen(L, -1) : 0;
    if (np > MAX_PARAMS) return luaL_error(L, "reader:start: job %d has more than %d parameters", (int)i + 1, MAX_PARAMS);
    for (k = 0; k < np; k++) {
      long long iv;
      jparam *p = &j->p[k];
      lua_rawgeti(L, -1, (int)k + 1);
      switch (ga_store_param(L, -1, &iv)) {
        case GA_PARAM_INT: p->type = P_INT; p->iv = iv; break;
        case GA_PARAM_TEXT: {
          size_t sl;
          const char *sv = lua_tolstring(L, -1, &sl);
          p->type = P_TEXT;
          p->s = (char *)malloc(sl + 1);
          if (!p->s) return ga_fail(L, "NOMEM", "cannot start the verify worker: out of memory");
          memcpy(p->s, sv, sl + 1);
          p->n = sl;
          break;
        }
        case GA_PARAM_NULL: p->type = P_NULL; break;
        default: return luaL_error(L, "reader:start: job %d parameter %d: integer, string or null expected", (int)i + 1,
                                   (int)k + 1);
      }
      j->nparams = (int)k + 1;
      lua_pop(L, 1);
    }
    lua_pop(L, 2);
  }
  rc = pthread_create(&r->th, NULL, worker_main, r);
  if (rc != 0) {
    free_jobs(r);
    return ga_fail(L, "ASYNC", "cannot start the verify worker thread: %s", strerror(rc));
  }
  r->started = 1;
  lua_pushboolean(L, 1);
  return 1;
}

/* Marks job j taken: its buffers freed, the worker may run further ahead. */
static void take(reader *r, job *j) {
  job_release(j);
  pthread_mutex_lock(&r->mu);
  r->taken++;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

static uint64_t get_u64(const char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* reader:each(k, fn) -> rows | nil, err, code: job k's rows, each as a
 * table keyed by column name (NULL columns absent: what store:each gives),
 * to fn(row) in order; fn returning false stops. Jobs are taken in order
 * (k = 1, 2, ...); waits for the worker to finish job k. An error raised by
 * fn is re-raised after the job is released. */
static int l_reader_each(lua_State *L) {
  reader *r = check_reader(L);
  long long k = (long long)luaL_checknumber(L, 2), n = 0;
  job *j;
  int state;
  const char *p, *end;
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (r->busy) return luaL_error(L, "reader:each: called from inside reader:each");
  if (!r->started) return luaL_error(L, "reader:each: the worker was not started");
  if (k != (long long)r->taken + 1 || k > r->njobs)
    return luaL_error(L, "reader:each: job %d out of order (the next is %d)", (int)k, r->taken + 1);
  j = &r->jobs[k - 1];
  pthread_mutex_lock(&r->mu);
  if (j->state == J_PENDING) {
    uint64_t t0 = ga_monotonic_ns();
    while (j->state == J_PENDING) pthread_cond_wait(&r->cv, &r->mu);
    r->wait_ns += ga_monotonic_ns() - t0;
  }
  state = j->state;
  pthread_mutex_unlock(&r->mu);
  if (state == J_FAILED) {
    int res = ga_fail(L, j->code, "%s", j->err);
    take(r, j);
    return res;
  }
  p = j->out.buf;
  end = p + j->out.len;
  r->busy = 1; /* until take(): the callback must not free what p reads */
  while (p && p < end) {
    const char *nm = j->names;
    int i, stop;
    lua_pushvalue(L, 3);
    lua_createtable(L, 0, j->ncols);
    for (i = 0; i < j->ncols; i++, nm += strlen(nm) + 1) {
      char tag = *p++;
      if (tag == 'n') continue;
      if (tag == 'i') {
        long long v = (long long)get_u64(p);
        p += 8;
        if (j->real[i]) lua_pushnumber(L, (lua_Number)v);
        else ga_pushint64(L, v);
      } else if (tag == 'f') {
        uint64_t u = get_u64(p);
        double d;
        memcpy(&d, &u, 8);
        p += 8;
        lua_pushnumber(L, (lua_Number)d);
      } else {
        uint32_t len;
        memcpy(&len, p, 4);
        p += 4;
        lua_pushlstring(L, p, len);
        p += len;
      }
      lua_setfield(L, -2, nm);
    }
    if (lua_pcall(L, 1, 1, 0) != 0) {
      r->busy = 0;
      take(r, j);
      return lua_error(L);
    }
    n++;
    stop = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (stop) break;
  }
  r->busy = 0;
  take(r, j);
  ga_pushint64(L, n);
  return 1;
}

/* store:snapshot_reader{ worker = bool, mmap_size = bytes } -> reader | nil, err, code
 * Begins the read transaction verify() reads in (on the store's connection)
 * and, with worker, a worker connection at the same snapshot (see the top
 * of this file); a store in memory, a worker connection that cannot open or
 * cannot meet the snapshot: one thread (reader:parallel() false). mmap_size:
 * set on both connections (the store's own setting restored on close). */
int ga_sqlite_snapshot_reader(lua_State *L) {
  store *s = ga_sqlite_check(L);
  int want = 0, tries, ri, rc;
  long long mmap = -1;
  reader *r;
  const char *path;
  char sql[64];
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "worker");
    want = lua_toboolean(L, -1);
    lua_getfield(L, 2, "mmap_size");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &mmap) || mmap < 0))
      return luaL_argerror(L, 2, "mmap_size must be a non-negative integer number of bytes");
    lua_pop(L, 2);
  }
  r = (reader *)ga_newuserdata(L, sizeof *r);
  memset(r, 0, sizeof *r);
  ri = lua_gettop(L);
  ga_hasher_init(&r->h);
  luaL_getmetatable(L, READER_MT);
  lua_setmetatable(L, -2);
  lua_createtable(L, 1, 0); /* the store stays alive as long as its reader */
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  ga_setuservalue(L, ri);
  r->s = s;
  r->query_ms = s->query_ms;
  if (pthread_mutex_init(&r->mu, NULL) != 0) return ga_fail(L, "ASYNC", "cannot create a mutex");
  if (pthread_cond_init(&r->cv, NULL) != 0) {
    pthread_mutex_destroy(&r->mu);
    return ga_fail(L, "ASYNC", "cannot create a condition variable");
  }
  r->sync_init = 1;
  if (!sqlite3_get_autocommit(s->db)) { /* a transaction of the caller's: read in it, one thread */
    lua_pushvalue(L, ri);
    return 1;
  }
  path = sqlite3_db_filename(s->db, "main");
  if (want && path && *path) {
    int flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX;
    rc = sqlite3_open_v2(path, &r->db, flags, NULL);
    if (rc == SQLITE_OK) {
      sqlite3_extended_result_codes(r->db, 1);
      sqlite3_busy_timeout(r->db, (int)s->busy_ms);
      if (s->length_limit > 0) sqlite3_limit(r->db, SQLITE_LIMIT_LENGTH, (int)s->length_limit);
      sqlite3_progress_handler(r->db, 1000, worker_progress, r);
      rc = ga_sqlite_register_hashes(r->db, &r->h);
    }
    if (rc != SQLITE_OK) { /* one thread, then */
      sqlite3_close_v2(r->db);
      r->db = NULL;
    }
  }
  if (mmap >= 0) {
    r->mmap_prev = db_int(s->db, "PRAGMA mmap_size");
    snprintf(sql, sizeof sql, "PRAGMA mmap_size=%lld", mmap);
    if (r->mmap_prev >= 0 && db_exec(s->db, sql) == SQLITE_OK) r->mmap_set = 1;
    if (r->db) db_exec(r->db, sql);
  }
  for (tries = 1;; tries++) {
    long long d1 = r->db ? db_int(r->db, "PRAGMA data_version") : -1, d2 = -2;
    if (begin_read(s->db) != SQLITE_OK) {
      int res = ga_sqlite_fail(L, s, "cannot begin verify's read transaction");
      reader_close(r);
      return res;
    }
    r->main_txn = 1;
    if (!r->db) break;
    if (begin_read(r->db) == SQLITE_OK) d2 = db_int(r->db, "PRAGMA data_version");
    if (d1 >= 0 && d1 == d2) break; /* no commit between: one snapshot */
    end_read(r->db);
    if (tries >= SNAP_TRIES) { /* a writer that never pauses: one thread */
      sqlite3_close_v2(r->db);
      r->db = NULL;
      break;
    }
    end_read(s->db);
    r->main_txn = 0;
    ga_sleep_ns(100000u * (uint64_t)tries);
  }
  lua_pushvalue(L, ri);
  return 1;
}

void ga_sqlite_open_reader(lua_State *L) {
  static const luaL_Reg methods[] = {{"parallel", l_reader_parallel},
                                     {"start", l_reader_start},
                                     {"each", l_reader_each},
                                     {"stats", l_reader_stats},
                                     {"close", l_reader_close},
                                     {NULL, NULL}};
  ga_newclass(L, READER_MT, methods, l_reader_gc, l_reader_tostring);
}
