/* fuzz/fuzz_json.c — ga_json.c's encoders on arbitrary input. The first byte
 * picks the target:
 *   0: ga_json_string over the remaining bytes: the output is one valid JSON
 *      string that decodes back to exactly those bytes (NULs included);
 *   1: ga_json_double over 8 bytes taken as a double: NaN/inf refused; else a
 *      valid JSON number that reads back as the same double, and the very
 *      text of the reference (shortest of %.15g..%.17g, ".0" kept on
 *      integral values) — a differential check of the fast path;
 *   2: ga_json_int over 8 bytes: the same text as "%lld". */
#include <math.h>
#include <stdint.h>
#include "fuzz_util.h"
#include "../csrc/ga_private.h"

static void reference_double(double d, char *out, size_t outlen) {
  int prec;
  for (prec = 15; prec <= 17; prec++) {
    snprintf(out, outlen, "%.*g", prec, d);
    if (strtod(out, NULL) == d) break;
  }
  if (!strpbrk(out, ".eEn")) strcat(out, ".0");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ga_buf b;
  if (size < 1) return 0;
  ga_buf_init(&b);
  switch (data[0] % 3) {
    case 0: {
      const char *s = (const char *)data + 1;
      size_t n = size - 1;
      char *dec;
      long m;
      ga_json_string(&b, s, n);
      FUZZ_CHECK(!b.oom, "out of memory");
      FUZZ_CHECK(json_valid(b.buf, b.len), "not valid JSON: %.*s", (int)b.len, b.buf);
      dec = (char *)malloc(b.len + 1);
      m = json_string_decode(b.buf, b.len, dec);
      FUZZ_CHECK(m >= 0, "not one JSON string");
      FUZZ_CHECK((size_t)m == n && memcmp(dec, s, n) == 0, "round trip changed the bytes (%ld vs %zu)", m, n);
      free(dec);
      break;
    }
    case 1: {
      double d;
      char ref[64];
      if (size < 9) break;
      memcpy(&d, data + 1, 8);
      if (isnan(d) || isinf(d)) {
        FUZZ_CHECK(ga_json_double(&b, d) == -1, "NaN/inf accepted");
        break;
      }
      FUZZ_CHECK(ga_json_double(&b, d) == 0, "finite double refused: %.17g", d);
      ga_buf_addc(&b, '\0');
      FUZZ_CHECK(json_number_only(b.buf, b.len - 1), "not a JSON number: %s", b.buf);
      FUZZ_CHECK(strtod(b.buf, NULL) == d, "%s does not read back as %.17g", b.buf, d);
      reference_double(d, ref, sizeof ref);
      FUZZ_CHECK(strcmp(ref, b.buf) == 0, "%.17g: got %s, reference %s", d, b.buf, ref);
      break;
    }
    default: {
      long long v;
      char ref[32];
      if (size < 9) break;
      memcpy(&v, data + 1, 8);
      ga_json_int(&b, v);
      snprintf(ref, sizeof ref, "%lld", v);
      FUZZ_CHECK(b.len == strlen(ref) && memcmp(b.buf, ref, b.len) == 0, "%lld: got %.*s", v, (int)b.len, b.buf);
      break;
    }
  }
  ga_buf_free(&b);
  return 0;
}
