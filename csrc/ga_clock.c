/* ga_clock.c — the monotonic stopwatch. Durations are integer nanoseconds from
 * CLOCK_MONOTONIC; Lua sees milliseconds (a double with µs precision) or
 * integer microseconds, never epoch nanoseconds as a number. */
#include <string.h>
#include <time.h>
#include "ga_private.h"

#define SW_MT "genaudit.stopwatch"
#define SW_MAX_INTERVALS 16
#define SW_NAME_MAX 32

typedef struct {
  char name[SW_NAME_MAX];
  uint64_t total_ns; /* closed time accumulated */
  uint64_t open_at;  /* start of the running interval, 0 when none */
  unsigned count;    /* intervals closed */
} sw_interval;

typedef struct {
  uint64_t start_ns, stop_ns; /* stop_ns 0 while running */
  int closed;
  int n;
  sw_interval iv[SW_MAX_INTERVALS];
} stopwatch;

uint64_t ga_monotonic_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int64_t ga_realtime_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double ns_to_ms(uint64_t ns) {
  /* whole microseconds, then ms: "ms with µs precision" without float noise
   * beyond the third decimal */
  return (double)(ns / 1000u) / 1000.0;
}

static stopwatch *check_sw(lua_State *L) {
  stopwatch *sw = (stopwatch *)luaL_checkudata(L, 1, SW_MT);
  if (sw->closed) luaL_error(L, "attempt to use a closed stopwatch");
  return sw;
}

static uint64_t sw_now(const stopwatch *sw) {
  return sw->stop_ns ? sw->stop_ns : ga_monotonic_ns();
}

/* Finds the interval named at arg 2, creating it when `create`; raises on a
 * bad name or when all SW_MAX_INTERVALS slots are taken. */
static sw_interval *sw_find(lua_State *L, stopwatch *sw, int create) {
  size_t len;
  const char *name = luaL_checklstring(L, 2, &len);
  int i;
  if (len == 0 || len >= SW_NAME_MAX)
    luaL_argerror(L, 2, "interval name must be 1-31 bytes");
  for (i = 0; i < sw->n; i++)
    if (strcmp(sw->iv[i].name, name) == 0) return &sw->iv[i];
  if (!create) return NULL;
  if (sw->n == SW_MAX_INTERVALS) luaL_error(L, "too many stopwatch intervals (max %d)", SW_MAX_INTERVALS);
  memset(&sw->iv[sw->n], 0, sizeof sw->iv[0]);
  memcpy(sw->iv[sw->n].name, name, len + 1);
  return &sw->iv[sw->n++];
}

/* core.stopwatch() -> a running stopwatch */
static int l_stopwatch(lua_State *L) {
  stopwatch *sw = (stopwatch *)ga_newuserdata(L, sizeof *sw);
  memset(sw, 0, sizeof *sw);
  luaL_getmetatable(L, SW_MT);
  lua_setmetatable(L, -2);
  sw->start_ns = ga_monotonic_ns();
  return 1;
}

/* sw:begin(name): opens interval `name`; raises if it is already open. */
static int sw_begin(lua_State *L) {
  stopwatch *sw = check_sw(L);
  sw_interval *iv = sw_find(L, sw, 1);
  if (sw->stop_ns) return luaL_error(L, "stopwatch is stopped");
  if (iv->open_at) return luaL_error(L, "interval '%s' is already open", iv->name);
  iv->open_at = ga_monotonic_ns();
  return 0;
}

/* sw:finish(name) -> ms of this interval; raises if it is not open. */
static int sw_finish(lua_State *L) {
  stopwatch *sw = check_sw(L);
  sw_interval *iv = sw_find(L, sw, 0);
  uint64_t d;
  if (!iv || !iv->open_at) return luaL_error(L, "interval '%s' is not open", lua_tostring(L, 2));
  d = sw_now(sw) - iv->open_at;
  iv->total_ns += d;
  iv->open_at = 0;
  iv->count++;
  lua_pushnumber(L, ns_to_ms(d));
  return 1;
}

/* sw:add(name, us): adds an interval measured elsewhere (integer µs >= 0). */
static int sw_add(lua_State *L) {
  stopwatch *sw = check_sw(L);
  long long us;
  sw_interval *iv;
  if (!ga_tointeger(L, 3, &us) || us < 0) return luaL_argerror(L, 3, "non-negative integer microseconds expected");
  iv = sw_find(L, sw, 1);
  iv->total_ns += (uint64_t)us * 1000u;
  iv->count++;
  return 0;
}

/* sw:stop() -> total ms; closes open intervals at the same instant. Idempotent. */
static int sw_stop(lua_State *L) {
  stopwatch *sw = check_sw(L);
  int i;
  if (!sw->stop_ns) {
    sw->stop_ns = ga_monotonic_ns();
    for (i = 0; i < sw->n; i++) {
      if (sw->iv[i].open_at) {
        sw->iv[i].total_ns += sw->stop_ns - sw->iv[i].open_at;
        sw->iv[i].open_at = 0;
        sw->iv[i].count++;
      }
    }
  }
  lua_pushnumber(L, ns_to_ms(sw->stop_ns - sw->start_ns));
  return 1;
}

/* sw:elapsed_ms() -> ms since start (up to stop when stopped). */
static int sw_elapsed_ms(lua_State *L) {
  stopwatch *sw = check_sw(L);
  lua_pushnumber(L, ns_to_ms(sw_now(sw) - sw->start_ns));
  return 1;
}

/* sw:elapsed_us() -> integer µs since start. */
static int sw_elapsed_us(lua_State *L) {
  stopwatch *sw = check_sw(L);
  ga_pushint64(L, (long long)((sw_now(sw) - sw->start_ns) / 1000u));
  return 1;
}

/* sw:interval_ms(name) -> accumulated ms (an open interval counts up to now), count */
static int sw_interval_ms(lua_State *L) {
  stopwatch *sw = check_sw(L);
  sw_interval *iv = sw_find(L, sw, 0);
  uint64_t t;
  if (!iv) {
    lua_pushnumber(L, 0);
    lua_pushinteger(L, 0);
    return 2;
  }
  t = iv->total_ns + (iv->open_at ? sw_now(sw) - iv->open_at : 0);
  lua_pushnumber(L, ns_to_ms(t));
  lua_pushinteger(L, (lua_Integer)iv->count);
  return 2;
}

/* sw:intervals() -> { name = ms, ... } */
static int sw_intervals(lua_State *L) {
  stopwatch *sw = check_sw(L);
  int i;
  uint64_t now = sw_now(sw);
  lua_createtable(L, 0, sw->n);
  for (i = 0; i < sw->n; i++) {
    uint64_t t = sw->iv[i].total_ns + (sw->iv[i].open_at ? now - sw->iv[i].open_at : 0);
    lua_pushnumber(L, ns_to_ms(t));
    lua_setfield(L, -2, sw->iv[i].name);
  }
  return 1;
}

static int sw_running(lua_State *L) {
  stopwatch *sw = check_sw(L);
  lua_pushboolean(L, sw->stop_ns == 0);
  return 1;
}

static int sw_gc(lua_State *L) {
  stopwatch *sw = (stopwatch *)luaL_checkudata(L, 1, SW_MT);
  sw->closed = 1;
  lua_pushboolean(L, 1);
  return 1;
}

static int sw_tostring(lua_State *L) {
  stopwatch *sw = (stopwatch *)luaL_checkudata(L, 1, SW_MT);
  if (sw->closed) lua_pushliteral(L, "genaudit.stopwatch (closed)");
  else lua_pushfstring(L, "genaudit.stopwatch (%s)", sw->stop_ns ? "stopped" : "running");
  return 1;
}

/* core.monotonic_us() -> integer µs from an arbitrary origin (for intervals only). */
static int l_monotonic_us(lua_State *L) {
  ga_pushint64(L, (long long)(ga_monotonic_ns() / 1000u));
  return 1;
}

void ga_open_clock(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"begin", sw_begin},           {"finish", sw_finish},     {"add", sw_add},
      {"stop", sw_stop},             {"elapsed_ms", sw_elapsed_ms}, {"elapsed_us", sw_elapsed_us},
      {"interval_ms", sw_interval_ms}, {"intervals", sw_intervals}, {"running", sw_running},
      {"close", sw_gc},              {NULL, NULL}};
  ga_newclass(L, SW_MT, methods, sw_gc, sw_tostring);
  lua_pushcfunction(L, l_stopwatch);
  lua_setfield(L, -2, "stopwatch");
  lua_pushcfunction(L, l_monotonic_us);
  lua_setfield(L, -2, "monotonic_us");
}
