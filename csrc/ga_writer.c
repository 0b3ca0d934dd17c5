/* ga_writer.c — the async writer: persist() copies a validated row into a
 * bounded in-memory queue and returns at once; one thread per writer drains
 * the queue in batched transactions over its own connection, through a
 * backend (SQLite's in ga_store_writer.c, PostgreSQL's in ga_pg_writer.c). This file
 * knows no database: no SQL, no driver header.
 * A second thread, the hasher, computes the SHA-256 digests of queued rows'
 * payloads (prompts, content, drafts: most of the bytes a seal hashes) ahead
 * of the writer while the writer is busy with a batch, so that on two cores
 * the chain's hashing overlaps the database's work; the writer seals a row
 * the hasher has not reached with its own hasher (the digests are the same).
 * Acknowledged rows are never dropped silently: a batch that cannot commit is
 * retried with backoff; a row the database refuses is counted as failed and
 * its error kept (flush/stats report it). Pure C: no lua_State in this file. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ga_private.h"

typedef struct ga_writer_item item;

/* The explicit ids (rows copied between stores) queued or in a batch being
 * written: a second row with one of them is refused at push time, before it
 * is acknowledged. Only rows that bring their id are here; a new ULID is
 * unique. */
#define IDSET_BUCKETS 1024
typedef struct idnode {
  struct idnode *next;
  char id[26];
} idnode;

static unsigned id_hash(const char *id) {
  unsigned h = 2166136261u;
  int i;
  for (i = 0; i < 26; i++) h = (h ^ (unsigned char)id[i]) * 16777619u;
  return h % IDSET_BUCKETS;
}
/* an item's payload digests: not computed yet, being computed by the
 * hasher, computed (ga_writer_item_digests gives them) */
enum { HASH_NONE, HASH_BUSY, HASH_DONE };
struct ga_writer_item {
  struct ga_writer_item *next;
  int explicit_id; /* the row brought its id: it sits in the writer's id set while queued */
  int hstate;      /* HASH_*, under the writer's mutex */
  ga_digests digest; /* HASH_DONE: the payloads' digests (written by the hasher while HASH_BUSY) */
  size_t len[GA_NCOLS];
  unsigned char set[GA_NCOLS];
  unsigned char tape[GA_NCOLS]; /* the column's bytes are a tape (ga_tape.c): its JSON is in `json` once ready */
  int ntapes;
  char *json;                   /* the tapes' JSON, back to back (item_ready); NULL before */
  size_t jlen[GA_NCOLS];
  size_t total;
  size_t cap; /* bytes data[] can hold (an item is reused for a row that fits) */
  char data[]; /* the columns' bytes, back to back */
};

struct ga_writer {
  pthread_mutex_t mu;
  pthread_cond_t not_empty, not_full, idle;
  pthread_cond_t to_hash; /* the hasher waits here for rows to digest */
  pthread_cond_t hashed;  /* an item left HASH_BUSY */
  pthread_t thread, hasher;
  int has_hasher;         /* the hasher thread runs (without it the writer digests every row) */
  int hasher_waiting;     /* the hasher is waiting on to_hash */
  int hasher_busy;        /* the hasher holds an item (HASH_BUSY) */
  int writing;            /* the writer thread is inside a batch */
  int lingering;          /* the writer waits (linger_ms) for a fuller batch */
  int flushing;           /* callers waiting in ga_writer_flush: no lingering */
  item *hnext;            /* the first queued item the hasher has not taken (those after it neither) */
  size_t unhashed;        /* queued items from hnext on */
  ga_hasher hh;           /* the hasher thread's own */
  item *head, *tail;
  ga_writer_opts o;
  ga_writer_stats st;
  uint64_t pushed, done; /* rows pushed; rows written or failed */
  uint64_t failed_reported; /* st.failed as last reported by ga_writer_take_failed */
  idnode **ids;             /* IDSET_BUCKETS chains: explicit ids queued or being written */
  int stopping;
  int dead; /* the thread could not run: push refuses, flush does not wait */
  const ga_writer_backend *be;
  void *conn; /* the backend's connection, used by the thread only */
  item *pool; /* written items kept for the next rows (POOL_*), under mu */
  size_t pool_n, pool_bytes;
  ga_buf scratch[5]; /* the pushing thread's (ga_writer_scratch) */
};

/* Written items are kept (at most POOL_ITEMS of them, POOL_BYTES in all,
 * none over POOL_ITEM_MAX) and reused by the next rows that fit: a row's
 * ~10-20 KB then costs no malloc, no free from the other thread, and no
 * fresh pages after the heap was trimmed (a page fault per 4 KB, the
 * largest cost of a push on a quiet queue). Capacities are rounded up to
 * POOL_ROUND so that rows of about one size share items. */
#define POOL_ITEMS 64
#define POOL_BYTES (4u * 1024u * 1024u)
#define POOL_ITEM_MAX (256u * 1024u)
#define POOL_ROUND 4096u

static void deadline_in(struct timespec *ts, long ms) {
  clock_gettime(CLOCK_REALTIME, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

static void item_free(item *it) {
  if (!it) return;
  free(it->json);
  free(it);
}

/* Makes the JSON of an item's tapes (the caller's thread left it to the
 * writer's threads): 0, or -1 (out of memory; the item is unchanged). Only
 * the thread that holds the item (the hasher while HASH_BUSY, else the
 * writer) calls it. */
static int item_ready(item *it) {
  ga_buf out;
  const char *p = it->data;
  size_t start[GA_NCOLS];
  int i;
  if (it->ntapes == 0 || it->json) return 0;
  ga_buf_init(&out);
  for (i = 0; i < GA_NCOLS; i++) {
    if (it->tape[i] && ga_tape_json(p, it->len[i], &out) != 0) {
      ga_buf_free(&out);
      return -1;
    }
    start[i] = out.len;
    p += it->len[i];
  }
  for (i = GA_NCOLS - 1; i > 0; i--) start[i] -= start[i - 1];
  for (i = 0; i < GA_NCOLS; i++) it->jlen[i] = start[i];
  it->json = out.buf ? out.buf : (char *)malloc(1);
  return it->json ? 0 : -1;
}

/* Keeps a written item for reuse, or frees it; the caller holds w->mu. */
static void recycle(ga_writer *w, item *it) {
  free(it->json);
  it->json = NULL;
  if (w->pool_n < POOL_ITEMS && it->cap <= POOL_ITEM_MAX && w->pool_bytes + it->cap <= POOL_BYTES) {
    it->next = w->pool;
    w->pool = it;
    w->pool_n++;
    w->pool_bytes += it->cap;
    return;
  }
  free(it);
}

/* An item that holds `total` bytes: a kept one that fits, or a new one. */
static item *item_alloc(ga_writer *w, size_t total) {
  item **pp, *it = NULL;
  size_t cap;
  pthread_mutex_lock(&w->mu);
  for (pp = &w->pool; *pp; pp = &(*pp)->next)
    if ((*pp)->cap >= total && (*pp)->cap / 2 <= total + POOL_ROUND) { /* fits, and not far too large */
      it = *pp;
      *pp = it->next;
      w->pool_n--;
      w->pool_bytes -= it->cap;
      break;
    }
  pthread_mutex_unlock(&w->mu);
  if (it) return it;
  cap = total <= POOL_ITEM_MAX ? (total + POOL_ROUND - 1) / POOL_ROUND * POOL_ROUND : total;
  it = (item *)malloc(sizeof *it + cap);
  if (it) it->cap = cap;
  return it;
}

static void set_error(ga_writer *w, const char *what, const char *msg) {
  pthread_mutex_lock(&w->mu);
  snprintf(w->st.last_error, sizeof w->st.last_error, "%s: %s", what, msg);
  pthread_mutex_unlock(&w->mu);
}

void ga_writer_error(ga_writer *w, const char *what, const char *msg) { set_error(w, what, msg); }

/* Drops an item's id from the id set; the caller holds w->mu. */
static void forget_id(ga_writer *w, const item *it) {
  idnode **pp;
  if (!it->explicit_id || !w->ids) return;
  for (pp = &w->ids[id_hash(it->data)]; *pp; pp = &(*pp)->next)
    if (memcmp((*pp)->id, it->data, 26) == 0) {
      idnode *n = *pp;
      *pp = n->next;
      free(n);
      return;
    }
}

void ga_writer_refuse(ga_writer *w, item **batch, int i, const char *msg) {
  set_error(w, "row refused", msg);
  pthread_mutex_lock(&w->mu);
  w->st.failed++;
  forget_id(w, batch[i]);
  pthread_mutex_unlock(&w->mu);
  item_free(batch[i]);
  batch[i] = NULL;
}

const ga_digests *ga_writer_item_digests(const item *it) {
  return it->hstate == HASH_DONE ? &it->digest : NULL;
}

void ga_writer_item_cols(const item *it, ga_text cols[GA_NCOLS]) {
  const char *p = it->data, *j = it->json;
  int i;
  for (i = 0; i < GA_NCOLS; i++) {
    cols[i].set = it->set[i];
    if (it->tape[i]) { /* item_ready ran: the item's writer saw to it */
      cols[i].p = j;
      cols[i].n = it->jlen[i];
      j += it->jlen[i];
    } else {
      cols[i].p = p;
      cols[i].n = it->len[i];
    }
    p += it->len[i];
  }
}

static int is_stopping(ga_writer *w) {
  int s;
  pthread_mutex_lock(&w->mu);
  s = w->stopping;
  pthread_mutex_unlock(&w->mu);
  return s;
}

/* Retries at shutdown before a batch is given up (and counted failed); and
 * retries of a batch whose failure will not pass by waiting (backend
 * returned -2), at any time. */
#define STOP_RETRIES 20
/* A batch ends at BATCH_BYTES (or `batch` rows, whichever comes first; one
 * row at least): large rows do not hold the write lock for long. After a
 * batch that held it YIELD_AFTER_NS or more, the writer waits YIELD_MS
 * (backends that have such a lock: ga_writer_backend.yields). */
#define BATCH_BYTES (1024u * 1024u)
#define YIELD_AFTER_NS 10000000u
#define YIELD_MS 3
#define PERMANENT_RETRIES 5
/* The caller wakes a waiting hasher once this many rows wait for it while
 * the writer is inside a batch (one wake-up per few rows, not per row); the
 * writer wakes it whenever rows remain queued behind the batch it took. */
#define HASH_WAKE_ROWS 4

/* True while a lingering writer should wait on: rows short of a full batch
 * (`batch` rows, the queue's capacity or BATCH_BYTES, whichever is least),
 * and no flush or stop waiting for them. The caller holds w->mu. */
static int short_batch(const ga_writer *w) {
  size_t want = (size_t)w->o.batch < w->o.capacity ? (size_t)w->o.batch : w->o.capacity;
  return !w->stopping && !w->flushing && w->st.pending < want && w->st.pending_bytes < BATCH_BYTES &&
         w->st.pending_bytes < w->o.max_bytes;
}

/* Takes the queue's head off (the caller holds w->mu and the queue is not
 * empty): the writer's now, digested or not. */
static item *take_head(ga_writer *w) {
  item *it = w->head;
  w->head = it->next;
  if (!w->head) w->tail = NULL;
  if (w->hnext == it) { /* the hasher had not reached it: the writer digests it */
    w->hnext = it->next;
    w->unhashed--;
  }
  return it;
}

/* The hasher thread: digests the payloads of queued rows, oldest first,
 * while there are some it has not taken; waits on to_hash otherwise. An item
 * is HASH_BUSY while its digests are being written (outside the lock; the
 * writer waits on `hashed` before it uses such an item), HASH_DONE after, or
 * back to HASH_NONE if libcrypto failed (the writer then digests it). */
static void *hasher_main(void *arg) {
  ga_writer *w = (ga_writer *)arg;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    item *it;
    ga_text cols[GA_NCOLS];
    int ok;
    while (!w->hnext && !w->stopping) {
      w->hasher_waiting = 1;
      pthread_cond_wait(&w->to_hash, &w->mu);
      w->hasher_waiting = 0;
    }
    if (!w->hnext) break; /* stopping, and nothing left to digest */
    it = w->hnext;
    w->hnext = it->next;
    w->unhashed--;
    it->hstate = HASH_BUSY;
    w->hasher_busy = 1;
    pthread_mutex_unlock(&w->mu);
    ok = item_ready(it) == 0; /* out of memory: the writer tries again */
    if (ok) {
      ga_writer_item_cols(it, cols);
      ok = ga_hasher_payloads(&w->hh, cols, &it->digest) == 0;
    }
    pthread_mutex_lock(&w->mu);
    it->hstate = ok ? HASH_DONE : HASH_NONE;
    w->hasher_busy = 0;
    pthread_cond_broadcast(&w->hashed);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

static void *writer_main(void *arg) {
  ga_writer *w = (ga_writer *)arg;
  item **batch = (item **)calloc((size_t)w->o.batch, sizeof *batch);
  if (!batch) { /* fail everything queued, and refuse what comes: never wait forever */
    pthread_mutex_lock(&w->mu);
    snprintf(w->st.last_error, sizeof w->st.last_error, "writer thread: out of memory");
    w->dead = 1;
    w->hnext = NULL; /* the hasher takes no more, and gives back the one it holds */
    w->unhashed = 0;
    while (w->hasher_busy) pthread_cond_wait(&w->hashed, &w->mu);
    while (w->head) {
      item *it = w->head;
      w->head = it->next;
      w->st.pending_bytes -= it->total;
      w->st.pending--;
      w->st.failed++;
      w->done++;
      forget_id(w, it);
      item_free(it);
    }
    w->tail = NULL;
    pthread_cond_broadcast(&w->not_full);
    pthread_cond_broadcast(&w->idle);
    pthread_mutex_unlock(&w->mu);
    return NULL;
  }
  for (;;) {
    int n = 0, i, ok, attempts = 0, permanent = 0, more;
    uint64_t t0;
    long backoff = 5;
    size_t bytes = 0;
    uint64_t written = 0;
    pthread_mutex_lock(&w->mu);
    while (!w->head && !w->stopping) pthread_cond_wait(&w->not_empty, &w->mu);
    /* linger_ms: a short batch waits for more rows, so that under a steady
     * stream of single rows (a server's requests) one transaction commits
     * many of them instead of each commit rewriting the same pages; push
     * wakes it only once the batch is full, flush and stop at once */
    if (w->o.linger_ms > 0 && w->head && short_batch(w)) {
      struct timespec dl;
      deadline_in(&dl, w->o.linger_ms);
      w->lingering = 1;
      while (short_batch(w))
        if (pthread_cond_timedwait(&w->not_empty, &w->mu, &dl) == ETIMEDOUT) break;
      w->lingering = 0;
    }
    if (!w->head) { /* stopping, and drained */
      pthread_mutex_unlock(&w->mu);
      break;
    }
    while (w->head && n < w->o.batch && (n == 0 || bytes + w->head->total <= BATCH_BYTES)) {
      item *it = take_head(w);
      batch[n++] = it;
      bytes += it->total;
    }
    /* rows behind this batch: the hasher digests them while it is written */
    if (w->unhashed > 0 && w->hasher_waiting) pthread_cond_signal(&w->to_hash);
    for (i = 0; i < n; i++) /* at most one, the hasher's current item */
      while (batch[i]->hstate == HASH_BUSY) pthread_cond_wait(&w->hashed, &w->mu);
    w->writing = 1;
    pthread_mutex_unlock(&w->mu);
    for (i = 0; i < n; i++) /* the JSON the hasher did not make */
      if (item_ready(batch[i]) != 0) ga_writer_refuse(w, batch, i, "out of memory");
    t0 = ga_monotonic_ns();
    while ((ok = w->be->write_batch(w->conn, w, batch, n)) != 0) {
      pthread_mutex_lock(&w->mu);
      w->st.retries++;
      pthread_mutex_unlock(&w->mu);
      if (is_stopping(w) && ++attempts >= STOP_RETRIES) break;
      if (ok == -2 && ++permanent >= PERMANENT_RETRIES) break;
      ga_sleep_ns((uint64_t)backoff * 1000000u);
      if (backoff < 1000) backoff *= 2;
    }
    pthread_mutex_lock(&w->mu);
    w->writing = 0;
    for (i = 0; i < n; i++) {
      if (!batch[i]) continue;
      written++;
      forget_id(w, batch[i]); /* committed (the store finds it now) or given up */
      recycle(w, batch[i]);
      batch[i] = NULL;
    }
    if (ok == 0) {
      w->st.written += written;
      w->st.batches++;
    } else {
      w->st.failed += written; /* given up: none of them committed */
    }
    w->done += (uint64_t)n;
    w->st.pending -= (size_t)n;
    w->st.pending_bytes -= bytes;
    more = w->head != NULL;
    pthread_cond_broadcast(&w->not_full);
    pthread_cond_broadcast(&w->idle);
    pthread_mutex_unlock(&w->mu);
    /* a long batch: leave the lock free for a moment before the next one, so
     * other writers polling for it (a sync persist's busy handler polls every
     * 0.5-1.5 ms) get it within their busy_timeout instead of the writer
     * taking it back at once (only where there is such a lock: SQLite) */
    if (w->be->yields && more && ok == 0 && ga_monotonic_ns() - t0 >= YIELD_AFTER_NS) ga_sleep_ns(YIELD_MS * 1000000u);
  }
  free(batch);
  return NULL;
}

ga_writer *ga_writer_start_backend(const ga_writer_backend *be, void *conn, const ga_writer_opts *o, char *err,
                                  size_t errlen) {
  ga_writer *w = (ga_writer *)calloc(1, sizeof *w);
  sigset_t all, old;
  int rc;
  if (!w) {
    snprintf(err, errlen, "out of memory");
    be->close(conn);
    return NULL;
  }
  w->o = *o;
  w->be = be;
  w->conn = conn;
  w->ids = (idnode **)calloc(IDSET_BUCKETS, sizeof *w->ids);
  if (!w->ids) {
    snprintf(err, errlen, "out of memory");
    be->close(conn);
    free(w);
    return NULL;
  }
  if (w->o.batch < 1) w->o.batch = 1;
  if (w->o.capacity < 1) w->o.capacity = 1;
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->not_empty, NULL);
  pthread_cond_init(&w->not_full, NULL);
  pthread_cond_init(&w->idle, NULL);
  pthread_cond_init(&w->to_hash, NULL);
  pthread_cond_init(&w->hashed, NULL);
  ga_hasher_init(&w->hh);
  /* the threads must never take the host's signals (nginx relies on them) */
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(&w->thread, NULL, writer_main, w);
  /* no hasher: the writer digests every row itself (only slower) */
  if (rc == 0) w->has_hasher = pthread_create(&w->hasher, NULL, hasher_main, w) == 0;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    snprintf(err, errlen, "cannot start writer thread: %s", strerror(rc));
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->not_empty);
    pthread_cond_destroy(&w->not_full);
    pthread_cond_destroy(&w->idle);
    pthread_cond_destroy(&w->to_hash);
    pthread_cond_destroy(&w->hashed);
    be->close(conn);
    free(w->ids);
    free(w);
    return NULL;
  }
  return w;
}

/* Is id in the id set? The caller holds w->mu. */
static int id_known(ga_writer *w, const char *id) {
  idnode *n;
  for (n = w->ids[id_hash(id)]; n; n = n->next)
    if (memcmp(n->id, id, 26) == 0) return 1;
  return 0;
}

int ga_writer_reserve_id(ga_writer *w, const char *id, char *err, size_t errlen) {
  idnode *node = (idnode *)malloc(sizeof *node);
  if (!node) {
    snprintf(err, errlen, "out of memory");
    return -3;
  }
  memcpy(node->id, id, 26);
  pthread_mutex_lock(&w->mu);
  if (id_known(w, id)) {
    pthread_mutex_unlock(&w->mu);
    free(node);
    snprintf(err, errlen, "a snapshot with id %.26s is queued already", id);
    return -4;
  }
  node->next = w->ids[id_hash(id)];
  w->ids[id_hash(id)] = node;
  pthread_mutex_unlock(&w->mu);
  return 0;
}

void ga_writer_release_id(ga_writer *w, const char *id) {
  idnode **pp;
  pthread_mutex_lock(&w->mu);
  for (pp = &w->ids[id_hash(id)]; *pp; pp = &(*pp)->next)
    if (memcmp((*pp)->id, id, 26) == 0) {
      idnode *n = *pp;
      *pp = n->next;
      free(n);
      break;
    }
  pthread_mutex_unlock(&w->mu);
}

const char *ga_writer_push_code(int r) {
  return r == -1 ? "FULL" : r == -2 ? "STOPPED" : r == -4 ? "CONSTRAINT" : "NOMEM";
}

size_t ga_writer_row_bytes(const ga_row *row) {
  size_t total = 0;
  int i;
  for (i = 0; i < GA_NCOLS; i++) total += ga_row_len(row, i);
  return total;
}

size_t ga_writer_row_held(const ga_row *row) {
  size_t total = 0;
  int i;
  for (i = 0; i < GA_NCOLS; i++) total += row->col[i].set ? row->col[i].n : 0;
  return total;
}

size_t ga_writer_max_bytes(const ga_writer *w) { return w->o.max_bytes; }

ga_buf *ga_writer_scratch(ga_writer *w) { return w->scratch; }

int ga_writer_push(ga_writer *w, const ga_row *row, int explicit_id, char *err, size_t errlen) {
  size_t total = 0, bytes = ga_writer_row_bytes(row), i;
  item *it;
  idnode *node = NULL;
  char *p;
  /* a deferred row's bound is within max_bytes (the caller made its JSON otherwise) */
  if (bytes > w->o.max_bytes) {
    snprintf(err, errlen, "row of %zu bytes exceeds the queue's max_bytes (%zu)", bytes, w->o.max_bytes);
    return -1;
  }
  total = ga_writer_row_held(row);
  it = item_alloc(w, total);
  if (!it) {
    snprintf(err, errlen, "out of memory");
    return -3;
  }
  if (explicit_id == 1 && !(node = (idnode *)malloc(sizeof *node))) {
    free(it);
    snprintf(err, errlen, "out of memory");
    return -3;
  }
  it->next = NULL;
  it->json = NULL;
  it->ntapes = 0;
  it->explicit_id = explicit_id != 0;
  it->hstate = HASH_NONE;
  it->total = total;
  p = it->data;
  for (i = 0; i < GA_NCOLS; i++) {
    it->set[i] = (unsigned char)row->col[i].set;
    it->len[i] = row->col[i].set ? row->col[i].n : 0;
    it->tape[i] = (unsigned char)(row->deferred && it->set[i] && ga_row_json_slot((int)i) >= 0);
    it->ntapes += it->tape[i];
    if (it->len[i]) memcpy(p, row->col[i].p, it->len[i]);
    p += it->len[i];
  }
  if (node) memcpy(node->id, it->data, 26); /* the id column comes first */
  pthread_mutex_lock(&w->mu);
  while (!w->stopping &&
         (w->st.pending >= w->o.capacity || (w->st.pending > 0 && w->st.pending_bytes + total > w->o.max_bytes))) {
    if (!w->o.block) {
      pthread_mutex_unlock(&w->mu);
      free(node);
      item_free(it);
      snprintf(err, errlen, "queue full (%zu rows pending)", w->o.capacity);
      return -1;
    }
    pthread_cond_wait(&w->not_full, &w->mu);
  }
  if (w->dead) {
    pthread_mutex_unlock(&w->mu);
    free(node);
    free(it);
    snprintf(err, errlen, "writer thread is not running: %s", w->st.last_error);
    return -2;
  }
  if (w->stopping) {
    pthread_mutex_unlock(&w->mu);
    free(node);
    free(it);
    snprintf(err, errlen, "writer is stopping");
    return -2;
  }
  if (node && id_known(w, node->id)) {
    pthread_mutex_unlock(&w->mu);
    free(node);
    free(it);
    snprintf(err, errlen, "a snapshot with id %.26s is queued already", row->id);
    return -4;
  }
  if (node) {
    idnode **b = &w->ids[id_hash(node->id)];
    node->next = *b;
    *b = node;
  }
  if (w->tail) w->tail->next = it;
  else w->head = it;
  w->tail = it;
  if (!w->hnext) w->hnext = it;
  w->unhashed++;
  if (w->writing && w->hasher_waiting && w->unhashed >= HASH_WAKE_ROWS) pthread_cond_signal(&w->to_hash);
  w->pushed++;
  w->st.queued++;
  w->st.pending++;
  w->st.pending_bytes += total;
  if (w->st.pending > w->st.max_depth) w->st.max_depth = w->st.pending;
  if (!w->lingering || !short_batch(w)) pthread_cond_signal(&w->not_empty);
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
  w->flushing++;
  if (w->lingering) pthread_cond_signal(&w->not_empty); /* commit what is queued now */
  while (w->done < target && rc == 0) {
    if (timeout_ms < 0) pthread_cond_wait(&w->idle, &w->mu);
    else if (pthread_cond_timedwait(&w->idle, &w->mu, &dl) == ETIMEDOUT) rc = -1;
  }
  w->flushing--;
  pthread_mutex_unlock(&w->mu);
  return rc;
}

uint64_t ga_writer_take_failed(ga_writer *w, char *last_error, size_t errlen) {
  uint64_t n;
  pthread_mutex_lock(&w->mu);
  n = w->st.failed - w->failed_reported;
  w->failed_reported = w->st.failed;
  snprintf(last_error, errlen, "%s", w->st.last_error);
  pthread_mutex_unlock(&w->mu);
  return n;
}

void ga_writer_get_stats(ga_writer *w, ga_writer_stats *st) {
  pthread_mutex_lock(&w->mu);
  *st = w->st;
  pthread_mutex_unlock(&w->mu);
}

void ga_writer_stop(ga_writer *w) {
  int i;
  if (!w) return;
  pthread_mutex_lock(&w->mu);
  w->stopping = 1;
  pthread_cond_broadcast(&w->not_empty);
  pthread_cond_broadcast(&w->not_full);
  pthread_cond_broadcast(&w->to_hash);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->thread, NULL);
  if (w->has_hasher) pthread_join(w->hasher, NULL);
  ga_hasher_free(&w->hh);
  while (w->head) { /* only if the thread could not allocate its batch array */
    item *it = w->head;
    w->head = it->next;
    item_free(it);
    w->st.failed++;
  }
  w->be->close(w->conn);
  while (w->pool) {
    item *it = w->pool;
    w->pool = it->next;
    free(it);
  }
  for (i = 0; i < 5; i++) ga_buf_free(&w->scratch[i]);
  for (i = 0; i < IDSET_BUCKETS; i++)
    while (w->ids[i]) {
      idnode *n = w->ids[i];
      w->ids[i] = n->next;
      free(n);
    }
  free(w->ids);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->not_empty);
  pthread_cond_destroy(&w->not_full);
  pthread_cond_destroy(&w->idle);
  pthread_cond_destroy(&w->to_hash);
  pthread_cond_destroy(&w->hashed);
  free(w);
}
