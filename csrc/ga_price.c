/* ga_price.c — the plain-C price arithmetic of token accounting (no
 * lua_State, fuzzed by fuzz/fuzz_decimal.c): LiteLLM's price field names,
 * decimal text or a double -> int64 picodollars (1e-12 USD, never scaled as
 * doubles), the exact cost of one call (128-bit intermediates), and the one
 * conversion of an integer picodollar text to a USD double. The price_table
 * and meter userdata that use it are ga_meter.c's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ga_private.h"

typedef unsigned __int128 u128;

/* LiteLLM's field names, indexed by GA_PRICE_*. */
const char *const ga_price_names[GA_NPRICES] = {
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "output_cost_per_reasoning_token",
    "input_cost_per_token_above_200k_tokens",
    "output_cost_per_token_above_200k_tokens",
    "cache_read_input_token_cost_above_200k_tokens",
    "cache_creation_input_token_cost_above_200k_tokens",
};

/* ---- decimal text -> picodollars, cost of one call ---- */

int ga_decimal_to_pico(const char *s, size_t n, int64_t *out) {
  size_t i = 0, mstart, mend, ndig = 0, nfrac = 0;
  long long exp10 = 0, keep, shift, pos = 0;
  int64_t acc = 0;
  int seen_dot = 0, round_up = 0;
  if (i < n && s[i] == '+') i++;
  mstart = i;
  for (; i < n; i++) {
    if (s[i] >= '0' && s[i] <= '9') {
      ndig++;
      if (seen_dot) nfrac++;
    } else if (s[i] == '.' && !seen_dot) {
      seen_dot = 1;
    } else {
      break;
    }
  }
  mend = i;
  if (ndig == 0) return GA_DEC_MALFORMED;
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    int neg = 0, edig = 0;
    i++;
    if (i < n && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++, edig++)
      if (exp10 < 100000) exp10 = exp10 * 10 + (s[i] - '0'); /* clamped: beyond is 0 or overflow anyway */
    if (edig == 0) return GA_DEC_MALFORMED;
    if (neg) exp10 = -exp10;
  }
  if (i != n) return GA_DEC_MALFORMED;
  /* value = mantissa digits * 10^(exp10 - nfrac); in picodollars the first
   * `keep` digits form the integer part and the next one decides rounding */
  shift = exp10 - (long long)nfrac + 12;
  keep = (long long)ndig + shift;
  if (keep < 0) { /* below half a picodollar: even the rounding digit is a 0 */
    *out = 0;
    return 0;
  }
  for (i = mstart; i < mend; i++) {
    int d;
    if (s[i] == '.') continue;
    d = s[i] - '0';
    if (pos < keep) {
      if (acc > (INT64_MAX - d) / 10) return GA_DEC_OVERFLOW;
      acc = acc * 10 + d;
    } else {
      round_up = d >= 5; /* half up: only the first dropped digit matters */
      break;
    }
    pos++;
  }
  for (; pos < keep && acc != 0; pos++) {
    if (acc > INT64_MAX / 10) return GA_DEC_OVERFLOW;
    acc *= 10;
  }
  if (round_up) {
    if (acc == INT64_MAX) return GA_DEC_OVERFLOW;
    acc++;
  }
  *out = acc;
  return 0;
}

int ga_double_to_pico(double d, int64_t *out) {
  char tmp[40];
  int prec;
  char *p;
  if (!(d >= 0.0) || isinf(d)) return GA_DEC_MALFORMED; /* NaN, negative, inf */
  if (d == 0.0) { /* also -0.0, which would print a sign */
    *out = 0;
    return 0;
  }
  /* the shortest text that reads back as d: the decimal the price was written as */
  for (prec = 15; prec <= 17; prec++) {
    snprintf(tmp, sizeof tmp, "%.*g", prec, d);
    if (strtod(tmp, NULL) == d) break;
  }
  for (p = tmp; *p; p++) /* a locale's decimal comma */
    if (!((*p >= '0' && *p <= '9') || *p == 'e' || *p == '+' || *p == '-')) *p = '.';
  return ga_decimal_to_pico(tmp, strlen(tmp), out);
}

int ga_call_cost(const ga_prices *p, const ga_usage *u, int64_t *out) {
  int64_t tokens[5];
  int idx[5], in, outp, i;
  u128 acc = 0;
  if (u->prompt < 0 || u->completion < 0 || u->cached < 0 || u->cache_write < 0 || u->reasoning < 0)
    return GA_COST_NEGATIVE;
  if (u->cached > u->prompt || u->cache_write > u->prompt - u->cached) return GA_COST_BAD_CACHED;
  if (u->reasoning > u->completion) return GA_COST_BAD_REASONING;
  if (!p) return GA_COST_UNPRICED;
#define HAS(k) ((p->has >> (k)) & 1u)
  in = u->prompt > GA_TIER_TOKENS && HAS(GA_PRICE_INPUT_ABOVE_200K) ? GA_PRICE_INPUT_ABOVE_200K
       : HAS(GA_PRICE_INPUT)                                      ? GA_PRICE_INPUT
                                                                  : -1;
  outp = u->prompt > GA_TIER_TOKENS && HAS(GA_PRICE_OUTPUT_ABOVE_200K) ? GA_PRICE_OUTPUT_ABOVE_200K
         : HAS(GA_PRICE_OUTPUT)                                       ? GA_PRICE_OUTPUT
                                                                      : -1;
  tokens[0] = u->prompt - u->cached - u->cache_write;
  idx[0] = in;
  tokens[1] = u->cached;
  idx[1] = u->prompt > GA_TIER_TOKENS && HAS(GA_PRICE_CACHE_READ_ABOVE_200K) ? GA_PRICE_CACHE_READ_ABOVE_200K
           : HAS(GA_PRICE_CACHE_READ)                                         ? GA_PRICE_CACHE_READ
                                                                              : in;
  tokens[2] = u->cache_write;
  idx[2] = u->prompt > GA_TIER_TOKENS && HAS(GA_PRICE_CACHE_CREATION_ABOVE_200K) ? GA_PRICE_CACHE_CREATION_ABOVE_200K
           : HAS(GA_PRICE_CACHE_CREATION)                                             ? GA_PRICE_CACHE_CREATION
                                                                                      : in;
  tokens[3] = u->completion - u->reasoning;
  idx[3] = outp;
  tokens[4] = u->reasoning;
  idx[4] = HAS(GA_PRICE_REASONING) ? GA_PRICE_REASONING : outp;
#undef HAS
  for (i = 0; i < 5; i++) {
    if (tokens[i] == 0) continue;
    if (idx[i] < 0) return GA_COST_UNPRICED; /* never 0 for a price we do not know */
    /* both factors < 2^63, so the product fits; stop as soon as the sum leaves int64 */
    acc += (u128)(uint64_t)tokens[i] * (u128)(uint64_t)p->pico[idx[i]];
    if (acc > (u128)INT64_MAX) return GA_COST_OVERFLOW;
  }
  *out = (int64_t)acc;
  return GA_COST_OK;
}

double ga_usd_from_pico_text(const char *digits) {
  char buf[96];
  /* "<integer>e-12" through strtod: one correctly rounded step, locale-free */
  snprintf(buf, sizeof buf, "%se-12", digits);
  return strtod(buf, NULL);
}
