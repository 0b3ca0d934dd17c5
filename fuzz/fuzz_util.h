/* fuzz/fuzz_util.h — shared by the libFuzzer harnesses: a strict RFC 8259
 * JSON checker (UTF-8 included) that also decodes the first string it is
 * asked to, and a failure macro that aborts (libFuzzer saves the input as a
 * crash). */
#ifndef FUZZ_UTIL_H
#define FUZZ_UTIL_H
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond, ...)                                              \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "fuzz check failed: %s (%s:%d): ", #cond, __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                                        \
      fputc('\n', stderr);                                                 \
      abort();                                                             \
    }                                                                      \
  } while (0)

typedef struct {
  const char *p, *end;
  int depth;
  char *out; /* decoded bytes of a top-level string (when non-NULL) */
  size_t out_len;
} jcur;

static inline void j_ws(jcur *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static inline int j_hex(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* UTF-8 by its definition rather than by table 3-7 (a reference independent
 * of the one in ga_json.c): an L-byte sequence carries a code point in
 * [min_L, U+10FFFF] outside the surrogates U+D800..DFFF. A prefix of k bytes
 * can still become one when the code points its completions cover, the
 * interval [lo, hi], meet that set. Returns L when p[0..n) starts with a
 * well-formed sequence, else 0 with *sub the length of the maximal subpart:
 * the longest prefix that can still become one (at least 1 byte). */
static inline size_t ref_utf8(const unsigned char *p, size_t n, size_t *sub) {
  static const unsigned long min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
  size_t L, k, best = 0;
  unsigned char c = p[0];
  if (c < 0x80) return 1;
  L = c >= 0xF0 && c <= 0xF7 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
  if (c > 0xF7) L = 0;
  for (k = 1; L && k <= L && k <= n; k++) {
    unsigned long cp = c & (0x7Fu >> L), lo, hi, a, b;
    size_t i, r = L - k;
    int cont = 1;
    for (i = 1; i < k; i++) {
      if ((p[i] & 0xC0) != 0x80) cont = 0;
      cp = cp << 6 | (p[i] & 0x3Fu);
    }
    if (!cont) break;
    lo = cp << (6 * r);
    hi = lo | ((1ul << (6 * r)) - 1);
    a = lo > min_cp[L] ? lo : min_cp[L];
    b = hi < 0x10FFFFul ? hi : 0x10FFFFul;
    if (a > b || (a >= 0xD800 && b <= 0xDFFF)) break;
    best = k;
  }
  if (L && best == L) return L;
  *sub = best ? best : 1;
  return 0;
}

/* A string; decoded into c->out when `keep` (escapes \uXXXX below 0x100
 * become that byte: what ga_json_string writes for control bytes). Bytes
 * >= 0x80 must be well-formed UTF-8 (RFC 8259 section 8.1). */
static inline int j_string(jcur *c, int keep) {
  if (c->p >= c->end || *c->p != '"') return 0;
  c->p++;
  while (c->p < c->end) {
    unsigned char ch = (unsigned char)*c->p;
    if (ch >= 0x80) {
      size_t sub, k = ref_utf8((const unsigned char *)c->p, (size_t)(c->end - c->p), &sub);
      if (k == 0) return 0;
      if (keep) memcpy(c->out + c->out_len, c->p, k), c->out_len += k;
      c->p += k;
      continue;
    }
    c->p++;
    if (ch == '"') return 1;
    if (ch < 0x20) return 0;
    if (ch == '\\') {
      char e;
      if (c->p >= c->end) return 0;
      e = *c->p++;
      switch (e) {
        case '"': ch = '"'; break;
        case '\\': ch = '\\'; break;
        case '/': ch = '/'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u': {
          int i, v = 0;
          if (c->end - c->p < 4) return 0;
          for (i = 0; i < 4; i++) {
            int h = j_hex(c->p[i]);
            if (h < 0) return 0;
            v = v * 16 + h;
          }
          c->p += 4;
          if (keep && v > 0xff) return 0; /* never written by ga_json_string */
          ch = (unsigned char)v;
          break;
        }
        default: return 0;
      }
    }
    if (keep) c->out[c->out_len++] = (char)ch;
  }
  return 0;
}

static inline int j_number(jcur *c) {
  const char *s = c->p;
  if (c->p < c->end && *c->p == '-') c->p++;
  if (c->p >= c->end) return 0;
  if (*c->p == '0') c->p++;
  else if (*c->p >= '1' && *c->p <= '9')
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
  else return 0;
  if (c->p < c->end && *c->p == '.') {
    c->p++;
    if (c->p >= c->end || !(*c->p >= '0' && *c->p <= '9')) return 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
  }
  if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
    c->p++;
    if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
    if (c->p >= c->end || !(*c->p >= '0' && *c->p <= '9')) return 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
  }
  return c->p > s;
}

static inline int j_lit(jcur *c, const char *w) {
  size_t n = strlen(w);
  if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n) != 0) return 0;
  c->p += n;
  return 1;
}

static inline int j_value(jcur *c) {
  j_ws(c);
  if (c->p >= c->end) return 0;
  switch (*c->p) {
    case '"': return j_string(c, 0);
    case 't': return j_lit(c, "true");
    case 'f': return j_lit(c, "false");
    case 'n': return j_lit(c, "null");
    case '[':
    case '{': {
      char close = *c->p == '[' ? ']' : '}';
      int obj = close == '}';
      if (++c->depth > 200) return 0;
      c->p++;
      j_ws(c);
      if (c->p < c->end && *c->p == close) {
        c->p++;
        c->depth--;
        return 1;
      }
      for (;;) {
        if (obj) {
          j_ws(c);
          if (!j_string(c, 0)) return 0;
          j_ws(c);
          if (c->p >= c->end || *c->p++ != ':') return 0;
        }
        if (!j_value(c)) return 0;
        j_ws(c);
        if (c->p >= c->end) return 0;
        if (*c->p == ',') {
          c->p++;
          continue;
        }
        if (*c->p++ != close) return 0;
        c->depth--;
        return 1;
      }
    }
    default: return j_number(c);
  }
}

/* 1 when s[0..n) is exactly one JSON value (whitespace around allowed). */
static inline int json_valid(const char *s, size_t n) {
  jcur c;
  memset(&c, 0, sizeof c);
  c.p = s;
  c.end = s + n;
  if (!j_value(&c)) return 0;
  j_ws(&c);
  return c.p == c.end;
}

/* 1 when s[0..n) is exactly one JSON number. */
static inline int json_number_only(const char *s, size_t n) {
  jcur c;
  memset(&c, 0, sizeof c);
  c.p = s;
  c.end = s + n;
  return j_number(&c) && c.p == c.end;
}

/* Decodes a JSON string s[0..n) into out (at least n bytes); -1 if invalid. */
static inline long json_string_decode(const char *s, size_t n, char *out) {
  jcur c;
  memset(&c, 0, sizeof c);
  c.p = s;
  c.end = s + n;
  c.out = out;
  if (!j_string(&c, 1) || c.p != c.end) return -1;
  return (long)c.out_len;
}

#endif
