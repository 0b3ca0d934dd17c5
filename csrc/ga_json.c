/* ga_json.c — exact JSON for the metric columns. Debian's lua-cjson rounds
 * numbers to 14 digits and turns 5.4 integers into floats; here integers stay
 * integers and doubles get the shortest text that reads back identically;
 * strings always come out as valid UTF-8 (invalid bytes become U+FFFD), and
 * core.utf8_valid / core.base64 let exports carry other text losslessly. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ga_private.h"

#define JSON_MAX_DEPTH 32

/* Whether any of the 8 bytes in w is < 0x20, '"' or '\\' (the bytes JSON
 * escapes) or >= 0x80 (UTF-8, checked byte by byte). The "has a zero byte"
 * trick; exact as a yes/no answer. Plain ASCII text goes 8 bytes per test. */
static int word_needs_escape(uint64_t w) {
  const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
  uint64_t q = w ^ (ones * '"'), bs = w ^ (ones * '\\');
  return (((w - ones * 0x20) & ~w) | ((q - ones) & ~q) | ((bs - ones) & ~bs) | w) & high ? 1 : 0;
}

/* The well-formed UTF-8 sequences (Unicode 15, table 3-7): no overlong forms,
 * no surrogates (U+D800..DFFF), nothing above U+10FFFF. Returns the length of
 * the sequence at p (1..4, p[0] >= 0x80), or 0 when it is ill-formed, with
 * *bad the length of its maximal subpart: the longest prefix of a well-formed
 * sequence (at least 1 byte), which becomes one U+FFFD. */
static size_t utf8_seq(const unsigned char *p, size_t n, size_t *bad) {
  unsigned char c = p[0], lo = 0x80, hi = 0xBF;
  size_t need, k;
  if (c >= 0xC2 && c <= 0xDF) need = 2;
  else if (c >= 0xE0 && c <= 0xEF) need = 3;
  else if (c >= 0xF0 && c <= 0xF4) need = 4;
  else {
    *bad = 1; /* 80..C1 (a continuation byte, or an overlong lead), F5..FF */
    return 0;
  }
  if (c == 0xE0) lo = 0xA0;      /* below: overlong */
  else if (c == 0xED) hi = 0x9F; /* above: surrogates */
  else if (c == 0xF0) lo = 0x90; /* below: overlong */
  else if (c == 0xF4) hi = 0x8F; /* above: beyond U+10FFFF */
  if (n < 2 || p[1] < lo || p[1] > hi) {
    *bad = 1;
    return 0;
  }
  for (k = 2; k < need && k < n && (p[k] & 0xC0) == 0x80; k++) {}
  if (k == need) return need;
  *bad = k; /* truncated: the lead and the continuation bytes that fit */
  return 0;
}

int ga_utf8_valid(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0, end, k, bad;
  uint64_t w;
  while (i < n) {
    if (i + 8 <= n) {
      memcpy(&w, p + i, 8);
      if (!(w & 0x8080808080808080ULL)) {
        i += 8;
        continue;
      }
      end = i + 8;
    } else {
      end = n;
    }
    while (i < end) {
      if (p[i] < 0x80) {
        i++;
      } else {
        if ((k = utf8_seq(p + i, n - i, &bad)) == 0) return 0;
        i += k;
      }
    }
  }
  return 1;
}

/* The index of the first byte at or after i that JSON escapes or that starts
 * an ill-formed UTF-8 sequence; n when there is none. ASCII goes 8 bytes per
 * step; a word that fails the test is walked byte by byte, once. */
static size_t plain_run(const unsigned char *p, size_t i, size_t n) {
  size_t end, k, bad;
  uint64_t w;
  while (i < n) {
    if (i + 8 <= n) {
      memcpy(&w, p + i, 8);
      if (!word_needs_escape(w)) {
        i += 8;
        continue;
      }
      end = i + 8;
    } else {
      end = n;
    }
    while (i < end) {
      unsigned char c = p[i];
      if (c >= 0x80) {
        if ((k = utf8_seq(p + i, n - i, &bad)) == 0) return i;
        i += k; /* may end past `end`: the next word starts there */
      } else if (c >= 0x20 && c != '"' && c != '\\') {
        i++;
      } else {
        return i;
      }
    }
  }
  return n;
}

/* Always valid UTF-8 JSON: each maximal ill-formed subpart of s becomes U+FFFD
 * (Unicode's "substitution of maximal subparts"), so a JSON document never
 * holds bytes a strict parser refuses. Well-formed text is kept exactly. */
void ga_json_string(ga_buf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0, run = 0, bad;
  uint64_t w;
  while (i + 8 <= n) { /* plain ASCII, the common case, in the tightest loop */
    memcpy(&w, s + i, 8);
    if (word_needs_escape(w)) break;
    i += 8;
  }
  i = plain_run(p, i, n);
  if (i == n) { /* the common case: nothing to escape or replace, one copy */
    if (ga_buf_reserve(b, n + 2) != 0) return;
    b->buf[b->len] = '"';
    memcpy(b->buf + b->len + 1, s, n);
    b->buf[b->len + 1 + n] = '"';
    b->len += n + 2;
    return;
  }
  ga_buf_addc(b, '"');
  while (i < n) { /* s[run..i) is plain; s[i] needs an escape or starts an ill-formed sequence */
    unsigned char c = p[i];
    const char *esc = NULL;
    char u[6];
    ga_buf_add(b, s + run, i - run);
    if (c >= 0x80) {
      (void)utf8_seq(p + i, n - i, &bad); /* 0: plain_run stopped here */
      ga_buf_add(b, "\xEF\xBF\xBD", 3);  /* U+FFFD REPLACEMENT CHARACTER */
      i += bad;
    } else {
      switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
          u[0] = '\\'; u[1] = 'u'; u[2] = '0'; u[3] = '0';
          u[4] = hex[c >> 4]; u[5] = hex[c & 15];
          ga_buf_add(b, u, 6);
      }
      if (esc) ga_buf_add(b, esc, 2);
      i++;
    }
    run = i;
    i = plain_run(p, i, n);
  }
  ga_buf_add(b, s + run, n - run);
  ga_buf_addc(b, '"');
}

/* Powers of ten that are exact doubles. */
static const double P10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* The fast path of ga_json_double: the text "%.15g" prints for d when d reads
 * back from a decimal of at most 15 significant digits (costs, latencies,
 * temperatures nearly always do), without snprintf/strtod. m / 10^k is
 * correctly rounded (m < 2^53 and 10^k are exact), so m / 10^k == |d| proves
 * the decimal m * 10^-k reads back as d; the smallest such k gives the fewest
 * digits, and a round-tripping decimal of <= 15 digits is exactly what %.15g
 * prints once its trailing zeros are gone. Writes at most 24 bytes to out;
 * returns their count, or 0 when d needs the slow path (0, 16-17 digits,
 * magnitudes beyond 1e-22..1e15). */
static int short_double(double d, char *out) {
  double a = d < 0 ? -d : d;
  unsigned long long m = 0;
  char digits[20];
  int k, nd = 0, x, i, o = 0;
  if (!(a >= 1e-22) || a >= 1e15) return 0;
  for (k = 0; k <= 22; k++) {
    double s = a * P10[k];
    if (s >= 1e15) return 0;
    m = (unsigned long long)(s + 0.5);
    if (m && (double)m / P10[k] == a) break;
  }
  if (k > 22) return 0;
  for (; m; m /= 10) digits[nd++] = (char)('0' + m % 10); /* reversed */
  x = nd - 1 - k;                                           /* exponent of the leading digit */
  if (d < 0) out[o++] = '-';
  if (x < -4 || x >= 15) { /* %g's exponent form: d[.ddd]e[+-]XX */
    int last = 0;
    while (last < nd - 1 && digits[last] == '0') last++; /* trailing zeros go */
    out[o++] = digits[nd - 1];
    if (nd - 1 > last) {
      out[o++] = '.';
      for (i = nd - 2; i >= last; i--) out[o++] = digits[i];
    }
    out[o++] = 'e';
    out[o++] = x < 0 ? '-' : '+';
    if (x < 0) x = -x;
    if (x >= 100) out[o++] = (char)('0' + x / 100);
    out[o++] = (char)('0' + x / 10 % 10);
    out[o++] = (char)('0' + x % 10);
  } else if (k == 0) {
    for (i = nd - 1; i >= 0; i--) out[o++] = digits[i];
  } else if (nd > k) {
    for (i = nd - 1; i >= k; i--) out[o++] = digits[i];
    out[o++] = '.';
    for (; i >= 0; i--) out[o++] = digits[i];
  } else {
    out[o++] = '0';
    out[o++] = '.';
    for (i = nd; i < k; i++) out[o++] = '0';
    for (i = nd - 1; i >= 0; i--) out[o++] = digits[i];
  }
  out[o] = '\0';
  return o;
}

int ga_json_double(ga_buf *b, double d) {
  char tmp[40];
  int prec, n;
  if (isnan(d) || isinf(d)) return -1;
  n = short_double(d, tmp);
  if (n == 0) {
    for (prec = 15; prec <= 17; prec++) {
      snprintf(tmp, sizeof tmp, "%.*g", prec, d);
      if (strtod(tmp, NULL) == d) break;
    }
    n = (int)strlen(tmp);
  }
  ga_buf_add(b, tmp, (size_t)n);
  /* keep it a float in readers that care (e.g. 2.0 -> "2.0"): "2" is fine JSON,
   * but a cost of 2 USD read back as an integer would change the column type */
  if (!strpbrk(tmp, ".eEn")) ga_buf_add(b, ".0", 2);
  return 0;
}

/* Decimal digits by hand: snprintf("%lld") costs more than the rest of a
 * metric document's integers put together. */
void ga_json_int(ga_buf *b, long long v) {
  char tmp[24], *p = tmp + sizeof tmp;
  unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
  do {
    *--p = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0) *--p = '-';
  ga_buf_add(b, p, (size_t)(tmp + sizeof tmp - p));
}

/* A table's keys, gathered in one lua_next pass. Each string key and its
 * value are left on the Lua stack (key at slot, value at slot + 1): the key's
 * text stays alive and the value is encoded in place, with no second lookup
 * (re-interning the key text and a rawget cost more than the encoding). */
typedef struct { const char *s; size_t n; int slot; } jkey;
#define KEYS_INLINE 32
typedef struct {
  jkey inl[KEYS_INLINE], *k;
  size_t n, cap;
  size_t count, nint, maxi; /* all keys; positive integer keys; the largest */
} keylist;

static void keys_free(keylist *kl) {
  if (kl->k != kl->inl) free(kl->k);
}

static int cmp_key(const void *a, const void *b) {
  const jkey *x = (const jkey *)a, *y = (const jkey *)b;
  size_t n = x->n < y->n ? x->n : y->n;
  int c;
  if (n >= 8) { /* the first 8 bytes as one big-endian number usually decide */
    uint64_t u, v;
    memcpy(&u, x->s, 8);
    memcpy(&v, y->s, 8);
    u = __builtin_bswap64(u);
    v = __builtin_bswap64(v);
    if (u != v) return u < v ? -1 : 1;
  }
  c = memcmp(x->s, y->s, n);
  return c ? c : (x->n > y->n) - (x->n < y->n);
}

static void sort_keys(jkey *k, size_t n) {
  size_t i, j;
  if (n > 24) {
    qsort(k, n, sizeof *k, cmp_key);
    return;
  }
  for (i = 1; i < n; i++) { /* metric objects are small: insertion sort, no calls into libc */
    jkey t = k[i];
    for (j = i; j > 0 && cmp_key(&k[j - 1], &t) > 0; j--) k[j] = k[j - 1];
    k[j] = t;
  }
}

/* One pass over the table at absolute index idx: counts its keys, notes the
 * positive integer ones, and records (and keeps on the stack) the string ones.
 * The caller restores the stack top and calls keys_free. 0, or -1 + err. */
static int collect_keys(lua_State *L, int idx, keylist *kl, char *err, size_t errlen) {
  kl->k = kl->inl; /* the inline array is filled as keys come, never cleared */
  kl->n = kl->count = kl->nint = kl->maxi = 0;
  kl->cap = KEYS_INLINE;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    long long iv;
    kl->count++;
    if (lua_type(L, -2) == LUA_TSTRING) {
      if (kl->n == kl->cap) {
        jkey *k = (jkey *)malloc(2 * kl->cap * sizeof *k);
        if (!k) {
          snprintf(err, errlen, "out of memory");
          return -1;
        }
        memcpy(k, kl->k, kl->n * sizeof *k);
        if (kl->k != kl->inl) free(kl->k);
        kl->k = k;
        kl->cap *= 2;
      }
      if ((kl->n & 7) == 0 && !lua_checkstack(L, 30)) { /* room for 8 more pairs + lua_next's */
        snprintf(err, errlen, "Lua stack exhausted");
        return -1;
      }
      kl->k[kl->n].s = lua_tolstring(L, -2, &kl->k[kl->n].n);
      kl->k[kl->n].slot = lua_gettop(L) - 1;
      kl->n++;
      lua_pushvalue(L, -2); /* key and value stay; this copy drives lua_next */
      continue;
    }
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TNUMBER && ga_tointeger(L, -1, &iv) && iv >= 1) {
      kl->nint++;
      if ((size_t)iv > kl->maxi) kl->maxi = (size_t)iv;
    }
  }
  return 0;
}

static int skipped(const jkey *k, const char *const *skip) {
  for (; skip && *skip; skip++)
    if (strlen(*skip) == k->n && memcmp(*skip, k->s, k->n) == 0) return 1;
  return 0;
}

/* Writes the gathered string keys (less `skip`), sorted, with their values. */
static int write_members(lua_State *L, ga_buf *b, int depth, keylist *kl, const char *const *skip, int need_comma,
                         char *err, size_t errlen) {
  size_t i, n = 0;
  int rc = 0;
  for (i = 0; i < kl->n; i++)
    if (!skipped(&kl->k[i], skip)) kl->k[n++] = kl->k[i];
  sort_keys(kl->k, n);
  for (i = 0; i < n && rc == 0; i++) {
    if (i || need_comma) ga_buf_addc(b, ',');
    ga_json_string(b, kl->k[i].s, kl->k[i].n);
    ga_buf_addc(b, ':');
    rc = ga_json_encode(L, kl->k[i].slot + 1, b, depth + 1, err, errlen);
  }
  return rc;
}

/* Encodes the table at absolute index idx (array or object). */
static int encode_table(lua_State *L, int idx, ga_buf *b, int depth, char *err, size_t errlen) {
  keylist kl;
  size_t i;
  int rc = 0, top = lua_gettop(L);
  if (collect_keys(L, idx, &kl, err, errlen) != 0) {
    rc = -1;
  } else if (kl.nint == kl.count && kl.maxi == kl.count) { /* array, or [] for an empty table */
    ga_buf_addc(b, '[');
    for (i = 1; i <= kl.count && rc == 0; i++) {
      if (i > 1) ga_buf_addc(b, ',');
      lua_rawgeti(L, idx, (int)i);
      rc = ga_json_encode(L, lua_gettop(L), b, depth + 1, err, errlen);
      lua_pop(L, 1);
    }
    if (rc == 0) ga_buf_addc(b, ']');
  } else if (kl.n != kl.count) {
    snprintf(err, errlen, "a table mixes array and string keys, or has keys JSON cannot hold");
    rc = -1;
  } else {
    ga_buf_addc(b, '{');
    rc = write_members(L, b, depth, &kl, NULL, 0, err, errlen);
    if (rc == 0) ga_buf_addc(b, '}');
  }
  lua_settop(L, top);
  keys_free(&kl);
  return rc;
}

int ga_json_members(lua_State *L, int idx, ga_buf *b, int depth, const char *const *skip,
                    int need_comma, char *err, size_t errlen) {
  keylist kl;
  int rc, top = lua_gettop(L);
  idx = ga_absindex(L, idx);
  rc = collect_keys(L, idx, &kl, err, errlen);
  if (rc == 0 && kl.n != kl.count) {
    snprintf(err, errlen, "an object has a key that is not a string");
    rc = -1;
  }
  if (rc == 0) rc = write_members(L, b, depth, &kl, skip, need_comma, err, errlen);
  lua_settop(L, top);
  keys_free(&kl);
  return rc;
}

int ga_json_encode(lua_State *L, int idx, ga_buf *b, int depth, char *err, size_t errlen) {
  long long iv;
  if (!lua_checkstack(L, 4)) {
    snprintf(err, errlen, "Lua stack exhausted");
    return -1;
  }
  switch (lua_type(L, idx)) {
    case LUA_TNIL: ga_buf_add(b, "null", 4); return 0;
    case LUA_TBOOLEAN:
      if (lua_toboolean(L, idx)) ga_buf_add(b, "true", 4);
      else ga_buf_add(b, "false", 5);
      return 0;
    case LUA_TNUMBER:
      if (ga_exactint(L, idx, &iv)) { /* LuaJIT: an integral value below 2^53 */
        ga_json_int(b, iv);
        return 0;
      }
      if (ga_json_double(b, (double)lua_tonumber(L, idx)) != 0) {
        snprintf(err, errlen, "number is NaN or infinite");
        return -1;
      }
      return 0;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      ga_json_string(b, s, n);
      return 0;
    }
    case LUA_TTABLE:
      if (depth >= JSON_MAX_DEPTH) { /* depth counts the tables around this one */
        snprintf(err, errlen, "nested deeper than %d levels", JSON_MAX_DEPTH);
        return -1;
      }
      return encode_table(L, idx, b, depth, err, errlen);
    case LUA_TLIGHTUSERDATA:
      if (ga_isnull(L, idx)) {
        ga_buf_add(b, "null", 4);
        return 0;
      }
      break;
    case LUA_TUSERDATA: { /* JSON read by core.json_decode and kept as text */
      size_t n;
      const char *raw = ga_rawjson(L, idx, &n);
      if (raw) {
        ga_buf_add(b, raw, n);
        return 0;
      }
      break;
    }
    default: break;
  }
  snprintf(err, errlen, "cannot encode a %s as JSON", luaL_typename(L, idx));
  return -1;
}

/* core.json_encode(v) -> string, or nil, err */
static int l_json_encode(lua_State *L) {
  ga_buf b;
  char err[160];
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  ga_buf_init(&b);
  if (ga_json_encode(L, 1, &b, 0, err, sizeof err) != 0 || b.oom) {
    ga_buf_free(&b);
    return ga_fail(L, "INVALID", "%s", b.oom ? "out of memory" : err);
  }
  lua_pushlstring(L, b.buf, b.len);
  ga_buf_free(&b);
  return 1;
}

/* core.utf8_valid(s) -> boolean: whether s is well-formed UTF-8. Raises on a non-string. */
static int l_utf8_valid(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_pushboolean(L, ga_utf8_valid(s, n));
  return 1;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t ga_base64_encode(const unsigned char *s, size_t n, char *out) {
  size_t i, o = 0;
  for (i = 0; i + 3 <= n; i += 3) {
    unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
    out[o++] = B64[v >> 18];
    out[o++] = B64[v >> 12 & 63];
    out[o++] = B64[v >> 6 & 63];
    out[o++] = B64[v & 63];
  }
  if (i < n) {
    unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0);
    out[o++] = B64[v >> 18];
    out[o++] = B64[v >> 12 & 63];
    out[o++] = i + 1 < n ? B64[v >> 6 & 63] : '=';
    out[o++] = '=';
  }
  return o;
}

static int b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

int ga_base64_decode(const char *s, size_t n, unsigned char *out, size_t *outlen) {
  size_t i, o = 0;
  if (n % 4 != 0) return -1;
  for (i = 0; i < n; i += 4) {
    int a = b64_value((unsigned char)s[i]), b = b64_value((unsigned char)s[i + 1]);
    int last = i + 4 == n, c, d;
    if (a < 0 || b < 0) return -1;
    if (last && s[i + 2] == '=') {
      if (s[i + 3] != '=' || (b & 15) != 0) return -1; /* canonical: unused bits are zero */
      out[o++] = (unsigned char)(a << 2 | b >> 4);
      break;
    }
    c = b64_value((unsigned char)s[i + 2]);
    if (c < 0) return -1;
    if (last && s[i + 3] == '=') {
      if ((c & 3) != 0) return -1;
      out[o++] = (unsigned char)(a << 2 | b >> 4);
      out[o++] = (unsigned char)((b & 15) << 4 | c >> 2);
      break;
    }
    d = b64_value((unsigned char)s[i + 3]);
    if (d < 0) return -1;
    out[o++] = (unsigned char)(a << 2 | b >> 4);
    out[o++] = (unsigned char)((b & 15) << 4 | c >> 2);
    out[o++] = (unsigned char)((c & 3) << 6 | d);
  }
  *outlen = o;
  return 0;
}

/* core.base64(s) -> s in standard base64 (RFC 4648, padded): how an export
 * carries text that is not UTF-8, byte for byte. Raises on a non-string or OOM. */
static int l_base64(lua_State *L) {
  size_t n, o;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  char *out;
  if (n > ((size_t)-1 - 3) / 4 * 3) return luaL_error(L, "base64: string too long");
  out = (char *)lua_newuserdata(L, (n + 2) / 3 * 4 + 1); /* scratch the GC owns: nothing leaks on a raise */
  o = ga_base64_encode(s, n, out);
  lua_pushlstring(L, out, o);
  return 1;
}

/* core.base64_decode(s) -> the bytes | nil, "INVALID: not canonical base64", "INVALID".
 * Strict RFC 4648: padded, no whitespace, unused bits zero. */
static int l_base64_decode(lua_State *L) {
  size_t n, o = 0;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char *out = (unsigned char *)lua_newuserdata(L, n / 4 * 3 + 1);
  if (ga_base64_decode(s, n, out, &o) != 0) return ga_fail(L, "INVALID", "not canonical base64");
  lua_pushlstring(L, (const char *)out, o);
  return 1;
}

void ga_open_json(lua_State *L) {
  lua_pushcfunction(L, l_json_encode);
  lua_setfield(L, -2, "json_encode");
  lua_pushcfunction(L, l_utf8_valid);
  lua_setfield(L, -2, "utf8_valid");
  lua_pushcfunction(L, l_base64);
  lua_setfield(L, -2, "base64");
  lua_pushcfunction(L, l_base64_decode);
  lua_setfield(L, -2, "base64_decode");
  ga_pushnull(L);
  lua_setfield(L, -2, "null");
}
