/* ga_store.c — the SQLite snapshot store: one connection per store object,
 * migrations tracked in schema_migrations, persist of one snapshot through a
 * cached persistent statement, and read-only queries with bound parameters
 * through a small per-store statement cache. All SQL this file prepares sits
 * in the block below; the schema itself lives in migrations/sqlite/. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>
#include "ga_private.h"

#define STORE_MT "genaudit.sqlite_store"
#define QCACHE 16

/* ---- the statements this file prepares ---- */
static const char ga_sql_insert[] =
    "INSERT INTO generation_snapshots (id, created_at, org_id, user_id, platform, template_id,"
    " template_version, status, content, error, final_system_prompt, final_user_prompt,"
    " token_metrics, performance_metrics, repair_metrics, request_params, replay_of)"
    " VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17)";
static const char SQL_MIGRATIONS_TABLE[] =
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')))";
static const char SQL_MIGRATION_APPLIED[] = "SELECT 1 FROM schema_migrations WHERE version = ?1";
static const char SQL_MIGRATION_RECORD[] = "INSERT INTO schema_migrations (version, name) VALUES (?1, ?2)";
static const char SQL_ID_STORED[] = "SELECT 1 FROM generation_snapshots WHERE id = ?1";
static const char SQL_SCHEMA_VERSION[] = "SELECT coalesce(max(version), 0) FROM schema_migrations";
/* Planner statistics (see refresh_stats). analysis_limit makes ANALYZE sample
 * ~400 rows per index: milliseconds at 1M rows instead of a full read. */
static const char SQL_OPTIMIZE[] = "PRAGMA analysis_limit=400; PRAGMA optimize";
static const char SQL_STATS_TABLE[] = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='sqlite_stat1'";
static const char SQL_STATS_ROWS[] =
    "SELECT max(CAST(stat AS INTEGER)) FROM sqlite_stat1 WHERE tbl = 'generation_snapshots'";
static const char SQL_TABLE_ROWS[] = "SELECT max(rowid) FROM generation_snapshots";
static const char SQL_ANALYZE[] = "PRAGMA analysis_limit=400; ANALYZE generation_snapshots";
#define STATS_MIN_ROWS 1000 /* below this every plan is fast */
#define STATS_GROWTH 10     /* re-analyze once the table is this many times larger */

typedef struct {
  char *sql;
  size_t len;
  sqlite3_stmt *st;
  uint64_t used;
} qentry;

typedef struct {
  sqlite3 *db; /* NULL once closed */
  sqlite3_stmt *insert;
  qentry q[QCACHE];
  uint64_t tick;
  ga_ulid_state ulid;
  int readonly;
  int sync_level;     /* PRAGMA synchronous index, reused by the writer */
  int journal;        /* journal_mode index (JOURNALS), reused by the writer */
  long long length_limit; /* opts.length_limit (SQLITE_LIMIT_LENGTH), 0: SQLite's; reused by the writer */
  long busy_ms;
  ga_writer *writer;  /* non-NULL in async mode */
  uint64_t persisted; /* sync mode: rows committed by persist() */
  uint64_t busy_t0;   /* when the current wait for a lock began (ns) */
  uint64_t deadline;  /* open(): no wait for a lock past this (ns, monotonic); 0 = none */
  uint64_t rng;       /* xorshift64 for the busy handler's jitter, never 0 */
  int guard;          /* preparing a query()/each() statement: the authorizer refuses */
  long query_ms;      /* opts.query_timeout: a query()/each() step runs at most this long; 0 = no limit */
  uint64_t query_deadline; /* the running query's (ns, monotonic); 0 = none */
  int query_timed_out;     /* the progress handler interrupted it */
  int refused;        /* the authorizer refused something while guard was set */
} store;

/* The busy handler of a store's own connection: polls the lock every
 * 0.5-1.5 ms until busy_timeout has passed since the first BUSY of this
 * wait. SQLite's stock handler sleeps up to 100 ms between tries, so a sync
 * persist() lost the lock to other processes' writers that take it back to
 * back (spec/concurrency_spec.lua); frequent, jittered polling finds the gaps
 * they leave. Returns 0 to give up (the caller gets BUSY). */
static int busy_wait(void *arg, int count) {
  store *s = (store *)arg;
  uint64_t now = ga_monotonic_ns(), x;
  if (count == 0) s->busy_t0 = now;
  if (now - s->busy_t0 >= (uint64_t)s->busy_ms * 1000000u) return 0;
  if (s->deadline && now >= s->deadline) return 0;
  x = s->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  s->rng = x;
  ga_sleep_ns(500000u + x % 1000000u);
  return 1;
}

/* The progress handler (installed with opts.query_timeout): interrupts a
 * query()/each() statement past its deadline, so a query that never ends
 * (an endless recursive CTE) returns TIMEOUT instead of holding the
 * connection forever. The store's own statements have no deadline. */
static int query_progress(void *arg) {
  store *s = (store *)arg;
  if (s->query_deadline && ga_monotonic_ns() > s->query_deadline) {
    s->query_timed_out = 1;
    return 1;
  }
  return 0;
}

static void query_deadline_start(store *s) {
  s->query_timed_out = 0;
  s->query_deadline = s->query_ms ? ga_monotonic_ns() + (uint64_t)s->query_ms * 1000000u : 0;
}

static int fail_db(lua_State *L, store *s, const char *what);

/* The error of a failed query()/each() step: TIMEOUT when the progress handler stopped it. */
static int fail_query(lua_State *L, store *s) {
  s->query_deadline = 0;
  if (s->query_timed_out) {
    s->query_timed_out = 0;
    return ga_fail(L, "TIMEOUT", "query ran longer than query_timeout (%ld ms)", s->query_ms);
  }
  return fail_db(L, s, "query failed");
}

static store *check_store(lua_State *L) {
  store *s = (store *)luaL_checkudata(L, 1, STORE_MT);
  if (!s->db) luaL_error(L, "attempt to use a closed store");
  return s;
}

static int exec(store *s, const char *sql);
static int authorize(void *arg, int action, const char *a1, const char *a2, const char *db, const char *trig);

static int store_close_impl(store *s) {
  int i;
  if (!s->db) return 0;
  ga_writer_stop(s->writer); /* drains the queue: nothing acknowledged is dropped */
  s->writer = NULL;
  if (!s->readonly) {
    /* SQLite's advice for every closing connection: re-analyze the tables
     * whose queries (reports) in this session would plan better with fresh
     * statistics. Best effort and brief: a busy database just skips it. */
    sqlite3_busy_timeout(s->db, 20);
    exec(s, SQL_OPTIMIZE);
  }
  sqlite3_finalize(s->insert);
  s->insert = NULL;
  for (i = 0; i < QCACHE; i++) {
    sqlite3_finalize(s->q[i].st);
    free(s->q[i].sql);
    memset(&s->q[i], 0, sizeof s->q[i]);
  }
  sqlite3_close_v2(s->db);
  s->db = NULL;
  return 0;
}

static int l_store_close(lua_State *L) {
  store *s = (store *)luaL_checkudata(L, 1, STORE_MT);
  store_close_impl(s);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_store_tostring(lua_State *L) {
  store *s = (store *)luaL_checkudata(L, 1, STORE_MT);
  if (!s->db) lua_pushliteral(L, "genaudit.sqlite_store (closed)");
  else lua_pushfstring(L, "genaudit.sqlite_store (%s)", sqlite3_db_filename(s->db, "main"));
  return 1;
}

static int fail_db(lua_State *L, store *s, const char *what) {
  int rc = sqlite3_extended_errcode(s->db);
  const char *code = (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED ? "BUSY"
                     : (rc & 0xff) == SQLITE_CONSTRAINT                         ? "CONSTRAINT"
                     : (rc & 0xff) == SQLITE_READONLY                           ? "READONLY"
                                                                                : "SQLITE";
  return ga_fail(L, code, "%s: %s", what, sqlite3_errmsg(s->db));
}

/* Runs a PRAGMA or other statement without results; 0 or an SQLite code. */
static int exec(store *s, const char *sql) { return sqlite3_exec(s->db, sql, NULL, NULL, NULL); }

/* The first column of the first row of sql, or -1 (no row, NULL, error). */
static long long query_int(store *s, const char *sql) {
  sqlite3_stmt *st = NULL;
  long long v = -1;
  if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW &&
      sqlite3_column_type(st, 0) != SQLITE_NULL)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

/* Keeps the planner's statistics on generation_snapshots current. Measured
 * at 1M rows: without sqlite_stat1 the 7-day top-templates query scans the
 * whole (template_id, created_at) index (~150 ms); with it, a skip-scan of
 * that index answers in ~10 ms. Runs ANALYZE when the table holds at least
 * STATS_MIN_ROWS rows (max(rowid): no count) and has no statistics, or
 * STATS_GROWTH times the rows it had when last analyzed; close() covers the
 * slower growth (PRAGMA optimize). Best effort: a failure (busy, read-only)
 * changes nothing and is not reported. */
static void refresh_stats(store *s) {
  long long rows = query_int(s, SQL_TABLE_ROWS), analyzed;
  if (rows < STATS_MIN_ROWS) return;
  analyzed = query_int(s, SQL_STATS_TABLE) == 1 ? query_int(s, SQL_STATS_ROWS) : -1;
  if (analyzed > 0 && rows < analyzed * STATS_GROWTH) return;
  exec(s, SQL_ANALYZE);
}

static const char *const JOURNALS[] = {"wal", "delete", "truncate", "memory", NULL};

/* core.sqlite_open(path, opts) -> store | nil, err, code
 * opts: journal_mode ("wal"), synchronous ("normal"), busy_timeout (ms, 5000),
 * readonly (false). A new database file is created with mode 0600. */
static int l_sqlite_open(lua_State *L) {
  static const char *const syncs[] = {"off", "normal", "full", "extra", NULL};
  const char *const *journals = JOURNALS;
  size_t pathlen;
  const char *path = luaL_checklstring(L, 1, &pathlen);
  int sync = 1, journal = 0, readonly = 0, flags, rc;
  long long busy = 5000, length_limit = 0, query_ms = 0;
  store *s;
  char sql[96];
  if (strlen(path) != pathlen) return luaL_argerror(L, 1, "database path must not contain NUL bytes");
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "synchronous");
    if (!lua_isnil(L, -1)) sync = luaL_checkoption(L, -1, NULL, syncs);
    lua_getfield(L, 2, "journal_mode");
    if (!lua_isnil(L, -1)) journal = luaL_checkoption(L, -1, NULL, journals);
    lua_getfield(L, 2, "busy_timeout");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &busy) || busy < 0 || busy > 3600000))
      return luaL_argerror(L, 2, "busy_timeout must be an integer number of ms (0-3600000)");
    lua_getfield(L, 2, "readonly");
    readonly = lua_toboolean(L, -1);
    lua_getfield(L, 2, "length_limit");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &length_limit) || length_limit < 1 || length_limit > 2147483647))
      return luaL_argerror(L, 2, "length_limit must be a positive integer number of bytes");
    lua_getfield(L, 2, "query_timeout");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &query_ms) || query_ms < 0 || query_ms > 3600000))
      return luaL_argerror(L, 2, "query_timeout must be an integer number of ms (0-3600000)");
    lua_pop(L, 6);
  }
  /* closed userdata first, then the resource: nothing leaks if Lua raises */
  s = (store *)ga_newuserdata(L, sizeof *s);
  memset(s, 0, sizeof *s);
  luaL_getmetatable(L, STORE_MT);
  lua_setmetatable(L, -2);
  s->readonly = readonly;
  s->sync_level = sync;
  s->journal = journal;
  s->busy_ms = (long)busy;
  s->length_limit = length_limit;
  s->query_ms = (long)query_ms;

  if (!readonly && strcmp(path, ":memory:") != 0 && path[0] != '\0' && strncmp(path, "file:", 5) != 0) {
    /* create the file ourselves so it is private (0600) from the start */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return ga_fail(L, "OPEN", "cannot open database '%s': %s", path, strerror(errno));
    close(fd);
  }
  flags = (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) | SQLITE_OPEN_NOMUTEX |
          SQLITE_OPEN_URI;
  rc = sqlite3_open_v2(path, &s->db, flags, NULL);
  if (rc != SQLITE_OK) {
    int r;
    if (!s->db) return ga_fail(L, "OPEN", "cannot open database '%s': out of memory", path);
    lua_pushfstring(L, "cannot open database '%s': %s", path, sqlite3_errmsg(s->db));
    sqlite3_close_v2(s->db);
    s->db = NULL;
    r = ga_fail(L, "OPEN", "%s", lua_tostring(L, -1));
    return r;
  }
  sqlite3_extended_result_codes(s->db, 1);
  s->rng = (ga_monotonic_ns() ^ (uint64_t)(uintptr_t)s) | 1u;
  sqlite3_busy_handler(s->db, busy_wait, s);
  sqlite3_set_authorizer(s->db, authorize, s);
  if (query_ms > 0) sqlite3_progress_handler(s->db, 1000, query_progress, s);
  if (length_limit > 0) sqlite3_limit(s->db, SQLITE_LIMIT_LENGTH, (int)length_limit);
  /* every wait for a lock below ends by busy_timeout after open began: one
   * budget for the whole open, not one per statement (or per retry) */
  s->deadline = ga_monotonic_ns() + (uint64_t)busy * 1000000u;
  if (!readonly) {
    snprintf(sql, sizeof sql, "PRAGMA journal_mode=%s", journals[journal]);
    /* switching journal mode needs an exclusive lock, and some of its BUSY
     * answers do not go through the busy handler: retry while another
     * process (a migrating nginx worker) holds the database, until the
     * deadline. (The busy handler waits within each try too: counting 10 ms
     * per try made this loop wait busy_timeout^2/10 ms.) */
    while ((rc = exec(s, sql)) == SQLITE_BUSY && ga_monotonic_ns() < s->deadline) sqlite3_sleep(10);
    if (rc != SQLITE_OK) {
      int r = fail_db(L, s, "cannot set journal mode");
      store_close_impl(s);
      return r;
    }
  }
  snprintf(sql, sizeof sql, "PRAGMA synchronous=%s", syncs[sync]);
  if (exec(s, sql) != SQLITE_OK || exec(s, "PRAGMA foreign_keys=ON") != SQLITE_OK) {
    int r = fail_db(L, s, "cannot configure database");
    store_close_impl(s);
    return r;
  }
  /* a database that is not SQLite fails here rather than at first use */
  if (exec(s, "SELECT count(*) FROM sqlite_master") != SQLITE_OK) {
    int r = fail_db(L, s, "cannot read database");
    store_close_impl(s);
    return r;
  }
  s->deadline = 0;
  return 1;
}

/* Steps a statement that returns no rows; resets it. */
static int step_done(sqlite3_stmt *st) {
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static long long schema_version(store *s) {
  sqlite3_stmt *st = NULL;
  long long v = -1;
  if (sqlite3_prepare_v2(s->db, SQL_SCHEMA_VERSION, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

/* store:migrate({ {version=, name=, sql=}, ... }) -> applied, version | nil, err, code
 * Each pending migration runs in its own transaction together with its
 * schema_migrations row; a failure rolls that migration back and stops. */
static int l_store_migrate(lua_State *L) {
  store *s = check_store(L);
  size_t i, n;
  int applied = 0, rc;
  sqlite3_stmt *q = NULL, *rec = NULL;
  luaL_checktype(L, 2, LUA_TTABLE);
  ga_check_migrations(L, 2); /* everything, before touching the database */
  n = ga_rawlen(L, 2);
  if (exec(s, SQL_MIGRATIONS_TABLE) != SQLITE_OK) return fail_db(L, s, "cannot create schema_migrations");
  if (sqlite3_prepare_v2(s->db, SQL_MIGRATION_APPLIED, -1, &q, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(s->db, SQL_MIGRATION_RECORD, -1, &rec, NULL) != SQLITE_OK) {
    rc = fail_db(L, s, "cannot prepare migration statements");
    goto cleanup;
  }
  for (i = 1; i <= n; i++) {
    long long v;
    const char *name, *sql;
    size_t namelen;
    int done;
    char *errmsg = NULL;
    lua_rawgeti(L, 2, (int)i);
    lua_getfield(L, -1, "version");
    ga_tointeger(L, -1, &v);
    lua_getfield(L, -2, "name");
    name = lua_tolstring(L, -1, &namelen);
    lua_getfield(L, -3, "sql");
    sql = lua_tostring(L, -1);
    sqlite3_bind_int64(q, 1, v);
    done = sqlite3_step(q) == SQLITE_ROW;
    sqlite3_reset(q);
    if (!done) {
      if (exec(s, "BEGIN IMMEDIATE") != SQLITE_OK) {
        rc = fail_db(L, s, "cannot begin migration");
        goto cleanup;
      }
      /* look again under the write lock: another process (an nginx worker)
       * may have applied it while we waited */
      sqlite3_bind_int64(q, 1, v);
      done = sqlite3_step(q) == SQLITE_ROW;
      sqlite3_reset(q);
      if (done) {
        exec(s, "COMMIT");
        lua_pop(L, 4);
        continue;
      }
      rc = sqlite3_exec(s->db, sql, NULL, NULL, &errmsg);
      if (rc == SQLITE_OK) {
        sqlite3_bind_int64(rec, 1, v);
        sqlite3_bind_text(rec, 2, name, (int)namelen, SQLITE_STATIC);
        rc = step_done(rec);
      }
      if (rc == SQLITE_OK) rc = exec(s, "COMMIT");
      if (rc != SQLITE_OK) {
        lua_pushfstring(L, "%s", errmsg ? errmsg : sqlite3_errmsg(s->db));
        sqlite3_free(errmsg);
        exec(s, "ROLLBACK");
        rc = ga_fail(L, "MIGRATION", "migration %04d_%s failed: %s (database left at version %d)", (int)v, name,
                     lua_tostring(L, -1), (int)schema_version(s));
        goto cleanup;
      }
      applied++;
    }
    lua_pop(L, 4);
  }
  refresh_stats(s);
  lua_pushinteger(L, applied);
  ga_pushint64(L, schema_version(s));
  rc = 2;
cleanup:
  sqlite3_finalize(q);
  sqlite3_finalize(rec);
  return rc;
}

/* store:schema_version() -> integer (0 for an empty database) */
static int l_store_schema_version(lua_State *L) {
  store *s = check_store(L);
  sqlite3_stmt *st = NULL;
  int exists;
  sqlite3_prepare_v2(s->db, "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migrations'", -1, &st,
                     NULL);
  exists = st && sqlite3_step(st) == SQLITE_ROW;
  sqlite3_finalize(st);
  ga_pushint64(L, exists ? schema_version(s) : 0);
  return 1;
}

/* Binds the row's columns; SQLITE_OK or the first bind's error code. */
static int bind_row(sqlite3_stmt *st, const ga_row *row) {
  int i, rc = SQLITE_OK;
  for (i = 0; i < GA_NCOLS && rc == SQLITE_OK; i++) {
    if (row->col[i].set) rc = sqlite3_bind_text64(st, i + 1, row->col[i].p, row->col[i].n, SQLITE_STATIC, SQLITE_UTF8);
    else rc = sqlite3_bind_null(st, i + 1);
  }
  return rc;
}

/* Bytes a row's record may need beyond its columns' own (header, varints). */
#define ROW_OVERHEAD 1024

/* Refuses a row SQLite would refuse for its size (SQLITE_LIMIT_LENGTH of
 * this connection: per value, and per row record), before anything is
 * bound or queued: the async writer would otherwise acknowledge it and fail
 * later. 0, or -1 with err. */
static int check_row_size(store *s, const ga_row *row, char *err, size_t errlen) {
  long long limit = sqlite3_limit(s->db, SQLITE_LIMIT_LENGTH, -1), total = 0;
  int i;
  for (i = 0; i < GA_NCOLS; i++) {
    if (!row->col[i].set) continue;
    if ((long long)row->col[i].n > limit) {
      snprintf(err, errlen, "%s: %zu bytes exceed the database's limit of %lld bytes per value", ga_col_names[i],
               row->col[i].n, limit);
      return -1;
    }
    total += (long long)row->col[i].n;
  }
  if (total + ROW_OVERHEAD > limit) {
    /* the record's overhead counted in: "1298 bytes exceed ... 2000" read as a wrong refusal */
    snprintf(err, errlen, "the row's %lld bytes exceed the database's limit of %lld bytes per row", total + ROW_OVERHEAD,
             limit);
    return -1;
  }
  return 0;
}

/* True (1) when a row with this id is stored already; 0 when not; -1 on an
 * error (then the writer finds out). Async mode asks before acknowledging a
 * row that brings its own id. */
static int id_stored(store *s, const char *id) {
  sqlite3_stmt *st = NULL;
  int r = -1, rc;
  if (sqlite3_prepare_v2(s->db, SQL_ID_STORED, -1, &st, NULL) == SQLITE_OK &&
      sqlite3_bind_text(st, 1, id, 26, SQLITE_STATIC) == SQLITE_OK) {
    rc = sqlite3_step(st);
    r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
  }
  sqlite3_finalize(st);
  return r;
}

/* store:persist(row) -> id | nil, err, code. Writes nothing unless the whole
 * row is valid; one INSERT, one transaction. */
static int l_store_persist(lua_State *L) {
  store *s = check_store(L);
  ga_row row;
  char err[256];
  int rc, explicit_id;
  luaL_checktype(L, 2, LUA_TTABLE);
  if (s->readonly) return ga_fail(L, "READONLY", "store was opened read-only");
  if (ga_row_build(L, 2, &row, err, sizeof err) != 0) {
    ga_row_free(&row);
    return ga_fail(L, "INVALID", "%s", err);
  }
  explicit_id = row.col[GA_COL_ID].set;
  if (ga_row_stamp(&row, &s->ulid) != 0) {
    ga_row_free(&row);
    return ga_fail(L, "ULID", "cannot generate a snapshot id");
  }
  if (check_row_size(s, &row, err, sizeof err) != 0) {
    ga_row_free(&row);
    return ga_fail(L, "INVALID", "%s", err);
  }
  if (s->writer) {
    int r;
    if (explicit_id && id_stored(s, row.id) == 1) {
      ga_row_free(&row);
      return ga_fail(L, "CONSTRAINT", "a snapshot with id %.26s is stored already", row.id);
    }
    r = ga_writer_push(s->writer, &row, explicit_id, err, sizeof err);
    ga_row_free(&row);
    if (r != 0) return ga_fail(L, ga_writer_push_code(r), "%s", err);
    lua_pushlstring(L, row.id, 26);
    return 1;
  }
  if (!s->insert &&
      sqlite3_prepare_v3(s->db, ga_sql_insert, -1, SQLITE_PREPARE_PERSISTENT, &s->insert, NULL) != SQLITE_OK) {
    ga_row_free(&row);
    return fail_db(L, s, "cannot prepare insert (is the store migrated?)");
  }
  rc = bind_row(s->insert, &row);
  if (rc != SQLITE_OK) { /* a value SQLite refuses: never stored as NULL */
    sqlite3_clear_bindings(s->insert);
    ga_row_free(&row);
    return ga_fail(L, "INVALID", "cannot bind the row: %s", sqlite3_errstr(rc));
  }
  rc = step_done(s->insert);
  if (rc != SQLITE_OK) {
    ga_row_free(&row);
    return fail_db(L, s, "cannot persist snapshot");
  }
  s->persisted++;
  lua_pushlstring(L, row.id, 26);
  ga_row_free(&row);
  return 1;
}

/* store:start_async{ queue = 10000, batch = 100, max_bytes = 256 MiB,
 *   on_full = "block" | "error" } -> true | nil, err, code
 * From now on persist() queues rows for a writer thread with its own
 * connection, in the store's journal mode (a "delete" store is not switched to
 * WAL); flush() waits for them; close() drains them. File stores only. */
static int l_store_start_async(lua_State *L) {
  store *s = check_store(L);
  ga_writer_opts o;
  ga_sqlite_writer_conf conf;
  const char *path;
  char err[256];
  ga_check_async_opts(L, 2, &o);
  if (s->readonly) return ga_fail(L, "READONLY", "store was opened read-only");
  if (s->writer) return ga_fail(L, "ASYNC", "the store is already in async mode");
  path = sqlite3_db_filename(s->db, "main");
  if (!path || !*path) return ga_fail(L, "ASYNC", "async mode needs a database file (not :memory:)");
  conf.path = path;
  conf.insert_sql = ga_sql_insert;
  conf.journal_mode = JOURNALS[s->journal];
  conf.busy_timeout_ms = s->busy_ms;
  conf.synchronous = s->sync_level;
  conf.length_limit = s->length_limit;
  s->writer = ga_sqlite_writer_start(&conf, &o, err, sizeof err);
  if (!s->writer) return ga_fail(L, "ASYNC", "%s", err);
  lua_pushboolean(L, 1);
  return 1;
}


/* store:flush([timeout_ms]) and store:stats(): shared with every backend (ga_core.c). */
static int l_store_flush(lua_State *L) {
  store *s = check_store(L);
  return ga_store_flush(L, s->writer);
}

static int l_store_stats(lua_State *L) {
  store *s = check_store(L);
  return ga_store_stats(L, s->writer, s->persisted);
}


/* True when only whitespace and semicolons remain (one statement given). */
static int only_space(const char *p) {
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ';') p++;
  return *p == '\0';
}

/* PRAGMAs query() may run: pure reads. `args` 1: with or without an
 * argument (a table or index name, a row limit); 0: only without one (with
 * an argument they set something). Everything else is refused. */
static const struct { const char *name; int args; } read_pragmas[] = {
    {"table_info", 1},      {"table_xinfo", 1},    {"index_list", 1},      {"index_info", 1},
    {"index_xinfo", 1},     {"foreign_key_list", 1}, {"foreign_key_check", 1}, {"integrity_check", 1},
    {"quick_check", 1},     {"user_version", 0},   {"application_id", 0},  {"schema_version", 0},
    {"data_version", 0},    {"page_count", 0},     {"page_size", 0},       {"freelist_count", 0},
    {"encoding", 0},        {"synchronous", 0},     {"foreign_keys", 0},
    {"busy_timeout", 0},    {"query_only", 0},     {"locking_mode", 0},    {"trusted_schema", 0},
    {"hard_heap_limit", 0}, {"soft_heap_limit", 0}, {"cache_size", 0},     {"compile_options", 0},
    {"database_list", 0},   {"table_list", 0},     {"collation_list", 0},  {"function_list", 0},
    {"module_list", 0},     {"pragma_list", 0},    {NULL, 0}};

/* The authorizer of a store's connection. While a query()/each() statement
 * is prepared (s->guard) it allows reading tables, calling functions and
 * the PRAGMAs above, and refuses everything else: writes, schema changes,
 * transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE),
 * ATTACH/DETACH, PRAGMAs that set something. It runs while the statement is
 * compiled, before any of it runs: a refused PRAGMA (busy_timeout,
 * hard_heap_limit, ... which SQLite applies as it compiles them) changes
 * nothing. Outside query()/each() it allows everything (the store's own SQL). */
static int authorize(void *arg, int action, const char *a1, const char *a2, const char *db, const char *trig) {
  store *s = (store *)arg;
  int i;
  (void)db;
  (void)trig;
  if (!s->guard) return SQLITE_OK;
  switch (action) {
    case SQLITE_SELECT: case SQLITE_READ: case SQLITE_RECURSIVE: return SQLITE_OK;
    case SQLITE_UPDATE:
      /* SQLite asks this while it sets up a table-valued function (json_each,
       * pragma_table_xinfo) in a read; a real UPDATE of the schema table is
       * refused by SQLite itself (writable_schema cannot be set here) and by
       * the read-only check of query() */
      if (a1 && (strcmp(a1, "sqlite_master") == 0 || strcmp(a1, "sqlite_temp_master") == 0)) return SQLITE_OK;
      break;
    case SQLITE_FUNCTION:
      /* the two functions that can change the process: refused even if enabled */
      if (a2 && (sqlite3_stricmp(a2, "load_extension") == 0 || sqlite3_stricmp(a2, "fts3_tokenizer") == 0)) break;
      return SQLITE_OK;
    case SQLITE_PRAGMA:
      for (i = 0; a1 && read_pragmas[i].name; i++)
        if (sqlite3_stricmp(a1, read_pragmas[i].name) == 0) {
          if (a2 && !read_pragmas[i].args) break;
          return SQLITE_OK;
        }
      break;
    default: break;
  }
  s->refused = 1;
  return SQLITE_DENY;
}

/* Prepares sql for query()/each() under the authorizer. SQLITE_AUTH when it
 * refused something (nothing of the statement ran). */
static int prepare_guarded(store *s, const char *sql, size_t len, unsigned flags, sqlite3_stmt **st,
                           const char **tail) {
  int rc;
  s->guard = 1;
  s->refused = 0;
  rc = sqlite3_prepare_v3(s->db, sql, (int)len, flags, st, tail);
  s->guard = 0;
  if (rc == SQLITE_OK && s->refused) { /* cannot happen (a DENY fails the prepare), but never run it */
    sqlite3_finalize(*st);
    *st = NULL;
    rc = SQLITE_AUTH;
  }
  if (rc != SQLITE_OK && s->refused) rc = SQLITE_AUTH;
  return rc;
}

/* Finds or prepares the statement for sql in the per-store LRU cache. Only a
 * single read-only statement is cached: a hit reports an empty tail, so caching
 * "SELECT 1; DELETE ..." would let its second call pass query()'s check.
 * Returns NULL with the SQLite error left in the connection, or NULL with
 * SQLITE_OK there when sql holds no statement at all. */
static sqlite3_stmt *cached_stmt(store *s, const char *sql, size_t len, const char **tail) {
  int i, victim = 0;
  sqlite3_stmt *st = NULL;
  char *copy;
  for (i = 0; i < QCACHE; i++) {
    if (s->q[i].st && s->q[i].len == len && memcmp(s->q[i].sql, sql, len) == 0) {
      s->q[i].used = ++s->tick;
      *tail = "";
      return s->q[i].st;
    }
    if (s->q[i].used < s->q[victim].used) victim = i;
  }
  if (prepare_guarded(s, sql, len, SQLITE_PREPARE_PERSISTENT, &st, tail) != SQLITE_OK || !st) return NULL;
  if (!only_space(*tail) || !sqlite3_stmt_readonly(st)) return st; /* refused by the caller, never cached */
  copy = (char *)malloc(len + 1);
  if (!copy) return st; /* usable, just not cached: caller finalizes uncached ones */
  memcpy(copy, sql, len);
  copy[len] = '\0';
  sqlite3_finalize(s->q[victim].st);
  free(s->q[victim].sql);
  s->q[victim].sql = copy;
  s->q[victim].len = len;
  s->q[victim].st = st;
  s->q[victim].used = ++s->tick;
  return st;
}

static int is_cached(store *s, sqlite3_stmt *st) {
  int i;
  for (i = 0; i < QCACHE; i++)
    if (s->q[i].st == st) return 1;
  return 0;
}

/* Binds one Lua value at vidx to parameter i. Returns NULL or an error text
 * (a type that cannot be bound, or SQLite refusing the value: too big). */
static const char *bind_value(lua_State *L, sqlite3_stmt *st, int i, int vidx) {
  long long iv;
  int rc;
  switch (lua_type(L, vidx)) {
    case LUA_TNUMBER:
      if (ga_exactint(L, vidx, &iv)) { /* LuaJIT: an integral value below 2^53 */
        rc = sqlite3_bind_int64(st, i, (sqlite3_int64)iv);
        break;
      }
      rc = sqlite3_bind_double(st, i, (double)lua_tonumber(L, vidx));
      break;
    case LUA_TSTRING: {
      size_t n;
      const char *p = lua_tolstring(L, vidx, &n);
      rc = sqlite3_bind_text64(st, i, p, n, SQLITE_TRANSIENT, SQLITE_UTF8);
      break;
    }
    case LUA_TBOOLEAN: rc = sqlite3_bind_int(st, i, lua_toboolean(L, vidx)); break;
    case LUA_TLIGHTUSERDATA:
      if (ga_isnull(L, vidx)) {
        rc = sqlite3_bind_null(st, i);
        break;
      }
      /* fall through */
    default: return luaL_typename(L, vidx);
  }
  if (rc == SQLITE_OK) return NULL;
  return rc == SQLITE_TOOBIG ? "value (too big for the database)" : sqlite3_errstr(rc);
}

/* Steps a query()/each() statement under the authorizer too: a statement
 * SQLite compiles while it runs (a pragma_xxx() table, a re-prepare after a
 * schema change) gets the same check. */
static int step_guarded(store *s, sqlite3_stmt *st) {
  int rc;
  s->guard = 1;
  rc = sqlite3_step(st);
  s->guard = 0;
  return rc;
}

/* Releases a statement obtained from prepare_bound. */
static void release(store *s, sqlite3_stmt *st) {
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (!is_cached(s, st)) sqlite3_finalize(st);
}

/* Prepares one read-only statement (from the cache unless `fresh`) and binds
 * the params table at index 3. Returns the statement, or NULL after pushing
 * nil, err, code (3 values). */
static sqlite3_stmt *prepare_bound(lua_State *L, store *s, int fresh) {
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len), *tail = NULL, *bad = NULL;
  sqlite3_stmt *st = NULL;
  int nparams, i;
  s->refused = 0;
  if (fresh) {
    if (prepare_guarded(s, sql, len, 0, &st, &tail) != SQLITE_OK) st = NULL;
  } else {
    st = cached_stmt(s, sql, len, &tail);
  }
  if ((!st && sqlite3_errcode(s->db) == SQLITE_OK) || s->refused) { /* empty sql, or refused by authorize() */
    ga_fail(L, "READONLY", "query() runs one read-only statement");
    return NULL;
  }
  if (!st) {
    fail_db(L, s, "cannot prepare query");
    return NULL;
  }
  if (!only_space(tail) || !sqlite3_stmt_readonly(st)) {
    if (!is_cached(s, st)) sqlite3_finalize(st);
    ga_fail(L, "READONLY", "query() runs one read-only statement");
    return NULL;
  }
  nparams = sqlite3_bind_parameter_count(st);
  for (i = 1; i <= nparams && !bad; i++) {
    const char *pname = sqlite3_bind_parameter_name(st, i);
    if (lua_isnoneornil(L, 3)) {
      bad = "no parameters given";
      break;
    }
    if (pname && pname[0] != '?') ga_rawgetfield(L, 3, pname + 1);
    else lua_rawgeti(L, 3, i);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      bad = pname ? lua_pushfstring(L, "parameter %s has no value", pname)
                  : lua_pushfstring(L, "parameter #%d has no value", i);
      break;
    }
    bad = bind_value(L, st, i, lua_gettop(L));
    if (bad) bad = lua_pushfstring(L, "parameter %d: cannot bind a %s", i, bad);
    else lua_pop(L, 1);
  }
  if (bad) {
    release(s, st);
    ga_fail(L, "BIND", "%s", bad);
    return NULL;
  }
  return st;
}

/* Pushes the current row of st as a table keyed by column name. */
static void push_row(lua_State *L, sqlite3_stmt *st, int ncols) {
  int i;
  lua_createtable(L, 0, ncols);
  for (i = 0; i < ncols; i++) {
    switch (sqlite3_column_type(st, i)) {
      case SQLITE_INTEGER: {
        /* a REAL column's integral value can come out of a sorter as an
         * INTEGER (SELECT * ... ORDER BY): keep it a float, as declared */
        const char *decl = sqlite3_column_decltype(st, i);
        if (decl && strcmp(decl, "REAL") == 0) lua_pushnumber(L, (lua_Number)sqlite3_column_double(st, i));
        else ga_pushint64(L, (long long)sqlite3_column_int64(st, i));
        break;
      }
      case SQLITE_FLOAT: lua_pushnumber(L, (lua_Number)sqlite3_column_double(st, i)); break;
      case SQLITE_NULL: continue;
      default: {
        const char *p = (const char *)sqlite3_column_blob(st, i);
        lua_pushlstring(L, p ? p : "", (size_t)sqlite3_column_bytes(st, i));
      }
    }
    lua_setfield(L, -2, sqlite3_column_name(st, i));
  }
}

/* store:query(sql, params) -> { {col=value,...}, ... } | nil, err, code
 * Read-only statements only; params: an array for ?/?N, or a table keyed by
 * name for :name/@name/$name. NULL columns are absent from the row table. */
static int l_store_query(lua_State *L) {
  store *s = check_store(L);
  sqlite3_stmt *st;
  int ncols, rc, nrows = 0;
  luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  st = prepare_bound(L, s, 0);
  if (!st) return 3;
  ncols = sqlite3_column_count(st);
  lua_newtable(L);
  query_deadline_start(s); /* one deadline for all of the call's steps */
  while ((rc = step_guarded(s, st)) == SQLITE_ROW) {
    push_row(L, st, ncols);
    lua_rawseti(L, -2, ++nrows);
  }
  if (rc != SQLITE_DONE) {
    int r = fail_query(L, s);
    release(s, st);
    return r;
  }
  s->query_deadline = 0;
  release(s, st);
  return 1;
}

/* store:each(sql, params, fn) -> rows_seen | nil, err, code
 * Streams the rows of one read-only statement to fn(row) without building a
 * result table (constant memory, for exports); fn returning false stops.
 * An error raised by fn is re-raised after the statement is released. */
static int l_store_each(lua_State *L) {
  store *s = check_store(L);
  sqlite3_stmt *st;
  int ncols, rc;
  long long n = 0;
  luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  st = prepare_bound(L, s, 1); /* its own statement: fn may query the same store */
  if (!st) return 3;
  ncols = sqlite3_column_count(st);
  /* each step has its own deadline (fn's time between steps is not counted) */
  while ((query_deadline_start(s), rc = step_guarded(s, st)) == SQLITE_ROW) {
    int stop;
    s->query_deadline = 0; /* fn may query() the store: that call sets its own */
    lua_pushvalue(L, 4);
    push_row(L, st, ncols);
    if (lua_pcall(L, 1, 1, 0) != 0) {
      sqlite3_finalize(st);
      return lua_error(L);
    }
    n++;
    stop = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!s->db) { /* fn closed the store: the statement kept it as a zombie */
      sqlite3_finalize(st);
      return luaL_error(L, "store closed during each()");
    }
    if (stop) {
      rc = SQLITE_DONE;
      break;
    }
  }
  if (rc != SQLITE_DONE) {
    int r = fail_query(L, s);
    sqlite3_finalize(st);
    return r;
  }
  s->query_deadline = 0;
  sqlite3_finalize(st);
  ga_pushint64(L, n);
  return 1;
}

/* store:filename() -> path of the main database ("" for :memory:) */
static int l_store_filename(lua_State *L) {
  store *s = check_store(L);
  const char *f = sqlite3_db_filename(s->db, "main");
  lua_pushstring(L, f ? f : "");
  return 1;
}

void ga_open_store(lua_State *L) {
  static const luaL_Reg methods[] = {{"migrate", l_store_migrate},
                                     {"schema_version", l_store_schema_version},
                                     {"persist", l_store_persist},
                                     {"query", l_store_query},
                                     {"each", l_store_each},
                                     {"start_async", l_store_start_async},
                                     {"flush", l_store_flush},
                                     {"stats", l_store_stats},
                                     {"filename", l_store_filename},
                                     {"close", l_store_close},
                                     {NULL, NULL}};
  ga_newclass(L, STORE_MT, methods, l_store_close, l_store_tostring);
  lua_pushcfunction(L, l_sqlite_open);
  lua_setfield(L, -2, "sqlite_open");
  lua_pushstring(L, sqlite3_libversion());
  lua_setfield(L, -2, "sqlite_version");
}
