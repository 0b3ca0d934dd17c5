/* bench/seal.h — the seal of a snapshot row (README, "Tamper evidence";
 * csrc/ga_chain.c) re-implemented in plain C with OpenSSL's libcrypto for the
 * C helpers of bench/ (raw_insert.c, gen_rows.c), independently of genaudit's
 * core: the same canonical encoding
 *
 *   E = "genaudit-record/1\n" || F(f1) || ... || F(f21)
 *   F(name, v) = name "=" "~" "\n"          when v is NULL
 *              = name "=" len(v) ":" v "\n"  otherwise
 *   record_hash = lower-case hex SHA-256(E)
 *
 * over the fields of BS_FIELDS in that order; a payload field (prompts,
 * content, drafts) enters as the 64 hex digits of its own SHA-256 under the
 * name "<field>.sha256". The least a program can do per row: SHA-256
 * fetched once and one digest context reused for every hash; E built in one
 * buffer and hashed in one call; the digests of the last BS_SYS_CACHE system
 * prompts kept (a template's prompt repeats, several templates interleave:
 * a prompt whose bytes equal a kept one's, compared in full, has its digest).
 *   bs_hasher_open(h) / bs_hasher_close(h)   (h zeroed before open)
 *   bs_sha256_hex(h, p, n, out)      64 hex digits + NUL
 *   bs_system_digest(h, p, n, out)   the same, through the prompt cache
 *   bs_record_hash(h, fields, out)   fields in BS_FIELDS order
 * Each returns 0, or -1 (libcrypto failed, out of memory).
 * And the stamps genaudit puts on a row, for the helpers that make rows:
 *   bs_make_id(out, ms, counter)   26 chars: 10 of ms time, 16 of a counter
 *   bs_make_time(out, ms)          "YYYY-MM-DD HH:MM:SS.mmm" UTC + NUL
 *   bs_now_ms(), bs_clock_s(clock) wall ms; a clock in seconds */
#ifndef BENCH_SEAL_H
#define BENCH_SEAL_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>
#include <openssl/evp.h>

#define BS_NFIELDS 21
/* the record's fields, in the encoding's order; 1 = a payload (enters as its digest) */
static const struct { const char *name; int payload; } BS_FIELDS[BS_NFIELDS] = {
    {"id", 0}, {"chain_id", 0}, {"chain_seq", 0}, {"prev_hash", 0}, {"created_at", 0},
    {"org_id", 0}, {"user_id", 0}, {"platform", 0}, {"template_id", 0}, {"template_version", 0},
    {"status", 0}, {"error", 0}, {"replay_of", 0}, {"request_params", 0}, {"token_metrics", 0},
    {"performance_metrics", 0}, {"repair_metrics", 0}, {"final_system_prompt", 1},
    {"final_user_prompt", 1}, {"content", 1}, {"drafts", 1}};
enum { BS_ID, BS_CHAIN_ID, BS_CHAIN_SEQ, BS_PREV_HASH, BS_CREATED_AT, BS_ORG_ID, BS_USER_ID, BS_PLATFORM,
       BS_TEMPLATE_ID, BS_TEMPLATE_VERSION, BS_STATUS, BS_ERROR, BS_REPLAY_OF, BS_REQUEST_PARAMS,
       BS_TOKEN_METRICS, BS_PERFORMANCE_METRICS, BS_REPAIR_METRICS, BS_SYSTEM_SHA, BS_USER_SHA,
       BS_CONTENT_SHA, BS_DRAFTS_SHA };

#define BS_ZERO_HASH "0000000000000000000000000000000000000000000000000000000000000000"

typedef struct { const char *p; size_t n; } bs_text; /* p == NULL: SQL NULL */

#define BS_SYS_CACHE 8

typedef struct {
  EVP_MD_CTX *ctx;
  EVP_MD *md;
  char *enc; /* E of the last record hashed */
  size_t enc_cap;
  struct { char *p; size_t n; char digest[65]; } sys[BS_SYS_CACHE];
  unsigned sys_next; /* the slot the next new prompt takes */
} bs_hasher;

static inline int bs_hasher_open(bs_hasher *h) {
  h->md = EVP_MD_fetch(NULL, "SHA256", NULL);
  h->ctx = EVP_MD_CTX_new();
  return h->md && h->ctx ? 0 : -1;
}

static inline void bs_hasher_close(bs_hasher *h) {
  int i;
  EVP_MD_CTX_free(h->ctx);
  EVP_MD_free(h->md);
  free(h->enc);
  for (i = 0; i < BS_SYS_CACHE; i++) free(h->sys[i].p);
}

static inline void bs_hex(const unsigned char md[32], char out[65]) {
  static const char hex[] = "0123456789abcdef";
  int i;
  for (i = 0; i < 32; i++) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  out[64] = '\0';
}

static inline int bs_sha256_hex(bs_hasher *h, const void *p, size_t n, char out[65]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestInit_ex(h->ctx, h->md, NULL) != 1 || EVP_DigestUpdate(h->ctx, p, n) != 1 ||
      EVP_DigestFinal_ex(h->ctx, md, &len) != 1 || len != 32)
    return -1;
  bs_hex(md, out);
  return 0;
}

static inline int bs_system_digest(bs_hasher *h, const char *p, size_t n, char out[65]) {
  unsigned i;
  char *copy;
  for (i = 0; i < BS_SYS_CACHE; i++)
    if (h->sys[i].p && h->sys[i].n == n && memcmp(h->sys[i].p, p, n) == 0) {
      memcpy(out, h->sys[i].digest, 65);
      return 0;
    }
  if (bs_sha256_hex(h, p, n, out) != 0) return -1;
  if (!(copy = (char *)malloc(n ? n : 1))) return 0; /* no cache: only slower */
  memcpy(copy, p, n);
  i = h->sys_next;
  h->sys_next = (i + 1) % BS_SYS_CACHE;
  free(h->sys[i].p);
  h->sys[i].p = copy;
  h->sys[i].n = n;
  memcpy(h->sys[i].digest, out, 65);
  return 0;
}

/* Room for need more bytes after len in h->enc: 0 or -1. */
static inline int bs_enc_room(bs_hasher *h, size_t len, size_t need) {
  size_t cap = h->enc_cap ? h->enc_cap : 4096;
  char *p;
  if (len + need <= h->enc_cap) return 0;
  while (cap < len + need) cap *= 2;
  if (!(p = (char *)realloc(h->enc, cap))) return -1;
  h->enc = p;
  h->enc_cap = cap;
  return 0;
}

static inline int bs_record_hash(bs_hasher *h, const bs_text f[BS_NFIELDS], char out[65]) {
  static const char magic[] = "genaudit-record/1\n";
  size_t len = 0;
  int i;
  if (bs_enc_room(h, 0, sizeof magic - 1) != 0) return -1;
  memcpy(h->enc, magic, sizeof magic - 1);
  len = sizeof magic - 1;
  for (i = 0; i < BS_NFIELDS; i++) {
    /* name [".sha256"] "=" ("~\n" | decimal length ":" value "\n") */
    size_t nn = strlen(BS_FIELDS[i].name), k = 0;
    char dec[24];
    size_t v = f[i].n;
    if (f[i].p) do dec[sizeof dec - ++k] = (char)('0' + v % 10); while ((v /= 10) != 0);
    if (bs_enc_room(h, len, nn + 7 + 3 + k + (f[i].p ? f[i].n + 1 : 0)) != 0) return -1;
    memcpy(h->enc + len, BS_FIELDS[i].name, nn);
    len += nn;
    if (BS_FIELDS[i].payload) {
      memcpy(h->enc + len, ".sha256", 7);
      len += 7;
    }
    if (!f[i].p) {
      memcpy(h->enc + len, "=~\n", 3);
      len += 3;
      continue;
    }
    h->enc[len++] = '=';
    memcpy(h->enc + len, dec + sizeof dec - k, k);
    len += k;
    h->enc[len++] = ':';
    memcpy(h->enc + len, f[i].p, f[i].n);
    len += f[i].n;
    h->enc[len++] = '\n';
  }
  return bs_sha256_hex(h, h->enc, len, out);
}
static const char bs_b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static inline int64_t bs_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline double bs_clock_s(clockid_t which) {
  struct timespec ts;
  clock_gettime(which, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 10 chars of ms time, 16 chars of a counter: unique and sortable. */
static inline void bs_make_id(char out[26], int64_t ms, uint64_t counter) {
  int i;
  for (i = 9; i >= 0; i--, ms >>= 5) out[i] = bs_b32[ms & 31];
  for (i = 25; i >= 10; i--, counter >>= 5) out[i] = bs_b32[counter & 31];
}

/* "YYYY-MM-DD HH:MM:SS.mmm" UTC, as genaudit stamps rows. */
static inline void bs_make_time(char out[24], int64_t ms) {
  time_t s = (time_t)(ms / 1000);
  struct tm tm;
  int frac = (int)(ms % 1000);
  gmtime_r(&s, &tm);
  strftime(out, 20, "%Y-%m-%d %H:%M:%S", &tm);
  out[19] = '.';
  out[20] = (char)('0' + frac / 100);
  out[21] = (char)('0' + frac / 10 % 10);
  out[22] = (char)('0' + frac % 10);
  out[23] = '\0';
}

#endif
