#!/bin/sh
# tools/pg-test-server.sh start|stop|restart|status|acquire PID|release PID —
# a throwaway PostgreSQL server for the specs: initdb into a private
# directory, listen on 127.0.0.1:$GENAUDIT_PG_PORT (54329) only, trust auth,
# database genaudit_test. Idempotent: `start` on a running server only prints
# its URL; `stop` on a stopped one does nothing. `start` prints the URL on
# stdout, nothing else. `acquire PID` starts it if needed and records PID as
# a user; `release PID` stops it once no live user is left, so two test runs
# at once share one server (tools/run-tests.sh uses these).
# As root, the server runs as the postgres user (initdb refuses root).
set -eu
PORT=${GENAUDIT_PG_PORT:-54329}
DIR=${GENAUDIT_PG_DIR:-/tmp/genaudit-pgtest-$PORT}
DB=genaudit_test
URL="postgresql://postgres@127.0.0.1:$PORT/$DB"

PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/pg_ctl" ]; then
  echo "pg-test-server: no PostgreSQL server binaries (apt-get install postgresql, or make deps)" >&2
  exit 1
fi

# Runs a server binary as the owner of the data directory.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd /tmp && runuser -u postgres -- "$@")
  else
    (cd /tmp && "$@")
  fi
}

running() {
  [ -f "$DIR/data/PG_VERSION" ] && as_owner "$PGBIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1
}

start() {
  if running; then
    echo "$URL"
    return 0
  fi
  if [ ! -f "$DIR/data/PG_VERSION" ]; then
    rm -rf "$DIR"
    mkdir -p "$DIR"
    chmod 0700 "$DIR"
    [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$DIR"
    if ! as_owner "$PGBIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
         --no-sync >"$DIR/initdb.log" 2>&1; then
      echo "pg-test-server: initdb failed:" >&2
      cat "$DIR/initdb.log" >&2
      exit 1
    fi
  fi
  if ! as_owner "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 30 \
       -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null; then
    echo "pg-test-server: the server did not start:" >&2
    tail -n 20 "$DIR/server.log" >&2
    exit 1
  fi
  if ! "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tAc \
       "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
    "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB"
  fi
  echo "$URL"
}

stop() {
  if running; then
    as_owner "$PGBIN/pg_ctl" -D "$DIR/data" -m fast -w -t 30 stop >/dev/null
  fi
  rm -rf "$DIR"
}

# A fast restart (the specs use it to cut every connection mid-run).
restart() {
  running || { echo "pg-test-server: not running" >&2; exit 1; }
  as_owner "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -m fast -w -t 30 \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off" restart >/dev/null
}

acquire() {
  start
  mkdir -p "$DIR/holders"
  : >"$DIR/holders/$1"
}

release() {
  rm -f "$DIR/holders/$1"
  for h in "$DIR"/holders/*; do
    [ -e "$h" ] || continue
    if kill -0 "${h##*/}" 2>/dev/null; then return 0; fi
    rm -f "$h"
  done
  stop
}

case "${1:-}" in
  start) start ;;
  acquire) [ -n "${2:-}" ] || { echo "usage: $0 acquire PID" >&2; exit 2; }; acquire "$2" ;;
  release) [ -n "${2:-}" ] || { echo "usage: $0 release PID" >&2; exit 2; }; release "$2" ;;
  stop) stop ;;
  restart) restart ;;
  status) if running; then echo "$URL"; else exit 3; fi ;;
  *) echo "usage: $0 start|stop|restart|status|acquire PID|release PID" >&2; exit 2 ;;
esac
