/* ga_digest.c — SHA-256 from OpenSSL's libcrypto (EVP_Digest): the digests
 * that pin the exact template, rule and policy code on a snapshot.
 *   ga_sha256_hex(p, n, out)  plain C: 64 lower-case hex digits + NUL
 *   core.sha256(s) -> hex     the Lua face (s: any bytes, with its length) */
#include <openssl/evp.h>
#include "ga_private.h"

int ga_sha256_hex(const void *p, size_t n, char out[65]) {
  static const char hex[] = "0123456789abcdef";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0, i;
  if (EVP_Digest(p, n, md, &len, EVP_sha256(), NULL) != 1 || len != 32) return -1;
  for (i = 0; i < 32; i++) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  out[64] = '\0';
  return 0;
}

/* core.sha256(s) -> the SHA-256 of the bytes of s, 64 lower-case hex digits */
static int l_sha256(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  char out[65];
  if (ga_sha256_hex(s, n, out) != 0) return luaL_error(L, "sha256: libcrypto failed");
  lua_pushlstring(L, out, 64);
  return 1;
}

void ga_open_digest(lua_State *L) {
  lua_pushcfunction(L, l_sha256);
  lua_setfield(L, -2, "sha256");
}
