/* ga_retry.c — the one retry policy and transport-failure vocabulary of both
 * HTTP transports: the libcurl client (ga_http.c) calls these functions
 * directly, the cosocket transport (lua/genaudit/openresty.lua) through
 * core.retry_policy, core.retry_delay and core.retry_after_ms. Owns which
 * HTTP statuses and which transport failures are retried, the error code of
 * each failure, the backoff rule and the Retry-After parser. No I/O, no
 * sleeping, no mutable state: the caller supplies the random bits. */
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <curl/curl.h>
#include "ga_private.h"

/* One row per transport failure: its name (the cosocket transport passes
 * it), the error code it is reported with, and whether another try may
 * help. TLS never: a handshake or certificate failure does not heal in a
 * backoff. A malformed response or an oversized one neither. */
const ga_xfail ga_xfails[GA_XF_COUNT] = {
    [GA_XF_REFUSED] = {"refused", "CONNECT", 1},
    [GA_XF_RESOLVE] = {"resolve", "CONNECT", 1},
    [GA_XF_CONNECT_TIMEOUT] = {"connect_timeout", "TIMEOUT", 1},
    [GA_XF_TIMEOUT] = {"timeout", "TIMEOUT", 1},
    [GA_XF_TLS] = {"tls", "TLS", 0},
    [GA_XF_CLOSED] = {"closed", "HTTP", 1},
    [GA_XF_PROTOCOL] = {"protocol", "HTTP", 0},
    [GA_XF_TOO_LARGE] = {"too_large", "TOO_LARGE", 0},
    [GA_XF_INTERNAL] = {"internal", "HTTP", 0},
    [GA_XF_ABORTED] = {"aborted", "STREAM_ABORTED", 0},
    [GA_XF_STALLED] = {"stalled", "TIMEOUT", 0},
};

/* The statuses worth another try: rate limited, and the server-side
 * failures that are usually transient. Any other status is final. */
static const int retry_statuses[] = {429, 500, 502, 503, 504};
#define N_RETRY_STATUSES ((int)(sizeof retry_statuses / sizeof retry_statuses[0]))

int ga_retry_status(int status) {
  int i;
  for (i = 0; i < N_RETRY_STATUSES; i++)
    if (retry_statuses[i] == status) return 1;
  return 0;
}

int ga_retry_should(int status, int kind) {
  if (status > 0) return ga_retry_status(status);
  return kind >= 0 && kind < GA_XF_COUNT && ga_xfails[kind].retry;
}

long long ga_retry_delay_ms(int attempt, long long base_ms, long long cap_ms, long long retry_after_ms,
                            uint64_t rnd) {
  long long d = base_ms, half;
  int k;
  if (retry_after_ms >= 0) return retry_after_ms < cap_ms ? retry_after_ms : cap_ms;
  for (k = 1; k < attempt && d > 0 && d < cap_ms; k++) d *= 2;
  if (d > cap_ms) d = cap_ms;
  if (d <= 0) return 0;
  half = d / 2;
  return half + (long long)(rnd % (uint64_t)(d - half + 1));
}

long long ga_retry_after_value(const char *v, size_t n) {
  char tmp[64];
  time_t t;
  long long ms, now;
  size_t i;
  if (n == 0) return -1;
  for (i = 0; i < n && v[i] >= '0' && v[i] <= '9'; i++) {
  } /* v is not NUL-terminated: never strspn past n */
  if (i == n) {
    long long s = 0;
    for (i = 0; i < n; i++) {
      s = s * 10 + (v[i] - '0');
      if (s > GA_RETRY_MAX_MS / 1000) return GA_RETRY_MAX_MS; /* capped later anyway */
    }
    return s * 1000;
  }
  if (n >= sizeof tmp) return -1;
  memcpy(tmp, v, n);
  tmp[n] = '\0';
  t = curl_getdate(tmp, NULL);
  if (t == (time_t)-1) return -1;
  now = (long long)ga_realtime_ms();
  /* curl_getdate takes any year: cap before scaling, t * 1000 could overflow */
  if ((long long)t <= now / 1000) return 0;
  if ((long long)t - now / 1000 > GA_RETRY_MAX_MS / 1000) return GA_RETRY_MAX_MS;
  ms = (long long)t * 1000 - now;
  return ms < 0 ? 0 : ms;
}

/* ---- Lua bindings ---- */

static long long check_ms(lua_State *L, int idx, const char *name, long long lo) {
  long long v;
  if (!ga_tointeger(L, idx, &v) || v < lo || v > GA_RETRY_MAX_MS)
    luaL_argerror(L, idx, lua_pushfstring(L, "%s must be an integer in %d..%d", name, (int)lo,
                                          (int)GA_RETRY_MAX_MS));
  return v;
}

/* core.retry_policy(status) -> retry
 * core.retry_policy(kind)   -> retry, code   (kind: a name of ga_xfails; raises on another)
 * core.retry_policy()       -> { statuses = {429, ...}, failures = { kind = {code=, retry=} } } */
static int l_retry_policy(lua_State *L) {
  int i;
  if (lua_isnoneornil(L, 1)) {
    lua_createtable(L, 0, 2);
    lua_createtable(L, N_RETRY_STATUSES, 0);
    for (i = 0; i < N_RETRY_STATUSES; i++) {
      lua_pushinteger(L, retry_statuses[i]);
      lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "statuses");
    lua_createtable(L, 0, GA_XF_COUNT);
    for (i = 0; i < GA_XF_COUNT; i++) {
      lua_createtable(L, 0, 2);
      lua_pushstring(L, ga_xfails[i].code);
      lua_setfield(L, -2, "code");
      lua_pushboolean(L, ga_xfails[i].retry);
      lua_setfield(L, -2, "retry");
      lua_setfield(L, -2, ga_xfails[i].name);
    }
    lua_setfield(L, -2, "failures");
    return 1;
  }
  if (lua_type(L, 1) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 1);
    for (i = 0; i < GA_XF_COUNT; i++) {
      if (strcmp(k, ga_xfails[i].name) == 0) {
        lua_pushboolean(L, ga_xfails[i].retry);
        lua_pushstring(L, ga_xfails[i].code);
        return 2;
      }
    }
    return luaL_argerror(L, 1, lua_pushfstring(L, "unknown transport failure '%s'", k));
  }
  {
    long long st;
    if (!ga_tointeger(L, 1, &st)) return luaL_argerror(L, 1, "an HTTP status or a failure name expected");
    lua_pushboolean(L, st > 0 && st < 1000 && ga_retry_status((int)st));
    return 1;
  }
}

void ga_jitter_seed(uint64_t *state, const void *salt) {
  if (getrandom(state, sizeof *state, GRND_NONBLOCK) != (ssize_t)sizeof *state || *state == 0)
    *state = (ga_monotonic_ns() ^ (uint64_t)(uintptr_t)salt) | 1u;
}

uint64_t ga_jitter_next(uint64_t *state) {
  uint64_t x = *state;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *state = x;
}

/* core.retry_delay(attempt, base_ms, cap_ms [, retry_after_ms [, rnd]]) -> ms
 * The sleep after failed try `attempt` (1 = the first). rnd: a non-negative
 * integer of random bits (tests); drawn from getrandom() when absent. */
static int l_retry_delay(lua_State *L) {
  long long attempt, base, cap, ra = -1, r;
  uint64_t rnd = 0;
  if (!ga_tointeger(L, 1, &attempt) || attempt < 1 || attempt > 1000000)
    return luaL_argerror(L, 1, "attempt must be an integer in 1..1000000");
  base = check_ms(L, 2, "base_ms", 0);
  cap = check_ms(L, 3, "cap_ms", 0);
  if (!lua_isnoneornil(L, 4)) ra = check_ms(L, 4, "retry_after_ms", 0);
  if (!lua_isnoneornil(L, 5)) {
    if (!ga_tointeger(L, 5, &r) || r < 0) return luaL_argerror(L, 5, "rnd must be a non-negative integer");
    rnd = (uint64_t)r;
  } else if (getrandom(&rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t)sizeof rnd) {
    rnd = ga_monotonic_ns() * 0x9E3779B97F4A7C15ull; /* no entropy yet: jitter from the clock */
  }
  ga_pushint64(L, ga_retry_delay_ms((int)attempt, base, cap, ra, rnd));
  return 1;
}

/* core.retry_after_ms(value) -> ms from now | nil (value: a Retry-After header value) */
static int l_retry_after_ms(lua_State *L) {
  size_t n;
  const char *v;
  long long ms;
  if (lua_isnoneornil(L, 1)) {
    lua_pushnil(L);
    return 1;
  }
  v = luaL_checklstring(L, 1, &n);
  ms = ga_retry_after_value(v, n);
  if (ms < 0) lua_pushnil(L);
  else ga_pushint64(L, ms);
  return 1;
}

void ga_open_retry(lua_State *L) {
  lua_pushcfunction(L, l_retry_policy);
  lua_setfield(L, -2, "retry_policy");
  lua_pushcfunction(L, l_retry_delay);
  lua_setfield(L, -2, "retry_delay");
  lua_pushcfunction(L, l_retry_after_ms);
  lua_setfield(L, -2, "retry_after_ms");
}
