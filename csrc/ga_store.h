/* ga_store.h — the store driver contract: what a snapshot store backend
 * (SQLite: ga_store.c + ga_store_query.c; PostgreSQL: ga_pg*.c) implements,
 * and what every backend shares (ga_store_common.c), in the spirit of
 * LuaSQL's ls_<driver>.c over its luasql.c.
 *
 * A store is a full userdata whose struct starts with a ga_store_base (so
 * a pointer to the store is a pointer to its base) and whose metatable is
 * made by ga_store_newclass from a static ga_store_driver.
 *
 * Every backend implements, with the same meaning and the same error triples
 * (nil, "CODE: message", "CODE"):
 *   core.<x>_open(target, opts) -> store   open; the userdata exists (closed)
 *                                          before any resource is taken
 *   store:migrate(list) -> applied, version  each pending migration in its own
 *                                          transaction with its
 *                                          schema_migrations row; the list is
 *                                          checked first (ga_check_migrations)
 *   store:schema_version() -> integer
 *   store:query(sql, params) -> rows       one read-only statement, bound
 *                                          parameters (?, ?N, :name, @name,
 *                                          $name), NULL columns absent
 *   store:each(sql, params, fn) -> seen    the same, streamed; fn -> false stops
 *   store:filename() (SQLite) / store:url() (PostgreSQL, no password)
 * and, through the driver table, the backend half of the shared methods:
 *   close        drains and stops the writer (nothing acknowledged is
 *                dropped), releases everything; safe to call twice
 *   describe     pushes the __tostring text ("genaudit.<x>_store (where)",
 *                or "(closed)")
 *   check        the open store at index 1 (raises on a closed one)
 *   check_row    what this database would refuse of a stamped row (its size
 *                limits, text it cannot hold): refused before anything is
 *                written or queued, so async mode never acknowledges such a row
 *   id_stored    whether a row with this id is stored already (1, 0, -1
 *                unknown); asked in async mode before queueing a row that
 *                brings its own id
 *   insert       sync mode: writes one row, committed before it returns 0;
 *                or pushes the error triple and returns 3
 *   start_writer async mode: the writer thread (ga_writer.c) over the
 *                backend's own connection, or NULL with the whole message
 *                (and its code, ASYNC unless set)
 *   stats        NULL, or adds the backend's own fields to the stats table
 *   put_script   inserts one scripts row (ga_script: digest, path, encoding,
 *                source as stored) unless its digest is there already (ON
 *                CONFLICT DO NOTHING), committed on the store's own
 *                connection before it returns 0 (async mode too: a script
 *                is durable before any row naming it is queued); or pushes
 *                the error triple and returns 3
 *
 * Shared, written once in ga_store_common.c:
 *   store:persist(row) -> id   the preamble — readonly check, ga_row_build,
 *                              ga_row_stamp, the driver's check_row — then the
 *                              sync-vs-async branch: ga_writer_push (after
 *                              id_stored for a row with its own id), or insert
 *   store:start_async(opts)    ga_check_async_opts, READONLY / already ASYNC,
 *                              then start_writer
 *   store:flush([timeout_ms]), store:stats()   over the optional writer
 *   store:close(), __gc, __close, __tostring   over close and describe
 *   store:put_script(path, source) -> digest   the SHA-256 of source's bytes,
 *                              the encoding ('text' for UTF-8 without NUL,
 *                              else 'base64'), then the driver's put_script
 *   the method table: the backend's methods plus the ones above;
 *   ga_store_param: what a query parameter binds as (each backend binds it). */
#ifndef GA_STORE_H
#define GA_STORE_H

#include "ga_private.h"

/* The fields every store starts with. */
typedef struct {
  ga_writer *writer;  /* non-NULL in async mode */
  uint64_t persisted; /* sync mode: rows committed by persist() */
  ga_ulid_state ulid; /* ids of the rows this store stamps */
  int readonly;       /* opened read-only: persist/start_async refuse */
} ga_store_base;

/* One row of the scripts table (migrations/<dialect>/0007), as stored. */
typedef struct {
  char digest[65];      /* SHA-256 of the raw source bytes, lower-case hex */
  const char *path;     /* the path as loaded: UTF-8 without NUL */
  size_t pathlen;
  const char *encoding; /* "text" (source is the bytes) or "base64" */
  const char *source;   /* the bytes, or their base64 */
  size_t sourcelen;
} ga_script;

typedef struct {
  const char *tname;       /* the metatable's name */
  const luaL_Reg *methods; /* the backend's own methods (see above) */
  ga_store_base *(*check)(lua_State *L);
  void (*close)(ga_store_base *b);
  void (*describe)(lua_State *L, ga_store_base *b);
  int (*check_row)(ga_store_base *b, const ga_row *row, char *err, size_t errlen); /* 0, or -1 + err */
  int (*id_stored)(lua_State *L, ga_store_base *b, const char *id26);
  int (*insert)(lua_State *L, ga_store_base *b, const ga_row *row);
  /* *code is "ASYNC" unless the backend says otherwise (NOMEM) */
  ga_writer *(*start_writer)(ga_store_base *b, ga_writer_opts *o, const char **code, char *err, size_t errlen);
  void (*stats)(lua_State *L, ga_store_base *b);
  int (*put_script)(lua_State *L, ga_store_base *b, const ga_script *sc);
} ga_store_driver;

/* Registers the store class of d: ga_newclass with d->methods, plus persist,
 * start_async, flush, stats, close and the metamethods (each holds d as its
 * upvalue). d must be
 * static: the methods keep pointing at it. */
void ga_store_newclass(lua_State *L, const ga_store_driver *d);

/* flush([timeout_ms]) -> true | nil, err, code over a backend's optional
 * writer (NULL: sync mode, always true). */
int ga_store_flush(lua_State *L, ga_writer *w);
/* stats() -> table (on top): mode, queued, written, failed, ... */
int ga_store_stats(lua_State *L, ga_writer *w, uint64_t persisted);
/* The options of start_async{ queue, batch, max_bytes, on_full } at idx into
 * *o (the backend fills the rest); raises on a bad option. */
void ga_check_async_opts(lua_State *L, int idx, ga_writer_opts *o);
/* Checks the migration list { {version=, name=, sql=}, ... } at idx before
 * any of it runs; raises on a malformed entry. */
void ga_check_migrations(lua_State *L, int idx);
/* Entry i (1-based) of a list ga_check_migrations accepted: pushes the entry,
 * its version, name and sql (the caller pops 4) and returns them. */
void ga_migration_get(lua_State *L, int idx, size_t i, long long *version, const char **name, size_t *namelen,
                      const char **sql);

/* What the query()/each() parameter at idx binds as: GA_PARAM_INT (*iv set:
 * a Lua 5.4 integer; on LuaJIT a number with an integral value inside
 * +-2^53), _FLOAT (any other number), _TEXT, _BOOL, _NULL (core.null), or
 * _BAD (a type no backend binds). */
enum { GA_PARAM_BAD, GA_PARAM_INT, GA_PARAM_FLOAT, GA_PARAM_TEXT, GA_PARAM_BOOL, GA_PARAM_NULL };
int ga_store_param(lua_State *L, int idx, long long *iv);

#endif
