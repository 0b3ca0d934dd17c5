#!/bin/sh
# make check: the reliability gate. Runs
#   1. the busted suite under Lua 5.4 and LuaJIT against the AddressSanitizer +
#      UBSan builds of genaudit.core (build/asan54, build/asanjit; busted tasks
#      asan54/asanjit in .busted), libasan preloaded into the interpreter,
#      LeakSanitizer on (tools/lsan.supp suppresses only one-time allocations
#      of the interpreters/libcurl/OpenSSL). Every process's sanitizer report
#      goes to build/check/san.<pid>; any report fails the check. Left out:
#      #nginx specs (nginx's workers do not answer with libasan preloaded),
#      #postgresql specs (psql, which they run, deadlocks at exit with libasan
#      preloaded), rockspec_spec, install_spec and man_spec (they run make, gcc, install
#      and luarocks, whose own leaks LSan reports) and bench_spec (its timing targets mean nothing
#      under the sanitizers);
#   2. the fuzz corpora and regression inputs replayed through the libFuzzer
#      harnesses (tools/fuzz.sh replay);
#   3. valgrind memcheck over the C-heavy specs (store, core, meter, http,
#      async, otel, verify_split) with the regular -O2 build: 0 errors, 0 definite leaks (specs
#      tagged #timing left out: their time budgets assume full speed).
# Prints one closing line "check: N passed, N failed, N skipped".
set -u
cd "$(dirname "$0")/.." || exit 2
BUSTED=${BUSTED:-/usr/bin/busted}
CC=${CC:-cc}
OUT=build/check
rm -rf "$OUT"
mkdir -p "$OUT"
total_p=0; total_f=0; total_s=0; rc=0

# Adds busted's summary in $1 to the totals; returns non-zero when it has none.
count() {
  line=$(grep -E ' successes / ' "$1" | tail -n 1)
  [ -n "$line" ] || return 1
  p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $4 + $7}'); s=$(echo "$line" | awk '{print $10}')
  total_p=$((total_p + p)); total_f=$((total_f + f)); total_s=$((total_s + s))
  [ "$f" -eq 0 ]
}

LIBASAN=$($CC -print-file-name=libasan.so)
SAN_LOG="$PWD/$OUT/san"
# intercept_tls_get_addr=0: GCC 12's LeakSanitizer records a bogus dynamic-TLS
# range (DTLS 0x2c-0x10000112e) for modules dlopen'd with their libraries'
# TLS, and its stop-the-world tracer then dies with SIGSEGV at exit, turning a
# clean CLI run into exit code 1. Not tracking DTLS can only add leak reports
# (fewer roots), never hide one.
for engine in lua5.4:asan54 luajit:asanjit; do
  interp=${engine%%:*}; task=${engine##*:}
  echo "== busted under $interp, genaudit.core built with ASan + UBSan (build/$task)"
  t0=$(date +%s)
  LD_PRELOAD="$LIBASAN" \
  ASAN_OPTIONS="detect_leaks=1:log_path=$SAN_LOG:log_exe_name=1:intercept_tls_get_addr=0" \
  LSAN_OPTIONS="suppressions=$PWD/tools/lsan.supp:print_suppressions=0" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$SAN_LOG" \
  GENAUDIT_BUILD="build/$task" \
    "$interp" "$BUSTED" -o plainTerminal --run="$task" --exclude-tags=nginx,postgresql --exclude-pattern=rockspec_spec --exclude-pattern=install_spec --exclude-pattern=man_spec --exclude-pattern=bench_spec \
    >"$OUT/busted-$task.log" 2>&1
  tail -n +1 "$OUT/busted-$task.log" | grep -vE '^[-+*.]+$' | grep -E 'successes|^(Failure|Error) ' | tail -n 20
  count "$OUT/busted-$task.log" || { echo "busted ($task) failed; see $OUT/busted-$task.log"; rc=1; }
  echo "   ($(( $(date +%s) - t0 )) s)"
done
# Reports are san.<executable>.<pid>. Every report from a Lua interpreter
# (genaudit's code runs there) fails the check, and so does any memory error
# or UB anywhere; a leak in a foreign tool a spec runs (cp, mktemp, sqlite3,
# ...) under the inherited LD_PRELOAD is not genaudit's and is only listed.
bad=0; foreign=""; tool_crash=""
for r in "$SAN_LOG".*; do
  [ -f "$r" ] || continue
  exe=$(basename "$r"); exe=${exe#san.}; exe=${exe%.*}
  # LeakSanitizer's own tracer crashing at exit ("Tracer caught signal",
  # "LeakSanitizer has encountered a fatal error", seen under load) is a
  # failure of the tool with no finding in it: listed, not counted. A report
  # with an actual leak, memory error or UB always counts.
  if grep -q "LeakSanitizer has encountered a fatal error" "$r" &&
     ! grep -qE "detected memory leaks|ERROR: AddressSanitizer|runtime error:" "$r"; then
    tool_crash="$tool_crash $(basename "$r")"; continue
  fi
  case "$exe" in
    lua*|luajit*) bad=1 ;;
    *) if grep -qE "ERROR: AddressSanitizer|runtime error:" "$r"; then bad=1; else foreign="$foreign $exe"; continue; fi ;;
  esac
  echo "--- sanitizer report $r"; head -n 80 "$r"
done
[ -n "$tool_crash" ] && echo "== LeakSanitizer itself crashed at exit (no finding; not counted):$tool_crash"
[ -n "$foreign" ] && echo "== leaks in foreign tools, not genaudit's (ignored):$(echo "$foreign" | tr ' ' '\n' | sort -u | tr '\n' ' ')"
if [ "$bad" -ne 0 ]; then
  total_f=$((total_f + 1)); rc=1
else
  echo "== sanitizers: no report from genaudit's processes"
fi

echo "== fuzz corpora and regression inputs"
if sh tools/fuzz.sh replay; then total_p=$((total_p + 1)); else total_f=$((total_f + 1)); rc=1; fi

echo "== valgrind memcheck (build/lua54)"
t0=$(date +%s)
valgrind -q --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=97 \
  --suppressions=tools/valgrind.supp --log-file="$OUT/valgrind.%p.log" \
  lua5.4 "$BUSTED" -o plainTerminal --run=lua54 --exclude-tags=timing spec/core_spec.lua spec/store_spec.lua spec/meter_spec.lua \
  spec/http_spec.lua spec/async_spec.lua spec/otel_spec.lua spec/verify_split_spec.lua >"$OUT/busted-valgrind.log" 2>&1
vrc=$?
grep -E 'successes|^(Failure|Error) ' "$OUT/busted-valgrind.log" | tail -n 20
count "$OUT/busted-valgrind.log" || { echo "busted under valgrind failed (rc $vrc)"; rc=1; }
if [ "$vrc" -ne 0 ] || grep -qE "ERROR SUMMARY: [1-9]|definitely lost: [1-9]" "$OUT"/valgrind.*.log 2>/dev/null \
   || [ -n "$(cat "$OUT"/valgrind.*.log 2>/dev/null)" ]; then
  echo "valgrind: errors or definite leaks (rc $vrc):"; cat "$OUT"/valgrind.*.log | head -n 80
  total_f=$((total_f + 1)); rc=1
else
  echo "valgrind: 0 errors, 0 definite leaks ($(( $(date +%s) - t0 )) s)"
fi

echo "check: $total_p passed, $total_f failed, $total_s skipped"
exit $rc
