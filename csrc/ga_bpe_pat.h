/* ga_bpe_pat.h — tiktoken's pre-tokenisation patterns as PCRE2 source, and
 * their character classes (shared by csrc/ga_bpe.c, which compiles the
 * patterns, and tools/bpe-tables.c, which derives the hand-written scanner's
 * tables, csrc/ga_bpe_tables.h, from these same classes run through PCRE2). */
#ifndef GA_BPE_PAT_H
#define GA_BPE_PAT_H
#include "ga_bpe_unicode.h"

/* Unicode White_Space, which is what Rust's regex means by \s. */
#define WS "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

/* Rust's regex (tiktoken) knows Unicode 16.0, PCRE2 10.42 Unicode 14.0: the
 * letters, digits and marks added since are spelled out (ga_bpe_unicode.h,
 * tools/bpe-unicode.py). Class contents, given the additions X*: */
#define C_L(XL) "\\p{L}" XL
#define C_N(XN) "\\p{N}" XN
#define C_UP(XU) "\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}" XU /* o200k's "upper" letters */
#define C_LO(XW) "\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}" XW         /* o200k's "lower" letters */
#define CONTRACTIONS "(?i:'s|'t|'re|'ve|'m|'ll|'d)"

/* tiktoken's patterns (npm 1.0.22, encoders/<name>.json "pat_str"), with
 * \s, \p{..} written as the classes above. */
#define PAT_CL100K(XL, XN)                                                                         \
  CONTRACTIONS "|[^\\r\\n" C_L(XL) C_N(XN) "]?[" C_L(XL) "]+|[" C_N(XN) "]{1,3}"                    \
  "| ?[^" WS C_L(XL) C_N(XN) "]+[\\r\\n]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+"
#define PAT_O200K(XL, XN, XU, XW)                                                                  \
  "[^\\r\\n" C_L(XL) C_N(XN) "]?[" C_UP(XU) "]*[" C_LO(XW) "]+" CONTRACTIONS "?"                     \
  "|[^\\r\\n" C_L(XL) C_N(XN) "]?[" C_UP(XU) "]+[" C_LO(XW) "]*" CONTRACTIONS "?"                    \
  "|[" C_N(XN) "]{1,3}| ?[^" WS C_L(XL) C_N(XN) "]+[\\r\\n/]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+"

#endif
