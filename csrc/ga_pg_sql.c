/* ga_pg_sql.c — SQL text for PostgreSQL, in plain C (no lua_State): the
 * translation of SQLite's placeholders (?, ?N, :name, @name, $name) into
 * PostgreSQL's $N, which leaves literals, quoted identifiers, comments and
 * dollar quotes byte for byte (fuzz/fuzz_pgsql.c), and the first-word check
 * by which query() refuses what is not a plain read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "ga_pg.h"

void ga_pg_xlat_free(xlat *x) {
  ga_buf_free(&x->sql);
  free(x->slots);
  x->slots = NULL;
}

static int is_ident_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (unsigned char)c >= 0x80;
}
static int is_ident(char c) { return is_ident_start(c) || (c >= '0' && c <= '9') || c == '$'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int grow_slots(xlat *x, int n) {
  if (n > MAX_PARAMS) {
    snprintf(x->err, sizeof x->err, "variable number must be between ?1 and ?%d", MAX_PARAMS);
    return -1;
  }
  if (n > x->cap) {
    int cap = x->cap ? x->cap : 8, i;
    slot *p;
    while (cap < n) cap *= 2;
    if (cap > MAX_PARAMS) cap = MAX_PARAMS;
    p = (slot *)realloc(x->slots, (size_t)cap * sizeof *p);
    if (!p) {
      snprintf(x->err, sizeof x->err, "out of memory");
      return -1;
    }
    for (i = x->cap; i < cap; i++) p[i].off = p[i].nlen = 0;
    x->slots = p;
    x->cap = cap;
  }
  if (n > x->n) x->n = n;
  return 0;
}

static void emit_param(xlat *x, int k) {
  char num[16];
  snprintf(num, sizeof num, "$%d", k);
  ga_buf_addstr(&x->sql, num);
}

/* Slot of the named parameter src[off, off+len): the earlier one of that
 * name, or a new one after the highest so far. */
static int named_slot(xlat *x, const char *src, size_t off, size_t len) {
  int i;
  for (i = 0; i < x->n; i++)
    if (x->slots[i].nlen == len && memcmp(src + x->slots[i].off, src + off, len) == 0) return i + 1;
  if (grow_slots(x, x->n + 1) != 0) return -1;
  x->slots[x->n - 1].off = off;
  x->slots[x->n - 1].nlen = len;
  return x->n;
}

/* Reads a decimal parameter number at src[*i]; advances *i. */
static int read_number(xlat *x, const char *src, size_t len, size_t *i) {
  long v = 0;
  while (*i < len && is_digit(src[*i])) {
    if (v <= MAX_PARAMS) v = v * 10 + (src[*i] - '0');
    (*i)++;
  }
  if (v < 1 || v > MAX_PARAMS) {
    snprintf(x->err, sizeof x->err, "variable number must be between ?1 and ?%d", MAX_PARAMS);
    return -1;
  }
  if (grow_slots(x, (int)v) != 0) return -1;
  return (int)v;
}

/* Translates one statement's placeholders into $N, skipping string
 * literals (with E'' escapes), quoted identifiers, comments, dollar quotes
 * and :: casts; counts statements and stops at the end of the first. ?
 * takes the slot after the highest so far, ?N and $N slot N, a :name,
 * @name or $name the slot of its first use. Returns 0 or -1 (x->err). */
int ga_pg_translate(const char *src, size_t len, xlat *x) {
  size_t i = 0, end_first = (size_t)-1, ident_start = 0, ident_len = 0, ident_end = (size_t)-1;
  int content = 0;
  memset(x, 0, sizeof *x);
  ga_buf_init(&x->sql);
  while (i < len) {
    char c = src[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      ga_buf_addc(&x->sql, c);
      i++;
      continue;
    }
    if (c == '-' && i + 1 < len && src[i + 1] == '-') {
      size_t j = i;
      while (j < len && src[j] != '\n') j++;
      ga_buf_add(&x->sql, src + i, j - i);
      i = j;
      continue;
    }
    if (c == '/' && i + 1 < len && src[i + 1] == '*') { /* nested, as PostgreSQL allows */
      size_t j = i + 2;
      int depth = 1;
      while (j < len && depth > 0) {
        if (src[j] == '/' && j + 1 < len && src[j + 1] == '*') depth++, j += 2;
        else if (src[j] == '*' && j + 1 < len && src[j + 1] == '/') depth--, j += 2;
        else j++;
      }
      ga_buf_add(&x->sql, src + i, j - i);
      i = j;
      continue;
    }
    if (c == ';') {
      if (content) {
        x->statements++;
        if (x->statements == 1) end_first = x->sql.len;
      }
      content = 0;
      ga_buf_addc(&x->sql, c);
      i++;
      continue;
    }
    content = 1;
    if (c == '\'') {
      int esc = ident_len == 1 && ident_end == i && (src[ident_start] == 'E' || src[ident_start] == 'e');
      size_t j = i + 1;
      for (;;) {
        if (j >= len) break;
        if (esc && src[j] == '\\') {
          j += 2;
          continue;
        }
        if (src[j] == '\'') {
          if (j + 1 < len && src[j + 1] == '\'') {
            j += 2;
            continue;
          }
          j++;
          break;
        }
        j++;
      }
      if (j > len) j = len;
      ga_buf_add(&x->sql, src + i, j - i);
      i = j;
      continue;
    }
    if (c == '"') {
      size_t j = i + 1;
      while (j < len) {
        if (src[j] == '"') {
          if (j + 1 < len && src[j + 1] == '"') {
            j += 2;
            continue;
          }
          j++;
          break;
        }
        j++;
      }
      ga_buf_add(&x->sql, src + i, j - i);
      i = j;
      continue;
    }
    if (is_ident_start(c)) {
      size_t j = i;
      while (j < len && is_ident(src[j])) j++;
      ident_start = i;
      ident_len = j - i;
      ident_end = j;
      ga_buf_add(&x->sql, src + i, j - i);
      i = j;
      continue;
    }
    if (c == '$') {
      size_t j = i + 1;
      if (j < len && is_digit(src[j])) { /* $N: a positional parameter */
        int k = read_number(x, src, len, &j);
        if (k < 0) return -1;
        emit_param(x, k);
        i = j;
        continue;
      }
      while (j < len && (is_ident_start(src[j]) || is_digit(src[j]))) j++;
      if (j < len && src[j] == '$') { /* $tag$ ... $tag$ */
        size_t taglen = j + 1 - i;
        const char *close = NULL;
        size_t k;
        for (k = j + 1; k + taglen <= len; k++)
          if (src[k] == '$' && memcmp(src + k, src + i, taglen) == 0) {
            close = src + k;
            break;
          }
        k = close ? (size_t)(close - src) + taglen : len;
        ga_buf_add(&x->sql, src + i, k - i);
        i = k;
        continue;
      }
      if (j > i + 1 && is_ident_start(src[i + 1])) { /* $name */
        int k = named_slot(x, src, i, j - i);
        if (k < 0) return -1;
        emit_param(x, k);
        i = j;
        continue;
      }
      ga_buf_addc(&x->sql, c);
      i++;
      continue;
    }
    if (c == '?') {
      size_t j = i + 1;
      int k;
      if (j < len && is_digit(src[j])) {
        k = read_number(x, src, len, &j);
      } else {
        k = x->n + 1;
        if (grow_slots(x, k) != 0) k = -1;
      }
      if (k < 0) return -1;
      emit_param(x, k);
      i = j;
      continue;
    }
    if (c == ':' && i + 1 < len && src[i + 1] == ':') {
      ga_buf_add(&x->sql, "::", 2);
      i += 2;
      continue;
    }
    if ((c == ':' || c == '@') && i + 1 < len && is_ident_start(src[i + 1])) {
      size_t j = i + 1;
      int k;
      while (j < len && (is_ident_start(src[j]) || is_digit(src[j]))) j++;
      k = named_slot(x, src, i, j - i);
      if (k < 0) return -1;
      emit_param(x, k);
      i = j;
      continue;
    }
    ga_buf_addc(&x->sql, c);
    i++;
  }
  if (content) {
    x->statements++;
    if (x->statements == 1) end_first = x->sql.len;
  }
  if (x->statements == 1 && end_first != (size_t)-1) x->sql.len = end_first;
  ga_buf_addc(&x->sql, '\0');
  if (x->sql.oom) {
    snprintf(x->err, sizeof x->err, "out of memory");
    return -1;
  }
  return 0;
}


/* False when the statement (one, translated) is one query() refuses: its
 * first word, after comments and opening parentheses, starts a command
 * other than SELECT, WITH, VALUES, TABLE, SHOW or EXPLAIN (the first words
 * of PostgreSQL's grammar): transaction control, SET/RESET, PREPARE,
 * DECLARE, LISTEN, LOCK, COPY, DO, CALL, utility commands. They could end
 * the READ ONLY transaction a query runs in, or change the session beyond
 * it. Refused before they reach the server; an unknown first word goes on,
 * for the server's syntax error. */
int ga_pg_plain_read(const char *q) {
  static const char *const refused[] = {
      "abort", "alter", "analyse", "analyze", "begin", "call", "checkpoint", "close", "cluster", "comment",
      "commit", "copy", "create", "deallocate", "declare", "delete", "discard", "do", "drop", "end", "execute",
      "fetch", "grant", "import", "insert", "listen", "load", "lock", "merge", "move", "notify", "prepare",
      "reassign", "refresh", "reindex", "release", "reset", "revoke", "rollback", "savepoint", "security", "set",
      "start", "truncate", "unlisten", "update", "vacuum", NULL};
  size_t n;
  int i;
  for (;;) {
    while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r' || *q == '\f' || *q == '\v' || *q == '(') q++;
    if (q[0] == '-' && q[1] == '-') {
      while (*q && *q != '\n') q++;
    } else if (q[0] == '/' && q[1] == '*') {
      int depth = 1;
      q += 2;
      while (*q && depth > 0) {
        if (q[0] == '/' && q[1] == '*') depth++, q += 2;
        else if (q[0] == '*' && q[1] == '/') depth--, q += 2;
        else q++;
      }
    } else {
      break;
    }
  }
  for (n = 0; (q[n] >= 'a' && q[n] <= 'z') || (q[n] >= 'A' && q[n] <= 'Z'); n++) {}
  if (is_ident(q[n])) return 1; /* "selectx", "set_config": not a command word */
  for (i = 0; refused[i]; i++)
    if (strlen(refused[i]) == n && strncasecmp(q, refused[i], n) == 0) return 0;
  return 1;
}
