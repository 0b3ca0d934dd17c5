/* ga_pg_migrate.c — store:migrate() and store:schema_version() for
 * PostgreSQL: each pending migration in one transaction with its
 * schema_migrations row, under an advisory lock so a fleet can open at
 * once; opts.schema created first. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ga_pg.h"

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
  if (pg_exec_ok(s->conn, &s->cfg, "BEGIN", err, errlen) != 0) return -1;
  snprintf(sql, sizeof sql, "SET LOCAL lock_timeout = %ld", s->cfg.lock_ms);
  if (pg_exec_ok(s->conn, &s->cfg, sql, err, errlen) != 0) goto fail;
  r = PQexec(s->conn, SQL_MIGRATION_LOCK);
  if (!r || PQresultStatus(r) != PGRES_TUPLES_OK) {
    int timed_out = pg_state_is(r, "55P03");
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
      pg_clean_message(&s->cfg, PQerrorMessage(s->conn), err, errlen);
      goto fail;
    }
    snprintf(sql, sizeof sql, "CREATE SCHEMA IF NOT EXISTS %s", id);
    PQfreemem(id);
    rc = pg_exec_ok(s->conn, &s->cfg, sql, err, errlen);
    if (rc != 0) goto fail;
  }
  if (pg_exec_ok(s->conn, &s->cfg, SQL_MIGRATIONS_TABLE, err, errlen) != 0) goto fail;
  return 0;
fail:
  PQclear(PQexec(s->conn, "ROLLBACK"));
  return -1;
}

/* store:migrate({ {version=, name=, sql=}, ... }) -> applied, version | nil, err, code
 * Each pending migration runs in its own transaction together with its
 * schema_migrations row, under an advisory lock (several hosts may open the
 * store at once); a failure rolls that migration back and stops. */
int pg_migrate(lua_State *L) {
  pgstore *s = pg_check_store(L);
  size_t i, n;
  int applied = 0, r;
  char err[512];
  PGresult *res;
  luaL_checktype(L, 2, LUA_TTABLE);
  ga_check_migrations(L, 2); /* everything, before touching the database */
  n = ga_rawlen(L, 2);
  if ((r = pg_ensure(L, s)) != 0) return r;
  if (s->each_depth > 0) return ga_fail(L, "BUSY", "cannot migrate while each() reads from this store");
  if ((r = begin_migration(s, err, sizeof err)) != 0 || pg_exec_ok(s->conn, &s->cfg, "COMMIT", err, sizeof err) != 0)
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
    size_t namelen;
    char vtext[24];
    const char *vals[2];
    int done;
    ga_migration_get(L, 2, i, &v, &name, &namelen, &sql);
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
      if (pg_exec_ok(s->conn, &s->cfg, "COMMIT", err, sizeof err) != 0) goto rollback;
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
int pg_schema_version(lua_State *L) {
  pgstore *s = pg_check_store(L);
  long long v;
  int r;
  if ((r = pg_ensure(L, s)) != 0) return r;
  v = schema_version_of(s);
  if (v < 0) return pg_fail_result(L, s, NULL, "cannot read schema_migrations");
  ga_pushint64(L, v);
  return 1;
}
