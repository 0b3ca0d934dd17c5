/* ga_sqlagg.c — the SQLite store's aggregate functions behind the reports
 * (lua/genaudit/report.lua), registered on every connection a store opens:
 *
 *   genaudit_percentiles(x, p1, p2, ...)  the nearest-rank percentiles p1, p2,
 *       ... (integers 1..100) of the non-NULL x of the group: the value at
 *       rank ceil(p * n / 100) in ascending order, n the count of non-NULL x.
 *       Text "v1,v2,..." (integers as decimal digits, reals as the 17
 *       significant digits that read back as the same double); NULL when no
 *       x is non-NULL.
 *   genaudit_sum_ordered(x)  the sum of the non-NULL x of the group added up
 *       in ascending order, as a REAL (NULL when there is none): what
 *       sum(x) OVER (ORDER BY x ...) over the whole group gives, without a
 *       window.
 *
 * The window-function way SQLite 3.40 offers (row_number() over each group,
 * then a CASE per percentile) sorts every row through temporary B-trees once
 * per measure; these collect the group's values in one array and select in
 * it (quickselect, falling back to a sort when the partitions go badly), so
 * a report costs about one scan of its covering index. Values stay exact:
 * integers are kept as 64-bit integers until a real joins them, then every
 * value is a double (as SQLite compares mixed values). A value that is not a
 * number (text that does not read as one, a blob) is an error, not a zero:
 * a report must not rank or add what it cannot read. Memory: 8 bytes per
 * value of the group, through sqlite3_realloc64 (SQLite's own accounting:
 * sqlite3_hard_heap_limit64 bounds it). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ga_sqlite.h"

#define MAX_PCT 16

typedef struct {
  union {
    sqlite3_int64 *i;
    double *d;
  } v;
  sqlite3_int64 n, cap;
  int reals;  /* 1: v.d holds every value as a double */
  int failed; /* 1 out of memory, 2 a value that is not a number: the result is an error */
  int npct;   /* 0 until the first row: genaudit_percentiles' p1, p2, ... */
  int pct[MAX_PCT];
} vals;

/* Adds x's value (non-NULL) to a; 0, 1 when out of memory, 2 when it is not
 * a number (text reading as one counts as that number, as in SQLite's sum). */
static int vals_add(vals *a, sqlite3_value *x) {
  int t = sqlite3_value_numeric_type(x);
  if (t != SQLITE_INTEGER && t != SQLITE_FLOAT) return 2;
  if (t == SQLITE_FLOAT && !a->reals) { /* a real: doubles from now on */
    sqlite3_int64 k;
    for (k = 0; k < a->n; k++) a->v.d[k] = (double)a->v.i[k];
    a->reals = 1;
  }
  if (a->n == a->cap) {
    sqlite3_int64 cap = a->cap ? a->cap * 2 : 64;
    void *p = sqlite3_realloc64(a->v.i, (sqlite3_uint64)cap * 8u);
    if (!p) return 1;
    a->v.i = p;
    a->cap = cap;
  }
  if (a->reals) a->v.d[a->n++] = sqlite3_value_double(x);
  else a->v.i[a->n++] = sqlite3_value_int64(x);
  return 0;
}

static int cmp_i(const void *a, const void *b) {
  sqlite3_int64 x = *(const sqlite3_int64 *)a, y = *(const sqlite3_int64 *)b;
  return (x > y) - (x < y);
}
static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Puts the k-th smallest of v[lo..hi] (0-based k within the whole array) at
 * v[k], smaller ones before it and larger ones after it. Quickselect with a
 * median-of-three pivot; after 2 log2(n) rounds the rest is sorted instead,
 * so no input makes it quadratic. One body for both element types. */
#define SELECT_BODY(T, CMP)                                                          \
  {                                                                                  \
    int budget = 2;                                                                  \
    sqlite3_int64 m;                                                                 \
    for (m = hi - lo + 1; m > 1; m >>= 1) budget += 2;                               \
    while (hi > lo) {                                                                \
      sqlite3_int64 i = lo, j = hi, mid = lo + (hi - lo) / 2;                        \
      T a = v[lo], b = v[mid], c = v[hi], piv, t;                                    \
      if (budget-- == 0) {                                                           \
        qsort(v + lo, (size_t)(hi - lo + 1), sizeof(T), CMP);                        \
        return;                                                                      \
      }                                                                              \
      piv = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));   \
      while (i <= j) {                                                               \
        while (v[i] < piv) i++;                                                      \
        while (piv < v[j]) j--;                                                      \
        if (i <= j) {                                                                \
          t = v[i]; v[i] = v[j]; v[j] = t;                                           \
          i++; j--;                                                                  \
        }                                                                            \
      }                                                                              \
      if (k <= j) hi = j;                                                            \
      else if (k >= i) lo = i;                                                       \
      else return;                                                                   \
    }                                                                                \
  }
static void select_i(sqlite3_int64 *v, sqlite3_int64 lo, sqlite3_int64 hi, sqlite3_int64 k) SELECT_BODY(sqlite3_int64, cmp_i)
static void select_d(double *v, sqlite3_int64 lo, sqlite3_int64 hi, sqlite3_int64 k) SELECT_BODY(double, cmp_d)

static void agg_free(vals *a) {
  sqlite3_free(a->v.i);
  memset(a, 0, sizeof *a);
}

/* One row's x: NULL skipped; after a failure the rest is skipped too. */
static void add_value(vals *a, sqlite3_value *x) {
  if (!a->failed && sqlite3_value_type(x) != SQLITE_NULL) a->failed = vals_add(a, x);
}

/* The final result for a failed group (a->failed set); frees a. */
static void fail_final(sqlite3_context *ctx, vals *a, const char *fn) {
  int why = a->failed;
  agg_free(a);
  if (why == 1) {
    sqlite3_result_error_nomem(ctx);
  } else {
    char msg[96];
    snprintf(msg, sizeof msg, "%s: a value is not a number (text or blob)", fn);
    sqlite3_result_error(ctx, msg, -1);
  }
}

static void pct_step(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  vals *a = sqlite3_aggregate_context(ctx, sizeof(vals));
  if (!a) {
    sqlite3_result_error_nomem(ctx);
    return;
  }
  if (a->npct == 0) { /* the first row: the percentiles asked for */
    int i;
    if (argc < 2 || argc - 1 > MAX_PCT) {
      sqlite3_result_error(ctx, "genaudit_percentiles: from 1 to 16 percentiles", -1);
      return;
    }
    for (i = 1; i < argc; i++) {
      sqlite3_int64 p = sqlite3_value_int64(argv[i]);
      if (sqlite3_value_type(argv[i]) != SQLITE_INTEGER || p < 1 || p > 100) {
        sqlite3_result_error(ctx, "genaudit_percentiles: a percentile is an integer from 1 to 100", -1);
        return;
      }
      a->pct[i - 1] = (int)p;
    }
    a->npct = argc - 1;
  }
  add_value(a, argv[0]);
}

static void pct_final(sqlite3_context *ctx) {
  vals *a = sqlite3_aggregate_context(ctx, 0);
  char out[MAX_PCT * 32];
  size_t len = 0;
  int i;
  sqlite3_int64 lo = 0;
  if (!a) return; /* no rows: NULL */
  if (a->failed) {
    fail_final(ctx, a, "genaudit_percentiles");
    return;
  }
  if (a->n == 0) {
    agg_free(a);
    return; /* NULL */
  }
  for (i = 0; i < a->npct; i++) {
    /* rank ceil(p n / 100), 1-based; ascending p lets each select start
     * where the last one ended (everything before it is smaller) */
    sqlite3_int64 k = (a->n * a->pct[i] + 99) / 100 - 1;
    int w;
    if (k < lo) lo = 0; /* percentiles not in ascending order: select over the whole array */
    if (a->reals) {
      select_d(a->v.d, lo, a->n - 1, k);
      w = snprintf(out + len, sizeof out - len, "%s%.17g", i ? "," : "", a->v.d[k]);
    } else {
      select_i(a->v.i, lo, a->n - 1, k);
      w = snprintf(out + len, sizeof out - len, "%s%lld", i ? "," : "", (long long)a->v.i[k]);
    }
    lo = k;
    if (w < 0 || (size_t)w >= sizeof out - len) break;
    len += (size_t)w;
  }
  agg_free(a);
  sqlite3_result_text(ctx, out, (int)len, SQLITE_TRANSIENT);
}

static void sum_step(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  vals *a = sqlite3_aggregate_context(ctx, sizeof(vals));
  (void)argc;
  if (!a) {
    sqlite3_result_error_nomem(ctx);
    return;
  }
  add_value(a, argv[0]);
}

static void sum_final(sqlite3_context *ctx) {
  vals *a = sqlite3_aggregate_context(ctx, 0);
  double s = 0;
  sqlite3_int64 k;
  if (!a) return; /* no rows: NULL */
  if (a->failed) {
    fail_final(ctx, a, "genaudit_sum_ordered");
    return;
  }
  if (a->n == 0) {
    agg_free(a);
    return;
  }
  if (a->reals) {
    qsort(a->v.d, (size_t)a->n, sizeof(double), cmp_d);
    for (k = 0; k < a->n; k++) s += a->v.d[k];
  } else {
    qsort(a->v.i, (size_t)a->n, sizeof(sqlite3_int64), cmp_i);
    for (k = 0; k < a->n; k++) s += (double)a->v.i[k];
  }
  agg_free(a);
  sqlite3_result_double(ctx, s);
}

int ga_sqlite_register_aggregates(sqlite3 *db) {
  int rc = sqlite3_create_function_v2(db, "genaudit_percentiles", -1, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL,
                                      NULL, pct_step, pct_final, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_create_function_v2(db, "genaudit_sum_ordered", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL, NULL,
                                    sum_step, sum_final, NULL);
  return rc;
}
