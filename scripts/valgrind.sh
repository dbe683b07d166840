#!/usr/bin/env bash
# valgrind.sh BUILD_DIR [TEST...] - run the Criterion test binaries under
# valgrind memcheck and fail on any memory error or definite/indirect leak.
#
# Why the log files: Criterion runs every test in a worker process that it
# re-executes from the test binary ("boxfort-worker"). valgrind follows it
# with --trace-children=yes and finds the errors there, but Criterion
# ignores a worker's exit status once the test has reported success, so
# --error-exitcode alone never fails the run. Each process therefore logs to
# its own file (%p) and this script fails when any log reports errors.
#
# TEST names an area (error, loop, ...); default: every tests/test_* binary.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 BUILD_DIR [AREA...]" >&2
    exit 2
fi
# Absolute: valgrind's --log-file is opened by every traced child, and a
# child may have changed directory (em_popen's cwd option).
build=$(cd "$1" && pwd)
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ $# -gt 0 ]; then
    bins=()
    for area in "$@"; do
        bins+=("$build/tests/test_$area")
    done
else
    mapfile -t bins < <(find "$build/tests" -maxdepth 1 -type f \
        -name 'test_*' -perm -u+x | sort)
fi
if [ "${#bins[@]}" -eq 0 ]; then
    echo "valgrind.sh: no test binaries in $build/tests" >&2
    exit 1
fi

logroot="$build/valgrind"
rm -rf "$logroot"
mkdir -p "$logroot"

# valgrind_run NAME BINARY: runs one Criterion binary under memcheck with a
# log per process in $logroot/NAME; sets vg_status and vg_bad (logs that
# report errors).
valgrind_run()
{
    local name=$1 bin=$2
    local logs="$logroot/$name"
    mkdir -p "$logs"
    vg_status=0
    # Reference peers the TLS interop tests start (nginx, openssl) are not
    # ours to check: nginx keeps memory until exit, both are slow here.
    # --jobs 2: Criterion warns that reports "might appear confusing" under
    # valgrind, but each worker writes its own log, so they do not mix.
    valgrind --leak-check=full --error-exitcode=1 \
        --errors-for-leak-kinds=definite,indirect --show-leak-kinds=all \
        --trace-children=yes --num-callers=30 \
        --trace-children-skip='*/nginx,*/openssl' \
        --suppressions="$here/valgrind.supp" \
        --log-file="$logs/%p.log" \
        "$bin" --jobs 2 --short-filename || vg_status=$?
    vg_bad=$(grep -lE 'ERROR SUMMARY: [1-9]' "$logs"/*.log || true)
}

# The canary leaks on purpose (cmake/canary.c): unless valgrind reports it,
# a clean result below would mean nothing.
canary="$build/canary/canary_leak"
if [ ! -x "$canary" ]; then
    echo "valgrind.sh: $canary is missing" >&2
    exit 1
fi
echo "== valgrind canary_leak (must report a leak)"
valgrind_run canary_leak "$canary" >/dev/null 2>&1
if [ -z "$vg_bad" ]; then
    echo "valgrind.sh: the canary's leak went unreported; checks are void" >&2
    exit 1
fi
echo "-- ok: the leak was caught"

# The TLS tests read certificates that ctest's tls_certs fixture makes;
# this script runs the binaries itself, so it makes them too.
if [ -x "$build/tests/tls_certgen" ]; then
    "$build/tests/tls_certgen" "$build/tests/certs" >/dev/null
fi

passed=0
failed=0
for bin in "${bins[@]}"; do
    name=$(basename "$bin")
    echo "== valgrind $name"
    valgrind_run "$name" "$bin"
    if [ "$vg_status" -ne 0 ] || [ -n "$vg_bad" ]; then
        failed=$((failed + 1))
        echo "-- FAIL $name (exit $vg_status)"
        for log in $vg_bad; do
            echo "---- $log"
            cat "$log"
        done
    else
        passed=$((passed + 1))
        echo "-- ok $name ($(find "$logroot/$name" -name '*.log' | wc -l) processes)"
    fi
done

echo "valgrind: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
