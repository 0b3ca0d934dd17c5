/* ga_row.c — turns the table given to persist_generation into one row of
 * generation_snapshots: checks every field, and builds the three metric
 * documents exactly (the spec's keys first, in the spec's order, then any
 * extra keys sorted). Shared by every store backend. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ga_private.h"

const char *const ga_col_names[GA_NCOLS] = {
    "id", "created_at", "org_id", "user_id", "platform", "template_id", "template_version",
    "status", "content", "error", "final_system_prompt", "final_user_prompt", "token_metrics",
    "performance_metrics", "repair_metrics", "request_params", "replay_of", "drafts"};

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

/* A document value written as a tape and the tape refused it: the row is
 * built again directly (ga_row_build_deferred), which decides. */
#define REDO (-2)

/* The value at idx into document b: JSON (ti NULL) or a tape hole. 0, -1
 * with e set (direct: ga_json_encode's refusal), or REDO. */
static int put_value(lua_State *L, int idx, ga_buf *b, int depth, ga_tape_info *ti, char *e, size_t elen) {
  if (ti) return ga_tape_value(L, idx, b, depth, ti) == 0 ? 0 : REDO;
  return ga_json_encode(L, idx, b, depth, e, elen);
}

/* How far ahead of this host's clock an explicit created_at may be (clock
 * skew between the hosts of a fleet, for copies and imports): 5 minutes. */
#define GA_MAX_CLOCK_SKEW_MS (5 * 60 * 1000)

/* Field kinds for the top-level text columns. */
enum { F_STR, F_ID };

/* Reads field `name` of the table at idx into col. required: absent is an
 * error. F_ID also takes an integer (rendered into numbuf). Leaves the stack
 * as it found it: the string stays alive in the table. */
static int text_field(lua_State *L, int idx, const char *name, int kind, int required, int nonempty,
                      ga_text *col, char *numbuf, char *err, size_t errlen) {
  int t;
  long long iv;
  ga_rawgetfield(L, idx, name); /* raw: the string must be held by the table itself */
  t = lua_type(L, -1);
  col->set = 0;
  if (t == LUA_TNIL || ga_isnull(L, -1)) {
    lua_pop(L, 1);
    if (required) FAIL("%s is required", name);
    return 0;
  }
  if (t == LUA_TSTRING) {
    col->p = lua_tolstring(L, -1, &col->n);
    col->set = 1;
  } else if (kind == F_ID && t == LUA_TNUMBER && ga_tointeger(L, -1, &iv)) {
    col->n = (size_t)snprintf(numbuf, 24, "%lld", iv);
    col->p = numbuf;
    col->set = 1;
  } else {
    const char *tn = luaL_typename(L, -1);
    lua_pop(L, 1);
    FAIL("%s must be a %s (got %s)", name, kind == F_ID ? "string or an integer" : "string", tn);
  }
  lua_pop(L, 1); /* the table still references the string */
  if (nonempty && col->n == 0) FAIL("%s must not be empty", name);
  return 0;
}

/* Pushes field `key` of the table at tidx; returns its Lua type. */
static int getf(lua_State *L, int tidx, const char *key) {
  ga_rawgetfield(L, tidx, key);
  return ga_isnull(L, -1) ? LUA_TNIL : lua_type(L, -1);
}

/* Writes ,"key":<non-negative integer>; dflt < 0: required. Pops nothing. */
static int count_member(lua_State *L, int tidx, const char *obj, const char *key, long long dflt,
                        int first, ga_buf *b, long long *out, char *err, size_t errlen) {
  long long v;
  int t = getf(L, tidx, key);
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    if (dflt < 0) FAIL("%s.%s is required", obj, key);
    v = dflt;
  } else {
    int ok = ga_tointeger(L, -1, &v);
    lua_pop(L, 1);
    if (!ok || v < 0) FAIL("%s.%s must be a non-negative integer", obj, key);
  }
  if (!first) ga_buf_addc(b, ',');
  ga_buf_addc(b, '"');
  ga_buf_addstr(b, key);
  ga_buf_add(b, "\":", 2);
  ga_json_int(b, v);
  if (out) *out = v;
  return 0;
}

/* Writes ,"key":<number >= 0 or null>. required: absent is an error. */
static int number_member(lua_State *L, int tidx, const char *obj, const char *key, int required,
                         int first, ga_buf *b, ga_tape_info *ti, double *out, char *err, size_t errlen) {
  int t = getf(L, tidx, key);
  if (out) *out = NAN; /* absent */
  if (!first) ga_buf_addc(b, ',');
  ga_buf_addc(b, '"');
  ga_buf_addstr(b, key);
  ga_buf_add(b, "\":", 2);
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    if (required) FAIL("%s.%s is required", obj, key);
    ga_buf_add(b, "null", 4);
    return 0;
  }
  if (t != LUA_TNUMBER) {
    lua_pop(L, 1);
    FAIL("%s.%s must be a number", obj, key);
  }
  {
    long long iv = 0;
    double d = (double)lua_tonumber(L, -1);
    /* a Lua integer stays one; LuaJIT's doubles are written as doubles */
    int is_int = ga_isinteger(L, -1) && ga_tointeger(L, -1, &iv);
    lua_pop(L, 1);
    if (isnan(d) || isinf(d) || d < 0) FAIL("%s.%s must be a finite number >= 0", obj, key);
    if (out) *out = d;
    if (is_int) ga_json_int(b, iv);
    else if (ti) ga_tape_double(b, d, ti); /* formatted by the writer's threads */
    else ga_json_double(b, d);
  }
  return 0;
}

/* Upper bounds of plausibility (README, persist_generation fields). */
#define GA_MAX_COST_USD 1e6          /* one generation */
#define GA_MAX_LATENCY_MS 604800000.0 /* a week */
#define GA_MAX_REPAIRS 1000

/* The optional token detail `key` of the table at tidx, if present, must be a
 * non-negative integer no larger than `limit` (the count it is part of). */
static int detail_count(lua_State *L, int tidx, const char *key, long long limit, const char *of, char *err,
                        size_t errlen) {
  long long v;
  int t = getf(L, tidx, key), ok = 1;
  if (t != LUA_TNIL) ok = ga_tointeger(L, -1, &v);
  lua_pop(L, 1);
  if (t == LUA_TNIL) return 0;
  if (!ok || v < 0) FAIL("token_usage.%s must be a non-negative integer", key);
  if (v > limit) FAIL("token_usage.%s: %lld is more than %s (%lld)", key, v, of, limit);
  return 0;
}

/* Writes the remaining members of the table at tidx (extra keys, sorted). */
static int rest_members(lua_State *L, int tidx, const char *obj, const char *const *skip, ga_buf *b,
                        ga_tape_info *ti, char *err, size_t errlen) {
  char e[160];
  if (ti) return ga_tape_members(L, tidx, b, 1, skip, 1, ti) == 0 ? 0 : REDO;
  if (ga_json_members(L, tidx, b, 1, skip, 1, e, sizeof e) != 0) FAIL("%s: %s", obj, e);
  return 0;
}

/* Checks field `name` is a table and leaves it on the stack (absolute index in *tidx). */
static int table_field(lua_State *L, int idx, const char *name, int *tidx, char *err, size_t errlen) {
  int t = getf(L, idx, name);
  if (t != LUA_TTABLE) {
    const char *tn = t == LUA_TNIL ? "nil" : luaL_typename(L, -1);
    lua_pop(L, 1);
    FAIL("%s must be a table (got %s)", name, tn);
  }
  *tidx = lua_gettop(L);
  return 0;
}

/* The exact picodollar amount at the top of the stack: a non-negative
 * integer the VM holds exactly, or the decimal digits of a genaudit.rawjson
 * value (what core.json_decode and the meter give for one above LuaJIT's
 * 2^53). Sets *out and its digits (dec: 24 bytes); 0, or -1 when it is
 * anything else or above the plausible maximum (1e6 USD). */
static int pico_value(lua_State *L, unsigned long long *out, char *dec) {
  long long iv;
  size_t n, i;
  const char *raw;
  unsigned long long v = 0;
  if (lua_type(L, -1) == LUA_TNUMBER) {
    if (!ga_exactint(L, -1, &iv) || iv < 0) return -1;
    v = (unsigned long long)iv;
  } else if ((raw = ga_rawjson(L, -1, &n)) != NULL) {
    if (n == 0 || n > 19) return -1;
    for (i = 0; i < n; i++) {
      if (raw[i] < '0' || raw[i] > '9') return -1;
      v = v * 10 + (unsigned long long)(raw[i] - '0');
    }
  } else {
    return -1;
  }
  if (v > 1000000000000000000ULL) return -1; /* GA_MAX_COST_USD in picodollars */
  snprintf(dec, 24, "%llu", v);
  *out = v;
  return 0;
}

/* token_usage.estimated_cost_picousd (optional): the exact cost in
 * picodollars (1e-12 USD). When given it must be a non-negative integer,
 * come with estimated_cost, and estimated_cost must be the double nearest
 * to it (what the meter writes); and when every element of token_usage.calls
 * (an array of tables) carries a non-null cost_picousd, they must add up to
 * it. Leaves the stack as it found it. */
static int check_picousd(lua_State *L, int tidx, double cost, char *err, size_t errlen) {
  unsigned long long total, sum = 0;
  char dec[24], cdec[24];
  int t = getf(L, tidx, "estimated_cost_picousd"), all = 1;
  size_t i, n;
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  if (pico_value(L, &total, dec) != 0) {
    lua_pop(L, 1);
    FAIL("token_usage.estimated_cost_picousd must be an integer number of picodollars, 0..1e18");
  }
  lua_pop(L, 1);
  if (isnan(cost)) FAIL("token_usage.estimated_cost_picousd is given without estimated_cost");
  if (ga_usd_from_pico_text(dec) != cost)
    FAIL("token_usage.estimated_cost_picousd: %s picodollars is not estimated_cost (%.17g USD)", dec, cost);
  if (getf(L, tidx, "calls") != LUA_TTABLE) { /* absent, or kept as raw JSON text by a copy */
    lua_pop(L, 1);
    return 0;
  }
  n = ga_rawlen(L, -1);
  for (i = 1; i <= n && all; i++) {
    lua_rawgeti(L, -1, (int)i);
    if (lua_type(L, -1) != LUA_TTABLE) {
      all = 0;
    } else {
      unsigned long long c;
      t = getf(L, -1, "cost_picousd");
      if (t == LUA_TNIL) {
        all = 0;
      } else if (pico_value(L, &c, cdec) != 0) {
        lua_pop(L, 3);
        FAIL("token_usage.calls[%zu].cost_picousd must be an integer number of picodollars, 0..1e18", i);
      } else {
        sum += c; /* each <= 1e18 and the sum is checked at every step: no overflow */
        if (sum > total) all = 2;
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (all == 2) break;
  }
  lua_pop(L, 1);
  if (all == 2 || (all == 1 && n > 0 && sum != total))
    FAIL("token_usage.estimated_cost_picousd: %s is not the sum of the calls' cost_picousd", dec);
  return 0;
}

static int build_token_metrics(lua_State *L, int idx, ga_buf *b, ga_tape_info *ti, char *err, size_t errlen) {
  static const char *const skip[] = {"prompt_tokens", "completion_tokens", "total_tokens", "estimated_cost", NULL};
  int tidx, rc;
  long long p = 0, c = 0, total = 0;
  double cost = NAN;
  if (table_field(L, idx, "token_usage", &tidx, err, errlen) != 0) return -1;
  ga_buf_addc(b, '{');
  rc = count_member(L, tidx, "token_usage", "prompt_tokens", -1, 1, b, &p, err, errlen);
  if (rc == 0) rc = count_member(L, tidx, "token_usage", "completion_tokens", -1, 0, b, &c, err, errlen);
  if (rc == 0) {
    if (p > GA_INT53 || c > GA_INT53) {
      snprintf(err, errlen, "token_usage: token counts above 2^53 are not plausible");
      rc = -1;
    }
  }
  if (rc == 0) rc = count_member(L, tidx, "token_usage", "total_tokens", p + c, 0, b, &total, err, errlen);
  if (rc == 0 && total < p + c) {
    snprintf(err, errlen, "token_usage.total_tokens: %lld is less than prompt_tokens + completion_tokens (%lld)",
             total, p + c);
    rc = -1;
  }
  if (rc == 0) rc = number_member(L, tidx, "token_usage", "estimated_cost", 0, 0, b, ti, &cost, err, errlen);
  if (rc == 0 && cost > GA_MAX_COST_USD) { /* NaN (absent) compares false */
    snprintf(err, errlen, "token_usage.estimated_cost: %.17g USD for one generation is not plausible", cost);
    rc = -1;
  }
  if (rc == 0) rc = check_picousd(L, tidx, cost, err, errlen);
  if (rc == 0) rc = detail_count(L, tidx, "cached_prompt_tokens", p, "prompt_tokens", err, errlen);
  if (rc == 0) rc = detail_count(L, tidx, "cache_write_tokens", p, "prompt_tokens", err, errlen);
  if (rc == 0) rc = detail_count(L, tidx, "reasoning_tokens", c, "completion_tokens", err, errlen);
  if (rc == 0) rc = rest_members(L, tidx, "token_usage", skip, b, ti, err, errlen);
  lua_pop(L, 1);
  if (rc == 0) ga_buf_addc(b, '}');
  return rc;
}

static int build_performance_metrics(lua_State *L, int idx, ga_buf *b, ga_tape_info *ti, char *err,
                                     size_t errlen) {
  static const char *const skip[] = {"total_latency_ms", "provider_latency_ms", "model_identifier", NULL};
  int tidx, rc, t;
  double total = 0, provider = 0;
  if (table_field(L, idx, "performance", &tidx, err, errlen) != 0) return -1;
  ga_buf_addc(b, '{');
  rc = number_member(L, tidx, "performance", "total_latency_ms", 1, 1, b, ti, &total, err, errlen);
  if (rc == 0) rc = number_member(L, tidx, "performance", "provider_latency_ms", 1, 0, b, ti, &provider, err, errlen);
  if (rc == 0 && total > GA_MAX_LATENCY_MS) {
    snprintf(err, errlen, "performance.total_latency_ms: %.17g ms (over a week) is not plausible", total);
    rc = -1;
  }
  if (rc == 0 && provider > total) { /* the provider's wait is part of the generation's wall-clock time */
    snprintf(err, errlen, "performance.provider_latency_ms: %.17g is more than total_latency_ms (%.17g)", provider,
             total);
    rc = -1;
  }
  if (rc == 0) {
    t = getf(L, tidx, "model_identifier");
    ga_buf_add(b, ",\"model_identifier\":", 20);
    if (t == LUA_TSTRING) {
      size_t n;
      const char *s = lua_tolstring(L, -1, &n);
      if (ti) rc = ga_tape_value(L, -1, b, 1, ti) == 0 ? 0 : REDO;
      else ga_json_string(b, s, n);
    } else if (t == LUA_TNIL) {
      ga_buf_add(b, "null", 4);
    } else {
      snprintf(err, errlen, "performance.model_identifier must be a string");
      rc = -1;
    }
    lua_pop(L, 1);
  }
  if (rc == 0) rc = rest_members(L, tidx, "performance", skip, b, ti, err, errlen);
  lua_pop(L, 1);
  if (rc == 0) ga_buf_addc(b, '}');
  return rc;
}

static int build_repair_metrics(lua_State *L, int idx, ga_buf *b, ga_tape_info *ti, long long *count, char *err,
                                size_t errlen) {
  static const char *const skip[] = {"repair_count", "repair_types", "initial_validation_score", "repair_log", NULL};
  int tidx, rc, t;
  double score = NAN;
  long long repairs = 0;
  size_t rawn;
  char e[160];
  if (table_field(L, idx, "repair_info", &tidx, err, errlen) != 0) return -1;
  ga_buf_addc(b, '{');
  rc = count_member(L, tidx, "repair_info", "repair_count", 0, 1, b, &repairs, err, errlen);
  *count = repairs;
  if (rc == 0 && repairs > GA_MAX_REPAIRS) {
    snprintf(err, errlen, "repair_info.repair_count: %lld repairs of one draft are not plausible (at most %d)", repairs,
             GA_MAX_REPAIRS);
    rc = -1;
  }
  if (rc == 0) { /* repair_types: an array of slugs */
    t = getf(L, tidx, "repair_types");
    ga_buf_add(b, ",\"repair_types\":", 16);
    if (t == LUA_TNIL) {
      ga_buf_add(b, "[]", 2);
    } else if (t == LUA_TTABLE) {
      size_t i, n = ga_rawlen(L, -1), keys = 0;
      lua_pushnil(L);
      while (lua_next(L, -2) != 0) { lua_pop(L, 1); keys++; }
      if (keys != n) rc = -1;
      for (i = 1; rc == 0 && i <= n; i++) {
        lua_rawgeti(L, -1, (int)i);
        if (lua_type(L, -1) != LUA_TSTRING) rc = -1;
        lua_pop(L, 1);
      }
      if (rc == 0) rc = put_value(L, lua_gettop(L), b, 1, ti, e, sizeof e);
      if (rc == -1) snprintf(err, errlen, "repair_info.repair_types must be an array of strings");
    } else {
      snprintf(err, errlen, "repair_info.repair_types must be an array of strings");
      rc = -1;
    }
    lua_pop(L, 1);
  }
  if (rc == 0) rc = number_member(L, tidx, "repair_info", "initial_validation_score", 0, 0, b, ti, &score, err, errlen);
  if (rc == 0 && score > 100) { /* NaN (absent) compares false */
    snprintf(err, errlen, "repair_info.initial_validation_score: %.17g is outside 0..100", score);
    rc = -1;
  }
  if (rc == 0) { /* final_validation_score: an extra key, written with the others, checked here */
    t = getf(L, tidx, "final_validation_score");
    if (t != LUA_TNIL) {
      double d = t == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : NAN;
      if (!(d >= 0 && d <= 100)) {
        snprintf(err, errlen, "repair_info.final_validation_score: must be a number in 0..100");
        rc = -1;
      }
    }
    lua_pop(L, 1);
  }
  if (rc == 0) { /* repair_log: text or any JSON value (raw JSON too); [] when absent */
    t = getf(L, tidx, "repair_log");
    ga_buf_add(b, ",\"repair_log\":", 14);
    if (t == LUA_TNIL) {
      ga_buf_add(b, "[]", 2);
    } else if (t == LUA_TSTRING || t == LUA_TTABLE || (t == LUA_TUSERDATA && ga_rawjson(L, -1, &rawn))) {
      if ((rc = put_value(L, lua_gettop(L), b, 1, ti, e, sizeof e)) == -1)
        snprintf(err, errlen, "repair_info.repair_log: %s", e);
    } else {
      snprintf(err, errlen, "repair_info.repair_log must be a string or a table");
      rc = -1;
    }
    lua_pop(L, 1);
  }
  if (rc == 0) rc = rest_members(L, tidx, "repair_info", skip, b, ti, err, errlen);
  lua_pop(L, 1);
  if (rc == 0) ga_buf_addc(b, '}');
  return rc;
}

static void set_json(ga_row *row, int col, int j) {
  row->col[col].p = row->json[j].buf;
  row->col[col].n = row->json[j].len;
  row->col[col].set = 1;
}

void ga_row_free(ga_row *row) {
  int i;
  for (i = 0; i < 5; i++) ga_buf_free(&row->json[i]);
}

/* drafts: every draft the model wrote, in order, as a JSON array of strings
 * (a payload of its own: a purge removes it, its digest stays). 0 or -1. */
static int build_drafts(lua_State *L, int idx, ga_row *row, ga_tape_info *ti, char *err, size_t errlen) {
  int t = getf(L, idx, "drafts"), top = lua_gettop(L), rc;
  size_t n, keys = 0, i, bytes = 0;
  char e[160];
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  if (t != LUA_TTABLE) {
    lua_pop(L, 1);
    FAIL("drafts must be a list of strings");
  }
  n = ga_rawlen(L, top);
  lua_pushnil(L);
  while (lua_next(L, top) != 0) {
    keys++;
    lua_pop(L, 1);
  }
  for (i = 1; i <= n && keys == n; i++) {
    lua_rawgeti(L, top, (int)i);
    if (lua_type(L, -1) != LUA_TSTRING) keys = 0;
    else bytes += ga_rawlen(L, -1);
    lua_pop(L, 1);
  }
  if (ti && keys == n) ga_buf_reserve(&row->json[4], bytes + n * 32 + 64); /* the tape, in one allocation */
  if (keys != n || n == 0) {
    lua_pop(L, 1);
    FAIL("drafts must be a list of strings");
  }
  if ((rc = put_value(L, top, &row->json[4], 0, ti, e, sizeof e)) != 0) {
    lua_pop(L, 1);
    if (rc == REDO) return REDO;
    FAIL("drafts: %s", e);
  }
  lua_pop(L, 1);
  set_json(row, GA_COL_DRAFTS, 4);
  return 0;
}


/* ga_row_build's work; defer: the documents as tapes (REDO when one does not take one) */
static int build(lua_State *L, int idx, ga_row *row, int defer, ga_buf *scratch, char *err, size_t errlen) {
  int t, rc;
  char e[160];
  memset(row, 0, sizeof *row);
  if (scratch) { /* the last row's buffers, moved in (ga_row_keep gives them back) */
    int j;
    for (j = 0; j < 5; j++) {
      row->json[j] = scratch[j];
      row->json[j].len = 0;
      ga_buf_init(&scratch[j]);
    }
  }
  idx = ga_absindex(L, idx);
  if (text_field(L, idx, "org_id", F_ID, 1, 1, &row->col[GA_COL_ORG_ID], row->numbuf[0], err, errlen) ||
      text_field(L, idx, "user_id", F_ID, 1, 1, &row->col[GA_COL_USER_ID], row->numbuf[1], err, errlen) ||
      text_field(L, idx, "platform", F_STR, 1, 1, &row->col[GA_COL_PLATFORM], NULL, err, errlen) ||
      text_field(L, idx, "template_id", F_STR, 1, 1, &row->col[GA_COL_TEMPLATE_ID], NULL, err, errlen) ||
      text_field(L, idx, "template_version", F_ID, 0, 0, &row->col[GA_COL_TEMPLATE_VERSION], row->numbuf[2], err, errlen) ||
      text_field(L, idx, "status", F_STR, 0, 1, &row->col[GA_COL_STATUS], NULL, err, errlen) ||
      text_field(L, idx, "content", F_STR, 0, 0, &row->col[GA_COL_CONTENT], NULL, err, errlen) ||
      text_field(L, idx, "error", F_STR, 0, 0, &row->col[GA_COL_ERROR], NULL, err, errlen) ||
      text_field(L, idx, "final_system_prompt", F_STR, 1, 0, &row->col[GA_COL_FINAL_SYSTEM_PROMPT], NULL, err, errlen) ||
      text_field(L, idx, "final_user_prompt", F_STR, 1, 0, &row->col[GA_COL_FINAL_USER_PROMPT], NULL, err, errlen) ||
      text_field(L, idx, "replay_of", F_STR, 0, 1, &row->col[GA_COL_REPLAY_OF], NULL, err, errlen) ||
      text_field(L, idx, "created_at", F_STR, 0, 1, &row->col[GA_COL_CREATED_AT], NULL, err, errlen) ||
      text_field(L, idx, "id", F_STR, 0, 1, &row->col[GA_COL_ID], NULL, err, errlen))
    return -1;
  if (row->col[GA_COL_ID].set) { /* an explicit id (copies between stores): a ULID */
    static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    const ga_text *c = &row->col[GA_COL_ID];
    size_t i;
    int ok = c->n == 26 && c->p[0] <= '7';
    for (i = 0; ok && i < c->n; i++) ok = c->p[i] != '\0' && strchr(crockford, c->p[i]) != NULL;
    if (!ok) FAIL("id must be a ULID: 26 characters of Crockford base32 (upper case)");
  }
  {
    ga_text *st = &row->col[GA_COL_STATUS];
    if (!st->set) {
      st->p = "completed";
      st->n = 9;
      st->set = 1;
    } else if (!((st->n == 9 && memcmp(st->p, "completed", 9) == 0) || (st->n == 6 && memcmp(st->p, "failed", 6) == 0))) {
      FAIL("status must be 'completed' or 'failed'");
    }
    if (st->n == 6 && (!row->col[GA_COL_ERROR].set || row->col[GA_COL_ERROR].n == 0))
      FAIL("error is required when status is 'failed'");
    if (st->n == 9 && row->col[GA_COL_ERROR].set) FAIL("error: must be absent when status is 'completed'");
  }
  if (row->col[GA_COL_CREATED_AT].set) { /* checked here too, so async mode never acknowledges a row SQLite refuses */
    static const char shape[] = "dddd-dd-dd dd:dd:dd";
    const ga_text *c = &row->col[GA_COL_CREATED_AT];
    size_t i;
    int ok = c->n >= 19 && c->n <= 29;
    for (i = 0; ok && i < c->n; i++) {
      char ch = c->p[i];
      if (i < 19) ok = shape[i] == 'd' ? (ch >= '0' && ch <= '9') : ch == shape[i];
      else ok = i == 19 ? ch == '.' : (ch >= '0' && ch <= '9');
    }
    if (ok && c->n == 20) ok = 0;
    if (ok) { /* a real date and time: both stores refuse 2024-02-30 */
      static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
      int y = atoi(c->p), mo = atoi(c->p + 5), d = atoi(c->p + 8), h = atoi(c->p + 11), mi = atoi(c->p + 14),
          sec = atoi(c->p + 17);
      int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
      ok = y >= 1 && mo >= 1 && mo <= 12 && d >= 1 && d <= mdays[mo - 1] && (mo != 2 || d <= 28 + leap) && h < 24 &&
           mi < 60 && sec < 60;
    }
    if (!ok) FAIL("created_at must be 'YYYY-MM-DD HH:MM:SS[.fff]' (UTC)");
    { /* a plausible time: not before 2000, not more than GA_MAX_CLOCK_SKEW_MS ahead of this host's clock */
      int y = atoi(c->p), mo = atoi(c->p + 5), d = atoi(c->p + 8);
      int64_t days, ms;
      if (y < 2000) FAIL("created_at: %.*s is before 2000", (int)c->n, c->p);
      { /* days since 1970-01-01 of a proleptic Gregorian date (Hinnant's days_from_civil) */
        int yy = mo <= 2 ? y - 1 : y, era = yy / 400, yoe = yy - era * 400;
        int doy = (153 * (mo > 2 ? mo - 3 : mo + 9) + 2) / 5 + d - 1;
        int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        days = (int64_t)era * 146097 + doe - 719468;
      }
      ms = ((days * 24 + atoi(c->p + 11)) * 60 + atoi(c->p + 14)) * 60000 + (int64_t)atoi(c->p + 17) * 1000;
      if (ms > ga_realtime_ms() + GA_MAX_CLOCK_SKEW_MS)
        FAIL("created_at: %.*s is in the future", (int)c->n, c->p);
    }
    { /* stored as every store returns it: milliseconds, "YYYY-MM-DD HH:MM:SS.mmm" */
      size_t f;
      memcpy(row->created_at, c->p, 19);
      row->created_at[19] = '.';
      for (f = 0; f < 3; f++) row->created_at[20 + f] = 20 + f < c->n ? c->p[20 + f] : '0';
      row->created_at[23] = '\0';
      row->col[GA_COL_CREATED_AT].p = row->created_at;
      row->col[GA_COL_CREATED_AT].n = 23;
    }
  }
  if (defer) { /* a metric document's tape, in one allocation */
    int j;
    for (j = 0; j < 3; j++) ga_buf_reserve(&row->json[j], 4096);
  }
  if ((rc = build_token_metrics(L, idx, &row->json[0], defer ? &row->tape[0] : NULL, err, errlen)) != 0 ||
      (rc = build_performance_metrics(L, idx, &row->json[1], defer ? &row->tape[1] : NULL, err, errlen)) != 0 ||
      (rc = build_repair_metrics(L, idx, &row->json[2], defer ? &row->tape[2] : NULL, &row->repair_count, err,
                                 errlen)) != 0)
    return rc;
  t = getf(L, idx, "request_params");
  if (t == LUA_TTABLE) {
    if ((rc = put_value(L, lua_gettop(L), &row->json[3], 0, defer ? &row->tape[3] : NULL, e, sizeof e)) != 0) {
      lua_pop(L, 1);
      if (rc == REDO) return REDO;
      FAIL("request_params: %s", e);
    }
    set_json(row, GA_COL_REQUEST_PARAMS, 3);
  } else if (t != LUA_TNIL) {
    lua_pop(L, 1);
    FAIL("request_params must be a table");
  }
  lua_pop(L, 1);
  if ((rc = build_drafts(L, idx, row, defer ? &row->tape[4] : NULL, err, errlen)) != 0) return rc;
  {
    int i;
    for (i = 0; i < 5; i++)
      if (row->json[i].oom) {
        if (defer) return REDO;
        FAIL("out of memory");
      }
  }
  set_json(row, GA_COL_TOKEN_METRICS, 0);
  set_json(row, GA_COL_PERFORMANCE_METRICS, 1);
  set_json(row, GA_COL_REPAIR_METRICS, 2);
  row->deferred = defer;
  return 0;
}

int ga_row_build(lua_State *L, int idx, ga_row *row, char *err, size_t errlen) {
  return build(L, idx, row, 0, NULL, err, errlen);
}

int ga_row_build_deferred(lua_State *L, int idx, ga_row *row, ga_buf *scratch, char *err, size_t errlen) {
  int top = lua_gettop(L), rc = build(L, idx, row, 1, scratch, err, errlen);
  if (rc != REDO) return rc;
  lua_settop(L, top); /* a tape gave up part way: its walk's values are still on the stack */
  ga_row_free(row);
  return build(L, idx, row, 0, NULL, err, errlen);
}

/* Buffers larger than this are freed, not kept for the next row. */
#define SCRATCH_KEEP (64u * 1024u)

void ga_row_keep(ga_row *row, ga_buf *scratch) {
  int j;
  for (j = 0; j < 5; j++) {
    if (row->json[j].buf && !row->json[j].oom && row->json[j].cap <= SCRATCH_KEEP && !scratch[j].buf) {
      scratch[j] = row->json[j];
      scratch[j].len = 0;
    } else {
      ga_buf_free(&row->json[j]);
    }
    ga_buf_init(&row->json[j]);
  }
}

static const int json_cols[5] = {GA_COL_TOKEN_METRICS, GA_COL_PERFORMANCE_METRICS, GA_COL_REPAIR_METRICS,
                                 GA_COL_REQUEST_PARAMS, GA_COL_DRAFTS};

int ga_row_json_slot(int col) {
  int j;
  for (j = 0; j < 5; j++)
    if (json_cols[j] == col) return j;
  return -1;
}

size_t ga_row_len(const ga_row *row, int col) {
  int j;
  if (!row->col[col].set) return 0;
  if (!row->deferred || col < GA_COL_TOKEN_METRICS || (j = ga_row_json_slot(col)) < 0) return row->col[col].n;
  return row->col[col].n - row->tape[j].hole_bytes + row->tape[j].bound;
}

unsigned ga_row_json_flags(const ga_row *row, int col) {
  if (!row->deferred || !row->col[col].set || ga_row_json_slot(col) < 0) return 0;
  return ga_tape_flags(row->col[col].p, row->col[col].n);
}

int ga_row_materialize(ga_row *row) {
  int j;
  if (!row->deferred) return 0;
  for (j = 0; j < 5; j++) {
    ga_buf out;
    if (!row->col[json_cols[j]].set) continue;
    ga_buf_init(&out);
    if (ga_tape_json(row->json[j].buf, row->json[j].len, &out) != 0) {
      ga_buf_free(&out);
      return -1;
    }
    ga_buf_free(&row->json[j]);
    row->json[j] = out;
    set_json(row, json_cols[j], j);
  }
  row->deferred = 0;
  return 0;
}

int ga_row_stamp(ga_row *row, ga_ulid_state *ulid) {
  int64_t ms = ga_realtime_ms();
  if (row->col[GA_COL_ID].set) memcpy(row->id, row->col[GA_COL_ID].p, 26); /* checked by ga_row_build */
  else if (ga_ulid_next(ulid, ms, row->id) != 0) return -1;
  row->col[GA_COL_ID].p = row->id;
  row->col[GA_COL_ID].n = 26;
  row->col[GA_COL_ID].set = 1;
  if (!row->col[GA_COL_CREATED_AT].set) {
    /* UTC by hand (Hinnant's civil_from_days): gmtime_r and strftime cost
     * more than the rest of an async persist's stamping */
    int64_t days = ms / 86400000, msd = ms % 86400000, z = days + 719468, era, doe, yoe, doy, mp;
    int y, mo, d, v[6], i;
    char *o = row->created_at;
    if (ms < 0) return -1;
    era = z / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    d = (int)(doy - (153 * mp + 2) / 5 + 1);
    mo = (int)(mp < 10 ? mp + 3 : mp - 9);
    y = (int)(yoe + era * 400 + (mo <= 2));
    if (y > 9999) return -1;
    v[0] = mo;
    v[1] = d;
    v[2] = (int)(msd / 3600000);
    v[3] = (int)(msd / 60000 % 60);
    v[4] = (int)(msd / 1000 % 60);
    v[5] = (int)(msd % 1000);
    o[0] = (char)('0' + y / 1000);
    o[1] = (char)('0' + y / 100 % 10);
    o[2] = (char)('0' + y / 10 % 10);
    o[3] = (char)('0' + y % 10);
    for (i = 0; i < 5; i++) { /* "-MM-DD HH:MM:SS" */
      o[4 + 3 * i] = "-- ::"[i];
      o[5 + 3 * i] = (char)('0' + v[i] / 10);
      o[6 + 3 * i] = (char)('0' + v[i] % 10);
    }
    o[19] = '.';
    o[20] = (char)('0' + v[5] / 100);
    o[21] = (char)('0' + v[5] / 10 % 10);
    o[22] = (char)('0' + v[5] % 10);
    o[23] = '\0';
    row->col[GA_COL_CREATED_AT].p = row->created_at;
    row->col[GA_COL_CREATED_AT].n = 23;
    row->col[GA_COL_CREATED_AT].set = 1;
  }
  return 0;
}
