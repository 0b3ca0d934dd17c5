/* ga_tape.c — deferred JSON: what an async persist hands the writer thread
 * instead of a metric document's text. The caller's thread must read the Lua
 * tables (no other thread may), but escaping strings, formatting numbers and
 * sorting keys need no Lua: the caller copies the values into a tape, and the
 * hasher or writer thread turns the tape into exactly the JSON ga_json_encode
 * would have written (ga_tape_json). A tape is that JSON's literal text with
 * holes: GA_TAPE_HOLE (a byte no JSON text holds) followed by one value in
 * the binary form below. Values the tape cannot take (anything ga_json_encode
 * would refuse, and tables too large to walk cheaply) make the writer give up
 * (-1): the row is then encoded directly, which gives the exact error, if any.
 *
 * Binary values: 'n' 't' 'f'; 'i' int64; 'd' double; 's' size_t n + n bytes
 * (a string: escaped later); 'r' size_t n + n bytes (raw JSON, verbatim);
 * 'a' / 'o' / 'm' size_t count + size_t body bytes + entries: an array's
 * entries are 'x' int64 index + value (in any order: the index places them),
 * an object's 'k' size_t n + key bytes + value (sorted later); 'm' (members:
 * an object's entries without braces) has one more byte, need_comma, before
 * its count. The walk keeps no Lua value of its own: every byte is copied,
 * so the tape outlives the row's table. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "ga_private.h"

#define TAPE_MAX_DEPTH 32 /* as ga_json_encode: depth counts the tables around a value */
/* Keys whose tables a walk may hold at once (the path from the root): past
 * it the row is encoded directly, which then decides as it always did (it
 * keeps every key of the tables on its path on the Lua stack). */
#define TAPE_MAX_PATH_KEYS 8192

typedef struct {
  ga_tape_info *info;
  size_t path_keys;
} walk;

static void put_size(ga_buf *b, size_t v) { ga_buf_add(b, (const char *)&v, sizeof v); }

static size_t get_size(const char *p) {
  size_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

static int tape_value(lua_State *L, int idx, ga_buf *b, int depth, walk *w);

/* ga_tointeger (exact = 0) or ga_exactint (exact = 1) of the number at idx,
 * with one call into the VM where those make several. */
static int number_int(lua_State *L, int idx, int exact, long long *iv) {
#if GA_HAS_INTEGER
  if (lua_isinteger(L, idx)) {
    *iv = (long long)lua_tointeger(L, idx);
    return 1;
  }
  if (exact) return 0;
  return ga_tointeger(L, idx, iv);
#else
  lua_Number d = lua_tonumber(L, idx);
  if (exact ? !(d > -(double)GA_INT53 && d < (double)GA_INT53)
            : !(d >= -9223372036854775808.0 && d < 9223372036854775808.0))
    return 0;
  if (floor(d) != d) return 0;
  *iv = (long long)d;
  return 1;
#endif
}

/* One table (absolute index idx): its entries in lua_next order, then
 * whether it is an array (keys exactly 1..n, or empty) or an object (string
 * keys only); anything else gives up. skip: names left out (members only). */
static int tape_table(lua_State *L, int idx, ga_buf *b, int depth, walk *w, int members, int need_comma,
                      const char *const *skip) {
  size_t hdr, body, count = 0, nint = 0, nstr = 0, maxi = 0, written = 0, held = 0;
  size_t bound = 2;
  char kind;
  if (!lua_checkstack(L, 4)) return -1;
  hdr = b->len;
  ga_buf_addc(b, members ? 'm' : 'o');
  if (members) ga_buf_addc(b, (char)need_comma);
  put_size(b, 0); /* count and body bytes: filled in below */
  put_size(b, 0);
  body = b->len;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    int kt = lua_type(L, -2);
    long long iv;
    count++;
    if (kt == LUA_TSTRING) {
      size_t n;
      const char *k = lua_tolstring(L, -2, &n);
      nstr++;
      if (skip) {
        const char *const *s;
        for (s = skip; *s; s++)
          if ((*s)[0] == k[0] && strlen(*s) == n && memcmp(*s, k, n) == 0) break;
        if (*s) { /* left out: its value is never looked at */
          lua_pop(L, 1);
          continue;
        }
      }
      held++;
      if (++w->path_keys > TAPE_MAX_PATH_KEYS) {
        lua_pop(L, 2);
        return -1;
      }
      ga_buf_addc(b, 'k');
      put_size(b, n);
      ga_buf_add(b, k, n);
      bound += 6 * n + 4; /* "key": and a comma */
    } else if (!members && kt == LUA_TNUMBER && number_int(L, -2, 0, &iv) && iv >= 1) {
      nint++;
      if ((size_t)iv > maxi) maxi = (size_t)iv;
      ga_buf_addc(b, 'x');
      ga_buf_add(b, (const char *)&iv, sizeof iv);
      bound += 1; /* a comma */
    } else {
      lua_pop(L, 2);
      return -1;
    }
    written++;
    if (tape_value(L, -1, b, depth + 1, w) != 0) {
      lua_pop(L, 2);
      return -1;
    }
    lua_pop(L, 1);
  }
  w->path_keys -= held;
  if (members) {
    if (nstr != count) return -1;
    kind = 'm';
    bound -= 2; /* no braces */
  } else if (nint == count && maxi == count) {
    kind = 'a';
  } else if (nstr == count) {
    kind = 'o';
  } else {
    return -1;
  }
  if (b->oom) return -1;
  b->buf[hdr] = kind;
  hdr += members ? 2 : 1;
  memcpy(b->buf + hdr, &written, sizeof written);
  {
    size_t len = b->len - body;
    memcpy(b->buf + hdr + sizeof written, &len, sizeof len);
  }
  w->info->bound += bound;
  return 0;
}

/* The value at idx (negative: relative to the top) into the tape. */
static int tape_value(lua_State *L, int idx, ga_buf *b, int depth, walk *w) {
  long long iv;
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      ga_buf_addc(b, 'n');
      w->info->bound += 4;
      return 0;
    case LUA_TBOOLEAN:
      ga_buf_addc(b, lua_toboolean(L, idx) ? 't' : 'f');
      w->info->bound += 5;
      return 0;
    case LUA_TNUMBER: {
      if (number_int(L, idx, 1, &iv)) {
        ga_buf_addc(b, 'i');
        ga_buf_add(b, (const char *)&iv, sizeof iv);
        w->info->bound += 20;
      } else {
        double d = (double)lua_tonumber(L, idx);
        if (isnan(d) || isinf(d)) return -1;
        ga_buf_addc(b, 'd');
        ga_buf_add(b, (const char *)&d, sizeof d);
        w->info->bound += 26; /* %.17g at its longest, or ".0" added */
      }
      return 0;
    }
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      ga_buf_addc(b, 's');
      put_size(b, n);
      ga_buf_add(b, s, n);
      w->info->bound += 6 * n + 2; /* every byte as \u00XX at worst */
      return 0;
    }
    case LUA_TTABLE:
      if (depth >= TAPE_MAX_DEPTH) return -1;
      return tape_table(L, ga_absindex(L, idx), b, depth, w, 0, 0, NULL);
    case LUA_TLIGHTUSERDATA:
      if (!ga_isnull(L, idx)) return -1;
      ga_buf_addc(b, 'n');
      w->info->bound += 4;
      return 0;
    case LUA_TUSERDATA: {
      size_t n;
      const char *raw = ga_rawjson(L, idx, &n);
      if (!raw) return -1;
      ga_buf_addc(b, 'r');
      put_size(b, n);
      ga_buf_add(b, raw, n);
      w->info->bound += n;
      return 0;
    }
    default: return -1;
  }
}

int ga_tape_value(lua_State *L, int idx, ga_buf *b, int depth, ga_tape_info *info) {
  walk w;
  size_t start = b->len;
  w.info = info;
  w.path_keys = 0;
  if (!lua_checkstack(L, 4)) return -1;
  ga_buf_addc(b, GA_TAPE_HOLE);
  if (tape_value(L, idx, b, depth, &w) != 0) return -1;
  info->hole_bytes += b->len - start;
  return b->oom ? -1 : 0;
}

void ga_tape_double(ga_buf *b, double d, ga_tape_info *info) {
  ga_buf_addc(b, GA_TAPE_HOLE);
  ga_buf_addc(b, 'd');
  ga_buf_add(b, (const char *)&d, sizeof d);
  info->hole_bytes += 2 + sizeof d;
  info->bound += 26;
}

int ga_tape_members(lua_State *L, int idx, ga_buf *b, int depth, const char *const *skip, int need_comma,
                    ga_tape_info *info) {
  walk w;
  size_t start = b->len;
  w.info = info;
  w.path_keys = 0;
  ga_buf_addc(b, GA_TAPE_HOLE);
  if (tape_table(L, ga_absindex(L, idx), b, depth, &w, 1, need_comma, skip) != 0) return -1;
  info->hole_bytes += b->len - start;
  return b->oom ? -1 : 0;
}

int ga_json_has_nul_escape(const char *s, size_t n) {
  size_t i;
  for (i = 0; i + 1 < n; i++) {
    if (s[i] != '\\') continue;
    if (s[i + 1] == 'u' && i + 5 < n && memcmp(s + i + 2, "0000", 4) == 0) return 1;
    i++; /* skip the escaped character */
  }
  return 0;
}

/* ---- from a tape to JSON (pure C: any thread) ---- */

typedef struct {
  const char *key; /* object entries: the key's bytes; arrays: unused */
  size_t n;
  const char *value;
} entry;
#define ENTRIES_INLINE 32

/* The end of the value at p (tapes are well-formed: this file wrote them). */
static const char *skip_value(const char *p) {
  switch (*p) {
    case 'i': case 'd': return p + 1 + 8;
    case 's': case 'r': return p + 1 + sizeof(size_t) + get_size(p + 1);
    case 'a': case 'o': return p + 1 + 2 * sizeof(size_t) + get_size(p + 1 + sizeof(size_t));
    case 'm': return p + 2 + 2 * sizeof(size_t) + get_size(p + 2 + sizeof(size_t));
    default: return p + 1; /* n t f */
  }
}

/* Keys in byte order, shorter first on a common prefix: ga_json.c's order. */
static int key_before(const entry *x, const entry *y) {
  size_t n = x->n < y->n ? x->n : y->n;
  int c = memcmp(x->key, y->key, n);
  return c ? c < 0 : x->n < y->n;
}

static int cmp_entry(const void *a, const void *b) {
  const entry *x = (const entry *)a, *y = (const entry *)b;
  return key_before(x, y) ? -1 : key_before(y, x) ? 1 : 0;
}

static int emit(const char *p, ga_buf *out);

/* An array ('a') or object/members ('o', 'm') at p. 0, or -1 out of memory. */
static int emit_table(const char *p, ga_buf *out) {
  char kind = *p;
  int need_comma = 0, rc = 0;
  size_t count, i;
  const char *q;
  entry inl[ENTRIES_INLINE], *e = inl;
  if (kind == 'm') need_comma = p[1];
  q = p + (kind == 'm' ? 2 : 1);
  count = get_size(q);
  q += 2 * sizeof(size_t);
  if (count > ENTRIES_INLINE && !(e = (entry *)malloc(count * sizeof *e))) return -1;
  for (i = 0; i < count; i++) {
    if (*q == 'x') { /* an array entry: its index, 1..count */
      long long iv;
      memcpy(&iv, q + 1, sizeof iv);
      q += 1 + sizeof iv;
      e[iv - 1].value = q;
    } else {
      e[i].n = get_size(q + 1);
      e[i].key = q + 1 + sizeof(size_t);
      q = e[i].key + e[i].n;
      e[i].value = q;
    }
    q = skip_value(q);
  }
  if (kind == 'a') {
    ga_buf_addc(out, '[');
    for (i = 0; i < count && rc == 0; i++) {
      if (i) ga_buf_addc(out, ',');
      rc = emit(e[i].value, out);
    }
    ga_buf_addc(out, ']');
  } else {
    if (count > 24) {
      qsort(e, count, sizeof *e, cmp_entry);
    } else { /* metric objects are small: insertion sort */
      size_t j;
      for (i = 1; i < count; i++) {
        entry t = e[i];
        for (j = i; j > 0 && key_before(&t, &e[j - 1]); j--) e[j] = e[j - 1];
        e[j] = t;
      }
    }
    if (kind == 'o') ga_buf_addc(out, '{');
    for (i = 0; i < count && rc == 0; i++) {
      if (i || need_comma) ga_buf_addc(out, ',');
      ga_json_string(out, e[i].key, e[i].n);
      ga_buf_addc(out, ':');
      rc = emit(e[i].value, out);
    }
    if (kind == 'o') ga_buf_addc(out, '}');
  }
  if (e != inl) free(e);
  return rc;
}

static int emit(const char *p, ga_buf *out) {
  switch (*p) {
    case 'n': ga_buf_add(out, "null", 4); return 0;
    case 't': ga_buf_add(out, "true", 4); return 0;
    case 'f': ga_buf_add(out, "false", 5); return 0;
    case 'i': {
      long long iv;
      memcpy(&iv, p + 1, sizeof iv);
      ga_json_int(out, iv);
      return 0;
    }
    case 'd': {
      double d;
      memcpy(&d, p + 1, sizeof d);
      return ga_json_double(out, d);
    }
    case 's': ga_json_string(out, p + 1 + sizeof(size_t), get_size(p + 1)); return 0;
    case 'r': ga_buf_add(out, p + 1 + sizeof(size_t), get_size(p + 1)); return 0;
    default: return emit_table(p, out);
  }
}

/* GA_TAPE_* of the value at p (and what it holds). */
static unsigned value_flags(const char *p) {
  unsigned f = 0;
  size_t n, count, i;
  const char *q;
  switch (*p) {
    case 's':
      n = get_size(p + 1);
      return memchr(p + 1 + sizeof(size_t), '\0', n) ? GA_TAPE_NUL : 0;
    case 'r':
      n = get_size(p + 1);
      q = p + 1 + sizeof(size_t);
      if (memchr(q, '\0', n) || ga_json_has_nul_escape(q, n)) f |= GA_TAPE_NUL;
      if (!ga_utf8_valid(q, n)) f |= GA_TAPE_BADUTF8;
      return f;
    case 'a': case 'o': case 'm':
      q = p + (*p == 'm' ? 2 : 1);
      count = get_size(q);
      q += 2 * sizeof(size_t);
      for (i = 0; i < count; i++) {
        if (*q == 'x') {
          q += 1 + 8;
        } else {
          n = get_size(q + 1);
          if (memchr(q + 1 + sizeof(size_t), '\0', n)) f |= GA_TAPE_NUL; /* a key */
          q += 1 + sizeof(size_t) + n;
        }
        f |= value_flags(q);
        q = skip_value(q);
      }
      return f;
    default: return 0;
  }
}

unsigned ga_tape_flags(const char *tape, size_t n) {
  const char *p = tape, *end = tape + n;
  unsigned f = 0;
  while (p < end) {
    const char *hole = (const char *)memchr(p, GA_TAPE_HOLE, (size_t)(end - p));
    if (!hole) break;
    f |= value_flags(hole + 1);
    p = skip_value(hole + 1);
  }
  return f;
}

int ga_tape_json(const char *tape, size_t n, ga_buf *out) {
  const char *p = tape, *end = tape + n;
  while (p < end) {
    const char *hole = (const char *)memchr(p, GA_TAPE_HOLE, (size_t)(end - p));
    if (!hole) {
      ga_buf_add(out, p, (size_t)(end - p));
      break;
    }
    ga_buf_add(out, p, (size_t)(hole - p));
    if (emit(hole + 1, out) != 0) return -1;
    p = skip_value(hole + 1);
  }
  return out->oom ? -1 : 0;
}
