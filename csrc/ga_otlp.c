/* ga_otlp.c — the OTLP/HTTP JSON span exporter behind core.otlp_exporter:
 * push() copies one generation's encoded spans into a bounded queue and
 * returns at once; one thread per exporter drains the queue, posting batches
 * (prefix .. item,item,... .. suffix: one ExportTraceServiceRequest) over its
 * own libcurl handle, with retries, exponential backoff and jitter (the policy
 * of ga_retry.c: what is retried, the delay). A full queue drops the new item
 * and counts its spans; a batch that fails for good is counted failed. The
 * host never waits for the collector: push never blocks on the network, and
 * close() waits at most its flush bound (plus one request's timeout).
 * Messages name the collector's host:port only, never the URL's path or
 * query, nor a header value (auth tokens live there).
 * Also here: core.random_hex (trace/span ids from OpenSSL's CSPRNG) and
 * core.unix_nanos (the wall clock as a decimal string: epoch nanoseconds do
 * not fit a LuaJIT number). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include "ga_private.h"

#define OTLP_MT "genaudit.otlp_exporter"
#define OTLP_MAX_MS GA_RETRY_MAX_MS
#define OTLP_MAX_RETRIES 20
#define OTLP_MAX_ITEM (64u * 1024u * 1024u) /* one generation's spans, encoded */
#define OTLP_MAX_RESPONSE (1024 * 1024)     /* a collector's answer is read and dropped */

typedef struct span_item {
  struct span_item *next;
  long long spans; /* spans in this item (the counters count spans) */
  size_t n;
  char data[];
} span_item;

typedef struct {
  int open; /* 0: closed (or never opened): nothing below is live */
  pthread_mutex_t mu;
  pthread_cond_t wake; /* items queued, or stopping */
  pthread_cond_t idle; /* nothing queued and no batch in flight */
  pthread_cond_t stop; /* stopping: cuts a backoff sleep short */
  pthread_t thread;
  span_item *head, *tail;
  size_t pending;           /* items queued */
  long long pending_spans;  /* their spans */
  int in_flight;            /* the thread is sending a batch */
  int stopping;
  uint64_t stop_deadline;   /* monotonic ns: after it nothing more is sent */
  long long exported, dropped, failed, retries, batches; /* spans; retries and batches: requests */
  char last_error[300];
  /* set before the thread starts, read-only after */
  size_t capacity; /* most items queued */
  int batch;       /* most items per request */
  char *url, *prefix, *suffix;
  size_t prefix_n, suffix_n;
  struct curl_slist *headers;
  char hostport[264];
  long timeout_ms, connect_timeout_ms;
  int max_retries;
  long long backoff_ms, max_backoff_ms, shutdown_ms;
  uint64_t rng; /* the thread's jitter state (xorshift64), never 0 */
} otlp_exporter;

static void abs_deadline(struct timespec *ts, uint64_t ns_from_now) {
  clock_gettime(CLOCK_REALTIME, ts);
  ts->tv_sec += (time_t)(ns_from_now / 1000000000u);
  ts->tv_nsec += (long)(ns_from_now % 1000000000u);
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

static size_t discard_body(char *p, size_t size, size_t n, void *ud) {
  size_t *seen = (size_t *)ud;
  (void)p;
  *seen += size * n;
  return *seen > OTLP_MAX_RESPONSE ? 0 : size * n;
}

/* The failure kind (GA_XF_*) of a curl code: decides the retry (ga_retry_should). */
static int xf_kind(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_CONNECT: return GA_XF_REFUSED;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return GA_XF_RESOLVE;
    case CURLE_OPERATION_TIMEDOUT: return GA_XF_TIMEOUT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE: return GA_XF_TLS;
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR: return GA_XF_CLOSED;
    case CURLE_WRITE_ERROR: return GA_XF_TOO_LARGE;
    default: return GA_XF_PROTOCOL;
  }
}

static void set_error(otlp_exporter *x, const char *msg) {
  pthread_mutex_lock(&x->mu);
  snprintf(x->last_error, sizeof x->last_error, "%s", msg);
  pthread_mutex_unlock(&x->mu);
}

static int stopping_now(otlp_exporter *x, uint64_t *left_ns) {
  int s;
  uint64_t now = ga_monotonic_ns();
  pthread_mutex_lock(&x->mu);
  s = x->stopping;
  *left_ns = s ? (x->stop_deadline > now ? x->stop_deadline - now : 0) : UINT64_MAX;
  pthread_mutex_unlock(&x->mu);
  return s;
}

/* Posts one body, retrying what ga_retry_should retries, backing off with
 * jitter between tries. Once the exporter is stopping, no try starts after
 * its deadline and none runs past it. Returns 0 when the collector took it
 * (2xx), -1 when given up (last_error says why). */
static int post_batch(otlp_exporter *x, CURL *curl, const char *body, size_t n) {
  int attempt;
  for (attempt = 1;; attempt++) {
    char msg[sizeof x->last_error];
    long status = 0, timeout = x->timeout_ms;
    size_t seen = 0;
    uint64_t left;
    CURLcode rc;
    int kind = -1, again;
    if (stopping_now(x, &left)) {
      if (left < 1000000u) {
        set_error(x, "exporter closed before the batch could be sent");
        return -1;
      }
      if ((uint64_t)timeout > left / 1000000u) timeout = (long)(left / 1000000u);
    }
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)n);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                     x->connect_timeout_ms < timeout ? x->connect_timeout_ms : timeout);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, (void *)&seen);
    rc = curl_easy_perform(curl);
    if (rc == CURLE_OK) {
      curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
      if (status >= 200 && status < 300) return 0;
      snprintf(msg, sizeof msg, "HTTP: collector at %s answered %ld", x->hostport, status);
    } else {
      kind = xf_kind(rc);
      snprintf(msg, sizeof msg, "%s: sending spans to %s failed: %s", ga_xfails[kind].code, x->hostport,
               curl_easy_strerror(rc));
    }
    set_error(x, msg);
    again = status > 0 ? ga_retry_status((int)status) : ga_retry_should(0, kind);
    /* closing: a batch gets no further try once one failed */
    if (!again || attempt > x->max_retries || stopping_now(x, &left)) return -1;
    {
      long long d = ga_retry_delay_ms(attempt, x->backoff_ms, x->max_backoff_ms, -1, ga_jitter_next(&x->rng));
      struct timespec ts;
      pthread_mutex_lock(&x->mu);
      x->retries++;
      abs_deadline(&ts, (uint64_t)d * 1000000u);
      /* close() cuts the wait short; the next try is then the last */
      while (!x->stopping && pthread_cond_timedwait(&x->stop, &x->mu, &ts) == 0) {
      }
      pthread_mutex_unlock(&x->mu);
    }
  }
}

static void *exporter_main(void *arg) {
  otlp_exporter *x = (otlp_exporter *)arg;
  CURL *curl = curl_easy_init();
  struct curl_slist *hdrs = x->headers;
  ga_buf body;
  ga_buf_init(&body);
  if (curl) {
    curl_easy_setopt(curl, CURLOPT_URL, x->url);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard_body);
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "genaudit/0.1.0");
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  } else {
    set_error(x, "HTTP: cannot create a libcurl handle");
  }
  pthread_mutex_lock(&x->mu);
  for (;;) {
    span_item *first, *it, *last = NULL;
    long long spans = 0;
    int k = 0, ok;
    while (!x->head && !x->stopping) pthread_cond_wait(&x->wake, &x->mu);
    if (!x->head) break; /* stopping, and drained */
    if (!curl || (x->stopping && ga_monotonic_ns() >= x->stop_deadline)) {
      /* no handle, or no time left: what is queued is dropped, and counted */
      while (x->head) {
        it = x->head;
        x->head = it->next;
        x->dropped += it->spans;
        free(it);
      }
      x->tail = NULL;
      x->pending = 0;
      x->pending_spans = 0;
      if (!curl) {
        pthread_cond_broadcast(&x->idle);
        while (!x->head && !x->stopping) pthread_cond_wait(&x->wake, &x->mu);
        if (x->head) continue;
      }
      break;
    }
    first = x->head;
    for (it = first; it && k < x->batch; it = it->next) {
      k++;
      spans += it->spans;
      last = it;
    }
    x->head = last->next;
    if (!x->head) x->tail = NULL;
    last->next = NULL;
    x->pending -= (size_t)k;
    x->pending_spans -= spans;
    x->in_flight = 1;
    pthread_mutex_unlock(&x->mu);

    body.len = 0;
    ga_buf_add(&body, x->prefix, x->prefix_n);
    for (it = first; it; it = it->next) {
      if (it != first) ga_buf_addc(&body, ',');
      ga_buf_add(&body, it->data, it->n);
    }
    ga_buf_add(&body, x->suffix, x->suffix_n);
    if (body.oom) {
      set_error(x, "HTTP: out of memory building a batch");
      ok = -1;
    } else {
      ok = post_batch(x, curl, body.buf, body.len);
    }
    while (first) {
      it = first->next;
      free(first);
      first = it;
    }
    if (body.cap > 4u * 1024u * 1024u) { /* one huge batch does not pin its buffer for good */
      ga_buf_free(&body);
      ga_buf_init(&body);
    }
    pthread_mutex_lock(&x->mu);
    x->in_flight = 0;
    x->batches++;
    if (ok == 0) x->exported += spans;
    else x->failed += spans;
    if (!x->head) pthread_cond_broadcast(&x->idle);
  }
  x->in_flight = 0;
  pthread_cond_broadcast(&x->idle);
  pthread_mutex_unlock(&x->mu);
  ga_buf_free(&body);
  if (curl) curl_easy_cleanup(curl);
  return NULL;
}

/* Stops the thread after a flush of at most flush_ms (what is still queued
 * then is dropped and counted) and frees everything; idempotent. */
static void exporter_close(otlp_exporter *x, long long flush_ms) {
  if (!x->open) return;
  pthread_mutex_lock(&x->mu);
  x->stopping = 1;
  x->stop_deadline = ga_monotonic_ns() + (uint64_t)flush_ms * 1000000u;
  pthread_cond_broadcast(&x->wake);
  pthread_cond_broadcast(&x->stop);
  pthread_mutex_unlock(&x->mu);
  pthread_join(x->thread, NULL);
  while (x->head) { /* the thread counted them; this is for safety only */
    span_item *it = x->head;
    x->head = it->next;
    x->dropped += it->spans;
    free(it);
  }
  x->tail = NULL;
  x->pending = 0;
  x->pending_spans = 0;
  pthread_mutex_destroy(&x->mu);
  pthread_cond_destroy(&x->wake);
  pthread_cond_destroy(&x->idle);
  pthread_cond_destroy(&x->stop);
  curl_slist_free_all(x->headers);
  x->headers = NULL;
  free(x->url);
  free(x->prefix);
  free(x->suffix);
  x->url = x->prefix = x->suffix = NULL;
  x->open = 0;
}

/* ---- Lua bindings ---- */

static otlp_exporter *check_x(lua_State *L) { return (otlp_exporter *)luaL_checkudata(L, 1, OTLP_MT); }

static otlp_exporter *check_open(lua_State *L) {
  otlp_exporter *x = check_x(L);
  if (!x->open) luaL_error(L, "attempt to use a closed otlp_exporter");
  return x;
}

static long long opt_int(lua_State *L, const char *name, long long dflt, long long lo, long long hi) {
  long long v = dflt;
  lua_getfield(L, 1, name);
  if (!lua_isnil(L, -1) && (!ga_tointeger(L, -1, &v) || v < lo || v > hi))
    luaL_argerror(L, 1, lua_pushfstring(L, "%s must be an integer in %d..%d", name, (int)lo, (int)hi));
  lua_pop(L, 1);
  return v;
}

/* A copy of opts[name] (a string without NUL bytes), or of dflt; raises on another type. */
static char *opt_dup(lua_State *L, const char *name, const char *dflt, size_t *n) {
  size_t len;
  const char *s;
  char *out;
  lua_getfield(L, 1, name);
  if (lua_isnil(L, -1)) {
    s = dflt;
    len = s ? strlen(s) : 0;
  } else {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, 1, lua_pushfstring(L, "%s must be a string", name));
    s = lua_tolstring(L, -1, &len);
    if (memchr(s, '\0', len)) luaL_argerror(L, 1, lua_pushfstring(L, "%s must not contain NUL", name));
  }
  if (!s) {
    lua_pop(L, 1);
    return NULL;
  }
  out = (char *)malloc(len + 1);
  if (out) {
    memcpy(out, s, len);
    out[len] = '\0';
  }
  lua_pop(L, 1);
  if (n) *n = len;
  return out;
}

/* Raises unless opts.headers maps header names to values without CR, LF or
 * NUL (messages name the header, never its value). */
static void check_headers(lua_State *L) {
  lua_getfield(L, 1, "headers");
  if (!lua_isnil(L, -1)) {
    if (!lua_istable(L, -1)) luaL_argerror(L, 1, "headers must be a table");
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      size_t nl, vl;
      const char *name, *val;
      if (lua_type(L, -2) != LUA_TSTRING) luaL_argerror(L, 1, "headers must map names (strings) to string values");
      name = lua_tolstring(L, -2, &nl);
      if (!ga_http_valid_token(name, nl)) luaL_argerror(L, 1, lua_pushfstring(L, "invalid header name '%s'", name));
      if (lua_type(L, -1) != LUA_TSTRING)
        luaL_argerror(L, 1, lua_pushfstring(L, "header '%s' must have a string value", name));
      val = lua_tolstring(L, -1, &vl);
      if (memchr(val, '\r', vl) || memchr(val, '\n', vl) || memchr(val, '\0', vl))
        luaL_argerror(L, 1, lua_pushfstring(L, "header '%s' value must not contain CR, LF or NUL", name));
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}

/* The request headers: Content-Type, then opts.headers (checked already).
 * Returns 0, or -1 out of memory (*out freed). */
static int build_headers(lua_State *L, struct curl_slist **out) {
  struct curl_slist *l = curl_slist_append(NULL, "Content-Type: application/json"), *n;
  if (!l) return -1;
  lua_getfield(L, 1, "headers");
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      size_t nl, vl;
      const char *name = lua_tolstring(L, -2, &nl), *val = lua_tolstring(L, -1, &vl);
      char *line = (char *)malloc(nl + vl + 3);
      if (!line) goto oom;
      memcpy(line, name, nl);
      memcpy(line + nl, ": ", 2);
      memcpy(line + nl + 2, val, vl);
      line[nl + 2 + vl] = '\0';
      n = curl_slist_append(l, line);
      OPENSSL_cleanse(line, nl + vl + 3); /* header values hold secrets: no copy left in freed memory */
      free(line);
      if (!n) goto oom;
      l = n;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  *out = l;
  return 0;
oom:
  curl_slist_free_all(l);
  return -1;
}

/* core.otlp_exporter{ url, headers = {name = value}, prefix, suffix,
 *   queue = 2048, batch = 64, timeout_ms = 10000, connect_timeout_ms = 5000,
 *   retries = 5, backoff_ms = 500, max_backoff_ms = 30000, shutdown_ms = 2000 }
 * -> exporter | nil, err, code. Raises on a bad option. */
static int l_otlp_exporter(lua_State *L) {
  otlp_exporter *x;
  long long queue, batch, to, cto, retries, backoff, maxb, shut;
  const char *url;
  char hp[sizeof x->hostport];
  sigset_t all, old;
  int rc;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "url");
  url = lua_tostring(L, -1);
  if (lua_type(L, -1) != LUA_TSTRING || ga_http_hostport(url, hp, sizeof hp) != 0)
    return luaL_argerror(L, 1, "url must be an http:// or https:// URL with a host");
  lua_pop(L, 1);
  queue = opt_int(L, "queue", 2048, 1, 1000000);
  batch = opt_int(L, "batch", 64, 1, 100000);
  to = opt_int(L, "timeout_ms", 10000, 1, OTLP_MAX_MS);
  cto = opt_int(L, "connect_timeout_ms", 5000, 1, OTLP_MAX_MS);
  retries = opt_int(L, "retries", 5, 0, OTLP_MAX_RETRIES);
  backoff = opt_int(L, "backoff_ms", 500, 0, OTLP_MAX_MS);
  maxb = opt_int(L, "max_backoff_ms", 30000, 0, OTLP_MAX_MS);
  shut = opt_int(L, "shutdown_ms", 2000, 0, OTLP_MAX_MS);
  check_headers(L);
  lua_getfield(L, 1, "prefix");
  lua_getfield(L, 1, "suffix");
  if ((!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING) || (!lua_isnil(L, -2) && lua_type(L, -2) != LUA_TSTRING))
    return luaL_argerror(L, 1, "prefix and suffix must be strings");
  lua_pop(L, 2);

  /* closed userdata first: nothing malloc'd is live if Lua raises */
  x = (otlp_exporter *)ga_newuserdata(L, sizeof *x);
  memset(x, 0, sizeof *x);
  luaL_getmetatable(L, OTLP_MT);
  lua_setmetatable(L, -2);
  if (ga_curl_global_init() != 0) return ga_fail(L, "HTTP", "libcurl initialisation failed");
  memcpy(x->hostport, hp, sizeof hp);
  x->capacity = (size_t)queue;
  x->batch = (int)batch;
  x->timeout_ms = (long)to;
  x->connect_timeout_ms = (long)cto;
  x->max_retries = (int)retries;
  x->backoff_ms = backoff;
  x->max_backoff_ms = maxb;
  x->shutdown_ms = shut;
  ga_jitter_seed(&x->rng, x);
  x->url = opt_dup(L, "url", NULL, NULL);
  x->prefix = opt_dup(L, "prefix", "{\"resourceSpans\":[{\"resource\":{},\"scopeSpans\":[{\"spans\":[", &x->prefix_n);
  x->suffix = opt_dup(L, "suffix", "]}]}]}", &x->suffix_n);
  if (!x->url || !x->prefix || !x->suffix || build_headers(L, &x->headers) != 0) {
    free(x->url);
    free(x->prefix);
    free(x->suffix);
    x->url = x->prefix = x->suffix = NULL;
    return ga_fail(L, "NOMEM", "out of memory");
  }
  pthread_mutex_init(&x->mu, NULL);
  pthread_cond_init(&x->wake, NULL);
  pthread_cond_init(&x->idle, NULL);
  pthread_cond_init(&x->stop, NULL);
  /* the thread must never take the host's signals (nginx relies on them) */
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(&x->thread, NULL, exporter_main, x);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->wake);
    pthread_cond_destroy(&x->idle);
    pthread_cond_destroy(&x->stop);
    curl_slist_free_all(x->headers);
    free(x->url);
    free(x->prefix);
    free(x->suffix);
    x->headers = NULL;
    x->url = x->prefix = x->suffix = NULL;
    return ga_fail(L, "HTTP", "cannot start the exporter thread: %s", strerror(rc));
  }
  x->open = 1;
  return 1;
}

/* exporter:push(items, nspans) -> true | nil, "FULL: ...", "FULL" (the
 * spans are dropped and counted) | nil, "CLOSED: ...", "CLOSED".
 * items: span objects of OTLP JSON joined by commas. Never blocks on I/O. */
static int l_push(lua_State *L) {
  otlp_exporter *x = check_x(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  long long spans;
  span_item *it;
  if (!ga_tointeger(L, 3, &spans) || spans < 1 || spans > 1000000)
    return luaL_argerror(L, 3, "span count must be an integer in 1..1000000");
  if (!x->open) return ga_fail(L, "CLOSED", "the exporter is closed");
  if (n == 0 || n > OTLP_MAX_ITEM) return luaL_argerror(L, 2, "encoded spans must be 1 byte to 64 MiB");
  it = (span_item *)malloc(sizeof *it + n);
  pthread_mutex_lock(&x->mu);
  if (!it || x->stopping || x->pending >= x->capacity) {
    int closing = x->stopping;
    size_t cap = x->capacity;
    x->dropped += spans;
    pthread_mutex_unlock(&x->mu);
    free(it);
    if (!it) return ga_fail(L, "NOMEM", "out of memory queueing %lld span(s)", spans);
    if (closing) return ga_fail(L, "CLOSED", "the exporter is closing");
    return ga_fail(L, "FULL", "span queue full (%zu batches queued): %lld span(s) dropped", cap, spans);
  }
  it->next = NULL;
  it->spans = spans;
  it->n = n;
  memcpy(it->data, s, n);
  if (x->tail) x->tail->next = it;
  else x->head = it;
  x->tail = it;
  x->pending++;
  x->pending_spans += spans;
  pthread_cond_signal(&x->wake);
  pthread_mutex_unlock(&x->mu);
  lua_pushboolean(L, 1);
  return 1;
}

/* exporter:flush([timeout_ms = 5000]) -> true | nil, "TIMEOUT: ...", "TIMEOUT":
 * waits until nothing is queued nor in flight (sent, or given up). */
static int l_flush(lua_State *L) {
  otlp_exporter *x = check_open(L);
  long long ms = 5000, left;
  struct timespec ts;
  if (!lua_isnoneornil(L, 2) && (!ga_tointeger(L, 2, &ms) || ms < 0 || ms > OTLP_MAX_MS))
    return luaL_argerror(L, 2, "timeout_ms must be a non-negative integer");
  abs_deadline(&ts, (uint64_t)ms * 1000000u);
  pthread_mutex_lock(&x->mu);
  while ((x->head || x->in_flight) && pthread_cond_timedwait(&x->idle, &x->mu, &ts) == 0) {
  }
  left = x->pending_spans + (x->in_flight ? 1 : 0);
  pthread_mutex_unlock(&x->mu);
  if (left > 0) return ga_fail(L, "TIMEOUT", "spans still queued or in flight after %lld ms", ms);
  lua_pushboolean(L, 1);
  return 1;
}

static void set_count(lua_State *L, const char *k, long long v) {
  ga_pushint64(L, v);
  lua_setfield(L, -2, k);
}

/* exporter:stats() -> { exported, dropped, failed, pending (spans), retries,
 * batches (requests), last_error = "..." | nil }; works after close too. */
static int l_stats(lua_State *L) {
  otlp_exporter *x = check_x(L);
  int open = x->open;
  if (open) pthread_mutex_lock(&x->mu);
  lua_createtable(L, 0, 7);
  set_count(L, "exported", x->exported);
  set_count(L, "dropped", x->dropped);
  set_count(L, "failed", x->failed);
  set_count(L, "pending", x->pending_spans);
  set_count(L, "retries", x->retries);
  set_count(L, "batches", x->batches);
  if (x->last_error[0]) {
    lua_pushstring(L, x->last_error);
    lua_setfield(L, -2, "last_error");
  }
  if (open) pthread_mutex_unlock(&x->mu);
  return 1;
}

/* exporter:close([flush_ms = shutdown_ms]) -> true: sends what it can within
 * flush_ms, drops (and counts) the rest, stops the thread. Idempotent. */
static int l_close(lua_State *L) {
  otlp_exporter *x = check_x(L);
  long long ms = x->shutdown_ms;
  if (!lua_isnoneornil(L, 2) && (!ga_tointeger(L, 2, &ms) || ms < 0 || ms > OTLP_MAX_MS))
    return luaL_argerror(L, 2, "flush_ms must be a non-negative integer");
  exporter_close(x, ms);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_gc(lua_State *L) {
  otlp_exporter *x = check_x(L);
  exporter_close(x, x->shutdown_ms);
  return 0;
}

static int l_tostring(lua_State *L) {
  otlp_exporter *x = check_x(L);
  if (!x->open) lua_pushliteral(L, "genaudit.otlp_exporter (closed)");
  else lua_pushfstring(L, "genaudit.otlp_exporter (%s)", x->hostport);
  return 1;
}

/* core.random_hex(nbytes) -> 2*nbytes lowercase hex digits from OpenSSL's
 * CSPRNG, never all zero (an all-zero trace or span id is invalid) |
 * nil, "RANDOM: ...", "RANDOM". nbytes: 1..64. */
static int l_random_hex(lua_State *L) {
  long long n;
  unsigned char raw[64];
  char hex[129];
  int i, tries, zero = 1;
  if (!ga_tointeger(L, 1, &n) || n < 1 || n > 64) return luaL_argerror(L, 1, "nbytes must be an integer in 1..64");
  for (tries = 0; tries < 4 && zero; tries++) {
    if (RAND_bytes(raw, (int)n) != 1) return ga_fail(L, "RANDOM", "OpenSSL RAND_bytes failed");
    for (i = 0; i < n; i++) zero &= raw[i] == 0;
  }
  if (zero) return ga_fail(L, "RANDOM", "OpenSSL RAND_bytes returned zeros only");
  for (i = 0; i < n; i++) snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  lua_pushlstring(L, hex, (size_t)(2 * n));
  return 1;
}

/* core.unix_nanos() -> the wall clock as decimal nanoseconds since the epoch (a string) */
static int l_unix_nanos(lua_State *L) {
  struct timespec ts;
  char buf[32];
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(buf, sizeof buf, "%lld%09ld", (long long)ts.tv_sec, (long)ts.tv_nsec);
  lua_pushstring(L, buf);
  return 1;
}

void ga_open_otlp(lua_State *L) {
  static const luaL_Reg methods[] = {{"push", l_push}, {"flush", l_flush}, {"stats", l_stats},
                                     {"close", l_close}, {NULL, NULL}};
  ga_newclass(L, OTLP_MT, methods, l_gc, l_tostring);
  lua_pushcfunction(L, l_otlp_exporter);
  lua_setfield(L, -2, "otlp_exporter");
  lua_pushcfunction(L, l_random_hex);
  lua_setfield(L, -2, "random_hex");
  lua_pushcfunction(L, l_unix_nanos);
  lua_setfield(L, -2, "unix_nanos");
}
