/* ga_http.c — the blocking libcurl HTTP client behind core.http_client: one
 * easy handle per client (keep-alive across requests), the retry loop (the
 * policy itself — what is retried, backoff, Retry-After, error codes — is
 * ga_retry.c's, shared with the cosocket transport), per-attempt timings,
 * and failure messages that name host:port only — never the URL's query
 * string, userinfo, a header value or the body, where API keys live.
 * The plain-C URL and header parsing is ga_http_parse.c's.
 * This transport blocks by design; the OpenResty transport is separate. */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <curl/curl.h>
#include "ga_private.h"

#define HTTP_MT "genaudit.http_client"
#define HTTP_MAX_RETRIES 20
#define HTTP_MAX_MS GA_RETRY_MAX_MS /* one day: the largest timeout or backoff accepted */
#define HTTP_HOSTPORT_MAX 264 /* 255-byte host, ":", 5-digit port, NUL */
#define HTTP_MSG_MAX 768
#define HTTP_MAX_HEADER_BYTES (1024 * 1024) /* response header lines of one status, in total */

/* a successful attempt's kind; failed ones have a GA_XF_* (ga_retry.c) */
#define E_OK (-1)

enum { M_POST, M_GET, M_PUT, M_PATCH, M_DELETE, M_HEAD };
static const char *const method_names[] = {"POST", "GET", "PUT", "PATCH", "DELETE", "HEAD", NULL};

/* A streamed response body (client:request{on_data = fn}): while the running
 * attempt's status is 2xx, each piece curl reads is handed to fn instead of
 * being buffered. Lives on l_http_request's C stack; c->st points to it only
 * during the request. The Lua function sits at stack index fn. */
typedef struct {
  lua_State *L;
  int fn;                   /* stack index of on_data */
  long long idle_ms;        /* 0: no idle limit */
  int live;                 /* this attempt's final headers said 2xx */
  int refused;              /* on_data said stop (or raised): msg holds why */
  int stalled;              /* silent past idle_ms */
  uint64_t t0_ns, first_ns, last_ns;
  long long reads, bytes;   /* of this attempt */
  char msg[HTTP_MSG_MAX / 2];
} http_stream;

typedef struct {
  CURL *curl; /* NULL once closed */
  http_stream *st; /* the running request's stream, or NULL */
  int busy;        /* a request is running: on_data must not reenter this client */
  long connect_timeout_ms, timeout_ms;
  long long max_response_bytes;
  uint64_t rng;                   /* xorshift64 state for backoff jitter, never 0 */
  struct curl_slist *req_headers; /* the running request's header list, freed after it */
  ga_buf body, head;              /* response being received: body, header lines after the last status line */
  int too_large;                  /* set by the callbacks: 1 body past max_response_bytes, 2 headers too big */
  char errbuf[CURL_ERROR_SIZE];
} http_client;

typedef struct {
  int status;               /* HTTP status; 0 when the transfer failed */
  int ecode;                /* E_OK or the GA_XF_* failure kind */
  long long retry_after_ms; /* -1: no usable Retry-After */
  long long slept_ms;       /* -1: no sleep followed this attempt */
  long long t_us[6];        /* dns, connect, tls, pretransfer, first byte, total */
  long long wait_us;        /* around curl_easy_perform, by ga_monotonic_ns */
  char msg[HTTP_MSG_MAX];   /* failure description without the "CODE: " prefix */
} http_attempt;

typedef struct {
  const char *url, *body;
  size_t body_len;
  int method, has_body, retries;
  long timeout_ms, connect_timeout_ms;
  long long backoff_ms, max_backoff_ms;
  char hostport[HTTP_HOSTPORT_MAX]; /* the only part of the URL messages may show */
  int n;                            /* attempts made */
  long long wait_us;                /* sum of the attempts' wait_us */
  http_attempt at[HTTP_MAX_RETRIES + 1];
} http_request;

static const char *const timing_names[6] = {"dns_us", "connect_us", "tls_us",
                                            "pretransfer_us", "first_byte_us", "total_us"};
static const CURLINFO timing_infos[6] = {CURLINFO_NAMELOOKUP_TIME_T, CURLINFO_CONNECT_TIME_T,
                                         CURLINFO_APPCONNECT_TIME_T, CURLINFO_PRETRANSFER_TIME_T,
                                         CURLINFO_STARTTRANSFER_TIME_T, CURLINFO_TOTAL_TIME_T};

/* The one mutable static in this file, allowed by STYLE.md: libcurl's global
 * init must run once per process before any handle exists, and is not
 * thread-safe itself, hence pthread_once. global_rc is written only there. */
static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;
static void global_init(void) { global_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

int ga_curl_global_init(void) {
  pthread_once(&global_once, global_init);
  return global_rc == CURLE_OK ? 0 : (int)global_rc;
}

/* ---- plain C: Retry-After, backoff jitter (URL and header parsing: ga_http_parse.c) ---- */

/* The last Retry-After of the response headers in h, -1 when absent/unusable. */
static long long find_retry_after(const ga_buf *h) { return ga_http_retry_after(h->buf, h->len); }

/* ---- libcurl callbacks (no Lua in here: they must never raise) ---- */

/* Hands one piece of a 2xx body to on_data (pcall'd: a raise is a refusal).
 * Returns len, or 0 to make curl abort the transfer. */
static size_t stream_piece(http_client *c, const char *p, size_t len) {
  http_stream *st = c->st;
  lua_State *L = st->L;
  int ok, rc;
  if (st->bytes + (long long)len > c->max_response_bytes) {
    c->too_large = 1;
    return 0;
  }
  st->last_ns = ga_monotonic_ns();
  if (st->reads == 0) st->first_ns = st->last_ns;
  st->reads++;
  st->bytes += (long long)len;
  if (!lua_checkstack(L, 4)) {
    snprintf(st->msg, sizeof st->msg, "out of Lua stack space");
    st->refused = 1;
    return 0;
  }
  lua_pushvalue(L, st->fn);
  lua_pushlstring(L, p, len);
  rc = lua_pcall(L, 1, 2, 0);
  if (rc != 0) {
    const char *e = lua_tostring(L, -1);
    snprintf(st->msg, sizeof st->msg, "on_data raised: %s", e ? e : "(an error object that is not a string)");
    lua_pop(L, 1);
    st->refused = 1;
    return 0;
  }
  ok = lua_toboolean(L, -2);
  if (!ok) {
    const char *why = lua_tostring(L, -1);
    snprintf(st->msg, sizeof st->msg, "%s", why ? why : "the consumer stopped the stream");
    st->refused = 1;
  }
  lua_pop(L, 2);
  return ok ? len : 0;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  http_client *c = (http_client *)ud;
  size_t len = size * n;
  if (c->st && c->st->live) return stream_piece(c, p, len);
  if ((long long)(c->body.len + len) > c->max_response_bytes) {
    c->too_large = 1;
    return 0; /* != len: curl aborts with CURLE_WRITE_ERROR */
  }
  ga_buf_add(&c->body, p, len);
  return c->body.oom ? 0 : len;
}

/* One header line per call; a status line starts a new header set (1xx,
 * and each retry), so only the final response's headers are kept. */
static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  http_client *c = (http_client *)ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    c->head.len = 0;
    if (c->st) c->st->live = 0; /* a new response: 2xx or not is decided at its blank line */
    return len;
  }
  if (c->st && (len == 2 || len == 1) && (p[0] == '\r' || p[0] == '\n')) {
    /* the blank line ending a header set: a final 2xx streams from here */
    long st = 0;
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &st);
    if (st >= 200 && st < 300) {
      c->st->live = 1;
      c->st->last_ns = ga_monotonic_ns();
    }
    return len;
  }
  if (c->head.len + len > HTTP_MAX_HEADER_BYTES) {
    c->too_large = 2;
    return 0;
  }
  ga_buf_add(&c->head, p, len);
  return c->head.oom ? 0 : len;
}

/* The idle limit of a streamed body: libcurl calls this often while data
 * flows and about once a second when it does not. */
static int on_progress(void *ud, curl_off_t dlt, curl_off_t dln, curl_off_t ult, curl_off_t uln) {
  http_client *c = (http_client *)ud;
  http_stream *st = c->st;
  (void)dlt, (void)dln, (void)ult, (void)uln;
  if (!st || !st->live || st->idle_ms <= 0) return 0;
  if ((ga_monotonic_ns() - st->last_ns) / 1000000u > (uint64_t)st->idle_ms) {
    st->stalled = 1;
    return 1; /* CURLE_ABORTED_BY_CALLBACK */
  }
  return 0;
}

/* ---- the request core ---- */

static int is_tls_error(CURLcode rc) {
  switch (rc) {
    case CURLE_SSL_CONNECT_ERROR: case CURLE_PEER_FAILED_VERIFICATION: case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER: case CURLE_SSL_CACERT_BADFILE: case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED: case CURLE_SSL_SHUTDOWN_FAILED: case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR: case CURLE_SSL_PINNEDPUBKEYNOTMATCH: case CURLE_SSL_INVALIDCERTSTATUS:
      return 1;
    default:
      return 0;
  }
}

static const char *os_error(CURL *h, CURLcode rc) {
  long e = 0;
  curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &e);
  return e ? strerror((int)e) : curl_easy_strerror(rc);
}

/* Describes a failed transfer in a->msg and a->ecode (a GA_XF_* kind, which
 * says the code and whether to retry) from the curl code and the handle's
 * state. Messages are composed here from host:port and libcurl's fixed
 * strings only: the error buffer is used for TLS failures alone, which never
 * quote the URL. The cosocket transport (openresty.lua) words the same
 * failures the same way. */
static void classify(http_client *c, const http_request *rq, http_attempt *a, CURLcode rc) {
  const char *hp = rq->hostport;
  char *m = a->msg;
  size_t ml = sizeof a->msg;
  http_stream *st = c->st;
  if (st && st->refused) {
    a->ecode = GA_XF_ABORTED;
    snprintf(m, ml, "%s", st->msg);
    return;
  }
  if (st && st->stalled) {
    a->ecode = GA_XF_STALLED;
    snprintf(m, ml, "stream stalled: no data from %s for idle_timeout_ms=%lld", hp, st->idle_ms);
    return;
  }
  if (st && st->reads > 0 && rc == CURLE_OPERATION_TIMEDOUT) {
    a->ecode = GA_XF_TIMEOUT;
    snprintf(m, ml, "stream from %s not finished within timeout_ms=%ld", hp, rq->timeout_ms);
    return;
  }
  switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
      if (a->t_us[3] > 0) { /* pretransfer reached: the request went out */
        a->ecode = GA_XF_TIMEOUT;
        snprintf(m, ml, "no response from %s within timeout_ms=%ld", hp, rq->timeout_ms);
      } else {
        a->ecode = GA_XF_CONNECT_TIMEOUT;
        snprintf(m, ml, "timed out connecting to %s (connect_timeout_ms=%ld, timeout_ms=%ld)", hp,
                 rq->connect_timeout_ms, rq->timeout_ms);
      }
      return;
    case CURLE_COULDNT_CONNECT:
      a->ecode = GA_XF_REFUSED;
      snprintf(m, ml, "could not connect to %s: %s", hp, os_error(c->curl, rc));
      return;
    case CURLE_COULDNT_RESOLVE_HOST:
      a->ecode = GA_XF_RESOLVE;
      snprintf(m, ml, "could not resolve the host of %s", hp);
      return;
    case CURLE_COULDNT_RESOLVE_PROXY:
      a->ecode = GA_XF_RESOLVE;
      snprintf(m, ml, "could not resolve the proxy for %s", hp);
      return;
    case CURLE_FILESIZE_EXCEEDED:
      a->ecode = GA_XF_TOO_LARGE;
      snprintf(m, ml, "response from %s exceeds max_response_bytes=%lld", hp, c->max_response_bytes);
      return;
    case CURLE_WRITE_ERROR:
      if (c->too_large == 1) {
        a->ecode = GA_XF_TOO_LARGE;
        snprintf(m, ml, "response from %s exceeds max_response_bytes=%lld", hp, c->max_response_bytes);
      } else if (c->too_large == 2) {
        a->ecode = GA_XF_TOO_LARGE;
        snprintf(m, ml, "response headers from %s exceed %d bytes", hp, HTTP_MAX_HEADER_BYTES);
      } else {
        a->ecode = GA_XF_INTERNAL;
        snprintf(m, ml, "out of memory receiving the response from %s", hp);
      }
      return;
    case CURLE_GOT_NOTHING:
      a->ecode = GA_XF_CLOSED;
      snprintf(m, ml, "%s closed the connection without a response", hp);
      return;
    case CURLE_PARTIAL_FILE:
      a->ecode = GA_XF_CLOSED;
      snprintf(m, ml, "%s closed the connection before the whole response arrived", hp);
      return;
    case CURLE_RECV_ERROR:
      a->ecode = GA_XF_CLOSED;
      snprintf(m, ml, "connection to %s failed while receiving: %s", hp, os_error(c->curl, rc));
      return;
    case CURLE_SEND_ERROR:
      a->ecode = GA_XF_CLOSED;
      snprintf(m, ml, "connection to %s failed while sending: %s", hp, os_error(c->curl, rc));
      return;
    case CURLE_WEIRD_SERVER_REPLY:
      a->ecode = GA_XF_PROTOCOL;
      snprintf(m, ml, "malformed response from %s", hp);
      return;
    case CURLE_OUT_OF_MEMORY:
      a->ecode = GA_XF_INTERNAL;
      snprintf(m, ml, "out of memory in the request to %s", hp);
      return;
    default:
      if (is_tls_error(rc)) {
        size_t n = strlen(c->errbuf);
        while (n && isspace((unsigned char)c->errbuf[n - 1])) c->errbuf[--n] = '\0';
        a->ecode = GA_XF_TLS;
        snprintf(m, ml, "handshake with %s failed: %s", hp, n ? c->errbuf : curl_easy_strerror(rc));
      } else {
        a->ecode = GA_XF_PROTOCOL;
        snprintf(m, ml, "request to %s failed: %s", hp, curl_easy_strerror(rc));
      }
      return;
  }
}

/* One try. Fills *a; returns 1 when another try may help (a retryable status
 * or transport failure). */
static int attempt_once(http_client *c, const http_request *rq, http_attempt *a) {
  CURLcode rc;
  uint64_t t0;
  int i;
  c->body.len = 0;
  c->body.oom = 0;
  c->head.len = 0;
  c->head.oom = 0;
  c->too_large = 0;
  c->errbuf[0] = '\0';
  t0 = ga_monotonic_ns();
  if (c->st) {
    http_stream *st = c->st;
    st->live = st->refused = st->stalled = 0;
    st->reads = st->bytes = 0;
    st->t0_ns = t0;
    st->first_ns = st->last_ns = 0;
  }
  rc = curl_easy_perform(c->curl);
  a->wait_us = (long long)((ga_monotonic_ns() - t0) / 1000u);
  for (i = 0; i < 6; i++) {
    curl_off_t v = 0;
    curl_easy_getinfo(c->curl, timing_infos[i], &v);
    a->t_us[i] = (long long)v;
  }
  if (rc == CURLE_OK) {
    long st = 0;
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &st);
    a->status = (int)st;
    a->ecode = E_OK;
    if (!ga_retry_should(a->status, E_OK)) return 0;
    a->retry_after_ms = find_retry_after(&c->head);
    return 1;
  }
  classify(c, rq, a, rc);
  if (c->st && c->st->reads > 0) return 0; /* bytes reached the consumer: never tried again */
  return ga_retry_should(0, a->ecode);
}

/* Sets the per-request options; headers must already be in c->req_headers. */
static CURLcode set_request(http_client *c, const http_request *rq) {
  CURL *h = c->curl;
  CURLcode rc;
  if ((rc = curl_easy_setopt(h, CURLOPT_URL, rq->url)) != CURLE_OK) return rc;
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, rq->timeout_ms);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, rq->connect_timeout_ms);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, c->req_headers);
  curl_easy_setopt(h, CURLOPT_NOBODY, 0L);
  if (rq->method == M_HEAD) {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else if (rq->has_body || rq->method == M_POST || rq->method == M_PUT || rq->method == M_PATCH) {
    /* the body goes with its length: it may hold NUL bytes; curl reads it in place */
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(rq->has_body ? rq->body_len : 0));
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, rq->has_body ? rq->body : "");
  } else {
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
  }
  return curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST,
                          rq->method == M_POST || rq->method == M_GET || rq->method == M_HEAD
                              ? NULL
                              : method_names[rq->method]);
}

/* The retry loop. Returns 0 when the last try got an HTTP response (any
 * status), -1 when it failed in transport (rq->at[rq->n - 1] says how). */
static int http_perform(http_client *c, http_request *rq) {
  int i;
  CURLcode rc = set_request(c, rq);
  rq->n = 0;
  rq->wait_us = 0;
  if (rc != CURLE_OK) {
    http_attempt *a = &rq->at[0];
    memset(a, 0, sizeof *a);
    a->ecode = GA_XF_INTERNAL;
    snprintf(a->msg, sizeof a->msg, "could not set up the request to %s: %s", rq->hostport,
             curl_easy_strerror(rc));
    return -1; /* no attempt made: rq->n stays 0 */
  }
  for (i = 0;; i++) {
    http_attempt *a = &rq->at[i];
    int again;
    memset(a, 0, sizeof *a);
    a->retry_after_ms = -1;
    a->slept_ms = -1;
    again = attempt_once(c, rq, a);
    rq->n = i + 1;
    rq->wait_us += a->wait_us;
    if (!again || i == rq->retries) return a->ecode == E_OK ? 0 : -1;
    a->slept_ms = ga_retry_delay_ms(i + 1, rq->backoff_ms, rq->max_backoff_ms, a->retry_after_ms,
                                    ga_jitter_next(&c->rng));
    if (a->slept_ms > 0) ga_sleep_ns((uint64_t)a->slept_ms * 1000000u);
  }
}

/* ---- Lua wrappers ---- */

static http_client *check_client(lua_State *L) {
  http_client *c = (http_client *)luaL_checkudata(L, 1, HTTP_MT);
  if (!c->curl) luaL_error(L, "attempt to use a closed http_client");
  if (c->busy) luaL_error(L, "attempt to use an http_client inside its own running request (on_data)");
  return c;
}

/* Reads integer field `name` of the table at idx into *out (kept when nil);
 * raises unless it is an integer in lo..hi. */
static void opt_int(lua_State *L, int idx, const char *name, long long lo, long long hi, long long *out) {
  long long v;
  lua_getfield(L, idx, name);
  if (!lua_isnil(L, -1)) {
    if (!ga_tointeger(L, -1, &v) || v < lo || v > hi) {
      char msg[128];
      snprintf(msg, sizeof msg, "%s must be an integer in %lld..%lld", name, lo, hi);
      luaL_argerror(L, idx, msg);
    }
    *out = v;
  }
  lua_pop(L, 1);
}

/* Pushes field `name` of the table at idx; raises unless it is nil or a
 * string without NUL bytes (it goes to libcurl as a C string). */
static const char *opt_cstr(lua_State *L, int idx, const char *name) {
  size_t len;
  const char *s;
  lua_getfield(L, idx, name);
  if (lua_isnil(L, -1)) return NULL;
  if (lua_type(L, -1) != LUA_TSTRING)
    luaL_argerror(L, idx, lua_pushfstring(L, "%s must be a string", name));
  s = lua_tolstring(L, -1, &len);
  if (strlen(s) != len) luaL_argerror(L, idx, lua_pushfstring(L, "%s must not contain NUL bytes", name));
  return s;
}

/* close(), __gc and __close. Raises when called from the client's own
 * on_data (the transfer is running on the handle it would free); __gc never
 * meets that case, the running request holds the client on its stack. */
static int l_http_close(lua_State *L) {
  http_client *c = (http_client *)luaL_checkudata(L, 1, HTTP_MT);
  if (c->busy) return luaL_error(L, "attempt to close an http_client inside its own running request (on_data)");
  if (c->curl) {
    curl_easy_cleanup(c->curl);
    c->curl = NULL;
  }
  curl_slist_free_all(c->req_headers);
  c->req_headers = NULL;
  ga_buf_free(&c->body);
  ga_buf_free(&c->head);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_http_tostring(lua_State *L) {
  http_client *c = (http_client *)luaL_checkudata(L, 1, HTTP_MT);
  if (!c->curl) lua_pushliteral(L, "genaudit.http_client (closed)");
  else lua_pushfstring(L, "genaudit.http_client (%p)", (void *)c);
  return 1;
}

/* core.http_client([opts]) -> client | nil, err, "HTTP"
 * opts: connect_timeout_ms, timeout_ms, verify_tls, ca_file, max_response_bytes,
 * proxy (nil: libcurl's environment default; "": none). Raises on bad options. */
static int l_http_client(lua_State *L) {
  long long cto = 10000, to = 120000, maxb = 64LL * 1024 * 1024;
  int verify = 1, ok = 1;
  const char *ca = NULL, *proxy = NULL;
  http_client *c;
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    opt_int(L, 1, "connect_timeout_ms", 0, HTTP_MAX_MS, &cto);
    opt_int(L, 1, "timeout_ms", 0, HTTP_MAX_MS, &to);
    opt_int(L, 1, "max_response_bytes", 1, (long long)1 << 40, &maxb);
    lua_getfield(L, 1, "verify_tls");
    if (!lua_isnil(L, -1)) {
      if (!lua_isboolean(L, -1)) return luaL_argerror(L, 1, "verify_tls must be a boolean");
      verify = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    ca = opt_cstr(L, 1, "ca_file"); /* these two stay on the stack while used */
    proxy = opt_cstr(L, 1, "proxy");
  }
  /* closed userdata first, then the handle: nothing leaks if Lua raises */
  c = (http_client *)ga_newuserdata(L, sizeof *c);
  memset(c, 0, sizeof *c);
  luaL_getmetatable(L, HTTP_MT);
  lua_setmetatable(L, -2);
  c->connect_timeout_ms = (long)cto;
  c->timeout_ms = (long)to;
  c->max_response_bytes = maxb;
  ga_jitter_seed(&c->rng, c);

  pthread_once(&global_once, global_init);
  if (global_rc != CURLE_OK)
    return ga_fail(L, "HTTP", "libcurl initialisation failed: %s", curl_easy_strerror(global_rc));
  c->curl = curl_easy_init();
  if (!c->curl) return ga_fail(L, "HTTP", "cannot create a libcurl handle");

  curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c->curl, CURLOPT_ERRORBUFFER, c->errbuf);
  curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, (void *)c);
  curl_easy_setopt(c->curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c->curl, CURLOPT_HEADERDATA, (void *)c);
  curl_easy_setopt(c->curl, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(c->curl, CURLOPT_XFERINFODATA, (void *)c);
  curl_easy_setopt(c->curl, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c->curl, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c->curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)maxb);
  curl_easy_setopt(c->curl, CURLOPT_SSL_VERIFYPEER, verify ? 1L : 0L);
  curl_easy_setopt(c->curl, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
  ok &= curl_easy_setopt(c->curl, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK;
#else
  curl_easy_setopt(c->curl, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  ok &= curl_easy_setopt(c->curl, CURLOPT_ACCEPT_ENCODING, "") == CURLE_OK;
  ok &= curl_easy_setopt(c->curl, CURLOPT_USERAGENT, "genaudit/0.1.0") == CURLE_OK;
  if (ca) ok &= curl_easy_setopt(c->curl, CURLOPT_CAINFO, ca) == CURLE_OK;
  if (proxy) ok &= curl_easy_setopt(c->curl, CURLOPT_PROXY, proxy) == CURLE_OK;
  if (!ok) {
    curl_easy_cleanup(c->curl);
    c->curl = NULL;
    return ga_fail(L, "HTTP", "cannot configure a libcurl handle (out of memory?)");
  }
  return 1;
}

/* Raises unless the headers table at t maps valid names to string values
 * without CR, LF or NUL. Messages name the header, never its value. */
static void check_headers(lua_State *L, int t) {
  lua_pushnil(L);
  while (lua_next(L, t)) {
    size_t nl, vl;
    const char *name, *val;
    if (lua_type(L, -2) != LUA_TSTRING) luaL_argerror(L, 2, "headers must map names (strings) to string values");
    name = lua_tolstring(L, -2, &nl);
    if (!ga_http_valid_token(name, nl)) luaL_argerror(L, 2, lua_pushfstring(L, "invalid header name '%s'", name));
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, 2, lua_pushfstring(L, "header '%s' must have a string value, got %s", name,
                                          luaL_typename(L, -1)));
    val = lua_tolstring(L, -1, &vl);
    if (memchr(val, '\r', vl) || memchr(val, '\n', vl) || memchr(val, '\0', vl))
      luaL_argerror(L, 2, lua_pushfstring(L, "header '%s' value must not contain CR, LF or NUL", name));
    lua_pop(L, 1);
  }
}

/* Builds the curl header list from the (checked) table at t, or from none
 * when t is 0, plus an empty "Expect:" (no 100-continue wait) unless the
 * caller set Expect. Never raises. Returns NULL when out of memory. */
static struct curl_slist *build_headers(lua_State *L, int t) {
  struct curl_slist *list = NULL, *nx;
  ga_buf line;
  int expect = 0, oom = 0;
  ga_buf_init(&line);
  if (t) {
    lua_pushnil(L);
    while (lua_next(L, t)) {
      size_t nl, vl;
      const char *name = lua_tolstring(L, -2, &nl), *val = lua_tolstring(L, -1, &vl);
      if (nl == 6 && strncasecmp(name, "expect", 6) == 0) expect = 1;
      line.len = 0;
      ga_buf_add(&line, name, nl);
      if (vl) { /* "Name;" is curl's spelling of a header with an empty value */
        ga_buf_add(&line, ": ", 2);
        ga_buf_add(&line, val, vl);
      } else {
        ga_buf_addc(&line, ';');
      }
      ga_buf_addc(&line, '\0');
      lua_pop(L, 1);
      if (line.oom || !(nx = curl_slist_append(list, line.buf))) {
        lua_pop(L, 1); /* the key: iteration stops here */
        oom = 1;
        break;
      }
      list = nx;
    }
  }
  if (!oom && !expect) {
    if (!(nx = curl_slist_append(list, "Expect:"))) oom = 1;
    else list = nx;
  }
  ga_buf_free(&line);
  if (oom) {
    curl_slist_free_all(list);
    return NULL;
  }
  return list;
}

static void push_timings(lua_State *L, const http_attempt *a) {
  int i;
  lua_createtable(L, 0, 7);
  for (i = 0; i < 6; i++) {
    ga_pushint64(L, a->t_us[i]);
    lua_setfield(L, -2, timing_names[i]);
  }
  ga_pushint64(L, a->wait_us);
  lua_setfield(L, -2, "wait_us");
}

static void push_attempts(lua_State *L, const http_request *rq) {
  int i;
  lua_createtable(L, rq->n, 0);
  for (i = 0; i < rq->n; i++) {
    const http_attempt *a = &rq->at[i];
    lua_createtable(L, 0, 6);
    if (a->ecode == E_OK) {
      lua_pushinteger(L, a->status);
      lua_setfield(L, -2, "status");
    } else {
      lua_pushfstring(L, "%s: %s", ga_xfails[a->ecode].code, a->msg);
      lua_setfield(L, -2, "error");
      lua_pushstring(L, ga_xfails[a->ecode].code);
      lua_setfield(L, -2, "code");
    }
    if (a->retry_after_ms >= 0) {
      ga_pushint64(L, a->retry_after_ms);
      lua_setfield(L, -2, "retry_after_ms");
    }
    if (a->slept_ms >= 0) {
      ga_pushint64(L, a->slept_ms);
      lua_setfield(L, -2, "slept_ms");
    }
    push_timings(L, a);
    lua_setfield(L, -2, "timings");
    lua_rawseti(L, -2, i + 1);
  }
}

/* Response headers of the last attempt: lower-case names, last value wins. */
static void push_headers(lua_State *L, const ga_buf *h) {
  size_t pos = 0, nlen, vlen, i;
  const char *name, *val;
  lua_newtable(L);
  while (ga_http_next_header(h, &pos, &name, &nlen, &val, &vlen)) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (i = 0; i < nlen; i++) luaL_addchar(&b, (char)tolower((unsigned char)name[i]));
    luaL_pushresult(&b);
    lua_pushlstring(L, val, vlen);
    lua_rawset(L, -3);
  }
}

/* The streamed body's figures onto the table on top: streamed = true,
 * first_byte_us (from the attempt's start; absent when no byte came),
 * reads, stream_bytes. */
static void push_stream(lua_State *L, const http_stream *st) {
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "streamed");
  if (st->reads > 0) {
    ga_pushint64(L, (long long)((st->first_ns - st->t0_ns) / 1000u));
    lua_setfield(L, -2, "first_byte_us");
  }
  ga_pushint64(L, st->reads);
  lua_setfield(L, -2, "reads");
  ga_pushint64(L, st->bytes);
  lua_setfield(L, -2, "stream_bytes");
}

/* client:request{url=, method=, headers=, body=, retries=, backoff_ms=,
 *   max_backoff_ms=, timeout_ms=, connect_timeout_ms=, on_data=, idle_timeout_ms=}
 * -> {status, headers, body, attempts, timings, provider_wait_us, retries}
 * on_data = function(bytes) -> true | nil, reason: a 2xx body is streamed to
 * it piece by piece as read (body ""; streamed, first_byte_us, reads,
 * stream_bytes added), a non-2xx one buffered as usual; a falsy return or a
 * raise aborts (STREAM_ABORTED); idle_timeout_ms bounds the silence between
 * reads once 2xx headers came (TIMEOUT); nothing is retried once a byte
 * reached on_data (the failure's info then has streamed = true and those
 * figures). on_data must not use or close this client: both raise there.
 * See README "Streaming".
 *  | nil, "CODE: message", CODE, {attempts, provider_wait_us}; CODE is CONNECT, TIMEOUT, TLS,
 *    HTTP or TOO_LARGE (ga_xfails in ga_retry.c says which failure has which, and retries)
 * Any final HTTP status is a success. Raises on bad arguments, before any
 * allocation. Buffers live in the client, so an OOM raise while pushing
 * the results leaks nothing: the next request or close frees them. */
static int l_http_request(lua_State *L) {
  http_client *c = check_client(L);
  http_request rq;
  http_stream st;
  long long v;
  int hidx = 0, rc;
  size_t len;
  luaL_checktype(L, 2, LUA_TTABLE);
  memset(&rq, 0, sizeof rq);
  rq.timeout_ms = c->timeout_ms;
  rq.connect_timeout_ms = c->connect_timeout_ms;

  lua_getfield(L, 2, "url"); /* kept on the stack while curl may read it */
  if (lua_type(L, -1) != LUA_TSTRING) return luaL_argerror(L, 2, "url must be a string");
  rq.url = lua_tolstring(L, -1, &len);
  if (strlen(rq.url) != len) return luaL_argerror(L, 2, "url must not contain NUL bytes");
  if (ga_http_hostport(rq.url, rq.hostport, sizeof rq.hostport) != 0)
    return luaL_argerror(L, 2, "url must be an http:// or https:// URL with a host");

  lua_getfield(L, 2, "method");
  rq.method = M_POST;
  if (!lua_isnil(L, -1)) {
    const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    for (rq.method = 0; method_names[rq.method] && strcmp(method_names[rq.method], m) != 0; rq.method++) {
    }
    if (!method_names[rq.method])
      return luaL_argerror(L, 2, "method must be one of POST, GET, PUT, PATCH, DELETE, HEAD");
  }
  lua_pop(L, 1);

  lua_getfield(L, 2, "body"); /* kept on the stack too */
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) return luaL_argerror(L, 2, "body must be a string");
    if (rq.method == M_GET || rq.method == M_HEAD)
      return luaL_argerror(L, 2, lua_pushfstring(L, "%s requests cannot have a body", method_names[rq.method]));
    rq.body = lua_tolstring(L, -1, &rq.body_len);
    rq.has_body = 1;
  }

  lua_getfield(L, 2, "headers"); /* kept on the stack for build_headers */
  if (!lua_isnil(L, -1)) {
    if (!lua_istable(L, -1)) return luaL_argerror(L, 2, "headers must be a table");
    hidx = lua_gettop(L);
    check_headers(L, hidx);
  }

  v = 2;
  opt_int(L, 2, "retries", 0, HTTP_MAX_RETRIES, &v);
  rq.retries = (int)v;
  rq.backoff_ms = 200;
  opt_int(L, 2, "backoff_ms", 0, HTTP_MAX_MS, &rq.backoff_ms);
  rq.max_backoff_ms = 30000;
  opt_int(L, 2, "max_backoff_ms", 0, HTTP_MAX_MS, &rq.max_backoff_ms);
  v = rq.timeout_ms;
  opt_int(L, 2, "timeout_ms", 0, HTTP_MAX_MS, &v);
  rq.timeout_ms = (long)v;
  v = rq.connect_timeout_ms;
  opt_int(L, 2, "connect_timeout_ms", 0, HTTP_MAX_MS, &v);
  rq.connect_timeout_ms = (long)v;
  memset(&st, 0, sizeof st);
  opt_int(L, 2, "idle_timeout_ms", 0, HTTP_MAX_MS, &st.idle_ms);
  lua_getfield(L, 2, "on_data"); /* kept on the stack while curl calls it */
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TFUNCTION) return luaL_argerror(L, 2, "on_data must be a function");
    st.L = L;
    st.fn = lua_gettop(L);
  }

  /* arguments checked: from here on nothing raises until the results */
  curl_slist_free_all(c->req_headers);
  c->req_headers = build_headers(L, hidx);
  if (!c->req_headers) {
    lua_pushnil(L);
    lua_pushfstring(L, "HTTP: out of memory building the request to %s", rq.hostport);
    lua_pushliteral(L, "HTTP");
    lua_createtable(L, 0, 2);
    lua_newtable(L);
    lua_setfield(L, -2, "attempts");
    ga_pushint64(L, 0);
    lua_setfield(L, -2, "provider_wait_us");
    return 4;
  }
  c->st = st.fn ? &st : NULL;
  curl_easy_setopt(c->curl, CURLOPT_NOPROGRESS, c->st && st.idle_ms > 0 ? 0L : 1L);
  c->busy = 1; /* on_data may run Lua: check_client and close refuse this client until done */
  rc = http_perform(c, &rq);
  c->busy = 0;
  c->st = NULL;
  /* curl must not keep pointers to the headers or to the Lua body string */
  curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
  curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, (const char *)NULL);
  curl_slist_free_all(c->req_headers);
  c->req_headers = NULL;

  if (rc != 0) {
    const http_attempt *last = &rq.at[rq.n ? rq.n - 1 : 0];
    ga_buf_free(&c->body);
    ga_buf_free(&c->head);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", ga_xfails[last->ecode].code, last->msg);
    lua_pushstring(L, ga_xfails[last->ecode].code);
    lua_createtable(L, 0, 6);
    push_attempts(L, &rq);
    lua_setfield(L, -2, "attempts");
    ga_pushint64(L, rq.wait_us);
    lua_setfield(L, -2, "provider_wait_us");
    if (st.fn && st.reads > 0) push_stream(L, &st);
    return 4;
  }
  lua_createtable(L, 0, 11);
  lua_pushinteger(L, rq.at[rq.n - 1].status);
  lua_setfield(L, -2, "status");
  push_headers(L, &c->head);
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, c->body.buf ? c->body.buf : "", c->body.len);
  lua_setfield(L, -2, "body");
  if (st.fn && st.live) push_stream(L, &st);
  push_attempts(L, &rq);
  lua_setfield(L, -2, "attempts");
  push_timings(L, &rq.at[rq.n - 1]);
  lua_setfield(L, -2, "timings");
  ga_pushint64(L, rq.wait_us);
  lua_setfield(L, -2, "provider_wait_us");
  lua_pushinteger(L, rq.n - 1);
  lua_setfield(L, -2, "retries");
  ga_buf_free(&c->body);
  ga_buf_free(&c->head);
  return 1;
}

void ga_open_http(lua_State *L) {
  static const luaL_Reg methods[] = {{"request", l_http_request}, {"close", l_http_close}, {NULL, NULL}};
  ga_newclass(L, HTTP_MT, methods, l_http_close, l_http_tostring);
  lua_pushcfunction(L, l_http_client);
  lua_setfield(L, -2, "http_client");
  ga_open_retry(L); /* the policy this client follows, for the cosocket transport */
}
