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
 * name "<field>.sha256". One digest context and one fetched SHA-256 are kept
 * for every hash (the least a program can do per row).
 *   bs_hasher_open(h) / bs_hasher_close(h)
 *   bs_sha256_hex(h, p, n, out)      64 hex digits + NUL
 *   bs_record_hash(h, fields, out)   fields in BS_FIELDS order
 * Each returns 0, or -1 (libcrypto failed). */
#ifndef BENCH_SEAL_H
#define BENCH_SEAL_H
#include <stdio.h>
#include <string.h>
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

typedef struct {
  EVP_MD_CTX *ctx;
  EVP_MD *md;
} bs_hasher;

static inline int bs_hasher_open(bs_hasher *h) {
  h->md = EVP_MD_fetch(NULL, "SHA256", NULL);
  h->ctx = EVP_MD_CTX_new();
  return h->md && h->ctx ? 0 : -1;
}

static inline void bs_hasher_close(bs_hasher *h) {
  EVP_MD_CTX_free(h->ctx);
  EVP_MD_free(h->md);
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

static inline int bs_record_hash(bs_hasher *h, const bs_text f[BS_NFIELDS], char out[65]) {
  static const char magic[] = "genaudit-record/1\n";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  int i;
  if (EVP_DigestInit_ex(h->ctx, h->md, NULL) != 1 || EVP_DigestUpdate(h->ctx, magic, sizeof magic - 1) != 1)
    return -1;
  for (i = 0; i < BS_NFIELDS; i++) {
    char head[96];
    int k = f[i].p ? snprintf(head, sizeof head, "%s%s=%zu:", BS_FIELDS[i].name,
                              BS_FIELDS[i].payload ? ".sha256" : "", f[i].n)
                   : snprintf(head, sizeof head, "%s%s=~\n", BS_FIELDS[i].name, BS_FIELDS[i].payload ? ".sha256" : "");
    if (k < 0 || (size_t)k >= sizeof head || EVP_DigestUpdate(h->ctx, head, (size_t)k) != 1) return -1;
    if (f[i].p && (EVP_DigestUpdate(h->ctx, f[i].p, f[i].n) != 1 || EVP_DigestUpdate(h->ctx, "\n", 1) != 1))
      return -1;
  }
  if (EVP_DigestFinal_ex(h->ctx, md, &len) != 1 || len != 32) return -1;
  bs_hex(md, out);
  return 0;
}
#endif
