#!/usr/bin/env bash
# stream_run.sh - zero-copy paths against their copying counterparts, on
# loopback, interleaved per round: a one-way proxy (splice vs
# receive_data -> send_data) and a file server (sendfile vs pread ->
# send_data). Server pinned to CPU 0, client to CPU 1. Reports server CPU
# per GiB moved for each mode and the per-round ratio zero-copy/copy
# (median and range). Target (issue #7): ratio <= 0.7.
#
#   bench/stream_run.sh [--bench-dir DIR] [--rounds N] [--bytes N]
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench_dir="$here/../build-bench/bench"
rounds=5
bytes=$((2 * 1024 * 1024 * 1024))
while [ $# -gt 0 ]; do
    case "$1" in
    --bench-dir) bench_dir=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --bytes) bytes=$2; shift 2 ;;
    --quick) rounds=3; bytes=$((512 * 1024 * 1024)); shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
server="$bench_dir/stream_server"
client="$bench_dir/stream_client"
[ -x "$server" ] && [ -x "$client" ] || { echo "build the bench first" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
file="$tmp/file.bin"
head -c $((256 * 1024 * 1024)) /dev/urandom > "$file"
port=$((24000 + RANDOM % 4000))

# run MODE -> prints cpu seconds per GiB
run() {
    local mode=$1 out pid
    port=$((port + 2))
    if [ "${mode#proxy}" != "$mode" ]; then
        taskset -c 0 "$server" "$mode" "$port" $((port + 1)) > "$tmp/srv" &
    else
        taskset -c 0 "$server" "$mode" "$port" "$file" > "$tmp/srv" &
    fi
    pid=$!
    for _ in $(seq 100); do grep -q ready "$tmp/srv" 2>/dev/null && break; sleep 0.05; done
    if [ "${mode#proxy}" != "$mode" ]; then
        out=$(taskset -c 1 "$client" proxy "$port" $((port + 1)) "$bytes" "$pid")
    else
        out=$(taskset -c 1 "$client" file "$port" "$bytes" "$pid")
    fi
    kill "$pid"; wait "$pid" 2>/dev/null
    echo "$mode $out" >> "$tmp/raw"
    awk -v o="$out" 'BEGIN { split(o, f, " "); for (i in f) { split(f[i], kv, "=");
        v[kv[1]] = kv[2] } printf "%.4f %.1f\n", v["server_cpu"] * 1073741824 / v["bytes"], v["mib_per_s"] }'
}

declare -a proxy_ratio file_ratio
for r in $(seq "$rounds"); do
    read -r ps pst < <(run proxy-splice)
    read -r pc pct < <(run proxy-copy)
    read -r fs fst < <(run file-sendfile)
    read -r fc fct < <(run file-copy)
    proxy_ratio+=("$(awk -v a="$ps" -v b="$pc" 'BEGIN{printf "%.3f", a/b}')")
    file_ratio+=("$(awk -v a="$fs" -v b="$fc" 'BEGIN{printf "%.3f", a/b}')")
    echo "round $r: proxy splice ${ps}s/GiB (${pst} MiB/s) copy ${pc}s/GiB (${pct} MiB/s);" \
         "file sendfile ${fs}s/GiB (${fst} MiB/s) copy ${fc}s/GiB (${fct} MiB/s)" >&2
done
summary() {
    printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {
        m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2;
        printf "%.2f (range %.2f-%.2f)", m, a[1], a[NR] }'
}
echo "| path | server CPU per GiB, zero-copy / copying (median of $rounds rounds) | target |"
echo "|---|---|---|"
echo "| proxy: splice vs receive_data+send_data | $(summary "${proxy_ratio[@]}") | <= 0.7 |"
echo "| file: sendfile vs pread+send_data | $(summary "${file_ratio[@]}") | <= 0.7 |"
