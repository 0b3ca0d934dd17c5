/* fuzz/fuzz_json.c — ga_json.c's encoders on arbitrary input. The first byte
 * picks the target:
 *   0: ga_json_string over the remaining bytes: the output is one valid JSON
 *      string, valid UTF-8 (the strict checker of fuzz_util.h), that decodes
 *      back to those bytes with each maximal ill-formed UTF-8 subpart
 *      replaced by U+FFFD — a differential check against ref_utf8, written
 *      from UTF-8's definition rather than from table 3-7 — so valid UTF-8
 *      (NULs included) comes back exactly;
 *   1: ga_json_double over 8 bytes taken as a double: NaN/inf refused; else a
 *      valid JSON number that reads back as the same double, and the very
 *      text of the reference (shortest of %.15g..%.17g, ".0" kept on
 *      integral values) — a differential check of the fast path;
 *   2: ga_json_int over 8 bytes: the same text as "%lld";
 *   3: ga_json_encode over a Lua value built from the bytes (nested tables,
 *      keys and strings of any bytes, numbers of every kind): it either
 *      refuses with a message or writes one valid JSON value, valid UTF-8;
 *      ga_utf8_valid agrees with the reference on the remaining bytes.
 * Links liblua5.4 into this binary only — never into the module. */
#include <math.h>
#include <stdint.h>
#include "fuzz_util.h"
#include "../csrc/ga_private.h"

/* s with each maximal ill-formed subpart replaced by U+FFFD, into out (at
 * least 3n bytes); returns the length. */
static size_t reference_substitute(const unsigned char *s, size_t n, char *out) {
  size_t i = 0, o = 0, sub, k;
  while (i < n) {
    if ((k = ref_utf8(s + i, n - i, &sub)) != 0) {
      memcpy(out + o, s + i, k);
      o += k;
      i += k;
    } else {
      memcpy(out + o, "\xEF\xBF\xBD", 3);
      o += 3;
      i += sub;
    }
  }
  return o;
}

typedef struct { const uint8_t *p; size_t n; } rd;

static unsigned rd_byte(rd *r) {
  if (!r->n) return 0;
  r->n--;
  return *r->p++;
}

static void push_bytes(lua_State *L, rd *r) {
  char buf[64];
  unsigned i, n = rd_byte(r) % 64;
  for (i = 0; i < n; i++) buf[i] = (char)rd_byte(r);
  lua_pushlstring(L, buf, n);
}

static void push_lua_value(lua_State *L, rd *r, int depth) {
  unsigned kind = rd_byte(r) % 8;
  FUZZ_CHECK(lua_checkstack(L, 8), "Lua stack exhausted"); /* liblua trusts the C API */
  if (depth > 40) kind = 0;
  switch (kind) {
    case 0: lua_pushnil(L); break;
    case 1: lua_pushboolean(L, (int)(rd_byte(r) & 1)); break;
    case 2: lua_pushinteger(L, (lua_Integer)rd_byte(r) * 1000003 - 70000000); break;
    case 3: {
      double d;
      unsigned char b[8];
      unsigned i;
      for (i = 0; i < 8; i++) b[i] = (unsigned char)rd_byte(r);
      memcpy(&d, b, 8);
      lua_pushnumber(L, d);
      break;
    }
    case 4: lua_pushlightuserdata(L, NULL); break; /* genaudit.null */
    case 5: { /* an array */
      unsigned i, n = rd_byte(r) % 5;
      lua_createtable(L, (int)n, 0);
      for (i = 1; i <= n; i++) {
        push_lua_value(L, r, depth + 1);
        lua_rawseti(L, -2, (lua_Integer)i);
      }
      break;
    }
    case 6: { /* an object with keys of any bytes (now and then an integer key: refused) */
      unsigned i, n = rd_byte(r) % 5;
      lua_createtable(L, 0, (int)n);
      for (i = 0; i < n; i++) {
        unsigned k = rd_byte(r);
        if (k == 0xFF) lua_pushinteger(L, 7);
        else push_bytes(L, r);
        push_lua_value(L, r, depth + 1);
        lua_rawset(L, -3);
      }
      break;
    }
    default: push_bytes(L, r); break;
  }
}

static int encode_value(lua_State *L) {
  ga_buf *b = (ga_buf *)lua_touserdata(L, 2);
  char *err = (char *)lua_touserdata(L, 3);
  lua_pushinteger(L, ga_json_encode(L, 1, b, 0, err, 160));
  return 1;
}

static void reference_double(double d, char *out, size_t outlen) {
  int prec;
  for (prec = 15; prec <= 17; prec++) {
    snprintf(out, outlen, "%.*g", prec, d);
    if (strtod(out, NULL) == d) break;
  }
  if (!strpbrk(out, ".eEn")) strcat(out, ".0");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ga_buf b;
  if (size < 1) return 0;
  ga_buf_init(&b);
  switch (data[0] % 4) {
    case 0: {
      const char *s = (const char *)data + 1;
      size_t n = size - 1, rn;
      char *dec, *ref;
      long m;
      ga_json_string(&b, s, n);
      FUZZ_CHECK(!b.oom, "out of memory");
      FUZZ_CHECK(json_valid(b.buf, b.len), "not valid JSON (or not UTF-8): %.*s", (int)b.len, b.buf);
      dec = (char *)malloc(b.len + 1);
      ref = (char *)malloc(3 * n + 1);
      m = json_string_decode(b.buf, b.len, dec);
      FUZZ_CHECK(m >= 0, "not one JSON string");
      rn = reference_substitute((const unsigned char *)s, n, ref);
      FUZZ_CHECK((size_t)m == rn && memcmp(dec, ref, rn) == 0, "decodes to other bytes than the reference "
                 "substitution (%ld vs %zu bytes)", m, rn);
      FUZZ_CHECK(ga_utf8_valid(s, n) == (rn == n && memcmp(ref, s, n) == 0), "ga_utf8_valid disagrees");
      free(dec);
      free(ref);
      break;
    }
    case 1: {
      double d;
      char ref[64];
      if (size < 9) break;
      memcpy(&d, data + 1, 8);
      if (isnan(d) || isinf(d)) {
        FUZZ_CHECK(ga_json_double(&b, d) == -1, "NaN/inf accepted");
        break;
      }
      FUZZ_CHECK(ga_json_double(&b, d) == 0, "finite double refused: %.17g", d);
      ga_buf_addc(&b, '\0');
      FUZZ_CHECK(json_number_only(b.buf, b.len - 1), "not a JSON number: %s", b.buf);
      FUZZ_CHECK(strtod(b.buf, NULL) == d, "%s does not read back as %.17g", b.buf, d);
      reference_double(d, ref, sizeof ref);
      FUZZ_CHECK(strcmp(ref, b.buf) == 0, "%.17g: got %s, reference %s", d, b.buf, ref);
      break;
    }
    case 2: {
      long long v;
      char ref[32];
      if (size < 9) break;
      memcpy(&v, data + 1, 8);
      ga_json_int(&b, v);
      snprintf(ref, sizeof ref, "%lld", v);
      FUZZ_CHECK(b.len == strlen(ref) && memcmp(b.buf, ref, b.len) == 0, "%lld: got %.*s", v, (int)b.len, b.buf);
      break;
    }
    default: {
      static lua_State *L; /* one state for the whole run: the harness's own, not the module's */
      rd r = {data + 1, size - 1};
      char err[160];
      if (!L) L = luaL_newstate();
      lua_settop(L, 0);
      push_lua_value(L, &r, 0);
      lua_pushcfunction(L, encode_value);
      lua_pushvalue(L, 1);
      lua_pushlightuserdata(L, &b);
      lua_pushlightuserdata(L, err);
      err[0] = '\0';
      FUZZ_CHECK(lua_pcall(L, 3, 1, 0) == LUA_OK, "ga_json_encode raised: %s", lua_tostring(L, -1));
      if (lua_tointeger(L, -1) == 0) {
        FUZZ_CHECK(!b.oom, "out of memory");
        FUZZ_CHECK(json_valid(b.buf, b.len), "not valid JSON (or not UTF-8): %.*s", (int)b.len, b.buf);
      } else {
        FUZZ_CHECK(err[0] != '\0', "refused without a message");
      }
      lua_settop(L, 0);
      break;
    }
  }
  ga_buf_free(&b);
  return 0;
}
