#!/usr/bin/env bash
# run.sh - benchmark driver: every echo server against bench/loadgen.
#
# What: for each configuration (mode, connections, message size, pipeline)
# and each round, runs every echo_* binary found in the build's bench
# directory in turn (A B C D E, then A B C D E again), so machine noise hits
# all servers alike.  A run = start the server pinned to CPU 0, wait until its
# port is listening, run loadgen pinned to CPU 1 with --server-pid, stop the
# server.  Each run gets its own port so TIME_WAIT leftovers never collide.
# Why ratios: absolute numbers drift between machines and minutes; the ratio
# of a server to echo_epoll, and to the best of libuv/libevent/libev, taken
# within the same round, is what stays comparable.  Per configuration the
# report gives the median of the per-round ratios and their min..max range.
# Outputs: a markdown table on stdout, raw rows in <build>/bench/results.tsv,
# a log in <build>/bench/run.log and, when gnuplot and echo_libem exist, a
# chart <build>/bench/ratios.png of libem's CPU-per-message ratio against the
# best rival.  Failures (server not starting, loadgen errors) are recorded
# as a status and the run goes on.

set -u

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

ROUNDS=5
DURATION=3
WARMUP=0.5
CONNS_LIST="1 100 1000 10000"
SIZES_LIST="64 1024 16384"
PIPELINE_LIST="1"
CHURN=yes
CHURN_CONNS_LIST="100"
CHURN_SIZE=64
SERVERS_OVERRIDE=""
BENCH_DIR="$REPO_DIR/build/bench"
PORT_BASE=20000
PORT_LIMIT=32000
RIVALS="echo_libuv echo_libevent echo_libev"
BASELINE="echo_epoll"

usage() {
    cat <<'EOF'
usage: bench/run.sh [options]
  --quick              about one minute: 3 rounds x 0.6 s, conns "1 100 1000",
                       size 64, churn with 100 slots
  --rounds N           rounds per configuration (5)
  --duration T         measured seconds per run (3)
  --warmup T           unmeasured seconds before each window (0.5)
  --conns "LIST"       ping-pong connection counts ("1 100 1000 10000")
  --sizes "LIST"       message sizes in bytes ("64 1024 16384")
  --pipeline "LIST"    messages in flight per connection ("1")
  --churn yes|no       also run connect/echo/close churn (yes)
  --churn-conns "LIST" concurrent churn slots ("100")
  --churn-size S       churn message size (64)
  --servers "LIST"     echo_* binaries to run (all found)
  --bench-dir DIR      where the binaries are (build/bench)
  --port-base P        first TCP port used (20000)
EOF
}

apply_quick_defaults() {
    ROUNDS=3
    DURATION=0.6
    WARMUP=0.2
    CONNS_LIST="1 100 1000"
    SIZES_LIST="64"
    PIPELINE_LIST="1"
    CHURN=yes
    CHURN_CONNS_LIST="100"
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --quick) apply_quick_defaults ;;
            --rounds) ROUNDS=$2; shift ;;
            --duration) DURATION=$2; shift ;;
            --warmup) WARMUP=$2; shift ;;
            --conns) CONNS_LIST=$2; shift ;;
            --sizes) SIZES_LIST=$2; shift ;;
            --pipeline) PIPELINE_LIST=$2; shift ;;
            --churn) CHURN=$2; shift ;;
            --churn-conns) CHURN_CONNS_LIST=$2; shift ;;
            --churn-size) CHURN_SIZE=$2; shift ;;
            --servers) SERVERS_OVERRIDE=$2; shift ;;
            --bench-dir) BENCH_DIR=$2; shift ;;
            --port-base) PORT_BASE=$2; shift ;;
            -h|--help) usage; exit 0 ;;
            *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        esac
        shift
    done
}

log() { echo "[run.sh] $*" >&2; }

# ------------------------------------------------------------- environment

discover_servers() {
    if [ -n "$SERVERS_OVERRIDE" ]; then
        SERVERS=$SERVERS_OVERRIDE
        return
    fi
    SERVERS=""
    local f
    for f in "$BENCH_DIR"/echo_*; do
        [ -x "$f" ] && [ -f "$f" ] && SERVERS="$SERVERS $(basename "$f")"
    done
    SERVERS=${SERVERS# }
}

largest_conns() {
    local max=1 n
    for n in $CONNS_LIST $CHURN_CONNS_LIST; do
        [ "$n" -gt "$max" ] && max=$n
    done
    echo "$max"
}

raise_fd_limit() {
    local hard
    hard=$(ulimit -Hn)
    ulimit -n "$hard" 2>/dev/null || log "could not raise ulimit -n"
    local need=$(( $(largest_conns) + 100 ))
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
        log "WARNING: fd hard limit $hard < $need needed; large runs will show errors"
    fi
}

setup_pinning() {
    if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
        PIN_SERVER="taskset -c 0"
        PIN_CLIENT="taskset -c 1"
    else
        log "WARNING: no taskset or fewer than 2 CPUs: running unpinned"
        PIN_SERVER=""
        PIN_CLIENT=""
    fi
}

check_prerequisites() {
    if [ ! -x "$BENCH_DIR/loadgen" ]; then
        log "no $BENCH_DIR/loadgen: build with -DEM_BUILD_BENCH=ON first"
        exit 1
    fi
    if [ -z "$SERVERS" ]; then
        log "no echo_* servers in $BENCH_DIR"
        exit 1
    fi
}

# ------------------------------------------------------------ server runs

NEXT_PORT=0
CURRENT_SERVER=

# On Ctrl-C or TERM, do not leave a pinned server behind.
on_interrupt() {
    [ -n "$CURRENT_SERVER" ] && kill -KILL "$CURRENT_SERVER" 2>/dev/null
    log "interrupted; partial results in ${RESULTS:-nowhere}"
    exit 130
}

# True when something accepts on the port.  A connect probe is used because
# /proc/net/tcp (or ss) gets slow with tens of thousands of TIME_WAIT rows.
port_accepts() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

allocate_port() {
    [ "$NEXT_PORT" -lt "$PORT_BASE" ] && NEXT_PORT=$PORT_BASE
    while port_accepts "$NEXT_PORT"; do
        NEXT_PORT=$((NEXT_PORT + 1))
    done
    PORT=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 1))
    [ "$NEXT_PORT" -ge "$PORT_LIMIT" ] && NEXT_PORT=$PORT_BASE
}

# Wait up to 5 s for the server to accept; fail early if it died.
wait_for_listen() {
    local pid=$1 port=$2 i
    for i in $(seq 1 500); do
        kill -0 "$pid" 2>/dev/null || return 1
        port_accepts "$port" && return 0
        sleep 0.01
    done
    return 1
}

# TERM, then KILL after 3 s.  Sets STOP_STATUS to clean or unclean.
stop_server() {
    local pid=$1 i
    STOP_STATUS=clean
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.02
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        STOP_STATUS=unclean
    fi
    wait "$pid" 2>/dev/null || STOP_STATUS=unclean
}

# Splits a RESULT line into the associative array RES (key -> value),
# without subprocesses: forks are slow on a loaded machine.
declare -A RES
parse_result() {
    local word
    RES=()
    for word in $1; do
        case "$word" in *=*) RES[${word%%=*}]=${word#*=} ;; esac
    done
}

loadgen_timeout() {
    local conns=$1
    awk -v d="$DURATION" -v w="$WARMUP" -v c="$conns" \
        'BEGIN { printf "%d", 5 + c / 1000 + w + d + 2 + 15 }'
}

# Appends one TSV row: the arguments joined by tabs.
record_row() {
    local IFS=$'\t'
    printf '%s\n' "$*" >>"$RESULTS"
}

run_loadgen() {
    local server_pid=$1 mode=$2 conns=$3 size=$4 pipeline=$5
    # shellcheck disable=SC2086
    timeout "$(loadgen_timeout "$conns")" $PIN_CLIENT "$BENCH_DIR/loadgen" \
        --port "$PORT" --mode "$mode" --conns "$conns" --size "$size" \
        --pipeline "$pipeline" --duration "$DURATION" --warmup "$WARMUP" \
        --server-pid "$server_pid" 2>>"$LOG" | grep '^RESULT' | tail -n 1
}

# One server, one configuration, one round.
run_one() {
    local round=$1 config=$2 mode=$3 conns=$4 size=$5 pipeline=$6 server=$7
    allocate_port
    echo "== round=$round config=$config server=$server port=$PORT" >>"$LOG"
    # shellcheck disable=SC2086
    $PIN_SERVER "$BENCH_DIR/$server" "$PORT" >>"$LOG" 2>&1 &
    local spid=$!
    CURRENT_SERVER=$spid
    if ! wait_for_listen "$spid" "$PORT"; then
        stop_server "$spid"
        CURRENT_SERVER=
        log "$server did not start (config $config)"
        record_row "$round" "$config" "$mode" "$conns" "$size" "$pipeline" \
            "$server" "$PORT" server_failed na na na na na na na na
        return
    fi
    local line
    line=$(run_loadgen "$spid" "$mode" "$conns" "$size" "$pipeline")
    stop_server "$spid"
    CURRENT_SERVER=
    record_result "$line" "$round" "$config" "$mode" "$conns" "$size" \
        "$pipeline" "$server" "$PORT"
}

# Turns loadgen's RESULT line (maybe empty) into a TSV row with a status.
record_result() {
    local line=$1 status=ok rate cpu
    shift
    echo "$line" >>"$LOG"
    parse_result "$line"
    if [ "${RES[mode]:-}" = churn ]; then
        rate=${RES[conns_per_s]:-na}
        cpu=${RES[server_cpu_ns_per_conn]:-na}
    else
        rate=${RES[msgs_per_s]:-na}
        cpu=${RES[server_cpu_ns_per_msg]:-na}
    fi
    local errors=${RES[errors]:-na}
    if [ -z "$line" ]; then
        status=loadgen_failed
    elif [ "$errors" != 0 ]; then
        status=errors
    elif [ "$rate" = 0.0 ]; then
        status=no_progress
    elif [ "$STOP_STATUS" != clean ]; then
        status=unclean_stop
    fi
    [ "$status" != ok ] && log "run ($*): $status"
    record_row "$@" "$status" "$rate" "$cpu" "${RES[p50_us]:-na}" \
        "${RES[p99_us]:-na}" "$errors" "${RES[server_cpu_pct]:-na}" \
        "${RES[mb_per_s]:-na}" "${RES[server_runq_pct]:-na}"
}

run_config_rounds() {
    local config=$1 mode=$2 conns=$3 size=$4 pipeline=$5 round server
    for round in $(seq 1 "$ROUNDS"); do
        log "config $config round $round/$ROUNDS"
        for server in $SERVERS; do
            run_one "$round" "$config" "$mode" "$conns" "$size" "$pipeline" "$server"
        done
    done
}

run_all_configs() {
    local conns size pipeline
    for pipeline in $PIPELINE_LIST; do
        for size in $SIZES_LIST; do
            for conns in $CONNS_LIST; do
                run_config_rounds "pp-c$conns-s$size-d$pipeline" pingpong \
                    "$conns" "$size" "$pipeline"
            done
        done
    done
    [ "$CHURN" = yes ] || return 0
    for conns in $CHURN_CONNS_LIST; do
        run_config_rounds "churn-c$conns-s$CHURN_SIZE" churn "$conns" "$CHURN_SIZE" 1
    done
}

count_configs() {
    local n=0 p s c
    for p in $PIPELINE_LIST; do for s in $SIZES_LIST; do for c in $CONNS_LIST; do
        n=$((n + 1))
    done; done; done
    [ "$CHURN" = yes ] && for c in $CHURN_CONNS_LIST; do n=$((n + 1)); done
    echo "$n"
}

# ---------------------------------------------------------------- analysis

# Reads results.tsv; prints one summary row per (config, server) as TSV:
# config server ok rounds rate cpu p99 pct
#   r_epoll(med min max) c_epoll(...) r_best(...) c_best(...) runq
summarize() {
    awk -F'\t' -v baseline="$BASELINE" -v rivals="$RIVALS" -v order="$SERVERS" '
    function sort(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) {
            t = a[i]
            for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]
            a[j + 1] = t
        }
    }
    function median(a, n) {
        sort(a, n)
        if (n == 0) return "na"
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    # collect list[key] (space separated numbers) into arr, return count
    function load(key, arr,   n, parts, i) {
        n = split(list[key], parts, " ")
        for (i = 1; i <= n; i++) arr[i] = parts[i] + 0
        return n
    }
    function stats(key,   arr, n) {
        n = load(key, arr)
        if (n == 0) return "na\tna\tna"
        sort(arr, n)
        return sprintf("%.3f\t%.3f\t%.3f", median(arr, n), arr[1], arr[n])
    }
    function med(key,   arr, n) {
        n = load(key, arr)
        return n ? median(arr, n) : "na"
    }
    function push(key, v) { list[key] = list[key] " " v }
    function numeric(v) { return v != "na" && v != "" && v + 0 > 0 }
    BEGIN {
        nr = split(rivals, rv, " "); for (i = 1; i <= nr; i++) is_rival[rv[i]] = 1
        ns = split(order, so, " ")
    }
    FNR == 1 { next }
    {
        round = $1; cfg = $2; srv = $7; status = $9; rate = $10; cpu = $11
        if (!(cfg in seen_cfg)) { seen_cfg[cfg] = 1; cfgs[++ncfg] = cfg }
        runs[cfg, srv]++
        if (status != "ok" || !numeric(rate)) next
        ok[cfg, srv]++
        R[cfg, round, srv] = rate; C[cfg, round, srv] = cpu
        rounds_of[cfg, round] = 1; if (round > maxround) maxround = round
        push(cfg SUBSEP srv SUBSEP "rate", rate)
        if (numeric(cpu)) push(cfg SUBSEP srv SUBSEP "cpu", cpu)
        push(cfg SUBSEP srv SUBSEP "p99", $13)
        if ($15 != "na") push(cfg SUBSEP srv SUBSEP "pct", $15)
        if ($17 != "na") push(cfg SUBSEP srv SUBSEP "runq", $17)
    }
    END {
        for (ci = 1; ci <= ncfg; ci++) {
            cfg = cfgs[ci]
            for (r = 1; r <= maxround; r++) {
                if (!((cfg, r) in rounds_of)) continue
                best_rate = 0; best_cpu = 0
                for (i = 1; i <= nr; i++) {
                    s = rv[i]
                    if (!((cfg, r, s) in R)) continue
                    if (R[cfg, r, s] > best_rate) best_rate = R[cfg, r, s]
                    c = C[cfg, r, s]
                    if (numeric(c) && (best_cpu == 0 || c < best_cpu)) best_cpu = c
                }
                base_ok = (cfg, r, baseline) in R
                for (si = 1; si <= ns; si++) {
                    s = so[si]
                    if (!((cfg, r, s) in R)) continue
                    rate = R[cfg, r, s]; c = C[cfg, r, s]
                    k = cfg SUBSEP s
                    if (base_ok) {
                        push(k SUBSEP "re", rate / R[cfg, r, baseline])
                        if (numeric(c) && numeric(C[cfg, r, baseline]))
                            push(k SUBSEP "ce", c / C[cfg, r, baseline])
                    }
                    if (best_rate > 0) push(k SUBSEP "rb", rate / best_rate)
                    if (best_cpu > 0 && numeric(c)) push(k SUBSEP "cb", c / best_cpu)
                }
            }
            for (si = 1; si <= ns; si++) {
                s = so[si]; k = cfg SUBSEP s
                if (!((cfg, s) in runs)) continue
                printf "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cfg, s,
                    ok[cfg, s], runs[cfg, s], med(k SUBSEP "rate"), med(k SUBSEP "cpu"),
                    med(k SUBSEP "p99"), med(k SUBSEP "pct"),
                    stats(k SUBSEP "re"), stats(k SUBSEP "ce"),
                    stats(k SUBSEP "rb"), stats(k SUBSEP "cb"), med(k SUBSEP "runq")
            }
        }
    }' "$RESULTS"
}

print_markdown() {
    echo "## libem echo benchmark"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r), $(nproc) CPUs," \
         "rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s." \
         "Server on CPU 0, loadgen on CPU 1."
    echo "rate = msgs/s (ping-pong) or conns/s (churn); cpu = server CPU ns per msg (or per conn)."
    echo "runq % = share of the window the server waited for a CPU (other load on the machine: high = noisy)."
    echo "Ratios: median of per-round ratios (min..max). For rate higher is better, for cpu lower is better."
    echo
    echo "| config | server | ok | rate | cpu ns | p99 us | cpu % | runq % | rate/epoll | cpu/epoll | rate/best rival | cpu/best rival |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---|---|---|---|"
    summarize | awk -F'\t' '
    function num(v, fmt) { return v == "na" ? "na" : sprintf(fmt, v) }
    function ratio(m, lo, hi) {
        if (m == "na") return "na"
        return sprintf("%.2f (%.2f..%.2f)", m, lo, hi)
    }
    {
        printf "| %s | %s | %d/%d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
            $1, $2, $3, $4, num($5, "%.0f"), num($6, "%.0f"), num($7, "%.1f"),
            num($8, "%.0f"), num($21, "%.0f"), ratio($9, $10, $11), ratio($12, $13, $14),
            ratio($15, $16, $17), ratio($18, $19, $20)
    }'
}

# ------------------------------------------------------------------- chart

write_chart() {
    local server=echo_libem data="$BENCH_DIR/ratios.dat" png="$BENCH_DIR/ratios.png"
    if ! command -v gnuplot >/dev/null; then
        log "gnuplot missing: no chart"
        return
    fi
    case " $SERVERS " in *" $server "*) ;; *) log "no $server: no chart"; return ;; esac
    summarize | awk -F'\t' -v s="$server" \
        '$2 == s && $18 != "na" { n++; print n, $1, $18, $19, $20 }' >"$data"
    if [ ! -s "$data" ]; then
        log "no CPU ratios for $server: no chart"
        return
    fi
    local term=png
    gnuplot -e 'set terminal pngcairo' >/dev/null 2>&1 && term=pngcairo
    gnuplot <<EOF 2>>"$LOG" || log "gnuplot failed: see $LOG"
set terminal $term size 1000,500
set output '$png'
set title 'libem server CPU per message / best of libuv, libevent, libev (median, min..max; < 1 is better)'
set ylabel 'CPU ratio'
set yrange [0:*]
set style fill solid 0.5
set boxwidth 0.6
set xtics rotate by -30
set grid ytics
set key outside top center horizontal
plot '$data' using 1:3:xtic(2) with boxes title 'median', \
     '$data' using 1:3:4:5 with yerrorbars lc rgb 'black' title 'min..max', \
     1 with lines dt 2 lc rgb 'red' title 'parity'
EOF
    [ -s "$png" ] && log "chart: $png"
}

# -------------------------------------------------------------------- main

main() {
    parse_args "$@"
    trap on_interrupt INT TERM
    discover_servers
    check_prerequisites
    raise_fd_limit
    setup_pinning
    RESULTS="$BENCH_DIR/results.tsv"
    LOG="$BENCH_DIR/run.log"
    : >"$LOG"
    printf 'round\tconfig\tmode\tconns\tsize\tpipeline\tserver\tport\tstatus\trate\tcpu_ns\tp50_us\tp99_us\terrors\tcpu_pct\tmb_per_s\trunq_pct\n' >"$RESULTS"
    local nservers
    nservers=$(echo "$SERVERS" | wc -w)
    log "servers: $SERVERS"
    log "$(count_configs) configs x $ROUNDS rounds x $nservers servers, ${DURATION}s each"
    run_all_configs
    print_markdown
    write_chart
    log "raw results: $RESULTS"
}

main "$@"
