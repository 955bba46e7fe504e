#!/usr/bin/env bash
# build.sh - configure (once) and build walrelay with meson and ninja.
#
#   scripts/build.sh              build/        the normal build
#   scripts/build.sh --sanitize   build-asan/   AddressSanitizer + UndefinedBehaviorSanitizer
#   scripts/build.sh --release    build-release/  -O3, no debug info (what a packager may
#                                 choose; GCC warns differently at -O3, and -Werror holds)
#
# Env NINJA_JOBS=N limits parallel jobs.
set -euo pipefail

cd "$(dirname "$0")/.."

dir=build
opts=()
case "${1:-}" in
"") ;;
--sanitize)
    dir=build-asan
    # shellcheck disable=SC2054 # the comma is part of the meson value
    opts=(-Db_sanitize=address,undefined -Db_lundef=false)
    ;;
--release)
    dir=build-release
    opts=(-Dbuildtype=release)
    ;;
-h | --help)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "build.sh: unknown option \"$1\" (expected --sanitize or --release)" >&2
    exit 2
    ;;
esac

if [ "$dir" = build-asan ]; then
    # clang: GCC 12 with -fsanitize=undefined reports false -Wformat-truncation and
    # -Wnonnull warnings, which -Werror turns into errors; clang's runtime comes from
    # libclang-rt-14-dev (scripts/setup.sh).
    export CC="${CC:-clang}"
fi
want="CC=${CC:-} ${opts[*]}"

if [ ! -f "$dir/build.ninja" ]; then
    if [ -d "$dir" ]; then
        # a half-configured directory (interrupted setup): start over
        meson setup --wipe "$dir" "${opts[@]}"
    else
        meson setup "$dir" "${opts[@]}"
    fi
elif [ "${#opts[@]}" -gt 0 ]; then
    # reconfigure from scratch if the compiler or the options changed since setup
    if [ "$(cat "$dir/.walrelay-setup" 2>/dev/null)" != "$want" ]; then
        meson setup --wipe "$dir" "${opts[@]}"
    fi
fi
if [ "${#opts[@]}" -gt 0 ]; then
    echo "$want" >"$dir/.walrelay-setup"
fi

ninja -C "$dir" ${NINJA_JOBS:+-j "$NINJA_JOBS"}
