/* ga_digest.c — SHA-256 and Ed25519 from OpenSSL's libcrypto: the digests
 * that pin the exact template, rule and policy code on a snapshot, and the
 * signatures on published checkpoints.
 *   ga_sha256_hex(p, n, out)  plain C: 64 lower-case hex digits + NUL
 *   core.sha256(s) -> hex     the Lua face (s: any bytes, with its length)
 *   core.ed25519_keygen() -> private_pem, public_pem
 *   core.ed25519_public(private_pem) -> public_pem | nil, err, "KEY"
 *   core.ed25519_sign(private_pem, msg) -> 64-byte signature | nil, err, "KEY"
 *   core.ed25519_verify(public_pem, msg, sig) -> boolean | nil, err, "KEY"
 * Keys are the standard PEM encodings (PKCS#8 private, SubjectPublicKeyInfo
 * public) that `openssl pkey` and every other Ed25519 tool read. Key bytes
 * never appear in an error. */
#include <string.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
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

/* Pushes the PEM text a BIO holds; returns 0, or -1 when it holds none. */
static int push_bio(lua_State *L, BIO *b) {
  char *p = NULL;
  long n = BIO_get_mem_data(b, &p);
  if (n <= 0 || !p) return -1;
  lua_pushlstring(L, p, (size_t)n);
  return 0;
}

/* Writes the public half of k as PEM onto the stack; 0 or -1. */
static int push_public_pem(lua_State *L, EVP_PKEY *k) {
  BIO *b = BIO_new(BIO_s_mem());
  int rc = -1;
  if (b && PEM_write_bio_PUBKEY(b, k) == 1) rc = push_bio(L, b);
  BIO_free(b);
  return rc;
}

/* An encrypted key is refused: OpenSSL's default would prompt on the TTY. */
static int no_password(char *buf, int size, int rwflag, void *u) {
  (void)buf, (void)size, (void)rwflag, (void)u;
  return 0;
}

/* Reads an Ed25519 key from PEM text: private when priv, else public.
 * NULL when the text is not such a key (any other algorithm included); the
 * thread's OpenSSL error queue is left empty either way (libcurl shares it). */
static EVP_PKEY *read_key(const char *pem, size_t n, int priv) {
  BIO *b;
  EVP_PKEY *k;
  if (n > 16384) return NULL;
  b = BIO_new_mem_buf(pem, (int)n);
  if (!b) return NULL;
  k = priv ? PEM_read_bio_PrivateKey(b, NULL, no_password, NULL) : PEM_read_bio_PUBKEY(b, NULL, no_password, NULL);
  BIO_free(b);
  ERR_clear_error();
  if (k && EVP_PKEY_id(k) != EVP_PKEY_ED25519) {
    EVP_PKEY_free(k);
    k = NULL;
  }
  return k;
}

static int key_error(lua_State *L, const char *what) {
  lua_pushnil(L);
  lua_pushfstring(L, "KEY: %s", what);
  lua_pushliteral(L, "KEY");
  return 3;
}

/* core.ed25519_keygen() -> private_pem, public_pem (a fresh key pair) */
static int l_ed25519_keygen(lua_State *L) {
  EVP_PKEY *k = NULL;
  EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
  BIO *b;
  int ok = c && EVP_PKEY_keygen_init(c) == 1 && EVP_PKEY_keygen(c, &k) == 1;
  EVP_PKEY_CTX_free(c);
  if (!ok) return luaL_error(L, "ed25519_keygen: libcrypto failed");
  b = BIO_new(BIO_s_mem());
  ok = b && PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) == 1 && push_bio(L, b) == 0;
  BIO_free(b);
  if (ok) ok = push_public_pem(L, k) == 0;
  EVP_PKEY_free(k);
  if (!ok) return luaL_error(L, "ed25519_keygen: libcrypto failed");
  return 2;
}

/* core.ed25519_public(private_pem) -> public_pem | nil, err, "KEY" */
static int l_ed25519_public(lua_State *L) {
  size_t n;
  const char *pem = luaL_checklstring(L, 1, &n);
  EVP_PKEY *k = read_key(pem, n, 1);
  int rc;
  if (!k) return key_error(L, "not an Ed25519 private key in PEM");
  rc = push_public_pem(L, k);
  EVP_PKEY_free(k);
  if (rc != 0) return luaL_error(L, "ed25519_public: libcrypto failed");
  return 1;
}

/* core.ed25519_sign(private_pem, msg) -> signature (64 bytes) | nil, err, "KEY" */
static int l_ed25519_sign(lua_State *L) {
  size_t n, mn, sl = 64;
  const char *pem = luaL_checklstring(L, 1, &n);
  const char *msg = luaL_checklstring(L, 2, &mn);
  unsigned char sig[64];
  EVP_MD_CTX *c;
  EVP_PKEY *k = read_key(pem, n, 1);
  int ok;
  if (!k) return key_error(L, "not an Ed25519 private key in PEM");
  c = EVP_MD_CTX_new();
  ok = c && EVP_DigestSignInit(c, NULL, NULL, NULL, k) == 1 &&
       EVP_DigestSign(c, sig, &sl, (const unsigned char *)msg, mn) == 1 && sl == 64;
  EVP_MD_CTX_free(c);
  EVP_PKEY_free(k);
  if (!ok) return luaL_error(L, "ed25519_sign: libcrypto failed");
  lua_pushlstring(L, (const char *)sig, 64);
  return 1;
}

/* core.ed25519_verify(public_pem, msg, sig) -> true | false | nil, err, "KEY" */
static int l_ed25519_verify(lua_State *L) {
  size_t n, mn, sn;
  const char *pem = luaL_checklstring(L, 1, &n);
  const char *msg = luaL_checklstring(L, 2, &mn);
  const char *sig = luaL_checklstring(L, 3, &sn);
  EVP_MD_CTX *c;
  EVP_PKEY *k = read_key(pem, n, 0);
  int ok;
  if (!k) return key_error(L, "not an Ed25519 public key in PEM");
  if (sn != 64) {
    EVP_PKEY_free(k);
    lua_pushboolean(L, 0);
    return 1;
  }
  c = EVP_MD_CTX_new();
  ok = c && EVP_DigestVerifyInit(c, NULL, NULL, NULL, k) == 1 &&
       EVP_DigestVerify(c, (const unsigned char *)sig, 64, (const unsigned char *)msg, mn) == 1;
  EVP_MD_CTX_free(c);
  EVP_PKEY_free(k);
  lua_pushboolean(L, ok);
  return 1;
}

void ga_open_digest(lua_State *L) {
  static const luaL_Reg fns[] = {
    { "sha256", l_sha256 },
    { "ed25519_keygen", l_ed25519_keygen },
    { "ed25519_public", l_ed25519_public },
    { "ed25519_sign", l_ed25519_sign },
    { "ed25519_verify", l_ed25519_verify },
    { NULL, NULL },
  };
  const luaL_Reg *f;
  for (f = fns; f->name; f++) {
    lua_pushcfunction(L, f->func);
    lua_setfield(L, -2, f->name);
  }
}
