#!/usr/bin/env bash
# udp_run.sh - UDP echo benchmark: libem against libuv, interleaved per round.
#
# What: for each configuration (datagram size; sockets x window in flight)
# and each round, runs udp_echo_libem, udp_echo_libuv (recvmmsg mode) and
# udp_echo_libuv plain (one recvmsg per datagram) one after the other, so
# machine noise hits all three alike. A run = the server pinned to CPU 0,
# udp_loadgen pinned to CPU 1 with --server-pid, the server stopped. Each
# run gets its own port.
# Why ratios: on a shared 2-core VM absolute rates drift from minute to
# minute; the ratio of libem to libuv within one round is what stays
# comparable. Per configuration the report gives each server's median rate
# and server CPU per echo, and the median (min..max) of the per-round
# ratios libem/libuv for the rate (higher is better for libem) and for CPU
# per echo (lower is better).
# A round in which any server spent more than MAX_RUNQ percent of its window
# waiting for a CPU (other processes on the machine: server_runq_pct) is
# thrown away and run again, up to 4 times; the last try is kept and
# counted in the report's "noisy" column.
# Outputs: a markdown table on stdout, raw rows in <bench-dir>/udp_results.tsv.
#
# usage: bench/udp_run.sh [--rounds N] [--duration T] [--sizes "64 1024"]
#                         [--load "8x32 1x1"] [--max-runq PCT]
#                         [--bench-dir DIR]
set -u

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")
ROUNDS=5
DURATION=2
WARMUP=0.3
SIZES="64 1024"
LOADS="8x32 1x1"
BENCH_DIR="$REPO_DIR/build/bench"
PORT=23000
MAX_RUNQ=5

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --sizes) SIZES=$2; shift ;;
        --load) LOADS=$2; shift ;;
        --max-runq) MAX_RUNQ=$2; shift ;;
        --bench-dir) BENCH_DIR=$2; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "udp_run.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

for bin in udp_loadgen udp_echo_libem udp_echo_libuv; do
    if [ ! -x "$BENCH_DIR/$bin" ]; then
        echo "udp_run.sh: $BENCH_DIR/$bin missing (cmake -DEM_BUILD_BENCH=ON)" >&2
        exit 1
    fi
done

SERVERS=("libem" "libuv" "libuv-plain")
server_cmd() {
    case "$1" in
        libem) echo "$BENCH_DIR/udp_echo_libem" ;;
        libuv) echo "$BENCH_DIR/udp_echo_libuv" ;;
        libuv-plain) echo "$BENCH_DIR/udp_echo_libuv" ;;
    esac
}
server_extra() { [ "$1" = libuv-plain ] && echo plain; }

TSV="$BENCH_DIR/udp_results.tsv"
ROUND_ROWS=$(mktemp)
trap 'rm -f "$ROUND_ROWS"' EXIT
printf 'size\tload\tround\tserver\tpps\tns_per_pkt\tlost\trunq_pct\tnoisy\n' >"$TSV"

# run_one SERVER SIZE SOCKETS WINDOW ROUND: one measured run, one row in
# ROUND_ROWS.
run_one() {
    local name=$1 size=$2 socks=$3 win=$4 round=$5
    PORT=$((PORT + 1))
    taskset -c 0 $(server_cmd "$name") "$PORT" $(server_extra "$name") &
    local pid=$!
    sleep 0.2
    local out
    out=$(taskset -c 1 "$BENCH_DIR/udp_loadgen" -p "$PORT" -P "$pid" \
        -n "$socks" -w "$win" -s "$size" -d "$DURATION" -W "$WARMUP")
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    local pps ns lost runq
    pps=$(sed -n 's/.* pps=\([0-9.]*\).*/\1/p' <<<"$out")
    ns=$(sed -n 's/.* server_ns_per_pkt=\([-0-9.]*\).*/\1/p' <<<"$out")
    lost=$(sed -n 's/.* lost=\([0-9]*\).*/\1/p' <<<"$out")
    runq=$(sed -n 's/.* server_runq_pct=\([-0-9.]*\).*/\1/p' <<<"$out")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$size" "${socks}x${win}" \
        "$round" "$name" "${pps:-0}" "${ns:--1}" "${lost:-0}" "${runq:--1}" \
        >>"$ROUND_ROWS"
}

# Is any run of the round above MAX_RUNQ (or unmeasured)?
round_noisy() {
    awk -F'\t' -v max="$MAX_RUNQ" '$8 < 0 || $8 > max { bad = 1 }
        END { exit bad ? 0 : 1 }' "$ROUND_ROWS"
}

for size in $SIZES; do
    for load in $LOADS; do
        socks=${load%x*}
        win=${load#*x}
        for round in $(seq 1 "$ROUNDS"); do
            for try in 1 2 3 4; do
                : >"$ROUND_ROWS"
                for name in "${SERVERS[@]}"; do
                    run_one "$name" "$size" "$socks" "$win" "$round"
                done
                noisy=0
                round_noisy && noisy=1
                [ "$noisy" = 0 ] && break
                echo "size $size load $load round $round: noisy, again" >&2
            done
            awk -v n="$noisy" '{ print $0 "\t" n }' "$ROUND_ROWS" >>"$TSV"
            echo "size $size load $load round $round done" >&2
        done
    done
done

# The report: medians per server and per-round ratios against libuv.
awk -F'\t' '
function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) {           # insertion sort, n is small
        t = a[i] + 0
        for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]
        a[j + 1] = t
    }
    if (n == 0) return 0
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function minmax(list,   n, a, i, lo, hi) {
    n = split(list, a, " ")
    lo = hi = a[1] + 0
    for (i = 2; i <= n; i++) { if (a[i] + 0 < lo) lo = a[i] + 0; if (a[i] + 0 > hi) hi = a[i] + 0 }
    return sprintf("%.2f..%.2f", lo, hi)
}
NR == 1 { next }
{
    key = $1 "\t" $2
    if (!(key in seen)) { seen[key] = 1; keys[++nk] = key }
    pps[key, $4] = pps[key, $4] " " $5
    ns[key, $4] = ns[key, $4] " " $6
    r[key, $3, $4, "pps"] = $5; r[key, $3, $4, "ns"] = $6
    rounds[key] = ($3 > rounds[key]) ? $3 : rounds[key]
    lost[key] += $7
    if ($4 == "libem") noisy[key] += $9
}
END {
    print "| size | sockets x window | libem echoes/s | libuv (recvmmsg) | libuv (plain) | libem ns/echo | libuv ns/echo | plain ns/echo | rate libem/libuv | CPU libem/libuv | rate libem/plain | CPU libem/plain | noisy rounds | lost |"
    print "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|"
    for (k = 1; k <= nk; k++) {
        key = keys[k]
        split(key, kp, "\t")
        rp = rc = qp = qc = ""
        for (i = 1; i <= rounds[key]; i++) {
            e = r[key, i, "libem", "pps"]; u = r[key, i, "libuv", "pps"]; p = r[key, i, "libuv-plain", "pps"]
            en = r[key, i, "libem", "ns"]; un = r[key, i, "libuv", "ns"]; pn = r[key, i, "libuv-plain", "ns"]
            if (u > 0) rp = rp " " e / u
            if (un > 0) rc = rc " " en / un
            if (p > 0) qp = qp " " e / p
            if (pn > 0) qc = qc " " en / pn
        }
        printf "| %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.2f (%s) | %.2f (%s) | %.2f (%s) | %.2f (%s) | %d | %d |\n",
            kp[1], kp[2], median(pps[key, "libem"]), median(pps[key, "libuv"]),
            median(pps[key, "libuv-plain"]), median(ns[key, "libem"]),
            median(ns[key, "libuv"]), median(ns[key, "libuv-plain"]),
            median(rp), minmax(rp), median(rc), minmax(rc),
            median(qp), minmax(qp), median(qc), minmax(qc), noisy[key],
            lost[key]
    }
}' "$TSV"
