#!/bin/sh
# Builds the libFuzzer harnesses in fuzz/ (clang, -fsanitize=fuzzer with
# ASan + UBSan) into build/fuzz/, then:
#   tools/fuzz.sh build    only builds
#   tools/fuzz.sh run      fuzzes each target for FUZZ_SECONDS (default 30) from
#                          fuzz/corpus/<target>; new inputs go to build/fuzz/corpus/,
#                          crashes to build/fuzz/artifacts/ (exit 1 when any)
#   tools/fuzz.sh replay   runs every seed and regression input once (make check)
# FUZZ_TARGETS limits the targets (space-separated names without fuzz_).
# Compiler flags come from the Makefile's variables when set (DEP_CFLAGS,
# DEP_LIBS, LUA54_INCDIR), else from pkg-config.
set -u
cd "$(dirname "$0")/.." || exit 2
mode=${1:-run}
FUZZ_CC=${FUZZ_CC:-clang}
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
TARGETS=${FUZZ_TARGETS:-"decimal json jsondec row ulid retry_after pgsql sse bpe"}
PC=${PKG_CONFIG:-pkg-config}
LUA54_INCDIR=${LUA54_INCDIR:-$($PC --cflags lua5.4)}
DEPS="sqlite3 libcurl libcrypto libpcre2-8"
$PC --exists libpq 2>/dev/null && DEPS="$DEPS libpq"
DEP_CFLAGS=${DEP_CFLAGS:-$($PC --cflags $DEPS)}
DEP_LIBS=${DEP_LIBS:-"$($PC --libs $DEPS) -lm -pthread"}
LUA_LIBS=$($PC --libs lua5.4) # the fuzzers only: never linked into the module
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
CFLAGS="-g -O1 -fno-omit-frame-pointer -Wall -Wextra -Werror -Wno-unused-parameter -std=gnu99"
OUT=build/fuzz

build() {
  mkdir -p "$OUT/obj" || return 1
  if ! command -v "$FUZZ_CC" >/dev/null 2>&1; then
    echo "fuzz: $FUZZ_CC not found (make deps installs clang and libclang-rt-14-dev)" >&2
    return 1
  fi
  objs=""
  for src in csrc/*.c; do
    obj="$OUT/obj/$(basename "$src" .c).o"
    stale=0 # any header newer than the object (ga_aux.h, ga_compat.h, ga_private.h)
    for h in csrc/*.h; do [ "$h" -nt "$obj" ] && stale=1; done
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ "$stale" = 1 ]; then
      # shellcheck disable=SC2086
      $FUZZ_CC $CFLAGS $SAN -fsanitize=fuzzer-no-link $LUA54_INCDIR $DEP_CFLAGS -c "$src" -o "$obj" || return 1
    fi
    objs="$objs $obj"
  done
  for t in $TARGETS; do
    bin="$OUT/fuzz_$t"
    # shellcheck disable=SC2086
    $FUZZ_CC $CFLAGS $SAN -fsanitize=fuzzer $LUA54_INCDIR $DEP_CFLAGS -o "$bin" "fuzz/fuzz_$t.c" $objs \
      $DEP_LIBS $LUA_LIBS || return 1
  done
}

build || exit 1
[ "$mode" = build ] && exit 0
rc=0
for t in $TARGETS; do
  seeds="fuzz/corpus/$t"
  regress="fuzz/regressions/$t"
  dirs="$seeds"
  [ -d "$regress" ] && dirs="$dirs $regress"
  if [ "$mode" = replay ]; then
    n=$(find $dirs -type f | wc -l)
    # shellcheck disable=SC2086
    if "$OUT/fuzz_$t" -runs=0 $dirs >"$OUT/replay_$t.log" 2>&1; then
      echo "fuzz replay: $t: $n inputs ok"
    else
      echo "fuzz replay: $t FAILED:"; tail -n 40 "$OUT/replay_$t.log"; rc=1
    fi
  else
    mkdir -p "$OUT/corpus/$t" "$OUT/artifacts"
    echo "== fuzz_$t for ${FUZZ_SECONDS}s"
    # shellcheck disable=SC2086
    if "$OUT/fuzz_$t" -max_total_time="$FUZZ_SECONDS" -max_len=8192 -print_final_stats=1 \
        -artifact_prefix="$OUT/artifacts/$t-" "$OUT/corpus/$t" $dirs >"$OUT/run_$t.log" 2>&1; then
      grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$OUT/run_$t.log" | tr '\n' ' '; echo
    else
      echo "fuzz_$t FOUND A FAILURE (input in $OUT/artifacts/):"; grep -v "^#" "$OUT/run_$t.log" | tail -n 40; rc=1
    fi
  fi
done
exit $rc
