/* ga_store.c — the SQLite snapshot store: one connection per store object,
 * migrations tracked in schema_migrations, persist of one snapshot through a
 * cached persistent statement, and its half of the store driver contract
 * (ga_store.h): open, migrate, the row size check, sync insert, start of the
 * async writer, close. query()/each() and their authorizer: ga_store_query.c.
 * All SQL this file prepares sits in the block below; the schema itself
 * lives in migrations/sqlite/. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include "ga_sqlite.h"

/* ---- the statements this file prepares ---- */
static const char ga_sql_insert[] =
    "INSERT INTO generation_snapshots (id, created_at, org_id, user_id, platform, template_id,"
    " template_version, status, content, error, final_system_prompt, final_user_prompt,"
    " token_metrics, performance_metrics, repair_metrics, request_params, replay_of, drafts,"
    " final_system_prompt_sha256, final_user_prompt_sha256, content_sha256, drafts_sha256,"
    " chain_id, chain_seq, prev_hash, record_hash)"
    " VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,"
    "?19,?20,?21,?22,?23,?24,?25,?26)";
static const char SQL_MIGRATIONS_TABLE[] =
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')))";
static const char SQL_MIGRATION_APPLIED[] = "SELECT 1 FROM schema_migrations WHERE version = ?1";
static const char SQL_MIGRATION_RECORD[] = "INSERT INTO schema_migrations (version, name) VALUES (?1, ?2)";
static const char SQL_ID_STORED[] = "SELECT 1 FROM generation_snapshots WHERE id = ?1";
static const char SQL_PUT_SCRIPT[] =
    "INSERT INTO scripts (digest, path, encoding, source) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (digest) DO NOTHING";
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

/* The busy handler of a store's own connection: polls the lock every
 * 0.5-1.5 ms until busy_timeout has passed since the first BUSY of this
 * wait. SQLite's stock handler sleeps up to 100 ms between tries, so a sync
 * persist() lost the lock to other processes' writers that take it back to
 * back (spec/concurrency_spec.lua); frequent, jittered polling finds the gaps
 * they leave. Returns 0 to give up (the caller gets BUSY). */
/* SQL genaudit_sha256(x): the SHA-256 of x's bytes (text as stored, UTF-8;
 * a blob's bytes), 64 lower-case hex digits; NULL for NULL. verify() asks for
 * a payload's digest instead of the payload itself (csrc/ga_chain.c's
 * hasher of this connection's thread), so its bytes never become a Lua
 * string. Not usable from triggers or views (SQLITE_DIRECTONLY). */
static void sql_sha256(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  ga_hasher *h = (ga_hasher *)sqlite3_user_data(ctx);
  const void *p;
  int n;
  char hex[65];
  (void)argc;
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL) return; /* NULL */
  if (sqlite3_value_type(argv[0]) == SQLITE_BLOB) p = sqlite3_value_blob(argv[0]);
  else p = sqlite3_value_text(argv[0]);
  n = sqlite3_value_bytes(argv[0]);
  if (!p && n > 0) {
    sqlite3_result_error_nomem(ctx);
    return;
  }
  if (ga_hasher_sha256(h, p ? p : "", (size_t)n, hex) != 0) {
    sqlite3_result_error(ctx, "genaudit_sha256: libcrypto could not compute a SHA-256", -1);
    return;
  }
  sqlite3_result_text(ctx, hex, 64, SQLITE_TRANSIENT);
}

/* SQL genaudit_record_hash(f1, ..., f21): the record hash of a row whose
 * fields come in ga_record_fields order (csrc/ga_chain.c), each payload as
 * its stored digest column; NULL is an unset field, an integer (chain_seq)
 * enters as its decimal digits, text and blobs as their bytes. NULL when a
 * payload digest is not 64 characters long or an integer stands outside
 * chain_seq (the row cannot be hashed as written).
 * verify() compares it with the row's record_hash on SQLite, so a row's
 * twenty fields never become Lua strings. SQLITE_DIRECTONLY as above. */
static void sql_record_hash(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  ga_hasher *h = (ga_hasher *)sqlite3_user_data(ctx);
  ga_text f[GA_REC_NFIELDS];
  char seq[32], out[65];
  int i;
  if (argc != GA_REC_NFIELDS) {
    sqlite3_result_error(ctx, "genaudit_record_hash: wrong number of fields", -1);
    return;
  }
  memset(f, 0, sizeof f);
  for (i = 0; i < argc; i++) {
    int t = sqlite3_value_type(argv[i]);
    if (t == SQLITE_NULL) continue;
    if (t == SQLITE_INTEGER) {
      snprintf(seq, sizeof seq, "%lld", (long long)sqlite3_value_int64(argv[i]));
      if (i != 2) return; /* NULL: only chain_seq is an integer (verify names a changed type) */
      f[i].p = seq;
    } else if (t == SQLITE_BLOB) {
      f[i].p = (const char *)sqlite3_value_blob(argv[i]);
    } else {
      f[i].p = (const char *)sqlite3_value_text(argv[i]);
    }
    f[i].n = t == SQLITE_INTEGER ? strlen(seq) : (size_t)sqlite3_value_bytes(argv[i]);
    if (!f[i].p && f[i].n > 0) {
      sqlite3_result_error_nomem(ctx);
      return;
    }
    if (!f[i].p) f[i].p = "";
    f[i].set = 1;
    if (ga_record_fields[i].payload && f[i].n != 64) return; /* NULL: not a digest */
  }
  if (ga_hasher_record_hash(h, f, out) != 0) {
    sqlite3_result_error_nomem(ctx);
    return;
  }
  sqlite3_result_text(ctx, out, 64, SQLITE_TRANSIENT);
}

int ga_sqlite_register_hashes(sqlite3 *db, ga_hasher *h) {
  int rc = sqlite3_create_function_v2(db, "genaudit_sha256", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_DIRECTONLY,
                                      h, sql_sha256, NULL, NULL, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_create_function_v2(db, "genaudit_record_hash", GA_REC_NFIELDS,
                                    SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_DIRECTONLY, h, sql_record_hash, NULL,
                                    NULL, NULL);
  return rc;
}

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

store *ga_sqlite_check(lua_State *L) {
  store *s = (store *)luaL_checkudata(L, 1, STORE_MT);
  if (!s->db) luaL_error(L, "attempt to use a closed store");
  return s;
}

static int exec(store *s, const char *sql);

static int store_close_impl(store *s) {
  int i;
  if (!s->db) return 0;
  ga_writer_stop(s->base.writer); /* drains the queue: nothing acknowledged is dropped */
  s->base.writer = NULL;
  if (!s->base.readonly) {
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
  ga_chain_free(&s->chain);
  return 0;
}

static void close_base(ga_store_base *b) { store_close_impl((store *)b); }

static void describe(lua_State *L, ga_store_base *b) {
  store *s = (store *)b;
  if (!s->db) lua_pushliteral(L, "genaudit.sqlite_store (closed)");
  else lua_pushfstring(L, "genaudit.sqlite_store (%s)", sqlite3_db_filename(s->db, "main"));
}

static ga_store_base *check_base(lua_State *L) { return &ga_sqlite_check(L)->base; }

int ga_sqlite_fail(lua_State *L, store *s, const char *what) {
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
  s->base.readonly = readonly;
  s->sync_level = sync;
  s->journal = journal;
  s->busy_ms = (long)busy;
  s->length_limit = length_limit;
  s->query_ms = (long)query_ms;

  if (!readonly && strcmp(path, ":memory:") != 0 && path[0] != '\0' && strncmp(path, "file:", 5) != 0) {
    /* create the file ourselves so it is private (0600) from the start.
     * O_EXCL: an existing file is never opened here, because close() on any
     * descriptor of a file drops every POSIX lock this process holds on it —
     * another store of this process would lose its locks, and a connection
     * of another process could then delete the WAL under it. */
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    struct stat st;
    if (fd < 0 && errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) errno = EISDIR;
    if (fd < 0 && errno != EEXIST)
      return ga_fail(L, "OPEN", "cannot open database '%s': %s", path, strerror(errno));
    if (fd >= 0) close(fd);
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
  ga_chain_init(&s->chain);
  sqlite3_busy_handler(s->db, busy_wait, s);
  sqlite3_set_authorizer(s->db, ga_sqlite_authorize, s);
  rc = ga_sqlite_register_hashes(s->db, &s->chain.h);
  if (rc == SQLITE_OK) rc = ga_sqlite_register_aggregates(s->db);
  if (rc != SQLITE_OK) {
    lua_pushfstring(L, "cannot open database '%s': %s", path, sqlite3_errmsg(s->db));
    sqlite3_close_v2(s->db);
    s->db = NULL;
    return ga_fail(L, "OPEN", "%s", lua_tostring(L, -1));
  }
  if (s->query_ms > 0) sqlite3_progress_handler(s->db, 1000, ga_sqlite_query_progress, s);
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
      int r = ga_sqlite_fail(L, s, "cannot set journal mode");
      store_close_impl(s);
      return r;
    }
  }
  snprintf(sql, sizeof sql, "PRAGMA synchronous=%s", syncs[sync]);
  if (exec(s, sql) != SQLITE_OK || exec(s, "PRAGMA foreign_keys=ON") != SQLITE_OK) {
    int r = ga_sqlite_fail(L, s, "cannot configure database");
    store_close_impl(s);
    return r;
  }
  /* a database that is not SQLite fails here rather than at first use */
  if (exec(s, "SELECT count(*) FROM sqlite_master") != SQLITE_OK) {
    int r = ga_sqlite_fail(L, s, "cannot read database");
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
  store *s = ga_sqlite_check(L);
  size_t i, n;
  int applied = 0, rc;
  sqlite3_stmt *q = NULL, *rec = NULL;
  luaL_checktype(L, 2, LUA_TTABLE);
  ga_check_migrations(L, 2); /* everything, before touching the database */
  n = ga_rawlen(L, 2);
  if (exec(s, SQL_MIGRATIONS_TABLE) != SQLITE_OK) return ga_sqlite_fail(L, s, "cannot create schema_migrations");
  if (sqlite3_prepare_v2(s->db, SQL_MIGRATION_APPLIED, -1, &q, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(s->db, SQL_MIGRATION_RECORD, -1, &rec, NULL) != SQLITE_OK) {
    rc = ga_sqlite_fail(L, s, "cannot prepare migration statements");
    goto cleanup;
  }
  for (i = 1; i <= n; i++) {
    long long v;
    const char *name, *sql;
    size_t namelen;
    int done;
    char *errmsg = NULL;
    ga_migration_get(L, 2, i, &v, &name, &namelen, &sql);
    sqlite3_bind_int64(q, 1, v);
    done = sqlite3_step(q) == SQLITE_ROW;
    sqlite3_reset(q);
    if (!done) {
      if (exec(s, "BEGIN IMMEDIATE") != SQLITE_OK) {
        rc = ga_sqlite_fail(L, s, "cannot begin migration");
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
  store *s = ga_sqlite_check(L);
  sqlite3_stmt *st = NULL;
  int exists;
  sqlite3_prepare_v2(s->db, "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migrations'", -1, &st,
                     NULL);
  exists = st && sqlite3_step(st) == SQLITE_ROW;
  sqlite3_finalize(st);
  ga_pushint64(L, exists ? schema_version(s) : 0);
  return 1;
}

/* Binds the row's columns and its seal's; SQLITE_OK or the first bind's error code. */
static int bind_row(sqlite3_stmt *st, const ga_row *row, const ga_seal *seal) {
  int rc = ga_sqlite_bind_cols(st, 1, row->col, GA_NCOLS);
  if (rc == SQLITE_OK) rc = ga_sqlite_bind_cols(st, GA_NCOLS + 1, seal->col, GA_SEAL_NCOLS);
  return rc;
}

/* Bytes a row's record may need beyond its columns' own (header, varints). */
#define ROW_OVERHEAD 1024

/* Refuses a row SQLite would refuse for its size (SQLITE_LIMIT_LENGTH of
 * this connection: per value, and per row record), before anything is
 * bound or queued: the async writer would otherwise acknowledge it and fail
 * later. 0, or -1 with err. */
static int check_row_size(ga_store_base *b, const ga_row *row, char *err, size_t errlen) {
  store *s = (store *)b;
  long long limit = sqlite3_limit(s->db, SQLITE_LIMIT_LENGTH, -1), total = 0;
  int i;
  for (i = 0; i < GA_NCOLS; i++) {
    size_t n = ga_row_len(row, i); /* a deferred document's bound: persist() rechecks its JSON */
    if (!row->col[i].set) continue;
    if ((long long)n > limit) {
      snprintf(err, errlen, "%s: %zu bytes exceed the database's limit of %lld bytes per value", ga_col_names[i], n,
               limit);
      return -1;
    }
    total += (long long)n;
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
static int id_stored(lua_State *L, ga_store_base *b, const char *id) {
  store *s = (store *)b;
  sqlite3_stmt *st = NULL;
  int r = -1, rc;
  (void)L;
  if (sqlite3_prepare_v2(s->db, SQL_ID_STORED, -1, &st, NULL) == SQLITE_OK &&
      sqlite3_bind_text(st, 1, id, 26, SQLITE_STATIC) == SQLITE_OK) {
    rc = sqlite3_step(st);
    r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
  }
  sqlite3_finalize(st);
  return r;
}

/* persist() in sync mode (the preamble is ga_store_common.c's): one INSERT,
 * one transaction (with the chain's own row, for its first snapshot), the
 * row sealed at the next position of this store's chain. 0, or the error
 * triple pushed and 3. */
static int insert_row(lua_State *L, ga_store_base *b, const ga_row *row) {
  store *s = (store *)b;
  ga_seal seal;
  int rc, reg;
  if (!s->insert &&
      sqlite3_prepare_v3(s->db, ga_sql_insert, -1, SQLITE_PREPARE_PERSISTENT, &s->insert, NULL) != SQLITE_OK)
    return ga_sqlite_fail(L, s, "cannot prepare insert (is the store migrated?)");
  ga_chain_begin(&s->chain);
  if (ga_chain_seal(&s->chain, row->col, NULL, &seal) != 0) return ga_fail(L, "NOMEM", "cannot seal the row");
  rc = bind_row(s->insert, row, &seal);
  if (rc != SQLITE_OK) { /* a value SQLite refuses: never stored as NULL */
    sqlite3_clear_bindings(s->insert);
    return ga_fail(L, "INVALID", "cannot bind the row: %s", sqlite3_errstr(rc));
  }
  reg = ga_chain_needs_register(&s->chain);
  if (reg) {
    if (exec(s, "BEGIN IMMEDIATE") != SQLITE_OK) {
      sqlite3_clear_bindings(s->insert);
      return ga_sqlite_fail(L, s, "cannot persist snapshot");
    }
    rc = ga_sqlite_register_chain(s->db, &s->chain);
    if (rc != SQLITE_OK) {
      rc = ga_sqlite_fail(L, s, "cannot start the store's chain");
      exec(s, "ROLLBACK");
      sqlite3_clear_bindings(s->insert);
      return rc;
    }
  }
  rc = step_done(s->insert);
  sqlite3_clear_bindings(s->insert);
  if (rc == SQLITE_OK && reg && exec(s, "COMMIT") != SQLITE_OK) rc = SQLITE_ERROR;
  if (rc != SQLITE_OK) {
    rc = ga_sqlite_fail(L, s, "cannot persist snapshot");
    if (reg && !sqlite3_get_autocommit(s->db)) exec(s, "ROLLBACK");
    return rc;
  }
  ga_chain_taken(&s->chain, &seal);
  ga_chain_commit(&s->chain);
  return 0;
}

/* store:put_script() for SQLite (the digest and encoding are
 * ga_store_common.c's): one INSERT ... ON CONFLICT DO NOTHING on the store's
 * own connection, committed before it returns 0 (in async mode as well: the
 * script is durable before the row naming it is queued). Called once per new
 * digest, so the statement is not cached. 0, or the error triple and 3. */
static int put_script(lua_State *L, ga_store_base *b, const ga_script *sc) {
  store *s = (store *)b;
  sqlite3_stmt *st = NULL;
  int rc, r = 0;
  if (sqlite3_prepare_v2(s->db, SQL_PUT_SCRIPT, -1, &st, NULL) != SQLITE_OK)
    return ga_sqlite_fail(L, s, "cannot prepare the scripts insert (is the store migrated?)");
  rc = sqlite3_bind_text(st, 1, sc->digest, 64, SQLITE_STATIC);
  if (rc == SQLITE_OK) rc = sqlite3_bind_text64(st, 2, sc->path, sc->pathlen, SQLITE_STATIC, SQLITE_UTF8);
  if (rc == SQLITE_OK) rc = sqlite3_bind_text(st, 3, sc->encoding, -1, SQLITE_STATIC);
  if (rc == SQLITE_OK) rc = sqlite3_bind_text64(st, 4, sc->source, sc->sourcelen, SQLITE_STATIC, SQLITE_UTF8);
  if (rc != SQLITE_OK) { /* a value over the length limit: never stored as NULL */
    sqlite3_finalize(st);
    return ga_fail(L, "INVALID", "cannot bind the script: %s", sqlite3_errstr(rc));
  }
  if (sqlite3_step(st) != SQLITE_DONE) r = ga_sqlite_fail(L, s, "cannot store script");
  sqlite3_finalize(st);
  return r;
}

/* start_async() for SQLite: the writer's own connection to the file, in the
 * store's journal mode (a "delete" store is not switched to WAL). File
 * stores only. */
static ga_writer *start_writer(ga_store_base *b, ga_writer_opts *o, const char **code, char *err, size_t errlen) {
  store *s = (store *)b;
  const char *path = sqlite3_db_filename(s->db, "main");
  ga_sqlite_writer_conf conf;
  if (!path || !*path) {
    snprintf(err, errlen, "async mode needs a database file (not :memory:)");
    return NULL;
  }
  conf.path = path;
  conf.insert_sql = ga_sql_insert;
  conf.journal_mode = JOURNALS[s->journal];
  conf.busy_timeout_ms = s->busy_ms;
  conf.synchronous = s->sync_level;
  conf.length_limit = s->length_limit;
  return ga_sqlite_writer_start(&conf, o, err, errlen);
}

/* store:purge(older_than, what) -> rows purged | nil, err, code. The one
 * change migration 0008's trigger allows: the payloads (prompts, content,
 * drafts) of sealed rows created before older_than ('YYYY-MM-DD HH:MM:SS',
 * UTC) set to NULL, purged_at set and purged_by naming the purge, recorded
 * first in purges (with the count of rows it covers); their digests and
 * everything else kept; one transaction. */
static int l_store_purge(lua_State *L) {
  static const char cond[] = " WHERE created_at < ?1 AND purged_at IS NULL AND record_hash IS NOT NULL";
  static const char cnt[] = "SELECT count(*) FROM generation_snapshots";
  static const char rec[] = "INSERT INTO purges (older_than, what, rows) VALUES (?1, ?2, ?3)";
  static const char upd[] =
      "UPDATE generation_snapshots SET final_system_prompt = NULL, final_user_prompt = NULL, content = NULL,"
      " drafts = NULL, purged_at = strftime('%Y-%m-%d %H:%M:%f', 'now'), purged_by = ?2";
  store *s = ga_sqlite_check(L);
  size_t n, wn;
  const char *cutoff = luaL_checklstring(L, 2, &n);
  const char *what = luaL_checklstring(L, 3, &wn);
  sqlite3_stmt *c = NULL, *r = NULL, *u = NULL;
  sqlite3_int64 rows = 0, id = 0;
  char sql[256];
  int rc;
  if (!ga_utc_seconds_valid(cutoff, n)) return ga_fail(L, "INVALID", "purge: older_than must be 'YYYY-MM-DD HH:MM:SS' (UTC), not in the future");
  if (wn != 8 || memcmp(what, "payloads", 8) != 0) return ga_fail(L, "INVALID", "purge: what must be 'payloads'");
  if (s->base.readonly) return ga_fail(L, "READONLY", "cannot purge a read-only store");
  if (exec(s, "BEGIN IMMEDIATE") != SQLITE_OK) return ga_sqlite_fail(L, s, "cannot begin purge");
  snprintf(sql, sizeof sql, "%s%s", cnt, cond);
  rc = sqlite3_prepare_v2(s->db, sql, -1, &c, NULL);
  if (rc == SQLITE_OK) rc = sqlite3_bind_text(c, 1, cutoff, (int)n, SQLITE_STATIC);
  if (rc == SQLITE_OK) rc = sqlite3_step(c) == SQLITE_ROW ? SQLITE_OK : sqlite3_errcode(s->db);
  if (rc == SQLITE_OK) rows = sqlite3_column_int64(c, 0);
  if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(s->db, rec, -1, &r, NULL);
  if (rc == SQLITE_OK) rc = sqlite3_bind_text(r, 1, cutoff, (int)n, SQLITE_STATIC);
  if (rc == SQLITE_OK) rc = sqlite3_bind_text(r, 2, what, (int)wn, SQLITE_STATIC);
  if (rc == SQLITE_OK) rc = sqlite3_bind_int64(r, 3, rows);
  if (rc == SQLITE_OK) rc = sqlite3_step(r) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(s->db);
  if (rc == SQLITE_OK) id = sqlite3_last_insert_rowid(s->db);
  snprintf(sql, sizeof sql, "%s%s", upd, cond);
  if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(s->db, sql, -1, &u, NULL);
  if (rc == SQLITE_OK) rc = sqlite3_bind_text(u, 1, cutoff, (int)n, SQLITE_STATIC);
  if (rc == SQLITE_OK) rc = sqlite3_bind_int64(u, 2, id);
  if (rc == SQLITE_OK) rc = sqlite3_step(u) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(s->db);
  if (rc == SQLITE_OK && sqlite3_changes64(s->db) != rows) rc = SQLITE_ERROR; /* not in one transaction? */
  if (rc == SQLITE_OK) rc = exec(s, "COMMIT");
  if (rc != SQLITE_OK) {
    rc = ga_sqlite_fail(L, s, "cannot purge");
    exec(s, "ROLLBACK");
  } else {
    ga_pushint64(L, rows);
    rc = 1;
  }
  sqlite3_finalize(c);
  sqlite3_finalize(r);
  sqlite3_finalize(u);
  return rc;
}

/* store:filename() -> path of the main database ("" for :memory:) */
static int l_store_filename(lua_State *L) {
  store *s = ga_sqlite_check(L);
  const char *f = sqlite3_db_filename(s->db, "main");
  lua_pushstring(L, f ? f : "");
  return 1;
}

void ga_open_store(lua_State *L) {
  static const luaL_Reg methods[] = {{"migrate", l_store_migrate},
                                     {"schema_version", l_store_schema_version},
                                     {"query", ga_sqlite_query},
                                     {"each", ga_sqlite_each},
                                     {"filename", l_store_filename},
                                     {"purge", l_store_purge},
                                     {"snapshot_reader", ga_sqlite_snapshot_reader},
                                     {NULL, NULL}};
  static const ga_store_driver driver = {STORE_MT,     methods,   check_base, close_base,    describe,
                                         check_row_size, id_stored, insert_row, start_writer, NULL,
                                         put_script};
  ga_store_newclass(L, &driver);
  ga_sqlite_open_reader(L);
  lua_pushcfunction(L, l_sqlite_open);
  lua_setfield(L, -2, "sqlite_open");
  lua_pushstring(L, sqlite3_libversion());
  lua_setfield(L, -2, "sqlite_version");
}
