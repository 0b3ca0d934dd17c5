/* fuzz/fuzz_sse.c — ga_sse.c's event-stream parser on arbitrary bytes. The
 * first byte picks the bound (max_event 1 MiB, 7, 40 or 300 bytes) and seeds
 * the random splits; the rest is the stream. Properties checked:
 *   - split invariance: the stream fed in one chunk, one byte at a time, in
 *     2-byte chunks and in random chunks (empty ones included) gives the very
 *     same events (type, data, id, byte for byte), the same feed error and the
 *     same finish() result;
 *   - a differential check against a reference written here from the WHATWG
 *     algorithm over the whole stream at once (split into lines first): with
 *     the 1 MiB bound (never reached: libFuzzer inputs are shorter) the events
 *     and the pending-at-end verdict are the reference's; with a small bound
 *     the events before an over-long error are a prefix of the reference's,
 *     and without the error they are all of them;
 *   - the bound: after every feed the buffered line, data and type stay within
 *     max_event bytes, the last event id too.
 * A failure aborts (libFuzzer keeps the input). */
#include <stdint.h>
#include "fuzz_util.h"
#include "../csrc/ga_private.h"

static int same(const ga_buf *a, const char *b, size_t n) { return a->len == n && (n == 0 || !memcmp(a->buf, b, n)); }

/* Events serialized as (type_len, type, data_len, data, id_len, id). */
static void put_field(ga_buf *b, const char *s, size_t n) {
  ga_buf_add(b, (const char *)&n, sizeof n);
  if (n) ga_buf_add(b, s, n);
}

static int record(void *ud, const ga_sse_event *ev) {
  ga_buf *b = (ga_buf *)ud;
  put_field(b, ev->type, ev->type_len);
  put_field(b, ev->data, ev->data_len);
  put_field(b, ev->id, ev->id_len);
  return 0;
}

static void check_bound(const ga_sse *p) {
  FUZZ_CHECK(p->line.len + p->data.len + p->type.len <= p->max_event, "buffered %zu + %zu + %zu bytes past %zu",
             p->line.len, p->data.len, p->type.len, p->max_event);
  FUZZ_CHECK(p->id.len <= p->max_event, "id of %zu bytes past %zu", p->id.len, p->max_event);
}

typedef struct {
  int feed_rc, finish_rc;
  ga_buf ev;
} outcome;

/* Feeds s[0..n) in chunks: mode 0 one chunk, 1 bytes, 2 pairs, 3 random
 * sizes 0..16 from an LCG seeded by `seed`. */
static void run(const char *s, size_t n, size_t max, int mode, unsigned seed, outcome *o) {
  ga_sse p;
  size_t i = 0;
  uint32_t r = seed * 2654435761u + 1;
  ga_sse_init(&p, max);
  ga_buf_init(&o->ev);
  o->feed_rc = GA_SSE_OK;
  while (i < n || (mode == 0 && i == 0 && n == 0)) {
    size_t k = n - i;
    if (mode == 1) k = 1;
    else if (mode == 2) k = k < 2 ? k : 2;
    else if (mode == 3) {
      r = r * 1103515245u + 12345u;
      k = (r >> 16) % 17;
      if (k > n - i) k = n - i;
    }
    o->feed_rc = ga_sse_feed(&p, s + i, k, record, &o->ev);
    FUZZ_CHECK(!o->ev.oom, "out of memory");
    if (o->feed_rc != GA_SSE_OK) break;
    check_bound(&p);
    i += k;
    if (n == 0) break;
  }
  o->finish_rc = ga_sse_finish(&p);
  FUZZ_CHECK(o->finish_rc == (o->feed_rc ? o->feed_rc : o->finish_rc), "finish forgot the feed error");
  { /* reusable after finish: a second stream parses from scratch, the last event id kept */
    ga_buf again;
    size_t off = 0, len;
    ga_buf_init(&again);
    FUZZ_CHECK(ga_sse_feed(&p, "data: x\n\n", 9, record, &again) == GA_SSE_OK, "parser not reset by finish");
    FUZZ_CHECK(again.len > 2 * sizeof len, "no event after the reset");
    memcpy(&len, again.buf, sizeof len);
    off = sizeof len + len;
    memcpy(&len, again.buf + off, sizeof len);
    FUZZ_CHECK(len == 1 && again.buf[off + sizeof len] == 'x', "wrong event after the reset");
    ga_buf_free(&again);
  }
  ga_sse_free(&p);
}

/* ---- the reference: WHATWG's steps over the whole stream at once ---- */
static void ref_parse(const char *s, size_t n, ga_buf *out, int *pending) {
  ga_buf data, type, id;
  size_t pos = 0;
  int open = 0;
  ga_buf_init(&data);
  ga_buf_init(&type);
  ga_buf_init(&id);
  *pending = 0;
  if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) pos = 3;
  while (pos < n) {
    size_t e = pos, next;
    const char *line = s + pos, *colon, *v;
    size_t len, nl, vl;
    while (e < n && s[e] != '\r' && s[e] != '\n') e++;
    if (e == n) { /* no terminator: never processed */
      if (s[pos] != ':') *pending = 1;
      break;
    }
    next = e + 1;
    if (s[e] == '\r' && next < n && s[next] == '\n') next++;
    len = e - pos;
    pos = next;
    if (len == 0) {
      open = 0;
      if (data.len == 0) {
        type.len = 0;
        continue;
      }
      if (type.len) put_field(out, type.buf, type.len);
      else put_field(out, "message", 7);
      put_field(out, data.buf, data.len - 1);
      put_field(out, id.len ? id.buf : "", id.len);
      data.len = type.len = 0;
      continue;
    }
    if (line[0] == ':') continue;
    open = 1;
    colon = (const char *)memchr(line, ':', len);
    nl = colon ? (size_t)(colon - line) : len;
    v = colon ? colon + 1 : line + len;
    vl = colon ? len - nl - 1 : 0;
    if (vl && v[0] == ' ') v++, vl--;
    if (nl == 4 && !memcmp(line, "data", 4)) {
      if (vl) ga_buf_add(&data, v, vl);
      ga_buf_addc(&data, '\n');
    } else if (nl == 5 && !memcmp(line, "event", 5)) {
      type.len = 0;
      if (vl) ga_buf_add(&type, v, vl);
    } else if (nl == 2 && !memcmp(line, "id", 2) && !memchr(v, 0, vl)) {
      id.len = 0;
      if (vl) ga_buf_add(&id, v, vl);
    }
  }
  if (open) *pending = 1;
  FUZZ_CHECK(!data.oom && !type.oom && !id.oom && !out->oom, "out of memory");
  ga_buf_free(&data);
  ga_buf_free(&type);
  ga_buf_free(&id);
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
  static const size_t bounds[4] = {0, 7, 40, 300};
  const char *s = (const char *)in + 1;
  size_t n, max;
  outcome o[4];
  ga_buf ref;
  int mode, pending;
  if (size < 1) return 0;
  n = size - 1;
  max = bounds[in[0] & 3] ? bounds[in[0] & 3] : GA_SSE_DEFAULT_MAX;
  for (mode = 0; mode < 4; mode++) run(s, n, max, mode, in[0] >> 2, &o[mode]);
  for (mode = 1; mode < 4; mode++) {
    FUZZ_CHECK(o[mode].feed_rc == o[0].feed_rc, "mode %d: feed %d, one chunk %d", mode, o[mode].feed_rc,
               o[0].feed_rc);
    FUZZ_CHECK(o[mode].finish_rc == o[0].finish_rc, "mode %d: finish %d, one chunk %d", mode, o[mode].finish_rc,
               o[0].finish_rc);
    FUZZ_CHECK(same(&o[mode].ev, o[0].ev.buf, o[0].ev.len),
               "mode %d: other events than in one chunk", mode);
  }
  ga_buf_init(&ref);
  ref_parse(s, n, &ref, &pending);
  if (o[0].feed_rc == GA_SSE_OK) {
    FUZZ_CHECK(same(&ref, o[0].ev.buf, o[0].ev.len),
               "events differ from the reference");
    FUZZ_CHECK(o[0].finish_rc == (pending ? GA_SSE_PARTIAL : GA_SSE_OK), "finish %d, reference pending %d",
               o[0].finish_rc, pending);
  } else {
    FUZZ_CHECK(o[0].feed_rc == GA_SSE_TOO_LONG, "feed error %d", o[0].feed_rc);
    FUZZ_CHECK(max != GA_SSE_DEFAULT_MAX, "over-long under the default bound");
    FUZZ_CHECK(o[0].ev.len <= ref.len && (o[0].ev.len == 0 || !memcmp(o[0].ev.buf, ref.buf, o[0].ev.len)),
               "events before the error not a prefix of the reference's");
  }
  for (mode = 0; mode < 4; mode++) ga_buf_free(&o[mode].ev);
  ga_buf_free(&ref);
  return 0;
}
