/* fuzz/fuzz_decimal.c — ga_decimal_to_pico (ga_price.c), the parser of price
 * texts from LiteLLM's JSON and of provider-billed costs, on arbitrary bytes.
 * Checks: it never reads past n; it accepts exactly the grammar
 * [+]digits[.digits][(e|E)[+-]digits] with at least one mantissa digit; an
 * accepted value agrees with strtod(text) * 1e12 to within rounding, and
 * GA_DEC_OVERFLOW is only returned past INT64_MAX picodollars. */
#include <math.h>
#include <stdint.h>
#include "fuzz_util.h"
#include "../csrc/ga_private.h"

/* The grammar, independently of the parser. */
static int well_formed(const char *s, size_t n) {
  size_t i = 0, mant = 0;
  if (i < n && s[i] == '+') i++;
  while (i < n && s[i] >= '0' && s[i] <= '9') i++, mant++;
  if (i < n && s[i] == '.') {
    i++;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++, mant++;
  }
  if (mant == 0) return 0;
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    size_t e = 0;
    i++;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++, e++;
    if (e == 0) return 0;
  }
  return i == n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *s = (const char *)data;
  int64_t pico = -1;
  int rc = ga_decimal_to_pico(s, size, &pico);
  int wf = well_formed(s, size);
  FUZZ_CHECK(rc == 0 || rc == GA_DEC_MALFORMED || rc == GA_DEC_OVERFLOW, "rc %d", rc);
  FUZZ_CHECK((rc != GA_DEC_MALFORMED) == wf, "rc %d but well_formed %d for '%.*s'", rc, wf, (int)size, s);
  if (wf) {
    char *t = (char *)malloc(size + 1);
    double usd, want;
    memcpy(t, s, size);
    t[size] = '\0';
    usd = strtod(t, NULL);
    free(t);
    want = usd * 1e12;
    if (rc == 0) {
      FUZZ_CHECK(pico >= 0, "negative result %lld", (long long)pico);
      /* rounding half up at 1e-12, and strtod's own rounding: within 1 pico + 1e-12 relative */
      FUZZ_CHECK(fabs((double)pico - want) <= 1.0 + fabs(want) * 1e-12, "'%.*s' -> %lld, strtod says %.17g",
                 (int)size, s, (long long)pico, want);
    } else {
      FUZZ_CHECK(want >= 9.2233720368547e18, "overflow reported for '%.*s' (%.17g)", (int)size, s, want);
    }
  }
  return 0;
}
