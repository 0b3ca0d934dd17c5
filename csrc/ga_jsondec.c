/* ga_jsondec.c — JSON text to Lua values, exact enough to rebuild the
 * document: integers stay integers (5.4), null becomes genaudit.null (so a
 * null member or array element survives), every other number is read with
 * strtod. Behind `genaudit copy`, which decodes the stored metric documents
 * of every row and hands them back to the C row builder; a decoder in Lua
 * was the slowest step of a copy by far.
 *
 * With a depth limit, objects and arrays nested deeper than it are not
 * built: they become genaudit.rawjson userdata holding their bytes, which the
 * JSON encoder (ga_json.c) writes back verbatim — a copy then rebuilds only
 * the members the row builder checks. Such a value is only delimited (its
 * strings and brackets), not checked token by token: both stores check every
 * document they are given (SQLite's json_valid CHECK, PostgreSQL's json type).
 *
 * Nothing is malloc'd: strings with escapes are assembled in a luaL_Buffer,
 * so a memory error raised by Lua leaks nothing. Bad input is an expected
 * failure (nil, "INVALID: ...", "INVALID"), never a raise. */
#include <stdlib.h>
#include <string.h>
#include "ga_private.h"

#define DEC_MAX_DEPTH 64

typedef struct {
  const unsigned char *s;
  size_t n, i;
  int raw_depth; /* objects and arrays deeper than this stay raw (0: none) */
  char err[96];
} jdec;

static int dec_fail(jdec *d, const char *what) {
  snprintf(d->err, sizeof d->err, "%s at byte %lu", what, (unsigned long)(d->i + 1));
  return -1;
}

static void skip_ws(jdec *d) {
  while (d->i < d->n && (d->s[d->i] == ' ' || d->s[d->i] == '\t' || d->s[d->i] == '\n' || d->s[d->i] == '\r'))
    d->i++;
}

static int hex4(const unsigned char *p, unsigned *out) {
  unsigned v = 0;
  int k;
  for (k = 0; k < 4; k++) {
    unsigned c = p[k], x;
    if (c >= '0' && c <= '9') x = c - '0';
    else if (c >= 'a' && c <= 'f') x = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') x = c - 'A' + 10;
    else return -1;
    v = v * 16 + x;
  }
  *out = v;
  return 0;
}

static void add_utf8(luaL_Buffer *b, unsigned cp) {
  if (cp < 0x80) {
    luaL_addchar(b, (char)cp);
  } else if (cp < 0x800) {
    luaL_addchar(b, (char)(0xC0 | (cp >> 6)));
    luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    luaL_addchar(b, (char)(0xE0 | (cp >> 12)));
    luaL_addchar(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
    luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
  } else {
    luaL_addchar(b, (char)(0xF0 | (cp >> 18)));
    luaL_addchar(b, (char)(0x80 | ((cp >> 12) & 0x3F)));
    luaL_addchar(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
    luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
  }
}

/* d->s[d->i] == '"': pushes the string. */
static int dec_string(lua_State *L, jdec *d) {
  size_t start = ++d->i, j = start;
  luaL_Buffer b;
  while (j < d->n && d->s[j] != '"' && d->s[j] != '\\') j++;
  if (j >= d->n) return dec_fail(d, "unterminated string");
  if (d->s[j] == '"') { /* no escapes: the bytes as they are */
    lua_pushlstring(L, (const char *)d->s + start, j - start);
    d->i = j + 1;
    return 0;
  }
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, (const char *)d->s + start, j - start);
  d->i = j;
  for (;;) {
    unsigned char c;
    if (d->i >= d->n) return dec_fail(d, "unterminated string");
    c = d->s[d->i];
    if (c == '"') break;
    if (c != '\\') {
      size_t k = d->i;
      while (k < d->n && d->s[k] != '"' && d->s[k] != '\\') k++;
      luaL_addlstring(&b, (const char *)d->s + d->i, k - d->i);
      d->i = k;
      continue;
    }
    if (d->i + 1 >= d->n) return dec_fail(d, "unterminated string");
    c = d->s[d->i + 1];
    switch (c) {
      case '"': case '\\': case '/': luaL_addchar(&b, (char)c); break;
      case 'b': luaL_addchar(&b, '\b'); break;
      case 'f': luaL_addchar(&b, '\f'); break;
      case 'n': luaL_addchar(&b, '\n'); break;
      case 'r': luaL_addchar(&b, '\r'); break;
      case 't': luaL_addchar(&b, '\t'); break;
      case 'u': {
        unsigned cp, lo;
        if (d->i + 6 > d->n || hex4(d->s + d->i + 2, &cp) != 0) return dec_fail(d, "bad \\u escape");
        d->i += 6;
        if (cp >= 0xD800 && cp <= 0xDBFF && d->i + 6 <= d->n && d->s[d->i] == '\\' && d->s[d->i + 1] == 'u' &&
            hex4(d->s + d->i + 2, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          d->i += 6;
        } else if (cp >= 0xD800 && cp <= 0xDFFF) {
          cp = 0xFFFD; /* a lone surrogate has no UTF-8 form: U+FFFD, as WHATWG decoders do */
        }
        add_utf8(&b, cp);
        continue;
      }
      default: return dec_fail(d, "bad escape");
    }
    d->i += 2;
  }
  d->i++;
  luaL_pushresult(&b);
  return 0;
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static int literal(jdec *d, const char *word, size_t len) {
  if (d->n - d->i < len || memcmp(d->s + d->i, word, len) != 0) return 0;
  d->i += len;
  return 1;
}

/* -?digits(.digits)?([eE][+-]?digits)?: an integer when it has neither a
 * fraction nor an exponent and fits in 64 bits, else a double. */
static int dec_number(lua_State *L, jdec *d) {
  size_t start = d->i, j = d->i;
  int integral = 1, neg = 0;
  if (j < d->n && d->s[j] == '-') {
    neg = 1;
    j++;
  }
  if (j >= d->n || !is_digit(d->s[j])) return dec_fail(d, "bad value");
  while (j < d->n && is_digit(d->s[j])) j++;
  if (j < d->n && d->s[j] == '.') {
    integral = 0;
    j++;
    if (j >= d->n || !is_digit(d->s[j])) return dec_fail(d, "bad number");
    while (j < d->n && is_digit(d->s[j])) j++;
  }
  if (j < d->n && (d->s[j] == 'e' || d->s[j] == 'E')) {
    integral = 0;
    j++;
    if (j < d->n && (d->s[j] == '+' || d->s[j] == '-')) j++;
    if (j >= d->n || !is_digit(d->s[j])) return dec_fail(d, "bad number");
    while (j < d->n && is_digit(d->s[j])) j++;
  }
  if (integral) {
    unsigned long long u = 0, limit = neg ? 9223372036854775808ULL : 9223372036854775807ULL;
    size_t k;
    int over = 0;
    for (k = start + (size_t)neg; k < j; k++) {
      unsigned dg = (unsigned)(d->s[k] - '0');
      if (u > (limit - dg) / 10) {
        over = 1;
        break;
      }
      u = u * 10 + dg;
    }
    if (!over) {
      ga_pushint64(L, neg ? (long long)(0ULL - u) : (long long)u);
      d->i = j;
      return 0;
    }
  }
  {
    /* Clinger's fast path: at most 15 significant digits and a power of ten
     * up to 22 are both exact doubles, so one multiplication or division is
     * correctly rounded — strtod's answer, without strtod (costs and
     * latencies nearly always qualify). */
    static const double P10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    unsigned long long m = 0;
    int nd = 0, e10 = 0, ok = 1;
    size_t k = start + (size_t)neg;
    while (k < j && is_digit(d->s[k])) {
      if (m || d->s[k] != '0') nd++;
      m = m * 10 + (unsigned)(d->s[k] - '0');
      if (nd > 15) ok = 0;
      k++;
      if (!ok) break;
    }
    if (ok && k < j && d->s[k] == '.') {
      k++;
      while (ok && k < j && is_digit(d->s[k])) {
        if (m || d->s[k] != '0') nd++;
        m = m * 10 + (unsigned)(d->s[k] - '0');
        e10--;
        if (nd > 15) ok = 0;
        k++;
      }
    }
    if (ok && k < j) { /* the exponent */
      int es = 1, ev = 0;
      k++;
      if (d->s[k] == '+' || d->s[k] == '-') es = d->s[k++] == '-' ? -1 : 1;
      while (k < j && ev < 1000) ev = ev * 10 + (d->s[k++] - '0');
      if (k < j) ok = 0;
      e10 += es * ev;
    }
    if (ok && e10 >= -22 && e10 <= 22) {
      double v = (double)m;
      v = e10 < 0 ? v / P10[-e10] : v * P10[e10];
      lua_pushnumber(L, (lua_Number)(neg ? -v : v));
      d->i = j;
      return 0;
    }
  }
  {
    char tmp[64];
    char *end;
    double v;
    if (j - start >= sizeof tmp) return dec_fail(d, "number too long");
    memcpy(tmp, d->s + start, j - start);
    tmp[j - start] = '\0';
    v = strtod(tmp, &end);
    if (end != tmp + (j - start)) return dec_fail(d, "cannot read number (LC_NUMERIC is not C?)");
    lua_pushnumber(L, (lua_Number)v);
  }
  d->i = j;
  return 0;
}

static int dec_value(lua_State *L, jdec *d, int depth);

/* The end of the object or array at d->s[d->i]: strings skipped (escapes
 * included), brackets matched by kind, nothing else looked at. */
static int delimit(jdec *d, int depth) {
  const unsigned char *base = d->s, *p = d->s + d->i, *end = d->s + d->n;
  unsigned char want[DEC_MAX_DEPTH + 2];
  int top = 0;
  for (; p < end; p++) {
    unsigned char c = *p;
    if (c == '"') {
      const unsigned char *open = p;
      for (p++;;) {
        while (p < end && *p != '"' && *p != '\\') p++; /* one test per byte */
        if (p >= end) { /* reported as dec_string does: the byte after the quote */
          d->i = (size_t)(open - base) + 1;
          return dec_fail(d, "unterminated string");
        }
        if (*p == '"') break;
        p += 2; /* the escaped byte (\u's hex digits are ordinary bytes) */
      }
      if (p >= end) break;
    } else if (c == '{' || c == '[') {
      if (depth + top > DEC_MAX_DEPTH) {
        d->i = (size_t)(p - base);
        return dec_fail(d, "nested too deep");
      }
      want[top++] = c == '{' ? '}' : ']';
    } else if (c == '}' || c == ']') {
      if (top == 0 || want[top - 1] != c) {
        d->i = (size_t)(p - base);
        return dec_fail(d, "mismatched bracket");
      }
      if (--top == 0) {
        d->i = (size_t)(p - base) + 1;
        return 0;
      }
    }
  }
  d->i = d->n;
  return dec_fail(d, "unexpected end");
}

/* An object or array nested deeper than d->raw_depth: delimited, then pushed
 * as a genaudit.rawjson userdata holding its bytes. */
static int dec_raw(lua_State *L, jdec *d, int depth) {
  size_t start = d->i, n;
  char *p;
  if (delimit(d, depth) != 0) return -1;
  n = d->i - start;
  p = (char *)lua_newuserdata(L, sizeof(size_t) + n);
  memcpy(p, &n, sizeof n);
  memcpy(p + sizeof n, d->s + start, n);
  luaL_getmetatable(L, GA_RAWJSON_MT);
  lua_setmetatable(L, -2);
  return 0;
}

static int dec_object(lua_State *L, jdec *d, int depth) {
  d->i++;
  lua_createtable(L, 0, depth == 1 ? 16 : 4); /* a metric document has 10-16 members */
  skip_ws(d);
  if (d->i < d->n && d->s[d->i] == '}') {
    d->i++;
    return 0;
  }
  for (;;) {
    skip_ws(d);
    if (d->i >= d->n || d->s[d->i] != '"') return dec_fail(d, "expected a key");
    if (dec_string(L, d) != 0) return -1;
    skip_ws(d);
    if (d->i >= d->n || d->s[d->i] != ':') return dec_fail(d, "expected ':'");
    d->i++;
    if (dec_value(L, d, depth + 1) != 0) return -1;
    lua_rawset(L, -3);
    skip_ws(d);
    if (d->i < d->n && d->s[d->i] == ',') {
      d->i++;
      continue;
    }
    if (d->i < d->n && d->s[d->i] == '}') {
      d->i++;
      return 0;
    }
    return dec_fail(d, "expected ',' or '}'");
  }
}

static int dec_array(lua_State *L, jdec *d, int depth) {
  int k = 0;
  d->i++;
  lua_createtable(L, 4, 0);
  skip_ws(d);
  if (d->i < d->n && d->s[d->i] == ']') {
    d->i++;
    return 0;
  }
  for (;;) {
    if (dec_value(L, d, depth + 1) != 0) return -1;
    lua_rawseti(L, -2, ++k);
    skip_ws(d);
    if (d->i < d->n && d->s[d->i] == ',') {
      d->i++;
      continue;
    }
    if (d->i < d->n && d->s[d->i] == ']') {
      d->i++;
      return 0;
    }
    return dec_fail(d, "expected ',' or ']'");
  }
}

static int dec_value(lua_State *L, jdec *d, int depth) {
  if (depth > DEC_MAX_DEPTH) return dec_fail(d, "nested too deep");
  luaL_checkstack(L, 4, "JSON nesting");
  skip_ws(d);
  if (d->i >= d->n) return dec_fail(d, "unexpected end");
  if (d->raw_depth > 0 && depth > d->raw_depth && (d->s[d->i] == '{' || d->s[d->i] == '['))
    return dec_raw(L, d, depth);
  switch (d->s[d->i]) {
    case '{': return dec_object(L, d, depth);
    case '[': return dec_array(L, d, depth);
    case '"': return dec_string(L, d);
    case 't':
      if (!literal(d, "true", 4)) break;
      lua_pushboolean(L, 1);
      return 0;
    case 'f':
      if (!literal(d, "false", 5)) break;
      lua_pushboolean(L, 0);
      return 0;
    case 'n':
      if (!literal(d, "null", 4)) break;
      ga_pushnull(L);
      return 0;
    default: return dec_number(L, d);
  }
  return dec_fail(d, "bad value");
}

/* core.json_decode(text [, raw_depth]) -> value | nil, "INVALID: ... at byte
 * N", "INVALID". raw_depth (default 0: none): objects and arrays nested
 * deeper than that many levels come back as genaudit.rawjson values. */
static int l_json_decode(lua_State *L) {
  jdec d;
  size_t n;
  long long raw = 0;
  const char *s = luaL_checklstring(L, 1, &n);
  if (!lua_isnoneornil(L, 2) && (!ga_tointeger(L, 2, &raw) || raw < 0 || raw > DEC_MAX_DEPTH))
    return luaL_argerror(L, 2, "raw_depth must be an integer 0..64");
  lua_settop(L, 1);
  d.s = (const unsigned char *)s;
  d.n = n;
  d.i = 0;
  d.raw_depth = (int)raw;
  d.err[0] = '\0';
  if (dec_value(L, &d, 1) == 0) {
    skip_ws(&d);
    if (d.i == d.n) return 1;
    dec_fail(&d, "trailing text");
  }
  lua_settop(L, 1);
  return ga_fail(L, "INVALID", "%s", d.err);
}

/* The bytes of a genaudit.rawjson value at idx, or NULL when it is not one. */
const char *ga_rawjson(lua_State *L, int idx, size_t *len) {
  const char *p = (const char *)luaL_testudata(L, idx, GA_RAWJSON_MT);
  if (!p) return NULL;
  memcpy(len, p, sizeof *len);
  return p + sizeof *len;
}

static int l_rawjson_tostring(lua_State *L) {
  size_t n;
  const char *p = ga_rawjson(L, 1, &n);
  lua_pushlstring(L, p ? p : "", p ? n : 0);
  return 1;
}

void ga_open_jsondec(lua_State *L) {
  luaL_newmetatable(L, GA_RAWJSON_MT); /* in the registry: one per Lua state */
  lua_pushcfunction(L, l_rawjson_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_json_decode);
  lua_setfield(L, -2, "json_decode");
}
