#!/usr/bin/env bash
# ruby_run.sh - the Ruby engine benchmark: libem's rubyeventmachine against
# Debian's (ruby-eventmachine), the same Ruby programs on both.
#
# What: per round, for each benchmark, runs the program on both engines
# back to back (their order alternating between rounds), server pinned to
# CPU 0, load generator to CPU 1:
#   echo  bench/ruby/echo.rb, an ordinary EventMachine echo server, driven
#         by bench/loadgen (ping-pong, CONNS connections, SIZE-byte
#         messages): messages/s and server CPU per message;
#   thin  thin serving ruby/test/apps/hello.ru (hello world), driven by
#         `wrk -t1 -cCONNS` (or `ab -k` without wrk): requests/s and server
#         CPU per request; every response must be a 2xx, without socket
#         errors.
# libem's engine is activated as a user would: ruby -I ruby/lib
# -rlibem/eventmachine (LIBEM_RUBY_EXT names the bench build's extension);
# Debian's is what plain `require "eventmachine"` loads.
# Server CPU is the run time of all the server's threads over the measured
# window (/proc/PID/task/*/schedstat, as bench/loadgen.c reads it; utime +
# stime ticks are too coarse for a few seconds), and its run-queue wait
# says how much of the window other processes on the machine took.
# Why ratios within a round: the machine is shared and drifts over
# seconds; the ratio ours/Debian's of two runs a few seconds apart is what
# stays comparable. The report gives the median of the per-round ratios
# with their min..max range, and the load average before and after.
# Other work on the machine takes the pinned cores now and then: before a
# pair the script waits for a quiet moment, and a pair in which a server
# waited for its CPU more than MAX_RUNQ % of the window is run again (its
# rows stay in the TSV with status "noisy", out of the statistics).
# With strace installed, one more run per engine and benchmark counts the
# server's syscalls (strace -c, attached to every thread once it listens)
# per message or request; --no-strace skips it.
# Outputs: markdown on stdout, raw rows in <bench-dir>/ruby_results.tsv, a
# log in <bench-dir>/ruby_run.log. A failed run is recorded with its status
# and left out of the ratios; the run goes on.

set -u

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

ROUNDS=5
ECHO_DURATION=5
ECHO_WARMUP=1
THIN_DURATION=10
THIN_WARMUP=2
CONNS=100
SIZE=64
BENCHES="echo thin"
# thin answers "Connection: close" beyond 100 keep-alive connections by
# default, and a client racing that close sees resets: room for them all.
STRACE=auto
CLIENT=auto
STRACE_DURATION=3
BENCH_DIR="$REPO_DIR/build-bench/bench"
PORT_BASE=26000
ECHO_TARGET=1.3
THIN_TARGET=1.0
MAX_RUNQ=5
RETRIES=3
QUIET_WAIT=60

usage() {
    cat <<'EOF'
usage: bench/ruby_run.sh [options]
  --quick              about two minutes: 3 rounds, echo 2 s, thin 3 s
  --rounds N           rounds (5)
  --echo-duration T    measured seconds of an echo run (5), after 1 s warm-up
  --thin-duration T    seconds of a thin run (10: wrk -d10s), after 2 s warm-up
  --conns N            connections of both load generators (100)
  --size S             echo message size in bytes (64)
  --benches "LIST"     echo and/or thin ("echo thin")
  --no-strace          skip the syscall count runs
  --client wrk|ab      thin's load generator (wrk when installed, else ab -k)
  --max-runq PCT       a pair in which a server waited for its CPU more than
                       PCT % of the window is run again (5), up to
  --retries N          N more times (3)
  --quiet-wait T       before a pair, wait up to T seconds for a quiet
                       machine (60; 0: do not wait)
  --bench-dir DIR      the bench build's bench/ (build-bench/bench): loadgen,
                       and ../ruby/rubyeventmachine.so
  --port-base P        first TCP port used (26000)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) ROUNDS=3; ECHO_DURATION=2; ECHO_WARMUP=0.5; THIN_DURATION=3
                 THIN_WARMUP=1; STRACE_DURATION=2 ;;
        --rounds) ROUNDS=$2; shift ;;
        --echo-duration) ECHO_DURATION=$2; shift ;;
        --thin-duration) THIN_DURATION=$2; shift ;;
        --conns) CONNS=$2; shift ;;
        --size) SIZE=$2; shift ;;
        --benches) BENCHES=$2; shift ;;
        --no-strace) STRACE=no ;;
        --client) CLIENT=$2; shift ;;
        --max-runq) MAX_RUNQ=$2; shift ;;
        --retries) RETRIES=$2; shift ;;
        --quiet-wait) QUIET_WAIT=$2; shift ;;
        --bench-dir) BENCH_DIR=$2; shift ;;
        --port-base) PORT_BASE=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "ruby_run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

log() { echo "[ruby_run.sh] $*" >&2; }

BENCH_DIR=$(cd "$BENCH_DIR" 2>/dev/null && pwd) || { log "no bench dir"; exit 1; }
RESULTS="$BENCH_DIR/ruby_results.tsv"
LOG="$BENCH_DIR/ruby_run.log"
EXT="$(dirname "$BENCH_DIR")/ruby/rubyeventmachine.so"
APP_DIR="$REPO_DIR/ruby/test/apps"
RUBY=$(command -v ruby || true)
THIN=$(command -v thin || true)
WRK=$(command -v wrk || true)
AB=$(command -v ab || true)
[ "$CLIENT" = ab ] && WRK=""

# ------------------------------------------------------------ environment

if [ -z "$RUBY" ]; then
    log "no ruby"; exit 1
fi
if [ ! -f "$EXT" ]; then
    log "no $EXT: configure the bench build with ruby-dev installed"; exit 1
fi
if ! "$RUBY" -e 'require "rubyeventmachine"' 2>/dev/null; then
    log "Debian's engine (ruby-eventmachine) is not installed"; exit 1
fi
if [[ " $BENCHES " == *" echo "* ]] && [ ! -x "$BENCH_DIR/loadgen" ]; then
    log "no $BENCH_DIR/loadgen: build with -DEM_BUILD_BENCH=ON"; exit 1
fi
THIN_PERSISTENT=$((CONNS > 512 ? 2 * CONNS : 1024))
if [[ " $BENCHES " == *" thin "* ]]; then
    if [ -z "$THIN" ] || { [ -z "$WRK" ] && [ -z "$AB" ]; }; then
        log "thin, and wrk or ab, are needed (scripts/deps.sh --bench): no thin run"
        BENCHES=${BENCHES//thin/}
    fi
fi
[ "$STRACE" = auto ] && { command -v strace >/dev/null && STRACE=yes || STRACE=no; }

if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c 0)
    PIN_CLIENT=(taskset -c 1)
else
    log "WARNING: no taskset or fewer than 2 CPUs: running unpinned"
    PIN_SERVER=()
    PIN_CLIENT=()
fi

engine_args() {
    if [ "$1" = libem ]; then
        echo "-I $REPO_DIR/ruby/lib -rlibem/eventmachine"
    fi
}

# ------------------------------------------------------------ server runs

NEXT_PORT=$PORT_BASE
CURRENT_SERVER=

on_interrupt() {
    [ -n "$CURRENT_SERVER" ] && kill -KILL "$CURRENT_SERVER" 2>/dev/null
    log "interrupted; partial results in $RESULTS"
    exit 130
}
trap on_interrupt INT TERM

port_accepts() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

allocate_port() {
    while port_accepts "$NEXT_PORT"; do
        NEXT_PORT=$((NEXT_PORT + 1))
    done
    PORT=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 1))
}

# Up to 20 s (thin loads Rack first); fails early if the server died.
wait_for_listen() {
    local pid=$1 port=$2 i
    for i in $(seq 1 400); do
        kill -0 "$pid" 2>/dev/null || return 1
        port_accepts "$port" && return 0
        sleep 0.05
    done
    return 1
}

# Starts the benchmark's server on the engine; sets SPID. The servers
# stop on SIGTERM (echo.rb traps it) or SIGINT (thin traps both).
start_server() {
    local bench=$1 engine=$2
    local -a args
    read -r -a args <<<"$(engine_args "$engine")"
    allocate_port
    echo "== $bench $engine port=$PORT" >>"$LOG"
    if [ "$bench" = echo ]; then
        LIBEM_RUBY_EXT=$EXT "${PIN_SERVER[@]}" "$RUBY" "${args[@]}" \
            "$SCRIPT_DIR/ruby/echo.rb" "$PORT" >>"$LOG" 2>&1 &
    else
        LIBEM_RUBY_EXT=$EXT "${PIN_SERVER[@]}" "$RUBY" "${args[@]}" "$THIN" \
            -R "$APP_DIR/hello.ru" -a 127.0.0.1 -p "$PORT" -e production \
            --max-persistent-conns "$THIN_PERSISTENT" start >>"$LOG" 2>&1 &
    fi
    SPID=$! # taskset execs ruby: the server's own pid
    CURRENT_SERVER=$SPID
    wait_for_listen "$SPID" "$PORT"
}

stop_server() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.02
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    CURRENT_SERVER=
}

# Run time and run-queue wait of all the server's threads, in ns.
server_cpu() {
    cat /proc/"$1"/task/*/schedstat 2>/dev/null |
        awk '{ r += $1; q += $2 } END { printf "%.0f %.0f\n", r, q }'
}

record_row() {
    local IFS=$'\t'
    printf '%s\n' "$*" >>"$RESULTS"
}

# One echo run: loadgen's RESULT line gives everything.
run_echo() {
    local round=$1 engine=$2 line status=ok
    declare -A R=()
    if ! start_server echo "$engine"; then
        stop_server "$SPID"
        record_row "$round" echo "$engine" server_failed na na na na
        log "echo on $engine did not start"
        return
    fi
    line=$(timeout $((30 + ${ECHO_DURATION%.*})) "${PIN_CLIENT[@]}" "$BENCH_DIR/loadgen" \
        --port "$PORT" --mode pingpong --conns "$CONNS" --size "$SIZE" \
        --pipeline 1 --duration "$ECHO_DURATION" --warmup "$ECHO_WARMUP" \
        --server-pid "$SPID" 2>>"$LOG" | grep '^RESULT' | tail -n 1)
    stop_server "$SPID"
    echo "$line" >>"$LOG"
    local word
    for word in $line; do
        case "$word" in *=*) R[${word%%=*}]=${word#*=} ;; esac
    done
    if [ -z "$line" ]; then
        status=loadgen_failed
    elif [ "${R[errors]:-1}" != 0 ]; then
        status=errors
    fi
    record_row "$round" echo "$engine" "$status" "${R[msgs_per_s]:-na}" \
        "${R[server_cpu_ns_per_msg]:-na}" "${R[server_runq_pct]:-na}" \
        "${R[errors]:-na}"
}

# Drives thin for $1 seconds; prints "requests errors" (errors: socket
# errors plus non-2xx responses), or nothing when the client failed.
drive_thin() {
    local secs=$1 out
    if [ -n "$WRK" ]; then
        out=$("${PIN_CLIENT[@]}" "$WRK" -t1 -c"$CONNS" -d"${secs}s" \
            "http://127.0.0.1:$PORT/" 2>&1) || return
        echo "$out" >>"$LOG"
        awk '/requests in/ { n = $1 }
             /Non-2xx/ { e += $NF }
             /Socket errors/ { gsub(/,/, ""); e += $4 + $6 + $8 + $10 }
             END { if (n) printf "%d %d\n", n, e }' <<<"$out"
    else
        out=$("${PIN_CLIENT[@]}" "$AB" -q -k -c "$CONNS" -t "$secs" -n 100000000 \
            "http://127.0.0.1:$PORT/" 2>&1) || return
        echo "$out" >>"$LOG"
        awk -F: '/^Complete requests/ { n = $2 + 0 }
                 /^Failed requests/ { e += $2 + 0 }
                 /^Non-2xx responses/ { e += $2 + 0 }
                 END { if (n) printf "%d %d\n", n, e }' <<<"$out"
    fi
}

run_thin() {
    local round=$1 engine=$2 status=ok r0 q0 r1 q1 t0 t1 got n=na e=na
    if ! start_server thin "$engine"; then
        stop_server "$SPID"
        record_row "$round" thin "$engine" server_failed na na na na
        log "thin on $engine did not start"
        return
    fi
    drive_thin "$THIN_WARMUP" >/dev/null
    read -r r0 q0 < <(server_cpu "$SPID")
    t0=$(date +%s%N)
    got=$(drive_thin "$THIN_DURATION")
    t1=$(date +%s%N)
    read -r r1 q1 < <(server_cpu "$SPID")
    stop_server "$SPID"
    [ -n "$got" ] && read -r n e <<<"$got"
    if [ -z "$got" ]; then
        status=client_failed
    elif [ "$e" != 0 ]; then
        status=errors
    fi
    awk -v n="$n" -v r="$((r1 - r0))" -v q="$((q1 - q0))" -v w="$((t1 - t0))" \
        -v round="$round" -v engine="$engine" -v status="$status" -v e="$e" \
        'BEGIN { OFS = "\t"
                 if (n == "na" || n == 0) { print round, "thin", engine, status, "na", "na", "na", e; exit }
                 print round, "thin", engine, status, sprintf("%.1f", n / (w / 1e9)),
                       sprintf("%.0f", r / n), sprintf("%.1f", 100 * q / w), e }' >>"$RESULTS"
}

# ------------------------------------------------------------ syscalls

# Server syscalls per message (echo) or request (thin), one run per
# engine: strace -c attached to every thread once the server listens.
strace_one() {
    local bench=$1 engine=$2 out="$BENCH_DIR/ruby_strace_$1_$2.txt" line n tpid
    local -a pids=()
    start_server "$bench" "$engine" || { stop_server "$SPID"; echo "na"; return; }
    local t
    for t in /proc/"$SPID"/task/*; do pids+=(-p "${t##*/}"); done
    strace -c -f -o "$out" "${pids[@]}" 2>>"$LOG" &
    tpid=$!
    sleep 0.5
    if [ "$bench" = echo ]; then
        line=$("${PIN_CLIENT[@]}" "$BENCH_DIR/loadgen" --port "$PORT" --mode pingpong \
            --conns "$CONNS" --size "$SIZE" --pipeline 1 --duration "$STRACE_DURATION" \
            --warmup 0 2>>"$LOG" | grep '^RESULT')
        n=$(sed -n 's/.* msgs=\([0-9]*\).*/\1/p' <<<"$line")
    else
        n=$(drive_thin "$STRACE_DURATION" | cut -d' ' -f1)
    fi
    kill -INT "$tpid" 2>/dev/null
    wait "$tpid" 2>/dev/null
    stop_server "$SPID"
    # strace -c rows: % time, seconds, usecs/call, calls, [errors], syscall
    awk -v n="${n:-0}" '
        /^ *[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+/ && $NF != "total" { calls[$NF] = $4 }
        END {
            if (n == 0) { print "na"; exit }
            t = 0; top = ""
            for (s in calls) t += calls[s]
            # the four most frequent
            for (k = 0; k < 4; k++) {
                best = ""; bv = 0
                for (s in calls) if (calls[s] > bv && !(s in used)) { best = s; bv = calls[s] }
                if (best == "") break
                used[best] = 1
                top = top (top == "" ? "" : ", ") sprintf("%s %.2f", best, bv / n)
            }
            printf "%.2f\t%s\t%d\n", t / n, top, n
        }' "$out"
}

# Waits up to QUIET_WAIT seconds until, in 8 of 10 samples over 2 s, no
# task but this shell is runnable (/proc/loadavg's running count), as
# tls_run.sh does.
wait_for_quiet() {
    local end=$((SECONDS + QUIET_WAIT)) busy i running rest
    while [ "$SECONDS" -lt "$end" ]; do
        busy=0
        for i in 1 2 3 4 5 6 7 8 9 10; do
            read -r _ _ _ running rest </proc/loadavg
            [ "${running%/*}" -gt 1 ] && busy=$((busy + 1))
            sleep 0.2
        done
        [ "$busy" -le 2 ] && return 0
    done
    log "machine still busy after ${QUIET_WAIT}s, running anyway"
    return 1
}

# Both engines on one benchmark, the round deciding which goes first; run
# again while a server waited for its CPU too long.
run_pair() {
    local round=$1 bench=$2 engines=$3 attempt engine first_row noisy
    for attempt in $(seq 0 "$RETRIES"); do
        [ "$QUIET_WAIT" -gt 0 ] && wait_for_quiet
        first_row=$(($(wc -l <"$RESULTS") + 1))
        for engine in $engines; do
            "run_$bench" "$round" "$engine"
        done
        noisy=$(tail -n +"$first_row" "$RESULTS" | awk -F'\t' -v m="$MAX_RUNQ" \
            '$7 != "na" && $7 + 0 > m + 0 { n++ } END { print n + 0 }')
        [ "$noisy" = 0 ] && return
        if [ "$attempt" -lt "$RETRIES" ]; then
            log "round $round $bench: other load on the machine, running the pair again"
            sed -i "${first_row},\$ s/\tok\t/\tnoisy\t/" "$RESULTS"
        else
            log "round $round $bench: still noisy after $RETRIES retries, kept"
        fi
    done
}

# ---------------------------------------------------------------- analysis

# Per benchmark and engine: ok/runs, medians; per benchmark: the per-round
# ratios libem/debian of the rate and of CPU per unit, median lo hi n.
summarize() {
    awk -F'\t' '
    function sort(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) {
            t = a[i]
            for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]
            a[j + 1] = t
        }
    }
    function stats(key,   n, a, i, parts, m) {
        n = split(list[key], parts, " ")
        if (n == 0) return "na\tna\tna\t0"
        for (i = 1; i <= n; i++) a[i] = parts[i] + 0
        sort(a, n)
        m = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        return sprintf("%s\t%s\t%s\t%d", m, a[1], a[n], n)
    }
    function push(key, v) { list[key] = list[key] " " v }
    FNR == 1 { next }
    {
        round = $1; b = $2; e = $3
        if (!(b in seen)) { seen[b] = 1; order[++nb] = b }
        runs[b, e]++
        if ($4 != "ok") next
        ok[b, e]++
        rate[b, round, e] = $5; cpu[b, round, e] = $6
        push(b SUBSEP e SUBSEP "rate", $5); push(b SUBSEP e SUBSEP "cpu", $6)
        push(b SUBSEP e SUBSEP "runq", $7)
        if (round > maxround) maxround = round
    }
    END {
        for (i = 1; i <= nb; i++) {
            b = order[i]
            for (r = 1; r <= maxround; r++) {
                if (!((b, r, "libem") in rate) || !((b, r, "debian") in rate)) continue
                push(b SUBSEP "rr", rate[b, r, "libem"] / rate[b, r, "debian"])
                push(b SUBSEP "cr", cpu[b, r, "libem"] / cpu[b, r, "debian"])
            }
            for (k = 1; k <= 2; k++) {
                e = k == 1 ? "libem" : "debian"
                split(stats(b SUBSEP e SUBSEP "rate"), s1, "\t")
                split(stats(b SUBSEP e SUBSEP "cpu"), s2, "\t")
                split(stats(b SUBSEP e SUBSEP "runq"), s3, "\t")
                printf "S\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", b, e, ok[b, e], runs[b, e],
                    s1[1], s2[1], s3[1]
            }
            printf "R\t%s\t%s\t%s\n", b, stats(b SUBSEP "rr"), stats(b SUBSEP "cr")
        }
    }' "$RESULTS"
}

version_of() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }

print_markdown() {
    local summary=$1 load_before=$2 load_after=$3 strace_rows=$4
    local libem_version
    libem_version=$(LIBEM_RUBY_EXT=$EXT "$RUBY" -I "$REPO_DIR/ruby/lib" \
        -rlibem/eventmachine -e 'print EventMachine::LIBEM_VERSION' 2>/dev/null)
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r), $(nproc) CPUs," \
        "$("$RUBY" -e 'print RUBY_DESCRIPTION.split(" ")[0, 2].join(" ")')," \
        "libem's engine $libem_version against Debian's ruby-eventmachine" \
        "$(version_of ruby-eventmachine); thin $(version_of thin)," \
        "$([ -n "$WRK" ] && echo "wrk $(version_of wrk)" || echo "ab -k")."
    echo "rounds=$ROUNDS; echo: loadgen ping-pong, $CONNS connections, $SIZE-byte" \
        "messages, ${ECHO_DURATION}s after ${ECHO_WARMUP}s warm-up; thin:" \
        "$([ -n "$WRK" ] && echo "wrk -t1 -c$CONNS -d${THIN_DURATION}s" || echo "ab -k -c $CONNS -t $THIN_DURATION")" \
        "after ${THIN_WARMUP}s warm-up. Server on CPU 0, load generator on CPU 1;" \
        "engines alternate first/second between rounds."
    echo "Load average (1, 5, 15 min) before: $load_before; after: $load_after" \
        "(the machine is shared: runq % is the share of the window the server" \
        "waited for its CPU; $(awk -F'\t' '$4 == "noisy"' "$RESULTS" | wc -l) runs" \
        "with more than $MAX_RUNQ % were run again)."
    echo
    echo "| benchmark | engine | ok | rate (median) | server CPU per unit (median) | runq % |"
    echo "|---|---|---|---:|---:|---:|"
    awk -F'\t' '$1 == "S" {
        unit = $2 == "echo" ? "msgs/s" : "requests/s"
        cu = $2 == "echo" ? "ns/msg" : "ns/request"
        name = $3 == "libem" ? "libem" : "Debian"
        printf "| %s | %s | %s/%s | %s %s | %s %s | %s |\n", $2, name, $4, $5,
            $6 == "na" ? "na" : sprintf("%.0f", $6), unit,
            $7 == "na" ? "na" : sprintf("%.0f", $7), cu,
            $8 == "na" ? "na" : sprintf("%.1f", $8)
    }' <<<"$summary"
    echo
    echo "Ratios libem/Debian, median of the per-round ratios (min..max):"
    echo
    echo "| benchmark | rate libem/Debian | CPU per unit libem/Debian | target (rate) | met |"
    echo "|---|---|---|---|---|"
    awk -F'\t' -v et="$ECHO_TARGET" -v tt="$THIN_TARGET" '$1 == "R" {
        t = $2 == "echo" ? et : tt
        if ($7 == 0) { printf "| %s | na | na | >= %s | no data |\n", $2, t; next }
        printf "| %s | %.2f (%.2f..%.2f) | %.2f (%.2f..%.2f) | >= %s | %s |\n", $2,
            $3, $4, $5, $7, $8, $9, t, ($3 + 0 >= t + 0) ? "yes" : "no"
    }' <<<"$summary"
    if [ -n "$strace_rows" ]; then
        echo
        echo "Server syscalls per message (echo) or request (thin), strace -c on all" \
            "threads over one ${STRACE_DURATION}s run per engine (strace slows both;" \
            "the counts, not the rates, are the point):"
        echo
        echo "| benchmark | engine | syscalls per unit | most frequent, per unit | units |"
        echo "|---|---|---:|---|---:|"
        echo "$strace_rows"
    fi
}

# ---------------------------------------------------------------- main

printf 'round\tbench\tengine\tstatus\trate\tcpu_ns_per_unit\tserver_runq_pct\terrors\n' >"$RESULTS"
: >"$LOG"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before: $load_before"
for round in $(seq 1 "$ROUNDS"); do
    engines="libem debian"
    [ $((round % 2)) -eq 0 ] && engines="debian libem"
    for bench in $BENCHES; do
        log "round $round/$ROUNDS: $bench ($engines)"
        run_pair "$round" "$bench" "$engines"
    done
done
strace_rows=""
if [ "$STRACE" = yes ]; then
    for bench in $BENCHES; do
        for engine in libem debian; do
            log "strace: $bench on $engine"
            row=$(strace_one "$bench" "$engine")
            [ "$row" = na ] && continue
            IFS=$'\t' read -r per top n <<<"$row"
            strace_rows+="| $bench | $([ "$engine" = libem ] && echo libem || echo Debian) | $per | $top | $n |"$'\n'
        done
    done
    strace_rows=${strace_rows%$'\n'}
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
print_markdown "$(summarize)" "$load_before" "$load_after" "$strace_rows"
