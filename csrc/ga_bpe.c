/* ga_bpe.c — exact byte-pair encoding for OpenAI's o200k_base and cl100k_base
 * (the genaudit.bpe userdata behind lua/genaudit/tokens.lua).
 *
 * One loaded encoding is an immutable object: the rank table (token bytes ->
 * rank, an open-addressing hash over one byte arena), the reverse table
 * (rank -> bytes), the compiled, JIT-ed PCRE2 patterns and which
 * pre-tokeniser is its default (the scanner's tables are static data, not
 * per object). Nothing in it changes after ga_bpe_load: every count/encode
 * call allocates its own scratch (match data, JIT stack when needed, merge
 * arrays), so one object can be shared by every caller of a Lua state.
 *
 * Text goes through three steps, as in tiktoken's encode_ordinary:
 *   1. ill-formed UTF-8 is repaired: every maximal ill-formed subpart becomes
 *      U+FFFD (the WHATWG/Unicode "maximal subpart" rule, what a JavaScript
 *      TextDecoder — and so the npm tiktoken package — does with the same
 *      bytes; valid UTF-8 passes through untouched);
 *   2. the encoding's pre-tokenisation regex splits the text into pieces
 *      (tiktoken's patterns, with \s spelled out as Unicode White_Space:
 *      PCRE2's \s under UCP also matches U+180E, Rust's does not). Two
 *      pre-tokenisers give the same pieces: the hand-written scanner
 *      (ga_bpe_scan.c, tables derived from PCRE2 by tools/bpe-tables.c),
 *      the default because it is faster (README "Token counting"), and
 *      the patterns run by PCRE2 with JIT (csrc/ga_bpe_pat.h), selectable
 *      per object (bpe_load's third argument) or per call (*_with);
 *   3. each piece is one token when it is in the rank table, else merged by
 *      BPE: repeatedly the adjacent pair whose concatenation has the lowest
 *      rank (leftmost on ties) is merged. Short pieces use tiktoken's O(n^2)
 *      scan; long pieces a binary heap with lazy invalidation, O(n log n),
 *      with the same result (the heap orders by (rank, start)).
 * Special-token text (<|endoftext|>) is ordinary text; decode() knows the
 * special ids. */
#define _GNU_SOURCE /* memmem */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include "ga_private.h"
#include "ga_bpe_pat.h"

#define BPE_MT "genaudit.bpe"
#define BPE_IDS_MT "genaudit.bpe_ids" /* a malloc'd id array held during encode */
#define NO_RANK UINT32_MAX
#define SMALL_PIECE 128 /* pieces up to this many bytes use the quadratic scan */

/* Each pattern twice: "full" with the Unicode 16 additions, and "fast"
 * without them (PCRE2's JIT runs it about twice as fast: the long range
 * lists are gone). They match identically on text holding none of the added
 * scalar values (u16_ranges), which is all but the rarest text: bpe_run
 * picks "fast" after checking. */
static const char PAT_CL100K_FULL[] = PAT_CL100K(GA_U16_L, GA_U16_N);
static const char PAT_CL100K_FAST[] = PAT_CL100K("", "");
static const char PAT_O200K_FULL[] = PAT_O200K(GA_U16_L, GA_U16_N, GA_U16_U, GA_U16_W);
static const char PAT_O200K_FAST[] = PAT_O200K("", "", "", "");
static const uint32_t u16_ranges[][2] = {GA_U16_RANGES};
#define N_U16_RANGES (sizeof u16_ranges / sizeof u16_ranges[0])

/* Whether valid UTF-8 s[0..n) holds a scalar value of u16_ranges. */
static int has_u16(const unsigned char *s, size_t n) {
  size_t i = 0;
  const uint32_t lo0 = u16_ranges[0][0];
  while (i < n) {
    unsigned char c = s[i];
    uint32_t cp;
    size_t k;
    if (c < 0x80) { i++; continue; }
    if (c < 0xE0) { cp = (uint32_t)(c & 0x1F) << 6 | (s[i + 1] & 0x3F); k = 2; }
    else if (c < 0xF0) { cp = (uint32_t)(c & 0x0F) << 12 | (uint32_t)(s[i + 1] & 0x3F) << 6 | (s[i + 2] & 0x3F); k = 3; }
    else {
      cp = (uint32_t)(c & 0x07) << 18 | (uint32_t)(s[i + 1] & 0x3F) << 12 | (uint32_t)(s[i + 2] & 0x3F) << 6 |
           (s[i + 3] & 0x3F);
      k = 4;
    }
    i += k;
    if (cp >= lo0) {
      size_t a = 0, b = N_U16_RANGES; /* the first range whose end >= cp */
      while (a < b) {
        size_t m = (a + b) / 2;
        if (u16_ranges[m][1] < cp) a = m + 1;
        else b = m;
      }
      if (a < N_U16_RANGES && u16_ranges[a][0] <= cp) return 1;
    }
  }
  return 0;
}

typedef struct { const char *text; uint32_t rank; } special_tok;
static const special_tok SPECIAL_CL100K[] = {{"<|endoftext|>", 100257}, {"<|fim_prefix|>", 100258},
                                             {"<|fim_middle|>", 100259}, {"<|fim_suffix|>", 100260},
                                             {"<|endofprompt|>", 100276}, {NULL, 0}};
static const special_tok SPECIAL_O200K[] = {{"<|endoftext|>", 199999}, {"<|endofprompt|>", 200018}, {NULL, 0}};

struct ga_bpe {
  char name[16];
  uint32_t nranks;         /* 1 + the largest mergeable rank */
  uint32_t *off;           /* rank -> offset in arena (nranks + 1 entries) */
  unsigned char *arena;    /* every token's bytes, in rank order */
  uint64_t *table;         /* (hash << 32 | rank); empty slots are UINT64_MAX */
  uint32_t mask;           /* table size - 1 */
  const special_tok *special;
  pcre2_code *re;          /* the full pattern */
  pcre2_code *re_fast;     /* the same without the Unicode 16 additions */
  int o200k;               /* which pattern the scanner follows */
  int pretok;              /* the default pre-tokeniser (GA_PRETOK_*) */
  size_t mem;              /* bytes held by this object */
};

static inline uint32_t bpe_hash(const unsigned char *s, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, s + i, 8);
    h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
    h ^= h >> 32;
  }
  if (i < n) {
    uint64_t w = 0;
    memcpy(&w, s + i, n - i);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 29;
  }
  h *= 0x9E3779B97F4A7C15ULL;
  return (uint32_t)(h >> 32);
}

/* The rank of s[0..n), or NO_RANK. */
static inline uint32_t bpe_rank(const ga_bpe *e, const unsigned char *s, size_t n) {
  uint32_t h = bpe_hash(s, n);
  uint32_t i = h & e->mask;
  for (;;) {
    uint64_t v = e->table[i];
    if (v == UINT64_MAX) return NO_RANK;
    if ((uint32_t)(v >> 32) == h) {
      uint32_t r = (uint32_t)v;
      uint32_t o = e->off[r];
      if (e->off[r + 1] - o == n && memcmp(e->arena + o, s, n) == 0) return r;
    }
    i = (i + 1) & e->mask;
  }
}

static int b64val(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* Decodes one base64 word s[0..n) (padded) into out; returns bytes or -1. */
static long b64word(const char *s, size_t n, unsigned char *out) {
  size_t i, o = 0;
  uint32_t acc = 0;
  int bits = 0;
  if (n == 0 || n % 4 != 0) return -1;
  for (i = 0; i < n; i++) {
    int v;
    if (s[i] == '=') {
      if (i + 2 < n) return -1;
      break;
    }
    v = b64val((unsigned char)s[i]);
    if (v < 0) return -1;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (unsigned char)(acc >> bits);
    }
  }
  return (long)o;
}

void ga_bpe_free(ga_bpe *e) {
  if (!e) return;
  free(e->off);
  free(e->arena);
  free(e->table);
  if (e->re) pcre2_code_free(e->re);
  if (e->re_fast) pcre2_code_free(e->re_fast);
  free(e);
}

size_t ga_bpe_memory(const ga_bpe *e) { return e->mem; }
const char *ga_bpe_name(const ga_bpe *e) { return e->name; }

/* Parses the "bpe_ranks" string of the npm tiktoken package's
 * encoders/<name>.json: "! <rank> <b64> <b64> ..." where each word is the
 * next rank and "! <n>" restarts the numbering at n. */
ga_bpe *ga_bpe_load(const char *name, const char *json, size_t n, char *err, size_t errlen) {
  const char *pat, *pat_fast;
  const special_tok *special;
  const char *p, *end, *key = "\"bpe_ranks\":\"";
  ga_bpe *e;
  size_t words = 0, i, arena_cap, arena_len = 0, tsize;
  uint32_t rank = 0, maxrank = 0, *wrank = NULL;
  const char **wpos = NULL;
  uint32_t *wlen = NULL;
  int errcode;
  PCRE2_SIZE erroff;

  if (strcmp(name, "cl100k_base") == 0) { pat = PAT_CL100K_FULL; pat_fast = PAT_CL100K_FAST; special = SPECIAL_CL100K; }
  else if (strcmp(name, "o200k_base") == 0) { pat = PAT_O200K_FULL; pat_fast = PAT_O200K_FAST; special = SPECIAL_O200K; }
  else { snprintf(err, errlen, "no such encoding '%s' (o200k_base, cl100k_base)", name); return NULL; }

  p = memmem(json, n, key, strlen(key));
  if (!p) { snprintf(err, errlen, "no \"bpe_ranks\" string in the rank file"); return NULL; }
  p += strlen(key);
  end = memchr(p, '"', n - (size_t)(p - json));
  if (!end || memchr(p, '\\', (size_t)(end - p))) {
    snprintf(err, errlen, "malformed \"bpe_ranks\" string in the rank file");
    return NULL;
  }
  for (const char *q = p; q < end; q++)
    if (*q == ' ' && q + 1 < end && q[1] != ' ') words++;
  words++;
  wpos = malloc(words * sizeof *wpos);
  wlen = malloc(words * sizeof *wlen);
  wrank = malloc(words * sizeof *wrank);
  e = calloc(1, sizeof *e);
  if (!wpos || !wlen || !wrank || !e) goto oom;
  snprintf(e->name, sizeof e->name, "%s", name);
  e->special = special;
  e->o200k = special == SPECIAL_O200K;
  e->pretok = GA_PRETOK_SCANNER;

  /* pass 1: split the words, assign ranks */
  {
    size_t nw = 0;
    const char *q = p;
    while (q < end) {
      const char *w = q;
      while (q < end && *q != ' ') q++;
      if (q > w) {
        if (q - w == 1 && *w == '!') {
          /* "! <n>" */
          const char *d;
          unsigned long v = 0;
          while (q < end && *q == ' ') q++;
          d = q;
          while (q < end && *q >= '0' && *q <= '9') { v = v * 10 + (unsigned long)(*q - '0'); q++; }
          if (q == d || v > 10000000UL) { snprintf(err, errlen, "bad rank marker in the rank file"); goto fail; }
          rank = (uint32_t)v;
        } else {
          if (nw >= words) { snprintf(err, errlen, "rank file miscounted"); goto fail; }
          wpos[nw] = w;
          wlen[nw] = (uint32_t)(q - w);
          wrank[nw] = rank;
          if (rank > maxrank) maxrank = rank;
          rank++;
          nw++;
        }
      }
      while (q < end && *q == ' ') q++;
    }
    words = nw;
  }
  if (words < 256) { snprintf(err, errlen, "rank file holds %zu tokens", words); goto fail; }

  e->nranks = maxrank + 1;
  arena_cap = 0;
  for (i = 0; i < words; i++) arena_cap += wlen[i] / 4 * 3;
  e->off = calloc((size_t)e->nranks + 1, sizeof *e->off);
  e->arena = malloc(arena_cap + 1);
  for (tsize = 1; tsize < words * 2; tsize <<= 1) {}
  e->table = malloc(tsize * sizeof *e->table);
  if (!e->off || !e->arena || !e->table) goto oom;
  memset(e->table, 0xFF, tsize * sizeof *e->table);
  e->mask = (uint32_t)(tsize - 1);

  /* pass 2: decode into the arena in rank order (ranks must be increasing) */
  {
    uint32_t r = 0;
    for (i = 0; i < words; i++) {
      long got;
      if (i > 0 && wrank[i] <= wrank[i - 1]) { snprintf(err, errlen, "ranks not increasing in the rank file"); goto fail; }
      while (r <= wrank[i]) e->off[r++] = (uint32_t)arena_len; /* gaps: empty */
      got = b64word(wpos[i], wlen[i], e->arena + arena_len);
      if (got <= 0 || got > 0xFFFF) { snprintf(err, errlen, "bad base64 token in the rank file"); goto fail; }
      arena_len += (size_t)got;
    }
    while (r <= e->nranks) e->off[r++] = (uint32_t)arena_len;
  }
  /* pass 3: the hash table */
  for (i = 0; i < words; i++) {
    uint32_t r = wrank[i], o = e->off[r], len = e->off[r + 1] - o;
    uint32_t h = bpe_hash(e->arena + o, len), s = h & e->mask;
    if (bpe_rank(e, e->arena + o, len) != NO_RANK) { snprintf(err, errlen, "duplicate token in the rank file"); goto fail; }
    while (e->table[s] != UINT64_MAX) s = (s + 1) & e->mask;
    e->table[s] = ((uint64_t)h << 32) | r;
  }
  for (i = 0; i < 256; i++) {
    unsigned char b = (unsigned char)i;
    if (bpe_rank(e, &b, 1) == NO_RANK) { snprintf(err, errlen, "byte %zu has no rank", i); goto fail; }
  }

  for (int v = 0; v < 2; v++) {
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(v ? pat_fast : pat), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                   &errcode, &erroff, NULL);
    if (!re) {
      PCRE2_UCHAR msg[120];
      pcre2_get_error_message(errcode, msg, sizeof msg);
      snprintf(err, errlen, "pattern: %s at %zu", (const char *)msg, (size_t)erroff);
      goto fail;
    }
    if (v) e->re_fast = re;
    else e->re = re;
    /* without JIT (a platform PCRE2 cannot JIT for) the interpreter gives the same matches */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
  }
  {
    size_t resize = 0, fastsize = 0, jit = 0, jitfast = 0; /* compiled patterns and their JIT code */
    pcre2_pattern_info(e->re, PCRE2_INFO_SIZE, &resize);
    pcre2_pattern_info(e->re_fast, PCRE2_INFO_SIZE, &fastsize);
    pcre2_pattern_info(e->re, PCRE2_INFO_JITSIZE, &jit);
    pcre2_pattern_info(e->re_fast, PCRE2_INFO_JITSIZE, &jitfast);
    e->mem = sizeof *e + ((size_t)e->nranks + 1) * sizeof *e->off + arena_cap + 1 + tsize * sizeof *e->table +
             resize + fastsize + jit + jitfast;
  }
  free(wpos);
  free(wlen);
  free(wrank);
  return e;
oom:
  snprintf(err, errlen, "out of memory");
fail:
  free(wpos);
  free(wlen);
  free(wrank);
  ga_bpe_free(e);
  return NULL;
}

/* ---- UTF-8 repair ---- */

/* Length of the valid UTF-8 sequence at s[0..n), or 0 with *skip = the
 * length of the maximal ill-formed subpart (at least 1). */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t *skip) {
  unsigned char c = s[0];
  size_t need, i;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) need = 1;
  else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    *skip = 1;
    return 0;
  }
  for (i = 1; i <= need; i++) {
    unsigned char lo_i = i == 1 ? lo : 0x80, hi_i = i == 1 ? hi : 0xBF;
    if (i >= n || s[i] < lo_i || s[i] > hi_i) {
      *skip = i;
      return 0;
    }
  }
  return need + 1;
}

/* s[0..n) with every maximal ill-formed subpart replaced by U+FFFD, in b;
 * returns 1 when a copy was needed (b holds it), 0 when s is valid. */
static int utf8_repair(const unsigned char *s, size_t n, ga_buf *b) {
  size_t i = 0, last = 0, skip = 0;
  int copied = 0;
  while (i < n) {
    size_t k;
    if (s[i] < 0x80) { i++; continue; }
    k = utf8_seq(s + i, n - i, &skip);
    if (k) { i += k; continue; }
    if (!copied) { ga_buf_init(b); copied = 1; }
    if (i > last) ga_buf_add(b, (const char *)s + last, i - last);
    ga_buf_add(b, "\xEF\xBF\xBD", 3);
    i += skip;
    last = i;
  }
  if (copied && n > last) ga_buf_add(b, (const char *)s + last, n - last);
  return copied;
}

/* ---- BPE merge of one piece ---- */

typedef struct {
  uint32_t *buf;   /* scratch, grown on demand */
  size_t cap;      /* in uint32_t units */
  uint32_t *ids;   /* output ids when encoding (NULL when counting) */
  size_t nids, idcap;
  size_t *pairs;   /* output pieces (ga_bpe_pieces) */
  size_t npairs, paircap;
  size_t count;
  int oom;
} bpe_out;

static int out_reserve(bpe_out *o, size_t need) {
  if (o->cap >= need) return 0;
  size_t cap = o->cap ? o->cap : 1024;
  while (cap < need) cap *= 2;
  uint32_t *nb = realloc(o->buf, cap * sizeof *nb);
  if (!nb) { o->oom = 1; return -1; }
  o->buf = nb;
  o->cap = cap;
  return 0;
}

static void out_id(bpe_out *o, uint32_t id) {
  o->count++;
  if (!o->ids && o->idcap == 0) return; /* counting only */
  if (o->nids == o->idcap) {
    size_t cap = o->idcap * 2;
    uint32_t *ni = realloc(o->ids, cap * sizeof *ni);
    if (!ni) { o->oom = 1; return; }
    o->ids = ni;
    o->idcap = cap;
  }
  o->ids[o->nids++] = id;
}

/* tiktoken's scan: parts as start offsets, each with the rank of the pair
 * it starts (NO_RANK for the last part and the end marker). */
static void merge_small(const ga_bpe *e, const unsigned char *s, size_t n, bpe_out *o, int want_ids) {
  uint32_t pos[SMALL_PIECE + 1], rk[SMALL_PIECE + 1];
  size_t m = n + 1, i; /* m entries: n parts + the end */
  for (i = 0; i <= n; i++) {
    pos[i] = (uint32_t)i;
    rk[i] = i + 1 < n ? bpe_rank(e, s + i, 2) : NO_RANK;
  }
  for (;;) {
    uint32_t best = NO_RANK;
    size_t bi = 0;
    for (i = 0; i + 2 < m; i++)
      if (rk[i] < best) { best = rk[i]; bi = i; }
    if (best == NO_RANK) break;
    /* merge part bi with bi+1: drop entry bi+1 */
    memmove(pos + bi + 1, pos + bi + 2, (m - bi - 2) * sizeof *pos);
    memmove(rk + bi + 1, rk + bi + 2, (m - bi - 2) * sizeof *rk);
    m--;
    rk[bi] = bi + 2 < m ? bpe_rank(e, s + pos[bi], pos[bi + 2] - pos[bi]) : NO_RANK;
    if (bi > 0) rk[bi - 1] = bpe_rank(e, s + pos[bi - 1], pos[bi + 1] - pos[bi - 1]);
  }
  if (!want_ids) { o->count += m - 1; return; }
  for (i = 0; i + 1 < m; i++) out_id(o, bpe_rank(e, s + pos[i], pos[i + 1] - pos[i]));
}

/* The heap version for long pieces: nodes are byte offsets; next/prev link
 * the live parts; heap entries (rank, node) packed into 64 bits so that
 * ordering them orders by rank, then by position (tiktoken's leftmost). */
static void heap_push(uint64_t *h, size_t *hn, uint64_t v) {
  size_t i = (*hn)++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (h[p] <= v) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = v;
}
static uint64_t heap_pop(uint64_t *h, size_t *hn) {
  uint64_t top = h[0], v = h[--(*hn)];
  size_t i = 0, n = *hn;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && h[c + 1] < h[c]) c++;
    if (h[c] >= v) break;
    h[i] = h[c];
    i = c;
  }
  if (n) h[i] = v;
  return top;
}

static void merge_large(const ga_bpe *e, const unsigned char *s, size_t n, bpe_out *o, int want_ids) {
  /* scratch: next[n+1], prev[n+1], prk[n+1] as uint32; heap as uint64 (3n) */
  size_t need = 3 * (n + 1) + 2 * (3 * n + 2) + 1, i, hn = 0;
  uint32_t *next, *prev, *prk;
  uint64_t *heap;
  if (out_reserve(o, need) != 0) return;
  next = o->buf;
  prev = next + n + 1;
  prk = prev + n + 1;
  heap = (uint64_t *)(void *)(prk + n + 1);
  if (((uintptr_t)heap) % 8) heap = (uint64_t *)(void *)((uint32_t *)heap + 1);
  for (i = 0; i <= n; i++) {
    next[i] = (uint32_t)(i + 1);
    prev[i] = (uint32_t)(i ? i - 1 : UINT32_MAX);
  }
  /* node n is the end sentinel */
  for (i = 0; i < n; i++) {
    prk[i] = i + 1 < n ? bpe_rank(e, s + i, 2) : NO_RANK;
    if (prk[i] != NO_RANK) heap_push(heap, &hn, ((uint64_t)prk[i] << 32) | i);
  }
  prk[n] = NO_RANK;
  while (hn) {
    uint64_t top = heap_pop(heap, &hn);
    uint32_t r = (uint32_t)(top >> 32), a = (uint32_t)top, b, c;
    if (prk[a] != r) continue; /* stale (also covers dead nodes: prk set to NO_RANK) */
    b = next[a];
    c = next[b];
    /* merge a and b */
    next[a] = c;
    prev[c] = a;
    prk[b] = NO_RANK;
    prk[a] = c < n ? bpe_rank(e, s + a, next[c] - a) : NO_RANK;
    if (prk[a] != NO_RANK) heap_push(heap, &hn, ((uint64_t)prk[a] << 32) | a);
    if (prev[a] != UINT32_MAX) {
      uint32_t z = prev[a];
      prk[z] = bpe_rank(e, s + z, c - z);
      if (prk[z] != NO_RANK) heap_push(heap, &hn, ((uint64_t)prk[z] << 32) | z);
    }
  }
  for (i = 0; i < n; i = next[i]) {
    if (want_ids) out_id(o, bpe_rank(e, s + i, next[i] - i));
    else o->count++;
  }
}

static void bpe_piece(const ga_bpe *e, const unsigned char *s, size_t n, bpe_out *o, int want_ids) {
  uint32_t r = bpe_rank(e, s, n);
  if (r != NO_RANK) {
    if (want_ids) out_id(o, r);
    else o->count++;
    return;
  }
  if (n <= SMALL_PIECE) merge_small(e, s, n, o, want_ids);
  else merge_large(e, s, n, o, want_ids);
}

#define WANT_COUNT 0
#define WANT_IDS 1
#define WANT_PIECES 2
#define WANT_NPIECES 3 /* only the number of pieces: the pre-tokeniser alone */

/* One piece s[a..b) of the repaired text base: merged (count, ids) or recorded (pieces). */
static void bpe_emit(const ga_bpe *e, const unsigned char *base, size_t a, size_t b, bpe_out *o, int want) {
  if (want == WANT_NPIECES) { o->count++; return; }
  if (want != WANT_PIECES) { bpe_piece(e, base + a, b - a, o, want == WANT_IDS); return; }
  if (o->npairs + 2 > o->paircap) {
    size_t cap = o->paircap ? o->paircap * 2 : 256;
    size_t *np = realloc(o->pairs, cap * sizeof *np);
    if (!np) { o->oom = 1; return; }
    o->pairs = np;
    o->paircap = cap;
  }
  o->pairs[o->npairs++] = a;
  o->pairs[o->npairs++] = b;
}

/* The pieces of valid UTF-8 s[0..n) by the hand-written scanner. */
static int scan_run(const ga_bpe *e, const unsigned char *s, size_t n, bpe_out *o, int want) {
  size_t p = 0;
  while (p < n) {
    size_t a, b = ga_bpe_scan_next(e->o200k, s, n, p, &a);
    if (a >= n) break;
    bpe_emit(e, s, a, b, o, want);
    if (o->oom) return -1;
    p = b;
  }
  return 0;
}

/* The pieces of valid UTF-8 s[0..n) by PCRE2. Returns 0, -1 (out of
 * memory), or a negative PCRE2 error code below -1. */
static int pcre2_run(const ga_bpe *e, const unsigned char *s, size_t n, bpe_out *o, int want) {
  pcre2_match_data *md = NULL;
  pcre2_match_context *mc = NULL;
  pcre2_jit_stack *js = NULL;
  PCRE2_SIZE start = 0;
  const pcre2_code *re = has_u16(s, n) ? e->re : e->re_fast;
  int rc = 0;
  md = pcre2_match_data_create(1, NULL);
  mc = pcre2_match_context_create(NULL);
  if (!md || !mc) { rc = -1; goto done; }
  pcre2_set_match_limit(mc, UINT32_MAX);
  pcre2_set_depth_limit(mc, UINT32_MAX);
  while (start < n) {
    int m = pcre2_match(re, s, n, start, PCRE2_NO_UTF_CHECK, md, mc);
    if (m == PCRE2_ERROR_JIT_STACKLIMIT && !js) {
      js = pcre2_jit_stack_create(64 * 1024, 512 * 1024 * 1024, NULL);
      if (!js) { rc = -1; goto done; }
      pcre2_jit_stack_assign(mc, NULL, js);
      continue;
    }
    if (m == PCRE2_ERROR_NOMATCH) break;
    if (m < 0) { rc = m < -1 ? m : -2; goto done; }
    {
      PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
      if (ov[1] <= ov[0]) { start = ov[0] + 1; continue; } /* cannot happen: no pattern matches empty */
      bpe_emit(e, s, ov[0], ov[1], o, want);
      if (o->oom) { rc = -1; goto done; }
      start = ov[1];
    }
  }
done:
  if (js) pcre2_jit_stack_free(js);
  if (mc) pcre2_match_context_free(mc);
  if (md) pcre2_match_data_free(md);
  return rc;
}

/* Tokenises text[0..n) with pre-tokeniser pretok. Returns 0, -1 (out of
 * memory), or a negative PCRE2 error code below -1. */
static int bpe_run(const ga_bpe *e, int pretok, const char *text, size_t n, bpe_out *o, int want) {
  ga_buf fixed;
  const unsigned char *s = (const unsigned char *)text;
  int rc, repaired = utf8_repair(s, n, &fixed);
  if (repaired) {
    if (fixed.oom) { ga_buf_free(&fixed); return -1; }
    s = (const unsigned char *)fixed.buf;
    n = fixed.len;
  }
  rc = pretok == GA_PRETOK_PCRE2 ? pcre2_run(e, s, n, o, want) : scan_run(e, s, n, o, want);
  if (repaired) ga_buf_free(&fixed);
  return rc;
}

/* Public C API (plain C over C types). */
int ga_bpe_count_with(const ga_bpe *e, int pretok, const char *text, size_t n, size_t *count) {
  bpe_out o = {0};
  int rc = bpe_run(e, pretok, text, n, &o, WANT_COUNT);
  free(o.buf);
  *count = o.count;
  return rc;
}
int ga_bpe_count(const ga_bpe *e, const char *text, size_t n, size_t *count) {
  return ga_bpe_count_with(e, e->pretok, text, n, count);
}

/* ids: malloc'd array the caller frees. */
int ga_bpe_encode_with(const ga_bpe *e, int pretok, const char *text, size_t n, uint32_t **ids, size_t *nids) {
  bpe_out o = {0};
  int rc;
  o.idcap = 64;
  o.ids = malloc(o.idcap * sizeof *o.ids);
  if (!o.ids) return -1;
  rc = bpe_run(e, pretok, text, n, &o, WANT_IDS);
  free(o.buf);
  if (rc != 0) { free(o.ids); *ids = NULL; *nids = 0; return rc; }
  *ids = o.ids;
  *nids = o.nids;
  return 0;
}
int ga_bpe_encode(const ga_bpe *e, const char *text, size_t n, uint32_t **ids, size_t *nids) {
  return ga_bpe_encode_with(e, e->pretok, text, n, ids, nids);
}

int ga_bpe_pieces(const ga_bpe *e, int pretok, const char *text, size_t n, size_t **pairs, size_t *npieces) {
  bpe_out o = {0};
  int rc = bpe_run(e, pretok, text, n, &o, WANT_PIECES);
  free(o.buf);
  if (rc != 0) { free(o.pairs); *pairs = NULL; *npieces = 0; return rc; }
  *pairs = o.pairs;
  *npieces = o.npairs / 2;
  return 0;
}

/* The bytes of token id, or NULL (unknown id). */
const unsigned char *ga_bpe_token(const ga_bpe *e, uint32_t id, size_t *len) {
  if (id < e->nranks && e->off[id + 1] > e->off[id]) {
    *len = e->off[id + 1] - e->off[id];
    return e->arena + e->off[id];
  }
  for (const special_tok *t = e->special; t->text; t++)
    if (t->rank == id) { *len = strlen(t->text); return (const unsigned char *)t->text; }
  return NULL;
}

/* ---- Lua binding: the genaudit.bpe userdata ---- */

typedef struct { ga_bpe *e; int closed; } bpe_ud;

static bpe_ud *check_bpe(lua_State *L) {
  bpe_ud *u = (bpe_ud *)luaL_checkudata(L, 1, BPE_MT);
  if (u->closed) luaL_error(L, "attempt to use a closed genaudit.bpe");
  return u;
}

static int run_fail(lua_State *L, int rc) {
  if (rc == -1) return ga_fail(L, "NOMEM", "out of memory while tokenising");
  {
    PCRE2_UCHAR msg[120];
    pcre2_get_error_message(rc, msg, sizeof msg);
    return ga_fail(L, "TOKENIZER", "pre-tokeniser failed: %s", (const char *)msg);
  }
}

static const char *const PRETOK_NAMES[] = {"scanner", "pcre2", NULL};

/* The pre-tokeniser named by optional argument arg ("scanner", "pcre2"), or def. */
static int opt_pretok(lua_State *L, int arg, int def) {
  return luaL_checkoption(L, arg, def == GA_PRETOK_PCRE2 ? "pcre2" : "scanner", PRETOK_NAMES);
}

/* core.bpe_load(name, rank_file_text [, "scanner" | "pcre2"]) -> bpe | nil, "BAD_RANKS: ...", "BAD_RANKS";
 * the third argument is the object's default pre-tokeniser (the scanner). */
static int l_bpe_load(lua_State *L) {
  size_t n;
  const char *name = luaL_checkstring(L, 1);
  const char *text = luaL_checklstring(L, 2, &n);
  int pretok = opt_pretok(L, 3, GA_PRETOK_SCANNER);
  char err[200];
  bpe_ud *u = (bpe_ud *)ga_newuserdata(L, sizeof *u);
  u->e = NULL;
  u->closed = 1;
  luaL_setmetatable(L, BPE_MT);
  u->e = ga_bpe_load(name, text, n, err, sizeof err);
  if (!u->e) return ga_fail(L, "BAD_RANKS", "%s", err);
  u->e->pretok = pretok;
  u->closed = 0;
  return 1;
}

/* bpe:count(text [, pretokeniser]) -> n | nil, err, code */
static int l_bpe_count(lua_State *L) {
  bpe_ud *u = check_bpe(L);
  size_t n, count = 0;
  const char *s = luaL_checklstring(L, 2, &n);
  int rc = ga_bpe_count_with(u->e, opt_pretok(L, 3, u->e->pretok), s, n, &count);
  if (rc != 0) return run_fail(L, rc);
  ga_pushint64(L, (long long)count);
  return 1;
}

/* bpe:encode(text [, pretokeniser]) -> { ids } | nil, err, code */
static int l_bpe_encode(lua_State *L) {
  bpe_ud *u = check_bpe(L);
  size_t n, nids = 0, i;
  uint32_t *ids = NULL;
  const char *s = luaL_checklstring(L, 2, &n);
  int rc, pretok = opt_pretok(L, 3, u->e->pretok);
  lua_settop(L, 2);
  rc = ga_bpe_encode_with(u->e, pretok, s, n, &ids, &nids);
  if (rc != 0) return run_fail(L, rc);
  if (nids > (size_t)INT32_MAX || !lua_checkstack(L, 2)) { free(ids); return ga_fail(L, "NOMEM", "too many tokens"); }
  {
    /* the ids live in a holder userdata while the table is built, so an
     * out-of-memory error there frees them (its __gc) */
    uint32_t **holder = (uint32_t **)lua_newuserdata(L, sizeof *holder);
    *holder = ids;
    luaL_setmetatable(L, BPE_IDS_MT);
    lua_createtable(L, (int)nids, 0);
    for (i = 0; i < nids; i++) {
      lua_pushinteger(L, (lua_Integer)ids[i]);
      lua_rawseti(L, -2, (int)(i + 1));
    }
    free(ids);
    *holder = NULL;
  }
  return 1;
}

/* bpe:pieces(text [, pretokeniser]) -> { piece, ... } (the pre-tokeniser's
 * split of text after UTF-8 repair) | nil, err, code */
static int l_bpe_pieces(lua_State *L) {
  bpe_ud *u = check_bpe(L);
  size_t n, np = 0, i;
  size_t *pairs = NULL;
  const char *s = luaL_checklstring(L, 2, &n);
  int rc, pretok = opt_pretok(L, 3, u->e->pretok);
  ga_buf fixed;
  const char *t = s;
  uint32_t **holder;
  if (!lua_checkstack(L, 4)) return ga_fail(L, "NOMEM", "out of memory");
  lua_settop(L, 2);
  rc = ga_bpe_pieces(u->e, pretok, s, n, &pairs, &np);
  if (rc != 0) return run_fail(L, rc);
  holder = (uint32_t **)lua_newuserdata(L, sizeof *holder); /* frees pairs on a Lua error (its __gc) */
  *holder = (uint32_t *)(void *)pairs;
  luaL_setmetatable(L, BPE_IDS_MT);
  if (utf8_repair((const unsigned char *)s, n, &fixed)) {
    if (fixed.oom) { ga_buf_free(&fixed); return ga_fail(L, "NOMEM", "out of memory"); }
    lua_pushlstring(L, fixed.buf, fixed.len); /* the repaired text, kept on the stack */
    ga_buf_free(&fixed);
    t = lua_tostring(L, -1);
  } else {
    lua_pushvalue(L, 2);
  }
  lua_createtable(L, np > INT32_MAX ? 0 : (int)np, 0);
  for (i = 0; i < np; i++) {
    lua_pushlstring(L, t + pairs[2 * i], pairs[2 * i + 1] - pairs[2 * i]);
    lua_rawseti(L, -2, (int)(i + 1));
  }
  free(pairs);
  *holder = NULL;
  return 1;
}

/* bpe:count_pieces(text [, pretokeniser]) -> the number of pieces (the
 * pre-tokeniser alone, no merging: bench/tokens.lua times it) | nil, err, code */
static int l_bpe_count_pieces(lua_State *L) {
  bpe_ud *u = check_bpe(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  bpe_out o = {0};
  int rc = bpe_run(u->e, opt_pretok(L, 3, u->e->pretok), s, n, &o, WANT_NPIECES);
  free(o.buf);
  if (rc != 0) return run_fail(L, rc);
  ga_pushint64(L, (long long)o.count);
  return 1;
}

/* bpe:diff_pretokenizers(text) -> nil when the scanner and PCRE2 split text
 * into the same pieces, else the 1-based index of the first piece that
 * differs and the two pieces' byte ranges in the repaired text, scanner's
 * then PCRE2's ({start, end}, 0-based, end exclusive; {} when one split has
 * no such piece) | nil, err, code on failure (then a string second) */
static int l_bpe_diff(lua_State *L) {
  bpe_ud *u = check_bpe(L);
  size_t n, na = 0, nb = 0, i;
  size_t *pa = NULL, *pb = NULL;
  const char *s = luaL_checklstring(L, 2, &n);
  int rc = ga_bpe_pieces(u->e, GA_PRETOK_SCANNER, s, n, &pa, &na);
  if (rc == 0) rc = ga_bpe_pieces(u->e, GA_PRETOK_PCRE2, s, n, &pb, &nb);
  if (rc != 0) { free(pa); free(pb); return run_fail(L, rc); }
  for (i = 0; i < na && i < nb; i++)
    if (pa[2 * i] != pb[2 * i] || pa[2 * i + 1] != pb[2 * i + 1]) break;
  if (i == na && i == nb) { free(pa); free(pb); lua_pushnil(L); return 1; }
  {
    size_t r[4];
    int have[2] = {i < na, i < nb};
    r[0] = have[0] ? pa[2 * i] : 0, r[1] = have[0] ? pa[2 * i + 1] : 0;
    r[2] = have[1] ? pb[2 * i] : 0, r[3] = have[1] ? pb[2 * i + 1] : 0;
    free(pa);
    free(pb);
    ga_pushint64(L, (long long)i + 1);
    for (int k = 0; k < 2; k++) {
      lua_createtable(L, 2, 0);
      if (have[k]) {
        ga_pushint64(L, (long long)r[2 * k]);
        lua_rawseti(L, -2, 1);
        ga_pushint64(L, (long long)r[2 * k + 1]);
        lua_rawseti(L, -2, 2);
      }
    }
  }
  return 3;
}

/* bpe:pretokenizer() -> "scanner" | "pcre2" (the object's default) */
static int l_bpe_pretok(lua_State *L) {
  bpe_ud *u = check_bpe(L);
  lua_pushstring(L, PRETOK_NAMES[u->e->pretok]);
  return 1;
}

/* core.bpe_scanner_info() -> { unicode = PCRE2's Unicode version of the
 * scanner's tables, table_bytes = their size (static: shared by every
 * encoding and Lua state) } */
static int l_bpe_scanner_info(lua_State *L) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, ga_bpe_scan_unicode());
  lua_setfield(L, -2, "unicode");
  ga_pushint64(L, (long long)ga_bpe_scan_table_bytes());
  lua_setfield(L, -2, "table_bytes");
  return 1;
}

static int l_ids_gc(lua_State *L) {
  uint32_t **holder = (uint32_t **)luaL_checkudata(L, 1, BPE_IDS_MT);
  free(*holder);
  *holder = NULL;
  return 0;
}

/* bpe:decode(ids) -> bytes | nil, "BAD_TOKEN: ...", "BAD_TOKEN" */
static int l_bpe_decode(lua_State *L) {
  bpe_ud *u = check_bpe(L);
  size_t n, i;
  luaL_Buffer b;
  luaL_checktype(L, 2, LUA_TTABLE);
  n = ga_rawlen(L, 2);
  for (i = 1; i <= n; i++) { /* check every id before building */
    long long id;
    size_t len;
    lua_rawgeti(L, 2, (int)i);
    if (!ga_tointeger(L, -1, &id) || id < 0 || id > UINT32_MAX || !ga_bpe_token(u->e, (uint32_t)id, &len)) {
      lua_pop(L, 1);
      return ga_fail(L, "BAD_TOKEN", "ids[%zu] is not a token id of %s", i, u->e->name);
    }
    lua_pop(L, 1);
  }
  luaL_buffinit(L, &b);
  for (i = 1; i <= n; i++) {
    long long id;
    size_t len;
    const unsigned char *t;
    lua_rawgeti(L, 2, (int)i);
    ga_tointeger(L, -1, &id);
    lua_pop(L, 1);
    t = ga_bpe_token(u->e, (uint32_t)id, &len);
    luaL_addlstring(&b, (const char *)t, len);
  }
  luaL_pushresult(&b);
  return 1;
}

/* bpe:memory() -> bytes held by the loaded encoding */
static int l_bpe_memory(lua_State *L) {
  bpe_ud *u = check_bpe(L);
  ga_pushint64(L, (long long)ga_bpe_memory(u->e));
  return 1;
}

static int l_bpe_name(lua_State *L) {
  bpe_ud *u = check_bpe(L);
  lua_pushstring(L, u->e->name);
  return 1;
}

static int l_bpe_gc(lua_State *L) {
  bpe_ud *u = (bpe_ud *)luaL_checkudata(L, 1, BPE_MT);
  if (u->e) ga_bpe_free(u->e);
  u->e = NULL;
  u->closed = 1;
  lua_pushboolean(L, 1);
  return 1;
}

static int l_bpe_tostring(lua_State *L) {
  bpe_ud *u = (bpe_ud *)luaL_checkudata(L, 1, BPE_MT);
  if (u->closed) lua_pushliteral(L, "genaudit.bpe (closed)");
  else lua_pushfstring(L, "genaudit.bpe %s (%p)", u->e->name, (void *)u);
  return 1;
}

void ga_open_bpe(lua_State *L) {
  static const luaL_Reg methods[] = {{"count", l_bpe_count}, {"encode", l_bpe_encode}, {"decode", l_bpe_decode},
                                     {"memory", l_bpe_memory}, {"name", l_bpe_name}, {"close", l_bpe_gc},
                                     {"pieces", l_bpe_pieces}, {"pretokenizer", l_bpe_pretok},
                                     {"count_pieces", l_bpe_count_pieces}, {"diff_pretokenizers", l_bpe_diff},
                                     {NULL, NULL}};
  ga_newclass(L, BPE_MT, methods, l_bpe_gc, l_bpe_tostring);
  luaL_newmetatable(L, BPE_IDS_MT);
  lua_pushcfunction(L, l_ids_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_bpe_load);
  lua_setfield(L, -2, "bpe_load");
  lua_pushcfunction(L, l_bpe_scanner_info);
  lua_setfield(L, -2, "bpe_scanner_info");
}
