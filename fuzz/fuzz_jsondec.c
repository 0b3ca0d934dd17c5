/* fuzz/fuzz_jsondec.c — core.json_decode (ga_jsondec.c) on arbitrary input:
 * the first byte picks raw_depth (0..3), the rest is the JSON text. Checks:
 * the decoder never raises (only returns a value or nil, "INVALID: ..."); a
 * text the strict RFC 8259 checker accepts (and not nested past 64) decodes,
 * and encodes again (ga_json_encode, raw values spliced) to valid JSON. (Raw
 * values are only delimited, so an invalid text may decode: the stores check
 * documents themselves.) Links liblua5.4 into this binary only — never into the
 * module. */
#include <stdint.h>
#include "fuzz_util.h"
#include "../csrc/ga_private.h"

static int depth_of(const uint8_t *s, size_t n) { /* brackets outside strings, an upper bound */
  int d = 0, max = 0, in = 0;
  size_t i;
  for (i = 0; i < n; i++) {
    if (in) {
      if (s[i] == '\\') i++;
      else if (s[i] == '"') in = 0;
    } else if (s[i] == '"') in = 1;
    else if (s[i] == '[' || s[i] == '{') { if (++d > max) max = d; }
    else if (s[i] == ']' || s[i] == '}') d--;
  }
  return max;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L;
  int raw, ok;
  if (size < 1) return 0;
  raw = data[0] % 4;
  L = luaL_newstate();
  FUZZ_CHECK(L != NULL, "no Lua state");
  lua_newtable(L);
  ga_open_json(L);
  ga_open_jsondec(L);
  lua_getfield(L, -1, "json_decode");
  lua_pushlstring(L, (const char *)data + 1, size - 1);
  lua_pushinteger(L, raw);
  FUZZ_CHECK(lua_pcall(L, 2, 2, 0) == 0, "json_decode raised: %s", lua_tostring(L, -1));
  ok = !lua_isnil(L, -2);
  if (!ok) {
    FUZZ_CHECK(lua_type(L, -1) == LUA_TSTRING && strncmp(lua_tostring(L, -1), "INVALID: ", 9) == 0,
               "failure without an INVALID message");
    FUZZ_CHECK(!json_valid((const char *)data + 1, size - 1) || depth_of(data + 1, size - 1) > 64,
               "refused valid JSON: %s", lua_tostring(L, -1));
  } else {
    ga_buf b;
    char err[160];
    int rc;
    lua_pop(L, 1);
    ga_buf_init(&b);
    rc = ga_json_encode(L, lua_gettop(L), &b, 0, err, sizeof err);
    if (rc == 0) { /* an encoder limit (depth 32) may refuse what decoded: never an invalid text */
      FUZZ_CHECK(!b.oom, "out of memory");
      FUZZ_CHECK(json_valid(b.buf, b.len) || !json_valid((const char *)data + 1, size - 1),
                 "re-encoded text is not JSON: %.*s", (int)b.len, b.buf);
    }
    ga_buf_free(&b);
  }
  lua_close(L);
  return 0;
}
