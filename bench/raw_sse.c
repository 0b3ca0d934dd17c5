/* bench/raw_sse.c — the floor of bench/stream.lua: a plain C loop reading
 * an OpenAI-format event stream from a file in pieces of P bytes (the same
 * pieces genaudit is fed), finding each event's end (a blank line) and the
 * delta text of each chunk ("content":"…" up to its closing quote), and
 * counting them. No JSON decoding, no SSE field rules, no Lua: the least a
 * reader of the stream can do.
 *   raw_sse FILE PIECE REPEAT -> "events=N deltas=N content_bytes=N ns=N" */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
  FILE *f;
  char *s, *line;
  long n, piece, repeat, r, i, len = 0, cap = 1 << 16;
  long long events = 0, deltas = 0, bytes = 0, t0, t1;
  if (argc != 4) {
    fprintf(stderr, "usage: raw_sse FILE PIECE REPEAT\n");
    return 2;
  }
  f = fopen(argv[1], "rb");
  if (!f) {
    perror(argv[1]);
    return 1;
  }
  if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) return 1;
  s = malloc((size_t)n + 1);
  line = malloc((size_t)cap);
  if (!s || !line || fread(s, 1, (size_t)n, f) != (size_t)n) return 1;
  fclose(f);
  piece = atol(argv[2]);
  repeat = atol(argv[3]);
  if (piece < 1 || repeat < 1) return 2;
  t0 = now_ns();
  for (r = 0; r < repeat; r++) {
    len = 0;
    for (i = 0; i < n; i += piece) {
      long k = n - i < piece ? n - i : piece, j;
      for (j = 0; j < k; j++) { /* buffer the event; at a blank line, read it */
        char ch = s[i + j];
        if (len + 1 >= cap) {
          char *nl = realloc(line, (size_t)cap * 2);
          if (!nl) return 1;
          line = nl;
          cap *= 2;
        }
        line[len++] = ch;
        if (ch == '\n' && len >= 2 && line[len - 2] == '\n') {
          const char *c;
          line[len] = '\0';
          events++;
          c = strstr(line, "\"content\":\"");
          if (c) {
            const char *e = c + 11;
            while (*e && !(*e == '"' && e[-1] != '\\')) e++;
            if (e > c + 11) {
              deltas++;
              bytes += (long long)(e - (c + 11));
            }
          }
          len = 0;
        }
      }
    }
  }
  t1 = now_ns();
  printf("events=%lld deltas=%lld content_bytes=%lld ns=%lld\n", events / repeat, deltas / repeat,
         bytes / repeat, t1 - t0);
  free(s);
  free(line);
  return 0;
}
