/* ga_fs.c — the two filesystem facts the Lua layer needs without extra
 * dependencies: the entries of a directory (migrations, script folders) and a
 * file's modification time in ns (script reload on change). */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include "ga_private.h"

static int cmp_names(lua_State *L) {
  lua_pushboolean(L, strcmp(lua_tostring(L, 1), lua_tostring(L, 2)) < 0);
  return 1;
}

/* core.listdir(path) -> sorted array of entry names (no . and ..) | nil, err, code */
static int l_listdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR *d;
  struct dirent *e;
  int n = 0;
  lua_newtable(L);
  d = opendir(path);
  if (!d) return ga_fail(L, "IO", "cannot list '%s': %s", path, strerror(errno));
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    lua_pushstring(L, e->d_name); /* may raise on OOM: d leaks only then */
    lua_rawseti(L, -2, ++n);
  }
  closedir(d);
  /* sort with table.sort semantics but without depending on the table library */
  lua_getglobal(L, "table");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, -3);
    lua_pushcfunction(L, cmp_names);
    lua_call(L, 2, 0);
  }
  lua_pop(L, 1);
  return 1;
}

/* core.file_version(path) -> "sec.nsec:inode" (changes when the file is rewritten), size | nil, err, code
 * A string, so LuaJIT's doubles never round it. */
static int l_mtime(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  char buf[48];
  if (stat(path, &st) != 0) return ga_fail(L, "IO", "cannot stat '%s': %s", path, strerror(errno));
  snprintf(buf, sizeof buf, "%lld.%09ld:%lld", (long long)st.st_mtim.tv_sec, (long)st.st_mtim.tv_nsec,
           (long long)st.st_ino);
  lua_pushstring(L, buf);
  ga_pushint64(L, (long long)st.st_size);
  return 2;
}

/* core.read_file(path) -> contents (any bytes) | nil, "IO: cannot read 'path': reason", "IO" */
static int l_read_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_Buffer b;
  char chunk[8192];
  size_t n;
  int failed;
  FILE *f = fopen(path, "rb");
  if (!f) return ga_fail(L, "IO", "cannot read '%s': %s", path, strerror(errno));
  luaL_buffinit(L, &b); /* may raise only on OOM; then f leaks, as in liolib */
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) luaL_addlstring(&b, chunk, n);
  failed = ferror(f);
  fclose(f);
  if (failed) return ga_fail(L, "IO", "cannot read '%s': read error", path);
  luaL_pushresult(&b);
  return 1;
}

/* core.write_new_file(path, bytes, mode) -> true | nil, "IO: ...", "IO"
 * Creates path (never replaces an existing file: O_EXCL) with permissions
 * mode (e.g. 384 = 0600 for a private key, before anything is written),
 * writes every byte and syncs it. A partial file is removed. */
static int l_write_new_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t n, off = 0;
  const char *p = luaL_checklstring(L, 2, &n);
  lua_Integer mode = luaL_checkinteger(L, 3);
  int fd, e = 0;
  if (mode < 0 || mode > 0777) return luaL_argerror(L, 3, "mode must be between 0 and 0777");
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode);
  if (fd < 0) return ga_fail(L, "IO", "cannot create '%s': %s", path, strerror(errno));
  while (off < n) {
    ssize_t w = write(fd, p + off, n - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      e = errno ? errno : EIO;
      break;
    }
    off += (size_t)w;
  }
  if (!e && fsync(fd) != 0) e = errno;
  if (close(fd) != 0 && !e) e = errno;
  if (e) {
    unlink(path);
    return ga_fail(L, "IO", "cannot write '%s': %s", path, strerror(e));
  }
  lua_pushboolean(L, 1);
  return 1;
}

void ga_open_fs(lua_State *L) {
  lua_pushcfunction(L, l_write_new_file);
  lua_setfield(L, -2, "write_new_file");
  lua_pushcfunction(L, l_read_file);
  lua_setfield(L, -2, "read_file");
  lua_pushcfunction(L, l_listdir);
  lua_setfield(L, -2, "listdir");
  lua_pushcfunction(L, l_mtime);
  lua_setfield(L, -2, "file_version");
}
