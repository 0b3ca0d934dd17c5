/* bench/floor.c — the C floor of one generation (issue 16.1): the work
 * genaudit's pipeline does for one generation with the shipped examples
 * (examples/templates, examples/rules) done by hand in plain C, timed per
 * generation, so bench/overhead.lua can print genaudit's own time as a ratio
 * to it (BENCH name=own_time_vs_floor).
 *
 *   floor TRACE DST PASSES RANK_FILE
 *
 * TRACE is written by bench/overhead.lua after it ran the generations through
 * genaudit (async persist): per generation the context's index (the bench's
 * ctx(i), rebuilt here), what the provider answered to each call (status,
 * libcurl's timings, the response bytes), the stopwatch readings genaudit
 * stored, and genaudit's own output for that generation (each request body,
 * the prompts, the content, the drafts and the three metric documents as
 * stored). DST is a freshly migrated genaudit store (same schema, CHECKs,
 * triggers); PASSES how many times the trace is replayed (the timing is per
 * generation over all passes); RANK_FILE lua/genaudit/data/tiktoken-o200k_base.json.
 *
 * Per generation, timed (CLOCK_MONOTONIC, from the context to the row queued):
 *   compose   the template's system and user prompts (the four templates'
 *             logic written out: placeholders, platform constraints, the
 *             knowledge/facts/tone sections, customer-story's sorted lines)
 *   request   each call's request JSON (exact escaping, UTF-8 checked) and the
 *             prompt's local token count (o200k_base, csrc/ga_bpe.c's counter
 *             linked in: the same C code genaudit counts with)
 *   parse     each response decoded (a JSON walk: content unescaped, id,
 *             model, finish_reason, usage) and its cost in integer
 *             picodollars from the served model's price entry
 *   validate  the three example rules (banned words, hashtag line, word
 *             limit) on each draft, the policy (min_score 100, budget 2), the
 *             feedback text and the repair call's conversation
 *   row       the documents (token_metrics, performance_metrics,
 *             repair_metrics, drafts, request_params), a 26-char id and
 *             created_at, and the row handed to the insert thread (a mutex
 *             + condition queue)
 * The insert thread (not in the per-generation time, as genaudit's writer
 * thread is not in the caller's) seals each row (bench/seal.h: payload
 * digests, chain position, record hash) and inserts batches of 100 rows per
 * transaction through the INSERT genaudit prepares.
 *
 * After the timed passes, each output of the first pass is compared byte for
 * byte with genaudit's. Prints one line:
 *   floor n=N median_us=M p99_us=P mean_us=A compose_us=.. request_us=..
 *     parse_us=.. validate_us=.. row_us=.. equal=E/T <field>=e/t ... rows=R
 * (the split: medians; equal: outputs identical to genaudit's, of all
 * compared). Exit status 0, 2 on a usage error, 1 with a message on stderr. */
#define _GNU_SOURCE
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>
#include "seal.h"
#include "../csrc/ga_private.h"

#define MAX_CALLS 3
#define BATCH 100
#define QUEUE_CAP 10000

/* ---- a byte buffer ---- */
typedef struct { char *p; size_t n, cap; } buf;

static void die_oom(void) {
  fprintf(stderr, "floor: out of memory\n");
  exit(1);
}
static void b_room(buf *b, size_t more) {
  if (b->n + more + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->n + more + 1) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) die_oom();
    b->cap = cap;
  }
}
static void b_add(buf *b, const char *s, size_t n) {
  b_room(b, n);
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
}
static void b_s(buf *b, const char *s) { b_add(b, s, strlen(s)); }
static void b_c(buf *b, char c) { b_add(b, &c, 1); }
static void b_int(buf *b, long long v) {
  char t[24];
  int n = snprintf(t, sizeof t, "%lld", v);
  b_add(b, t, (size_t)n);
}
/* the shortest text that reads back identically, ".0" kept for integral values */
static void b_double(buf *b, double d) {
  char t[40];
  int prec;
  for (prec = 15; prec <= 17; prec++) { /* %.15g is the shortest when it reads back */
    snprintf(t, sizeof t, "%.*g", prec, d);
    if (strtod(t, NULL) == d) break;
  }
  b_s(b, t);
  if (!strpbrk(t, ".eEn")) b_add(b, ".0", 2);
}
/* a number of a document that is a float under Lua 5.4: LuaJIT's encoder
 * writes an integral one as an integer (wait_ms of a wait of whole
 * milliseconds, about one call in a thousand) */
static int jit_style; /* LuaJIT's documents: integral doubles as integers, the initial score as a float */
static void b_num(buf *b, double d) {
  if (jit_style && d == floor(d) && fabs(d) < 1e15) b_int(b, (long long)d);
  else b_double(b, d);
}
/* whether s is valid UTF-8 (the encoder's check: the texts are the provider's) */
static int utf8_ok(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    size_t len, k;
    uint32_t cp;
    if (c < 0x80) { i++; continue; }
    if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07;
    else return 0;
    if (i + len > n) return 0;
    for (k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return 0;
      cp = cp << 6 | (s[i + k] & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
      return 0;
    i += len;
  }
  return 1;
}
/* a JSON string (the texts here are valid UTF-8: checked, else the row is refused) */
static void b_jstr(buf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  size_t i, run = 0;
  b_room(b, n + 2);
  b->p[b->n++] = '"';
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    const char *esc = NULL;
    char u[7];
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    b_add(b, s + run, i - run);
    switch (c) {
      case '"': esc = "\\\""; break;
      case '\\': esc = "\\\\"; break;
      case '\n': esc = "\\n"; break;
      case '\r': esc = "\\r"; break;
      case '\t': esc = "\\t"; break;
      case '\b': esc = "\\b"; break;
      case '\f': esc = "\\f"; break;
      default:
        u[0] = '\\', u[1] = 'u', u[2] = '0', u[3] = '0', u[4] = hex[c >> 4], u[5] = hex[c & 15], u[6] = 0;
        esc = u;
    }
    b_s(b, esc);
    run = i + 1;
  }
  b_add(b, s + run, n - run);
  b_c(b, '"');
}
static void b_jstrz(buf *b, const char *s) { b_jstr(b, s, strlen(s)); }

/* ---- the trace ---- */
typedef struct { char *p; size_t n; } text;
enum { X_SYSTEM, X_USER, X_CONTENT, X_DRAFTS, X_TOKEN, X_PERF, X_REPAIR, X_PARAMS, X_STATUS, X_REQ1, X_REQ2,
       X_REQ3, NX };
static const char *const XNAME[NX] = {"system", "user", "content", "drafts", "token_metrics",
                                       "performance_metrics", "repair_metrics", "request_params", "status",
                                       "request1", "request2", "request3"};
typedef struct {
  long status, wait_us, connect_us, dns_us, first_byte_us, pretransfer_us, tls_us, total_us;
  text body;
} tcall;
typedef struct {
  long ctx;
  int ncalls;
  tcall call[MAX_CALLS];
  text total_ms, provider_ms; /* the stopwatch readings genaudit stored, as text */
  text expect[NX];
} tgen;

static char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  char *p;
  long len;
  if (!f) return NULL;
  if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
    fclose(f);
    return NULL;
  }
  p = malloc((size_t)len + 1);
  if (p && fread(p, 1, (size_t)len, f) != (size_t)len) {
    free(p);
    p = NULL;
  }
  fclose(f);
  if (p) p[len] = '\0';
  *n = (size_t)len;
  return p;
}

/* The trace: lines "KEY args...\n", a text as "KEY LEN\n<LEN bytes>\n".
 *   P <in> <out>                   picodollars per prompt / completion token
 *   S <template> LEN               repair_metrics.scripts of a template (constant per template)
 *   E <0|1>                        1: genaudit ran under LuaJIT (two numbers are written differently)
 *   R LEN                          the rules' directory as the paths in repair_metrics.rules start
 *   G <ctx index> <ncalls>         a generation, then
 *   C <status> <wait> <connect> <dns> <first_byte> <pretransfer> <tls> <total> LEN   per call
 *   T LEN / W LEN                  total_latency_ms / provider_latency_ms as stored
 *   X <name> LEN                   genaudit's output */
typedef struct { char *p, *end; } reader;
static int rd_text(reader *r, long len, text *t) {
  if (len < 0 || r->end - r->p < len + 1) return -1;
  t->p = r->p;
  t->n = (size_t)len;
  r->p += len;
  if (*r->p != '\n') return -1;
  *r->p++ = '\0';
  return 0;
}
static char *rd_line(reader *r) {
  char *s = r->p, *nl = memchr(r->p, '\n', (size_t)(r->end - r->p));
  if (!nl) return NULL;
  *nl = '\0';
  r->p = nl + 1;
  return s;
}

static const char *const TEMPLATES[4] = {"launch-post", "weekly-tips", "event-invite", "customer-story"};
static const char *const PLATFORMS[3] = {"linkedin", "x", "instagram"};
static text scripts_of[4];
static text rules_dir; /* the rules' directory as the row names it, with the slash */
static long price_in, price_out;

static int load_trace(char *data, size_t n, tgen **out, long *count) {
  reader r = {data, data + n};
  tgen *g = NULL;
  long cap = 0, ng = 0;
  char *line;
  while (r.p < r.end && (line = rd_line(&r)) != NULL) {
    long a[9], len;
    char name[32];
    if (line[0] == 'P') {
      if (sscanf(line, "P %ld %ld", &price_in, &price_out) != 2) return -1;
    } else if (line[0] == 'S') {
      int k;
      if (sscanf(line, "S %31s %ld", name, &len) != 2) return -1;
      for (k = 0; k < 4 && strcmp(TEMPLATES[k], name) != 0; k++) {}
      if (k == 4 || rd_text(&r, len, &scripts_of[k]) != 0) return -1;
    } else if (line[0] == 'E') {
      if (sscanf(line, "E %d", &jit_style) != 1) return -1;
    } else if (line[0] == 'R') {
      if (sscanf(line, "R %ld", &len) != 1 || rd_text(&r, len, &rules_dir) != 0) return -1;
    } else if (line[0] == 'G') {
      if (ng == cap) {
        cap = cap ? cap * 2 : 1024;
        g = realloc(g, (size_t)cap * sizeof *g);
        if (!g) die_oom();
      }
      memset(&g[ng], 0, sizeof *g);
      if (sscanf(line, "G %ld", &g[ng].ctx) != 1) return -1;
      ng++;
    } else if (line[0] == 'C' && ng > 0) {
      tgen *x = &g[ng - 1];
      tcall *c;
      if (x->ncalls == MAX_CALLS) return -1;
      c = &x->call[x->ncalls++];
      if (sscanf(line, "C %ld %ld %ld %ld %ld %ld %ld %ld %ld", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6],
                 &a[7], &a[8]) != 9)
        return -1;
      c->status = a[0], c->wait_us = a[1], c->connect_us = a[2], c->dns_us = a[3], c->first_byte_us = a[4];
      c->pretransfer_us = a[5], c->tls_us = a[6], c->total_us = a[7];
      if (rd_text(&r, a[8], &c->body) != 0) return -1;
    } else if ((line[0] == 'T' || line[0] == 'W') && ng > 0) {
      if (sscanf(line + 1, "%ld", &len) != 1) return -1;
      if (rd_text(&r, len, line[0] == 'T' ? &g[ng - 1].total_ms : &g[ng - 1].provider_ms) != 0) return -1;
    } else if (line[0] == 'X' && ng > 0) {
      int k;
      if (sscanf(line, "X %31s %ld", name, &len) != 2) return -1;
      for (k = 0; k < NX && strcmp(XNAME[k], name) != 0; k++) {}
      if (k == NX || rd_text(&r, len, &g[ng - 1].expect[k]) != 0) return -1;
    } else if (line[0] != '\0') {
      return -1;
    }
  }
  *out = g;
  *count = ng;
  return 0;
}

/* ---- the context (bench/overhead.lua's ctx(i)) and the templates ---- */
typedef struct {
  long org_id, user_id;
  int tpl, platform;
  const char *tone; /* the override, else the business's */
} context;

static void make_ctx(long i, context *c) {
  c->tpl = (int)((i - 1) % 4);
  c->platform = (int)((i - 1) % 3);
  c->org_id = 100 + i % 3;
  c->user_id = i % 5 + 1;
  c->tone = i % 2 == 0 ? "playful" : "formal";
}
static const char BUSINESS[] = "Acme Anvils";
static const char *const KNOWLEDGE[2] = {"Acme Anvils was founded in 1998.", "Customers mention reliability most."};

static void bullets(buf *b, const char *const *items, int n) {
  int k;
  for (k = 0; k < n; k++) {
    if (k) b_c(b, '\n');
    b_s(b, "- ");
    b_s(b, items[k]);
  }
}
static void sections_tail(buf *u, const context *c, const char *const *facts, int nfacts) {
  b_s(u, "\n\nKnowledge:\n");
  bullets(u, KNOWLEDGE, 2);
  b_s(u, "\n\nFacts:\n");
  bullets(u, facts, nfacts);
  b_s(u, "\n\nTone: ");
  b_s(u, c->tone);
}
static int cmp_line(const void *a, const void *b) {
  const char *x = *(const char *const *)a, *y = *(const char *const *)b;
  int sx = x[0] == '*', sy = y[0] == '*';
  if (sx != sy) return sx - sy;
  return strcmp(x, y);
}

/* the four example templates: system and user prompts; the version */
static const char *compose(const context *c, buf *sys, buf *usr) {
  const char *pl = PLATFORMS[c->platform];
  sys->n = usr->n = 0;
  switch (c->tpl) {
    case 0: { /* launch-post */
      static const char *const base[3] = {"Stay under the platform's word limit.", "End with exactly one hashtag line.",
                                          "Never invent numbers that are not in the facts."};
      const char *extra[2];
      int ne = 0;
      const char *facts[1] = {"product: the Anvil 2"};
      if (!strcmp(pl, "linkedin")) extra[ne++] = "At most 80 words.";
      else if (!strcmp(pl, "x")) extra[ne++] = "At most 60 words.", extra[ne++] = "No more than two emojis.";
      else extra[ne++] = "At most 70 words.", extra[ne++] = "Open with a hook sentence.";
      b_s(sys, "You write for ");
      b_s(sys, BUSINESS);
      b_s(sys, "'s social channels: concrete, warm, no hype words.\n\nConstraints:\n");
      bullets(sys, base, 3);
      b_c(sys, '\n');
      bullets(sys, extra, ne);
      b_s(usr, "Write a launch post announcing the Anvil 2 for ");
      b_s(usr, BUSINESS);
      b_c(usr, '.');
      sections_tail(usr, c, facts, 1);
      return "3";
    }
    case 1: { /* weekly-tips */
      static const char *const base[3] = {"Give exactly three tips.", "Stay under the platform's word limit.",
                                          "End with one hashtag line."};
      const char *extra[1];
      int ne = 0;
      const char *facts[1] = {"topic: maintenance"};
      if (!strcmp(pl, "linkedin")) extra[ne++] = "At most 80 words.";
      else if (!strcmp(pl, "x")) extra[ne++] = "At most 60 words.";
      b_s(sys, "You are a patient expert who explains one practical idea at a time.\n\nConstraints:\n");
      bullets(sys, base, 3);
      if (ne) {
        b_c(sys, '\n');
        bullets(sys, extra, ne);
      }
      b_s(usr, "Write this week's tips post on maintenance for ");
      b_s(usr, BUSINESS);
      b_c(usr, '.');
      sections_tail(usr, c, facts, 1);
      return "1";
    }
    case 2: { /* event-invite */
      static const char *const base[2] = {"Mention the date and the place.", "End with one hashtag line."};
      const char *extra[1];
      int ne = 0;
      const char *facts[3] = {"date: April 12", "event: the spring open house", "place: Lyon"};
      if (!strcmp(pl, "linkedin")) extra[ne++] = "At most 80 words.";
      else if (!strcmp(pl, "instagram")) extra[ne++] = "At most 70 words.";
      b_s(sys, "You write friendly, specific invitations that make the date and place impossible to miss."
               "\n\nConstraints:\n");
      bullets(sys, base, 2);
      if (ne) {
        b_c(sys, '\n');
        bullets(sys, extra, ne);
      }
      b_s(usr, "Invite our audience to the spring open house on April 12 at Lyon.");
      sections_tail(usr, c, facts, 3);
      return "2";
    }
    default: { /* customer-story: its own user(): the lines sorted, the tone line last */
      static const char *const base[3] = {"At most 80 words.", "Quote the customer only with words from the facts.",
                                          "End with one hashtag."};
      char task[128];
      const char *lines[4];
      int k;
      b_s(sys, "You tell short customer stories: problem, what changed, the result.\n\nConstraints:\n");
      bullets(sys, base, 3);
      snprintf(task, sizeof task, "Tell the story of %s using %s.", "Dana's bakery", BUSINESS);
      lines[0] = task, lines[1] = "Facts you may use:", lines[2] = "* customer = Dana's bakery";
      lines[3] = "* result = 30% fewer returns";
      qsort(lines, 4, sizeof lines[0], cmp_line);
      for (k = 0; k < 4; k++) {
        if (k) b_c(usr, '\n');
        b_s(usr, lines[k]);
      }
      b_s(usr, "\nTone: ");
      b_s(usr, c->tone);
      return "1";
    }
  }
}

/* ---- the request and the local prompt count ---- */
typedef struct { const char *role; const char *p; size_t n; } msg;

static int request_json(buf *b, const msg *m, int nm) {
  int k;
  b->n = 0;
  b_s(b, "{\"max_tokens\":400,\"messages\":[");
  for (k = 0; k < nm; k++) {
    if (!utf8_ok((const unsigned char *)m[k].p, m[k].n)) return -1;
    if (k) b_c(b, ',');
    b_s(b, "{\"content\":");
    b_jstr(b, m[k].p, m[k].n);
    b_s(b, ",\"role\":");
    b_jstrz(b, m[k].role);
    b_c(b, '}');
  }
  b_s(b, "],\"model\":\"gpt-4o-mini\",\"temperature\":0.7}");
  return 0;
}

static long count_messages(const ga_bpe *enc, const msg *m, int nm) {
  long total = 3; /* the reply's priming */
  int k;
  for (k = 0; k < nm; k++) {
    size_t c1, c2;
    if (ga_bpe_count(enc, m[k].role, strlen(m[k].role), &c1) != 0 || ga_bpe_count(enc, m[k].p, m[k].n, &c2) != 0)
      return -1;
    total += 3 + (long)c1 + (long)c2;
  }
  return total;
}

/* ---- the response: a JSON walk ---- */
typedef struct {
  buf content;
  char id[128], model[128], finish[32];
  long prompt, completion, total, cached, reasoning;
} answer;

typedef struct { const char *p, *end; } jcur;
static void j_ws(jcur *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\t' || *j->p == '\r')) j->p++;
}
/* a string: raw bounds (escapes left in) into s and n; unescaped into out when out */
static int j_str(jcur *j, const char **s, size_t *n, buf *out) {
  const char *q;
  j_ws(j);
  if (j->p >= j->end || *j->p != '"') return -1;
  q = ++j->p;
  while (j->p < j->end && *j->p != '"') j->p += *j->p == '\\' ? 2 : 1;
  if (j->p >= j->end) return -1;
  *s = q;
  *n = (size_t)(j->p - q);
  j->p++;
  if (out) {
    const char *r = q, *e = q + *n;
    out->n = 0;
    while (r < e) {
      const char *bs = memchr(r, '\\', (size_t)(e - r));
      if (!bs) bs = e;
      b_add(out, r, (size_t)(bs - r));
      if (bs == e) break;
      r = bs + 2;
      switch (bs[1]) {
        case 'n': b_c(out, '\n'); break;
        case 't': b_c(out, '\t'); break;
        case 'r': b_c(out, '\r'); break;
        case 'b': b_c(out, '\b'); break;
        case 'f': b_c(out, '\f'); break;
        case 'u': {
          unsigned v;
          char h[5];
          if (e - r < 4) return -1;
          memcpy(h, r, 4), h[4] = 0;
          v = (unsigned)strtoul(h, NULL, 16);
          r += 4;
          if (v >= 0xD800 && v <= 0xDBFF && e - r >= 6 && r[0] == '\\' && r[1] == 'u') {
            unsigned lo;
            memcpy(h, r + 2, 4);
            lo = (unsigned)strtoul(h, NULL, 16);
            v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
            r += 6;
          }
          if (v < 0x80) b_c(out, (char)v);
          else if (v < 0x800) b_c(out, (char)(0xC0 | v >> 6)), b_c(out, (char)(0x80 | (v & 63)));
          else if (v < 0x10000)
            b_c(out, (char)(0xE0 | v >> 12)), b_c(out, (char)(0x80 | (v >> 6 & 63))), b_c(out, (char)(0x80 | (v & 63)));
          else
            b_c(out, (char)(0xF0 | v >> 18)), b_c(out, (char)(0x80 | (v >> 12 & 63))),
                b_c(out, (char)(0x80 | (v >> 6 & 63))), b_c(out, (char)(0x80 | (v & 63)));
          break;
        }
        default: b_c(out, bs[1]);
      }
    }
  }
  return 0;
}
static int j_skip(jcur *j);
static int j_skip_container(jcur *j, char open, char close) {
  const char *s;
  size_t n;
  j->p++;
  j_ws(j);
  if (j->p < j->end && *j->p == close) return j->p++, 0;
  for (;;) {
    if (open == '{') {
      if (j_str(j, &s, &n, NULL) != 0) return -1;
      j_ws(j);
      if (j->p >= j->end || *j->p++ != ':') return -1;
    }
    if (j_skip(j) != 0) return -1;
    j_ws(j);
    if (j->p >= j->end) return -1;
    if (*j->p == ',') { j->p++; continue; }
    if (*j->p == close) return j->p++, 0;
    return -1;
  }
}
static int j_skip(jcur *j) {
  const char *s;
  size_t n;
  j_ws(j);
  if (j->p >= j->end) return -1;
  if (*j->p == '{') return j_skip_container(j, '{', '}');
  if (*j->p == '[') return j_skip_container(j, '[', ']');
  if (*j->p == '"') return j_str(j, &s, &n, NULL);
  while (j->p < j->end && (isalnum((unsigned char)*j->p) || *j->p == '-' || *j->p == '+' || *j->p == '.')) j->p++;
  return 0;
}
static int j_long(jcur *j, long *v) {
  char *e;
  j_ws(j);
  *v = strtol(j->p, &e, 10);
  if (e == j->p) return -1;
  j->p = e;
  return 0;
}
/* walks an object: cb(key) for each member, positioned at the value; cb
 * consumes it (returns 1) or leaves it to be skipped (0), -1 on error */
typedef int (*member_fn)(jcur *j, const char *k, size_t kn, void *ud);
static int j_object(jcur *j, member_fn cb, void *ud) {
  j_ws(j);
  if (j->p >= j->end || *j->p != '{') return -1;
  j->p++;
  j_ws(j);
  if (j->p < j->end && *j->p == '}') return j->p++, 0;
  for (;;) {
    const char *k;
    size_t kn;
    int r;
    if (j_str(j, &k, &kn, NULL) != 0) return -1;
    j_ws(j);
    if (j->p >= j->end || *j->p++ != ':') return -1;
    r = cb(j, k, kn, ud);
    if (r < 0 || (r == 0 && j_skip(j) != 0)) return -1;
    j_ws(j);
    if (j->p >= j->end) return -1;
    if (*j->p == ',') { j->p++; continue; }
    if (*j->p == '}') return j->p++, 0;
    return -1;
  }
}
#define KEY(s) (kn == sizeof(s) - 1 && memcmp(k, s, kn) == 0)
static int copy_str(jcur *j, char *dst, size_t cap) {
  const char *s;
  size_t n;
  if (j_str(j, &s, &n, NULL) != 0 || n >= cap || memchr(s, '\\', n)) return -1;
  memcpy(dst, s, n);
  dst[n] = '\0';
  return 1;
}
static int on_details(jcur *j, const char *k, size_t kn, void *ud) {
  answer *a = ud;
  if (KEY("cached_tokens")) return j_long(j, &a->cached) == 0 ? 1 : -1;
  if (KEY("reasoning_tokens")) return j_long(j, &a->reasoning) == 0 ? 1 : -1;
  return 0;
}
static int on_usage(jcur *j, const char *k, size_t kn, void *ud) {
  answer *a = ud;
  if (KEY("prompt_tokens")) return j_long(j, &a->prompt) == 0 ? 1 : -1;
  if (KEY("completion_tokens")) return j_long(j, &a->completion) == 0 ? 1 : -1;
  if (KEY("total_tokens")) return j_long(j, &a->total) == 0 ? 1 : -1;
  if (KEY("prompt_tokens_details") || KEY("completion_tokens_details")) return j_object(j, on_details, a) == 0 ? 1 : -1;
  return 0;
}
static int on_message(jcur *j, const char *k, size_t kn, void *ud) {
  answer *a = ud;
  const char *s;
  size_t n;
  if (KEY("content")) return j_str(j, &s, &n, &a->content) == 0 ? 1 : -1;
  return 0;
}
static int on_choice(jcur *j, const char *k, size_t kn, void *ud) {
  answer *a = ud;
  if (KEY("message")) return j_object(j, on_message, a) == 0 ? 1 : -1;
  if (KEY("finish_reason")) return copy_str(j, a->finish, sizeof a->finish);
  return 0;
}
static int on_top(jcur *j, const char *k, size_t kn, void *ud) {
  answer *a = ud;
  if (KEY("id")) return copy_str(j, a->id, sizeof a->id);
  if (KEY("model")) return copy_str(j, a->model, sizeof a->model);
  if (KEY("usage")) return j_object(j, on_usage, a) == 0 ? 1 : -1;
  if (KEY("choices")) { /* the first choice */
    j_ws(j);
    if (j->p >= j->end || *j->p != '[') return -1;
    j->p++;
    if (j_object(j, on_choice, a) != 0) return -1;
    j_ws(j);
    while (j->p < j->end && *j->p == ',') {
      j->p++;
      if (j_skip(j) != 0) return -1;
      j_ws(j);
    }
    if (j->p >= j->end || *j->p != ']') return -1;
    j->p++;
    return 1;
  }
  return 0;
}
static int parse_answer(const text *body, answer *a) {
  jcur j = {body->p, body->p + body->n};
  a->content.n = 0;
  a->id[0] = a->model[0] = a->finish[0] = '\0';
  a->prompt = a->completion = a->total = a->cached = a->reasoning = -1;
  if (j_object(&j, on_top, a) != 0) return -1;
  if (a->prompt < 0 || a->completion < 0 || !a->content.p || !utf8_ok((unsigned char *)a->content.p, a->content.n))
    return -1;
  if (a->total < 0) a->total = a->prompt + a->completion;
  if (a->cached < 0) a->cached = 0;
  if (a->reasoning < 0) a->reasoning = 0;
  return 0;
}

/* ---- the rules and the policy ---- */
typedef struct { const char *slug; char msg[160]; int penalty; } issue;
typedef struct { int n, score; issue is[8]; } verdict;

static const char *const BANNED[4] = {"synergy", "revolutionary", "game-changer", "disrupt"};
static const int LIMITS[3] = {80, 60, 70};

static void validate(const char *d, size_t n, int platform, verdict *v, buf *lower, int fired[3]) {
  size_t i, words = 0;
  int k, pen = 0;
  v->n = 0;
  /* banned_word */
  lower->n = 0;
  b_room(lower, n);
  for (i = 0; i < n; i++) lower->p[i] = (char)tolower((unsigned char)d[i]);
  lower->p[n] = '\0';
  lower->n = n;
  for (k = 0; k < 4; k++)
    if (memmem(lower->p, n, BANNED[k], strlen(BANNED[k]))) {
      issue *x = &v->is[v->n++];
      x->slug = "banned_word", x->penalty = 10;
      snprintf(x->msg, sizeof x->msg, "Do not use the word '%s'.", BANNED[k]);
      fired[0] = 1;
    }
  /* missing_hashtag: the last non-blank line has "#" and an alphanumeric */
  {
    size_t e = n, s;
    int ok = 0;
    while (e > 0 && isspace((unsigned char)d[e - 1])) e--;
    s = e;
    while (s > 0 && d[s - 1] != '\n') s--;
    for (i = s; i + 1 < e; i++)
      if (d[i] == '#' && isalnum((unsigned char)d[i + 1])) { ok = 1; break; }
    if (!ok) {
      issue *x = &v->is[v->n++];
      x->slug = "missing_hashtag", x->penalty = 15;
      snprintf(x->msg, sizeof x->msg, "End the post with one hashtag line.");
      fired[1] = 1;
    }
  }
  /* length_exceeded */
  for (i = 0; i < n;) {
    while (i < n && isspace((unsigned char)d[i])) i++;
    if (i < n) words++;
    while (i < n && !isspace((unsigned char)d[i])) i++;
  }
  if ((int)words > LIMITS[platform]) {
    issue *x = &v->is[v->n++];
    x->slug = "length_exceeded", x->penalty = 30;
    snprintf(x->msg, sizeof x->msg, "The post has %zu words; the limit on %s is %d.", words, PLATFORMS[platform],
             LIMITS[platform]);
    fired[2] = 1;
  }
  for (k = 0; k < v->n; k++) pen += v->is[k].penalty;
  v->score = pen > 100 ? 0 : 100 - pen;
}
static void issues_json(buf *b, const verdict *v) {
  int k;
  b_c(b, '[');
  for (k = 0; k < v->n; k++) {
    if (k) b_c(b, ',');
    b_s(b, "{\"message\":");
    b_jstrz(b, v->is[k].msg);
    b_s(b, ",\"penalty\":");
    b_int(b, v->is[k].penalty);
    b_s(b, ",\"slug\":");
    b_jstrz(b, v->is[k].slug);
    b_c(b, '}');
  }
  b_c(b, ']');
}

/* ---- the queue to the insert thread ---- */
typedef struct row {
  struct row *next;
  long org_id, user_id;
  int platform, tpl;
  const char *version, *status;
  char id[26], created[24];
  buf col[7]; /* system, user, content, drafts, token_metrics, performance_metrics, repair_metrics */
  buf params, error;
} row;
enum { R_SYSTEM, R_USER, R_CONTENT, R_DRAFTS, R_TOKEN, R_PERF, R_REPAIR };

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv, room;
  row *head, *tail;
  long queued, written, failed;
  int closing;
  sqlite3 *db;
} queue;

static void row_free(row *r) {
  int k;
  for (k = 0; k < 7; k++) free(r->col[k].p);
  free(r->params.p);
  free(r->error.p);
  free(r);
}

static const char SQL_INSERT[] =
    "INSERT INTO generation_snapshots (id, created_at, org_id, user_id, platform, template_id,"
    " template_version, status, content, error, final_system_prompt, final_user_prompt,"
    " token_metrics, performance_metrics, repair_metrics, request_params, replay_of, drafts,"
    " final_system_prompt_sha256, final_user_prompt_sha256, content_sha256, drafts_sha256,"
    " chain_id, chain_seq, prev_hash, record_hash)"
    " VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,"
    "?19,?20,?21,?22,?23,?24,?25,?26)";

static int insert_row(sqlite3_stmt *st, bs_hasher *h, row *r, const char chain_id[27], long seq, char prev[65]) {
  char dig[4][65], record[65], seqs[24], org[24], usr[24];
  bs_text f[BS_NFIELDS];
  const buf *pay[4] = {&r->col[R_SYSTEM], &r->col[R_USER], &r->col[R_CONTENT], &r->col[R_DRAFTS]};
  int k, b;
  if (bs_system_digest(h, pay[0]->p, pay[0]->n, dig[0]) != 0) return -1;
  for (k = 1; k < 4; k++)
    if (bs_sha256_hex(h, pay[k]->p, pay[k]->n, dig[k]) != 0) return -1;
  snprintf(seqs, sizeof seqs, "%ld", seq);
  snprintf(org, sizeof org, "%ld", r->org_id);
  snprintf(usr, sizeof usr, "%ld", r->user_id);
  memset(f, 0, sizeof f);
  f[BS_ID] = (bs_text){r->id, 26};
  f[BS_CHAIN_ID] = (bs_text){chain_id, 26};
  f[BS_CHAIN_SEQ] = (bs_text){seqs, strlen(seqs)};
  f[BS_PREV_HASH] = (bs_text){prev, 64};
  f[BS_CREATED_AT] = (bs_text){r->created, 23};
  f[BS_ORG_ID] = (bs_text){org, strlen(org)};
  f[BS_USER_ID] = (bs_text){usr, strlen(usr)};
  f[BS_PLATFORM] = (bs_text){PLATFORMS[r->platform], strlen(PLATFORMS[r->platform])};
  f[BS_TEMPLATE_ID] = (bs_text){TEMPLATES[r->tpl], strlen(TEMPLATES[r->tpl])};
  f[BS_TEMPLATE_VERSION] = (bs_text){r->version, strlen(r->version)};
  f[BS_STATUS] = (bs_text){r->status, strlen(r->status)};
  f[BS_ERROR] = (bs_text){r->error.n ? r->error.p : NULL, r->error.n};
  f[BS_REQUEST_PARAMS] = (bs_text){r->params.p, r->params.n};
  f[BS_TOKEN_METRICS] = (bs_text){r->col[R_TOKEN].p, r->col[R_TOKEN].n};
  f[BS_PERFORMANCE_METRICS] = (bs_text){r->col[R_PERF].p, r->col[R_PERF].n};
  f[BS_REPAIR_METRICS] = (bs_text){r->col[R_REPAIR].p, r->col[R_REPAIR].n};
  for (k = 0; k < 4; k++) f[BS_SYSTEM_SHA + k] = (bs_text){dig[k], 64};
  if (bs_record_hash(h, f, record) != 0) return -1;
  b = sqlite3_bind_text(st, 1, r->id, 26, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 2, r->created, 23, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_int64(st, 3, r->org_id);
  if (b == SQLITE_OK) b = sqlite3_bind_int64(st, 4, r->user_id);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 5, PLATFORMS[r->platform], -1, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 6, TEMPLATES[r->tpl], -1, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 7, r->version, -1, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 8, r->status, -1, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 9, r->col[R_CONTENT].p, (int)r->col[R_CONTENT].n, SQLITE_STATIC);
  if (b == SQLITE_OK)
    b = r->error.n ? sqlite3_bind_text(st, 10, r->error.p, (int)r->error.n, SQLITE_STATIC) : sqlite3_bind_null(st, 10);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 11, r->col[R_SYSTEM].p, (int)r->col[R_SYSTEM].n, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 12, r->col[R_USER].p, (int)r->col[R_USER].n, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 13, r->col[R_TOKEN].p, (int)r->col[R_TOKEN].n, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 14, r->col[R_PERF].p, (int)r->col[R_PERF].n, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 15, r->col[R_REPAIR].p, (int)r->col[R_REPAIR].n, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 16, r->params.p, (int)r->params.n, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_null(st, 17);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 18, r->col[R_DRAFTS].p, (int)r->col[R_DRAFTS].n, SQLITE_STATIC);
  for (k = 0; b == SQLITE_OK && k < 4; k++) b = sqlite3_bind_text(st, 19 + k, dig[k], 64, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 23, chain_id, 26, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_int64(st, 24, seq);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 25, prev, 64, SQLITE_STATIC);
  if (b == SQLITE_OK) b = sqlite3_bind_text(st, 26, record, 64, SQLITE_STATIC);
  if (b != SQLITE_OK || sqlite3_step(st) != SQLITE_DONE) {
    fprintf(stderr, "floor: insert: %s\n", sqlite3_errmsg(sqlite3_db_handle(st)));
    sqlite3_reset(st);
    return -1;
  }
  sqlite3_reset(st);
  memcpy(prev, record, 65);
  return 0;
}

static void *writer_main(void *arg) {
  queue *q = arg;
  sqlite3_stmt *st = NULL;
  bs_hasher h = {0};
  char chain_id[27], prev[65];
  long seq = 0;
  int registered = 0;
  if (bs_hasher_open(&h) != 0 ||
      sqlite3_prepare_v3(q->db, SQL_INSERT, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
    fprintf(stderr, "floor: cannot prepare the insert: %s\n", sqlite3_errmsg(q->db));
    q->failed = -1;
  }
  bs_make_id(chain_id, bs_now_ms(), (uint64_t)getpid() << 20);
  chain_id[26] = '\0';
  memcpy(prev, BS_ZERO_HASH, 65);
  for (;;) {
    row *batch, *r;
    int n = 0;
    pthread_mutex_lock(&q->mu);
    while (!q->head && !q->closing) pthread_cond_wait(&q->cv, &q->mu);
    if (!q->head) {
      pthread_mutex_unlock(&q->mu);
      break;
    }
    batch = q->head; /* up to BATCH rows */
    for (r = batch; r->next && n < BATCH - 1; r = r->next) n++;
    q->head = r->next;
    if (!q->head) q->tail = NULL;
    r->next = NULL;
    q->queued -= n + 1;
    pthread_cond_signal(&q->room);
    pthread_mutex_unlock(&q->mu);
    if (st && sqlite3_exec(q->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK) {
      int bad = 0;
      if (!registered) {
        sqlite3_stmt *c = NULL;
        bad = sqlite3_prepare_v2(q->db, "INSERT INTO chains (chain_id, host, pid) VALUES (?1, 'floor', ?2)", -1, &c,
                                 NULL) != SQLITE_OK ||
              sqlite3_bind_text(c, 1, chain_id, 26, SQLITE_STATIC) != SQLITE_OK ||
              sqlite3_bind_int64(c, 2, getpid()) != SQLITE_OK || sqlite3_step(c) != SQLITE_DONE;
        sqlite3_finalize(c);
        registered = !bad;
      }
      for (r = batch; r && !bad; r = r->next) bad = insert_row(st, &h, r, chain_id, ++seq, prev) != 0;
      if (bad || sqlite3_exec(q->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
        q->failed += n + 1;
      } else {
        q->written += n + 1;
      }
    } else {
      q->failed += n + 1;
    }
    while (batch) {
      r = batch->next;
      row_free(batch);
      batch = r;
    }
  }
  sqlite3_finalize(st);
  bs_hasher_close(&h);
  return NULL;
}

static void enqueue(queue *q, row *r) {
  pthread_mutex_lock(&q->mu);
  while (q->queued >= QUEUE_CAP) pthread_cond_wait(&q->room, &q->mu);
  if (q->tail) q->tail->next = r;
  else q->head = r;
  q->tail = r;
  q->queued++;
  pthread_cond_signal(&q->cv);
  pthread_mutex_unlock(&q->mu);
}

/* ---- one generation ---- */
static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
enum { T_COMPOSE, T_REQUEST, T_PARSE, T_VALIDATE, T_ROW, NT };

typedef struct {
  buf sys, usr, req[MAX_CALLS], lower, feedback, draft[MAX_CALLS];
  answer ans[MAX_CALLS];
  verdict ver[MAX_CALLS];
  long local_in[MAX_CALLS], cost[MAX_CALLS];
} scratch;

static row *generate(const tgen *g, const ga_bpe *enc, scratch *s, uint64_t *counter, double t[NT]) {
  context c;
  row *r;
  const char *version;
  int64_t t0 = now_ns(), t1;
  int calls = 0, k, fired[3] = {0, 0, 0}, repairs = 0;
  long pt = 0, ct = 0, tt = 0, cost = 0, initial = 0, local_sum = 0;
  const char *stop = "passed";
  msg m[4];
  buf *b;
  make_ctx(g->ctx, &c);
  version = compose(&c, &s->sys, &s->usr);
  t1 = now_ns();
  t[T_COMPOSE] += (double)(t1 - t0);
  m[0] = (msg){"system", s->sys.p, s->sys.n};
  m[1] = (msg){"user", s->usr.p, s->usr.n};
  for (;;) {
    int nm = calls == 0 ? 2 : 4;
    answer *a = &s->ans[calls];
    int64_t ta = now_ns(), tb, tc, td;
    if (calls >= g->ncalls) return NULL; /* the trace has no answer for this call */
    if (request_json(&s->req[calls], m, nm) != 0 || (s->local_in[calls] = count_messages(enc, m, nm)) < 0) return NULL;
    tb = now_ns();
    if (parse_answer(&g->call[calls].body, a) != 0) return NULL;
    s->cost[calls] = a->prompt * price_in + a->completion * price_out;
    pt += a->prompt, ct += a->completion, tt += a->total, cost += s->cost[calls];
    if (calls == 0) initial = s->cost[calls];
    local_sum += s->local_in[calls];
    tc = now_ns();
    s->draft[calls].n = 0;
    b_add(&s->draft[calls], a->content.p, a->content.n);
    validate(a->content.p, a->content.n, c.platform, &s->ver[calls], &s->lower, fired);
    calls++;
    if (s->ver[calls - 1].n == 0 || s->ver[calls - 1].score >= 100) {
      td = now_ns();
      t[T_REQUEST] += (double)(tb - ta), t[T_PARSE] += (double)(tc - tb), t[T_VALIDATE] += (double)(td - tc);
      break;
    }
    if (repairs == 2) {
      stop = "budget_exhausted";
      td = now_ns();
      t[T_REQUEST] += (double)(tb - ta), t[T_PARSE] += (double)(tc - tb), t[T_VALIDATE] += (double)(td - tc);
      break;
    }
    s->feedback.n = 0;
    b_s(&s->feedback, "Please revise your post. Fix these problems and keep everything else:");
    for (k = 0; k < s->ver[calls - 1].n; k++) {
      b_s(&s->feedback, "\n- ");
      b_s(&s->feedback, s->ver[calls - 1].is[k].msg);
    }
    m[2] = (msg){"assistant", s->draft[calls - 1].p, s->draft[calls - 1].n};
    m[3] = (msg){"user", s->feedback.p, s->feedback.n};
    repairs++;
    td = now_ns();
    t[T_REQUEST] += (double)(tb - ta), t[T_PARSE] += (double)(tc - tb), t[T_VALIDATE] += (double)(td - tc);
  }
  t0 = now_ns();
  r = calloc(1, sizeof *r);
  if (!r) die_oom();
  r->org_id = c.org_id, r->user_id = c.user_id, r->platform = c.platform, r->tpl = c.tpl, r->version = version;
  r->status = strcmp(stop, "passed") == 0 ? "completed" : "failed";
  b_add(&r->col[R_SYSTEM], s->sys.p, s->sys.n);
  b_add(&r->col[R_USER], s->usr.p, s->usr.n);
  b_add(&r->col[R_CONTENT], s->draft[calls - 1].p, s->draft[calls - 1].n);
  b_s(&r->params, "{\"max_tokens\":400,\"temperature\":0.7}");
  /* drafts */
  b = &r->col[R_DRAFTS];
  b_c(b, '[');
  for (k = 0; k < calls; k++) {
    if (k) b_c(b, ',');
    b_jstr(b, s->draft[k].p, s->draft[k].n);
  }
  b_c(b, ']');
  /* token_metrics */
  b = &r->col[R_TOKEN];
  b_s(b, "{\"prompt_tokens\":");
  b_int(b, pt);
  b_s(b, ",\"completion_tokens\":");
  b_int(b, ct);
  b_s(b, ",\"total_tokens\":");
  b_int(b, tt);
  b_s(b, ",\"estimated_cost\":");
  b_num(b, (double)cost / 1e12);
  b_s(b, ",\"cache_write_tokens\":0,\"cached_prompt_tokens\":0,\"calls\":[");
  for (k = 0; k < calls; k++) {
    const answer *a = &s->ans[k];
    if (k) b_c(b, ',');
    b_s(b, "{\"cache_write_tokens\":0,\"cached_prompt_tokens\":");
    b_int(b, a->cached);
    b_s(b, ",\"completion_tokens\":");
    b_int(b, a->completion);
    b_s(b, ",\"cost\":");
    b_num(b, (double)s->cost[k] / 1e12);
    b_s(b, ",\"cost_picousd\":");
    b_int(b, s->cost[k]);
    b_s(b, ",\"cost_source\":\"local_estimate\",\"kind\":");
    b_s(b, k == 0 ? "\"initial\"" : "\"repair\"");
    b_s(b, ",\"local_input_tokens\":");
    b_int(b, s->local_in[k]);
    b_s(b, ",\"model\":");
    b_jstrz(b, a->model);
    b_s(b, ",\"prompt_tokens\":");
    b_int(b, a->prompt);
    b_s(b, ",\"provider_wait_us\":");
    b_int(b, g->call[k].wait_us);
    b_s(b, ",\"reasoning_tokens\":");
    b_int(b, a->reasoning);
    b_s(b, ",\"requested_model\":\"gpt-4o-mini\",\"served_model\":");
    b_jstrz(b, a->model);
    b_s(b, ",\"total_tokens\":");
    b_int(b, a->total);
    b_s(b, ",\"usage_source\":\"provider\"}");
  }
  b_s(b, "],\"cost_source\":\"local_estimate\",\"estimated_cost_picousd\":");
  b_int(b, cost);
  b_s(b, ",\"initial_cost\":");
  b_num(b, (double)initial / 1e12);
  b_s(b, ",\"local_input_tokens\":");
  b_int(b, local_sum);
  b_s(b, ",\"reasoning_tokens\":0,\"repair_cost\":");
  if (jit_style && cost == initial) b_int(b, 0);
  else b_double(b, (double)(cost - initial) / 1e12);
  b_s(b, ",\"usage_source\":\"provider\"}");
  /* performance_metrics */
  b = &r->col[R_PERF];
  b_s(b, "{\"total_latency_ms\":");
  b_double(b, strtod(g->total_ms.p, NULL)); /* a REAL column: ".0" kept under LuaJIT too */
  b_s(b, ",\"provider_latency_ms\":");
  b_double(b, strtod(g->provider_ms.p, NULL));
  b_s(b, ",\"model_identifier\":");
  b_jstrz(b, s->ans[calls - 1].model);
  b_s(b, ",\"attempts\":");
  b_int(b, calls);
  b_s(b, ",\"calls\":[");
  for (k = 0; k < calls; k++) {
    const tcall *x = &g->call[k];
    if (k) b_c(b, ',');
    b_s(b, "{\"attempts\":1,\"finish_reason\":");
    b_jstrz(b, s->ans[k].finish);
    b_s(b, ",\"kind\":");
    b_s(b, k == 0 ? "\"initial\"" : "\"repair\"");
    b_s(b, ",\"response_id\":");
    b_jstrz(b, s->ans[k].id);
    b_s(b, ",\"status\":");
    b_int(b, x->status);
    b_s(b, ",\"timings\":{\"connect_us\":");
    b_int(b, x->connect_us);
    b_s(b, ",\"dns_us\":");
    b_int(b, x->dns_us);
    b_s(b, ",\"first_byte_us\":");
    b_int(b, x->first_byte_us);
    b_s(b, ",\"pretransfer_us\":");
    b_int(b, x->pretransfer_us);
    b_s(b, ",\"tls_us\":");
    b_int(b, x->tls_us);
    b_s(b, ",\"total_us\":");
    b_int(b, x->total_us);
    b_s(b, ",\"wait_us\":");
    b_int(b, x->wait_us);
    b_s(b, "},\"tries\":[{\"status\":");
    b_int(b, x->status);
    b_s(b, ",\"wait_ms\":");
    b_num(b, (double)x->wait_us / 1000);
    b_s(b, "}],\"wait_ms\":");
    b_num(b, (double)x->wait_us / 1000);
    b_c(b, '}');
  }
  b_s(b, "],\"provider\":\"openai\",\"requested_model\":\"gpt-4o-mini\",\"verify_tls\":true}");
  /* repair_metrics */
  b = &r->col[R_REPAIR];
  b_s(b, "{\"repair_count\":");
  b_int(b, repairs);
  b_s(b, ",\"repair_types\":[");
  {
    const char *seen[8];
    int ns = 0, d, i, j;
    for (d = 0; d < repairs; d++)
      for (i = 0; i < s->ver[d].n; i++) {
        for (j = 0; j < ns && strcmp(seen[j], s->ver[d].is[i].slug) != 0; j++) {}
        if (j == ns && ns < 8) {
          if (ns) b_c(b, ',');
          seen[ns++] = s->ver[d].is[i].slug;
          b_jstrz(b, s->ver[d].is[i].slug);
        }
      }
  }
  b_s(b, "],\"initial_validation_score\":");
  if (jit_style) b_double(b, (double)s->ver[0].score);
  else b_int(b, s->ver[0].score);
  b_s(b, ",\"repair_log\":[");
  for (k = 0; k < repairs; k++) {
    int i;
    if (k) b_c(b, ',');
    b_s(b, "{\"attempt\":");
    b_int(b, k + 1);
    b_s(b, ",\"feedback\":");
    {
      /* the feedback of attempt k, as sent (the request's last message) */
      buf fb = {0};
      b_s(&fb, "Please revise your post. Fix these problems and keep everything else:");
      for (i = 0; i < s->ver[k].n; i++) {
        b_s(&fb, "\n- ");
        b_s(&fb, s->ver[k].is[i].msg);
      }
      b_jstr(b, fb.p, fb.n);
      free(fb.p);
    }
    b_s(b, ",\"issues\":");
    issues_json(b, &s->ver[k]);
    b_s(b, ",\"issues_after\":[");
    for (i = 0; i < s->ver[k + 1].n; i++) {
      if (i) b_c(b, ',');
      b_jstrz(b, s->ver[k + 1].is[i].slug);
    }
    b_s(b, "],\"score_after\":");
    b_int(b, s->ver[k + 1].score);
    b_s(b, ",\"score_before\":");
    b_int(b, s->ver[k].score);
    b_c(b, '}');
  }
  b_s(b, "],\"drafts\":[");
  for (k = 0; k < calls; k++) {
    if (k) b_c(b, ',');
    b_s(b, "{\"bytes\":");
    b_int(b, (long long)s->draft[k].n);
    b_s(b, ",\"issues\":");
    issues_json(b, &s->ver[k]);
    b_s(b, ",\"score\":");
    b_int(b, s->ver[k].score);
    b_c(b, '}');
  }
  b_s(b, "],\"final_validation_score\":");
  b_int(b, s->ver[calls - 1].score);
  b_s(b, ",\"on_rule_error\":\"count\",\"rules\":[");
  {
    static const char *const path[3] = {"banned_words.lua", "hashtag.lua", "length.lua"};
    static const char *const slug[3] = {"banned_word", "missing_hashtag", "length_exceeded"};
    int fire[3] = {0, 0, 0};
    int i, d;
    for (d = 0; d < calls; d++)
      for (i = 0; i < s->ver[d].n; i++)
        for (k = 0; k < 3; k++)
          if (!strcmp(s->ver[d].is[i].slug, slug[k])) fire[k]++;
    for (k = 0; k < 3; k++) {
      int drafts_fired = 0;
      for (d = 0; d < calls; d++) {
        int f = 0;
        for (i = 0; i < s->ver[d].n; i++) f |= !strcmp(s->ver[d].is[i].slug, slug[k]);
        drafts_fired += f;
      }
      if (k) b_c(b, ',');
      b_s(b, "{\"errors\":0,\"fired\":");
      b_int(b, drafts_fired);
      b_s(b, ",\"path\":\"");
      b_add(b, rules_dir.p, rules_dir.n);
      b_s(b, path[k]);
      b_s(b, "\",\"runs\":");
      b_int(b, calls);
      b_s(b, ",\"slug\":\"");
      b_s(b, slug[k]);
      b_s(b, "\",\"timeouts\":0}");
    }
    (void)fire;
  }
  b_s(b, "],\"script_errors\":[],\"scripts\":");
  b_add(b, scripts_of[c.tpl].p, scripts_of[c.tpl].n);
  b_s(b, ",\"stop_reason\":\"");
  b_s(b, stop);
  b_s(b, "\"}");
  if (strcmp(stop, "passed") != 0) {
    b_s(&r->error, "REPAIR_EXHAUSTED: draft still fails validation after 2 repair(s)");
  }
  {
    int64_t ms = bs_now_ms();
    bs_make_id(r->id, ms, ++*counter);
    bs_make_time(r->created, ms);
  }
  /* keep the request bodies for the comparison */
  for (k = calls; k < MAX_CALLS; k++) s->req[k].n = 0;
  t1 = now_ns();
  t[T_ROW] += (double)(t1 - t0);
  (void)fired;
  return r;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}
static double pct(double *v, long n, double p) {
  long rank;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  rank = (long)ceil(p / 100 * (double)n);
  if (rank < 1) rank = 1;
  return v[rank - 1];
}

int main(int argc, char **argv) {
  size_t tn, rn;
  char *trace, *ranks, err[256];
  tgen *gens = NULL;
  long ng = 0, passes, i, p, n = 0, equal[NX] = {0}, compared[NX] = {0}, eq = 0, cmp = 0;
  ga_bpe *enc;
  queue q;
  pthread_t th;
  scratch s;
  double *tot, *split[NT], sum = 0;
  uint64_t counter = 0;
  int k;
  if (argc != 5 || (passes = atol(argv[3])) <= 0) {
    fprintf(stderr, "usage: floor TRACE DST PASSES RANK_FILE\n");
    return 2;
  }
  trace = slurp(argv[1], &tn);
  if (!trace || load_trace(trace, tn, &gens, &ng) != 0 || ng == 0) {
    fprintf(stderr, "floor: cannot read the trace %s\n", argv[1]);
    return 1;
  }
  ranks = slurp(argv[4], &rn);
  if (!ranks || !(enc = ga_bpe_load("o200k_base", ranks, rn, err, sizeof err))) {
    fprintf(stderr, "floor: cannot load %s: %s\n", argv[4], ranks ? err : "unreadable");
    return 1;
  }
  free(ranks);
  memset(&q, 0, sizeof q);
  memset(&s, 0, sizeof s);
  pthread_mutex_init(&q.mu, NULL);
  pthread_cond_init(&q.cv, NULL);
  pthread_cond_init(&q.room, NULL);
  if (sqlite3_open_v2(argv[2], &q.db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK ||
      sqlite3_exec(q.db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_exec(q.db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_busy_timeout(q.db, 5000) != SQLITE_OK) {
    fprintf(stderr, "floor: cannot open %s: %s\n", argv[2], sqlite3_errmsg(q.db));
    return 1;
  }
  if (pthread_create(&th, NULL, writer_main, &q) != 0) {
    fprintf(stderr, "floor: cannot start the insert thread\n");
    return 1;
  }
  tot = malloc(sizeof(double) * (size_t)(ng * passes));
  for (k = 0; k < NT; k++) split[k] = malloc(sizeof(double) * (size_t)(ng * passes));
  if (!tot) die_oom();
  for (p = 0; p < passes; p++)
    for (i = 0; i < ng; i++) {
      double t[NT] = {0};
      int64_t t0 = now_ns(), t1;
      row *r = generate(&gens[i], enc, &s, &counter, t);
      if (!r) {
        fprintf(stderr, "floor: generation %ld (ctx %ld) does not follow the trace\n", i + 1, gens[i].ctx);
        return 1;
      }
      if (p == 0) { /* compare before the row is handed over */
        const text *x = gens[i].expect;
        const buf *mine[NX] = {&r->col[R_SYSTEM], &r->col[R_USER], &r->col[R_CONTENT], &r->col[R_DRAFTS],
                               &r->col[R_TOKEN], &r->col[R_PERF], &r->col[R_REPAIR], &r->params, NULL,
                               &s.req[0], &s.req[1], &s.req[2]};
        for (k = 0; k < NX; k++) {
          const char *mp;
          size_t mn;
          if (!x[k].p) continue;
          if (k == X_STATUS) mp = r->status, mn = strlen(r->status);
          else mp = mine[k]->p ? mine[k]->p : "", mn = mine[k]->n;
          compared[k]++;
          if (mn == x[k].n && memcmp(mp, x[k].p, mn) == 0) equal[k]++;
          else if (getenv("FLOOR_DIFF") && compared[k] - equal[k] <= 2)
            fprintf(stderr, "floor: %s of generation %ld differs:\n  genaudit: %.*s\n  floor:    %.*s\n", XNAME[k],
                    i + 1, (int)x[k].n, x[k].p, (int)mn, mp);
        }
      }
      enqueue(&q, r);
      t1 = now_ns();
      tot[n] = (double)(t1 - t0) / 1000;
      for (k = 0; k < NT; k++) split[k][n] = t[k] / 1000;
      sum += tot[n];
      n++;
    }
  pthread_mutex_lock(&q.mu);
  q.closing = 1;
  pthread_cond_signal(&q.cv);
  pthread_mutex_unlock(&q.mu);
  pthread_join(th, NULL);
  for (k = 0; k < NX; k++) eq += equal[k], cmp += compared[k];
  printf("floor n=%ld mean_us=%.2f", n, sum / (double)n);
  printf(" median_us=%.2f", pct(tot, n, 50));
  printf(" p99_us=%.2f", pct(tot, n, 99));
  {
    static const char *const tn_[NT] = {"compose", "request", "parse", "validate", "row"};
    for (k = 0; k < NT; k++) printf(" %s_us=%.2f", tn_[k], pct(split[k], n, 50));
  }
  printf(" equal=%ld/%ld", eq, cmp);
  for (k = 0; k < NX; k++)
    if (compared[k]) printf(" %s=%ld/%ld", XNAME[k], equal[k], compared[k]);
  printf(" rows=%ld failed=%ld\n", q.written, q.failed);
  ga_bpe_free(enc);
  sqlite3_close(q.db);
  free(tot);
  for (k = 0; k < NT; k++) free(split[k]);
  for (k = 0; k < MAX_CALLS; k++) {
    free(s.req[k].p), free(s.draft[k].p), free(s.ans[k].content.p);
  }
  free(s.sys.p), free(s.usr.p), free(s.lower.p), free(s.feedback.p);
  free(gens);
  free(trace);
  return q.failed ? 1 : 0;
}
