#!/usr/bin/env bash
# micro.sh - runs libem's micro-benchmarks and prints markdown tables.
#
# What, in order (each part can be chosen with --sections):
#   timers    micro_timers (libem) and micro_timers_uv (libuv), interleaved,
#             ROUNDS rounds each, pinned to CPU 0; per round the ratio
#             libem/libuv of add+fire ns per timer (target < 0.5), reported
#             as the median with the per-round values.
#   schedule  micro_schedule: em_schedule burst throughput from another
#             thread and the round trip of a ping-pong, next to a raw
#             eventfd round trip between the same two CPUs (the floor).
#   idle      micro_idle: user-space bytes per idle connection for each
#             count in IDLE_LIST. When RLIMIT_NOFILE cannot be raised (no
#             CAP_SYS_RESOURCE) a count that does not fit is replaced by the
#             largest one that does, and the table says so.
#   syscalls  every echo_* server in the bench directory, pinned to CPU 0,
#             under `perf stat -e raw_syscalls:sys_enter` (strace -c -f when
#             the tracepoint is unavailable) while loadgen (CPU 1) runs a
#             64-byte ping-pong; syscalls per message = the server's syscalls
#             while attached / loadgen's msgs. Attachment spans connect and
#             close too (warmup 0), a few syscalls per connection, which is
#             noise next to the messages of a run.
# Why medians of interleaved rounds: the machine is shared and noisy; A B A
# B ordering exposes both programs to the same noise.
# Outputs: tables on stdout; every RESULT line and diagnostic goes to
# <bench-dir>/micro.log.

set -u

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

BENCH_DIR="$REPO_DIR/build/bench"
SECTIONS="timers schedule idle syscalls"
ROUNDS=3
TIMERS=10000000
SCHED_K=1000000
SCHED_P=100000
IDLE_LIST="10000 100000"
SYS_CONNS_LIST="1 100"
SYS_DURATION=3
SYS_SERVERS="echo_libem echo_epoll echo_libuv echo_libevent echo_libev"
PORT_BASE=15000
WAIT_LOADGEN_MIN=0
TARGET_RATIO=0.5

usage() {
    cat <<'EOF'
usage: bench/micro.sh [options]
  --quick              1M timers, 2 rounds, 200k schedules, 10k idle only,
                       1 s echo runs with 100 connections
  --bench-dir DIR      where the binaries are (build/bench)
  --sections "LIST"    any of: timers schedule idle syscalls (all)
  --rounds N           rounds of the timer and schedule programs (3)
  --timers N           timers per run (10000000)
  --schedules K        em_schedule calls in the burst (1000000)
  --pingpongs P        ping-pong round trips (100000)
  --idle "LIST"        idle connection counts ("10000 100000")
  --sys-conns "LIST"   loadgen connections for the syscall runs ("1 100")
  --duration T         seconds per syscall run (3)
  --servers "LIST"     echo servers for the syscall runs (all found)
  --port-base P        first TCP port for the echo servers (15000)
  --wait-loadgen MIN   wait up to MIN minutes for bench/loadgen to appear
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick)
            TIMERS=1000000; ROUNDS=2; SCHED_K=200000; SCHED_P=20000
            IDLE_LIST="10000"; SYS_CONNS_LIST="100"; SYS_DURATION=1 ;;
        --bench-dir) BENCH_DIR=$2; shift ;;
        --sections) SECTIONS=$2; shift ;;
        --rounds) ROUNDS=$2; shift ;;
        --timers) TIMERS=$2; shift ;;
        --schedules) SCHED_K=$2; shift ;;
        --pingpongs) SCHED_P=$2; shift ;;
        --idle) IDLE_LIST=$2; shift ;;
        --sys-conns) SYS_CONNS_LIST=$2; shift ;;
        --duration) SYS_DURATION=$2; shift ;;
        --servers) SYS_SERVERS=$2; shift ;;
        --port-base) PORT_BASE=$2; shift ;;
        --wait-loadgen) WAIT_LOADGEN_MIN=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "micro.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [ ! -d "$BENCH_DIR" ]; then
    echo "micro.sh: no bench directory $BENCH_DIR (build with -DEM_BUILD_BENCH=ON, or --bench-dir)" >&2
    exit 2
fi
LOG="$BENCH_DIR/micro.log"
: >"$LOG"
TMP=$(mktemp -d /tmp/micro.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# ---- helpers -------------------------------------------------------------

log() { printf '%s\n' "$*" >>"$LOG"; }

# kv LINE KEY: the value of KEY=value in a RESULT line ("na" if absent).
kv() {
    local v
    v=$(printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n1)
    printf '%s' "${v:-na}"
}

# median VALUES...: numeric median, "na" for none (non-numbers dropped).
median() {
    printf '%s\n' "$@" | grep -E '^-?[0-9.]+(e[-+]?[0-9]+)?$' | sort -g |
        awk '{a[NR]=$1} END {
            if (NR == 0) print "na";
            else if (NR % 2) print a[(NR + 1) / 2];
            else printf "%.6g\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# div A B [FORMAT]
div() {
    awk -v a="$1" -v b="$2" -v f="${3:-%.3f}" 'BEGIN {
        if (a !~ /^-?[0-9.]+$/ || b !~ /^-?[0-9.]+$/ || b + 0 == 0) print "na";
        else printf f "\n", a / b }'
}

# fmt NUMBER FORMAT: formats a number, passes "na" through.
fmt() {
    awk -v a="$1" -v f="$2" 'BEGIN {
        if (a !~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/) print "na"; else printf f "\n", a }'
}

# pin CPU CMD...: taskset when available and the CPU is allowed.
pin() {
    local cpu=$1
    shift
    if command -v taskset >/dev/null 2>&1 &&
        taskset -c "$cpu" true 2>/dev/null; then
        taskset -c "$cpu" "$@"
    else
        "$@"
    fi
}

# The prefix that pins to CPU 0, as an array, for commands started in the
# background: taskset execs the program, so $! is the program's own pid.
PIN0=()
if command -v taskset >/dev/null 2>&1 && taskset -c 0 true 2>/dev/null; then
    PIN0=(taskset -c 0)
fi

# run_result CMD...: runs CMD, logs everything, prints its RESULT line.
run_result() {
    local out rc
    out=$("$@" 2>"$TMP/stderr")
    rc=$?
    log "# $* (exit $rc)"
    [ -n "$out" ] && log "$out"
    [ -s "$TMP/stderr" ] && cat "$TMP/stderr" >>"$LOG"
    printf '%s\n' "$out" | grep '^RESULT' | head -n1
    return $rc
}

need() {
    if [ ! -x "$BENCH_DIR/$1" ]; then
        echo "micro.sh: $BENCH_DIR/$1 is missing; skipping $2" >&2
        return 1
    fi
}

has_section() { case " $SECTIONS " in *" $1 "*) return 0 ;; esac; return 1; }

SUMMARY=()

# ---- timers --------------------------------------------------------------

section_timers() {
    need micro_timers "timers" || return
    local have_uv=yes
    need micro_timers_uv "the libuv side of timers" || have_uv=no
    local r lib line
    local -a em_lines=() uv_lines=() ratios=()
    for r in $(seq 1 "$ROUNDS"); do
        line=$(run_result pin 0 "$BENCH_DIR/micro_timers" -n "$TIMERS")
        em_lines+=("$line")
        if [ $have_uv = yes ]; then
            line=$(run_result pin 0 "$BENCH_DIR/micro_timers_uv" -n "$TIMERS")
            uv_lines+=("$line")
            ratios+=("$(div "$(kv "${em_lines[-1]}" add_fire_ns)" \
                            "$(kv "$line" add_fire_ns)" %.3f)")
        fi
    done

    echo "### Timers: $TIMERS one-shot timers, deadlines 0..999 ms, CPU 0, median of $ROUNDS"
    echo
    echo "| lib | add ns | fire ns (CPU) | add+fire ns | re-add ns | cancel ns | fire wall s | total s | peak RSS MB | ok |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    for lib in libem libuv; do
        local -a lines=()
        if [ $lib = libem ]; then lines=("${em_lines[@]}"); else
            [ $have_uv = yes ] || continue
            lines=("${uv_lines[@]}")
        fi
        local row="| $lib" key vals ok="yes"
        for key in add_ns fire_ns add_fire_ns readd_ns cancel_ns fire_wall_s total_s peak_rss_mb; do
            vals=()
            for line in "${lines[@]}"; do vals+=("$(kv "$line" $key)"); done
            row="$row | $(median "${vals[@]}")"
        done
        for line in "${lines[@]}"; do [ "$(kv "$line" ok)" = 1 ] || ok="NO"; done
        echo "$row | $ok |"
    done
    echo
    if [ $have_uv = yes ]; then
        local med verdict
        med=$(median "${ratios[@]}")
        verdict=$(awk -v m="$med" -v t="$TARGET_RATIO" 'BEGIN {
            if (m !~ /^[0-9.]+$/) print "no data"; else if (m < t) print "meets"; else print "MISSES" }')
        echo "libem/libuv add+fire: **$med** (rounds: ${ratios[*]}); $verdict the < $TARGET_RATIO target"
        SUMMARY+=("| timers libem/libuv (add+fire) | $med | target < $TARGET_RATIO |")
    fi
    echo
}

# ---- schedule ------------------------------------------------------------

section_schedule() {
    need micro_schedule "schedule" || return
    local r line key
    local -a lines=()
    for r in $(seq 1 "$ROUNDS"); do
        line=$(run_result pin 0,1 "$BENCH_DIR/micro_schedule" -k "$SCHED_K" -p "$SCHED_P")
        lines+=("$line")
    done
    echo "### em_schedule from another thread: burst of $SCHED_K, $SCHED_P ping-pongs, median of $ROUNDS"
    echo
    echo "| ops/s | ns/op | producer ns/call | round trip mean us | p50 us | p99 us | raw eventfd round trip us | ok |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---|"
    local row="" vals ok=yes
    for key in ops_per_s ns_per_op producer_ns_per_op rt_mean_us rt_p50_us rt_p99_us raw_rt_mean_us; do
        vals=()
        for line in "${lines[@]}"; do vals+=("$(kv "$line" $key)"); done
        row="$row| $(fmt "$(median "${vals[@]}")" %.6g) "
    done
    for line in "${lines[@]}"; do [ "$(kv "$line" ok)" = 1 ] || ok=NO; done
    echo "$row| $ok |"
    echo
    vals=()
    for line in "${lines[@]}"; do vals+=("$(kv "$line" ops_per_s)"); done
    SUMMARY+=("| em_schedule burst ops/s | $(fmt "$(median "${vals[@]}")" %.3g) | another thread, 2 CPUs |")
    vals=()
    for line in "${lines[@]}"; do vals+=("$(kv "$line" rt_mean_us)"); done
    local raw=()
    for line in "${lines[@]}"; do raw+=("$(kv "$line" raw_rt_mean_us)"); done
    SUMMARY+=("| em_schedule round trip us | $(median "${vals[@]}") | raw eventfd: $(median "${raw[@]}") |")
}

# ---- idle ----------------------------------------------------------------

section_idle() {
    need micro_idle "idle" || return
    echo "### Memory per idle connection (server process, user space)"
    echo
    echo "| conns | anon B/conn | RSS B/conn | malloc in-use B/conn | sizeof(em_conn) | malloc chunk | note |"
    echo "|---:|---:|---:|---:|---:|---:|---|"
    local c line note hard
    for c in $IDLE_LIST; do
        note=""
        line=$(run_result "$BENCH_DIR/micro_idle" -c "$c")
        if [ -z "$line" ] && grep -q "hard limit is" "$TMP/stderr"; then
            hard=$(sed -n 's/.*hard limit is \([0-9]*\).*/\1/p' "$TMP/stderr" | head -n1)
            if [ -n "$hard" ] && [ "$hard" -gt 2000 ]; then
                note="$c asked; RLIMIT_NOFILE hard limit $hard, no CAP_SYS_RESOURCE"
                c=$((hard - 1000))
                line=$(run_result "$BENCH_DIR/micro_idle" -c "$c")
            fi
        fi
        if [ -z "$line" ]; then
            echo "| $c | failed | | | | | $(tail -n1 "$TMP/stderr") |"
            continue
        fi
        echo "| $c | $(kv "$line" anon_bytes_per_conn) | $(kv "$line" rss_bytes_per_conn) | $(kv "$line" heap_bytes_per_conn) | $(kv "$line" sizeof_em_conn) | $(kv "$line" conn_malloc_chunk) | $note |"
        SUMMARY+=("| bytes per idle connection at $c | $(kv "$line" anon_bytes_per_conn) | anonymous memory delta / conns |")
    done
    echo
}

# ---- syscalls per echo ---------------------------------------------------

SYS_EVENTS="raw_syscalls:sys_enter"
for _sc in epoll_wait epoll_pwait epoll_ctl read readv recvfrom recvmsg write writev sendto sendmsg accept4; do
    SYS_EVENTS="$SYS_EVENTS,syscalls:sys_enter_$_sc"
done

# The counter to use: perf (with per-syscall counts), strace, or none.
pick_counter() {
    if command -v perf >/dev/null 2>&1 &&
        perf stat -x, -e "$SYS_EVENTS" -o /dev/null true >/dev/null 2>&1; then
        echo perf
    elif command -v perf >/dev/null 2>&1 &&
        perf stat -x, -e raw_syscalls:sys_enter -o /dev/null true >/dev/null 2>&1; then
        SYS_EVENTS="raw_syscalls:sys_enter"
        echo perf
    elif command -v strace >/dev/null 2>&1; then
        echo strace
    else
        echo none
    fi
}

wait_listening() {
    local port=$1 pid=$2 i
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# perf_count FILE EVENT: the count of EVENT in a perf -x, output file.
perf_count() {
    awk -F, -v e="$2" '$3 == e { print ($1 ~ /^[0-9]+$/) ? $1 : 0; found = 1 }
                        END { if (!found) print 0 }' "$1" | head -n1
}

# sys_run SERVER CONNS PORT COUNTER: one measured run. Prints
# "msgs msgs_per_s total epoll_wait read write epoll_ctl other cpu_ns"
# (counts are totals, "na" when unknown) or "FAIL reason".
sys_run() {
    local srv=$1 c=$2 port=$3 counter=$4 spid cpid line total msgs
    "${PIN0[@]}" "$BENCH_DIR/$srv" "$port" >>"$LOG" 2>&1 &
    spid=$!
    if ! wait_listening "$port" "$spid"; then
        kill "$spid" 2>/dev/null
        wait "$spid" 2>/dev/null
        echo "FAIL server did not start on port $port"
        return
    fi
    rm -f "$TMP/count"
    if [ "$counter" = perf ]; then
        perf stat -x, -o "$TMP/count" -e "$SYS_EVENTS" -p "$spid" 2>>"$LOG" &
    else
        strace -c -f -o "$TMP/count" -p "$spid" 2>>"$LOG" &
    fi
    cpid=$!
    sleep 0.5 # let the counter attach
    line=$(run_result pin 1 "$BENCH_DIR/loadgen" --port "$port" --conns "$c" \
        --size 64 --duration "$SYS_DURATION" --warmup 0 --mode pingpong \
        --server-pid "$spid")
    kill -INT "$cpid" 2>/dev/null
    wait "$cpid" 2>/dev/null
    kill -TERM "$spid" 2>/dev/null
    wait "$spid" 2>/dev/null
    [ -f "$TMP/count" ] && { log "# counts for $srv conns=$c"; cat "$TMP/count" >>"$LOG"; }
    msgs=$(kv "$line" msgs)
    if [ -z "$line" ] || [ ! -s "$TMP/count" ] || [ "$msgs" = na ] || [ "$msgs" = 0 ]; then
        echo "FAIL loadgen or counter failed (see micro.log)"
        return
    fi
    local ew rd wr ctl other f="$TMP/count"
    if [ "$counter" = perf ]; then
        total=$(perf_count "$f" raw_syscalls:sys_enter)
        ew=$(( $(perf_count "$f" syscalls:sys_enter_epoll_wait) +
               $(perf_count "$f" syscalls:sys_enter_epoll_pwait) ))
        rd=$(( $(perf_count "$f" syscalls:sys_enter_read) +
               $(perf_count "$f" syscalls:sys_enter_readv) +
               $(perf_count "$f" syscalls:sys_enter_recvfrom) +
               $(perf_count "$f" syscalls:sys_enter_recvmsg) ))
        wr=$(( $(perf_count "$f" syscalls:sys_enter_write) +
               $(perf_count "$f" syscalls:sys_enter_writev) +
               $(perf_count "$f" syscalls:sys_enter_sendto) +
               $(perf_count "$f" syscalls:sys_enter_sendmsg) ))
        ctl=$(perf_count "$f" syscalls:sys_enter_epoll_ctl)
    else
        # strace -c rows: % time, seconds, usecs/call, calls, [errors,] name
        total=$(awk '$NF == "total" { print $(NF - 2) }' "$f" | head -n1)
        ew=$(awk '$NF ~ /^epoll_(p)?wait$/ { s += $4 } END { print s + 0 }' "$f")
        rd=$(awk '$NF ~ /^(read|readv|recvfrom|recvmsg)$/ { s += $4 } END { print s + 0 }' "$f")
        wr=$(awk '$NF ~ /^(write|writev|sendto|sendmsg)$/ { s += $4 } END { print s + 0 }' "$f")
        ctl=$(awk '$NF == "epoll_ctl" { s += $4 } END { print s + 0 }' "$f")
    fi
    total=${total:-0}
    if [ "$counter" = perf ] && [ "$SYS_EVENTS" = raw_syscalls:sys_enter ]; then
        ew=na; rd=na; wr=na; ctl=na; other=na
    else
        other=$((total - ew - rd - wr - ctl))
    fi
    echo "$msgs $(kv "$line" msgs_per_s) $total $ew $rd $wr $ctl $other $(kv "$line" server_cpu_ns_per_msg)"
}

section_syscalls() {
    local counter
    counter=$(pick_counter)
    if [ "$counter" = none ]; then
        echo "micro.sh: neither perf nor strace works; skipping syscalls" >&2
        return
    fi
    local waited=0
    while [ ! -x "$BENCH_DIR/loadgen" ] && [ $waited -lt $((WAIT_LOADGEN_MIN * 60)) ]; do
        sleep 30
        waited=$((waited + 30))
    done
    need loadgen "syscalls" || return

    # Interleaved rounds: every server and connection count once per round.
    local -A res=() fails=()
    local port=$PORT_BASE r srv c key out servers=""
    for srv in $SYS_SERVERS; do
        if [ -x "$BENCH_DIR/$srv" ]; then servers="$servers $srv"; else
            log "# $srv not built, skipped"; fi
    done
    for r in $(seq 1 "$ROUNDS"); do
        for srv in $servers; do
            for c in $SYS_CONNS_LIST; do
                port=$((port + 1))
                out=$(sys_run "$srv" "$c" "$port" "$counter")
                key="$srv/$c"
                case "$out" in
                    FAIL*) fails[$key]="${out#FAIL }" ;;
                    *) res[$key]="${res[$key]:-}${out};" ;;
                esac
            done
        done
    done

    echo "### Syscalls per 64-byte echo (server, $counter, loadgen ping-pong ${SYS_DURATION} s, median of $ROUNDS per-run ratios)"
    echo
    echo "| server | conns | msgs/s | syscalls/msg | epoll_wait | read | write | epoll_ctl | other | server CPU ns/msg |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    local run col
    for srv in $servers; do
        for c in $SYS_CONNS_LIST; do
            key="$srv/$c"
            if [ -z "${res[$key]:-}" ]; then
                echo "| $srv | $c | failed: ${fails[$key]:-no data} | | | | | | | |"
                continue
            fi
            # per-run ratios, then medians; fields as printed by sys_run
            local -a rate=() per=() ew=() rd=() wr=() ctl=() oth=() cpu=()
            local IFS_SAVE=$IFS
            IFS=';'
            for run in ${res[$key]}; do
                IFS=$IFS_SAVE
                set -- $run
                rate+=("$2")
                per+=("$(div "$3" "$1" %.4f)")
                ew+=("$(div "$4" "$1" %.4f)")
                rd+=("$(div "$5" "$1" %.4f)")
                wr+=("$(div "$6" "$1" %.4f)")
                ctl+=("$(div "$7" "$1" %.4f)")
                oth+=("$(div "$8" "$1" %.4f)")
                cpu+=("$9")
                IFS=';'
            done
            IFS=$IFS_SAVE
            local row="| $srv | $c | $(fmt "$(median "${rate[@]}")" %.0f)"
            for col in per ew rd wr ctl oth; do
                local -n ref=$col
                row="$row | $(fmt "$(median "${ref[@]}")" %.3f)"
                unset -n ref
            done
            row="$row | $(fmt "$(median "${cpu[@]}")" %.0f) |"
            echo "$row"
            [ -n "${fails[$key]:-}" ] && echo "|  | | (one or more runs failed: ${fails[$key]}) | | | | | | | |"
            SUMMARY+=("| syscalls per echo, $srv, $c conns | $(fmt "$(median "${per[@]}")" %.3f) | |")
        done
    done
    echo
    echo "(epoll_wait ... other: per message as well. Ping-pong with a single"
    echo "connection costs epoll_wait + read + write = 3; with many connections"
    echo "epoll_wait is shared by the events of one batch, so that column depends"
    echo "on how busy the server is.)"
    echo
}

# ---- main ----------------------------------------------------------------

echo "## libem micro-benchmarks ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, $(uname -r))"
echo
has_section timers && section_timers
has_section schedule && section_schedule
has_section idle && section_idle
has_section syscalls && section_syscalls

if [ ${#SUMMARY[@]} -gt 0 ]; then
    echo "### Summary"
    echo
    echo "| measure | value | note |"
    echo "|---|---:|---|"
    printf '%s\n' "${SUMMARY[@]}"
    echo
fi
echo "Raw RESULT lines: $LOG"
