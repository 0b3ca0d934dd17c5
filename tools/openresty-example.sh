#!/bin/sh
# tools/openresty-example.sh PREFIX — renders examples/openresty/nginx.conf
# into a runnable nginx prefix: PREFIX/nginx.conf with every @...@ filled in,
# PREFIX/tmp/, and the database's directory writable by the user the workers
# run as (nginx started as root without a `user` directive: nobody).
# `make openresty-example` runs it for build/openresty-example.
#
# Settings (environment): EXAMPLE_PORT (8080), EXAMPLE_WORKERS (2),
# EXAMPLE_DB (PREFIX/db/audit.db), EXAMPLE_TEMPLATES / EXAMPLE_RULES (the
# checkout's examples/templates and examples/rules), EXAMPLE_USER (the worker
# user: nobody as root, else yourself).
set -eu
if [ $# -ne 1 ]; then
  echo "usage: $0 PREFIX" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1/tmp"
PREFIX=$(cd "$1" && pwd)
PORT=${EXAMPLE_PORT:-8080}
WORKERS=${EXAMPLE_WORKERS:-2}
DB=${EXAMPLE_DB:-$PREFIX/db/audit.db}
TEMPLATES=${EXAMPLE_TEMPLATES:-$ROOT/examples/templates}
RULES=${EXAMPLE_RULES:-$ROOT/examples/rules}
if [ "$(id -u)" -eq 0 ]; then USER_=${EXAMPLE_USER:-nobody}; else USER_=${EXAMPLE_USER:-$(id -un)}; fi

# the database's directory: created, and owned by the worker user when we can
DBDIR=$(dirname "$DB")
mkdir -p "$DBDIR"
if [ "$(id -u)" -eq 0 ]; then chown "$USER_" "$DBDIR"; fi

esc() { printf '%s' "$1" | sed 's/[\\|&]/\\&/g'; }
sed -e "s|@PREFIX@|$(esc "$PREFIX")|g" -e "s|@ROOT@|$(esc "$ROOT")|g" -e "s|@PORT@|$(esc "$PORT")|g" \
    -e "s|@DB@|$(esc "$DB")|g" -e "s|@TEMPLATES@|$(esc "$TEMPLATES")|g" -e "s|@RULES@|$(esc "$RULES")|g" \
    -e "s|@WORKERS@|$(esc "$WORKERS")|g" "$ROOT/examples/openresty/nginx.conf" > "$PREFIX/nginx.conf.tmp"
if grep -n '@[A-Z_]*@' "$PREFIX/nginx.conf.tmp" >&2; then
  echo "$0: placeholders left unfilled in $PREFIX/nginx.conf" >&2
  rm -f "$PREFIX/nginx.conf.tmp"
  exit 1
fi
mv "$PREFIX/nginx.conf.tmp" "$PREFIX/nginx.conf"
echo "rendered $PREFIX/nginx.conf (port $PORT, database $DB writable by $USER_)"
echo "start:  nginx -p $PREFIX -c $PREFIX/nginx.conf -g 'daemon off;'"
