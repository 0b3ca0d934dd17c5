/* fuzz/fuzz_ulid.c — the ULID time decoder (ga_ulid_time, behind
 * core.ulid_time) on arbitrary bytes, and the encoder round trip: an id made
 * by ga_ulid_next for a time taken from the input decodes back to it. */
#include <stdint.h>
#include "fuzz_util.h"
#include "../csrc/ga_private.h"

static const char B32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int64_t ms = -1;
  int rc = ga_ulid_time((const char *)data, size, &ms);
  if (size != 26) FUZZ_CHECK(rc == -1, "length %zu accepted", size);
  if (rc == 0) {
    size_t i;
    FUZZ_CHECK(ms >= 0 && ms < (1LL << 50), "time %lld out of range", (long long)ms);
    for (i = 0; i < 10; i++) FUZZ_CHECK(data[i] && strchr(B32, data[i]), "byte %u accepted", data[i]);
  }
  if (size >= 6) { /* encode a 48-bit time from the input, then decode it */
    ga_ulid_state st;
    char id[26];
    int64_t t = 0, back = -1;
    size_t i;
    for (i = 0; i < 6; i++) t = (t << 8) | data[i];
    memset(&st, 0, sizeof st);
    if (t == 0) t = 1; /* last_ms 0 means "no id yet" */
    FUZZ_CHECK(ga_ulid_next(&st, t, id) == 0, "cannot encode %lld", (long long)t);
    FUZZ_CHECK(id[0] <= '7', "first char %c past the largest ULID", id[0]);
    FUZZ_CHECK(ga_ulid_time(id, 26, &back) == 0 && back == t, "%lld decoded as %lld", (long long)t, (long long)back);
  }
  return 0;
}
