/* ga_pg.c — the PostgreSQL snapshot store over libpq, with the SQLite store's
 * interface: migrations tracked in schema_migrations (each in one transaction,
 * under an advisory lock so a fleet can open at once), persist of one snapshot
 * through a prepared INSERT, read-only queries with bound parameters through a
 * per-connection cache of prepared statements, each() through a cursor, and
 * async mode on the shared writer thread (ga_writer.c) with a COPY per batch.
 * A lost connection is re-established with backoff, in sync and async mode;
 * a snapshot is reported persisted only once its transaction committed.
 * All SQL this file sends sits in the block below; the schema lives in
 * migrations/postgresql/. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <libpq-fe.h>
#include "ga_private.h"

#define PG_MT "genaudit.pg_store"
#define BOX_MT "genaudit.pg_box"
#define QCACHE 16
#define MAX_PARAMS 65535
#define FETCH_ROWS 256

/* Built-in type OIDs (pg_type_d.h is a server header, not in libpq-dev). */
enum {
  OID_BOOL = 16, OID_BYTEA = 17, OID_INT8 = 20, OID_INT2 = 21, OID_INT4 = 23, OID_TEXT = 25,
  OID_FLOAT4 = 700, OID_FLOAT8 = 701, OID_TIMESTAMP = 1114, OID_TIMESTAMPTZ = 1184, OID_NUMERIC = 1700
};

/* ---- the statements this file sends ---- */
#define SNAPSHOT_COLUMNS                                                                          \
  "id, created_at, org_id, user_id, platform, template_id, template_version, status, content, " \
  "error, final_system_prompt, final_user_prompt, token_metrics, performance_metrics, "          \
  "repair_metrics, request_params, replay_of"
/* Every session: UTC text timestamps, ISO dates, shortest exact floats, hex bytea. */
static const char SQL_SETUP[] =
    "SET TimeZone TO 'UTC'; SET DateStyle TO 'ISO, YMD'; SET IntervalStyle TO 'postgres';"
    " SET extra_float_digits TO 1; SET bytea_output TO 'hex'";
static const char SQL_INSERT[] =
    "INSERT INTO generation_snapshots (" SNAPSHOT_COLUMNS ") VALUES"
    " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";
static const char SQL_COPY[] = "COPY generation_snapshots (" SNAPSHOT_COLUMNS ") FROM STDIN";
/* one lock for every genaudit migration in a database: 'genaudit' in ASCII */
static const char SQL_MIGRATION_LOCK[] = "SELECT pg_advisory_xact_lock(7450482329108636020)";
static const char SQL_MIGRATIONS_TABLE[] =
    "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
    " applied_at timestamptz(3) NOT NULL DEFAULT now())";
static const char SQL_MIGRATIONS_EXIST[] = "SELECT to_regclass('schema_migrations') IS NOT NULL";
static const char SQL_MIGRATIONS_APPLIED[] = "SELECT version FROM schema_migrations";
static const char SQL_MIGRATION_APPLIED[] = "SELECT 1 FROM schema_migrations WHERE version = $1";
static const char SQL_MIGRATION_RECORD[] = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)";
static const char SQL_SCHEMA_VERSION[] = "SELECT coalesce(max(version), 0) FROM schema_migrations";
/* after every query()/each(): the session keeps no advisory lock of a query's */
#define SQL_UNLOCK_ALL "SELECT pg_advisory_unlock_all()"
static const char SQL_ID_STORED[] = "SELECT 1 FROM generation_snapshots WHERE id = $1";
#define INSERT_NAME "ga_insert"
#define PKEY_NAME "generation_snapshots_pkey"

/* ---- connection settings, shared by a store and its writer ---- */
typedef struct {
  char *url;      /* as given: may hold a password, never shown */
  char *display;  /* the URL without its password */
  char *password; /* scrubbed from every message; NULL when none */
  char *schema;   /* opts.schema: created by migrate(), first on search_path */
  int readonly;
  long connect_timeout_s;
  long reconnect_ms; /* how long to keep trying to re-establish a lost connection */
  long lock_ms;      /* how long migrate() waits for the migration lock (0: no limit) */
  long query_ms;     /* opts.query_timeout: statement_timeout of query()/each() (0: none) */
} pgcfg;

typedef struct {
  char *key; /* translated SQL, '\0', one type letter per parameter */
  size_t keylen;
  Oid *types; /* as prepared (after the text fallback) */
  int nparams;
  unsigned id; /* prepared as "ga_q<id>" */
  uint64_t used;
} qentry;

typedef struct {
  PGconn *conn; /* NULL once closed */
  pgcfg cfg;
  qentry q[QCACHE];
  uint64_t tick;
  unsigned next_id;
  int insert_ready;
  int each_depth; /* open each() calls: a read-only transaction is open */
  ga_ulid_state ulid;
  ga_writer *writer; /* non-NULL in async mode */
  uint64_t persisted, reconnects;
} pgstore;

static void sleep_ms(long ms) {
  struct timespec ts;
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (ms % 1000) * 1000000L;
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static char *dupstr(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = (char *)malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

/* ---- messages: one line, never a password ---- */

/* Copies msg into out as one line (newlines and tabs folded into spaces,
 * trimmed) with every occurrence of the password replaced by "***". */
static void clean_message(const pgcfg *c, const char *msg, char *out, size_t outlen) {
  size_t o = 0, pwlen = c && c->password ? strlen(c->password) : 0;
  int space = 0;
  if (outlen == 0) return;
  if (!msg) msg = "unknown error";
  while (*msg == ' ' || *msg == '\n' || *msg == '\t' || *msg == '\r') msg++;
  while (*msg && o + 1 < outlen) {
    if (pwlen && strncmp(msg, c->password, pwlen) == 0) {
      const char *stars = "***";
      while (*stars && o + 1 < outlen) out[o++] = *stars++;
      msg += pwlen;
      space = 0;
      continue;
    }
    if (*msg == '\n' || *msg == '\t' || *msg == '\r' || *msg == ' ') {
      space = 1;
      msg++;
      continue;
    }
    if (space && o > 0 && o + 2 < outlen) out[o++] = ' ';
    space = 0;
    out[o++] = *msg++;
  }
  out[o] = '\0';
}

static int state_is(const PGresult *r, const char *prefix) {
  const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  return st && strncmp(st, prefix, strlen(prefix)) == 0;
}

/* Writes the error of r (or of the connection) into err; returns its code:
 * CONNECT (the connection is gone), READONLY, CONSTRAINT or SQL. */
static const char *pg_error(PGconn *conn, const PGresult *r, const pgcfg *c, char *err, size_t errlen) {
  const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
  if (!msg && r && *PQresultErrorMessage(r)) msg = PQresultErrorMessage(r);
  if (!msg) msg = PQerrorMessage(conn);
  clean_message(c, msg, err, errlen);
  if (PQstatus(conn) != CONNECTION_OK || state_is(r, "08") || state_is(r, "57P")) return "CONNECT";
  if (state_is(r, "25006")) return "READONLY";
  if (state_is(r, "23")) return "CONSTRAINT";
  return "SQL";
}

/* Errors that say nothing about the rows: the batch is retried later. */
static int retryable(PGconn *conn, const PGresult *r) {
  return PQstatus(conn) != CONNECTION_OK || state_is(r, "08") || state_is(r, "40") || state_is(r, "53") ||
         state_is(r, "57") || state_is(r, "58") || state_is(r, "55P03");
}

/* Runs a statement without parameters or rows. 0, or -1 with err set. */
static int exec_ok(PGconn *conn, const pgcfg *c, const char *sql, char *err, size_t errlen) {
  PGresult *r = PQexec(conn, sql);
  int ok = r && (PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK);
  if (!ok) pg_error(conn, r, c, err, errlen);
  PQclear(r);
  return ok ? 0 : -1;
}

/* After BEGIN READ ONLY of query()/each(): their statements run at most
 * query_timeout (the transaction's own statement_timeout). 0, or -1 with err. */
static int set_query_timeout(PGconn *conn, const pgcfg *c, char *err, size_t errlen) {
  char sql[64];
  if (c->query_ms <= 0) return 0;
  snprintf(sql, sizeof sql, "SET LOCAL statement_timeout = %ld", c->query_ms);
  return exec_ok(conn, c, sql, err, errlen);
}

/* True when a query()/each() statement was cancelled by query_timeout. */
static int query_timed_out(const pgcfg *c, const PGresult *r) { return c->query_ms > 0 && state_is(r, "57014"); }

/* ---- the URL ---- */

/* The URL without a password: "user:secret@" loses ":secret", and a
 * password=... query parameter is dropped. */
static char *redact_url(const char *url) {
  size_t n = strlen(url), i, o = 0;
  char *out = (char *)malloc(n + 1);
  const char *auth = strstr(url, "://"), *end, *at = NULL, *colon = NULL, *q;
  if (!out) return NULL;
  if (!auth) {
    memcpy(out, url, n + 1);
    return out;
  }
  auth += 3;
  end = auth + strcspn(auth, "/?");
  for (q = auth; q < end; q++)
    if (*q == '@') at = q;
  if (at)
    for (q = auth; q < at; q++)
      if (*q == ':') {
        colon = q;
        break;
      }
  for (i = 0; i < n;) {
    const char *p = url + i;
    if (colon && p == colon) { /* skip ":password" up to the '@' */
      i = (size_t)(at - url);
      continue;
    }
    if (p >= end && (*p == '?' || *p == '&') && strncmp(p + 1, "password=", 9) == 0) {
      size_t skip = 1 + strcspn(p + 1, "&");
      if (*p == '?' && p[skip] == '&') { /* keep the '?' for the next parameter */
        out[o++] = '?';
        skip++;
      }
      i += skip;
      continue;
    }
    out[o++] = url[i++];
  }
  out[o] = '\0';
  return out;
}

static void cfg_free(pgcfg *c) {
  free(c->url);
  free(c->display);
  free(c->password);
  free(c->schema);
  c->url = c->display = c->password = c->schema = NULL;
}

/* Session settings, after every (re)connect. */
static int setup(PGconn *conn, const pgcfg *c, char *err, size_t errlen) {
  ga_buf b;
  int rc;
  ga_buf_init(&b);
  ga_buf_addstr(&b, SQL_SETUP);
  if (c->readonly) ga_buf_addstr(&b, "; SET default_transaction_read_only TO on");
  if (c->schema) {
    char *id = PQescapeIdentifier(conn, c->schema, strlen(c->schema));
    if (!id) {
      ga_buf_free(&b);
      clean_message(c, PQerrorMessage(conn), err, errlen);
      return -1;
    }
    ga_buf_addstr(&b, "; SET search_path TO ");
    ga_buf_addstr(&b, id);
    PQfreemem(id);
  }
  ga_buf_addc(&b, '\0');
  if (b.oom) {
    ga_buf_free(&b);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  rc = exec_ok(conn, c, b.buf, err, errlen);
  ga_buf_free(&b);
  return rc;
}

/* A library prints nothing: notices (IF NOT EXISTS, ...) are dropped. */
static void quiet(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

/* A new, set-up connection, or NULL with err set. The URL's own parameters
 * win over connect_timeout; client_encoding is always UTF8. */
static PGconn *pg_connect(const pgcfg *c, char *err, size_t errlen) {
  static const char *const keys[] = {"connect_timeout", "fallback_application_name", "dbname", "client_encoding",
                                     NULL};
  char timeout[24];
  const char *vals[5];
  PGconn *conn;
  snprintf(timeout, sizeof timeout, "%ld", c->connect_timeout_s);
  vals[0] = timeout;
  vals[1] = "genaudit";
  vals[2] = c->url;
  vals[3] = "UTF8";
  vals[4] = NULL;
  conn = PQconnectdbParams(keys, vals, 1);
  if (!conn) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  if (PQstatus(conn) != CONNECTION_OK) {
    clean_message(c, PQerrorMessage(conn), err, errlen);
    PQfinish(conn);
    return NULL;
  }
  PQsetNoticeProcessor(conn, quiet, NULL);
  if (setup(conn, c, err, errlen) != 0) {
    PQfinish(conn);
    return NULL;
  }
  return conn;
}

/* Re-establishes a lost connection: PQreset, then backoff from 50 ms
 * doubling to 1 s, for up to budget_ms. 0 when connected, -1 with err. */
static int pg_reconnect(PGconn *conn, const pgcfg *c, long budget_ms, char *err, size_t errlen) {
  uint64_t start = ga_monotonic_ns();
  long backoff = 50;
  for (;;) {
    long elapsed;
    PQreset(conn);
    if (PQstatus(conn) == CONNECTION_OK) {
      if (setup(conn, c, err, errlen) == 0) return 0;
    } else {
      clean_message(c, PQerrorMessage(conn), err, errlen);
    }
    elapsed = (long)((ga_monotonic_ns() - start) / 1000000u);
    if (elapsed + backoff > budget_ms) return -1;
    sleep_ms(backoff);
    if (backoff < 1000) backoff *= 2;
  }
}

/* ---- rows: what PostgreSQL text can hold ---- */

/* True when JSON text holds the escape \u0000 (a backslash that is not itself escaped). */
static int json_has_nul_escape(const char *s, size_t n) {
  size_t i;
  for (i = 0; i + 1 < n; i++) {
    if (s[i] != '\\') continue;
    if (s[i + 1] == 'u' && i + 5 < n && memcmp(s + i + 2, "0000", 4) == 0) return 1;
    i++; /* skip the escaped character */
  }
  return 0;
}

/* Bytes of a btree index entry's column that always fit: PostgreSQL refuses
 * an entry over ~2700 bytes (1/3 of a page), which compression may or may
 * not bring under. org_id and template_id are indexed
 * (migrations/postgresql/0004). */
#define PG_INDEXED_MAX 2000
/* A field (and one message) is at most 1 GB in PostgreSQL. */
#define PG_FIELD_MAX (1073741823 - 1024)

/* The integer after "key": in a metric document as ga_row writes it
 * (the spec's keys first, no spaces); 0 and *found = 0 when absent. */
static long long json_int_member(const ga_text *t, const char *key, int *found) {
  char pat[48];
  const char *p, *end = t->p + t->n;
  size_t k = (size_t)snprintf(pat, sizeof pat, "\"%s\":", key);
  long long v = 0;
  *found = 0;
  for (p = t->p; t->set && p + k <= end; p++)
    if (memcmp(p, pat, k) == 0) {
      p += k;
      if (p >= end || *p < '0' || *p > '9') return 0;
      *found = 1;
      for (; p < end && *p >= '0' && *p <= '9'; p++) {
        if (v > 922337203685477580LL) return -1; /* more than int64: surely out of range */
        v = v * 10 + (*p - '0');
      }
      return v;
    }
  return 0;
}

/* The row's text as PostgreSQL can store it: no NUL bytes (TEXT cannot hold
 * them; json's ->> cannot extract \u0000), valid UTF-8; and what the
 * table's columns and indexes would refuse at insert (async mode must not
 * acknowledge such a row): a field over 1 GB, an indexed column over
 * PG_INDEXED_MAX bytes, a repair_count over the integer column's range.
 * 0, or -1 with err. */
static int pg_row_check(const ga_row *row, char *err, size_t errlen) {
  int i, found;
  size_t total = 0;
  long long rc;
  for (i = 0; i < GA_NCOLS; i++) {
    const ga_text *t = &row->col[i];
    if (!t->set) continue;
    total += t->n;
    if (t->n > PG_FIELD_MAX || total > PG_FIELD_MAX) {
      snprintf(err, errlen, "%s: the row is over PostgreSQL's limit of 1 GB per field and message", ga_col_names[i]);
      return -1;
    }
    if ((i == GA_COL_ORG_ID || i == GA_COL_TEMPLATE_ID) && t->n > PG_INDEXED_MAX) {
      snprintf(err, errlen, "%s: %zu bytes are over the %d an indexed column holds", ga_col_names[i], t->n,
               PG_INDEXED_MAX);
      return -1;
    }
  }
  rc = json_int_member(&row->col[GA_COL_REPAIR_METRICS], "repair_count", &found);
  if (found && (rc < 0 || rc > 2147483647)) {
    snprintf(err, errlen, "repair_info.repair_count: over the range of PostgreSQL's integer column (2147483647)");
    return -1;
  }
  for (i = 0; i < GA_NCOLS; i++) {
    const ga_text *t = &row->col[i];
    int json = i == GA_COL_TOKEN_METRICS || i == GA_COL_PERFORMANCE_METRICS || i == GA_COL_REPAIR_METRICS ||
               i == GA_COL_REQUEST_PARAMS;
    if (!t->set) continue;
    if (memchr(t->p, '\0', t->n) || (json && json_has_nul_escape(t->p, t->n))) {
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

/* The INSERT's parameters: created_at as text (it is parsed as timestamptz),
 * every other column in binary format, which for text and json is the bytes
 * themselves (no NUL terminator needed, exact length). */
static void insert_params(const ga_text *cols, const char *values[GA_NCOLS], int lengths[GA_NCOLS],
                          int formats[GA_NCOLS], char created[32]) {
  int i;
  for (i = 0; i < GA_NCOLS; i++) {
    values[i] = cols[i].set ? cols[i].p : NULL;
    lengths[i] = cols[i].set ? (int)cols[i].n : 0;
    formats[i] = 1;
  }
  if (cols[GA_COL_CREATED_AT].set) {
    size_t n = cols[GA_COL_CREATED_AT].n < 31 ? cols[GA_COL_CREATED_AT].n : 31;
    memcpy(created, cols[GA_COL_CREATED_AT].p, n);
    created[n] = '\0';
    values[GA_COL_CREATED_AT] = created;
  }
  formats[GA_COL_CREATED_AT] = 0;
}

/* ---- boxes: PGresults and malloc'd blocks owned by the Lua GC, so a raise
 * (a memory error, an error in each()'s fn) frees them ---- */
typedef struct {
  PGresult *res;
  void *mem;
  void (*release)(void *); /* frees mem; NULL: free() */
} box;

static int l_box_gc(lua_State *L) {
  box *b = (box *)luaL_checkudata(L, 1, BOX_MT);
  PQclear(b->res);
  if (b->mem) {
    if (b->release) b->release(b->mem);
    else free(b->mem);
  }
  b->res = NULL;
  b->mem = NULL;
  return 0;
}

static box *newbox(lua_State *L) {
  box *b = (box *)ga_newuserdata(L, sizeof *b);
  b->res = NULL;
  b->mem = NULL;
  b->release = NULL;
  luaL_getmetatable(L, BOX_MT);
  lua_setmetatable(L, -2);
  return b;
}

static void box_set(box *b, PGresult *r) {
  PQclear(b->res);
  b->res = r;
}

/* ---- parameters: SQLite's ?, ?N, :name, @name, $name over PostgreSQL's $N ---- */

/* One parameter slot: a name (offset and length in the source SQL, its
 * prefix included) or positional (nlen 0). */
typedef struct {
  size_t off, nlen;
} slot;

typedef struct {
  ga_buf sql;  /* the translated statement */
  slot *slots; /* [n] */
  int n, cap;
  int statements; /* non-empty statements seen */
  char err[128];  /* set when the text cannot be translated */
} xlat;

static void xlat_free(xlat *x) {
  ga_buf_free(&x->sql);
  free(x->slots);
  x->slots = NULL;
}

static int is_ident_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (unsigned char)c >= 0x80;
}
static int is_ident(char c) { return is_ident_start(c) || (c >= '0' && c <= '9') || c == '$'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int grow_slots(xlat *x, int n) {
  if (n > MAX_PARAMS) {
    snprintf(x->err, sizeof x->err, "variable number must be between ?1 and ?%d", MAX_PARAMS);
    return -1;
  }
  if (n > x->cap) {
    int cap = x->cap ? x->cap : 8, i;
    slot *p;
    while (cap < n) cap *= 2;
    if (cap > MAX_PARAMS) cap = MAX_PARAMS;
    p = (slot *)realloc(x->slots, (size_t)cap * sizeof *p);
    if (!p) {
      snprintf(x->err, sizeof x->err, "out of memory");
      return -1;
    }
    for (i = x->cap; i < cap; i++) p[i].off = p[i].nlen = 0;
    x->slots = p;
    x->cap = cap;
  }
  if (n > x->n) x->n = n;
  return 0;
}

static void emit_param(xlat *x, int k) {
  char num[16];
  snprintf(num, sizeof num, "$%d", k);
  ga_buf_addstr(&x->sql, num);
}

/* Slot of the named parameter src[off, off+len): the earlier one of that
 * name, or a new one after the highest so far. */
static int named_slot(xlat *x, const char *src, size_t off, size_t len) {
  int i;
  for (i = 0; i < x->n; i++)
    if (x->slots[i].nlen == len && memcmp(src + x->slots[i].off, src + off, len) == 0) return i + 1;
  if (grow_slots(x, x->n + 1) != 0) return -1;
  x->slots[x->n - 1].off = off;
  x->slots[x->n - 1].nlen = len;
  return x->n;
}

/* Reads a decimal parameter number at src[*i]; advances *i. */
static int read_number(xlat *x, const char *src, size_t len, size_t *i) {
  long v = 0;
  while (*i < len && is_digit(src[*i])) {
    if (v <= MAX_PARAMS) v = v * 10 + (src[*i] - '0');
    (*i)++;
  }
  if (v < 1 || v > MAX_PARAMS) {
    snprintf(x->err, sizeof x->err, "variable number must be between ?1 and ?%d", MAX_PARAMS);
    return -1;
  }
  if (grow_slots(x, (int)v) != 0) return -1;
  return (int)v;
}

/* Translates one statement's placeholders into $N, skipping string
 * literals (with E'' escapes), quoted identifiers, comments, dollar quotes
 * and :: casts; counts statements and stops at the end of the first. ?
 * takes the slot after the highest so far, ?N and $N slot N, a :name,
 * @name or $name the slot of its first use. Returns 0 or -1 (x->err). */
static int translate(const char *src, size_t len, xlat *x) {
  size_t i = 0, end_first = (size_t)-1, ident_start = 0, ident_len = 0, ident_end = (size_t)-1;
  int content = 0;
  memset(x, 0, sizeof *x);
  ga_buf_init(&x->sql);
  while (i < len) {
    char c = src[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      ga_buf_addc(&x->sql, c);
      i++;
      continue;
    }
    if (c == '-' && i + 1 < len && src[i + 1] == '-') {
      size_t j = i;
      while (j < len && src[j] != '\n') j++;
      ga_buf_add(&x->sql, src + i, j - i);
      i = j;
      continue;
    }
    if (c == '/' && i + 1 < len && src[i + 1] == '*') { /* nested, as PostgreSQL allows */
      size_t j = i + 2;
      int depth = 1;
      while (j < len && depth > 0) {
        if (src[j] == '/' && j + 1 < len && src[j + 1] == '*') depth++, j += 2;
        else if (src[j] == '*' && j + 1 < len && src[j + 1] == '/') depth--, j += 2;
        else j++;
      }
      ga_buf_add(&x->sql, src + i, j - i);
      i = j;
      continue;
    }
    if (c == ';') {
      if (content) {
        x->statements++;
        if (x->statements == 1) end_first = x->sql.len;
      }
      content = 0;
      ga_buf_addc(&x->sql, c);
      i++;
      continue;
    }
    content = 1;
    if (c == '\'') {
      int esc = ident_len == 1 && ident_end == i && (src[ident_start] == 'E' || src[ident_start] == 'e');
      size_t j = i + 1;
      for (;;) {
        if (j >= len) break;
        if (esc && src[j] == '\\') {
          j += 2;
          continue;
        }
        if (src[j] == '\'') {
          if (j + 1 < len && src[j + 1] == '\'') {
            j += 2;
            continue;
          }
          j++;
          break;
        }
        j++;
      }
      if (j > len) j = len;
      ga_buf_add(&x->sql, src + i, j - i);
      i = j;
      continue;
    }
    if (c == '"') {
      size_t j = i + 1;
      while (j < len) {
        if (src[j] == '"') {
          if (j + 1 < len && src[j + 1] == '"') {
            j += 2;
            continue;
          }
          j++;
          break;
        }
        j++;
      }
      ga_buf_add(&x->sql, src + i, j - i);
      i = j;
      continue;
    }
    if (is_ident_start(c)) {
      size_t j = i;
      while (j < len && is_ident(src[j])) j++;
      ident_start = i;
      ident_len = j - i;
      ident_end = j;
      ga_buf_add(&x->sql, src + i, j - i);
      i = j;
      continue;
    }
    if (c == '$') {
      size_t j = i + 1;
      if (j < len && is_digit(src[j])) { /* $N: a positional parameter */
        int k = read_number(x, src, len, &j);
        if (k < 0) return -1;
        emit_param(x, k);
        i = j;
        continue;
      }
      while (j < len && (is_ident_start(src[j]) || is_digit(src[j]))) j++;
      if (j < len && src[j] == '$') { /* $tag$ ... $tag$ */
        size_t taglen = j + 1 - i;
        const char *close = NULL;
        size_t k;
        for (k = j + 1; k + taglen <= len; k++)
          if (src[k] == '$' && memcmp(src + k, src + i, taglen) == 0) {
            close = src + k;
            break;
          }
        k = close ? (size_t)(close - src) + taglen : len;
        ga_buf_add(&x->sql, src + i, k - i);
        i = k;
        continue;
      }
      if (j > i + 1 && is_ident_start(src[i + 1])) { /* $name */
        int k = named_slot(x, src, i, j - i);
        if (k < 0) return -1;
        emit_param(x, k);
        i = j;
        continue;
      }
      ga_buf_addc(&x->sql, c);
      i++;
      continue;
    }
    if (c == '?') {
      size_t j = i + 1;
      int k;
      if (j < len && is_digit(src[j])) {
        k = read_number(x, src, len, &j);
      } else {
        k = x->n + 1;
        if (grow_slots(x, k) != 0) k = -1;
      }
      if (k < 0) return -1;
      emit_param(x, k);
      i = j;
      continue;
    }
    if (c == ':' && i + 1 < len && src[i + 1] == ':') {
      ga_buf_add(&x->sql, "::", 2);
      i += 2;
      continue;
    }
    if ((c == ':' || c == '@') && i + 1 < len && is_ident_start(src[i + 1])) {
      size_t j = i + 1;
      int k;
      while (j < len && (is_ident_start(src[j]) || is_digit(src[j]))) j++;
      k = named_slot(x, src, i, j - i);
      if (k < 0) return -1;
      emit_param(x, k);
      i = j;
      continue;
    }
    ga_buf_addc(&x->sql, c);
    i++;
  }
  if (content) {
    x->statements++;
    if (x->statements == 1) end_first = x->sql.len;
  }
  if (x->statements == 1 && end_first != (size_t)-1) x->sql.len = end_first;
  ga_buf_addc(&x->sql, '\0');
  if (x->sql.oom) {
    snprintf(x->err, sizeof x->err, "out of memory");
    return -1;
  }
  return 0;
}

/* Bound values for n parameters, in one block. */
typedef struct {
  int n;
  Oid *types;
  const char **values;
  int *lengths, *formats;
  char (*num)[32];
  char *sig; /* one letter per parameter: i f b s n; the cache key's tail */
} params;

static params *params_alloc(int n) {
  size_t m = (size_t)(n > 0 ? n : 1);
  size_t size = sizeof(params) + m * (sizeof(Oid) + sizeof(char *) + 2 * sizeof(int) + 32 + 1) + 16;
  params *p = (params *)calloc(1, size);
  char *q;
  if (!p) return NULL;
  q = (char *)(p + 1);
  p->n = n;
  p->values = (const char **)(void *)q;
  q += m * sizeof(char *);
  p->types = (Oid *)(void *)q;
  q += m * sizeof(Oid);
  p->lengths = (int *)(void *)q;
  q += m * sizeof(int);
  p->formats = (int *)(void *)q;
  q += m * sizeof(int);
  p->num = (char(*)[32])(void *)q;
  q += m * 32;
  p->sig = q;
  return p;
}

/* Binds the Lua value at vidx to parameter i (0-based). NULL, or an error text. */
static const char *bind_value(lua_State *L, params *p, int i, int vidx) {
  long long iv;
  p->formats[i] = 0;
  p->lengths[i] = 0;
  switch (lua_type(L, vidx)) {
    case LUA_TNUMBER:
#if LUA_VERSION_NUM >= 503
      if (lua_isinteger(L, vidx)) {
        snprintf(p->num[i], 32, "%lld", (long long)lua_tointeger(L, vidx));
        p->types[i] = OID_INT8;
        p->sig[i] = 'i';
        p->values[i] = p->num[i];
        return NULL;
      }
#else
      if (ga_tointeger(L, vidx, &iv) && iv > -9007199254740992LL && iv < 9007199254740992LL) {
        snprintf(p->num[i], 32, "%lld", iv);
        p->types[i] = OID_INT8;
        p->sig[i] = 'i';
        p->values[i] = p->num[i];
        return NULL;
      }
#endif
      (void)iv;
      {
        double d = (double)lua_tonumber(L, vidx);
        if (d != d) snprintf(p->num[i], 32, "NaN");
        else if (d > 1.7976931348623157e308) snprintf(p->num[i], 32, "Infinity");
        else if (d < -1.7976931348623157e308) snprintf(p->num[i], 32, "-Infinity");
        else snprintf(p->num[i], 32, "%.17g", d);
      }
      p->types[i] = OID_FLOAT8;
      p->sig[i] = 'f';
      p->values[i] = p->num[i];
      return NULL;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, vidx, &n);
      if (memchr(s, '\0', n)) return "PostgreSQL text cannot contain NUL bytes";
      p->types[i] = 0; /* let the statement decide; text where it cannot */
      p->sig[i] = 's';
      p->values[i] = s;
      return NULL;
    }
    case LUA_TBOOLEAN:
      p->types[i] = OID_BOOL;
      p->sig[i] = 'b';
      p->values[i] = lua_toboolean(L, vidx) ? "t" : "f";
      return NULL;
    case LUA_TLIGHTUSERDATA:
      if (ga_isnull(L, vidx)) {
        p->types[i] = 0;
        p->sig[i] = 'n';
        p->values[i] = NULL;
        return NULL;
      }
      /* fall through */
    default: return luaL_typename(L, vidx);
  }
}

/* Looks up and binds every parameter of x from the table at pidx. The values
 * stay on the Lua stack (their strings must live until the statement ran).
 * Returns NULL, or an error message (pushed on the stack). */
static const char *bind_all(lua_State *L, int pidx, const char *src, const xlat *x, params *p) {
  int i;
  const char *bad;
  if (x->n == 0) return NULL;
  if (pidx == 0) return "no parameters given";
  luaL_checkstack(L, x->n + 8, "too many parameters");
  for (i = 0; i < x->n; i++) {
    const slot *sl = &x->slots[i];
    if (sl->nlen > 0) {
      lua_pushlstring(L, src + sl->off + 1, sl->nlen - 1);
      lua_gettable(L, pidx);
    } else {
      lua_rawgeti(L, pidx, i + 1);
    }
    if (lua_isnil(L, -1)) {
      if (sl->nlen > 0) {
        lua_pushlstring(L, src + sl->off, sl->nlen);
        return lua_pushfstring(L, "parameter %s has no value", lua_tostring(L, -1));
      }
      return lua_pushfstring(L, "parameter #%d has no value", i + 1);
    }
    bad = bind_value(L, p, i, lua_gettop(L));
    if (bad) return lua_pushfstring(L, "parameter %d: cannot bind a %s", i + 1, bad);
  }
  return NULL;
}

/* ---- the store ---- */

static pgstore *check_store(lua_State *L) {
  pgstore *s = (pgstore *)luaL_checkudata(L, 1, PG_MT);
  if (!s->conn) luaL_error(L, "attempt to use a closed store");
  return s;
}

static void qentry_free(qentry *e) {
  free(e->key);
  free(e->types);
  memset(e, 0, sizeof *e);
}

/* After a reconnect the server has none of our prepared statements. */
static void forget_statements(pgstore *s) {
  int i;
  for (i = 0; i < QCACHE; i++) qentry_free(&s->q[i]);
  s->insert_ready = 0;
}

static void store_close_impl(pgstore *s) {
  ga_writer_stop(s->writer); /* drains the queue: nothing acknowledged is dropped */
  s->writer = NULL;
  forget_statements(s);
  if (s->conn) PQfinish(s->conn);
  s->conn = NULL;
  s->each_depth = 0;
  cfg_free(&s->cfg);
}

static int l_store_close(lua_State *L) {
  pgstore *s = (pgstore *)luaL_checkudata(L, 1, PG_MT);
  store_close_impl(s);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_store_tostring(lua_State *L) {
  pgstore *s = (pgstore *)luaL_checkudata(L, 1, PG_MT);
  if (!s->conn) lua_pushliteral(L, "genaudit.pg_store (closed)");
  else lua_pushfstring(L, "genaudit.pg_store (%s)", s->cfg.display);
  return 1;
}

/* store:url() -> the URL without its password */
static int l_store_url(lua_State *L) {
  pgstore *s = check_store(L);
  lua_pushstring(L, s->cfg.display);
  return 1;
}

/* Makes sure the connection is up, re-establishing a lost one. 0, or pushes
 * nil, "CONNECT: ...", "CONNECT" and returns 3. */
static int ensure(lua_State *L, pgstore *s) {
  char err[512];
  if (PQstatus(s->conn) == CONNECTION_OK) return 0;
  if (s->each_depth > 0) return ga_fail(L, "CONNECT", "connection lost while each() was reading");
  if (pg_reconnect(s->conn, &s->cfg, s->cfg.reconnect_ms, err, sizeof err) != 0)
    return ga_fail(L, "CONNECT", "connection to %s lost and not re-established: %s", s->cfg.display, err);
  forget_statements(s);
  s->reconnects++;
  return 0;
}

static int fail_result(lua_State *L, pgstore *s, const PGresult *r, const char *what) {
  char err[512];
  const char *code = pg_error(s->conn, r, &s->cfg, err, sizeof err);
  return ga_fail(L, code, "%s: %s", what, err);
}

/* core.pg_open(url, opts) -> store | nil, err, code
 * opts: connect_timeout (s, 10), reconnect_timeout (ms, 5000), lock_timeout
 * (ms, 30000; 0: none), query_timeout (ms, 0: none), schema, readonly. The URL is libpq's (postgresql://
 * or postgres://). */
static int l_pg_open(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  long long ct = 10, rt = 5000, lt = 30000, qt = 0;
  const char *schema = NULL;
  int readonly = 0;
  pgstore *s;
  char err[512];
  PQconninfoOption *opts;
  char *perr = NULL;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "connect_timeout");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &ct) || ct < 1 || ct > 3600))
      return luaL_argerror(L, 2, "connect_timeout must be an integer number of seconds (1-3600)");
    lua_getfield(L, 2, "reconnect_timeout");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &rt) || rt < 0 || rt > 3600000))
      return luaL_argerror(L, 2, "reconnect_timeout must be an integer number of ms (0-3600000)");
    lua_getfield(L, 2, "lock_timeout");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &lt) || lt < 0 || lt > 3600000))
      return luaL_argerror(L, 2, "lock_timeout must be an integer number of ms (0-3600000)");
    lua_getfield(L, 2, "query_timeout");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &qt) || qt < 0 || qt > 3600000))
      return luaL_argerror(L, 2, "query_timeout must be an integer number of ms (0-3600000)");
    lua_pop(L, 2);
    lua_getfield(L, 2, "schema");
    if (!lua_isnil(L, -1)) {
      size_t n = 0;
      if (lua_type(L, -1) == LUA_TSTRING) schema = lua_tolstring(L, -1, &n);
      if (!schema || n == 0 || n > 63 || strlen(schema) != n)
        return luaL_argerror(L, 2, "schema must be a name of 1 to 63 bytes");
    }
    lua_getfield(L, 2, "readonly");
    readonly = lua_toboolean(L, -1);
    lua_pop(L, 4); /* opts still holds the schema's string */
  }
  /* closed userdata first, then the resources: nothing leaks if Lua raises */
  s = (pgstore *)ga_newuserdata(L, sizeof *s);
  memset(s, 0, sizeof *s);
  luaL_getmetatable(L, PG_MT);
  lua_setmetatable(L, -2);
  s->cfg.readonly = readonly;
  s->cfg.connect_timeout_s = (long)ct;
  s->cfg.reconnect_ms = (long)rt;
  s->cfg.lock_ms = (long)lt;
  s->cfg.query_ms = (long)qt;
  s->cfg.url = dupstr(url);
  s->cfg.display = redact_url(url);
  s->cfg.schema = schema ? dupstr(schema) : NULL;
  if (!s->cfg.url || !s->cfg.display || (schema && !s->cfg.schema)) {
    cfg_free(&s->cfg);
    return ga_fail(L, "NOMEM", "out of memory");
  }
  opts = PQconninfoParse(url, &perr);
  if (!opts) {
    clean_message(NULL, perr ? perr : "out of memory", err, sizeof err);
    PQfreemem(perr);
    lua_pushfstring(L, "invalid PostgreSQL URL %s: %s", s->cfg.display, err);
    cfg_free(&s->cfg);
    return ga_fail(L, "OPEN", "%s", lua_tostring(L, -1));
  }
  {
    PQconninfoOption *o;
    for (o = opts; o->keyword; o++)
      if (strcmp(o->keyword, "password") == 0 && o->val && *o->val) s->cfg.password = dupstr(o->val);
    PQconninfoFree(opts);
  }
  s->conn = pg_connect(&s->cfg, err, sizeof err);
  if (!s->conn) {
    lua_pushfstring(L, "cannot connect to %s: %s", s->cfg.display, err);
    cfg_free(&s->cfg);
    return ga_fail(L, "CONNECT", "%s", lua_tostring(L, -1));
  }
  return 1;
}

/* ---- migrations ---- */

static long long schema_version_of(pgstore *s) {
  PGresult *r = PQexec(s->conn, SQL_MIGRATIONS_EXIST);
  long long v = -1;
  if (r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
    if (PQgetvalue(r, 0, 0)[0] != 't') {
      v = 0;
    } else {
      PQclear(r);
      r = PQexec(s->conn, SQL_SCHEMA_VERSION);
      if (r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    }
  }
  PQclear(r);
  return v;
}

/* Begins a migration transaction holding the migration lock; with a schema,
 * creates it; creates schema_migrations. 0, or -1 with err (rolled back), or
 * -2 when another session held the migration lock for lock_ms (a stuck or
 * stopped process in a migration must not make every open() wait forever). */
static int begin_migration(pgstore *s, char *err, size_t errlen) {
  char sql[64];
  PGresult *r;
  if (exec_ok(s->conn, &s->cfg, "BEGIN", err, errlen) != 0) return -1;
  snprintf(sql, sizeof sql, "SET LOCAL lock_timeout = %ld", s->cfg.lock_ms);
  if (exec_ok(s->conn, &s->cfg, sql, err, errlen) != 0) goto fail;
  r = PQexec(s->conn, SQL_MIGRATION_LOCK);
  if (!r || PQresultStatus(r) != PGRES_TUPLES_OK) {
    int timed_out = state_is(r, "55P03");
    pg_error(s->conn, r, &s->cfg, err, errlen);
    PQclear(r);
    PQclear(PQexec(s->conn, "ROLLBACK"));
    if (timed_out)
      snprintf(err, errlen, "another session has held the migration lock for lock_timeout (%ld ms)", s->cfg.lock_ms);
    return timed_out ? -2 : -1;
  }
  PQclear(r);
  if (s->cfg.schema) {
    char *id = PQescapeIdentifier(s->conn, s->cfg.schema, strlen(s->cfg.schema));
    char sql[256];
    int rc;
    if (!id) {
      clean_message(&s->cfg, PQerrorMessage(s->conn), err, errlen);
      goto fail;
    }
    snprintf(sql, sizeof sql, "CREATE SCHEMA IF NOT EXISTS %s", id);
    PQfreemem(id);
    rc = exec_ok(s->conn, &s->cfg, sql, err, errlen);
    if (rc != 0) goto fail;
  }
  if (exec_ok(s->conn, &s->cfg, SQL_MIGRATIONS_TABLE, err, errlen) != 0) goto fail;
  return 0;
fail:
  PQclear(PQexec(s->conn, "ROLLBACK"));
  return -1;
}

/* store:migrate({ {version=, name=, sql=}, ... }) -> applied, version | nil, err, code
 * Each pending migration runs in its own transaction together with its
 * schema_migrations row, under an advisory lock (several hosts may open the
 * store at once); a failure rolls that migration back and stops. */
static int l_store_migrate(lua_State *L) {
  pgstore *s = check_store(L);
  size_t i, n;
  int applied = 0, r;
  char err[512];
  PGresult *res;
  luaL_checktype(L, 2, LUA_TTABLE);
  ga_check_migrations(L, 2); /* everything, before touching the database */
  n = ga_rawlen(L, 2);
  if ((r = ensure(L, s)) != 0) return r;
  if (s->each_depth > 0) return ga_fail(L, "BUSY", "cannot migrate while each() reads from this store");
  if ((r = begin_migration(s, err, sizeof err)) != 0 || exec_ok(s->conn, &s->cfg, "COMMIT", err, sizeof err) != 0)
    return r == -2 ? ga_fail(L, "BUSY", "%s", err) : ga_fail(L, "MIGRATION", "cannot create schema_migrations: %s", err);
  /* the versions applied already, as a Lua set at stack index `done` */
  lua_newtable(L);
  res = PQexec(s->conn, SQL_MIGRATIONS_APPLIED);
  if (res && PQresultStatus(res) == PGRES_TUPLES_OK) {
    int k;
    for (k = 0; k < PQntuples(res); k++) {
      lua_pushboolean(L, 1);
      lua_rawseti(L, -2, (int)strtol(PQgetvalue(res, k, 0), NULL, 10));
    }
  }
  PQclear(res);
  for (i = 1; i <= n; i++) {
    long long v;
    const char *name, *sql;
    char vtext[24];
    const char *vals[2];
    int done;
    lua_rawgeti(L, 2, (int)i);
    lua_getfield(L, -1, "version");
    ga_tointeger(L, -1, &v);
    lua_getfield(L, -2, "name");
    name = lua_tostring(L, -1);
    lua_getfield(L, -3, "sql");
    sql = lua_tostring(L, -1);
    lua_rawgeti(L, -5, (int)v);
    done = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!done) {
      snprintf(vtext, sizeof vtext, "%lld", v);
      vals[0] = vtext;
      vals[1] = name;
      if ((r = begin_migration(s, err, sizeof err)) != 0) {
        if (r == -2) return ga_fail(L, "BUSY", "%s", err);
        goto failed;
      }
      res = PQexecParams(s->conn, SQL_MIGRATION_APPLIED, 1, NULL, vals, NULL, NULL, 0);
      if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        pg_error(s->conn, res, &s->cfg, err, sizeof err);
        PQclear(res);
        goto rollback;
      }
      done = PQntuples(res) > 0; /* another host applied it meanwhile */
      PQclear(res);
      if (!done) {
        res = PQexec(s->conn, sql);
        if (!res || (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)) {
          pg_error(s->conn, res, &s->cfg, err, sizeof err);
          PQclear(res);
          goto rollback;
        }
        PQclear(res);
        res = PQexecParams(s->conn, SQL_MIGRATION_RECORD, 2, NULL, vals, NULL, NULL, 0);
        if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
          pg_error(s->conn, res, &s->cfg, err, sizeof err);
          PQclear(res);
          goto rollback;
        }
        PQclear(res);
      }
      if (exec_ok(s->conn, &s->cfg, "COMMIT", err, sizeof err) != 0) goto rollback;
      if (!done) applied++;
    }
    lua_pop(L, 4);
    continue;
  rollback:
    PQclear(PQexec(s->conn, "ROLLBACK"));
  failed:
    return ga_fail(L, "MIGRATION", "migration %04d_%s failed: %s (database left at version %d)", (int)v, name, err,
                   (int)schema_version_of(s));
  }
  lua_pushinteger(L, applied);
  ga_pushint64(L, schema_version_of(s));
  return 2;
}

/* store:schema_version() -> integer (0 for an empty database) | nil, err, code */
static int l_store_schema_version(lua_State *L) {
  pgstore *s = check_store(L);
  long long v;
  int r;
  if ((r = ensure(L, s)) != 0) return r;
  v = schema_version_of(s);
  if (v < 0) return fail_result(L, s, NULL, "cannot read schema_migrations");
  ga_pushint64(L, v);
  return 1;
}

/* ---- persist ---- */

/* store:persist(row) -> id | nil, err, code. Checks the whole row first;
 * then one INSERT, committed before the id is returned. A connection lost
 * meanwhile is re-established and the INSERT retried once with the same id:
 * a duplicate of that id then means the first attempt committed. */
static int l_store_persist(lua_State *L) {
  pgstore *s = check_store(L);
  ga_row row;
  char err[512], created[32];
  const char *values[GA_NCOLS];
  int lengths[GA_NCOLS], formats[GA_NCOLS], attempt, lost = 0, explicit_id;
  luaL_checktype(L, 2, LUA_TTABLE);
  if (s->cfg.readonly) return ga_fail(L, "READONLY", "store was opened read-only");
  if (ga_row_build(L, 2, &row, err, sizeof err) != 0 || pg_row_check(&row, err, sizeof err) != 0) {
    ga_row_free(&row);
    return ga_fail(L, "INVALID", "%s", err);
  }
  explicit_id = row.col[GA_COL_ID].set;
  if (ga_row_stamp(&row, &s->ulid) != 0) {
    ga_row_free(&row);
    return ga_fail(L, "ULID", "cannot generate a snapshot id");
  }
  if (s->writer && explicit_id && s->each_depth == 0 && ensure(L, s) == 0) {
    /* a row that brings its id: refused now if it is stored already */
    const char *v[1];
    char id[27];
    PGresult *r;
    int dup;
    memcpy(id, row.id, 26);
    id[26] = '\0';
    v[0] = id;
    r = PQexecParams(s->conn, SQL_ID_STORED, 1, NULL, v, NULL, NULL, 0);
    dup = r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0;
    PQclear(r);
    if (dup) {
      ga_row_free(&row);
      return ga_fail(L, "CONSTRAINT", "a snapshot with id %.26s is stored already", row.id);
    }
  }
  if (s->writer) {
    int r = ga_writer_push(s->writer, &row, explicit_id, err, sizeof err);
    ga_row_free(&row);
    if (r != 0) return ga_fail(L, ga_writer_push_code(r), "%s", err);
    lua_pushlstring(L, row.id, 26);
    return 1;
  }
  if (s->each_depth > 0) {
    ga_row_free(&row);
    return ga_fail(L, "BUSY", "cannot persist while each() reads from this store (use another store object)");
  }
  insert_params(row.col, values, lengths, formats, created);
  for (attempt = 0;; attempt++) {
    PGresult *r;
    int rc = ensure(L, s);
    if (rc != 0) {
      ga_row_free(&row);
      return rc;
    }
    if (!s->insert_ready) {
      r = PQprepare(s->conn, INSERT_NAME, SQL_INSERT, GA_NCOLS, NULL);
      if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
        if (PQstatus(s->conn) != CONNECTION_OK && attempt == 0) {
          PQclear(r);
          lost = 1;
          continue;
        }
        rc = fail_result(L, s, r, "cannot prepare insert (is the store migrated?)");
        PQclear(r);
        ga_row_free(&row);
        return rc;
      }
      PQclear(r);
      s->insert_ready = 1;
    }
    r = PQexecPrepared(s->conn, INSERT_NAME, GA_NCOLS, values, lengths, formats, 0);
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
      PQclear(r);
      break;
    }
    if (PQstatus(s->conn) != CONNECTION_OK && attempt == 0) { /* the commit is unknown: retry with the same id */
      PQclear(r);
      lost = 1;
      continue;
    }
    if (lost && state_is(r, "23505")) {
      const char *cn = PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME);
      if (cn && strcmp(cn, PKEY_NAME) == 0) { /* the lost attempt had committed */
        PQclear(r);
        break;
      }
    }
    rc = fail_result(L, s, r, "cannot persist snapshot");
    PQclear(r);
    ga_row_free(&row);
    return rc;
  }
  s->persisted++;
  lua_pushlstring(L, row.id, 26);
  ga_row_free(&row);
  return 1;
}

/* ---- query and each ---- */

/* "2024-02-29 23:59:58.12+00" (timestamptz in UTC) or the same without the
 * zone (timestamp) -> "2024-02-29 23:59:58.120", the SQLite store's text.
 * Anything else (BC, infinity, another zone) is pushed unchanged. */
static void push_timestamp(lua_State *L, const char *v, size_t n, int with_zone) {
  static const char shape[] = "dddd-dd-dd dd:dd:dd";
  char out[24];
  size_t i = 0, f = 0;
  int ok = n >= 19;
  for (i = 0; ok && i < 19; i++) ok = shape[i] == 'd' ? is_digit(v[i]) : v[i] == shape[i];
  if (ok) {
    memcpy(out, v, 19);
    out[19] = '.';
    i = 19;
    if (i < n && v[i] == '.') {
      for (i++; i < n && is_digit(v[i]); i++)
        if (f < 3) out[20 + f++] = v[i];
    }
    while (f < 3) out[20 + f++] = '0';
    ok = with_zone ? (n - i == 3 && memcmp(v + i, "+00", 3) == 0) : i == n;
  }
  if (ok) lua_pushlstring(L, out, 23);
  else lua_pushlstring(L, v, n);
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* bytea in hex output ("\x00ff") -> the bytes; anything else unchanged. */
static void push_bytea(lua_State *L, const char *v, size_t n) {
  luaL_Buffer b;
  size_t i;
  if (n < 2 || v[0] != '\\' || v[1] != 'x' || n % 2 != 0) {
    lua_pushlstring(L, v, n);
    return;
  }
  luaL_buffinit(L, &b);
  for (i = 2; i + 1 < n; i += 2) {
    int hi = hexval(v[i]), lo = hexval(v[i + 1]);
    luaL_addchar(&b, (char)(hi < 0 || lo < 0 ? 0 : hi * 16 + lo));
  }
  luaL_pushresult(&b);
}

/* One column value by type: integers as integers, float4/float8/numeric as
 * numbers (a numeric with no fraction as an integer), bool as boolean,
 * bytea as bytes, timestamps as UTC text, everything else as text. */
static void push_value(lua_State *L, const PGresult *r, int row, int col) {
  const char *v = PQgetvalue(r, row, col);
  size_t n = (size_t)PQgetlength(r, row, col);
  char *end;
  switch (PQftype(r, col)) {
    case OID_INT2:
    case OID_INT4:
    case OID_INT8: {
      long long x;
      errno = 0;
      x = strtoll(v, &end, 10);
      if (errno == 0 && *end == '\0') ga_pushint64(L, x);
      else lua_pushlstring(L, v, n);
      return;
    }
    case OID_NUMERIC: {
      long long x;
      errno = 0;
      x = strtoll(v, &end, 10);
      if (errno == 0 && *end == '\0' && end != v) {
        ga_pushint64(L, x);
        return;
      }
    }
      /* fall through */
    case OID_FLOAT4:
    case OID_FLOAT8: lua_pushnumber(L, (lua_Number)strtod(v, NULL)); return;
    case OID_BOOL: lua_pushboolean(L, v[0] == 't'); return;
    case OID_BYTEA: push_bytea(L, v, n); return;
    case OID_TIMESTAMPTZ: push_timestamp(L, v, n, 1); return;
    case OID_TIMESTAMP: push_timestamp(L, v, n, 0); return;
    default: lua_pushlstring(L, v, n);
  }
}

/* Pushes row `row` of r as a table keyed by column name; NULLs absent. */
static void push_row(lua_State *L, const PGresult *r, int row) {
  int i, ncols = PQnfields(r);
  lua_createtable(L, 0, ncols);
  for (i = 0; i < ncols; i++) {
    if (PQgetisnull(r, row, i)) continue;
    push_value(L, r, row, i);
    lua_setfield(L, -2, PQfname(r, i));
  }
}

static void xlat_release(void *p) {
  xlat_free((xlat *)p);
  free(p);
}

/* False when the statement (one, translated) is one query() refuses: its
 * first word, after comments and opening parentheses, starts a command
 * other than SELECT, WITH, VALUES, TABLE, SHOW or EXPLAIN (the first words
 * of PostgreSQL's grammar): transaction control, SET/RESET, PREPARE,
 * DECLARE, LISTEN, LOCK, COPY, DO, CALL, utility commands. They could end
 * the READ ONLY transaction a query runs in, or change the session beyond
 * it. Refused before they reach the server; an unknown first word goes on,
 * for the server's syntax error. */
static int plain_read(const char *q) {
  static const char *const refused[] = {
      "abort", "alter", "analyse", "analyze", "begin", "call", "checkpoint", "close", "cluster", "comment",
      "commit", "copy", "create", "deallocate", "declare", "delete", "discard", "do", "drop", "end", "execute",
      "fetch", "grant", "import", "insert", "listen", "load", "lock", "merge", "move", "notify", "prepare",
      "reassign", "refresh", "reindex", "release", "reset", "revoke", "rollback", "savepoint", "security", "set",
      "start", "truncate", "unlisten", "update", "vacuum", NULL};
  size_t n;
  int i;
  for (;;) {
    while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r' || *q == '\f' || *q == '\v' || *q == '(') q++;
    if (q[0] == '-' && q[1] == '-') {
      while (*q && *q != '\n') q++;
    } else if (q[0] == '/' && q[1] == '*') {
      int depth = 1;
      q += 2;
      while (*q && depth > 0) {
        if (q[0] == '/' && q[1] == '*') depth++, q += 2;
        else if (q[0] == '*' && q[1] == '/') depth--, q += 2;
        else q++;
      }
    } else {
      break;
    }
  }
  for (n = 0; (q[n] >= 'a' && q[n] <= 'z') || (q[n] >= 'A' && q[n] <= 'Z'); n++) {}
  if (is_ident(q[n])) return 1; /* "selectx", "set_config": not a command word */
  for (i = 0; refused[i]; i++)
    if (strlen(refused[i]) == n && strncasecmp(q, refused[i], n) == 0) return 0;
  return 1;
}

/* Translates and binds the statement at index 2 with the params at index 3
 * (nil: none). On success leaves the translated SQL (at *sqlidx), two boxes
 * and the bound values on the stack and returns 0; else pushes nil, err,
 * code and returns 3. */
static int prepare_args(lua_State *L, int *sqlidx, params **po) {
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len), *bad;
  int pidx = lua_isnoneornil(L, 3) ? 0 : 3;
  box *bx = newbox(L), *bp;
  xlat *x = (xlat *)calloc(1, sizeof *x);
  params *p;
  if (!x) return ga_fail(L, "NOMEM", "out of memory");
  bx->mem = x;
  bx->release = xlat_release;
  if (translate(sql, len, x) != 0) return ga_fail(L, strcmp(x->err, "out of memory") == 0 ? "NOMEM" : "SQL", "%s", x->err);
  if (x->statements != 1 || !plain_read(x->sql.buf))
    return ga_fail(L, "READONLY", "query() runs one read-only statement");
  lua_pushstring(L, x->sql.buf);
  *sqlidx = lua_gettop(L);
  bp = newbox(L);
  p = params_alloc(x->n);
  if (!p) return ga_fail(L, "NOMEM", "out of memory");
  bp->mem = p;
  bad = bind_all(L, pidx, sql, x, p);
  if (bad) return ga_fail(L, "BIND", "%s", bad);
  *po = p;
  return 0;
}

/* The cached prepared statement for (sql, the parameters' types), preparing
 * it on a miss (unknown types fall back to text where PostgreSQL cannot
 * infer them). Returns the entry, or NULL with *res holding the error
 * result (or NULL for out of memory). */
static qentry *cached_stmt(pgstore *s, const char *sql, params *p, PGresult **res) {
  size_t sqllen = strlen(sql), keylen = sqllen + 1 + (size_t)p->n;
  int i, victim = 0, tries;
  qentry *e;
  char name[24];
  *res = NULL;
  for (i = 0; i < QCACHE; i++) {
    e = &s->q[i];
    if (e->key && e->keylen == keylen && memcmp(e->key, sql, sqllen + 1) == 0 &&
        memcmp(e->key + sqllen + 1, p->sig, (size_t)p->n) == 0) {
      e->used = ++s->tick;
      return e;
    }
    if (s->q[i].used < s->q[victim].used) victim = i;
  }
  e = &s->q[victim];
  if (e->key) { /* evict: the server forgets it too */
    snprintf(name, sizeof name, "DEALLOCATE ga_q%u", e->id);
    PQclear(PQexec(s->conn, name));
    qentry_free(e);
  }
  e->key = (char *)malloc(keylen);
  e->types = (Oid *)malloc(sizeof(Oid) * (size_t)(p->n > 0 ? p->n : 1));
  if (!e->key || !e->types) {
    qentry_free(e);
    return NULL;
  }
  memcpy(e->key, sql, sqllen + 1);
  memcpy(e->key + sqllen + 1, p->sig, (size_t)p->n);
  e->keylen = keylen;
  e->nparams = p->n;
  memcpy(e->types, p->types, sizeof(Oid) * (size_t)p->n);
  e->id = ++s->next_id;
  snprintf(name, sizeof name, "ga_q%u", e->id);
  for (tries = 0; tries < 2; tries++) {
    PGresult *r = PQprepare(s->conn, name, sql, p->n, e->types);
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
      PQclear(r);
      e->used = ++s->tick;
      return e;
    }
    if (tries == 0 && (state_is(r, "42P18") || state_is(r, "42P08"))) { /* no type to infer: strings are text */
      int k, changed = 0;
      for (k = 0; k < p->n; k++)
        if (e->types[k] == 0) e->types[k] = OID_TEXT, changed = 1;
      if (changed) {
        PQclear(r);
        continue;
      }
    }
    *res = r;
    break;
  }
  qentry_free(e);
  return NULL;
}

/* store:query(sql, params) -> { {col=value,...}, ... } | nil, err, code
 * One read-only statement, run in a READ ONLY transaction (a savepoint
 * inside each()); params: an array for ?/?N/$N, or a table keyed by name for
 * :name/@name/$name. NULL columns are absent. A lost connection is
 * re-established and the statement run once more (it only reads). */
static int l_store_query(lua_State *L) {
  pgstore *s = check_store(L);
  params *p;
  const char *sql;
  box *b;
  int r, attempt, nrows, i, sqlidx;
  luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  if ((r = prepare_args(L, &sqlidx, &p)) != 0) return r;
  sql = lua_tostring(L, sqlidx);
  b = newbox(L);
  for (attempt = 0;; attempt++) {
    PGresult *res = NULL;
    qentry *e;
    char name[24], err[512];
    int inner = s->each_depth > 0, ok;
    if ((r = ensure(L, s)) != 0) return r;
    /* inside each()'s transaction even a failed prepare must not abort it */
    if (inner && exec_ok(s->conn, &s->cfg, "SAVEPOINT ga_query", err, sizeof err) != 0)
      return ga_fail(L, PQstatus(s->conn) != CONNECTION_OK ? "CONNECT" : "SQL", "cannot begin query: %s", err);
    e = cached_stmt(s, sql, p, &res);
    if (!e) {
      if (!res) r = ga_fail(L, "NOMEM", "out of memory");
      else box_set(b, res);
      if (inner && PQstatus(s->conn) == CONNECTION_OK)
        PQclear(PQexec(s->conn, "ROLLBACK TO SAVEPOINT ga_query; RELEASE SAVEPOINT ga_query"));
      if (!res) return r;
      if (PQstatus(s->conn) != CONNECTION_OK && attempt == 0 && !inner) continue;
      return fail_result(L, s, res, "cannot prepare query");
    }
    snprintf(name, sizeof name, "ga_q%u", e->id);
    if (!inner && (exec_ok(s->conn, &s->cfg, "BEGIN READ ONLY", err, sizeof err) != 0 ||
                   set_query_timeout(s->conn, &s->cfg, err, sizeof err) != 0)) {
      if (PQstatus(s->conn) != CONNECTION_OK && attempt == 0) continue;
      return ga_fail(L, PQstatus(s->conn) != CONNECTION_OK ? "CONNECT" : "SQL", "cannot begin query: %s", err);
    }
    res = PQexecPrepared(s->conn, name, p->n, p->values, NULL, NULL, 0);
    box_set(b, res);
    ok = res && (PQresultStatus(res) == PGRES_TUPLES_OK || PQresultStatus(res) == PGRES_COMMAND_OK);
    /* nothing the query did survives it: the transaction is rolled back, and
     * session-level advisory locks it took (pg_advisory_lock(), which a
     * rollback keeps: the migration lock among them) are released */
    if (PQstatus(s->conn) == CONNECTION_OK)
      PQclear(PQexec(s->conn, !inner ? "ROLLBACK; " SQL_UNLOCK_ALL
                              : ok   ? "RELEASE SAVEPOINT ga_query; " SQL_UNLOCK_ALL
                                     : "ROLLBACK TO SAVEPOINT ga_query; RELEASE SAVEPOINT ga_query; " SQL_UNLOCK_ALL));
    if (!ok) {
      if (PQstatus(s->conn) != CONNECTION_OK && attempt == 0 && !inner) continue;
      if (state_is(res, "0A000") && attempt == 0) { /* "cached plan must not change result type" */
        snprintf(name, sizeof name, "DEALLOCATE ga_q%u", e->id);
        PQclear(PQexec(s->conn, name));
        qentry_free(e);
        continue;
      }
      if (state_is(res, "25006")) return ga_fail(L, "READONLY", "query() runs one read-only statement");
      if (query_timed_out(&s->cfg, res))
        return ga_fail(L, "TIMEOUT", "query ran longer than query_timeout (%ld ms)", s->cfg.query_ms);
      return fail_result(L, s, res, "query failed");
    }
    break;
  }
  nrows = PQntuples(b->res);
  lua_createtable(L, nrows, 0);
  for (i = 0; i < nrows; i++) {
    push_row(L, b->res, i);
    lua_rawseti(L, -2, i + 1);
  }
  box_set(b, NULL);
  return 1;
}

/* Ends each()'s transaction, or its savepoint when nested. */
static void end_each(pgstore *s, int depth) {
  char sql[160];
  if (s->conn && PQstatus(s->conn) == CONNECTION_OK) {
    if (depth == 1) snprintf(sql, sizeof sql, "ROLLBACK; " SQL_UNLOCK_ALL);
    else snprintf(sql, sizeof sql, "ROLLBACK TO SAVEPOINT ga_each_%d; RELEASE SAVEPOINT ga_each_%d; " SQL_UNLOCK_ALL,
                  depth, depth);
    PQclear(PQexec(s->conn, sql));
  }
  if (s->each_depth > 0) s->each_depth--;
}

/* store:each(sql, params, fn) -> rows_seen | nil, err, code
 * Streams the rows of one read-only query to fn(row) through a cursor in a
 * READ ONLY transaction, FETCH_ROWS at a time (constant memory); fn
 * returning false stops. fn may query() the same store; persisting to it
 * meanwhile returns BUSY. An error raised by fn is re-raised after the
 * transaction is ended. */
static int l_store_each(lua_State *L) {
  pgstore *s = check_store(L);
  params *p;
  box *b;
  qentry *e;
  PGresult *res = NULL;
  const char *decl;
  char sql[64], err[512];
  int r, depth, i, sqlidx, stop = 0;
  long long seen = 0;
  luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  lua_settop(L, 4);
  if ((r = prepare_args(L, &sqlidx, &p)) != 0) return r;
  if ((r = ensure(L, s)) != 0) return r;
  b = newbox(L);
  depth = s->each_depth + 1;
  if (depth == 1) snprintf(sql, sizeof sql, "BEGIN READ ONLY");
  else snprintf(sql, sizeof sql, "SAVEPOINT ga_each_%d", depth);
  if (exec_ok(s->conn, &s->cfg, sql, err, sizeof err) != 0)
    return ga_fail(L, PQstatus(s->conn) != CONNECTION_OK ? "CONNECT" : "SQL", "cannot begin each(): %s", err);
  s->each_depth = depth;
  if (depth == 1 && set_query_timeout(s->conn, &s->cfg, err, sizeof err) != 0) {
    end_each(s, depth);
    return ga_fail(L, PQstatus(s->conn) != CONNECTION_OK ? "CONNECT" : "SQL", "cannot begin each(): %s", err);
  }
  e = cached_stmt(s, lua_tostring(L, sqlidx), p, &res); /* checks the statement and settles its types */
  if (!e) {
    r = res ? (box_set(b, res), fail_result(L, s, res, "cannot prepare query")) : ga_fail(L, "NOMEM", "out of memory");
    end_each(s, depth);
    return r;
  }
  for (i = 0; i < p->n; i++) p->types[i] = e->types[i];
  decl = lua_pushfstring(L, "DECLARE ga_each_%d NO SCROLL CURSOR FOR %s", depth, lua_tostring(L, sqlidx));
  res = PQexecParams(s->conn, decl, p->n, p->types, p->values, NULL, NULL, 0);
  box_set(b, res);
  if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
    /* a statement that prepares but cannot be a cursor's query writes */
    int writes = state_is(res, "25006") || state_is(res, "42601") || state_is(res, "0A000");
    r = writes                          ? ga_fail(L, "READONLY", "query() runs one read-only statement")
        : query_timed_out(&s->cfg, res) ? ga_fail(L, "TIMEOUT", "query ran longer than query_timeout (%ld ms)",
                                                  s->cfg.query_ms)
                                        : fail_result(L, s, res, "query failed");
    end_each(s, depth);
    return r;
  }
  snprintf(sql, sizeof sql, "FETCH FORWARD %d FROM ga_each_%d", FETCH_ROWS, depth);
  while (!stop) {
    int nt;
    res = PQexec(s->conn, sql);
    box_set(b, res);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
      r = query_timed_out(&s->cfg, res)
              ? ga_fail(L, "TIMEOUT", "query ran longer than query_timeout (%ld ms)", s->cfg.query_ms)
              : fail_result(L, s, res, "query failed");
      end_each(s, depth);
      return r;
    }
    nt = PQntuples(res);
    for (i = 0; i < nt && !stop; i++) {
      lua_pushvalue(L, 4);
      push_row(L, res, i);
      if (lua_pcall(L, 1, 1, 0) != 0) {
        box_set(b, NULL);
        end_each(s, depth);
        return lua_error(L);
      }
      seen++;
      stop = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
      lua_pop(L, 1);
      if (!s->conn) { /* fn closed the store */
        box_set(b, NULL);
        return luaL_error(L, "store closed during each()");
      }
    }
    if (nt < FETCH_ROWS) break;
  }
  box_set(b, NULL);
  end_each(s, depth);
  ga_pushint64(L, seen);
  return 1;
}

/* ---- async mode: the writer thread's PostgreSQL backend ---- */

typedef struct {
  PGconn *conn;
  const pgcfg *cfg; /* the store's: it outlives the writer */
  int insert_ready;
  int uncertain; /* a batch's commit may have happened unseen: its ids may be in already */
  char *copybuf; /* reused across batches */
  size_t copycap;
} pgwriter;

static void pgw_close(void *conn) {
  pgwriter *c = (pgwriter *)conn;
  if (!c) return;
  if (c->conn) PQfinish(c->conn);
  free(c->copybuf);
  free(c);
}

/* Appends one column in COPY's text format: \N for NULL; backslash, tab,
 * newline and CR escaped (the row was checked: no NUL bytes). */
static void copy_field(ga_buf *b, const ga_text *t) {
  size_t i, run = 0;
  if (!t->set) {
    ga_buf_add(b, "\\N", 2);
    return;
  }
  for (i = 0; i < t->n; i++) {
    char c = t->p[i], e;
    if (c == '\\') e = '\\';
    else if (c == '\t') e = 't';
    else if (c == '\n') e = 'n';
    else if (c == '\r') e = 'r';
    else continue;
    ga_buf_add(b, t->p + run, i - run);
    ga_buf_addc(b, '\\');
    ga_buf_addc(b, e);
    run = i + 1;
  }
  ga_buf_add(b, t->p + run, t->n - run);
}

/* The batch as one COPY (its own transaction). 0 committed; -1 retry
 * later; -2 the server refused the data (a row's fault, perhaps). */
static int pgw_copy(pgwriter *c, ga_writer *w, ga_writer_item **batch, int n) {
  PGresult *r = PQexec(c->conn, SQL_COPY);
  ga_buf b;
  char err[512];
  int i, rc = 0;
  if (!r || PQresultStatus(r) != PGRES_COPY_IN) {
    pg_error(c->conn, r, c->cfg, err, sizeof err);
    ga_writer_error(w, "cannot start COPY", err);
    rc = retryable(c->conn, r) ? -1 : -2;
    PQclear(r);
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
    b.len = 0;
    for (k = 0; k < GA_NCOLS; k++) {
      if (k) ga_buf_addc(&b, '\t');
      copy_field(&b, &cols[k]);
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
    rc = retryable(c->conn, r) ? -1 : -2;
  }
  PQclear(r);
  while ((r = PQgetResult(c->conn)) != NULL) PQclear(r);
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
    PGresult *r = PQprepare(c->conn, INSERT_NAME, SQL_INSERT, GA_NCOLS, NULL);
    int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) {
      pg_error(c->conn, r, c->cfg, err, sizeof err);
      ga_writer_error(w, "cannot prepare insert", err);
    }
    PQclear(r);
    if (!ok) return -1;
    c->insert_ready = 1;
  }
  if (exec_ok(c->conn, c->cfg, "BEGIN", err, sizeof err) != 0) {
    ga_writer_error(w, "cannot begin batch", err);
    return -1;
  }
  for (i = 0; i < n; i++) {
    ga_text cols[GA_NCOLS];
    const char *values[GA_NCOLS];
    int lengths[GA_NCOLS], formats[GA_NCOLS];
    char created[32];
    PGresult *r;
    if (!batch[i]) continue;
    if (exec_ok(c->conn, c->cfg, "SAVEPOINT ga_row", err, sizeof err) != 0) goto interrupted;
    ga_writer_item_cols(batch[i], cols);
    insert_params(cols, values, lengths, formats, created);
    r = PQexecPrepared(c->conn, INSERT_NAME, GA_NCOLS, values, lengths, formats, 0);
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
      PQclear(r);
      if (exec_ok(c->conn, c->cfg, "RELEASE SAVEPOINT ga_row", err, sizeof err) != 0) goto interrupted;
      continue;
    }
    pg_error(c->conn, r, c->cfg, err, sizeof err);
    if (retryable(c->conn, r)) {
      PQclear(r);
      goto interrupted;
    }
    if (exec_ok(c->conn, c->cfg, "ROLLBACK TO SAVEPOINT ga_row", err2, sizeof err2) != 0) {
      PQclear(r);
      goto interrupted;
    }
    if (c->uncertain && state_is(r, "23505")) {
      const char *cn = PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME);
      if (cn && strcmp(cn, PKEY_NAME) == 0) { /* committed by the attempt whose answer was lost */
        PQclear(r);
        continue;
      }
    }
    PQclear(r);
    ga_writer_refuse(w, batch, i, err);
  }
  if (exec_ok(c->conn, c->cfg, "COMMIT", err, sizeof err) != 0) {
    ga_writer_error(w, "cannot commit batch", err);
    if (PQstatus(c->conn) != CONNECTION_OK) c->uncertain = 1;
    return -1;
  }
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
  if (!c->uncertain) {
    rc = pgw_copy(c, w, batch, n);
    if (rc != -2) return rc;
  }
  rc = pgw_rows(c, w, batch, n);
  if (rc == 0) c->uncertain = 0;
  return rc;
}

static const ga_writer_backend pg_backend = {pgw_write_batch, pgw_close};

/* store:start_async{ queue = 10000, batch = 100, max_bytes = 256 MiB,
 *   on_full = "block" | "error" } -> true | nil, err, code
 * From now on persist() checks and queues rows for a writer thread with its
 * own connection, which COPYs them in batches of one transaction each. */
static int l_store_start_async(lua_State *L) {
  pgstore *s = check_store(L);
  ga_writer_opts o;
  char err[512];
  pgwriter *c;
  PGresult *r;
  ga_check_async_opts(L, 2, &o);
  if (s->cfg.readonly) return ga_fail(L, "READONLY", "store was opened read-only");
  if (s->writer) return ga_fail(L, "ASYNC", "the store is already in async mode");
  c = (pgwriter *)calloc(1, sizeof *c);
  if (!c) return ga_fail(L, "NOMEM", "out of memory");
  c->cfg = &s->cfg;
  c->conn = pg_connect(&s->cfg, err, sizeof err);
  if (!c->conn) {
    pgw_close(c);
    return ga_fail(L, "ASYNC", "writer cannot connect to %s: %s", s->cfg.display, err);
  }
  r = PQprepare(c->conn, INSERT_NAME, SQL_INSERT, GA_NCOLS, NULL);
  if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
    pg_error(c->conn, r, &s->cfg, err, sizeof err);
    PQclear(r);
    pgw_close(c);
    return ga_fail(L, "ASYNC", "writer cannot prepare insert (is the store migrated?): %s", err);
  }
  PQclear(r);
  c->insert_ready = 1;
  s->writer = ga_writer_start_backend(&pg_backend, c, &o, err, sizeof err);
  if (!s->writer) return ga_fail(L, "ASYNC", "%s", err);
  lua_pushboolean(L, 1);
  return 1;
}


/* store:flush([timeout_ms]) and store:stats() (ga_core.c), plus the
 * PostgreSQL-only `reconnects` count. */
static int l_store_flush(lua_State *L) {
  pgstore *s = check_store(L);
  return ga_store_flush(L, s->writer);
}

static int l_store_stats(lua_State *L) {
  pgstore *s = check_store(L);
  ga_store_stats(L, s->writer, s->persisted);
  ga_pushint64(L, (long long)s->reconnects);
  lua_setfield(L, -2, "reconnects");
  return 1;
}


void ga_open_pg(lua_State *L) {
  static const luaL_Reg methods[] = {{"migrate", l_store_migrate},
                                     {"schema_version", l_store_schema_version},
                                     {"persist", l_store_persist},
                                     {"query", l_store_query},
                                     {"each", l_store_each},
                                     {"start_async", l_store_start_async},
                                     {"flush", l_store_flush},
                                     {"stats", l_store_stats},
                                     {"url", l_store_url},
                                     {"close", l_store_close},
                                     {NULL, NULL}};
  ga_newclass(L, PG_MT, methods, l_store_close, l_store_tostring);
  luaL_newmetatable(L, BOX_MT);
  lua_pushcfunction(L, l_box_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_pg_open);
  lua_setfield(L, -2, "pg_open");
  lua_pushinteger(L, PQlibVersion());
  lua_setfield(L, -2, "libpq_version");
}
