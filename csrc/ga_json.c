/* ga_json.c — exact JSON for the metric columns. Debian's lua-cjson rounds
 * numbers to 14 digits and turns 5.4 integers into floats; here integers stay
 * integers and doubles get the shortest text that reads back identically. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ga_private.h"

#define JSON_MAX_DEPTH 32

void ga_buf_init(ga_buf *b) { memset(b, 0, sizeof *b); }

void ga_buf_free(ga_buf *b) {
  free(b->buf);
  ga_buf_init(b);
}

static int buf_grow(ga_buf *b, size_t need) {
  size_t cap;
  char *p;
  if (b->oom) return -1;
  if (b->len + need <= b->cap) return 0;
  cap = b->cap ? b->cap : 256;
  while (cap < b->len + need) cap *= 2;
  p = (char *)realloc(b->buf, cap);
  if (!p) {
    b->oom = 1;
    return -1;
  }
  b->buf = p;
  b->cap = cap;
  return 0;
}

void ga_buf_add(ga_buf *b, const char *s, size_t n) {
  if (buf_grow(b, n) != 0) return;
  memcpy(b->buf + b->len, s, n);
  b->len += n;
}

void ga_buf_addc(ga_buf *b, char c) { ga_buf_add(b, &c, 1); }
void ga_buf_addstr(ga_buf *b, const char *s) { ga_buf_add(b, s, strlen(s)); }

void ga_json_string(ga_buf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  size_t i, run = 0;
  ga_buf_addc(b, '"');
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    const char *esc = NULL;
    char u[6];
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    ga_buf_add(b, s + run, i - run);
    run = i + 1;
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
    if (esc) ga_buf_addstr(b, esc);
  }
  ga_buf_add(b, s + run, n - run);
  ga_buf_addc(b, '"');
}

int ga_json_double(ga_buf *b, double d) {
  char tmp[40];
  int prec;
  if (isnan(d) || isinf(d)) return -1;
  for (prec = 15; prec <= 17; prec++) {
    snprintf(tmp, sizeof tmp, "%.*g", prec, d);
    if (strtod(tmp, NULL) == d) break;
  }
  ga_buf_addstr(b, tmp);
  /* keep it a float in readers that care (e.g. 2.0 -> "2.0"): "2" is fine JSON,
   * but a cost of 2 USD read back as an integer would change the column type */
  if (!strpbrk(tmp, ".eEn")) ga_buf_add(b, ".0", 2);
  return 0;
}

void ga_json_int(ga_buf *b, long long v) {
  char tmp[24];
  int n = snprintf(tmp, sizeof tmp, "%lld", v);
  ga_buf_add(b, tmp, (size_t)n);
}

int ga_isnull(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == NULL;
}

typedef struct { const char *s; size_t n; } jkey;

static int cmp_key(const void *a, const void *b) {
  const jkey *x = (const jkey *)a, *y = (const jkey *)b;
  size_t n = x->n < y->n ? x->n : y->n;
  int c = memcmp(x->s, y->s, n);
  return c ? c : (x->n > y->n) - (x->n < y->n);
}

int ga_json_members(lua_State *L, int idx, ga_buf *b, int depth, const char *const *skip,
                    int need_comma, char *err, size_t errlen);

/* Encodes the table at absolute index idx (array or object). */
static int encode_table(lua_State *L, int idx, ga_buf *b, int depth, char *err, size_t errlen) {
  size_t count = 0, maxi = 0, nstr = 0, i;
  int all_int = 1, rc = 0;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    long long k;
    lua_pop(L, 1);
    count++;
    if (lua_type(L, -1) == LUA_TNUMBER && ga_tointeger(L, -1, &k) && k >= 1) {
      if ((size_t)k > maxi) maxi = (size_t)k;
    } else {
      all_int = 0;
      if (lua_type(L, -1) == LUA_TSTRING) nstr++;
    }
  }
  if (all_int && maxi == count) { /* array, or [] for an empty table */
    ga_buf_addc(b, '[');
    for (i = 1; i <= count && rc == 0; i++) {
      if (i > 1) ga_buf_addc(b, ',');
      lua_rawgeti(L, idx, (int)i);
      rc = ga_json_encode(L, lua_gettop(L), b, depth + 1, err, errlen);
      lua_pop(L, 1);
    }
    if (rc == 0) ga_buf_addc(b, ']');
    return rc;
  }
  if (nstr != count) {
    snprintf(err, errlen, "a table mixes array and string keys, or has keys JSON cannot hold");
    return -1;
  }
  ga_buf_addc(b, '{');
  rc = ga_json_members(L, idx, b, depth, NULL, 0, err, errlen);
  if (rc == 0) ga_buf_addc(b, '}');
  return rc;
}

static int skipped(const jkey *k, const char *const *skip) {
  for (; skip && *skip; skip++)
    if (strlen(*skip) == k->n && memcmp(*skip, k->s, k->n) == 0) return 1;
  return 0;
}

int ga_json_members(lua_State *L, int idx, ga_buf *b, int depth, const char *const *skip,
                    int need_comma, char *err, size_t errlen) {
  size_t count = 0, i, n = 0;
  int rc = 0;
  jkey *keys;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING) {
      lua_pop(L, 1);
      snprintf(err, errlen, "an object has a key that is not a string");
      return -1;
    }
    count++;
  }
  if (count == 0) return 0;
  keys = (jkey *)malloc(count * sizeof *keys);
  if (!keys) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    /* the table holds the key strings, so the pointers outlive this loop */
    keys[n].s = lua_tolstring(L, -1, &keys[n].n);
    if (!skipped(&keys[n], skip)) n++;
  }
  qsort(keys, n, sizeof *keys, cmp_key);
  for (i = 0; i < n && rc == 0; i++) {
    if (i || need_comma) ga_buf_addc(b, ',');
    ga_json_string(b, keys[i].s, keys[i].n);
    ga_buf_addc(b, ':');
    lua_pushlstring(L, keys[i].s, keys[i].n);
    lua_rawget(L, idx);
    rc = ga_json_encode(L, lua_gettop(L), b, depth + 1, err, errlen);
    lua_pop(L, 1);
  }
  free(keys);
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
#if LUA_VERSION_NUM >= 503
      if (lua_isinteger(L, idx)) {
        ga_json_int(b, (long long)lua_tointeger(L, idx));
        return 0;
      }
#else
      /* LuaJIT has only doubles: an integral value below 2^53 is an integer */
      if (ga_tointeger(L, idx, &iv) && iv > -9007199254740992LL && iv < 9007199254740992LL) {
        ga_json_int(b, iv);
        return 0;
      }
#endif
      (void)iv;
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
      if (lua_touserdata(L, idx) == NULL) {
        ga_buf_add(b, "null", 4);
        return 0;
      }
      /* fall through */
    default:
      snprintf(err, errlen, "cannot encode a %s as JSON", luaL_typename(L, idx));
      return -1;
  }
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

void ga_open_json(lua_State *L) {
  lua_pushcfunction(L, l_json_encode);
  lua_setfield(L, -2, "json_encode");
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
}
