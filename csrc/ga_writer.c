/* ga_writer.c — the async writer: persist() copies a validated row into a
 * bounded in-memory queue and returns at once; one thread per writer drains
 * the queue into SQLite in batched transactions over its own connection.
 * Acknowledged rows are never dropped silently: a batch that cannot commit is
 * retried with backoff; a row SQLite refuses is counted as failed and its
 * error kept (flush/stats report it). Pure C: no lua_State in this file. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sqlite3.h>
#include "ga_private.h"

typedef struct item {
  struct item *next;
  size_t len[GA_NCOLS];
  unsigned char set[GA_NCOLS];
  size_t total;
  char data[]; /* the columns' bytes, back to back */
} item;

struct ga_writer {
  pthread_mutex_t mu;
  pthread_cond_t not_empty, not_full, idle;
  pthread_t thread;
  item *head, *tail;
  ga_writer_opts o;
  ga_writer_stats st;
  uint64_t pushed, done; /* rows pushed; rows written or failed */
  int stopping;
  sqlite3 *db;
  sqlite3_stmt *insert;
};

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static void deadline_in(struct timespec *ts, long ms) {
  clock_gettime(CLOCK_REALTIME, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

static void set_error(ga_writer *w, const char *what, const char *msg) {
  pthread_mutex_lock(&w->mu);
  snprintf(w->st.last_error, sizeof w->st.last_error, "%s: %s", what, msg);
  pthread_mutex_unlock(&w->mu);
}

static void bind_item(sqlite3_stmt *st, const item *it) {
  const char *p = it->data;
  int i;
  for (i = 0; i < GA_NCOLS; i++) {
    if (it->set[i]) sqlite3_bind_text64(st, i + 1, p, it->len[i], SQLITE_STATIC, SQLITE_UTF8);
    else sqlite3_bind_null(st, i + 1);
    p += it->len[i];
  }
}

/* Writes one batch in one transaction: 0 when committed, -1 when it must be
 * retried (busy, I/O, disk full: nothing of it was committed). A row SQLite
 * refuses for itself (a constraint) is counted failed, freed and set to NULL
 * in `batch`, so a retry skips it. */
static int write_batch(ga_writer *w, item **batch, int n) {
  int i, rc;
  if (sqlite3_exec(w->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
    set_error(w, "cannot begin batch", sqlite3_errmsg(w->db));
    return -1;
  }
  for (i = 0; i < n; i++) {
    if (!batch[i]) continue;
    bind_item(w->insert, batch[i]);
    rc = sqlite3_step(w->insert);
    sqlite3_reset(w->insert);
    sqlite3_clear_bindings(w->insert);
    if (rc == SQLITE_DONE) continue;
    rc &= 0xff;
    if (rc == SQLITE_CONSTRAINT || rc == SQLITE_MISMATCH || rc == SQLITE_TOOBIG || rc == SQLITE_ERROR) {
      set_error(w, "row refused", sqlite3_errmsg(w->db));
      pthread_mutex_lock(&w->mu);
      w->st.failed++;
      pthread_mutex_unlock(&w->mu);
      free(batch[i]);
      batch[i] = NULL;
      continue;
    }
    set_error(w, "batch interrupted", sqlite3_errmsg(w->db));
    sqlite3_exec(w->db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
  }
  if (sqlite3_exec(w->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
    set_error(w, "cannot commit batch", sqlite3_errmsg(w->db));
    sqlite3_exec(w->db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
  }
  return 0;
}

static int is_stopping(ga_writer *w) {
  int s;
  pthread_mutex_lock(&w->mu);
  s = w->stopping;
  pthread_mutex_unlock(&w->mu);
  return s;
}

/* Retries at shutdown before a batch is given up (and counted failed). */
#define STOP_RETRIES 20

static void *writer_main(void *arg) {
  ga_writer *w = (ga_writer *)arg;
  item **batch = (item **)calloc((size_t)w->o.batch, sizeof *batch);
  if (!batch) {
    set_error(w, "writer thread", "out of memory");
    return NULL; /* ga_writer_stop frees what is queued and counts it failed */
  }
  for (;;) {
    int n = 0, i, ok, attempts = 0;
    long backoff = 5;
    size_t bytes = 0;
    uint64_t written = 0;
    pthread_mutex_lock(&w->mu);
    while (!w->head && !w->stopping) pthread_cond_wait(&w->not_empty, &w->mu);
    if (!w->head) { /* stopping, and drained */
      pthread_mutex_unlock(&w->mu);
      break;
    }
    while (w->head && n < w->o.batch) {
      item *it = w->head;
      w->head = it->next;
      if (!w->head) w->tail = NULL;
      batch[n++] = it;
      bytes += it->total;
    }
    pthread_mutex_unlock(&w->mu);
    while ((ok = write_batch(w, batch, n)) != 0) {
      pthread_mutex_lock(&w->mu);
      w->st.retries++;
      pthread_mutex_unlock(&w->mu);
      if (is_stopping(w) && ++attempts >= STOP_RETRIES) break;
      sleep_ms(backoff);
      if (backoff < 1000) backoff *= 2;
    }
    for (i = 0; i < n; i++) {
      if (batch[i]) written++;
      free(batch[i]);
      batch[i] = NULL;
    }
    pthread_mutex_lock(&w->mu);
    if (ok == 0) {
      w->st.written += written;
      w->st.batches++;
    } else {
      w->st.failed += written; /* given up at shutdown: none of them committed */
    }
    w->done += (uint64_t)n;
    w->st.pending -= (size_t)n;
    w->st.pending_bytes -= bytes;
    pthread_cond_broadcast(&w->not_full);
    pthread_cond_broadcast(&w->idle);
    pthread_mutex_unlock(&w->mu);
  }
  free(batch);
  return NULL;
}

ga_writer *ga_writer_start(const char *path, const ga_writer_opts *o, char *err, size_t errlen) {
  static const char *const syncs[] = {"OFF", "NORMAL", "FULL", "EXTRA"};
  ga_writer *w = (ga_writer *)calloc(1, sizeof *w);
  char sql[64];
  sigset_t all, old;
  int rc;
  if (!w) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  w->o = *o;
  if (w->o.batch < 1) w->o.batch = 1;
  if (w->o.capacity < 1) w->o.capacity = 1;
  if (sqlite3_open_v2(path, &w->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI, NULL) !=
      SQLITE_OK) {
    snprintf(err, errlen, "writer cannot open '%s': %s", path, w->db ? sqlite3_errmsg(w->db) : "out of memory");
    goto fail;
  }
  sqlite3_busy_timeout(w->db, (int)o->busy_timeout_ms);
  snprintf(sql, sizeof sql, "PRAGMA synchronous=%s", syncs[o->synchronous & 3]);
  if (sqlite3_exec(w->db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_exec(w->db, sql, NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_prepare_v3(w->db, ga_sql_insert, -1, SQLITE_PREPARE_PERSISTENT, &w->insert, NULL) != SQLITE_OK) {
    snprintf(err, errlen, "writer cannot prepare '%s': %s", path, sqlite3_errmsg(w->db));
    goto fail;
  }
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->not_empty, NULL);
  pthread_cond_init(&w->not_full, NULL);
  pthread_cond_init(&w->idle, NULL);
  /* the thread must never take the host's signals (nginx relies on them) */
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(&w->thread, NULL, writer_main, w);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    snprintf(err, errlen, "cannot start writer thread: %s", strerror(rc));
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->not_empty);
    pthread_cond_destroy(&w->not_full);
    pthread_cond_destroy(&w->idle);
    goto fail;
  }
  return w;
fail:
  sqlite3_finalize(w->insert);
  sqlite3_close_v2(w->db);
  free(w);
  return NULL;
}

int ga_writer_push(ga_writer *w, const ga_row *row, char *err, size_t errlen) {
  size_t total = 0, i;
  item *it;
  char *p;
  for (i = 0; i < GA_NCOLS; i++) total += row->col[i].set ? row->col[i].n : 0;
  if (total > w->o.max_bytes) {
    snprintf(err, errlen, "row of %zu bytes exceeds the queue's max_bytes (%zu)", total, w->o.max_bytes);
    return -1;
  }
  it = (item *)malloc(sizeof *it + total);
  if (!it) {
    snprintf(err, errlen, "out of memory");
    return -3;
  }
  it->next = NULL;
  it->total = total;
  p = it->data;
  for (i = 0; i < GA_NCOLS; i++) {
    it->set[i] = (unsigned char)row->col[i].set;
    it->len[i] = row->col[i].set ? row->col[i].n : 0;
    if (it->len[i]) memcpy(p, row->col[i].p, it->len[i]);
    p += it->len[i];
  }
  pthread_mutex_lock(&w->mu);
  while (!w->stopping &&
         (w->st.pending >= w->o.capacity || (w->st.pending > 0 && w->st.pending_bytes + total > w->o.max_bytes))) {
    if (!w->o.block) {
      pthread_mutex_unlock(&w->mu);
      free(it);
      snprintf(err, errlen, "queue full (%zu rows pending)", w->o.capacity);
      return -1;
    }
    pthread_cond_wait(&w->not_full, &w->mu);
  }
  if (w->stopping) {
    pthread_mutex_unlock(&w->mu);
    free(it);
    snprintf(err, errlen, "writer is stopping");
    return -2;
  }
  if (w->tail) w->tail->next = it;
  else w->head = it;
  w->tail = it;
  w->pushed++;
  w->st.queued++;
  w->st.pending++;
  w->st.pending_bytes += total;
  if (w->st.pending > w->st.max_depth) w->st.max_depth = w->st.pending;
  pthread_cond_signal(&w->not_empty);
  pthread_mutex_unlock(&w->mu);
  return 0;
}

int ga_writer_flush(ga_writer *w, long timeout_ms) {
  struct timespec dl;
  int rc = 0;
  uint64_t target;
  if (timeout_ms >= 0) deadline_in(&dl, timeout_ms);
  pthread_mutex_lock(&w->mu);
  target = w->pushed;
  while (w->done < target && rc == 0) {
    if (timeout_ms < 0) pthread_cond_wait(&w->idle, &w->mu);
    else if (pthread_cond_timedwait(&w->idle, &w->mu, &dl) == ETIMEDOUT) rc = -1;
  }
  pthread_mutex_unlock(&w->mu);
  return rc;
}

void ga_writer_get_stats(ga_writer *w, ga_writer_stats *st) {
  pthread_mutex_lock(&w->mu);
  *st = w->st;
  pthread_mutex_unlock(&w->mu);
}

void ga_writer_stop(ga_writer *w) {
  if (!w) return;
  pthread_mutex_lock(&w->mu);
  w->stopping = 1;
  pthread_cond_broadcast(&w->not_empty);
  pthread_cond_broadcast(&w->not_full);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->thread, NULL);
  while (w->head) { /* only if the thread could not allocate its batch array */
    item *it = w->head;
    w->head = it->next;
    free(it);
    w->st.failed++;
  }
  sqlite3_finalize(w->insert);
  sqlite3_close_v2(w->db);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->not_empty);
  pthread_cond_destroy(&w->not_full);
  pthread_cond_destroy(&w->idle);
  free(w);
}
