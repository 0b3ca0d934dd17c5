/* ga_http_parse.c — the plain-C text handling of the libcurl HTTP client (no
 * lua_State, no libcurl; ga_http_retry_after is fuzzed by
 * fuzz/fuzz_retry_after.c): the host:port of an http(s) URL (the only part
 * of a URL a message may show), RFC 9110 header-name tokens, stepping
 * through raw response header lines, and the Retry-After of a response.
 * The client userdata, libcurl callbacks and retry loop are ga_http.c's. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include "ga_private.h"

/* Writes "host:port" of an http(s) URL into out (userinfo, path and query left
 * out). Returns 0, or -1 when the URL is not http:// or https:// with a host. */
int ga_http_hostport(const char *url, char *out, size_t outlen) {
  const char *p, *end, *at, *host, *hend, *port = NULL;
  size_t hlen;
  int https;
  if (strncasecmp(url, "http://", 7) == 0) {
    https = 0;
    p = url + 7;
  } else if (strncasecmp(url, "https://", 8) == 0) {
    https = 1;
    p = url + 8;
  } else {
    return -1;
  }
  end = p + strcspn(p, "/?#");
  at = NULL;
  for (host = p; host < end; host++)
    if (*host == '@') at = host;
  host = at ? at + 1 : p;
  if (*host == '[') { /* IPv6 literal */
    hend = memchr(host, ']', (size_t)(end - host));
    if (!hend) return -1;
    hend++;
    if (hend < end && *hend == ':') port = hend + 1;
    else if (hend != end) return -1;
  } else {
    hend = memchr(host, ':', (size_t)(end - host));
    if (hend) port = hend + 1;
    else hend = end;
  }
  hlen = (size_t)(hend - host);
  if (hlen == 0 || hlen > 255) return -1;
  if (port && (port == end || end - port > 5 || strspn(port, "0123456789") < (size_t)(end - port))) return -1;
  if (port)
    snprintf(out, outlen, "%.*s:%.*s", (int)hlen, host, (int)(end - port), port);
  else
    snprintf(out, outlen, "%.*s:%d", (int)hlen, host, https ? 443 : 80);
  return 0;
}

/* RFC 9110 token characters: what a header name may contain. */
int ga_http_valid_token(const char *s, size_t n) {
  size_t i;
  if (n == 0) return 0;
  for (i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (!(isalnum(ch) || strchr("!#$%&'*+-.^_`|~", ch)) || ch == 0) return 0;
  }
  return 1;
}

/* Steps through the "name: value" lines in h from *pos, value trimmed.
 * Returns 1 with a header, 0 at the end. Continuation lines are skipped. */
int ga_http_next_header(const ga_buf *h, size_t *pos, const char **name, size_t *nlen, const char **val,
                        size_t *vlen) {
  while (*pos < h->len) {
    const char *line = h->buf + *pos, *nl = memchr(line, '\n', h->len - *pos), *colon, *e;
    size_t len = nl ? (size_t)(nl - line) : h->len - *pos;
    *pos += len + (nl ? 1 : 0);
    if (len && line[len - 1] == '\r') len--;
    colon = memchr(line, ':', len);
    if (!colon || colon == line || line[0] == ' ' || line[0] == '\t') continue;
    e = line + len;
    *name = line;
    *nlen = (size_t)(colon - line);
    colon++;
    while (colon < e && (*colon == ' ' || *colon == '\t')) colon++;
    while (e > colon && (e[-1] == ' ' || e[-1] == '\t')) e--;
    *val = colon;
    *vlen = (size_t)(e - colon);
    return 1;
  }
  return 0;
}

long long ga_http_retry_after(const char *head, size_t len) {
  ga_buf h;
  size_t pos = 0, nlen, vlen;
  const char *name, *val;
  long long r = -1;
  h.buf = (char *)head;
  h.len = h.cap = len;
  h.oom = 0;
  while (ga_http_next_header(&h, &pos, &name, &nlen, &val, &vlen))
    if (nlen == 11 && strncasecmp(name, "retry-after", 11) == 0) r = ga_retry_after_value(val, vlen);
  return r;
}
