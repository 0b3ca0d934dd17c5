/* ga_ulid.c — ULID snapshot ids: 48-bit ms time + 80 random bits, Crockford
 * base32, 26 chars. A generator is an object (state per store, no statics):
 * within one ms (or if the wall clock steps back) it increments the random
 * part, so ids from one generator sort in creation order. */
#include <string.h>
#include <sys/random.h>
#include "ga_private.h"

#define ULID_MT "genaudit.ulid_generator"

static const char B32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

int ga_ulid_next(ga_ulid_state *st, int64_t ms, char out[26]) {
  int i;
  uint8_t b[16];
  if (ms < 0 || ms > 0xFFFFFFFFFFFFLL) return -1;
  if (st->last_ms != 0 && ms <= st->last_ms) {
    /* same millisecond (or clock went back): keep the time, add one */
    ms = st->last_ms;
    for (i = 9; i >= 0; i--)
      if (++st->rnd[i] != 0) break;
    if (i < 0) return -1; /* 2^80 ids in one ms: refuse rather than wrap */
  } else {
    if (getrandom(st->rnd, sizeof st->rnd, 0) != (ssize_t)sizeof st->rnd) return -1;
    st->rnd[0] &= 0x7F; /* headroom so increments within one ms cannot overflow in practice */
    st->last_ms = ms;
  }
  for (i = 0; i < 6; i++) b[i] = (uint8_t)(ms >> (8 * (5 - i)));
  memcpy(b + 6, st->rnd, 10);
  /* 128 bits -> 26 chars: the first char carries the top 3 bits (value < 8) */
  {
    unsigned acc = 0;
    int bits = 2; /* 130 = 26*5: pretend two leading zero bits */
    int o = 0, k;
    for (k = 0; k < 16; k++) {
      acc = (acc << 8) | b[k];
      bits += 8;
      while (bits >= 5) {
        bits -= 5;
        out[o++] = B32[(acc >> bits) & 31];
      }
    }
  }
  return 0;
}

/* The userdata: a generator state plus the closed flag every handle has. */
typedef struct {
  ga_ulid_state st;
  int closed;
} ulid_gen;

static int ulid_gen_next(lua_State *L) {
  ulid_gen *g = (ulid_gen *)luaL_checkudata(L, 1, ULID_MT);
  ga_ulid_state *st = &g->st;
  char id[26];
  if (g->closed) return luaL_error(L, "attempt to use a closed ulid_generator");
  if (ga_ulid_next(st, ga_realtime_ms(), id) != 0) return ga_fail(L, "ULID", "cannot generate an id (random source failed)");
  lua_pushlstring(L, id, 26);
  return 1;
}

static int ulid_gen_gc(lua_State *L) {
  ulid_gen *g = (ulid_gen *)luaL_checkudata(L, 1, ULID_MT);
  g->closed = 1;
  lua_pushboolean(L, 1);
  return 1;
}

static int ulid_gen_tostring(lua_State *L) {
  ulid_gen *g = (ulid_gen *)luaL_checkudata(L, 1, ULID_MT);
  if (g->closed) lua_pushliteral(L, "genaudit.ulid_generator (closed)");
  else lua_pushliteral(L, "genaudit.ulid_generator");
  return 1;
}

/* core.ulid_generator() -> generator with :next() */
static int l_ulid_generator(lua_State *L) {
  ulid_gen *g = (ulid_gen *)ga_newuserdata(L, sizeof *g);
  memset(g, 0, sizeof *g);
  luaL_getmetatable(L, ULID_MT);
  lua_setmetatable(L, -2);
  return 1;
}

int ga_ulid_time(const char *s, size_t n, int64_t *ms) {
  size_t i;
  int64_t t = 0;
  if (n != 26) return -1;
  for (i = 0; i < 10; i++) {
    const char *p = s[i] ? strchr(B32, s[i]) : NULL;
    if (!p) return -2;
    t = (t << 5) | (p - B32);
  }
  *ms = t;
  return 0;
}

/* core.ulid_time(id) -> ms since epoch encoded in a ULID, or nil, err */
static int l_ulid_time(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  int64_t ms = 0;
  int rc = ga_ulid_time(s, n, &ms);
  if (rc == -1) return ga_fail(L, "INVALID", "a ULID has 26 characters");
  if (rc != 0) return ga_fail(L, "INVALID", "not a ULID");
  ga_pushint64(L, (long long)ms);
  return 1;
}

void ga_open_ulid(lua_State *L) {
  static const luaL_Reg methods[] = {{"next", ulid_gen_next}, {"close", ulid_gen_gc}, {NULL, NULL}};
  ga_newclass(L, ULID_MT, methods, ulid_gen_gc, ulid_gen_tostring);
  lua_pushcfunction(L, l_ulid_generator);
  lua_setfield(L, -2, "ulid_generator");
  lua_pushcfunction(L, l_ulid_time);
  lua_setfield(L, -2, "ulid_time");
}
