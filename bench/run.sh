#!/bin/sh
# bench/run.sh — what `make bench` runs once the C helpers are built: the
# machine facts, then every benchmark in bench/ under $LUA (default lua5.4),
# then the persist, async, pg_persist and overhead benchmarks again under $LUAJIT (copy
# runs under $LUA only: bin/genaudit is a lua5.4 script; openresty_load too:
# its load runs inside nginx's LuaJIT whatever drives it; scale too: the scale
# curve's stores are the same whatever the engine). Each
# prints "BENCH name=... k=v ..." lines followed by human-readable detail;
# BENCH_SIZE=small gives the quick run the specs use. The whole output is also
# kept in build/bench/last-run.txt. Scratch stores live in a temporary
# directory under $TMPDIR (default /tmp), removed at the end.
# bench/pg_persist.lua, bench/pg_analytics.lua and bench/scale.lua write to $GENAUDIT_PG_URL
# (pg_analytics under $LUA only: its figures are PostgreSQL's); when it is unset, a
# throwaway server is started with tools/pg-test-server.sh (port
# $GENAUDIT_PG_PORT, default 54329) and released at the end.
# Exit status: 0, or the first failing benchmark's.
set -u
cd "$(dirname "$0")/.." || exit 2
LUA=${LUA:-lua5.4}
LUAJIT=${LUAJIT:-luajit}
mkdir -p build/bench
BENCH_TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/genaudit-bench.XXXXXX") || exit 2
export BENCH_TMPDIR
pg_started=
if [ -z "${GENAUDIT_PG_URL:-}" ]; then
  if GENAUDIT_PG_URL=$(sh tools/pg-test-server.sh acquire $$); then
    pg_started=1
    export GENAUDIT_PG_URL
  else
    echo "tools/pg-test-server.sh could not start PostgreSQL: bench/pg_persist.lua, pg_analytics.lua and scale.lua will fail"
    unset GENAUDIT_PG_URL
  fi
fi
trap 'rm -rf "$BENCH_TMPDIR"; [ -z "$pg_started" ] || sh tools/pg-test-server.sh release $$' EXIT
trap 'exit 130' INT TERM
rcfile="$BENCH_TMPDIR/rc"
echo 0 >"$rcfile"

main() {
  start=$(date +%s)
  echo "command: make bench  (sh bench/run.sh, LUA=$LUA LUAJIT=$LUAJIT, BENCH_SIZE=${BENCH_SIZE:-full})"
  "$LUA" bench/machine.lua || return 1
  for b in persist_sync async pg_persist overhead analytics pg_analytics memory copy stream openresty_load tokens scale; do
    "$LUA" "bench/$b.lua" || { echo "bench/$b.lua failed under $LUA"; return 1; }
  done
  for b in persist_sync async pg_persist overhead stream; do
    "$LUAJIT" "bench/$b.lua" || { echo "bench/$b.lua failed under $LUAJIT"; return 1; }
  done
  echo
  echo "make bench: done in $(( $(date +%s) - start )) s"
}

{ main || echo 1 >"$rcfile"; } 2>&1 | tee build/bench/last-run.txt
exit "$(cat "$rcfile")"
