/* ga_sse.c — the one server-sent events parser of both HTTP transports: the
 * libcurl client and the cosocket one feed it their response bytes in
 * whatever chunks the network gave them. Owns the text/event-stream rules of
 * WHATWG HTML ("Interpreting an event stream"): lines end in CRLF, LF or CR;
 * a line starting with ':' is a comment; "data" appends its value and a LF,
 * "event" sets the type, "id" the last event id (not when it holds a NUL),
 * "retry" the reconnection time (ASCII digits only); a blank line dispatches.
 * A UTF-8 BOM at the start of the stream is skipped. Unlike a browser it
 * never decodes: data bytes come out exactly as they came (a multi-byte
 * character split across chunks comes out whole because whole lines are
 * buffered, never characters). Bounded: past max_event bytes the parser
 * stops with GA_SSE_TOO_LONG instead of growing. Plain C (ga_sse_*) and the
 * core.sse_parser userdata; no I/O, no mutable statics. */
#include <stdlib.h>
#include <string.h>
#include "ga_private.h"

static const char utf8_bom[3] = {'\xEF', '\xBB', '\xBF'};

void ga_sse_init(ga_sse *p, size_t max_event) {
  memset(p, 0, sizeof *p);
  ga_buf_init(&p->line);
  ga_buf_init(&p->data);
  ga_buf_init(&p->type);
  ga_buf_init(&p->id);
  p->max_event = max_event ? max_event : GA_SSE_DEFAULT_MAX;
  p->retry_ms = -1;
}

void ga_sse_free(ga_sse *p) {
  ga_buf_free(&p->line);
  ga_buf_free(&p->data);
  ga_buf_free(&p->type);
  ga_buf_free(&p->id);
}

/* Enters the sticky error state: the event being read is dropped and its
 * buffers freed, so that a refused stream holds no memory. */
static int sse_fail(ga_sse *p, int code) {
  p->err = code;
  ga_buf_free(&p->line);
  ga_buf_free(&p->data);
  ga_buf_free(&p->type);
  return code;
}

static int sse_nomem(ga_sse *p) {
  return p->line.oom || p->data.oom || p->type.oom || p->id.oom;
}

/* The blank line: dispatches the event unless its data is empty, then
 * starts a new one. The buffers are emptied before the callback runs (their
 * bytes stay in place for it), so a callback that raises (a Lua error)
 * leaves the parser consistent. */
static int sse_dispatch(ga_sse *p, ga_sse_cb cb, void *ud) {
  ga_sse_event ev;
  p->open = 0;
  if (p->data.len == 0) {
    p->type.len = 0;
    return GA_SSE_OK;
  }
  ev.type = p->type.len ? p->type.buf : "message";
  ev.type_len = p->type.len ? p->type.len : 7;
  ev.data = p->data.buf;
  ev.data_len = p->data.len - 1; /* the LF the last data line added */
  ev.id = p->id.len ? p->id.buf : "";
  ev.id_len = p->id.len;
  p->data.len = p->type.len = 0;
  if (cb(ud, &ev) != 0) return sse_fail(p, GA_SSE_STOPPED);
  return GA_SSE_OK;
}

/* One complete field line s[0..n) (n > 0, not a comment, no CR or LF). */
static int sse_line(ga_sse *p, const char *s, size_t n) {
  const char *colon = (const char *)memchr(s, ':', n), *v;
  size_t name_len, vlen;
  if (n + p->data.len + p->type.len > p->max_event) return sse_fail(p, GA_SSE_TOO_LONG);
  p->open = 1;
  if (colon) {
    name_len = (size_t)(colon - s);
    v = colon + 1;
    vlen = n - name_len - 1;
    if (vlen > 0 && *v == ' ') v++, vlen--;
  } else { /* the whole line is the name; the value is empty */
    name_len = n;
    v = s + n;
    vlen = 0;
  }
  if (name_len == 4 && memcmp(s, "data", 4) == 0) {
    if (vlen) ga_buf_add(&p->data, v, vlen); /* (no memcpy into a NULL buffer) */
    ga_buf_addc(&p->data, '\n');
  } else if (name_len == 5 && memcmp(s, "event", 5) == 0) {
    p->type.len = 0;
    if (vlen) ga_buf_add(&p->type, v, vlen);
  } else if (name_len == 2 && memcmp(s, "id", 2) == 0) {
    if (!memchr(v, '\0', vlen)) {
      p->id.len = 0;
      if (vlen) ga_buf_add(&p->id, v, vlen);
    }
  } else if (name_len == 5 && memcmp(s, "retry", 5) == 0) {
    long long ms = 0;
    size_t i;
    for (i = 0; i < vlen && v[i] >= '0' && v[i] <= '9'; i++)
      ms = ms >= GA_INT53 / 10 ? GA_INT53 - 1 : ms * 10 + (v[i] - '0'); /* saturates: exact on LuaJIT */
    if (vlen > 0 && i == vlen) p->retry_ms = ms;
  } /* any other field is ignored */
  return sse_nomem(p) ? sse_fail(p, GA_SSE_NOMEM) : GA_SSE_OK;
}

/* Ends a line at the terminator ch; a CR may be followed by a LF that
 * belongs to it (maybe in the next chunk). */
static void sse_eol(ga_sse *p, char ch) { p->after_cr = ch == '\r'; }

/* The line machinery over bytes past the BOM check. A line wholly inside
 * the chunk is parsed in place; only a line cut by the chunk's end is
 * copied into p->line. Comment lines are skipped, never buffered. */
static int sse_lines(ga_sse *p, const char *s, size_t n, ga_sse_cb cb, void *ud) {
  size_t i = 0, j;
  int rc;
  while (i < n) {
    if (p->after_cr) {
      p->after_cr = 0;
      if (s[i] == '\n') {
        i++;
        continue;
      }
    }
    for (j = i; j < n && s[j] != '\n' && s[j] != '\r'; j++) {}
    if (p->in_comment) {
      if (j == n) return GA_SSE_OK;
      p->in_comment = 0;
      sse_eol(p, s[j]);
      i = j + 1;
      continue;
    }
    if (p->line.len == 0) {
      if (j == i) { /* a blank line */
        if ((rc = sse_dispatch(p, cb, ud)) != GA_SSE_OK) return rc;
        sse_eol(p, s[i]);
        i++;
        continue;
      }
      if (s[i] == ':') {
        p->in_comment = 1;
        continue;
      }
      if (j < n) {
        if ((rc = sse_line(p, s + i, j - i)) != GA_SSE_OK) return rc;
        sse_eol(p, s[j]);
        i = j + 1;
        continue;
      }
    }
    if (p->line.len + (j - i) + p->data.len + p->type.len > p->max_event) return sse_fail(p, GA_SSE_TOO_LONG);
    ga_buf_add(&p->line, s + i, j - i);
    if (p->line.oom) return sse_fail(p, GA_SSE_NOMEM);
    if (j == n) return GA_SSE_OK;
    rc = sse_line(p, p->line.buf, p->line.len);
    if (rc != GA_SSE_OK) return rc;
    p->line.len = 0;
    sse_eol(p, s[j]);
    i = j + 1;
  }
  return GA_SSE_OK;
}

int ga_sse_feed(ga_sse *p, const char *s, size_t n, ga_sse_cb cb, void *ud) {
  if (p->err) return p->err;
  if (p->bom >= 0) { /* the stream's first bytes: a BOM, or a prefix of one so far */
    while (n > 0 && p->bom < 3 && *s == utf8_bom[p->bom]) p->bom++, s++, n--;
    if (p->bom == 3) {
      p->bom = -1;
    } else if (n > 0) { /* not a BOM: its matched prefix was data after all */
      int k = p->bom, rc;
      p->bom = -1;
      if (k > 0 && (rc = sse_lines(p, utf8_bom, (size_t)k, cb, ud)) != GA_SSE_OK) return rc;
    } else {
      return GA_SSE_OK;
    }
  }
  return sse_lines(p, s, n, cb, ud);
}

int ga_sse_finish(ga_sse *p) {
  int rc = p->err ? p->err : (p->bom > 0 || p->line.len > 0 || p->open) ? GA_SSE_PARTIAL : GA_SSE_OK;
  if (p->id.oom) ga_buf_free(&p->id); /* else kept: the last event id outlives the stream */
  p->line.len = p->data.len = p->type.len = 0;
  p->err = p->bom = p->after_cr = p->in_comment = p->open = 0;
  return rc;
}

/* ---- core.sse_parser ---- */

#define SSE_MT "genaudit.sse_parser"

typedef struct {
  ga_sse p;
  int closed;
} sse_parser;

typedef struct {
  lua_State *L;
  int tbl, n;
} sse_push;

static sse_parser *check_parser(lua_State *L) {
  sse_parser *sp = (sse_parser *)luaL_checkudata(L, 1, SSE_MT);
  if (sp->closed) luaL_error(L, "attempt to use a closed sse_parser");
  return sp;
}

/* Appends {event=, data=, id=} to the result list (id left out when "");
 * raises only on out of memory, which the parser survives. */
static int sse_push_event(void *ud, const ga_sse_event *ev) {
  sse_push *c = (sse_push *)ud;
  lua_State *L = c->L;
  luaL_checkstack(L, 4, "sse_parser");
  lua_createtable(L, 0, 3);
  lua_pushlstring(L, ev->type, ev->type_len);
  lua_setfield(L, -2, "event");
  lua_pushlstring(L, ev->data, ev->data_len);
  lua_setfield(L, -2, "data");
  if (ev->id_len) {
    lua_pushlstring(L, ev->id, ev->id_len);
    lua_setfield(L, -2, "id");
  }
  lua_rawseti(L, c->tbl, ++c->n);
  return 0;
}

static int sse_error(lua_State *L, const ga_sse *p, int rc) {
  if (rc == GA_SSE_TOO_LONG)
    return ga_fail(L, "SSE", "over-long event (more than %zu bytes buffered)", p->max_event);
  if (rc == GA_SSE_NOMEM) return ga_fail(L, "NOMEM", "out of memory reading an event stream");
  if (rc == GA_SSE_PARTIAL) return ga_fail(L, "SSE", "stream ended inside an event");
  return ga_fail(L, "SSE", "parser stopped");
}

/* core.sse_parser([{ max_event_bytes = N }]) -> parser. Raises on a bad
 * option (not a table, N not a positive integer). */
static int l_sse_parser(lua_State *L) {
  long long max = GA_SSE_DEFAULT_MAX;
  sse_parser *sp;
  int t = lua_type(L, 1);
  if (t != LUA_TNONE && t != LUA_TNIL) {
    luaL_checktype(L, 1, LUA_TTABLE);
    ga_rawgetfield(L, 1, "max_event_bytes");
    if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &max) || max < 1 || max > GA_INT53))
      return luaL_argerror(L, 1, "max_event_bytes must be a positive integer");
    lua_pop(L, 1);
  }
  sp = (sse_parser *)ga_newuserdata(L, sizeof *sp);
  ga_sse_init(&sp->p, (size_t)max); /* allocates nothing */
  sp->closed = 0;
  luaL_getmetatable(L, SSE_MT);
  lua_setmetatable(L, -2);
  return 1;
}

/* parser:feed(bytes) -> { {event=, data=, id=}, ... } (the events completed
 * by these bytes, maybe none), or nil, "SSE: over-long event (...)", "SSE",
 * events-before-the-error; the error is sticky until finish(). Raises when
 * bytes is not a string. */
static int sse_feed(lua_State *L) {
  sse_parser *sp = check_parser(L);
  sse_push c;
  size_t n;
  const char *s;
  int rc;
  if (lua_type(L, 2) != LUA_TSTRING)
    return luaL_argerror(L, 2, lua_pushfstring(L, "string expected, got %s", luaL_typename(L, 2)));
  s = lua_tolstring(L, 2, &n);
  lua_settop(L, 2);
  lua_newtable(L);
  c.L = L;
  c.tbl = 3;
  c.n = 0;
  rc = ga_sse_feed(&sp->p, s, n, sse_push_event, &c);
  if (rc == GA_SSE_OK) return 1;
  sse_error(L, &sp->p, rc);
  lua_pushvalue(L, 3);
  return 4;
}

/* parser:finish() -> true, or nil, "SSE: stream ended inside an event", "SSE"
 * (the pending event is dropped), or the sticky feed error. The parser is
 * then ready for a new stream (last event id and retry kept). */
static int sse_finish(lua_State *L) {
  sse_parser *sp = check_parser(L);
  int rc = ga_sse_finish(&sp->p);
  if (rc == GA_SSE_OK) {
    lua_pushboolean(L, 1);
    return 1;
  }
  return sse_error(L, &sp->p, rc);
}

/* parser:retry() -> the last valid "retry" field in ms, or nil */
static int sse_retry(lua_State *L) {
  sse_parser *sp = check_parser(L);
  if (sp->p.retry_ms < 0) lua_pushnil(L);
  else ga_pushint64(L, sp->p.retry_ms);
  return 1;
}

/* __gc, __close and close(): idempotent; returns true */
static int sse_gc(lua_State *L) {
  sse_parser *sp = (sse_parser *)luaL_checkudata(L, 1, SSE_MT);
  if (!sp->closed) ga_sse_free(&sp->p);
  sp->closed = 1;
  lua_pushboolean(L, 1);
  return 1;
}

static int sse_tostring(lua_State *L) {
  sse_parser *sp = (sse_parser *)luaL_checkudata(L, 1, SSE_MT);
  if (sp->closed) lua_pushliteral(L, "genaudit.sse_parser (closed)");
  else lua_pushfstring(L, "genaudit.sse_parser (%p)", (void *)sp);
  return 1;
}

void ga_open_sse(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"feed", sse_feed}, {"finish", sse_finish}, {"retry", sse_retry}, {"close", sse_gc}, {NULL, NULL}};
  ga_newclass(L, SSE_MT, methods, sse_gc, sse_tostring);
  lua_pushcfunction(L, l_sse_parser);
  lua_setfield(L, -2, "sse_parser");
}
