#!/usr/bin/env bash
# results.sh - regenerates bench/RESULTS.md (and bench/ratios.png) in one go.
#
#   bench/results.sh [--quick] [--bench-dir DIR] [-- run.sh options]
#
# Runs the echo comparison (bench/run.sh) and the micro-benchmarks
# (bench/micro.sh) on this machine and writes what a reader needs to judge
# the numbers: the machine (CPU, cores, kernel, library versions), the exact
# commands, the tables and the chart. `make bench` calls it; the committed
# RESULTS.md is the last full run, so anyone can compare against it.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_DIR="$SCRIPT_DIR/../build-bench/bench"
QUICK=""
RUN_ARGS=()

while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=--quick ;;
    --bench-dir) BENCH_DIR=$2; shift ;;
    --) shift; RUN_ARGS=("$@"); break ;;
    *) echo "results.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)

machine_section()
{
    local cpu cores kernel
    cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
    cores=$(nproc)
    kernel=$(uname -r)
    echo "## Machine"
    echo
    echo "- CPU: $cpu, $cores cores available"
    echo "- Kernel: $kernel"
    echo "- Compiler: $(cc --version | head -n1)"
    echo "- Rivals: libuv $(dpkg-query -W -f='${Version}' libuv1-dev 2>/dev/null)," \
        "libevent $(dpkg-query -W -f='${Version}' libevent-dev 2>/dev/null)," \
        "libev $(dpkg-query -W -f='${Version}' libev-dev 2>/dev/null)"
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'), load average before the run:" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
    echo
}

out="$SCRIPT_DIR/RESULTS.md.new"
run_cmd=(bash "$SCRIPT_DIR/run.sh" --bench-dir "$BENCH_DIR" $QUICK "${RUN_ARGS[@]}")
micro_cmd=(bash "$SCRIPT_DIR/micro.sh" --bench-dir "$BENCH_DIR" $QUICK)

{
    echo "# Benchmark results"
    echo
    echo "Regenerate with \`make bench\` (full) or \`make bench BENCH_ARGS=--quick\`."
    echo "Ratios are computed within a round (servers run back to back, pinned: server on"
    echo "CPU 0, load client on CPU 1) and reported as the median over rounds with the"
    echo "min..max range. \"cpu\" is the server's CPU time per echoed message (user +"
    echo "system, from /proc/PID/task/*/schedstat); on 2 cores the load client saturates"
    echo "its core first, so CPU per message is the number that separates servers."
    echo
    machine_section
    echo "## Echo servers"
    echo
    echo "Command: \`${run_cmd[*]#"$SCRIPT_DIR/"}\`"
    echo
    "${run_cmd[@]}"
    echo
    if [ -f "$BENCH_DIR/ratios.png" ]; then
        cp "$BENCH_DIR/ratios.png" "$SCRIPT_DIR/ratios.png"
        echo "![libem CPU per message relative to the best rival](ratios.png)"
        echo
    fi
    echo "## Micro-benchmarks (libem alone, timers against libuv)"
    echo
    echo "Command: \`${micro_cmd[*]#"$SCRIPT_DIR/"}\`"
    echo
    "${micro_cmd[@]}"
} >"$out"
mv "$out" "$SCRIPT_DIR/RESULTS.md"
echo "wrote $SCRIPT_DIR/RESULTS.md"
