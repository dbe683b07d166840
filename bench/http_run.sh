#!/usr/bin/env bash
# http_run.sh - HTTP "Hello, World!" benchmark: libem's examples/http_hello
# against the same server on libevent's evhttp (bench/http_evhttp.c) and
# nginx from Debian, all under `wrk -t1 -c100 -d10s`.
#
# What: per round, each server in turn (the order rotates between rounds)
# is started pinned to CPU 0, warmed up with a short unmeasured wrk run,
# then measured by wrk pinned to CPU 1 with keep-alive connections. For
# each run: requests/s and socket errors as wrk reports them (with non-2xx
# answers counted as errors), and the server's CPU per request: utime +
# stime from /proc/PID/stat before and after the measured run, divided by
# the requests wrk completed. nginx runs as one process (master_process off,
# so the pid we measure is the one that serves), `return 200 "Hello,
# World!"`, access_log off, keepalive_requests high enough that it never
# closes a benchmark connection, everything in a temporary directory, as
# the current user.
# Why: with the server and wrk on one core each, the client may saturate
# its core before the server does, and then requests/s is a tie; CPU per
# request is what separates servers. Machine noise drifts over seconds, so
# servers alternate within a round and the report gives, per rival, the
# median of the per-round ratios (libem/rival) with their min..max. Before
# each round the script waits (bounded) for a moment when nothing else is
# runnable, and each run records how long its server waited for its CPU
# (schedstat run-queue time), wrk's CPU and the load average. A round in
# which a server waited more than MAX_WAIT% of the window is run again, and
# the cleanest attempt is kept.
# Outputs: markdown on stdout, raw rows in <bench-dir>/http_results.tsv,
# a log (wrk's output, server errors) in <bench-dir>/http_run.log.

set -u

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

ROUNDS=3
DURATION=10
WARMUP=1
CONNS=100
PIPELINE=1
SERVERS="libem evhttp nginx"
BENCH_DIR="$REPO_DIR/build-bench/bench"
PORT_BASE=33000
QUIET_WAIT=60
MAX_WAIT=5
RETRIES=3
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}

usage() {
    cat <<'EOF'
usage: bench/http_run.sh [options]
  --quick              3 rounds x 3 s, quiet wait 5 s, no retries
  --rounds N           rounds (3)
  --duration S         measured seconds per run, wrk -d (10)
  --warmup S           unmeasured wrk seconds before each run (1)
  --conns C            wrk -c (100)
  --pipeline N         requests each connection sends at once (1: none; N > 1
                       uses a wrk Lua script, as wrk's pipeline example)
  --servers "LIST"     of: libem evhttp nginx (all three), and libem-lines
                       (bench/http_hello_lines.c: the parser on em_use_lines)
  --bench-dir DIR      where http_hello and http_evhttp are (build-bench/bench)
  --port-base P        first TCP port used (33000)
  --quiet-wait T       before a round, wait up to T s for 2 s in which nothing
                       else is runnable (60; 0: never)
  --max-wait PCT       a round in which a server waited for its CPU more than
                       PCT% of the window is noisy and run again (5)
  --retries N          run a noisy round again up to N times (3); the
                       attempt with the least waiting is kept
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
    --quick) DURATION=3; QUIET_WAIT=5; RETRIES=0 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --pipeline) PIPELINE=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    --bench-dir) BENCH_DIR=$2; shift ;;
    --port-base) PORT_BASE=$2; shift ;;
    --quiet-wait) QUIET_WAIT=$2; shift ;;
    --max-wait) MAX_WAIT=$2; shift ;;
    --retries) RETRIES=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "http_run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
LOG="$BENCH_DIR/http_run.log"
RESULTS="$BENCH_DIR/http_results.tsv"
: >"$LOG"
printf 'round\tserver\tstatus\trequests\trps\terrors\tcpu_ticks\tcpu_us_per_req\tserver_wait_pct\twrk_cpu_pct\tload1\n' >"$RESULTS"

log() { echo "[http_run.sh] $*" >&2; echo "[http_run.sh] $*" >>"$LOG"; }

# ---------------------------------------------------------- environment

if ! command -v wrk >/dev/null; then
    log "installing wrk (scripts/deps.sh --bench)"
    bash "$REPO_DIR/scripts/deps.sh" --bench >&2 || exit 1
fi
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c 0)
    PIN_CLIENT=(taskset -c 1)
else
    log "WARNING: no taskset or fewer than 2 CPUs: running unpinned"
    PIN_SERVER=()
    PIN_CLIENT=()
fi
CLK_TCK=$(getconf CLK_TCK)
TMP=$(mktemp -d /tmp/em-http-bench.XXXXXX)
WRK_SCRIPT=()
if [ "$PIPELINE" -gt 1 ]; then
    cat >"$TMP/pipeline.lua" <<EOF
init = function(args)
    local r = {}
    for i = 1, $PIPELINE do r[i] = wrk.format() end
    req = table.concat(r)
end
request = function() return req end
EOF
    WRK_SCRIPT=(-s "$TMP/pipeline.lua")
fi
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill -KILL "$SERVER_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

available() {
    case "$1" in
    libem) [ -x "$BENCH_DIR/http_hello" ] ;;
    libem-lines) [ -x "$BENCH_DIR/http_hello_lines" ] ;;
    evhttp) [ -x "$BENCH_DIR/http_evhttp" ] ;;
    nginx) [ -x "$NGINX" ] ;;
    *) return 1 ;;
    esac
}
for s in $SERVERS; do
    available "$s" || log "WARNING: $s is not available: skipped"
done

# ------------------------------------------------------------- servers

port_accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

NEXT_PORT=$PORT_BASE
allocate_port() {
    while port_accepts "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
    PORT=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 1))
}

write_nginx_conf() {
    local port=$1 conf="$TMP/nginx-$1.conf"
    mkdir -p "$TMP/nginx-temp"
    cat >"$conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $TMP/nginx-$port.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx-temp/body;
    proxy_temp_path $TMP/nginx-temp/proxy;
    fastcgi_temp_path $TMP/nginx-temp/fastcgi;
    uwsgi_temp_path $TMP/nginx-temp/uwsgi;
    scgi_temp_path $TMP/nginx-temp/scgi;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            default_type text/plain;
            return 200 "Hello, World!";
        }
    }
}
EOF
    echo "$conf"
}

# Starts a server on $PORT, pinned; sets SERVER_PID (taskset execs it).
start_server() {
    case "$1" in
    libem) "${PIN_SERVER[@]}" "$BENCH_DIR/http_hello" "$PORT" >>"$LOG" 2>&1 & ;;
    libem-lines) "${PIN_SERVER[@]}" "$BENCH_DIR/http_hello_lines" "$PORT" \
        >>"$LOG" 2>&1 & ;;
    evhttp) "${PIN_SERVER[@]}" "$BENCH_DIR/http_evhttp" "$PORT" >>"$LOG" 2>&1 & ;;
    nginx) "${PIN_SERVER[@]}" "$NGINX" -p "$TMP" -e "$TMP/nginx-error.log" \
        -c "$(write_nginx_conf "$PORT")" >>"$LOG" 2>&1 & ;;
    esac
    SERVER_PID=$!
    local i
    for i in $(seq 1 300); do
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        port_accepts "$PORT" && return 0
        sleep 0.01
    done
    return 1
}

stop_server() {
    local i
    kill -TERM "$SERVER_PID" 2>/dev/null
    for i in $(seq 1 150); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.02
    done
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=
}

# utime + stime of the server, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }
# Nanoseconds the server's threads waited for a CPU (schedstat field 2).
wait_ns() {
    cat /proc/"$SERVER_PID"/task/*/schedstat 2>/dev/null |
        awk '{ s += $2 } END { printf "%.0f\n", s }'
}

# Up to QUIET_WAIT s for 2 s in which (8 of 10 samples) no task but this
# shell is runnable; `read` is a builtin, so sampling forks nothing.
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
}

# One measured run of one server; appends a row to $RESULTS.
run_one() {
    local round=$1 server=$2 out url
    allocate_port
    url="http://127.0.0.1:$PORT/"
    if ! start_server "$server"; then
        log "$server did not start on port $PORT"
        printf '%s\t%s\tstart-failed\t0\t0\t0\t0\t0\t0\t0\t0\n' \
            "$round" "$server" >>"$RESULTS"
        stop_server
        return
    fi
    "${PIN_CLIENT[@]}" wrk "${WRK_SCRIPT[@]}" -t1 -c"$CONNS" -d"${WARMUP}s" \
        "$url" >>"$LOG" 2>&1
    local load t0 t1 w0 w1 client
    read -r load _ </proc/loadavg
    t0=$(cpu_ticks)
    w0=$(wait_ns)
    # bash's `time` gives wrk's user + system CPU (children included).
    local TIMEFORMAT='%3U %3S'
    { time out=$("${PIN_CLIENT[@]}" wrk "${WRK_SCRIPT[@]}" -t1 -c"$CONNS" \
        -d"${DURATION}s" "$url" 2>&1); } 2>"$TMP/wrk-time"
    t1=$(cpu_ticks)
    w1=$(wait_ns)
    stop_server
    client=$(awk '{ print $1 + $2 }' "$TMP/wrk-time")
    { echo "== round $round $server port $PORT"; echo "$out"; } >>"$LOG"
    awk -v r="$round" -v s="$server" -v t="$((t1 - t0))" -v hz="$CLK_TCK" \
        -v w="$((w1 - w0))" -v d="$DURATION" -v load="$load" -v c="$client" '
        / requests in / { reqs = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Socket errors:/ {
            gsub(/,/, ""); errs += $4 + $6 + $8 + $10
        }
        /Non-2xx or 3xx responses:/ { errs += $NF }
        END {
            cpu = reqs > 0 ? t / hz * 1e6 / reqs : 0
            printf "%s\t%s\tok\t%d\t%.0f\t%d\t%d\t%.2f\t%.1f\t%.0f\t%s\n",
                r, s, reqs, rps, errs, t, cpu, w / (d * 1e9) * 100,
                c / d * 100, load
        }' <<<"$out" >>"$RESULTS"
    tail -n1 "$RESULTS" | awk -F'\t' '{ printf "[http_run.sh] round %s %-11s %8s req/s, %s errors, %s us CPU/request, server waited %s%%, wrk CPU %s%%\n", $1, $2, $5, $6, $8, $9, $10 }' >&2
}

# Did a row from line $1 on have a server that waited for its CPU more than
# MAX_WAIT percent of the window (another program on its core)?
rows_noisy() {
    awk -F'\t' -v from="$1" -v m="$MAX_WAIT" \
        'NR >= from && $3 == "ok" && $9 + 0 > m + 0 { bad = 1 } END { exit !bad }' \
        "$RESULTS"
}

# ------------------------------------------------------------------ runs

log "$(date -u '+%F %T UTC'), load $(cut -d' ' -f1-3 /proc/loadavg), $ROUNDS rounds x ${DURATION}s, wrk -t1 -c$CONNS, pipeline $PIPELINE"
set -- $SERVERS
for round in $(seq 1 "$ROUNDS"); do
    # Rotate: each server goes first in some round.
    order=()
    n=$#
    for i in $(seq 0 $((n - 1))); do
        idx=$(((i + round - 1) % n + 1))
        order+=("${!idx}")
    done
    starts=()
    for attempt in $(seq 0 "$RETRIES"); do
        [ "$QUIET_WAIT" -gt 0 ] && wait_for_quiet
        first=$(($(wc -l <"$RESULTS") + 1))
        starts+=("$first")
        for server in "${order[@]}"; do
            available "$server" && run_one "$round" "$server"
        done
        rows_noisy "$first" || break
        [ "$attempt" -lt "$RETRIES" ] &&
            log "round $round was noisy (a server waited > $MAX_WAIT% for its CPU): again"
    done
    # Keep the attempt whose most-waiting server waited least; the others
    # stay in the TSV as "noisy", out of the report.
    awk -F'\t' -v OFS='\t' -v starts="${starts[*]}" '
        BEGIN { n = split(starts, st, " ") }
        function attempt(line,   i) {
            for (i = n; i >= 1; i--) if (line >= st[i] + 0) return i
            return 0
        }
        { row[NR] = $0; a = attempt(NR); att[NR] = a
          if (a && $3 == "ok" && $9 + 0 > worst[a] + 0) worst[a] = $9 }
        END {
            best = 1
            for (i = 2; i <= n; i++) if (worst[i] + 0 < worst[best] + 0) best = i
            for (l = 1; l <= NR; l++) {
                $0 = row[l]
                if (att[l] && att[l] != best && $3 == "ok") $3 = "noisy"
                print
            }
        }' "$RESULTS" >"$RESULTS.tmp" && mv "$RESULTS.tmp" "$RESULTS"
done

# --------------------------------------------------------------- report

pipeline_note=""
[ "$PIPELINE" -gt 1 ] && pipeline_note=", $PIPELINE requests pipelined per connection"
echo "$(date -u '+%F %H:%M UTC'), $(uname -r), $(nproc) CPUs, wrk $(dpkg-query -W -f='${Version}' wrk 2>/dev/null)," \
    "libevent $(dpkg-query -W -f='${Version}' libevent-dev 2>/dev/null)," \
    "nginx $(dpkg-query -W -f='${Version}' nginx 2>/dev/null);" \
    "$ROUNDS rounds, each server once per round (order rotating), wrk -t1 -c$CONNS -d${DURATION}s$pipeline_note" \
    "after a ${WARMUP}s warm-up. Servers on CPU 0, wrk on CPU 1."
echo "CPU/req = the server's utime + stime (/proc/PID/stat) over the measured run / requests."
echo "waited = share of the window the server waited for its CPU (schedstat; other programs on"
echo "its core); a round where a server waited more than $MAX_WAIT% was run again (up to $RETRIES times)"
echo "and the attempt whose most-waiting server waited least was kept."
echo "wrk CPU near 100% means the client's core, not the server, set requests/s."
echo
awk -F'\t' -v servers="$SERVERS" '
    function median(list,   a, n, i, j, t) {
        n = split(list, a, " ")
        if (n == 0) return "-"
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function range(list,   a, n, i, lo, hi) {
        n = split(list, a, " ")
        lo = hi = a[1]
        for (i = 2; i <= n; i++) { if (a[i] + 0 < lo + 0) lo = a[i]; if (a[i] + 0 > hi + 0) hi = a[i] }
        return sprintf("%.2f..%.2f", lo, hi)
    }
    NR == 1 { next }
    $3 == "noisy" { noisy[$2]++; next }
    $3 != "ok" { failed[$2]++; next }
    {
        rps[$2] = rps[$2] " " $5; cpu[$2] = cpu[$2] " " $8
        errs[$2] += $6; runs[$2]++; waitp[$2] = waitp[$2] " " $9
        wrk[$2] = wrk[$2] " " $10
        R[$1, $2] = $5; C[$1, $2] = $8; rounds[$1] = 1
    }
    END {
        n = split(servers, S, " ")
        print "| server | runs (redone) | requests/s | socket errors | server CPU/req | waited | wrk CPU |"
        print "|---|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= n; i++) {
            s = S[i]
            if (!runs[s]) continue
            printf "| %s | %d (%d) | %.0f | %d | %.2f us | %.1f%% | %.0f%% |\n", s,
                runs[s], noisy[s], median(rps[s]), errs[s], median(cpu[s]),
                median(waitp[s]), median(wrk[s])
        }
        print ""
        print "Medians over the rounds. Ratios within each round, then their median (min..max):"
        print ""
        print "| libem / rival | requests/s | server CPU per request (< 1: libem cheaper) |"
        print "|---|---:|---:|"
        for (i = 1; i <= n; i++) {
            s = S[i]
            if (s == "libem" || !runs[s]) continue
            rr = cr = ""
            for (r in rounds) {
                if (R[r, "libem"] > 0 && R[r, s] > 0) {
                    rr = rr " " R[r, "libem"] / R[r, s]
                    cr = cr " " C[r, "libem"] / C[r, s]
                }
            }
            if (rr == "") continue
            printf "| libem / %s | %.2f (%s) | %.2f (%s) |\n", s,
                median(rr), range(rr), median(cr), range(cr)
        }
        for (s in failed) printf "\n%s failed to start %d times (see http_run.log).\n", s, failed[s]
    }' "$RESULTS"
