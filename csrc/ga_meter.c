/* ga_meter.c — token accounting and cost in exact integer arithmetic.
 * Owns the price_table userdata (prices per model as int64 picodollars, 1e-12
 * USD, per token, parsed from their decimal text, never scaled as doubles),
 * the meter userdata (the calls of one generation and their sums, the
 * token_metrics document) and core.usd_from_picousd. The plain-C arithmetic
 * (decimal parsing, the cost of one call) is ga_price.c's. A USD double
 * appears only when a result is reported, converted once from the exact
 * integer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ga_private.h"

#define PT_MT "genaudit.price_table"
#define METER_MT "genaudit.meter"
#define METER_MAX_CALLS 65536
#define METER_MAX_KIND 64
#define METER_MAX_MODEL 512
#define PICO_PER_USD 1000000000000LL

typedef unsigned __int128 u128;

/* Writes the decimal digits of v (NUL-terminated); out needs 40 bytes. */
static void u128_dec(u128 v, char *out) {
  char tmp[40];
  int n = 0, i;
  do {
    tmp[n++] = (char)('0' + (int)(v % 10));
    v /= 10;
  } while (v);
  for (i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
  out[n] = '\0';
}

static double usd_from_u128(u128 v) {
  char dec[40];
  u128_dec(v, dec);
  return ga_usd_from_pico_text(dec);
}

/* ---- price_table userdata ---- */

typedef struct {
  char *model;
  size_t len;
  ga_prices p;
} pt_entry;

typedef struct {
  pt_entry *e; /* sorted by model bytes */
  size_t n, cap;
  int closed;
} price_table;

static int cmp_bytes(const char *a, size_t an, const char *b, size_t bn) {
  int c = memcmp(a, b, an < bn ? an : bn);
  return c ? c : (an > bn) - (an < bn);
}

/* Binary search; returns the entry or NULL, with *at = its (insertion) index. */
static pt_entry *pt_find(const price_table *pt, const char *s, size_t len, size_t *at) {
  size_t lo = 0, hi = pt->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = cmp_bytes(pt->e[mid].model, pt->e[mid].len, s, len);
    if (c == 0) {
      if (at) *at = mid;
      return &pt->e[mid];
    }
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  if (at) *at = lo;
  return NULL;
}

static void pt_free(price_table *pt) {
  size_t i;
  for (i = 0; i < pt->n; i++) free(pt->e[i].model);
  free(pt->e);
  pt->e = NULL;
  pt->n = pt->cap = 0;
}

static price_table *check_pt(lua_State *L, int idx) {
  price_table *pt = (price_table *)luaL_checkudata(L, idx, PT_MT);
  if (pt->closed) luaL_error(L, "attempt to use a closed price_table");
  return pt;
}

/* core.price_table() -> an empty price table */
static int l_price_table(lua_State *L) {
  price_table *pt = (price_table *)ga_newuserdata(L, sizeof *pt);
  memset(pt, 0, sizeof *pt);
  luaL_getmetatable(L, PT_MT);
  lua_setmetatable(L, -2);
  return 1;
}

/* Reads a USD amount (number or decimal string) at idx into picodollars.
 * Returns 0, 1 when absent (nil or JSON null), or a GA_DEC_* error. */
static int usd_at(lua_State *L, int idx, int64_t *out) {
  long long iv;
  size_t n;
  const char *s;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: return 1;
    case LUA_TLIGHTUSERDATA: return ga_isnull(L, idx) ? 1 : GA_DEC_MALFORMED;
    case LUA_TNUMBER:
      if (ga_tointeger(L, idx, &iv)) { /* whole USD: exact without any text */
        if (iv < 0) return GA_DEC_MALFORMED;
        if (iv > INT64_MAX / PICO_PER_USD) return GA_DEC_OVERFLOW;
        *out = (int64_t)iv * PICO_PER_USD;
        return 0;
      }
      return ga_double_to_pico((double)lua_tonumber(L, idx), out);
    case LUA_TSTRING:
      s = lua_tolstring(L, idx, &n);
      return ga_decimal_to_pico(s, n, out);
    default: return GA_DEC_MALFORMED;
  }
}

/* pt:set(model, prices) -> true, or nil, "INVALID: ...", "INVALID" when a price
 * is not a non-negative decimal number, is too large, or none is given.
 * Raises when prices is not a table or on out of memory. */
static int pt_set(lua_State *L) {
  price_table *pt = check_pt(L, 1);
  size_t len, at;
  const char *model = luaL_checklstring(L, 2, &len);
  ga_prices p;
  pt_entry *e;
  char *copy;
  int i;
  luaL_checktype(L, 3, LUA_TTABLE);
  if (len == 0) return ga_fail(L, "INVALID", "model must be a non-empty string");
  memset(&p, 0, sizeof p);
  for (i = 0; i < GA_NPRICES; i++) {
    int rc;
    lua_getfield(L, 3, ga_price_names[i]);
    rc = usd_at(L, -1, &p.pico[i]);
    lua_pop(L, 1);
    if (rc == GA_DEC_OVERFLOW)
      return ga_fail(L, "INVALID", "%s is too large (at most 9223372 USD per token)", ga_price_names[i]);
    if (rc < 0) return ga_fail(L, "INVALID", "%s must be a non-negative decimal number", ga_price_names[i]);
    if (rc == 0) p.has |= 1u << i;
  }
  if (p.has == 0) return ga_fail(L, "INVALID", "prices has none of the token price fields");
  e = pt_find(pt, model, len, &at);
  if (e) {
    e->p = p;
    lua_pushboolean(L, 1);
    return 1;
  }
  if (pt->n == pt->cap) {
    size_t cap = pt->cap ? pt->cap * 2 : 64;
    pt_entry *ne = (pt_entry *)realloc(pt->e, cap * sizeof *ne);
    if (!ne) return luaL_error(L, "out of memory");
    pt->e = ne;
    pt->cap = cap;
  }
  copy = (char *)malloc(len + 1);
  if (!copy) return luaL_error(L, "out of memory");
  memcpy(copy, model, len);
  copy[len] = '\0';
  memmove(&pt->e[at + 1], &pt->e[at], (pt->n - at) * sizeof *pt->e);
  pt->e[at].model = copy;
  pt->e[at].len = len;
  pt->e[at].p = p;
  pt->n++;
  lua_pushboolean(L, 1);
  return 1;
}

/* pt:get(model) -> { <price name> = USD per token, ... } or nil */
static int pt_get(lua_State *L) {
  price_table *pt = check_pt(L, 1);
  size_t len;
  const char *model = luaL_checklstring(L, 2, &len);
  const pt_entry *e = pt_find(pt, model, len, NULL);
  int i;
  if (!e) {
    lua_pushnil(L);
    return 1;
  }
  lua_createtable(L, 0, GA_NPRICES);
  for (i = 0; i < GA_NPRICES; i++) {
    if (!((e->p.has >> i) & 1u)) continue;
    lua_pushnumber(L, (lua_Number)usd_from_u128((u128)e->p.pico[i]));
    lua_setfield(L, -2, ga_price_names[i]);
  }
  return 1;
}

/* pt:count() -> number of models */
static int pt_count(lua_State *L) {
  price_table *pt = check_pt(L, 1);
  ga_pushint64(L, (long long)pt->n);
  return 1;
}

static int pt_gc(lua_State *L) {
  price_table *pt = (price_table *)luaL_checkudata(L, 1, PT_MT);
  pt_free(pt);
  pt->closed = 1;
  lua_pushboolean(L, 1);
  return 1;
}

static int pt_tostring(lua_State *L) {
  price_table *pt = (price_table *)luaL_checkudata(L, 1, PT_MT);
  if (pt->closed) lua_pushliteral(L, "genaudit.price_table (closed)");
  else lua_pushfstring(L, "genaudit.price_table (%d model%s)", (int)pt->n, pt->n == 1 ? "" : "s");
  return 1;
}

/* ---- meter userdata ---- */

/* Where a call's cost comes from; SRC_LOCAL and SRC_PROVIDER are known costs,
 * the others say why the cost is unknown (it is then null, never 0). */
enum { SRC_LOCAL, SRC_PROVIDER, SRC_UNPRICED, SRC_UNPRICED_SERVED, SRC_NO_USAGE, SRC_FAILED, SRC_N };
static const char *const src_names[SRC_N] = {
    "local_estimate", "provider", "unpriced", "unpriced_served_model", "no_usage", "failed_before_usage"};
#define SRC_KNOWN(s) ((s) <= SRC_PROVIDER)

typedef struct {
  char *kind; /* kind and model share one allocation */
  char *model; /* NULL when the call named no model */
  size_t kind_len, model_len;
  ga_usage u;
  int64_t total, wait_us, cost, provider_pico; /* cost: the call's known cost (local or provider) */
  int src, has_provider, has_usage;
} meter_call;

typedef struct {
  meter_call *c;
  size_t n, cap;
  ga_usage sum; /* running token sums, checked for overflow on add */
  int64_t sum_total, sum_wait;
  int closed;
} meter;

static meter *check_meter(lua_State *L) {
  meter *m = (meter *)luaL_checkudata(L, 1, METER_MT);
  if (m->closed) luaL_error(L, "attempt to use a closed meter");
  return m;
}

static void meter_clear(meter *m) {
  size_t i;
  for (i = 0; i < m->n; i++) free(m->c[i].kind);
  free(m->c);
  m->c = NULL;
  m->n = m->cap = 0;
  memset(&m->sum, 0, sizeof m->sum);
  m->sum_total = m->sum_wait = 0;
}

/* core.meter() -> an empty meter */
static int l_meter(lua_State *L) {
  meter *m = (meter *)ga_newuserdata(L, sizeof *m);
  memset(m, 0, sizeof *m);
  luaL_getmetatable(L, METER_MT);
  lua_setmetatable(L, -2);
  return 1;
}

/* Reads call[name] as a non-negative integer; absent gives `dflt` when
 * dflt >= 0. Returns 0, or -1 when invalid or absent-but-required. */
static int count_field(lua_State *L, int t, const char *name, long long dflt, int64_t *out) {
  long long v;
  int ok;
  lua_getfield(L, t, name);
  if (lua_isnil(L, -1) && dflt >= 0) {
    v = dflt;
    ok = 1;
  } else {
    ok = ga_tointeger(L, -1, &v) && v >= 0;
  }
  lua_pop(L, 1);
  if (!ok) return -1;
  *out = (int64_t)v;
  return 0;
}

static int meter_append(lua_State *L, meter *m, meter_call *cp, const char *kind, size_t kind_len,
                        const char *model, size_t model_len, const ga_usage *sum, int64_t sum_total,
                        int64_t sum_wait);

/* m:add_call(call) -> true, or nil, "INVALID: ...", "INVALID" (the meter is
 * unchanged), or nil, "LIMIT: ...", "LIMIT" past METER_MAX_CALLS calls.
 * Raises when call is not a table, prices is not an open price_table, or on
 * out of memory. */
static int meter_add_call(lua_State *L) {
  meter *m = check_meter(L);
  const char *kind, *model = NULL;
  size_t kind_len = 0, model_len = 0;
  const price_table *pt = NULL;
  const pt_entry *e = NULL;
  meter_call c;
  ga_usage sum;
  int64_t sum_total, sum_wait;
  int rc, unpriced;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_getfield(L, 2, "prices"); /* 3 */
  if (!lua_isnil(L, 3)) {
    if (!luaL_testudata(L, 3, PT_MT)) return luaL_argerror(L, 2, "prices must be a genaudit.price_table or nil");
    pt = check_pt(L, 3);
  }
  lua_getfield(L, 2, "kind");  /* 4 */
  lua_getfield(L, 2, "model"); /* 5 */
  memset(&c, 0, sizeof c);
  kind = lua_type(L, 4) == LUA_TSTRING ? lua_tolstring(L, 4, &kind_len) : NULL;
  if (!kind || kind_len == 0 || kind_len > METER_MAX_KIND)
    return ga_fail(L, "INVALID", "kind must be a non-empty string of at most %d bytes", METER_MAX_KIND);
  if (!lua_isnil(L, 5)) {
    model = lua_type(L, 5) == LUA_TSTRING ? lua_tolstring(L, 5, &model_len) : NULL;
    if (!model || model_len > METER_MAX_MODEL)
      return ga_fail(L, "INVALID", "model must be a string of at most %d bytes", METER_MAX_MODEL);
  }
#define COUNT(name, dflt, dst) \
  if (count_field(L, 2, name, dflt, dst) != 0) return ga_fail(L, "INVALID", "%s must be a non-negative integer", name)
  COUNT("prompt_tokens", -1, &c.u.prompt);
  COUNT("completion_tokens", -1, &c.u.completion);
  COUNT("cached_prompt_tokens", 0, &c.u.cached);
  COUNT("cache_write_tokens", 0, &c.u.cache_write);
  COUNT("reasoning_tokens", 0, &c.u.reasoning);
  if (__builtin_add_overflow(c.u.prompt, c.u.completion, &c.total))
    return ga_fail(L, "INVALID", "prompt_tokens + completion_tokens is too large");
  {
    int64_t sum_pc = c.total;
    COUNT("total_tokens", c.total, &c.total);
    if (c.total < sum_pc) return ga_fail(L, "INVALID", "total_tokens must not be less than prompt_tokens + completion_tokens");
  }
  COUNT("provider_wait_us", 0, &c.wait_us);
#undef COUNT
  lua_getfield(L, 2, "provider_cost");
  rc = usd_at(L, -1, &c.provider_pico);
  lua_pop(L, 1);
  if (rc < 0) return ga_fail(L, "INVALID", "provider_cost must be a non-negative number of USD");
  c.has_provider = rc == 0;

  lua_getfield(L, 2, "unpriced_reason");
  if (lua_isnil(L, -1)) {
    unpriced = SRC_UNPRICED;
  } else {
    const char *r = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    if (strcmp(r, "unpriced") == 0) unpriced = SRC_UNPRICED;
    else if (strcmp(r, "unpriced_served_model") == 0) unpriced = SRC_UNPRICED_SERVED;
    else unpriced = -1;
  }
  lua_pop(L, 1);
  if (unpriced < 0) return ga_fail(L, "INVALID", "unpriced_reason must be 'unpriced' or 'unpriced_served_model'");
  c.has_usage = 1;
  if (pt && model) e = pt_find(pt, model, model_len, NULL);
  switch (ga_call_cost(e ? &e->p : NULL, &c.u, &c.cost)) {
    case GA_COST_OK: c.src = SRC_LOCAL; break;
    case GA_COST_UNPRICED: /* no local price: the billed cost when the provider reported one */
      c.src = c.has_provider ? SRC_PROVIDER : unpriced;
      c.cost = c.has_provider ? c.provider_pico : 0;
      break;
    case GA_COST_BAD_CACHED:
      return ga_fail(L, "INVALID", "cached_prompt_tokens + cache_write_tokens must not exceed prompt_tokens");
    case GA_COST_BAD_REASONING:
      return ga_fail(L, "INVALID", "reasoning_tokens must not exceed completion_tokens");
    default: return ga_fail(L, "INVALID", "the cost of this call is too large to represent");
  }
  if (m->n >= METER_MAX_CALLS) return ga_fail(L, "LIMIT", "a meter holds at most %d calls", METER_MAX_CALLS);
  if (__builtin_add_overflow(m->sum.prompt, c.u.prompt, &sum.prompt) ||
      __builtin_add_overflow(m->sum.completion, c.u.completion, &sum.completion) ||
      __builtin_add_overflow(m->sum.cached, c.u.cached, &sum.cached) ||
      __builtin_add_overflow(m->sum.cache_write, c.u.cache_write, &sum.cache_write) ||
      __builtin_add_overflow(m->sum.reasoning, c.u.reasoning, &sum.reasoning) ||
      __builtin_add_overflow(m->sum_total, c.total, &sum_total) ||
      __builtin_add_overflow(m->sum_wait, c.wait_us, &sum_wait))
    return ga_fail(L, "INVALID", "the meter's token sums would overflow");

  return meter_append(L, m, &c, kind, kind_len, model, model_len, &sum, sum_total, sum_wait);
}

/* Appends a checked call and its new sums; only allocation can fail here, and
 * it raises with nothing of this call allocated yet. Returns true. */
static int meter_append(lua_State *L, meter *m, meter_call *cp, const char *kind, size_t kind_len,
                        const char *model, size_t model_len, const ga_usage *sum, int64_t sum_total,
                        int64_t sum_wait) {
  meter_call c = *cp;
  char *mem;
  if (m->n == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 8;
    meter_call *nc = (meter_call *)realloc(m->c, cap * sizeof *nc);
    if (!nc) return luaL_error(L, "out of memory");
    m->c = nc;
    m->cap = cap;
  }
  mem = (char *)malloc(kind_len + model_len + 2);
  if (!mem) return luaL_error(L, "out of memory");
  memcpy(mem, kind, kind_len);
  mem[kind_len] = '\0';
  c.kind = mem;
  c.kind_len = kind_len;
  if (model) {
    c.model = mem + kind_len + 1;
    memcpy(c.model, model, model_len);
    c.model[model_len] = '\0';
    c.model_len = model_len;
  }
  m->c[m->n++] = c;
  m->sum = *sum;
  m->sum_total = sum_total;
  m->sum_wait = sum_wait;
  lua_pushboolean(L, 1);
  return 1;
}

/* m:add_failed_call{ kind, model, reason, provider_wait_us } -> true, or nil,
 * "INVALID: ...", "INVALID" / "LIMIT: ...". A call whose usage is unknown: it
 * failed before any usage was reported (reason "failed_before_usage") or was
 * answered without usable usage ("no_usage"). Its cost is unknown, so every
 * total it is part of is null. Raises on out of memory. */
static int meter_add_failed_call(lua_State *L) {
  meter *m = check_meter(L);
  const char *kind, *model = NULL, *reason;
  size_t kind_len = 0, model_len = 0;
  meter_call c;
  int64_t sum_wait;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_getfield(L, 2, "kind");   /* 3 */
  lua_getfield(L, 2, "model");  /* 4 */
  lua_getfield(L, 2, "reason"); /* 5 */
  memset(&c, 0, sizeof c);
  kind = lua_type(L, 3) == LUA_TSTRING ? lua_tolstring(L, 3, &kind_len) : NULL;
  if (!kind || kind_len == 0 || kind_len > METER_MAX_KIND)
    return ga_fail(L, "INVALID", "kind must be a non-empty string of at most %d bytes", METER_MAX_KIND);
  if (!lua_isnil(L, 4)) {
    model = lua_type(L, 4) == LUA_TSTRING ? lua_tolstring(L, 4, &model_len) : NULL;
    if (!model || model_len > METER_MAX_MODEL)
      return ga_fail(L, "INVALID", "model must be a string of at most %d bytes", METER_MAX_MODEL);
  }
  reason = lua_type(L, 5) == LUA_TSTRING ? lua_tostring(L, 5) : "";
  if (strcmp(reason, "no_usage") == 0) c.src = SRC_NO_USAGE;
  else if (strcmp(reason, "failed_before_usage") == 0) c.src = SRC_FAILED;
  else return ga_fail(L, "INVALID", "reason must be 'no_usage' or 'failed_before_usage'");
  if (count_field(L, 2, "provider_wait_us", 0, &c.wait_us) != 0)
    return ga_fail(L, "INVALID", "provider_wait_us must be a non-negative integer");
  if (m->n >= METER_MAX_CALLS) return ga_fail(L, "LIMIT", "a meter holds at most %d calls", METER_MAX_CALLS);
  if (__builtin_add_overflow(m->sum_wait, c.wait_us, &sum_wait))
    return ga_fail(L, "INVALID", "the meter's token sums would overflow");
  return meter_append(L, m, &c, kind, kind_len, model, model_len, &m->sum, m->sum_total, sum_wait);
}

static void set_int(lua_State *L, const char *name, int64_t v) {
  ga_pushint64(L, (long long)v);
  lua_setfield(L, -2, name);
}

static void set_usd(lua_State *L, const char *name, u128 pico) {
  lua_pushnumber(L, (lua_Number)usd_from_u128(pico));
  lua_setfield(L, -2, name);
}

/* Pushes an exact picodollar amount for a JSON document: a Lua integer when
 * the VM holds it exactly (5.4: any int64; LuaJIT: below 2^53), else a
 * genaudit.rawjson value holding its decimal digits, which the JSON encoder
 * writes verbatim — a JSON integer either way, never a rounded double. */
static void push_pico(lua_State *L, u128 v) {
  if (v <= (u128)INT64_MAX && (GA_HAS_INTEGER || v < (u128)GA_INT53)) {
    ga_pushint64(L, (long long)v);
  } else {
    char dec[40];
    size_t n;
    char *p;
    u128_dec(v, dec);
    n = strlen(dec);
    p = (char *)lua_newuserdata(L, sizeof(size_t) + n);
    memcpy(p, &n, sizeof n);
    memcpy(p + sizeof n, dec, n);
    luaL_getmetatable(L, GA_RAWJSON_MT);
    lua_setmetatable(L, -2);
  }
}

static void set_tokens(lua_State *L, const ga_usage *u, int64_t total) {
  set_int(L, "prompt_tokens", u->prompt);
  set_int(L, "completion_tokens", u->completion);
  set_int(L, "total_tokens", total);
  set_int(L, "cached_prompt_tokens", u->cached);
  set_int(L, "cache_write_tokens", u->cache_write);
  set_int(L, "reasoning_tokens", u->reasoning);
}

/* The sums and the per-call list. A cost is never a partial sum:
 * estimated_cost (and initial_cost, repair_cost, provider_cost) is nil as
 * soon as one call it covers has no known cost, and cost_source then names
 * why (the first such call's reason); each call carries its own cost (null
 * when unknown) and cost_source. USD numbers come from the exact sums.
 * stored: the token_metrics document as a snapshot stores it (without the
 * meter's own call_count and provider_wait_us sums; estimated_cost_picousd
 * and each call's cost_picousd as exact JSON integers, see push_pico),
 * with each call's requested_model / served_model taken from the strings
 * `requested` / `served` of element i of the array at models_idx (0: none). */
static int push_totals(lua_State *L, meter *m, int stored, int models_idx) {
  u128 cost = 0, initial = 0, repair = 0, provider = 0;
  int all_known = 1, initial_known = 1, repair_known = 1, all_provider = 1, n_local = 0, n_prov = 0;
  int first_unknown = -1;
  size_t i, n_initial = 0, n_repair = 0;
  char dec[40];
  for (i = 0; i < m->n; i++) {
    const meter_call *c = &m->c[i];
    int is_initial = c->kind_len == 7 && memcmp(c->kind, "initial", 7) == 0;
    int is_repair = c->kind_len == 6 && memcmp(c->kind, "repair", 6) == 0;
    n_initial += (size_t)is_initial;
    n_repair += (size_t)is_repair;
    if (SRC_KNOWN(c->src)) {
      cost += (u128)c->cost;
      if (is_initial) initial += (u128)c->cost;
      if (is_repair) repair += (u128)c->cost;
      if (c->src == SRC_LOCAL) n_local++;
      else n_prov++;
    } else {
      all_known = 0;
      if (first_unknown < 0) first_unknown = c->src;
      if (is_initial) initial_known = 0;
      if (is_repair) repair_known = 0;
    }
    if (c->has_provider) provider += (u128)c->provider_pico;
    else all_provider = 0;
  }
  lua_createtable(L, 0, 16);
  set_tokens(L, &m->sum, m->sum_total);
  if (all_known) {
    set_usd(L, "estimated_cost", cost);
  }
  if (all_known) { /* the exact sum: a decimal string from totals(), a JSON integer when stored */
    if (stored) {
      push_pico(L, cost);
    } else {
      u128_dec(cost, dec);
      lua_pushstring(L, dec);
    }
    lua_setfield(L, -2, "estimated_cost_picousd");
  }
  if (n_initial > 0 && initial_known) set_usd(L, "initial_cost", initial);
  if (n_repair > 0 ? repair_known : all_known) set_usd(L, "repair_cost", repair);
  if (m->n > 0 && all_provider) set_usd(L, "provider_cost", provider);
  if (m->n == 0) lua_pushliteral(L, "no_calls"); /* nothing was sent: 0 is the true cost */
  else if (!all_known) lua_pushstring(L, src_names[first_unknown]);
  else if (n_prov == 0) lua_pushliteral(L, "local_estimate");
  else if (n_local == 0) lua_pushliteral(L, "provider");
  else lua_pushliteral(L, "mixed"); /* every call known, some priced locally, some billed */
  lua_setfield(L, -2, "cost_source");
  lua_createtable(L, (int)m->n, 0);
  for (i = 0; i < m->n; i++) {
    const meter_call *c = &m->c[i];
    lua_createtable(L, 0, 12);
    lua_pushlstring(L, c->kind, c->kind_len);
    lua_setfield(L, -2, "kind");
    if (c->model) {
      lua_pushlstring(L, c->model, c->model_len);
      lua_setfield(L, -2, "model");
    }
    if (c->has_usage) set_tokens(L, &c->u, c->total);
    if (SRC_KNOWN(c->src)) {
      set_usd(L, "cost", (u128)c->cost);
      if (stored) {
        push_pico(L, (u128)c->cost);
        lua_setfield(L, -2, "cost_picousd");
      }
    } else {
      ga_pushnull(L); /* JSON null in the stored document */
      lua_setfield(L, -2, "cost");
      if (stored) {
        ga_pushnull(L);
        lua_setfield(L, -2, "cost_picousd");
      }
    }
    lua_pushstring(L, src_names[c->src]);
    lua_setfield(L, -2, "cost_source");
    if (c->has_provider) set_usd(L, "provider_cost", (u128)c->provider_pico);
    set_int(L, "provider_wait_us", c->wait_us);
    if (models_idx != 0) {
      lua_rawgeti(L, models_idx, (int)i + 1);
      if (lua_type(L, -1) == LUA_TTABLE) {
        static const char *const from[] = {"requested", "served"}, *const to[] = {"requested_model", "served_model"};
        int k;
        for (k = 0; k < 2; k++) {
          lua_getfield(L, -1, from[k]);
          if (lua_type(L, -1) == LUA_TSTRING) lua_setfield(L, -3, to[k]);
          else lua_pop(L, 1);
        }
      }
      lua_pop(L, 1);
    }
    lua_rawseti(L, -2, (int)i + 1);
  }
  lua_setfield(L, -2, "calls");
  if (!stored) {
    set_int(L, "call_count", (int64_t)m->n);
    set_int(L, "provider_wait_us", m->sum_wait);
  }
  return 1;
}

/* m:totals() -> the sums and the per-call list (see push_totals), with the
 * exact estimated_cost_picousd, call_count and the summed provider_wait_us. */
static int meter_totals(lua_State *L) { return push_totals(L, check_meter(L), 0, 0); }

/* m:token_metrics([call_models]) -> the token_metrics document of a
 * snapshot: totals() without the meter's own sums; call_models[i] =
 * { requested = model, served = model } names call i's requested and served
 * model (requested_model, served_model). */
static int meter_token_metrics(lua_State *L) {
  meter *m = check_meter(L);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  return push_totals(L, m, 1, lua_istable(L, 2) ? 2 : 0);
}

/* m:reset() -> true; forgets every call */
static int meter_reset(lua_State *L) {
  meter *m = check_meter(L);
  meter_clear(m);
  lua_pushboolean(L, 1);
  return 1;
}

static int meter_gc(lua_State *L) {
  meter *m = (meter *)luaL_checkudata(L, 1, METER_MT);
  meter_clear(m);
  m->closed = 1;
  lua_pushboolean(L, 1);
  return 1;
}

static int meter_tostring(lua_State *L) {
  meter *m = (meter *)luaL_checkudata(L, 1, METER_MT);
  if (m->closed) lua_pushliteral(L, "genaudit.meter (closed)");
  else lua_pushfstring(L, "genaudit.meter (%d call%s)", (int)m->n, m->n == 1 ? "" : "s");
  return 1;
}

/* core.usd_from_picousd(integer or decimal string of an integer) -> USD number,
 * the double nearest the exact value. Raises on anything else. */
static int l_usd_from_picousd(lua_State *L) {
  char dec[64];
  long long v;
  if (lua_type(L, 1) == LUA_TSTRING) {
    size_t n, i;
    const char *s = lua_tolstring(L, 1, &n);
    i = n > 0 && s[0] == '-';
    if (n == i || n >= sizeof dec) return luaL_argerror(L, 1, "decimal digits of an integer expected");
    for (; i < n; i++)
      if (s[i] < '0' || s[i] > '9') return luaL_argerror(L, 1, "decimal digits of an integer expected");
    memcpy(dec, s, n);
    dec[n] = '\0';
  } else if (ga_tointeger(L, 1, &v)) {
    snprintf(dec, sizeof dec, "%lld", v);
  } else {
    return luaL_argerror(L, 1, "integer or decimal string of an integer expected");
  }
  lua_pushnumber(L, (lua_Number)ga_usd_from_pico_text(dec));
  return 1;
}

void ga_open_meter(lua_State *L) {
  static const luaL_Reg pt_methods[] = {
      {"set", pt_set}, {"get", pt_get}, {"count", pt_count}, {"close", pt_gc}, {NULL, NULL}};
  static const luaL_Reg meter_methods[] = {
      {"add_call", meter_add_call}, {"add_failed_call", meter_add_failed_call}, {"totals", meter_totals},
      {"token_metrics", meter_token_metrics}, {"reset", meter_reset}, {"close", meter_gc}, {NULL, NULL}};
  ga_newclass(L, PT_MT, pt_methods, pt_gc, pt_tostring);
  ga_newclass(L, METER_MT, meter_methods, meter_gc, meter_tostring);
  lua_pushcfunction(L, l_price_table);
  lua_setfield(L, -2, "price_table");
  lua_pushcfunction(L, l_meter);
  lua_setfield(L, -2, "meter");
  lua_pushcfunction(L, l_usd_from_picousd);
  lua_setfield(L, -2, "usd_from_picousd");
  /* core.price_fields: the LiteLLM field names the meter prices, once (pricing.lua reads them) */
  lua_createtable(L, GA_NPRICES, 0);
  for (int i = 0; i < GA_NPRICES; i++) {
    lua_pushstring(L, ga_price_names[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "price_fields");
}
