#!/bin/sh
# Installs the Debian packages genaudit needs to build, test and demo, when missing.
# Idempotent: prints nothing to do when every package is already installed.
# (Node.js and npm, which the browser specs use through tools/node-deps.sh, come with the machine;
# Debian's own npm would conflict with that Node.js, so it is not listed.)
set -eu
PKGS="build-essential pkg-config lua5.4 liblua5.4-dev lua-busted lua-cjson lua-socket
lua-filesystem lua-argparse lua-check luajit2 libluajit2-5.1-dev libsqlite3-dev sqlite3
libcurl4-openssl-dev libssl-dev openssl python3 luarocks valgrind curl
nginx libnginx-mod-http-lua lua-resty-core lua-resty-lrucache
postgresql libpq-dev libpcre2-dev
lua-sql-sqlite3 time prometheus wrk
clang libclang-rt-14-dev
chromium"
missing=""
for p in $PKGS; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing="$missing $p"
  fi
done
if [ -z "$missing" ]; then
  echo "deps: all Debian packages present"
  exit 0
fi
echo "deps: installing:$missing"
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: not root; run as root: apt-get install -y --no-install-recommends$missing" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
