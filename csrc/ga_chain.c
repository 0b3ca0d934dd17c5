/* ga_chain.c — the canonical record encoding and its hash: what makes a
 * snapshot row tamper-evident (README, "Tamper evidence").
 *
 *   E = "genaudit-record/1\n" || F(field 1) || ... || F(field n)
 *   F = name "=" ("~" if NULL | decimal byte length ":" bytes) "\n"
 *   record_hash = lower-case hex SHA-256(E)
 *
 * Fields in the fixed order of ga_record_fields. A payload field (prompts,
 * content, drafts) enters as the 64 hex digits of its own SHA-256 under the
 * name "<field>.sha256", so a purged payload keeps its row verifiable.
 *   ga_record_hash(fields, out, enc)   plain C, fields in that order
 *   core.record_hash(t) -> hex, E      t keyed by field name (see below)
 *   core.record_fields() -> { {name, payload}, ... }
 * E is built in one buffer and hashed in one call. A writer seals rows with
 * its own ga_hasher (SHA-256 fetched once, one reused context, a cache of
 * the last system prompts' digests); the payload digests may come computed
 * ahead, by the async writer's hasher thread (ga_writer.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/evp.h>
#include "ga_private.h"

const ga_record_field ga_record_fields[GA_REC_NFIELDS] = {
    {"id", 0}, {"chain_id", 0}, {"chain_seq", 0}, {"prev_hash", 0}, {"created_at", 0},
    {"org_id", 0}, {"user_id", 0}, {"platform", 0}, {"template_id", 0}, {"template_version", 0},
    {"status", 0}, {"error", 0}, {"replay_of", 0}, {"request_params", 0}, {"token_metrics", 0},
    {"performance_metrics", 0}, {"repair_metrics", 0}, {"final_system_prompt", 1},
    {"final_user_prompt", 1}, {"content", 1}, {"drafts", 1}};

#define MAGIC "genaudit-record/1\n"

static void to_hex(const unsigned char md[32], char out[65]) {
  static const char hex[] = "0123456789abcdef";
  unsigned i;
  for (i = 0; i < 32; i++) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  out[64] = '\0';
}

/* Appends the decimal digits of n. */
static void put_decimal(ga_buf *b, size_t n) {
  char d[24];
  int k = (int)sizeof d;
  do {
    d[--k] = (char)('0' + n % 10);
    n /= 10;
  } while (n);
  ga_buf_add(b, d + k, sizeof d - (size_t)k);
}

/* Appends E of fields (ga_record_fields order; payload fields hold their
 * digest's 64 hex digits, or are unset) to enc: 0, or -1 (out of memory, or
 * a payload field that is not 64 characters long). */
static int encode(const ga_text fields[GA_REC_NFIELDS], ga_buf *enc) {
  unsigned i;
  ga_buf_add(enc, MAGIC, sizeof MAGIC - 1);
  for (i = 0; i < GA_REC_NFIELDS; i++) {
    const ga_record_field *f = &ga_record_fields[i];
    const ga_text *v = &fields[i];
    if (f->payload && v->set && v->n != 64) return -1;
    ga_buf_addstr(enc, f->name);
    if (f->payload) ga_buf_add(enc, ".sha256", 7);
    if (!v->set) {
      ga_buf_add(enc, "=~\n", 3);
      continue;
    }
    ga_buf_addc(enc, '=');
    put_decimal(enc, v->n);
    ga_buf_addc(enc, ':');
    ga_buf_add(enc, v->p, v->n);
    ga_buf_addc(enc, '\n');
  }
  return enc->oom ? -1 : 0;
}

int ga_record_hash(const ga_text fields[GA_REC_NFIELDS], char out[65], ga_buf *enc) {
  ga_buf own;
  int rc;
  ga_buf_init(&own);
  if (!enc) enc = &own;
  enc->len = 0;
  rc = encode(fields, enc) == 0 && ga_sha256_hex(enc->buf, enc->len, out) == 0 ? 0 : -1;
  ga_buf_free(&own);
  return rc;
}

/* ---- a thread's own hasher ---- */

void ga_hasher_init(ga_hasher *h) { memset(h, 0, sizeof *h); }

void ga_hasher_free(ga_hasher *h) {
  int i;
  EVP_MD_CTX_free((EVP_MD_CTX *)h->ctx);
  EVP_MD_free((EVP_MD *)h->md);
  ga_buf_free(&h->enc);
  for (i = 0; i < GA_SYS_CACHE; i++) free(h->sys[i].p);
  ga_hasher_init(h);
}

int ga_hasher_sha256(ga_hasher *h, const void *p, size_t n, char out[65]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!h->md && !(h->md = EVP_MD_fetch(NULL, "SHA256", NULL))) return -1;
  if (!h->ctx && !(h->ctx = EVP_MD_CTX_new())) return -1;
  if (EVP_DigestInit_ex((EVP_MD_CTX *)h->ctx, (const EVP_MD *)h->md, NULL) != 1 ||
      EVP_DigestUpdate((EVP_MD_CTX *)h->ctx, p, n) != 1 || EVP_DigestFinal_ex((EVP_MD_CTX *)h->ctx, md, &len) != 1 ||
      len != 32)
    return -1;
  to_hex(md, out);
  return 0;
}

/* The digest of a system prompt: a cached one's when the bytes are the
 * same (compared in full), else computed and cached. 0 or -1. */
/* The record hash of fields with h's reused context and encoding buffer. */
int ga_hasher_record_hash(ga_hasher *h, const ga_text fields[GA_REC_NFIELDS], char out[65]) {
  if (h->enc.oom) ga_buf_free(&h->enc); /* a failed growth: start afresh */
  h->enc.len = 0;
  return encode(fields, &h->enc) == 0 && ga_hasher_sha256(h, h->enc.buf, h->enc.len, out) == 0 ? 0 : -1;
}

static int system_digest(ga_hasher *h, const ga_text *t, char out[65]) {
  unsigned i;
  char *copy;
  for (i = 0; i < GA_SYS_CACHE; i++) {
    const char *p = h->sys[i].p;
    if (p && h->sys[i].n == t->n && memcmp(p, t->p, t->n) == 0) {
      memcpy(out, h->sys[i].digest, 65);
      return 0;
    }
  }
  if (ga_hasher_sha256(h, t->p, t->n, out) != 0) return -1;
  if (t->n > GA_SYS_CACHE_MAX || !(copy = (char *)malloc(t->n ? t->n : 1))) return 0; /* only slower */
  memcpy(copy, t->p, t->n);
  i = h->sys_next;
  h->sys_next = (i + 1) % GA_SYS_CACHE;
  free(h->sys[i].p);
  h->sys[i].p = copy;
  h->sys[i].n = t->n;
  memcpy(h->sys[i].digest, out, 65);
  return 0;
}

/* the payload columns, in the order of the digest columns */
static const int payload_cols[4] = {GA_COL_FINAL_SYSTEM_PROMPT, GA_COL_FINAL_USER_PROMPT, GA_COL_CONTENT,
                                    GA_COL_DRAFTS};

int ga_hasher_payloads(ga_hasher *h, const ga_text cols[], ga_digests *d) {
  int i;
  for (i = 0; i < 4; i++) {
    const ga_text *t = &cols[payload_cols[i]];
    if (!t->set) continue;
    if ((i == 0 ? system_digest(h, t, (*d)[i]) : ga_hasher_sha256(h, t->p, t->n, (*d)[i])) != 0) return -1;
  }
  return 0;
}

static int is_hex64(const char *p, size_t n) {
  size_t i;
  if (n != 64) return 0;
  for (i = 0; i < n; i++)
    if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) return 0;
  return 1;
}

/* core.record_hash(t) -> record_hash, encoding
 * t: field name -> string (nil or absent = NULL); chain_seq may be an
 * integer. A payload field is given as its bytes (t.content) or as its
 * digest (t.content_sha256, 64 lower-case hex digits), not both. */
static int l_record_hash(lua_State *L) {
  ga_text f[GA_REC_NFIELDS];
  char digests[GA_REC_NFIELDS][65], seq[32], out[65];
  ga_buf enc;
  unsigned i;
  luaL_checktype(L, 1, LUA_TTABLE);
  memset(f, 0, sizeof f);
  for (i = 0; i < GA_REC_NFIELDS; i++) {
    const ga_record_field *d = &ga_record_fields[i];
    int t;
    lua_getfield(L, 1, d->name);
    t = lua_type(L, -1);
    if (d->payload) {
      char key[64];
      int t2;
      snprintf(key, sizeof key, "%s_sha256", d->name);
      lua_getfield(L, 1, key);
      t2 = lua_type(L, -1);
      if (t != LUA_TNIL && t2 != LUA_TNIL)
        return luaL_error(L, "record_hash: %s and %s both given", d->name, key);
      if (t2 != LUA_TNIL) {
        size_t n;
        const char *p = lua_tolstring(L, -1, &n);
        if (t2 != LUA_TSTRING || !is_hex64(p, n))
          return luaL_error(L, "record_hash: %s must be 64 lower-case hex digits", key);
        memcpy(digests[i], p, 64);
      } else if (t != LUA_TNIL) {
        size_t n;
        const char *p;
        if (t != LUA_TSTRING) return luaL_error(L, "record_hash: %s must be a string", d->name);
        p = lua_tolstring(L, -2, &n);
        if (ga_sha256_hex(p, n, digests[i]) != 0) return luaL_error(L, "record_hash: libcrypto failed");
      }
      if (t != LUA_TNIL || t2 != LUA_TNIL) {
        f[i].p = digests[i];
        f[i].n = 64;
        f[i].set = 1;
      }
      lua_pop(L, 2);
      continue;
    }
    if (t == LUA_TNUMBER && i == 2) { /* chain_seq: a whole number from 1 to 2^53 */
      lua_Number x = lua_tonumber(L, -1);
      if (!(x >= 1 && x <= 9007199254740992.0) || x != (lua_Number)(long long)x)
        return luaL_error(L, "record_hash: chain_seq must be a positive integer");
      snprintf(seq, sizeof seq, "%lld", (long long)x);
      f[i].p = seq;
      f[i].n = strlen(seq);
      f[i].set = 1;
    } else if (t == LUA_TSTRING) {
      f[i].p = lua_tolstring(L, -1, &f[i].n); /* stays alive in t */
      f[i].set = 1;
    } else if (t != LUA_TNIL) {
      return luaL_error(L, "record_hash: %s must be a string", d->name);
    }
    lua_pop(L, 1);
  }
  ga_buf_init(&enc);
  if (ga_record_hash(f, out, &enc) != 0) {
    ga_buf_free(&enc);
    return luaL_error(L, "record_hash: out of memory");
  }
  lua_pushlstring(L, out, 64);
  lua_pushlstring(L, enc.buf ? enc.buf : "", enc.len);
  ga_buf_free(&enc);
  return 2;
}

/* core.record_fields() -> { { name = , payload = boolean }, ... } in order */
static int l_record_fields(lua_State *L) {
  unsigned i;
  lua_createtable(L, GA_REC_NFIELDS, 0);
  for (i = 0; i < GA_REC_NFIELDS; i++) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, ga_record_fields[i].name);
    lua_setfield(L, -2, "name");
    lua_pushboolean(L, ga_record_fields[i].payload);
    lua_setfield(L, -2, "payload");
    lua_rawseti(L, -2, (int)i + 1);
  }
  return 1;
}

void ga_open_chain(lua_State *L) {
  lua_pushcfunction(L, l_record_hash);
  lua_setfield(L, -2, "record_hash");
  lua_pushcfunction(L, l_record_fields);
  lua_setfield(L, -2, "record_fields");
}

/* ---- the chain one writer appends to ---- */

const char *const ga_seal_col_names[GA_SEAL_NCOLS] = {
    "final_system_prompt_sha256", "final_user_prompt_sha256", "content_sha256", "drafts_sha256",
    "chain_id", "chain_seq", "prev_hash", "record_hash"};

static const char ZERO_HASH[] = "0000000000000000000000000000000000000000000000000000000000000000";

void ga_chain_init(ga_chain *ch) {
  memset(ch, 0, sizeof *ch);
  memcpy(ch->head, ZERO_HASH, 65);
  memcpy(ch->pend_head, ZERO_HASH, 65);
  ga_hasher_init(&ch->h);
}

void ga_chain_free(ga_chain *ch) { ga_hasher_free(&ch->h); }

void ga_chain_begin(ga_chain *ch) {
  ch->pend_seq = ch->seq;
  memcpy(ch->pend_head, ch->head, 65);
  ch->pend_registered = ch->registered;
}

int ga_chain_needs_register(const ga_chain *ch) { return !ch->pend_registered; }

void ga_chain_registered(ga_chain *ch) { ch->pend_registered = 1; }

int ga_chain_ensure_id(ga_chain *ch) {
  ga_ulid_state st;
  if (ch->id[0]) return 0;
  memset(&st, 0, sizeof st);
  if (ga_ulid_next(&st, ga_realtime_ms(), ch->id) != 0) return -1;
  ch->id[26] = '\0';
  return 0;
}

int ga_chain_seal(ga_chain *ch, const ga_text cols[], const ga_digests *pre, ga_seal *out) {
  /* the record's fields, from the row's columns and the seal's own */
  static const int from_row[GA_REC_NFIELDS] = {
      GA_COL_ID, -1, -1, -1, GA_COL_CREATED_AT, GA_COL_ORG_ID, GA_COL_USER_ID, GA_COL_PLATFORM,
      GA_COL_TEMPLATE_ID, GA_COL_TEMPLATE_VERSION, GA_COL_STATUS, GA_COL_ERROR, GA_COL_REPLAY_OF,
      GA_COL_REQUEST_PARAMS, GA_COL_TOKEN_METRICS, GA_COL_PERFORMANCE_METRICS, GA_COL_REPAIR_METRICS,
      -1, -1, -1, -1};
  ga_text f[GA_REC_NFIELDS];
  int i;
  if (ch->stale || ga_chain_ensure_id(ch) != 0) return -1;
  memset(out->col, 0, sizeof out->col);
  if (pre) memcpy(out->digest, *pre, sizeof out->digest);
  else if (ga_hasher_payloads(&ch->h, cols, &out->digest) != 0) return -1;
  for (i = 0; i < 4; i++)
    if (cols[payload_cols[i]].set) out->col[i] = (ga_text){out->digest[i], 64, 1};
  snprintf(out->seq, sizeof out->seq, "%lld", ch->pend_seq + 1);
  memcpy(out->prev, ch->pend_head, 65);
  out->col[GA_SEAL_CHAIN_ID] = (ga_text){ch->id, 26, 1};
  out->col[GA_SEAL_CHAIN_SEQ] = (ga_text){out->seq, strlen(out->seq), 1};
  out->col[GA_SEAL_PREV_HASH] = (ga_text){out->prev, 64, 1};
  for (i = 0; i < GA_REC_NFIELDS; i++) f[i] = from_row[i] >= 0 ? cols[from_row[i]] : (ga_text){NULL, 0, 0};
  f[1] = out->col[GA_SEAL_CHAIN_ID];
  f[2] = out->col[GA_SEAL_CHAIN_SEQ];
  f[3] = out->col[GA_SEAL_PREV_HASH];
  for (i = 0; i < 4; i++) f[17 + i] = out->col[i];
  if (ch->h.enc.oom) ga_buf_free(&ch->h.enc); /* a failed growth: start afresh */
  ch->h.enc.len = 0;
  if (encode(f, &ch->h.enc) != 0 || ga_hasher_sha256(&ch->h, ch->h.enc.buf, ch->h.enc.len, out->hash) != 0)
    return -1;
  out->col[GA_SEAL_RECORD_HASH] = (ga_text){out->hash, 64, 1};
  return 0;
}

void ga_chain_taken(ga_chain *ch, const ga_seal *s) {
  ch->pend_seq++;
  memcpy(ch->pend_head, s->hash, 65);
}

void ga_chain_commit(ga_chain *ch) {
  ch->seq = ch->pend_seq;
  memcpy(ch->head, ch->pend_head, 65);
  ch->registered = ch->pend_registered;
}

void ga_chain_resync(ga_chain *ch, long long seq, const char *hash, int registered) {
  ch->seq = seq;
  memcpy(ch->head, hash && seq > 0 ? hash : ZERO_HASH, 64);
  ch->head[64] = '\0';
  ch->registered = registered;
  ch->stale = 0;
  ga_chain_begin(ch);
}

int ga_utc_seconds_valid(const char *p, size_t n) {
  static const char shape[] = "dddd-dd-dd dd:dd:dd";
  char now[32];
  time_t t = time(NULL);
  struct tm tm;
  size_t i;
  if (n != 19) return 0;
  for (i = 0; i < n; i++) {
    if (shape[i] == 'd' ? (p[i] < '0' || p[i] > '9') : p[i] != shape[i]) return 0;
  }
  /* a cutoff in the future would purge rows younger than any age */
  if (!gmtime_r(&t, &tm) || strftime(now, sizeof now, "%Y-%m-%d %H:%M:%S", &tm) != 19) return 0;
  return memcmp(p, now, 19) <= 0;
}
