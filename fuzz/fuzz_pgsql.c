/* fuzz/fuzz_pgsql.c — the PostgreSQL placeholder translator (ga_pg_translate,
 * ga_pg_sql.c), behind every store:query()/each() on PostgreSQL. Two modes,
 * by the first input byte:
 *   raw: the rest of the input as SQL text, copied into a buffer of exactly
 *        its length (ASan sees any read past it). Checks: the output is
 *        NUL-terminated; text with no ? : @ $ ; comes back byte for byte.
 *   model: the input drives a generator of tokens — string literals (with
 *        '' and E'\'' escapes), quoted identifiers, -- and nested comments,
 *        dollar quotes, :: casts, words, punctuation, and the placeholders ?,
 *        ?N, $N, :name, @name, $name, optionally a ';' and a second
 *        statement — which writes the expected translation alongside: every
 *        literal, comment and dollar-quote byte unchanged, each placeholder
 *        as $k by SQLite's numbering. Checks: exact output, statement count
 *        and parameter count. */
#include <stdint.h>
#include "fuzz_util.h"
#include "../csrc/ga_pg.h"

typedef struct { const uint8_t *p; size_t n; } rd;

static unsigned rd_byte(rd *r) {
  if (!r->n) return 0;
  r->n--;
  return *r->p++;
}

#define MAXNAMES 80 /* slots with a name kept; run_model stops adding tokens at 64 */
typedef struct {
  ga_buf in, out;
  char names[MAXNAMES][12]; /* the name of slot k+1 (prefix included), "" for a positional one */
  int n;                     /* highest slot so far */
  int content;               /* the statement has more than space and comments */
} model;

static void emit_slot(model *m, int k) {
  char num[16];
  snprintf(num, sizeof num, "$%d", k);
  ga_buf_addstr(&m->out, num);
}

static void grow_to(model *m, int k) {
  while (m->n < k) {
    if (m->n < MAXNAMES) m->names[m->n][0] = '\0';
    m->n++;
  }
}

static void both(model *m, const char *s, size_t n) {
  ga_buf_add(&m->in, s, n);
  ga_buf_add(&m->out, s, n);
}

static void name_of(rd *r, char *buf, size_t cap) {
  static const char first[] = "abcxyz_";
  static const char rest[] = "abc019_";
  size_t i = 0, len = 1 + rd_byte(r) % 4;
  buf[i++] = first[rd_byte(r) % (sizeof first - 1)];
  while (i < len && i + 1 < cap) buf[i++] = rest[rd_byte(r) % (sizeof rest - 1)];
  buf[i] = '\0';
}

static void body(rd *r, ga_buf *b, const char *avoid, size_t max) {
  size_t i, len = rd_byte(r) % max;
  for (i = 0; i < len; i++) {
    char c = (char)rd_byte(r);
    if (strchr(avoid, c) && c) c = 'q';
    ga_buf_addc(b, c);
  }
}

static void token(model *m, rd *r) {
  unsigned kind = rd_byte(r) % 17;
  ga_buf t;
  char name[16], num[16];
  ga_buf_init(&t);
  switch (kind) {
    case 0: { /* 'literal' with '' inside: any byte but a lone quote */
      size_t i, len = rd_byte(r) % 12;
      ga_buf_addc(&t, '\'');
      for (i = 0; i < len; i++) {
        char c = (char)rd_byte(r);
        ga_buf_addc(&t, c);
        if (c == '\'') ga_buf_addc(&t, '\'');
      }
      ga_buf_addc(&t, '\'');
      both(m, t.buf, t.len);
      m->content = 1;
      break;
    }
    case 1: { /* E'...' with backslash escapes */
      size_t i, len = rd_byte(r) % 12;
      ga_buf_add(&t, "E'", 2);
      for (i = 0; i < len; i++) {
        char c = (char)rd_byte(r);
        if (c == '\\') {
          ga_buf_addc(&t, '\\');
          ga_buf_addc(&t, (char)rd_byte(r));
        } else {
          ga_buf_addc(&t, c);
          if (c == '\'') ga_buf_addc(&t, '\'');
        }
      }
      ga_buf_addc(&t, '\'');
      both(m, t.buf, t.len);
      m->content = 1;
      break;
    }
    case 2: { /* "quoted identifier" */
      size_t i, len = 1 + rd_byte(r) % 8;
      ga_buf_addc(&t, '"');
      for (i = 0; i < len; i++) {
        char c = (char)rd_byte(r);
        ga_buf_addc(&t, c);
        if (c == '"') ga_buf_addc(&t, '"');
      }
      ga_buf_addc(&t, '"');
      both(m, t.buf, t.len);
      m->content = 1;
      break;
    }
    case 3: /* -- comment */
      ga_buf_add(&t, "--", 2);
      body(r, &t, "\n", 16);
      ga_buf_addc(&t, '\n');
      both(m, t.buf, t.len);
      break;
    case 4: { /* nested block comment */
      unsigned depth = 1 + rd_byte(r) % 3, i;
      for (i = 0; i < depth; i++) {
        ga_buf_add(&t, "/*", 2);
        body(r, &t, "/*", 10);
      }
      for (i = 0; i < depth; i++) {
        body(r, &t, "/*", 6);
        ga_buf_add(&t, "*/", 2);
      }
      both(m, t.buf, t.len);
      break;
    }
    case 5: { /* $tag$ ... $tag$ (the body holds no '$') */
      char tag[8];
      size_t tl = rd_byte(r) % 4, i;
      for (i = 0; i < tl; i++) tag[i] = "tgx_"[rd_byte(r) % 4];
      tag[tl] = '\0';
      ga_buf_addc(&t, '$');
      ga_buf_addstr(&t, tag);
      ga_buf_addc(&t, '$');
      body(r, &t, "$", 16);
      ga_buf_addc(&t, '$');
      ga_buf_addstr(&t, tag);
      ga_buf_addc(&t, '$');
      both(m, t.buf, t.len);
      m->content = 1;
      break;
    }
    case 6: both(m, "::", 2); m->content = 1; break;
    case 7: { /* a word */
      name_of(r, name, sizeof name);
      both(m, name, strlen(name));
      m->content = 1;
      break;
    }
    case 8: { /* punctuation */
      static const char punct[] = "(),+=<>.*%";
      char c = punct[rd_byte(r) % (sizeof punct - 1)];
      both(m, &c, 1);
      m->content = 1;
      break;
    }
    case 9: /* ? */
      ga_buf_addc(&m->in, '?');
      grow_to(m, m->n + 1);
      emit_slot(m, m->n);
      m->content = 1;
      break;
    case 10:
    case 11: { /* ?N or $N, maybe with leading zeros */
      int k = 1 + (int)(rd_byte(r) % 40), zeros = rd_byte(r) % 3 == 0;
      snprintf(num, sizeof num, "%c%s%d", kind == 10 ? '?' : '$', zeros ? "0" : "", k);
      ga_buf_addstr(&m->in, num);
      grow_to(m, k);
      emit_slot(m, k);
      m->content = 1;
      break;
    }
    default: { /* :name, @name, $name: the slot of its first use */
      char full[16];
      int k, i;
      name_of(r, name, sizeof name);
      snprintf(full, sizeof full, "%c%s", ":@$"[kind % 3], name);
      ga_buf_addstr(&m->in, full);
      k = 0;
      for (i = 0; i < m->n && i < MAXNAMES; i++)
        if (strcmp(m->names[i], full) == 0) {
          k = i + 1;
          break;
        }
      if (!k) {
        grow_to(m, m->n + 1);
        k = m->n;
        if (k <= MAXNAMES) snprintf(m->names[k - 1], sizeof m->names[k - 1], "%s", full);
      }
      emit_slot(m, k);
      m->content = 1;
      break;
    }
  }
  ga_buf_free(&t);
  both(m, " ", 1); /* every token stands alone */
}

static void run_model(rd *r) {
  model m;
  xlat x;
  unsigned ntok = rd_byte(r) % 24, tail = rd_byte(r) % 3, i;
  int statements, rc;
  size_t cut = (size_t)-1;
  memset(&m, 0, sizeof m);
  ga_buf_init(&m.in);
  ga_buf_init(&m.out);
  for (i = 0; i < ntok && m.n < 64; i++) token(&m, r);
  statements = m.content;
  if (tail >= 1) { /* "; " and, with tail 2, a second statement */
    if (m.content) cut = m.out.len;
    both(&m, "; ", 2);
    if (tail == 2) {
      m.content = 0;
      both(&m, "select ", 7);
      m.content = 1;
      token(&m, r);
      statements++;
    }
  }
  if (statements == 1 && cut != (size_t)-1) m.out.len = cut;
  FUZZ_CHECK(!m.in.oom && !m.out.oom, "out of memory");
  rc = ga_pg_translate(m.in.buf, m.in.len, &x);
  FUZZ_CHECK(rc == 0, "refused: %s", x.err);
  FUZZ_CHECK(x.statements == statements, "%d statements, expected %d", x.statements, statements);
  FUZZ_CHECK(x.n == m.n, "%d parameters, expected %d", x.n, m.n);
  FUZZ_CHECK(x.sql.len == m.out.len + 1 && x.sql.buf[m.out.len] == '\0', "length %zu, expected %zu", x.sql.len,
             m.out.len + 1);
  FUZZ_CHECK(m.out.len == 0 || memcmp(x.sql.buf, m.out.buf, m.out.len) == 0, "output differs from the expected translation");
  ga_pg_xlat_free(&x);
  ga_buf_free(&m.in);
  ga_buf_free(&m.out);
}

static void run_raw(const uint8_t *data, size_t size) {
  char *src = (char *)malloc(size ? size : 1);
  xlat x;
  size_t i;
  int plain = 1;
  FUZZ_CHECK(src != NULL, "out of memory");
  if (size) memcpy(src, data, size);
  for (i = 0; i < size && plain; i++) plain = !strchr("?:@$;", src[i]) || src[i] == '\0';
  if (ga_pg_translate(src, size, &x) == 0) {
    FUZZ_CHECK(x.sql.len >= 1 && x.sql.buf[x.sql.len - 1] == '\0', "output not NUL-terminated");
    FUZZ_CHECK(x.statements >= 0 && x.n >= 0, "negative counts");
    if (plain) {
      FUZZ_CHECK(x.sql.len == size + 1 && memcmp(x.sql.buf, src, size) == 0, "text without placeholders changed");
      FUZZ_CHECK(x.n == 0, "parameters in text without placeholders");
    }
    (void)ga_pg_plain_read(x.sql.buf);
  } else {
    FUZZ_CHECK(x.err[0] != '\0', "refused without a message");
  }
  ga_pg_xlat_free(&x);
  free(src);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  if (data[0] & 1) {
    rd r;
    r.p = data + 1;
    r.n = size - 1;
    run_model(&r);
  } else {
    run_raw(data + 1, size - 1);
  }
  return 0;
}
