/* fuzz/fuzz_row.c — ga_row_build / ga_row_stamp (ga_row.c), the checks and
 * metric documents of every persisted snapshot, including the created_at
 * shape check and the id check, over rows generated from the input. A valid
 * row is mutated field by field with values of every Lua type (deep tables,
 * huge and negative numbers, NaN, strings with NUL and invalid UTF-8,
 * near-miss timestamps and ids). Checks: ga_row_build never raises; on
 * success every required column is set, each metric document is valid JSON,
 * created_at has the stored shape, and stamping yields a 26-char id. Links
 * liblua5.4 into this binary only — never into the module. */
#include <math.h>
#include <stdint.h>
#include "fuzz_util.h"
#include "../csrc/ga_private.h"

typedef struct { const uint8_t *p; size_t n; } rd;

static unsigned rd_byte(rd *r) {
  if (!r->n) return 0;
  r->n--;
  return *r->p++;
}

static void rd_bytes(rd *r, void *out, size_t k) {
  size_t i;
  for (i = 0; i < k; i++) ((uint8_t *)out)[i] = (uint8_t)rd_byte(r);
}

static const char *const TOP[] = {"org_id", "user_id", "platform", "template_id", "template_version", "status",
                                  "content", "error", "final_system_prompt", "final_user_prompt", "replay_of",
                                  "created_at", "id", "token_usage", "performance", "repair_info",
                                  "request_params"};
static const char *const SUB[] = {"prompt_tokens", "completion_tokens", "total_tokens", "estimated_cost",
                                  "total_latency_ms", "provider_latency_ms", "model_identifier", "repair_count",
                                  "repair_types", "initial_validation_score", "repair_log", "calls", "x", ""};
static const char B32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static void push_value(lua_State *L, rd *r, int depth);

static void push_table(lua_State *L, rd *r, int depth) {
  unsigned i, n = rd_byte(r) % 6;
  lua_createtable(L, 0, 0);
  for (i = 0; i < n && r->n; i++) {
    unsigned k = rd_byte(r);
    if (k & 1) lua_pushinteger(L, (lua_Integer)(k >> 1) % 5 + ((k & 2) ? 0 : 1));
    else lua_pushstring(L, SUB[(k >> 1) % (sizeof SUB / sizeof *SUB)]);
    push_value(L, r, depth + 1);
    lua_rawset(L, -3);
  }
}

static void push_value(lua_State *L, rd *r, int depth) {
  unsigned kind = rd_byte(r) % 12;
  /* liblua is not instrumented and trusts the C API: room first */
  FUZZ_CHECK(lua_checkstack(L, 8), "Lua stack exhausted");
  if (depth > 60) kind = 0;
  switch (kind) {
    case 0: lua_pushnil(L); break;
    case 1: lua_pushboolean(L, (int)(rd_byte(r) & 1)); break;
    case 2: {
      int64_t v;
      rd_bytes(r, &v, 8);
      lua_pushinteger(L, (lua_Integer)v);
      break;
    }
    case 3: lua_pushinteger(L, (lua_Integer)rd_byte(r) - 64); break;
    case 4: {
      double d;
      rd_bytes(r, &d, 8);
      lua_pushnumber(L, d);
      break;
    }
    case 5: {
      char buf[256];
      unsigned n = rd_byte(r);
      rd_bytes(r, buf, n);
      lua_pushlstring(L, buf, n);
      break;
    }
    case 6: push_table(L, r, depth); break;
    case 7: lua_pushlightuserdata(L, NULL); break; /* genaudit.null */
    case 8: { /* a near-miss created_at */
      char t[] = "2024-02-29 23:59:59.123456789";
      unsigned len = 17 + rd_byte(r) % 14, pos = rd_byte(r) % 29, ch = rd_byte(r);
      if (ch & 1) t[pos] = (char)(ch >> 1);
      lua_pushlstring(L, t, len > 29 ? 29 : len);
      break;
    }
    case 9: { /* a near-miss ULID */
      char t[27];
      unsigned i, len = 25 + rd_byte(r) % 3, ch;
      for (i = 0; i < 27; i++) t[i] = B32[rd_byte(r) % 32];
      ch = rd_byte(r);
      if (ch & 1) t[rd_byte(r) % 27] = (char)(ch >> 1);
      lua_pushlstring(L, t, len);
      break;
    }
    case 10: { /* nesting around a value: past the JSON depth limit too */
      unsigned i, d = rd_byte(r) % 40;
      push_value(L, r, depth + 1);
      for (i = 0; i < d; i++) {
        lua_createtable(L, 1, 0);
        lua_insert(L, -2);
        lua_rawseti(L, -2, 1);
      }
      break;
    }
    default: lua_pushnumber(L, (rd_byte(r) & 1) ? NAN : -INFINITY); break;
  }
}

/* The valid row every input starts from. */
static void push_base(lua_State *L) {
  lua_createtable(L, 0, 16);
  lua_pushinteger(L, 42), lua_setfield(L, -2, "org_id");
  lua_pushliteral(L, "u7"), lua_setfield(L, -2, "user_id");
  lua_pushliteral(L, "linkedin"), lua_setfield(L, -2, "platform");
  lua_pushliteral(L, "launch"), lua_setfield(L, -2, "template_id");
  lua_pushliteral(L, "sys\0tem"), lua_setfield(L, -2, "final_system_prompt");
  lua_pushliteral(L, "user"), lua_setfield(L, -2, "final_user_prompt");
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, 10), lua_setfield(L, -2, "prompt_tokens");
  lua_pushinteger(L, 5), lua_setfield(L, -2, "completion_tokens");
  lua_pushnumber(L, 0.000266), lua_setfield(L, -2, "estimated_cost");
  lua_setfield(L, -2, "token_usage");
  lua_createtable(L, 0, 3);
  lua_pushnumber(L, 12.5), lua_setfield(L, -2, "total_latency_ms");
  lua_pushnumber(L, 10.25), lua_setfield(L, -2, "provider_latency_ms");
  lua_pushliteral(L, "gpt-4o-mini"), lua_setfield(L, -2, "model_identifier");
  lua_setfield(L, -2, "performance");
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, 1), lua_setfield(L, -2, "repair_count");
  lua_setfield(L, -2, "repair_info");
}

static int build_row(lua_State *L) {
  ga_row *row = (ga_row *)lua_touserdata(L, 2);
  char *err = (char *)lua_touserdata(L, 3);
  lua_pushinteger(L, ga_row_build(L, 1, row, err, 256));
  return 1;
}

static void check_stored(const ga_row *row) {
  static const int required[] = {GA_COL_ORG_ID, GA_COL_USER_ID, GA_COL_PLATFORM, GA_COL_TEMPLATE_ID,
                                 GA_COL_STATUS, GA_COL_FINAL_SYSTEM_PROMPT, GA_COL_FINAL_USER_PROMPT,
                                 GA_COL_TOKEN_METRICS, GA_COL_PERFORMANCE_METRICS, GA_COL_REPAIR_METRICS};
  size_t i;
  for (i = 0; i < sizeof required / sizeof *required; i++)
    FUZZ_CHECK(row->col[required[i]].set, "column %s not set", ga_col_names[required[i]]);
  for (i = GA_COL_TOKEN_METRICS; i <= GA_COL_REQUEST_PARAMS; i++) {
    const ga_text *c = &row->col[i];
    if (c->set) FUZZ_CHECK(json_valid(c->p, c->n), "%s is not JSON: %.*s", ga_col_names[i], (int)c->n, c->p);
  }
  if (row->col[GA_COL_CREATED_AT].set) {
    const ga_text *c = &row->col[GA_COL_CREATED_AT];
    FUZZ_CHECK(c->n == 23 && c->p[4] == '-' && c->p[7] == '-' && c->p[10] == ' ' && c->p[13] == ':' &&
                   c->p[16] == ':' && c->p[19] == '.',
               "created_at stored as '%.*s'", (int)c->n, c->p);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static lua_State *L;
  static unsigned long iter;
  rd r = {data, size};
  ga_row row;
  char err[256];
  unsigned i, muts;
  if (!L) L = luaL_newstate();
  lua_settop(L, 0);
  push_base(L); /* index 1 for the whole check: it keeps the row's strings alive */
  muts = rd_byte(&r) % 16;
  for (i = 0; i < muts && r.n; i++) {
    unsigned sel = rd_byte(&r);
    const char *top = TOP[sel % (sizeof TOP / sizeof *TOP)];
    if (sel & 0x80) { /* a member of a nested table, made a table first if it is not */
      lua_getfield(L, -1, top);
      if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, top);
      }
      push_value(L, &r, 1);
      lua_setfield(L, -2, SUB[rd_byte(&r) % (sizeof SUB / sizeof *SUB)]);
      lua_pop(L, 1);
    } else {
      push_value(L, &r, 1);
      lua_setfield(L, -2, top);
    }
  }
  lua_pushcfunction(L, build_row);
  lua_pushvalue(L, 1);
  lua_pushlightuserdata(L, &row);
  lua_pushlightuserdata(L, err);
  err[0] = '\0';
  FUZZ_CHECK(lua_pcall(L, 3, 1, 0) == LUA_OK, "ga_row_build raised: %s", lua_tostring(L, -1));
  if (lua_tointeger(L, -1) == 0) {
    ga_ulid_state st;
    check_stored(&row);
    memset(&st, 0, sizeof st);
    FUZZ_CHECK(ga_row_stamp(&row, &st) == 0, "stamp failed");
    FUZZ_CHECK(row.col[GA_COL_ID].set && row.col[GA_COL_ID].n == 26, "id not set");
    check_stored(&row);
  } else {
    FUZZ_CHECK(err[0] != '\0', "failed without a message");
  }
  ga_row_free(&row);
  if (++iter % 1024 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
