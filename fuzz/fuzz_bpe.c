/* fuzz/fuzz_bpe.c — ga_bpe.c's tokenizer (o200k_base and cl100k_base, rank
 * files from lua/genaudit/data/, loaded once) on arbitrary bytes. The first
 * byte picks the encoding and a repetition count; the rest (repeated, so
 * long single-piece runs get the heap merge) is the text. Properties:
 *   - encode and count never fail and agree on the number of tokens;
 *   - every id decodes (ga_bpe_token), and the ids' bytes joined are the
 *     input with every maximal ill-formed UTF-8 subpart replaced by U+FFFD
 *     (fuzz_util.h's ref_utf8, written independently of ga_bpe.c): for valid
 *     UTF-8, decode(encode(x)) == x;
 *   - no id is a special token (special-token text is ordinary text);
 *   - the two pre-tokenisers (the hand-written scanner, ga_bpe_scan.c, and
 *     the patterns run by PCRE2) split the text into the same pieces, and
 *     encode gives the same ids with either.
 * A failure aborts (libFuzzer keeps the input). */
#include <stdint.h>
#include "fuzz_util.h"
#include "../csrc/ga_private.h"

static ga_bpe *encs[2];

static char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  char *buf;
  long len;
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  len = ftell(f);
  fseek(f, 0, SEEK_SET);
  buf = malloc((size_t)len);
  if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) { free(buf); buf = NULL; }
  fclose(f);
  *n = (size_t)len;
  return buf;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  static const char *names[2] = {"o200k_base", "cl100k_base"};
  for (int i = 0; i < 2; i++) {
    char path[128], err[200];
    size_t n;
    char *text;
    snprintf(path, sizeof path, "lua/genaudit/data/tiktoken-%s.json", names[i]);
    text = slurp(path, &n);
    if (!text) { fprintf(stderr, "fuzz_bpe: cannot read %s (run from the repository root)\n", path); exit(1); }
    encs[i] = ga_bpe_load(names[i], text, n, err, sizeof err);
    free(text);
    if (!encs[i]) { fprintf(stderr, "fuzz_bpe: %s: %s\n", names[i], err); exit(1); }
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const ga_bpe *e;
  size_t reps, n, i, count = 0, nids = 0, off = 0;
  uint32_t *ids = NULL;
  char *text;
  ga_buf want, got;
  if (size < 1) return 0;
  e = encs[data[0] & 1];
  reps = (data[0] >> 1) % 8 == 7 ? 200 : 1 + (data[0] >> 1) % 8; /* sometimes a long run */
  data++, size--;
  n = size * reps;
  text = malloc(n + 1);
  FUZZ_CHECK(text != NULL, "oom");
  for (i = 0; i < reps; i++) memcpy(text + i * size, data, size);

  FUZZ_CHECK(ga_bpe_count(e, text, n, &count) == 0, "count failed");
  FUZZ_CHECK(ga_bpe_encode(e, text, n, &ids, &nids) == 0, "encode failed");
  FUZZ_CHECK(count == nids, "count %zu != %zu ids", count, nids);

  ga_buf_init(&want);
  while (off < n) {
    size_t sub, k = ref_utf8((const unsigned char *)text + off, n - off, &sub);
    if (k) { ga_buf_add(&want, text + off, k); off += k; }
    else { ga_buf_add(&want, "\xEF\xBF\xBD", 3); off += sub; }
  }
  ga_buf_init(&got);
  for (i = 0; i < nids; i++) {
    size_t len;
    const unsigned char *t = ga_bpe_token(e, ids[i], &len);
    FUZZ_CHECK(t != NULL, "id %u does not decode", ids[i]);
    FUZZ_CHECK(ids[i] < (e == encs[0] ? 199998u : 100256u), "special id %u", ids[i]);
    ga_buf_add(&got, (const char *)t, len);
  }
  FUZZ_CHECK(!want.oom && !got.oom, "oom");
  FUZZ_CHECK(got.len == want.len && (got.len == 0 || !memcmp(got.buf, want.buf, got.len)),
             "decode(encode(x)) differs from x repaired (%zu vs %zu bytes)", got.len, want.len);
  ga_buf_free(&want);
  ga_buf_free(&got);

  {
    size_t *pa = NULL, *pb = NULL, na = 0, nb = 0, nids2 = 0;
    uint32_t *ids2 = NULL;
    FUZZ_CHECK(ga_bpe_pieces(e, GA_PRETOK_SCANNER, text, n, &pa, &na) == 0, "scanner pieces failed");
    FUZZ_CHECK(ga_bpe_pieces(e, GA_PRETOK_PCRE2, text, n, &pb, &nb) == 0, "pcre2 pieces failed");
    for (i = 0; i < na && i < nb; i++)
      FUZZ_CHECK(pa[2 * i] == pb[2 * i] && pa[2 * i + 1] == pb[2 * i + 1],
                 "piece %zu: scanner [%zu, %zu) vs pcre2 [%zu, %zu)", i, pa[2 * i], pa[2 * i + 1], pb[2 * i],
                 pb[2 * i + 1]);
    FUZZ_CHECK(na == nb, "scanner %zu pieces vs pcre2 %zu", na, nb);
    FUZZ_CHECK(ga_bpe_encode_with(e, GA_PRETOK_PCRE2, text, n, &ids2, &nids2) == 0, "pcre2 encode failed");
    FUZZ_CHECK(nids2 == nids && (nids == 0 || !memcmp(ids, ids2, nids * sizeof *ids)), "ids differ by pre-tokeniser");
    free(pa);
    free(pb);
    free(ids2);
  }
  free(ids);
  free(text);
  return 0;
}
