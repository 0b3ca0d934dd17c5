/* ga_bpe_scan.c — the hand-written pre-tokeniser: splits valid UTF-8 text
 * into exactly the pieces tiktoken's o200k_base / cl100k_base patterns
 * (csrc/ga_bpe_pat.h) give when PCRE2 runs them, without a regex engine.
 *
 * Character classes come from csrc/ga_bpe_tables.h (derived from PCRE2 by
 * tools/bpe-tables.c: the same classes, the same Unicode version). Each
 * function below is one alternative of the pattern, tried in the pattern's
 * order at the current position, and reproduces what PCRE2's backtracking
 * settles on (greedy quantifiers give back characters from the right until
 * the rest matches). When no alternative matches at a position PCRE2 moves
 * one character on and tries again; so does ga_bpe_scan_next.
 *
 * Linear time: every alternative scans one run of a class from the current
 * position; a run scanned without being consumed is consumed by the next
 * piece (see the notes at o200k_letters and ws_tail), so each character is
 * classified a bounded number of times.
 *
 * Input must be valid UTF-8 (ga_bpe.c repairs it first). No state: every
 * call works on its arguments only. */
#include <stddef.h>
#include "ga_private.h"
#include "ga_bpe_tables.h"

#define CL_L 1u     /* \p{L} + additions */
#define CL_N 2u     /* \p{N} + additions */
#define CL_UP 4u    /* o200k [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] */
#define CL_LO 8u    /* o200k [\p{Ll}\p{Lm}\p{Lo}\p{M}] */
#define CL_WS 16u   /* White_Space (tiktoken's \s) */
#define CL_CRLF 32u /* \r or \n */
#define CL_END 64u  /* past the end of the text */

/* [^\r\nLN]: the optional first character of a letter piece */
#define IS_PRE(k) (!((k) & (CL_L | CL_N | CL_CRLF | CL_END)))
/* [^\sLN]: punctuation and everything else */
#define IS_OTHER(k) (!((k) & (CL_L | CL_N | CL_WS | CL_END)))

/* The flags of the character at s[i] and its length in *len (CL_END, 0 past the end). */
static inline unsigned cls(const unsigned char *s, size_t n, size_t i, size_t *len) {
  unsigned c, cp;
  if (i >= n) { *len = 0; return CL_END; }
  c = s[i];
  if (c < 0x80) { *len = 1; return bpe_stage2[c]; }
  if (c < 0xE0) { cp = (c & 0x1Fu) << 6 | (s[i + 1] & 0x3Fu); *len = 2; }
  else if (c < 0xF0) { cp = (c & 0x0Fu) << 12 | (s[i + 1] & 0x3Fu) << 6 | (s[i + 2] & 0x3Fu); *len = 3; }
  else {
    cp = (c & 0x07u) << 18 | (s[i + 1] & 0x3Fu) << 12 | (s[i + 2] & 0x3Fu) << 6 | (s[i + 3] & 0x3Fu);
    *len = 4;
  }
  return bpe_stage2[(size_t)bpe_stage1[cp >> 8] << 8 | (cp & 0xFFu)];
}

/* The end of the run from i of characters with any flag of mask. */
static inline size_t run(const unsigned char *s, size_t n, size_t i, unsigned mask) {
  size_t len;
  while (i < n && (cls(s, n, i, &len) & mask)) i += len;
  return i;
}

/* The end of the run from i of "other" characters ([^\sLN]+). */
static inline size_t run_other(const unsigned char *s, size_t n, size_t i) {
  size_t len;
  while (i < n && IS_OTHER(cls(s, n, i, &len))) i += len;
  return i;
}

/* The contraction letter (?i:x) that s[i] is ('s', 't', ...), or 0. */
static char fold(const unsigned char *s, size_t n, size_t i, size_t *len) {
  unsigned c, cp;
  if (i >= n) return 0;
  c = s[i];
  if (c < 0x80) { cp = c; *len = 1; }
  else if (c < 0xE0) { cp = (c & 0x1Fu) << 6 | (s[i + 1] & 0x3Fu); *len = 2; }
  else return 0; /* every code point of bpe_folds is below U+0800 (tools/bpe-tables.c) */
  for (size_t k = 0; bpe_folds[k].letter; k++)
    if (bpe_folds[k].cp == cp) return bpe_folds[k].letter;
  return 0;
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d) at i: its length, or 0. */
static size_t contraction(const unsigned char *s, size_t n, size_t i) {
  size_t l1 = 0, l2 = 0;
  char a, b;
  if (i >= n || s[i] != '\'') return 0;
  a = fold(s, n, i + 1, &l1);
  switch (a) {
    case 's': case 't': case 'm': case 'd': return 1 + l1;
    case 'r': case 'v':
      b = fold(s, n, i + 1 + l1, &l2);
      return b == 'e' ? 1 + l1 + l2 : 0;
    case 'l':
      b = fold(s, n, i + 1 + l1, &l2);
      return b == 'l' ? 1 + l1 + l2 : 0;
    default: return 0;
  }
}

/* [\p{N}]{1,3} at i (the character at i is a number) */
static size_t digits(const unsigned char *s, size_t n, size_t i, size_t l) {
  size_t len;
  i += l;
  for (int k = 1; k < 3 && (cls(s, n, i, &len) & CL_N); k++) i += len;
  return i;
}

/* The whitespace alternatives at p (the character at p is White_Space):
 *   [\s]*[\r\n]+       up to the last \r or \n of the whitespace run, if any;
 *   [\s]+(?![^\s])     else the whole run at the end of the text, or all of
 *                      it but its last character (which then starts the next
 *                      piece, usually " word");
 *   [\s]+              else the one character. */
static size_t ws_tail(const unsigned char *s, size_t n, size_t p) {
  size_t i = p, last = p, nl = 0, len;
  unsigned k;
  while (i < n && ((k = cls(s, n, i, &len)) & CL_WS)) {
    if (k & CL_CRLF) nl = i + len;
    last = i;
    i += len;
  }
  if (nl) return nl;
  if (i == n) return i;
  if (last > p) return last;
  return i;
}

/* ` ?[^\sLN]+` then `tail` ([\r\n]* or, o200k, [\r\n/]*) at p, or 0. */
static size_t punct(const unsigned char *s, size_t n, size_t p, unsigned k, int o200k) {
  size_t e, len;
  if (s[p] == ' ' && IS_OTHER(cls(s, n, p + 1, &len))) e = run_other(s, n, p + 1);
  else if (IS_OTHER(k)) e = run_other(s, n, p);
  else return 0;
  if (!o200k) return run(s, n, e, CL_CRLF);
  while (e < n && (s[e] == '\r' || s[e] == '\n' || s[e] == '/')) e++;
  return e;
}

/* cl100k_base's pattern at p: the end of the piece starting at p, or p. */
static size_t cl100k_at(const unsigned char *s, size_t n, size_t p) {
  size_t l, l2, e;
  unsigned k = cls(s, n, p, &l);
  if (s[p] == '\'' && (e = contraction(s, n, p)) != 0) return p + e;      /* contractions */
  if (IS_PRE(k) && (cls(s, n, p + l, &l2) & CL_L)) return run(s, n, p + l, CL_L); /* [^\r\nLN]?\p{L}+ */
  if (k & CL_L) return run(s, n, p, CL_L);
  if (k & CL_N) return digits(s, n, p, l);                                /* \p{N}{1,3} */
  if ((e = punct(s, n, p, k, 0)) != 0) return e;                          /*  ?[^\sLN]+[\r\n]* */
  if (k & CL_WS) return ws_tail(s, n, p);
  return p;
}

/* o200k's [UP]*[LO]+ at x: the end, or 0. U* takes the whole run of UP
 * characters, then gives them back from the right until LO+ can match:
 * either the character after the run is LO (then LO+ runs on from there),
 * or the last LO character inside the run ends the match (what follows it
 * in the run is UP but not LO: the next piece, [UP]+[LO]*, takes it whole). */
static size_t o200k_lower(const unsigned char *s, size_t n, size_t x) {
  size_t i = x, lastlo = 0, len = 0;
  unsigned k = CL_END;
  while (i < n && ((k = cls(s, n, i, &len)) & CL_UP)) {
    if (k & CL_LO) lastlo = i + len;
    i += len;
  }
  if (i < n && (k & CL_LO)) return run(s, n, i, CL_LO);
  return lastlo;
}

/* o200k's [UP]+[LO]* at x: the end, or 0. */
static size_t o200k_upper(const unsigned char *s, size_t n, size_t x) {
  size_t i = run(s, n, x, CL_UP);
  if (i == x) return 0;
  return run(s, n, i, CL_LO);
}

/* o200k_base's pattern at p: the end of the piece starting at p, or p. */
static size_t o200k_at(const unsigned char *s, size_t n, size_t p) {
  size_t l, e;
  unsigned k = cls(s, n, p, &l);
  int pre = IS_PRE(k);
  /* [^\r\nLN]?[UP]*[LO]+(contraction)? then [^\r\nLN]?[UP]+[LO]*(contraction)?,
   * each first with the optional character taken, then without it */
  if ((pre && (e = o200k_lower(s, n, p + l)) != 0) || (e = o200k_lower(s, n, p)) != 0 ||
      (pre && (e = o200k_upper(s, n, p + l)) != 0) || (e = o200k_upper(s, n, p)) != 0)
    return e + contraction(s, n, e);
  if (k & CL_N) return digits(s, n, p, l);                                /* \p{N}{1,3} */
  if ((e = punct(s, n, p, k, 1)) != 0) return e;                          /*  ?[^\sLN]+[\r\n/]* */
  if (k & CL_WS) return ws_tail(s, n, p);
  return p;
}

/* The next piece at or after p (p < n): returns its end and sets *start;
 * returns n with *start = n when no piece is left (every remaining
 * character matches no alternative). */
size_t ga_bpe_scan_next(int o200k, const unsigned char *s, size_t n, size_t p, size_t *start) {
  while (p < n) {
    size_t e = o200k ? o200k_at(s, n, p) : cl100k_at(s, n, p), len;
    if (e > p) { *start = p; return e; }
    (void)cls(s, n, p, &len); /* no match here: one character on, as PCRE2 does */
    p += len;
  }
  *start = n;
  return n;
}

const char *ga_bpe_scan_unicode(void) { return GA_BPE_TABLES_UNICODE; }
size_t ga_bpe_scan_table_bytes(void) { return GA_BPE_TABLES_BYTES; }
