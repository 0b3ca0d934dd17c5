/* bench/gen_rows.c — fills a genaudit store with synthetic but realistic
 * snapshots, fast, for the analytics and export benchmarks.
 *
 *   gen_rows DST ROWS [DAYS]
 *
 * DST must be a freshly migrated genaudit store (the bench scripts open one
 * with genaudit.open first). Rows are written in created_at order over the last
 * DAYS days (default 90) ending now, with:
 *   - 50 templates of Zipf-like popularity (template-01 the most used), each
 *     with its own ~5 KB system prompt (repeated across its rows) and its own
 *     repair propensity; a ~2 KB user prompt and ~1 KB of content per row;
 *   - 300 orgs, 3 platforms, 3 models with their list prices (costs exact in
 *     picodollars, 1% of rows unpriced: estimated_cost null), 2% failed rows;
 *   - the three metric documents in the shape genaudit writes them (token
 *     usage with a calls array, performance with per-call timings, repair
 *     info with a repair log), plus request_params.
 * Every row is sealed as genaudit seals it (bench/seal.h: payload digests,
 * one chain registered in `chains`, prev_hash links, record_hash), so the
 * store verifies (`genaudit verify`); drafts stay NULL.
 * Deterministic (fixed PRNG seed) except for the time axis. Generation runs
 * with journal_mode=OFF and synchronous=OFF in 10,000-row transactions and
 * puts the store back in WAL mode at the end. Prints one line:
 *   rows=N seconds=S rows_per_s=R
 * Exit status 0, or 1 with a message on stderr. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <math.h>
#include <unistd.h>
#include <sqlite3.h>
#include "seal.h"

#define NTEMPLATES 50
#define NORGS 300
#define POOL 65536
#define SYS_LEN 5120
#define USER_LEN 2048
#define CONTENT_LEN 1024
#define TXN_ROWS 10000

static const char SQL_INSERT[] =
    "INSERT INTO generation_snapshots (id, created_at, org_id, user_id, platform, template_id,"
    " template_version, status, content, error, final_system_prompt, final_user_prompt,"
    " token_metrics, performance_metrics, repair_metrics, request_params, replay_of,"
    " final_system_prompt_sha256, final_user_prompt_sha256, content_sha256, chain_id, chain_seq, prev_hash,"
    " record_hash)"
    " VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24)";
static const char SQL_CHAIN[] = "INSERT INTO chains (chain_id, host, pid) VALUES (?1, ?2, ?3)";
static const char REQUEST_PARAMS[] = "{\"max_tokens\":400,\"temperature\":0.7}";
static const char REPAIR_ERROR[] = "REPAIR_EXHAUSTED: draft still fails validation after 2 repair(s)";

static const char *const WORDS[] = {
    "today", "we", "are", "launching", "a", "new", "way", "to", "ship", "faster", "with", "less",
    "stress", "our", "team", "built", "this", "for", "builders", "who", "care", "about", "quality",
    "every", "release", "matters", "and", "feedback", "shapes", "the", "product", "customers",
    "mention", "reliability", "most", "concrete", "warm", "voice", "brand", "audience", "post",
    "platform", "hashtag", "constraint", "knowledge", "facts", "tone", "formal", "playful", "calm"};
static const char *const PLATFORMS[] = {"linkedin", "x", "instagram"};
static const struct {
  const char *requested, *reported, *provider;
  int64_t in_pico, out_pico; /* USD 1e-12 per token */
} MODELS[] = {{"gpt-4o-mini", "gpt-4o-mini-2024-07-18", "openai", 150000, 600000},
              {"gpt-4o", "gpt-4o-2024-08-06", "openai", 2500000, 10000000},
              {"claude-3-5-sonnet-latest", "claude-3-5-sonnet-20241022", "anthropic", 3000000, 15000000}};
static const char *const REPAIR_TYPES[] = {"length_exceeded", "missing_hashtag", "banned_word"};

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint64_t rnd(void) { /* xorshift64* */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ULL;
}
static double rnd01(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }
static int rnd_int(int lo, int hi) { return lo + (int)(rnd() % (uint64_t)(hi - lo + 1)); }

typedef struct { char *p; size_t len, cap; } buf;

static void b_reset(buf *b) { b->len = 0; }
static void b_add(buf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    b->p = (char *)realloc(b->p, cap);
    if (!b->p) {
      fprintf(stderr, "gen_rows: out of memory\n");
      exit(1);
    }
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}
static void b_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void b_printf(buf *b, const char *fmt, ...) {
  char tmp[2048];
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof tmp) {
    fprintf(stderr, "gen_rows: text piece too long\n");
    exit(1);
  }
  b_add(b, tmp, (size_t)n);
}

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Index into a cumulative weight table by binary search. */
static int pick(const double *cum, int n) {
  double x = rnd01() * cum[n - 1];
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (cum[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

static int die(sqlite3 *db, const char *what) {
  fprintf(stderr, "gen_rows: %s: %s\n", what, sqlite3_errmsg(db));
  return 1;
}

int main(int argc, char **argv) {
  static char pool[POOL + 1], system_prompt[NTEMPLATES][SYS_LEN + 1];
  static double tcum[NTEMPLATES], ocum[NORGS], repair_rate[NTEMPLATES];
  sqlite3 *db = NULL;
  sqlite3_stmt *ins = NULL, *reg = NULL;
  bs_hasher h = {0};
  char chain_id[27], prev[65], record[65], sys_digest[NTEMPLATES][65], dig_user[65], dig_content[65];
  buf user = {0}, tok = {0}, perf = {0}, rep = {0}, calls = {0}, pcalls = {0};
  long rows, i;
  int days = 90, t, rc = 1;
  size_t plen = 0;
  int64_t end_ms, start_ms;
  double t0, t1, acc = 0;
  if (argc < 3 || argc > 4 || (rows = atol(argv[2])) <= 0 || (argc == 4 && (days = atoi(argv[3])) <= 0)) {
    fprintf(stderr, "usage: gen_rows DST ROWS [DAYS]\n");
    return 2;
  }
  /* the word pool every text is a slice of */
  while (plen < POOL) {
    const char *w = WORDS[rnd() % (sizeof WORDS / sizeof *WORDS)];
    size_t n = strlen(w);
    if (plen + n + 1 > POOL) break;
    memcpy(pool + plen, w, n);
    plen += n;
    pool[plen++] = (rnd() % 12 == 0) ? '\n' : ' ';
  }
  pool[plen] = '\0';
  for (t = 0; t < NTEMPLATES; t++) {
    int n = snprintf(system_prompt[t], SYS_LEN + 1,
                     "You write for the brand of template-%02d: concrete, warm, no hype words.\n\nConstraints:\n"
                     "- Stay under the platform's word limit.\n- End with exactly one hashtag line.\n"
                     "- Never invent numbers that are not in the facts.\n\nStyle guide:\n",
                     t + 1);
    size_t off = (size_t)(rnd() % (plen - SYS_LEN));
    memcpy(system_prompt[t] + n, pool + off, (size_t)(SYS_LEN - n));
    system_prompt[t][SYS_LEN] = '\0';
    acc += 1.0 / pow(t + 1, 0.8);
    tcum[t] = acc;
    repair_rate[t] = 0.03 + 0.6 * rnd01() * rnd01(); /* a few unstable templates */
  }
  for (acc = 0, t = 0; t < NORGS; t++) ocum[t] = acc += 1.0 / (t + 1);

  if (bs_hasher_open(&h) != 0) {
    fprintf(stderr, "gen_rows: libcrypto has no SHA-256\n");
    goto cleanup;
  }
  for (t = 0; t < NTEMPLATES; t++)
    if (bs_sha256_hex(&h, system_prompt[t], SYS_LEN, sys_digest[t]) != 0) {
      fprintf(stderr, "gen_rows: libcrypto failed\n");
      goto cleanup;
    }
  if (sqlite3_open_v2(argv[1], &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
    rc = die(db, "cannot open DST");
    goto cleanup;
  }
  if (sqlite3_exec(db, "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-262144", NULL, NULL,
                   NULL) != SQLITE_OK ||
      sqlite3_prepare_v3(db, SQL_INSERT, -1, SQLITE_PREPARE_PERSISTENT, &ins, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(db, SQL_CHAIN, -1, &reg, NULL) != SQLITE_OK) {
    rc = die(db, "cannot prepare DST (is it a migrated genaudit store?)");
    goto cleanup;
  }
  memcpy(prev, BS_ZERO_HASH, 65);
  {
    char host[256];
    int b;
    bs_make_id(chain_id, bs_now_ms(), (uint64_t)getpid() << 20);
    chain_id[26] = '\0';
    if (gethostname(host, sizeof host) != 0) host[0] = '\0';
    host[sizeof host - 1] = '\0';
    b = sqlite3_bind_text(reg, 1, chain_id, 26, SQLITE_STATIC);
    if (b == SQLITE_OK) b = host[0] ? sqlite3_bind_text(reg, 2, host, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(reg, 2);
    if (b == SQLITE_OK) b = sqlite3_bind_int64(reg, 3, (sqlite3_int64)getpid());
    if (b != SQLITE_OK) {
      rc = die(db, "cannot bind the chain");
      goto cleanup;
    }
  }
  {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    end_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 - 1000;
    start_ms = end_ms - (int64_t)days * 86400000;
  }
  t0 = mono_s();
  for (i = 0; i < rows; i++) {
    char id[26], created[24], org[16], usr[16], ver[8];
    int tpl = pick(tcum, NTEMPLATES), o = pick(ocum, NORGS), m, repairs = 0, k, failed, unpriced, score;
    int64_t ms = start_ms + (int64_t)(((double)i + rnd01()) * (double)(end_ms - start_ms) / (double)rows);
    int64_t p, c, cost_init, cost_rep = 0, total_p, total_c;
    double wait_total, total_ms;
    const char *platform = PLATFORMS[rnd() % 3];
    char tplname[24];
    size_t uoff = (size_t)(rnd() % (plen - USER_LEN)), coff = (size_t)(rnd() % (plen - CONTENT_LEN));
    double r = rnd01();
    m = r < 0.7 ? 0 : r < 0.9 ? 1 : 2;
    if (i % TXN_ROWS == 0 && sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
      rc = die(db, "cannot begin");
      goto cleanup;
    }
    if (i == 0 && sqlite3_step(reg) != SQLITE_DONE) { /* the chain registers with its first row */
      rc = die(db, "cannot register the chain");
      goto cleanup;
    }
    bs_make_id(id, ms, (uint64_t)i + 1);
    bs_make_time(created, ms);
    snprintf(org, sizeof org, "%d", 1000 + o);
    snprintf(usr, sizeof usr, "%d", (1000 + o) * 10 + rnd_int(0, 9));
    snprintf(ver, sizeof ver, "%d", 1 + tpl % 4);
    snprintf(tplname, sizeof tplname, "template-%02d", tpl + 1);
    failed = rnd01() < 0.02;
    unpriced = rnd01() < 0.01;
    if (rnd01() < repair_rate[tpl]) repairs = rnd01() < 0.3 ? 2 : 1;

    b_reset(&user);
    b_printf(&user, "Write a %s post for org %s.\n\nKnowledge:\n- ", platform, org);
    b_add(&user, pool + uoff, USER_LEN - user.len - 32);
    b_printf(&user, "\n\nTone: %s", rnd() % 2 ? "formal" : "playful");

    /* token usage: the initial call and each repair call */
    p = 1750 + rnd_int(0, 400);
    c = 200 + rnd_int(0, 150);
    cost_init = p * MODELS[m].in_pico + c * MODELS[m].out_pico;
    total_p = p;
    total_c = c;
    b_reset(&calls);
    b_reset(&pcalls);
    wait_total = 400.0 + rnd01() * 2500.0;
    b_printf(&calls,
             "{\"cache_write_tokens\":0,\"cached_prompt_tokens\":0,\"completion_tokens\":%lld,\"cost\":%.15g,"
             "\"kind\":\"initial\",\"model\":\"%s\",\"prompt_tokens\":%lld,\"provider_wait_us\":%lld,"
             "\"reasoning_tokens\":0,\"total_tokens\":%lld}",
             (long long)c, (double)cost_init / 1e12, MODELS[m].reported, (long long)p,
             (long long)(wait_total * 1000), (long long)(p + c));
    b_printf(&pcalls,
             "{\"attempts\":1,\"kind\":\"initial\",\"status\":200,\"timings\":{\"connect_us\":%d,\"dns_us\":%d,"
             "\"first_byte_us\":%lld,\"pretransfer_us\":%d,\"tls_us\":%d,\"total_us\":%lld,\"wait_us\":%lld},"
             "\"wait_ms\":%.3f}",
             rnd_int(900, 3000), rnd_int(5, 40), (long long)(wait_total * 1000) - 200, rnd_int(3000, 9000),
             rnd_int(2000, 8000), (long long)(wait_total * 1000) - 20, (long long)(wait_total * 1000), wait_total);
    for (k = 1; k <= repairs; k++) {
      int64_t rp = p + c + 40, rc2 = 150 + rnd_int(0, 100), cost = rp * MODELS[m].in_pico + rc2 * MODELS[m].out_pico;
      double w = 300.0 + rnd01() * 1500.0;
      cost_rep += cost;
      total_p += rp;
      total_c += rc2;
      wait_total += w;
      b_printf(&calls,
               ",{\"cache_write_tokens\":0,\"cached_prompt_tokens\":0,\"completion_tokens\":%lld,\"cost\":%.15g,"
               "\"kind\":\"repair\",\"model\":\"%s\",\"prompt_tokens\":%lld,\"provider_wait_us\":%lld,"
               "\"reasoning_tokens\":0,\"total_tokens\":%lld}",
               (long long)rc2, (double)cost / 1e12, MODELS[m].reported, (long long)rp, (long long)(w * 1000),
               (long long)(rp + rc2));
      b_printf(&pcalls,
               ",{\"attempts\":1,\"kind\":\"repair\",\"status\":200,\"timings\":{\"connect_us\":0,\"dns_us\":0,"
               "\"first_byte_us\":%lld,\"pretransfer_us\":%d,\"tls_us\":0,\"total_us\":%lld,\"wait_us\":%lld},"
               "\"wait_ms\":%.3f}",
               (long long)(w * 1000) - 200, rnd_int(40, 90), (long long)(w * 1000) - 20, (long long)(w * 1000), w);
    }
    total_ms = wait_total + 0.05 + rnd01() * 0.5;
    b_reset(&tok);
    b_printf(&tok, "{\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"total_tokens\":%lld,", (long long)total_p,
             (long long)total_c, (long long)(total_p + total_c));
    if (unpriced) b_printf(&tok, "\"estimated_cost\":null,");
    else b_printf(&tok, "\"estimated_cost\":%.15g,", (double)(cost_init + cost_rep) / 1e12);
    b_printf(&tok, "\"cache_write_tokens\":0,\"cached_prompt_tokens\":0,\"calls\":[");
    b_add(&tok, calls.p, calls.len);
    if (unpriced) b_printf(&tok, "],\"cost_source\":\"unpriced\",\"reasoning_tokens\":0}");
    else
      b_printf(&tok, "],\"cost_source\":\"local_estimate\",\"initial_cost\":%.15g,\"reasoning_tokens\":0,"
               "\"repair_cost\":%.15g}", (double)cost_init / 1e12, (double)cost_rep / 1e12);
    b_reset(&perf);
    b_printf(&perf, "{\"total_latency_ms\":%.3f,\"provider_latency_ms\":%.3f,\"model_identifier\":\"%s\","
             "\"attempts\":%d,\"calls\":[", total_ms, wait_total, MODELS[m].reported, 1 + repairs);
    b_add(&perf, pcalls.p, pcalls.len);
    b_printf(&perf, "],\"provider\":\"%s\",\"requested_model\":\"%s\"}", MODELS[m].provider, MODELS[m].requested);
    b_reset(&rep);
    score = repairs ? 70 - 15 * (repairs - 1) : 100 - 10 * (int)(rnd() % 2);
    b_printf(&rep, "{\"repair_count\":%d,\"repair_types\":[", repairs);
    for (k = 0; k < repairs; k++) b_printf(&rep, "%s\"%s\"", k ? "," : "", REPAIR_TYPES[(tpl + k) % 3]);
    b_printf(&rep, "],\"initial_validation_score\":%d,\"repair_log\":[", score);
    for (k = 1; k <= repairs; k++) {
      const char *slug = REPAIR_TYPES[(tpl + k - 1) % 3];
      int words = 85 + rnd_int(0, 30);
      b_printf(&rep,
               "%s{\"attempt\":%d,\"feedback\":\"Please revise your post. Fix these problems and keep everything "
               "else:\\n- The post has %d words; the limit on %s is 80.\",\"issues\":[{\"message\":\"The post has %d "
               "words; the limit on %s is 80.\",\"penalty\":30,\"slug\":\"%s\"}],\"issues_after\":[%s],"
               "\"score_after\":%d,\"score_before\":%d}",
               k > 1 ? "," : "", k, words, platform, words, platform, slug, k < repairs ? "\"length_exceeded\"" : "",
               k < repairs ? 70 : 100, k > 1 ? 70 : score);
    }
    b_printf(&rep, "],\"final_validation_score\":%d,\"stop_reason\":\"%s\"}", failed ? score : 100,
             failed ? "budget_exhausted" : "passed");

    {
      bs_text f[BS_NFIELDS];
      char seq[24];
      const char *status = failed ? "failed" : "completed";
      int k, b;
      if (bs_sha256_hex(&h, user.p, user.len, dig_user) != 0 ||
          bs_sha256_hex(&h, pool + coff, CONTENT_LEN, dig_content) != 0) {
        fprintf(stderr, "gen_rows: libcrypto failed\n");
        goto cleanup;
      }
      snprintf(seq, sizeof seq, "%ld", i + 1);
      f[BS_ID] = (bs_text){id, 26};
      f[BS_CHAIN_ID] = (bs_text){chain_id, 26};
      f[BS_CHAIN_SEQ] = (bs_text){seq, strlen(seq)};
      f[BS_PREV_HASH] = (bs_text){prev, 64};
      f[BS_CREATED_AT] = (bs_text){created, 23};
      f[BS_ORG_ID] = (bs_text){org, strlen(org)};
      f[BS_USER_ID] = (bs_text){usr, strlen(usr)};
      f[BS_PLATFORM] = (bs_text){platform, strlen(platform)};
      f[BS_TEMPLATE_ID] = (bs_text){tplname, strlen(tplname)};
      f[BS_TEMPLATE_VERSION] = (bs_text){ver, strlen(ver)};
      f[BS_STATUS] = (bs_text){status, strlen(status)};
      f[BS_ERROR] = (bs_text){failed ? REPAIR_ERROR : NULL, sizeof REPAIR_ERROR - 1};
      f[BS_REPLAY_OF] = (bs_text){NULL, 0};
      f[BS_REQUEST_PARAMS] = (bs_text){REQUEST_PARAMS, sizeof REQUEST_PARAMS - 1};
      f[BS_TOKEN_METRICS] = (bs_text){tok.p, tok.len};
      f[BS_PERFORMANCE_METRICS] = (bs_text){perf.p, perf.len};
      f[BS_REPAIR_METRICS] = (bs_text){rep.p, rep.len};
      f[BS_SYSTEM_SHA] = (bs_text){sys_digest[tpl], 64};
      f[BS_USER_SHA] = (bs_text){dig_user, 64};
      f[BS_CONTENT_SHA] = (bs_text){dig_content, 64};
      f[BS_DRAFTS_SHA] = (bs_text){NULL, 0};
      if (bs_record_hash(&h, f, record) != 0) {
        fprintf(stderr, "gen_rows: libcrypto failed\n");
        goto cleanup;
      }
      b = sqlite3_bind_text(ins, 1, id, 26, SQLITE_STATIC);
      for (k = 0; b == SQLITE_OK && k < 2; k++)
        b = sqlite3_bind_text(ins, 3 + k, f[BS_ORG_ID + k].p, (int)f[BS_ORG_ID + k].n, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 2, created, 23, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 5, platform, -1, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 6, tplname, -1, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 7, ver, -1, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 8, status, -1, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 9, pool + coff, CONTENT_LEN, SQLITE_STATIC);
      if (b == SQLITE_OK)
        b = failed ? sqlite3_bind_text(ins, 10, REPAIR_ERROR, -1, SQLITE_STATIC) : sqlite3_bind_null(ins, 10);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 11, system_prompt[tpl], SYS_LEN, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 12, user.p, (int)user.len, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 13, tok.p, (int)tok.len, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 14, perf.p, (int)perf.len, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 15, rep.p, (int)rep.len, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 16, REQUEST_PARAMS, -1, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_null(ins, 17);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 18, sys_digest[tpl], 64, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 19, dig_user, 64, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 20, dig_content, 64, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 21, chain_id, 26, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_int64(ins, 22, (sqlite3_int64)(i + 1));
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 23, prev, 64, SQLITE_STATIC);
      if (b == SQLITE_OK) b = sqlite3_bind_text(ins, 24, record, 64, SQLITE_STATIC);
      if (b != SQLITE_OK) {
        rc = die(db, "cannot bind");
        goto cleanup;
      }
    }
    if (sqlite3_step(ins) != SQLITE_DONE) {
      rc = die(db, "cannot insert");
      goto cleanup;
    }
    sqlite3_reset(ins);
    memcpy(prev, record, 65);
    if ((i % TXN_ROWS == TXN_ROWS - 1 || i == rows - 1) && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
      rc = die(db, "cannot commit");
      goto cleanup;
    }
  }
  t1 = mono_s();
  if (sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL) != SQLITE_OK) {
    rc = die(db, "cannot restore WAL mode");
    goto cleanup;
  }
  printf("rows=%ld seconds=%.6f rows_per_s=%.1f\n", rows, t1 - t0, (double)rows / (t1 - t0));
  rc = 0;
cleanup:
  sqlite3_finalize(ins);
  sqlite3_finalize(reg);
  sqlite3_close(db);
  bs_hasher_close(&h);
  free(user.p);
  free(tok.p);
  free(perf.p);
  free(rep.p);
  free(calls.p);
  free(pcalls.p);
  return rc;
}
