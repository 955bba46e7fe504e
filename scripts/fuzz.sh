#!/bin/sh
# fuzz.sh - builds the libFuzzer targets (clang, ASan + UBSan) and runs one or all of them.
#
# usage: scripts/fuzz.sh TARGET|all SECONDS [extra libFuzzer arguments...]
#   TARGET: pgoutput stream copytext pgtype ipc config esfilter sinkstate (or fuzz_pgoutput, ...)
#   scripts/fuzz.sh pgoutput 60      runs fuzz_pgoutput for 60 s
#   scripts/fuzz.sh all 10           runs each target for 10 s
#
# NOTES: the build directory is build-fuzz (FUZZ_BUILD_DIR overrides), configured once with
# CC=clang -Dfuzz=true -Db_lundef=false, ASan/UBSan and libFuzzer coverage on the libraries
# too. Seeds are read from tests/fuzz/corpus/<target>/ (never written); new inputs go to
# BUILD/fuzz-corpus/<target>/ and crashes to BUILD/fuzz-artifacts/<target>-crash-*.
# Exits 0 when every requested target built and ran without a crash, 1 otherwise.
set -u

cd "$(dirname "$0")/.." || exit 1
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
ALL="pgoutput stream copytext pgtype ipc config esfilter sinkstate"

if [ $# -lt 2 ]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
what=$1
secs=$2
shift 2
case $secs in
'' | *[!0-9]*)
    echo "fuzz.sh: SECONDS must be a whole number, not \"$secs\"" >&2
    exit 2
    ;;
esac

if [ "$what" = all ]; then
    targets=$ALL
else
    t=${what#fuzz_}
    case " $ALL " in
    *" $t "*) targets=$t ;;
    *)
        echo "fuzz.sh: unknown target \"$what\" (expected one of: $ALL, all)" >&2
        exit 2
        ;;
    esac
fi

if [ ! -f "$BUILD/build.ninja" ]; then
    CC=clang meson setup "$BUILD" -Dfuzz=true -Db_lundef=false \
        -Db_sanitize=address,undefined \
        -Dc_args='-fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined -fno-omit-frame-pointer' \
        >"$BUILD.setup.log" 2>&1 || {
        cat "$BUILD.setup.log" >&2
        echo "fuzz.sh: meson setup of $BUILD failed" >&2
        exit 1
    }
    rm -f "$BUILD.setup.log"
fi

status=0
summary=""
for t in $targets; do
    exe="$BUILD/tests/fuzz/fuzz_$t"
    if ! ninja -C "$BUILD" "tests/fuzz/fuzz_$t" >"$BUILD/fuzz_$t.build.log" 2>&1; then
        tail -n 30 "$BUILD/fuzz_$t.build.log" >&2
        echo "fuzz.sh: fuzz_$t does not build (log: $BUILD/fuzz_$t.build.log)" >&2
        summary="$summary
  fuzz_$t: BUILD FAILED"
        status=1
        continue
    fi
    work="$BUILD/fuzz-corpus/$t"
    seeds="tests/fuzz/corpus/$t"
    mkdir -p "$work" "$BUILD/fuzz-artifacts"
    [ -d "$seeds" ] || seeds=""
    echo "fuzz.sh: running fuzz_$t for ${secs}s" >&2
    # one job; inputs over 1 MB are pointless for these parsers
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
        "$exe" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$BUILD/fuzz-artifacts/$t-" "$@" \
        "$work" $seeds
    rc=$?
    if [ $rc -eq 0 ]; then
        summary="$summary
  fuzz_$t: ok (${secs}s)"
    else
        summary="$summary
  fuzz_$t: FAILED (exit $rc, see $BUILD/fuzz-artifacts/$t-*)"
        status=1
    fi
done
echo "fuzz.sh: summary:$summary" >&2
exit $status
