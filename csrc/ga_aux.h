/* ga_aux.h — the generic helpers of genaudit.core (ga_aux.c), in the spirit
 * of Lua's lauxlib: error triples, class registration, integer conversion,
 * the null value, one growable byte buffer, one sleep. They know no concern
 * (no SQL, no HTTP, no JSON grammar) and call none: every other C file may
 * use them, they use only ga_compat.h and the C library. */
#ifndef GA_AUX_H
#define GA_AUX_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "ga_compat.h"

#define GA_EXPORT __attribute__((visibility("default")))

/* ---- Lua helpers ---- */
/* Pushes t[k] for the table at idx without metamethods: no user code runs,
 * so nothing can raise (bar OOM) or hand back a string nobody else holds. */
void ga_rawgetfield(lua_State *L, int idx, const char *k);

/* Returns nil, "CODE: message", "CODE" (luv's triple); always 3 results. */
int ga_fail(lua_State *L, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Registers methods + metatable fields for a userdata type under `tname`:
 * __index = methods, __gc/__close = gc, __tostring = tostr, __name = tname. */
void ga_newclass(lua_State *L, const char *tname, const luaL_Reg *methods,
                 lua_CFunction gc, lua_CFunction tostr);

/* True when the value at idx is a number holding an integer; stores it in *out.
 * On 5.4 a float with an integral value counts too (42.0 from cjson). */
int ga_tointeger(lua_State *L, int idx, long long *out);

/* 2^53: every integer of smaller magnitude is exact in a double, LuaJIT's only
 * number type. */
#define GA_INT53 9007199254740992LL

/* The number at idx when it is to be written (JSON, SQL parameters) as an
 * integer: on 5.4 a Lua integer (a float, even 42.0, stays a float); on
 * LuaJIT an integral double with |n| < 2^53. Stores it in *out. */
int ga_exactint(lua_State *L, int idx, long long *out);

/* Pushes a 64-bit integer: a Lua integer on 5.4, a double on LuaJIT (exact up
 * to 2^53, which every token count and duration in µs stays under). */
void ga_pushint64(lua_State *L, long long v);

/* genaudit.null: the lightuserdata NULL (JSON null, SQL NULL). */
void ga_pushnull(lua_State *L);
int ga_isnull(lua_State *L, int idx);

/* ---- C helpers ---- */
/* Sleeps ns nanoseconds, resuming after a signal (EINTR). */
void ga_sleep_ns(uint64_t ns);

/* A growable byte buffer: adds never fail; on out of memory `oom` is set and
 * further adds are dropped (the caller checks oom once, at the end). */
typedef struct { char *buf; size_t len, cap; int oom; } ga_buf;
void ga_buf_init(ga_buf *b);
void ga_buf_free(ga_buf *b);
int ga_buf_grow(ga_buf *b, size_t need); /* the slow path of ga_buf_reserve */
/* Room for `need` more bytes at buf + len: 0, or -1 (oom). */
static inline int ga_buf_reserve(ga_buf *b, size_t need) {
  if (b->oom) return -1;
  return b->len + need <= b->cap ? 0 : ga_buf_grow(b, need);
}
static inline void ga_buf_add(ga_buf *b, const char *s, size_t n) {
  if (n == 0 || ga_buf_reserve(b, n) != 0) return; /* n == 0: buf may still be NULL */
  memcpy(b->buf + b->len, s, n);
  b->len += n;
}
static inline void ga_buf_addc(ga_buf *b, char c) {
  if (b->len < b->cap) { /* the common case, without a call per byte */
    b->buf[b->len++] = c;
    return;
  }
  ga_buf_add(b, &c, 1);
}
static inline void ga_buf_addstr(ga_buf *b, const char *s) { ga_buf_add(b, s, strlen(s)); }

#endif
