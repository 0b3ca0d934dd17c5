/* fuzz/fuzz_retry_after.c — the response-header scan (ga_http_parse.c) and the Retry-After parser
 * (ga_retry.c), through ga_http_retry_after, over arbitrary header bytes, which come
 * straight from the provider. The input buffer is exactly `size` bytes, so
 * any read past it (the bytes are not NUL-terminated) is an ASan report. */
#include <stdint.h>
#include "fuzz_util.h"
#include "../csrc/ga_private.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  long long ms = ga_http_retry_after((const char *)data, size);
  FUZZ_CHECK(ms >= -1, "Retry-After %lld", ms);
  return 0;
}
