/* ga_private.h — declarations shared by the C files of genaudit.core.
 * Plain-C cores (no lua_State) are declared next to their Lua openers.
 *
 * Layers (each uses only the ones above it; no cycle):
 *
 *   ga_compat.h   Lua 5.4 vs LuaJIT: the only Lua version tests
 *       ^
 *   ga_aux.h/.c   generic helpers (lauxlib's role): ga_fail, ga_newclass,
 *       ^         integers (ga_tointeger, ga_exactint, ga_pushint64), null,
 *       |         ga_buf, ga_sleep_ns; calls no other csrc/ file
 *   ga_private.h  the concerns' declarations (this file), includes ga_aux.h
 *       ^
 *   concerns      ga_clock, ga_ulid, ga_fs, ga_copy, ga_json, ga_jsondec, ga_tape, ga_row,
 *       ^         ga_price, ga_meter, ga_retry, ga_http, ga_http_parse,
 *       |         ga_otlp (span export thread), ga_writer (thread + queue,
 *       |         no SQL), ga_store_common (the store driver contract,
 *       |         ga_store.h), ga_store +
 *       |         ga_store_query + ga_store_writer + ga_verify (SQLite, ga_sqlite.h),
 *       |         ga_pg_* (PostgreSQL, ga_pg.h)
 *   ga_init.c     luaopen_genaudit_core: calls every ga_open_*; nothing
 *                 calls into it (linit's role)
 *
 * Calls between files (from the objects' symbols; most also call ga_aux):
 *   ga_clock, ga_fs, ga_copy, ga_price, ga_jsondec, ga_pg_sql, ga_digest, ga_sse, ga_bpe_scan -> (ga_aux only)
 *   ga_bpe -> ga_bpe_scan (the hand-written pre-tokeniser)
 *   ga_meter -> ga_price
 *   ga_ulid, ga_retry -> ga_clock; ga_writer -> ga_clock, ga_tape, ga_row (ga_row_len)
 *   ga_http -> ga_http_parse, ga_clock, ga_retry
 *   ga_otlp -> ga_http (curl init, host:port), ga_http_parse, ga_retry, ga_clock
 *   ga_http_parse -> ga_retry
 *   ga_json -> ga_jsondec (raw JSON kept as text)
 *   ga_tape -> ga_json
 *   ga_row -> ga_json, ga_jsondec, ga_tape, ga_ulid, ga_clock
 *   ga_store_common -> ga_row, ga_writer
 *   ga_store_writer -> ga_writer
 *   ga_store <-> ga_store_query, ga_verify (one backend's files); ga_store ->
 *     ga_store_writer, ga_store_common, ga_writer, ga_row, ga_clock; ga_verify -> ga_chain, ga_clock
 *   ga_pg_conn <-> ga_pg_migrate, ga_pg_rows, ga_pg_writer (one backend's
 *     files); ga_pg_* -> ga_pg_sql, ga_store_common, ga_writer, ga_row, ga_json, ga_clock
 *   ga_init -> every ga_open_* (clock, ulid, json, jsondec, digest, store, pg, meter, fs, copy, http, sse, bpe, otlp)
 */
#ifndef GA_PRIVATE_H
#define GA_PRIVATE_H

#include <stddef.h>
#include <stdint.h>
#include "ga_aux.h"

/* ---- clock (ga_clock.c) ---- */
uint64_t ga_monotonic_ns(void);
int64_t ga_realtime_ms(void);
void ga_open_clock(lua_State *L);   /* adds functions to the table on top */

/* ---- ULID (ga_ulid.c) ---- */
typedef struct { int64_t last_ms; uint8_t rnd[10]; } ga_ulid_state;
/* Writes 26 Crockford base32 chars (no NUL) for time `ms`; monotonic within one ms.
 * Returns 0, or -1 when the random source fails or the 80-bit counter overflows. */
int ga_ulid_next(ga_ulid_state *st, int64_t ms, char out[26]);
/* The ms time in the first 10 chars of a ULID (s: n bytes, any content).
 * Returns 0, -1 when n != 26, -2 on a char outside upper-case Crockford. */
int ga_ulid_time(const char *s, size_t n, int64_t *ms);
void ga_open_ulid(lua_State *L);

/* ---- exact JSON (ga_json.c) ---- */
/* Whether s[0..n) is well-formed UTF-8 (no overlong forms, surrogates or
 * code points above U+10FFFF; NUL bytes are fine). */
int ga_utf8_valid(const char *s, size_t n);
/* Standard base64 (RFC 4648, padded) of s[0..n) into out, which holds
 * (n + 2) / 3 * 4 bytes; returns the length written. */
size_t ga_base64_encode(const unsigned char *s, size_t n, char *out);
/* Decodes canonical padded base64 (n a multiple of 4, unused bits zero) into
 * out (n / 4 * 3 bytes); 0 and *outlen, or -1 on anything else. */
int ga_base64_decode(const char *s, size_t n, unsigned char *out, size_t *outlen);
/* s as a JSON string: escapes as JSON needs; every maximal ill-formed UTF-8
 * subpart replaced by U+FFFD, so the output is always valid UTF-8. */
void ga_json_string(ga_buf *b, const char *s, size_t n);
/* Shortest decimal that reads back as the same double (%.15g..%.17g).
 * Returns -1 for NaN/inf, which JSON cannot hold. */
int ga_json_double(ga_buf *b, double d);
void ga_json_int(ga_buf *b, long long v);
/* Encodes the Lua value at idx. Arrays: tables with keys 1..n (an empty table
 * is []). Object keys are sorted. ga_null (lightuserdata NULL) is null.
 * Returns 0, or -1 with a message in err (at most errlen bytes). */
int ga_json_encode(lua_State *L, int idx, ga_buf *b, int depth, char *err, size_t errlen);
/* Writes the string-keyed members of the table at idx, sorted, without braces,
 * leaving out the names in `skip` (NULL-terminated). need_comma: a member was
 * already written. Returns 0 or -1 with err set. */
int ga_json_members(lua_State *L, int idx, ga_buf *b, int depth, const char *const *skip,
                    int need_comma, char *err, size_t errlen);
void ga_open_json(lua_State *L);
void ga_open_jsondec(lua_State *L); /* core.json_decode (ga_jsondec.c) */
/* JSON text kept as it was read (core.json_decode with a raw_depth); the
 * encoder writes it back verbatim. Returns its bytes, or NULL when the value
 * at idx is not one. */
#define GA_RAWJSON_MT "genaudit.rawjson"
const char *ga_rawjson(lua_State *L, int idx, size_t *len);

/* ---- deferred JSON (ga_tape.c) ---- */
/* An upper bound of a tape's JSON's length, known while it is written:
 * bound + the tape's length - hole_bytes. */
typedef struct { size_t bound, hole_bytes; } ga_tape_info;
/* What the JSON of tape[0..n) will hold: GA_TAPE_NUL (a NUL byte or the
 * escape \u0000), GA_TAPE_BADUTF8 (raw JSON that is not UTF-8). */
unsigned ga_tape_flags(const char *tape, size_t n);
#define GA_TAPE_NUL 1u
#define GA_TAPE_BADUTF8 2u
#define GA_TAPE_HOLE '\x01' /* no JSON text holds this byte */
/* Appends the value at idx (as ga_json_encode would encode it, at depth) to
 * the tape b as a hole. 0, or -1 when the value must be encoded directly
 * (ga_json_encode then refuses it, or the tape does not take it). Leaves the
 * stack as it found it. */
int ga_tape_value(lua_State *L, int idx, ga_buf *b, int depth, ga_tape_info *info);
/* A finite double (as ga_json_double writes it) into the tape, as a hole. */
void ga_tape_double(ga_buf *b, double d, ga_tape_info *info);
/* The same for ga_json_members (the string-keyed members of the table at idx,
 * less `skip`, sorted, without braces). */
int ga_tape_members(lua_State *L, int idx, ga_buf *b, int depth, const char *const *skip, int need_comma,
                    ga_tape_info *info);
/* Appends the JSON of tape[0..n) to out: the bytes ga_json_encode /
 * ga_json_members would have written. Pure C, any thread. 0, or -1 (out of
 * memory). */
int ga_tape_json(const char *tape, size_t n, ga_buf *out);
/* True when JSON text holds the escape \u0000 (a backslash not itself escaped). */
int ga_json_has_nul_escape(const char *s, size_t n);

/* ---- one snapshot row (ga_row.c) ---- */
/* A text column: p/n point into Lua strings held by the row table (no copy,
 * NUL bytes kept), or into `own`; set == 0 means SQL NULL. */
typedef struct { const char *p; size_t n; int set; } ga_text;

enum {
  GA_COL_ID, GA_COL_CREATED_AT, GA_COL_ORG_ID, GA_COL_USER_ID, GA_COL_PLATFORM,
  GA_COL_TEMPLATE_ID, GA_COL_TEMPLATE_VERSION, GA_COL_STATUS, GA_COL_CONTENT, GA_COL_ERROR,
  GA_COL_FINAL_SYSTEM_PROMPT, GA_COL_FINAL_USER_PROMPT, GA_COL_TOKEN_METRICS,
  GA_COL_PERFORMANCE_METRICS, GA_COL_REPAIR_METRICS, GA_COL_REQUEST_PARAMS, GA_COL_REPLAY_OF, GA_COL_DRAFTS,
  GA_NCOLS
};

typedef struct {
  ga_text col[GA_NCOLS];
  char id[26];
  char created_at[24];
  char numbuf[3][24]; /* integer ids and versions rendered as text */
  ga_buf json[5];     /* token, performance, repair metrics; request params; drafts */
  /* deferred: json[] hold tapes (ga_tape.c), not JSON yet: the columns
   * point at the tapes, ga_row_len gives their JSON's upper bound, and
   * ga_row_materialize (or the async writer's threads) makes the JSON */
  int deferred;
  ga_tape_info tape[5];
  long long repair_count; /* repair_info.repair_count as written */
} ga_row;

extern const char *const ga_col_names[GA_NCOLS];

/* Validates the persist_generation table at idx and fills `row` (id and
 * created_at, unless the row gives them, are left to ga_row_stamp). Returns
 * 0, or -1 with a message in err.
 * The row's text pointers stay valid while the table at idx is alive. */
int ga_row_build(lua_State *L, int idx, ga_row *row, char *err, size_t errlen);
/* The same, leaving the five JSON documents as tapes (row->deferred) when
 * they all take one (otherwise as ga_row_build: the same row, the same
 * error): what an async persist hands its writer thread. */
int ga_row_build_deferred(lua_State *L, int idx, ga_row *row, ga_buf *scratch, char *err, size_t errlen);
/* scratch: NULL, or 5 buffers the row takes over (a store's, kept from its
 * last row: no allocation per row); ga_row_keep gives them back in place of
 * ga_row_free (buffers grown large are freed). */
void ga_row_keep(ga_row *row, ga_buf *scratch);
/* Column col's length, or for a deferred document an upper bound of its
 * JSON's (checks that pass with it pass with the exact length). */
size_t ga_row_len(const ga_row *row, int col);
/* A deferred document's GA_TAPE_* flags (0 for any other column). */
unsigned ga_row_json_flags(const ga_row *row, int col);
/* Makes a deferred row's documents JSON, in place: 0, or -1 (out of memory). */
int ga_row_materialize(ga_row *row);
/* The ga_row json[] slot of a JSON column, or -1. */
int ga_row_json_slot(int col);
void ga_row_free(ga_row *row);
/* Sets row id (a new ULID, unless the row gave one: copies keep theirs) and
 * created_at ("YYYY-MM-DD HH:MM:SS.mmm", UTC) from one wall-clock reading
 * unless created_at was given. Returns 0 or -1. */
int ga_row_stamp(ga_row *row, ga_ulid_state *ulid);

/* ---- the canonical record encoding and hash (ga_chain.c) ---- */
typedef struct { const char *name; int payload; } ga_record_field;
#define GA_REC_NFIELDS 21
extern const ga_record_field ga_record_fields[GA_REC_NFIELDS];
/* fields in ga_record_fields order (payload fields: their 64-hex digest, or
 * unset); writes the record hash (64 hex + NUL), and E to enc unless NULL. */
int ga_record_hash(const ga_text fields[GA_REC_NFIELDS], char out[65], ga_buf *enc);
void ga_open_chain(lua_State *L);

/* A SHA-256 hasher one thread owns (no lock): SHA-256 fetched once, one
 * digest context reused for every digest, the buffer the canonical encoding
 * E is built in (one digest call per record), and the digests of the last
 * GA_SYS_CACHE system prompts: a template's prompt repeats row after row,
 * several templates' interleave, and a prompt whose bytes equal a cached
 * one's has its digest (compared in full: the cache never guesses). */
#define GA_SYS_CACHE 8
#define GA_SYS_CACHE_MAX (64u * 1024u) /* larger prompts are hashed, not kept */
typedef struct {
  void *md;   /* EVP_MD *: SHA-256, fetched at first use */
  void *ctx;  /* EVP_MD_CTX * */
  ga_buf enc; /* E of the last record hashed */
  struct {
    char *p; /* NULL: slot empty */
    size_t n;
    char digest[65];
  } sys[GA_SYS_CACHE];
  unsigned sys_next; /* the slot the next new prompt takes (round robin) */
} ga_hasher;
/* The four payload digests of a row (GA_SEAL_SYSTEM_SHA.. order), each 64
 * hex digits + NUL where the payload is set. */
typedef char ga_digests[4][65];
void ga_hasher_init(ga_hasher *h);
void ga_hasher_free(ga_hasher *h); /* reusable after ga_hasher_init */
int ga_hasher_record_hash(ga_hasher *h, const ga_text fields[GA_REC_NFIELDS], char out[65]);
/* SHA-256 of p[0..n) as 64 hex digits + NUL: 0, or -1 (libcrypto failed). */
int ga_hasher_sha256(ga_hasher *h, const void *p, size_t n, char out[65]);
/* The digests of the payloads of cols (GA_NCOLS columns, ga_col_names
 * order) that are set, into d: 0 or -1. Any thread may compute them ahead
 * of the row's seal, with its own hasher. */
int ga_hasher_payloads(ga_hasher *h, const ga_text cols[], ga_digests *d);

/* The hash chain one writer (a store's own connection, or its async writer
 * thread) appends to. Positions are assigned as rows are bound inside a
 * transaction (`pend_*`) and become the chain's (`seq`, `head`) only when
 * it commits; after a failure whose outcome is unknown the backend reads the
 * head back from the database (ga_chain_resync) before the next row. */
typedef struct {
  char id[27];            /* a ULID, made at the first row; NUL-terminated */
  long long seq;          /* committed: last position (0: none yet) */
  char head[65];          /* committed: record hash at seq (64 zeros at 0) */
  int registered;         /* committed: the chains row exists */
  long long pend_seq;     /* in the open transaction */
  char pend_head[65];
  int pend_registered;
  int stale;              /* head unknown: resync before the next row */
  ga_hasher h;            /* the writer's own hasher */
} ga_chain;
/* The columns a sealed row adds to its 18: payload digests, chain_id,
 * chain_seq, prev_hash, record_hash (GA_SEAL_NCOLS of them, in that order). */
enum {
  GA_SEAL_SYSTEM_SHA, GA_SEAL_USER_SHA, GA_SEAL_CONTENT_SHA, GA_SEAL_DRAFTS_SHA,
  GA_SEAL_CHAIN_ID, GA_SEAL_CHAIN_SEQ, GA_SEAL_PREV_HASH, GA_SEAL_RECORD_HASH, GA_SEAL_NCOLS
};
extern const char *const ga_seal_col_names[GA_SEAL_NCOLS];
typedef struct {
  char digest[4][65], seq[24], prev[65], hash[65];
  ga_text col[GA_SEAL_NCOLS];
} ga_seal;
void ga_chain_init(ga_chain *ch);
void ga_chain_free(ga_chain *ch); /* frees its hasher; the chain is reusable after init */
int ga_chain_ensure_id(ga_chain *ch); /* makes the chain's ULID on first use: 0, or -1 (no random source) */
/* Starts a transaction's positions from the committed ones. */
void ga_chain_begin(ga_chain *ch);
/* 1 when the next sealed row starts the chain (its chains row is due). */
int ga_chain_needs_register(const ga_chain *ch);
void ga_chain_registered(ga_chain *ch); /* the chains row is in the open transaction */
/* Seals the row (cols: GA_NCOLS columns, ga_col_names order) at the next
 * pending position: 0, or -1 (out of memory, no random source). pre: NULL,
 * or the payload digests ga_hasher_payloads computed over these very cols
 * (then only the record hash is computed here). The position is taken only
 * by ga_chain_taken, once the row's INSERT went in. */
int ga_chain_seal(ga_chain *ch, const ga_text cols[], const ga_digests *pre, ga_seal *out);
void ga_chain_taken(ga_chain *ch, const ga_seal *s);
void ga_chain_commit(ga_chain *ch);   /* the transaction committed */
/* The head as the database has it (seq 0 / hash NULL: no row yet). */
void ga_chain_resync(ga_chain *ch, long long seq, const char *hash, int registered);
/* 1 when p[0..n) is 'YYYY-MM-DD HH:MM:SS' (digits where digits go) and not
 * after now (UTC), else 0: a purge's cutoff. */
int ga_utc_seconds_valid(const char *p, size_t n);

/* ---- SHA-256 (ga_digest.c, OpenSSL libcrypto) ---- */
/* Writes the 64 lower-case hex digits of SHA-256(p, n) and a NUL; 0, or -1. */
int ga_sha256_hex(const void *p, size_t n, char out[65]);
void ga_open_digest(lua_State *L);

/* ---- filesystem facts (ga_fs.c) ---- */
void ga_open_fs(lua_State *L);
void ga_open_copy(lua_State *L); /* core.copy (ga_copy.c) */

/* ---- SQLite store (ga_store.c) ---- */
void ga_open_store(lua_State *L);

/* ---- async writer (ga_writer.c): a thread that drains a bounded queue of
 * rows into a database in batched transactions, on its own connection,
 * through a backend (below); it knows no SQL ---- */
typedef struct ga_writer ga_writer;
typedef struct {
  size_t capacity;  /* rows the queue holds */
  size_t max_bytes; /* bytes the queued rows may hold */
  int batch;        /* rows per transaction */
  int block;        /* when full: 1 = wait, 0 = fail */
  long linger_ms;   /* a batch short of `batch` rows waits up to this for more (0: none) */
} ga_writer_opts;
typedef struct {
  uint64_t queued, written, failed, batches, retries;
  size_t pending, max_depth, pending_bytes;
  char last_error[256];
} ga_writer_stats;
/* Copies the row into the queue. 0 ok; -1 full (block=0) or too large;
 * -2 stopped; -3 out of memory; -4 explicit_id and a row with that id is
 * queued or being written already. err says which. explicit_id: 0 a new
 * ULID; 1 the row brought its id (entered in the id set here);
 * GA_ID_RESERVED: its id is in the set already (ga_writer_reserve_id) and
 * stays there until the row is written or given up; on failure the caller
 * releases it. */
#define GA_ID_RESERVED 2
int ga_writer_push(ga_writer *w, const ga_row *row, int explicit_id, char *err, size_t errlen);
/* The bytes ga_writer_push weighs against max_bytes (a deferred row's
 * documents at their upper bound), and the writer's max_bytes. */
size_t ga_writer_row_bytes(const ga_row *row);
/* The bytes a queued row holds (its columns as set: a deferred row's tapes). */
size_t ga_writer_row_held(const ga_row *row);
size_t ga_writer_max_bytes(const ga_writer *w);
/* Five buffers for the rows the pushing thread builds (ga_row_build_deferred
 * scratch), freed with the writer. */
ga_buf *ga_writer_scratch(ga_writer *w);
/* Enters id (26 bytes) in the id set before the row is pushed, so that the
 * store's "stored already?" check runs after no row with that id can leave
 * the set uncommitted-and-unseen: 0, -3 out of memory, -4 queued or being
 * written already (err says which). */
int ga_writer_reserve_id(ga_writer *w, const char *id, char *err, size_t errlen);
void ga_writer_release_id(ga_writer *w, const char *id); /* undoes ga_writer_reserve_id */
/* The error code for a ga_writer_push result: FULL, STOPPED, NOMEM, CONSTRAINT. */
const char *ga_writer_push_code(int r);
/* Rows failed since the last call (flush() reports each failure once), with
 * the last error copied into last_error. */
uint64_t ga_writer_take_failed(ga_writer *w, char *last_error, size_t errlen);
/* Waits until everything pushed so far is committed (or failed). 0, or -1 on
 * timeout (timeout_ms < 0: wait forever). */
int ga_writer_flush(ga_writer *w, long timeout_ms);
void ga_writer_get_stats(ga_writer *w, ga_writer_stats *st);
/* Drains the queue, joins the thread, frees everything. */
void ga_writer_stop(ga_writer *w);
/* A writer backend: SQLite's in ga_store_writer.c, PostgreSQL's in ga_pg_writer.c. The
 * connection belongs to the writer thread. write_batch writes batch[0..n)
 * (NULL entries skipped) in one transaction: 0 when committed, -1 to retry
 * after a backoff (nothing committed), -2 when waiting will not help (the
 * batch is given up, counted failed, after a few tries); a row the database
 * refuses for itself goes to ga_writer_refuse. */
typedef struct ga_writer_item ga_writer_item;
typedef struct {
  int (*write_batch)(void *conn, ga_writer *w, ga_writer_item **batch, int n);
  void (*close)(void *conn);
  /* 1: after a long batch the writer pauses (YIELD_MS in ga_writer.c) so that
   * other writers waiting for the database's one write lock get it (SQLite);
   * 0: no such lock, no pause (PostgreSQL locks rows). */
  int yields;
} ga_writer_backend;
/* Starts the thread over conn, which it owns from now on (closed through the
 * backend even when starting fails). NULL + err on failure. */
ga_writer *ga_writer_start_backend(const ga_writer_backend *be, void *conn, const ga_writer_opts *o, char *err,
                                  size_t errlen);
void ga_writer_item_cols(const ga_writer_item *it, ga_text cols[GA_NCOLS]); /* pointers into the item */
/* The payload digests the hasher thread computed for the item, or NULL (the
 * backend's chain then computes them): ga_chain_seal's `pre`. */
const ga_digests *ga_writer_item_digests(const ga_writer_item *it);
/* Counts batch[i] failed with msg as the last error; frees it, sets it NULL. */
void ga_writer_refuse(ga_writer *w, ga_writer_item **batch, int i, const char *msg);
void ga_writer_error(ga_writer *w, const char *what, const char *msg); /* last_error = "what: msg" */

/* ---- the SQLite store's writer backend (ga_store_writer.c) ---- */
/* The writer connection's settings: the store's own, so that the file is
 * used the same way from both connections (a rollback-journal store stays
 * one: the writer never switches it to WAL). */
typedef struct {
  const char *path;         /* the store's database file */
  const char *insert_sql;   /* the store's INSERT: ga_col_names order, then ga_seal_col_names */
  const char *journal_mode; /* "wal", "delete", "truncate", "memory" */
  long busy_timeout_ms;
  int synchronous;          /* 0 off, 1 normal, 2 full, 3 extra */
  long long length_limit;   /* SQLITE_LIMIT_LENGTH; 0: SQLite's */
} ga_sqlite_writer_conf;
/* Starts a writer thread over its own connection to conf->path. NULL + err on failure. */
ga_writer *ga_sqlite_writer_start(const ga_sqlite_writer_conf *conf, const ga_writer_opts *o, char *err,
                                  size_t errlen);

/* The store driver contract and what the backends share: ga_store.h. */

/* ---- further concerns register themselves below ---- */

/* ---- PostgreSQL store over libpq (ga_pg*.c, ga_pg.h): core.pg_open ---- */
void ga_open_pg(lua_State *L);

/* ---- token accounting and cost: plain-C arithmetic in ga_price.c, the
 * price_table and meter userdata in ga_meter.c ---- */
/* Prices are int64 picodollars (1e-12 USD) per token; `has` bit i says pico[i]
 * is set. Indexes follow LiteLLM's field names in ga_price_names. */
enum {
  GA_PRICE_INPUT, GA_PRICE_OUTPUT, GA_PRICE_CACHE_READ, GA_PRICE_CACHE_CREATION,
  GA_PRICE_REASONING, GA_PRICE_INPUT_ABOVE_200K, GA_PRICE_OUTPUT_ABOVE_200K,
  GA_PRICE_CACHE_READ_ABOVE_200K, GA_PRICE_CACHE_CREATION_ABOVE_200K, GA_NPRICES
};
typedef struct { int64_t pico[GA_NPRICES]; unsigned has; } ga_prices;
extern const char *const ga_price_names[GA_NPRICES];
/* Normalized usage: prompt INCLUDES cached and cache_write; completion
 * INCLUDES reasoning. */
typedef struct { int64_t prompt, completion, cached, cache_write, reasoning; } ga_usage;
#define GA_TIER_TOKENS 200000 /* prompt_tokens above this use the *_above_200k prices */
enum { GA_DEC_MALFORMED = -1, GA_DEC_OVERFLOW = -2 };
/* Parses a non-negative decimal ("3e-07", "0.000003", "+1.5E-6"; no sign,
 * spaces or hex) into picodollars, rounding half up below 1e-12. Returns 0,
 * GA_DEC_MALFORMED, or GA_DEC_OVERFLOW past INT64_MAX. */
int ga_decimal_to_pico(const char *s, size_t n, int64_t *out);
/* The same for a double, through the shortest decimal that reads back as it
 * (the text the price was written as). NaN, inf and negatives: GA_DEC_MALFORMED. */
int ga_double_to_pico(double d, int64_t *out);
enum {
  GA_COST_OK = 0, GA_COST_UNPRICED = 1, GA_COST_NEGATIVE = -1, GA_COST_BAD_CACHED = -2,
  GA_COST_BAD_REASONING = -3, GA_COST_OVERFLOW = -4
};
/* Cost of one call in picodollars (128-bit intermediates) into *out:
 *   (prompt - cached - cache_write) * input + cached * (cache_read or input)
 *   + cache_write * (cache_creation or input) + (completion - reasoning) * output
 *   + reasoning * (reasoning or output),
 * with the above_200k input/output prices when prompt > GA_TIER_TOKENS and they
 * exist. Checks the usage first (GA_COST_NEGATIVE, _BAD_CACHED when cached +
 * cache_write > prompt, _BAD_REASONING when reasoning > completion); then
 * GA_COST_UNPRICED when p is NULL or a price needed for a nonzero count is
 * missing; GA_COST_OVERFLOW past INT64_MAX. No lua_State: usable from C tests. */
int ga_call_cost(const ga_prices *p, const ga_usage *u, int64_t *out);
/* USD nearest to `digits` (an integer in decimal) picodollars; one rounding. */
double ga_usd_from_pico_text(const char *digits);
/* core.price_table(), core.meter(), core.usd_from_picousd() (ga_meter.c) */
void ga_open_meter(lua_State *L);

/* ---- retry policy (ga_retry.c): one table for both HTTP transports, the
 * libcurl client (ga_http.c) and the cosocket one (openresty.lua, through
 * core.retry_policy / core.retry_delay / core.retry_after_ms) ---- */
#define GA_RETRY_MAX_MS 86400000LL /* one day: the largest backoff or Retry-After kept */
/* Transport failures: each has one error code (messages are "CODE: ...")
 * and a retry flag, in ga_xfails. */
enum {
  GA_XF_REFUSED,         /* connection refused, reset or unreachable: CONNECT, retried */
  GA_XF_RESOLVE,         /* host name not resolved: CONNECT, retried */
  GA_XF_CONNECT_TIMEOUT, /* no connection within connect_timeout_ms: TIMEOUT, retried */
  GA_XF_TIMEOUT,         /* no (whole) response within timeout_ms: TIMEOUT, retried */
  GA_XF_TLS,             /* TLS handshake or certificate failure: TLS, never retried */
  GA_XF_CLOSED,          /* connection closed/reset before the whole response: HTTP, retried */
  GA_XF_PROTOCOL,        /* not a well-formed HTTP response: HTTP, never retried */
  GA_XF_TOO_LARGE,       /* body or headers past their limit: TOO_LARGE, never retried */
  GA_XF_INTERNAL,        /* out of memory, transport set-up: HTTP, never retried */
  GA_XF_ABORTED,         /* a streamed body refused by its consumer (on_data): STREAM_ABORTED, never retried */
  GA_XF_STALLED,         /* a streamed body silent past idle_timeout_ms: TIMEOUT, never retried */
  GA_XF_COUNT
};
typedef struct { const char *name, *code; int retry; } ga_xfail;
extern const ga_xfail ga_xfails[GA_XF_COUNT];
int ga_retry_status(int status); /* 1 for 429, 500, 502, 503, 504 */
/* status > 0: by ga_retry_status; else by transport failure `kind`. */
int ga_retry_should(int status, int kind);
/* The sleep after failed try `attempt` (1 = the first): retry_after_ms (>= 0:
 * the server's Retry-After) capped at cap_ms; else d = base_ms * 2^(attempt-1)
 * capped at cap_ms, with equal jitter: d/2 + rnd % (d - d/2 + 1). */
long long ga_retry_delay_ms(int attempt, long long base_ms, long long cap_ms, long long retry_after_ms,
                            uint64_t rnd);
/* A jitter source for ga_retry_delay_ms (xorshift64; one state per thread or
 * handle, never shared): seed from getrandom(), else the clock and salt. */
void ga_jitter_seed(uint64_t *state, const void *salt);
uint64_t ga_jitter_next(uint64_t *state);
/* One Retry-After value (v: n bytes, not NUL-terminated) as ms from now:
 * delta-seconds or an HTTP-date (past: 0), at most GA_RETRY_MAX_MS; -1 when
 * it is neither. */
long long ga_retry_after_value(const char *v, size_t n);
void ga_open_retry(lua_State *L); /* called by ga_open_http */

/* ---- HTTP client: libcurl userdata and retry loop in ga_http.c, plain-C
 * URL and header parsing in ga_http_parse.c ---- */
/* Writes "host:port" of an http(s) URL into out (userinfo, path and query
 * left out). Returns 0, or -1 when the URL is not http:// or https:// with a
 * host. */
int ga_http_hostport(const char *url, char *out, size_t outlen);
/* 1 when s (n bytes) is an RFC 9110 token: what a header name may contain. */
int ga_http_valid_token(const char *s, size_t n);
/* Steps through the "name: value" lines in h from *pos, value trimmed.
 * Returns 1 with a header, 0 at the end. Continuation lines are skipped. */
int ga_http_next_header(const ga_buf *h, size_t *pos, const char **name, size_t *nlen, const char **val,
                        size_t *vlen);
/* Retry-After of raw response header lines (head: len bytes, not
 * NUL-terminated; the last one wins): ms from now, or -1 when absent or
 * neither delta-seconds nor an HTTP-date. */
long long ga_http_retry_after(const char *head, size_t len);
void ga_open_http(lua_State *L);
/* libcurl's process-wide init, run once (ga_http.c owns it): 0, or the
 * CURLcode it failed with. Every file that makes a curl handle calls it. */
int ga_curl_global_init(void);

/* ---- OTLP/HTTP span exporter (ga_otlp.c): a background thread posting
 * queued span batches; core.otlp_exporter, core.random_hex, core.unix_nanos ---- */
void ga_open_otlp(lua_State *L);

/* ---- server-sent events (ga_sse.c): one incremental text/event-stream
 * parser (WHATWG HTML, "Interpreting an event stream") for both transports'
 * byte streams; plain C, fed chunks split anywhere; core.sse_parser ---- */
#define GA_SSE_DEFAULT_MAX (1024 * 1024) /* max_event_bytes unless told */
enum {
  GA_SSE_OK = 0,
  GA_SSE_PARTIAL = 1,    /* ga_sse_finish: the stream ended inside an event */
  GA_SSE_TOO_LONG = -1,  /* an event (or one line) past max_event bytes */
  GA_SSE_NOMEM = -2,
  GA_SSE_STOPPED = -3    /* the callback returned non-zero */
};
/* One dispatched event; the pointers are valid during the callback only.
 * type: the "event" field, "message" when none; data: the data lines joined
 * by LF, bytes exactly as they came (NUL, invalid UTF-8 kept); id: the last
 * event id (persists across events; "" when none). */
typedef struct {
  const char *type, *data, *id;
  size_t type_len, data_len, id_len;
} ga_sse_event;
/* Returns 0 to go on, non-zero to stop the parser (GA_SSE_STOPPED). */
typedef int (*ga_sse_cb)(void *ud, const ga_sse_event *ev);
/* The parser's state; fields are private to ga_sse.c. Bounded: the line
 * being read plus the event's data and type stay within max_event bytes;
 * comment lines are skipped unbuffered. */
typedef struct {
  size_t max_event;
  ga_buf line, data, type, id;
  long long retry_ms; /* the last valid "retry" field; -1 when none */
  int err;            /* sticky: GA_SSE_TOO_LONG, _NOMEM, _STOPPED, or 0 */
  int bom;            /* stream start: BOM bytes matched so far; -1 once past */
  int after_cr, in_comment, open;
} ga_sse;
void ga_sse_init(ga_sse *p, size_t max_event); /* max_event 0: GA_SSE_DEFAULT_MAX */
void ga_sse_free(ga_sse *p);                   /* frees buffers; init again to reuse */
/* Parses s[0..n) (any split of the stream), calling cb for each event
 * completed. Returns GA_SSE_OK or the sticky error (the parser then refuses
 * further input until ga_sse_finish; the event being read is freed). */
int ga_sse_feed(ga_sse *p, const char *s, size_t n, ga_sse_cb cb, void *ud);
/* End of stream: GA_SSE_OK, GA_SSE_PARTIAL when a line or event was pending
 * (never dispatched), or the sticky error. Then resets the parser for a new
 * stream, keeping the last event id and retry (as EventSource does on
 * reconnection). */
int ga_sse_finish(ga_sse *p);
void ga_open_sse(lua_State *L);

/* ---- BPE token counting (ga_bpe.c) ---- */
/* An immutable loaded encoding (o200k_base, cl100k_base): rank table,
 * reverse table, JIT-compiled pre-tokeniser. Thread-compatible: calls only
 * read it. */
typedef struct ga_bpe ga_bpe;
/* Builds an encoding from the npm tiktoken package's encoders/<name>.json
 * text; NULL with a message in err on failure. */
ga_bpe *ga_bpe_load(const char *name, const char *json, size_t n, char *err, size_t errlen);
void ga_bpe_free(ga_bpe *e);
size_t ga_bpe_memory(const ga_bpe *e);
const char *ga_bpe_name(const ga_bpe *e);
/* The two pre-tokenisers, which split identically: the hand-written
 * scanner (ga_bpe_scan.c, the default) and the patterns run by PCRE2. */
enum { GA_PRETOK_SCANNER = 0, GA_PRETOK_PCRE2 = 1 };
/* Token count / ids of text[0..n) (any bytes; ill-formed UTF-8 counts as
 * U+FFFD per maximal subpart), by the encoding's default pre-tokeniser
 * (ga_bpe_load: the scanner) or the one given (GA_PRETOK_*). 0, -1 on out
 * of memory, < -1 a PCRE2 error. */
int ga_bpe_count(const ga_bpe *e, const char *text, size_t n, size_t *count);
int ga_bpe_encode(const ga_bpe *e, const char *text, size_t n, uint32_t **ids, size_t *nids);
int ga_bpe_count_with(const ga_bpe *e, int pretok, const char *text, size_t n, size_t *count);
int ga_bpe_encode_with(const ga_bpe *e, int pretok, const char *text, size_t n, uint32_t **ids, size_t *nids);
/* The pieces pretok splits text into, as malloc'd (start, end) offset pairs
 * (2 * *npieces entries) into the text after UTF-8 repair; the caller frees
 * *pairs. The fuzz target compares the two pre-tokenisers with it. */
int ga_bpe_pieces(const ga_bpe *e, int pretok, const char *text, size_t n, size_t **pairs, size_t *npieces);
/* ga_bpe_scan.c: the next piece of valid UTF-8 s[0..n) at or after p under
 * o200k_base's (o200k != 0) or cl100k_base's pattern: returns its end and
 * sets *start (n and n when none is left). */
size_t ga_bpe_scan_next(int o200k, const unsigned char *s, size_t n, size_t p, size_t *start);
const char *ga_bpe_scan_unicode(void);   /* the Unicode version of its tables (PCRE2's) */
size_t ga_bpe_scan_table_bytes(void);    /* the size of its tables (static, shared) */
/* The bytes of token id (specials included), or NULL. */
const unsigned char *ga_bpe_token(const ga_bpe *e, uint32_t id, size_t *len);
void ga_open_bpe(lua_State *L);

#endif
