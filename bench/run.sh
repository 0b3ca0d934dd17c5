#!/bin/sh
# bench/run.sh — what `make bench` runs once the C helpers are built: the
# machine facts, then every benchmark in bench/ under $LUA (default lua5.4),
# then the persist, async and overhead benchmarks again under $LUAJIT (copy
# runs under $LUA only: bin/genaudit is a lua5.4 script; openresty_load too:
# its load runs inside nginx's LuaJIT whatever drives it). Each
# prints "BENCH name=... k=v ..." lines followed by human-readable detail;
# BENCH_SIZE=small gives the quick run the specs use. The whole output is also
# kept in build/bench/last-run.txt. Scratch stores live in a temporary
# directory under $TMPDIR (default /tmp), removed at the end.
# Exit status: 0, or the first failing benchmark's.
set -u
cd "$(dirname "$0")/.." || exit 2
LUA=${LUA:-lua5.4}
LUAJIT=${LUAJIT:-luajit}
mkdir -p build/bench
BENCH_TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/genaudit-bench.XXXXXX") || exit 2
export BENCH_TMPDIR
trap 'rm -rf "$BENCH_TMPDIR"' EXIT
trap 'exit 130' INT TERM
rcfile="$BENCH_TMPDIR/rc"
echo 0 >"$rcfile"

main() {
  start=$(date +%s)
  echo "command: make bench  (sh bench/run.sh, LUA=$LUA LUAJIT=$LUAJIT, BENCH_SIZE=${BENCH_SIZE:-full})"
  "$LUA" bench/machine.lua || return 1
  for b in persist_sync async overhead analytics memory copy stream openresty_load; do
    "$LUA" "bench/$b.lua" || { echo "bench/$b.lua failed under $LUA"; return 1; }
  done
  for b in persist_sync async overhead stream; do
    "$LUAJIT" "bench/$b.lua" || { echo "bench/$b.lua failed under $LUAJIT"; return 1; }
  done
  echo
  echo "make bench: done in $(( $(date +%s) - start )) s"
}

{ main || echo 1 >"$rcfile"; } 2>&1 | tee build/bench/last-run.txt
exit "$(cat "$rcfile")"
