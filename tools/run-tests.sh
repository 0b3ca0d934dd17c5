#!/bin/sh
# Runs the busted suite under Lua 5.4 and under LuaJIT (each with its own
# build of genaudit.core) and prints one closing line: "N passed, N failed".
# Exit status: non-zero when any run failed.
set -u
cd "$(dirname "$0")/.." || exit 2
BUSTED=${BUSTED:-/usr/bin/busted}
# PostgreSQL for the #postgresql specs: started here (and stopped on exit,
# failures included) unless GENAUDIT_PG_URL names a server already or
# GENAUDIT_SKIP_PG=1. If it cannot start, those specs fail and say why.
if [ -z "${GENAUDIT_PG_URL:-}" ] && [ "${GENAUDIT_SKIP_PG:-}" != "1" ]; then
  if GENAUDIT_PG_URL=$(sh tools/pg-test-server.sh acquire $$); then
    export GENAUDIT_PG_URL
    trap 'sh tools/pg-test-server.sh release $$' EXIT
    trap 'exit 130' INT TERM
  else
    echo "tools/pg-test-server.sh could not start PostgreSQL: the #postgresql specs will fail"
    unset GENAUDIT_PG_URL
  fi
fi
total_p=0; total_f=0; total_s=0; rc=0
for engine in lua5.4:lua54 luajit:luajit; do
  interp=${engine%%:*}; dir=${engine##*:}
  echo "== busted under $interp"
  out=$(mktemp)
  GENAUDIT_BUILD="build/$dir" "$interp" "$BUSTED" -o plainTerminal --run="$dir" "$@" 2>&1 | tee "$out"
  r=$?
  # busted's own exit code: the pipeline hides it, so re-derive from its summary
  line=$(grep -aE '[0-9]+ success(es)? / ' "$out" | tail -n 1)
  if [ -z "$line" ]; then
    echo "busted under $interp printed no summary"; rc=1
  else
    p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $4 + $7}'); s=$(echo "$line" | awk '{print $10}')
    total_p=$((total_p + p)); total_f=$((total_f + f)); total_s=$((total_s + s))
    [ "$f" -eq 0 ] || rc=1
  fi
  [ "$r" -eq 0 ] || true
  rm -f "$out"
done
echo "$total_p passed, $total_f failed, $total_s skipped"
exit $rc
