#!/usr/bin/env bash
# tls_run.sh - TLS benchmark driver: libem against nginx, TLS echo against plain.
#
# What: per round, for each configuration, runs both of its servers back to
# back (pinned to CPU 0) under bench/tls_loadgen (pinned to CPU 1):
#   hs-ecdsa      full TLS 1.3 handshakes, ECDSA P-256 certificate
#   hs-rsa        full TLS 1.3 handshakes, RSA-2048 certificate
#   resume-ecdsa  resumed handshakes (session tickets), ECDSA P-256
#       servers: echo_tls_libem, and nginx from Debian with one process
#       (master_process off), the same certificate and the same client.
#       A cycle is connect, handshake, one small request, first byte of the
#       reply, close_notify, close.
#   echo-16k      16 KiB ping-pong on keep-alive connections: echo_tls_libem
#                 over TLS against echo_tls_libem --plain.
# Next to them, `openssl speed` (pinned to CPU 0) gives sign/s and verify/s
# of the two keys and X25519 op/s: the raw cost of the public-key work in a
# handshake on the same core.
# Why: handshakes per server CPU-second (schedstat, as bench/loadgen.c reads
# it) is what separates servers when, as here, one client core saturates
# before the server core does; messages/s is the echo's headline. Machine
# noise drifts over seconds, so the two servers of a configuration run in
# the same round, their order alternating between rounds, and the report
# gives the median of the per-round ratios with their min..max range.
# Certificates (CN and SAN localhost) are made with the openssl CLI in a
# temporary directory, which also holds nginx's configuration, logs and pid.
# Other work on the machine (builds, tests, other benchmarks) shares the
# pinned cores, so each pair waits for a quiet moment, and a pair in which
# the server or the client waited for its CPU more than 5% of the window
# (schedstat run-queue time) is run again; the abandoned rows stay in the
# TSV with status "noisy".
# Outputs: markdown on stdout, raw rows in <bench-dir>/tls_results.tsv and a
# log in <bench-dir>/tls_run.log. A failed run (server not starting, client
# errors, resumption below 90%) is recorded with its status and left out of
# the ratios; the run goes on.

set -u

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

ROUNDS=9
DURATION=3
WARMUP=1
HS_CONNS=32
ECHO_CONNS=32
ECHO_SIZE=16384
CONFIGS="hs-ecdsa hs-rsa resume-ecdsa echo-16k"
SPEED_EVERY_ROUND=yes
BENCH_DIR="$REPO_DIR/build-bench/bench"
PORT_BASE=24000
PORT_LIMIT=32000
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
MAX_RUNQ=5
RETRIES=3
QUIET_WAIT=60
HS_TARGET=1.0
ECHO_TARGET=0.8

usage() {
    cat <<'EOF'
usage: bench/tls_run.sh [options]
  --quick              about one minute: 3 rounds x 1.5 s, openssl speed once
  --rounds N           rounds (9)
  --duration T         measured seconds per run (3)
  --warmup T           unmeasured seconds before each window (1)
  --hs-conns C         concurrent handshake slots (32)
  --echo-conns C       keep-alive echo connections (32)
  --echo-size S        echo message bytes (16384)
  --configs "LIST"     of: hs-ecdsa hs-rsa resume-ecdsa echo-16k (all)
  --bench-dir DIR      where tls_loadgen and echo_tls_libem are (build-bench/bench)
  --port-base P        first TCP port used (24000)
  --max-runq PCT       a run whose server or client waited for its CPU more
                       than PCT% of the window is noisy (5)
  --retries N          redo a configuration's noisy pair of runs up to N
                       times per round (3; --quick: 1)
  --quiet-wait T       before a pair, wait up to T seconds for 2 s in which
                       nothing else is runnable (60; --quick: 5; 0: never)
EOF
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --quick) ROUNDS=3; DURATION=1.5; WARMUP=0.5; SPEED_EVERY_ROUND=no
                     RETRIES=1; QUIET_WAIT=5 ;;
            --rounds) ROUNDS=$2; shift ;;
            --duration) DURATION=$2; shift ;;
            --warmup) WARMUP=$2; shift ;;
            --hs-conns) HS_CONNS=$2; shift ;;
            --echo-conns) ECHO_CONNS=$2; shift ;;
            --echo-size) ECHO_SIZE=$2; shift ;;
            --configs) CONFIGS=$2; shift ;;
            --bench-dir) BENCH_DIR=$2; shift ;;
            --port-base) PORT_BASE=$2; shift ;;
            --max-runq) MAX_RUNQ=$2; shift ;;
            --retries) RETRIES=$2; shift ;;
            --quiet-wait) QUIET_WAIT=$2; shift ;;
            -h|--help) usage; exit 0 ;;
            *) echo "tls_run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        esac
        shift
    done
}

log() { echo "[tls_run.sh] $*" >&2; echo "[tls_run.sh] $*" >>"$LOG"; }

# ------------------------------------------------------------- environment

setup_pinning() {
    if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
        PIN_SERVER=(taskset -c 0)
        PIN_CLIENT=(taskset -c 1)
    else
        log "WARNING: no taskset or fewer than 2 CPUs: running unpinned"
        PIN_SERVER=()
        PIN_CLIENT=()
    fi
}

check_prerequisites() {
    if [ ! -x "$BENCH_DIR/tls_loadgen" ]; then
        echo "tls_run.sh: no $BENCH_DIR/tls_loadgen: build with -DEM_BUILD_BENCH=ON" >&2
        exit 1
    fi
    HAVE_LIBEM=yes
    if [ ! -x "$BENCH_DIR/echo_tls_libem" ]; then
        log "WARNING: no $BENCH_DIR/echo_tls_libem (libem without TLS?): nginx only"
        HAVE_LIBEM=no
    fi
    HAVE_NGINX=yes
    if [ ! -x "$NGINX" ]; then
        log "WARNING: no nginx (apt-get install nginx-light): libem only"
        HAVE_NGINX=no
    fi
}

make_certs() {
    local subj=(-subj /CN=localhost -addext subjectAltName=DNS:localhost)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$TMP/ecdsa.key" -out "$TMP/ecdsa.crt" -days 30 "${subj[@]}" \
        >>"$LOG" 2>&1 &&
    openssl req -x509 -newkey rsa:2048 -nodes \
        -keyout "$TMP/rsa.key" -out "$TMP/rsa.crt" -days 30 "${subj[@]}" \
        >>"$LOG" 2>&1 || { echo "tls_run.sh: openssl req failed" >&2; exit 1; }
}

# --------------------------------------------------------- openssl speed

# `openssl speed` on the server's core; appends "round key sign/s verify/s"
# rows to $SPEED (X25519: op/s in the sign column; AES-256-GCM on records of
# the echo's size: bytes/s in the sign column).
run_openssl_speed() {
    local round=$1
    "${PIN_SERVER[@]}" openssl speed -seconds 1 ecdsap256 rsa2048 ecdhx25519 \
        2>>"$LOG" | awk -v r="$round" '
        /^rsa 2048 bits/ { print r "\trsa2048\t" $(NF-1) "\t" $NF }
        /ecdsa \(nistp256\)/ { print r "\tecdsap256\t" $(NF-1) "\t" $NF }
        /ecdh \(X25519\)/ { print r "\tx25519\t" $NF "\tna" }' >>"$SPEED"
    "${PIN_SERVER[@]}" openssl speed -seconds 1 -bytes "$ECHO_SIZE" \
        -evp aes-256-gcm 2>>"$LOG" | awk -v r="$round" '
        /^AES-256-GCM/ { v = $NF; sub(/k$/, "", v); printf "%s\taes256gcm\t%.0f\tna\n", r, v * 1000 }' \
        >>"$SPEED"
}

# The median of column 3 (sign/s, op/s or bytes/s) of one $SPEED key.
speed_median() {
    awk -F'\t' -v k="$1" '$2 == k { a[++n] = $3 + 0 }
        END {
            if (n == 0) { print "na"; exit }
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            print (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }' "$SPEED"
}

# Microseconds of public-key work a server does per handshake of a config,
# from openssl speed: one signature (full handshakes) plus an X25519 key
# generation and derivation, counted as two X25519 operations.
pubkey_floor_us() {
    local sign x
    x=$(speed_median x25519)
    case "$1" in
        hs-ecdsa) sign=$(speed_median ecdsap256) ;;
        hs-rsa) sign=$(speed_median rsa2048) ;;
        *) sign=none ;;
    esac
    awk -v s="$sign" -v x="$x" 'BEGIN {
        if (x == "na" || s == "na") { print "na"; exit }
        printf "%.0f\n", (s == "none" ? 0 : 1e6 / s) + 2e6 / x }'
}

# ------------------------------------------------------------ server runs

NEXT_PORT=0
CURRENT_SERVER=

cleanup() {
    [ -n "$CURRENT_SERVER" ] && kill -KILL "$CURRENT_SERVER" 2>/dev/null
    [ -n "${TMP:-}" ] && rm -rf "$TMP"
}

on_interrupt() {
    log "interrupted; partial results in ${RESULTS:-nowhere}"
    exit 130
}

# True when something accepts on the port.
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

wait_for_listen() {
    local pid=$1 port=$2 i
    for i in $(seq 1 500); do
        kill -0 "$pid" 2>/dev/null || return 1
        port_accepts "$port" && return 0
        sleep 0.01
    done
    return 1
}

# TERM, then KILL after 3 s. Sets STOP_STATUS to clean or unclean.
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

# nginx's configuration for one run: one process, no master, every path in
# $TMP, TLS 1.3 only, tickets on, no access log (libem logs nothing either).
write_nginx_conf() {
    local key=$1 port=$2 conf="$TMP/nginx-$2.conf"
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
    keepalive_timeout 60s;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$port ssl backlog=4096;
        ssl_certificate $TMP/$key.crt;
        ssl_certificate_key $TMP/$key.key;
        ssl_protocols TLSv1.3;
        ssl_session_tickets on;
        location / { return 200 "ok\n"; }
    }
}
EOF
    echo "$conf"
}

# Starts a server in the background; sets SERVER_PID. $! is the server's own
# pid: taskset execs it, and nginx neither forks (no master) nor daemonizes.
start_server() {
    local server=$1 key=$2 port=$3
    case "$server" in
        libem|libem-tls)
            "${PIN_SERVER[@]}" "$BENCH_DIR/echo_tls_libem" "$port" \
                "$TMP/$key.crt" "$TMP/$key.key" >>"$LOG" 2>&1 & ;;
        libem-plain)
            "${PIN_SERVER[@]}" "$BENCH_DIR/echo_tls_libem" "$port" \
                "$TMP/$key.crt" "$TMP/$key.key" --plain >>"$LOG" 2>&1 & ;;
        nginx)
            "${PIN_SERVER[@]}" "$NGINX" -p "$TMP" -e "$TMP/nginx-error.log" \
                -c "$(write_nginx_conf "$key" "$port")" >>"$LOG" 2>&1 & ;;
    esac
    SERVER_PID=$!
}

# Splits a RESULT line into RES (key -> value).
declare -A RES
parse_result() {
    local word
    RES=()
    for word in $1; do
        case "$word" in *=*) RES[${word%%=*}]=${word#*=} ;; esac
    done
}

record_row() {
    local IFS=$'\t'
    printf '%s\n' "$*" >>"$RESULTS"
}

client_args() {
    local mode=$1 server=$2
    CLIENT_ARGS=(--port "$PORT" --mode "$mode" --duration "$DURATION"
                 --warmup "$WARMUP" --server-pid "$SERVER_PID")
    if [ "$mode" = echo ]; then
        CLIENT_ARGS+=(--conns "$ECHO_CONNS" --size "$ECHO_SIZE")
        [ "$server" = libem-plain ] && CLIENT_ARGS+=(--plain)
    else
        CLIENT_ARGS+=(--conns "$HS_CONNS")
    fi
}

client_timeout() {
    awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%d", d + w + 20 }'
}

# One server, one configuration, one round.
run_one() {
    local round=$1 config=$2 mode=$3 key=$4 server=$5 line rc
    allocate_port
    echo "== round=$round config=$config server=$server port=$PORT" >>"$LOG"
    start_server "$server" "$key" "$PORT"
    CURRENT_SERVER=$SERVER_PID
    if ! wait_for_listen "$SERVER_PID" "$PORT"; then
        stop_server "$SERVER_PID"
        CURRENT_SERVER=
        log "$server did not start (config $config)"
        record_row "$round" "$config" "$server" server_failed na na na na na \
            na na na na na na
        return
    fi
    client_args "$mode" "$server"
    line=$(timeout "$(client_timeout)" "${PIN_CLIENT[@]}" \
        "$BENCH_DIR/tls_loadgen" "${CLIENT_ARGS[@]}" 2>>"$LOG" |
        grep '^RESULT' | tail -n 1)
    stop_server "$SERVER_PID"
    CURRENT_SERVER=
    record_result "$line" "$round" "$config" "$server"
}

result_status() {
    local line=$1
    if [ -z "$line" ]; then echo client_failed
    elif [ "${RES[status]:-}" != ok ]; then echo "${RES[status]:-unknown}"
    elif [ "$STOP_STATUS" != clean ]; then echo unclean_stop
    else echo ok
    fi
}

record_result() {
    local line=$1 status
    shift
    echo "$line" >>"$LOG"
    parse_result "$line"
    status=$(result_status "$line")
    [ "$status" = not_resumed ] &&
        log "FAIL: $3 resumed only ${RES[resumed_frac]} of its handshakes (round $1)"
    [ "$status" != ok ] && log "run ($*): $status"
    record_row "$@" "$status" "${RES[ops_per_s]:-na}" \
        "${RES[ops_per_server_cpu_s]:-na}" "${RES[server_cpu_us_per_op]:-na}" \
        "${RES[server_cpu_pct]:-na}" "${RES[server_runq_pct]:-na}" \
        "${RES[client_cpu_pct]:-na}" "${RES[resumed_frac]:-na}" \
        "${RES[errors]:-na}" "${RES[p99_us]:-na}" "${RES[mb_per_s]:-na}" \
        "${RES[cipher]:-na}"
}

# config -> mode, key and its two servers (the ratio is first / second).
config_spec() {
    case "$1" in
        hs-ecdsa) SPEC=(handshake ecdsa libem nginx) ;;
        hs-rsa) SPEC=(handshake rsa libem nginx) ;;
        resume-ecdsa) SPEC=(resume ecdsa libem nginx) ;;
        echo-16k) SPEC=(echo ecdsa libem-tls libem-plain) ;;
        *) echo "tls_run.sh: unknown config $1" >&2; exit 2 ;;
    esac
}

server_available() {
    case "$1" in
        nginx) [ "$HAVE_NGINX" = yes ] ;;
        *) [ "$HAVE_LIBEM" = yes ] ;;
    esac
}

# Waits up to QUIET_WAIT seconds until, in 8 of 10 samples over 2 s, no
# task but this shell is runnable (/proc/loadavg's running count; the
# builtin read forks nothing): other benchmarks or builds on the machine
# would otherwise share the pinned cores. Kernel threads wake briefly now
# and then, hence the two samples of slack.
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

# Was the last run disturbed: did its server or client wait for a CPU more
# than MAX_RUNQ percent of the window?
run_was_noisy() {
    awk -v s="${RES[server_runq_pct]:-0}" -v c="${RES[client_runq_pct]:-0}" \
        -v m="$MAX_RUNQ" 'BEGIN { exit !(s + 0 > m + 0 || c + 0 > m + 0) }'
}

# Both servers of the config, first one first in odd rounds: neither profits
# from always running right after the other. A pair with a noisy run is run
# again (up to RETRIES times); the rows of the abandoned attempt stay in the
# TSV with status "noisy", out of the statistics.
run_pair() {
    local round=$1 config=$2 servers server attempt noisy first_row
    servers="${SPEC[2]} ${SPEC[3]}"
    [ $((round % 2)) -eq 0 ] && servers="${SPEC[3]} ${SPEC[2]}"
    for attempt in $(seq 0 "$RETRIES"); do
        [ "$QUIET_WAIT" -gt 0 ] && wait_for_quiet
        noisy=no
        first_row=$(($(wc -l <"$RESULTS") + 1))
        for server in $servers; do
            server_available "$server" || continue
            run_one "$round" "$config" "${SPEC[0]}" "${SPEC[1]}" "$server"
            run_was_noisy && noisy=yes
        done
        [ "$noisy" = no ] && return
        if [ "$attempt" -lt "$RETRIES" ]; then
            log "round $round $config: other load on the machine, running the pair again"
            sed -i "${first_row},\$ s/\tok\t/\tnoisy\t/" "$RESULTS"
        else
            log "round $round $config: still noisy after $RETRIES retries, kept"
        fi
    done
}

run_round() {
    local round=$1 config
    for config in $CONFIGS; do
        config_spec "$config"
        run_pair "$round" "$config"
    done
}

# ---------------------------------------------------------------- analysis

# Per config and server: ok/runs and medians; per config: the per-round
# ratios first/second server of ops/s and of ops per server CPU-second.
# Prints TSV rows: S config server ok runs ops/s ops/cpu-s us/op cpu% runq%
# client% resumed p99 mb/s cipher, and R config first second
# rate(med lo hi n) eff(med lo hi n).
summarize() {
    local specs="" config
    for config in $CONFIGS; do
        config_spec "$config"
        specs="$specs $config:${SPEC[2]}:${SPEC[3]}"
    done
    awk -F'\t' -v specs="$specs" '
    function sort(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) {
            t = a[i]
            for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]
            a[j + 1] = t
        }
    }
    function stats(key,   n, a, i, parts) {
        n = split(list[key], parts, " ")
        if (n == 0) return "na\tna\tna\t0"
        for (i = 1; i <= n; i++) a[i] = parts[i] + 0
        sort(a, n)
        m = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        return sprintf("%.4g\t%.4g\t%.4g\t%d", m, a[1], a[n], n)
    }
    function med(key,   s) { s = stats(key); split(s, p, "\t"); return p[1] }
    function push(key, v) { if (v != "na" && v != "") list[key] = list[key] " " v }
    BEGIN {
        n = split(specs, sp, " ")
        for (i = 1; i <= n; i++) {
            split(sp[i], f, ":"); cfgs[i] = f[1]; first[f[1]] = f[2]; second[f[1]] = f[3]
        }
        ncfg = n
    }
    FNR == 1 { next }
    {
        round = $1; cfg = $2; srv = $3; status = $4
        runs[cfg, srv]++
        if (status != "ok") next
        ok[cfg, srv]++
        rate[cfg, round, srv] = $5; eff[cfg, round, srv] = $6
        k = cfg SUBSEP srv
        push(k SUBSEP "rate", $5); push(k SUBSEP "eff", $6); push(k SUBSEP "us", $7)
        push(k SUBSEP "cpu", $8); push(k SUBSEP "runq", $9); push(k SUBSEP "cli", $10)
        push(k SUBSEP "res", $11); push(k SUBSEP "p99", $13); push(k SUBSEP "mb", $14)
        cipher[cfg, srv] = $15
        if (round > maxround) maxround = round
    }
    END {
        for (c = 1; c <= ncfg; c++) {
            cfg = cfgs[c]; a = first[cfg]; b = second[cfg]
            for (s = 1; s <= 2; s++) {
                srv = s == 1 ? a : b; k = cfg SUBSEP srv
                if (!((cfg, srv) in runs)) continue
                printf "S\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
                    cfg, srv, ok[cfg, srv], runs[cfg, srv], med(k SUBSEP "rate"),
                    med(k SUBSEP "eff"), med(k SUBSEP "us"), med(k SUBSEP "cpu"),
                    med(k SUBSEP "runq"), med(k SUBSEP "cli"), med(k SUBSEP "res"),
                    med(k SUBSEP "p99"), med(k SUBSEP "mb"),
                    ((cfg, srv) in cipher) ? cipher[cfg, srv] : "na"
            }
            for (r = 1; r <= maxround; r++) {
                if (!((cfg, r, a) in rate) || !((cfg, r, b) in rate)) continue
                if (rate[cfg, r, b] > 0) push(cfg SUBSEP "rr", rate[cfg, r, a] / rate[cfg, r, b])
                if (eff[cfg, r, a] != "na" && eff[cfg, r, b] != "na" && eff[cfg, r, b] > 0)
                    push(cfg SUBSEP "re", eff[cfg, r, a] / eff[cfg, r, b])
            }
            printf "R\t%s\t%s\t%s\t%s\t%s\n", cfg, a, b, stats(cfg SUBSEP "rr"),
                stats(cfg SUBSEP "re")
        }
    }' "$RESULTS"
}

# Median sign/s and verify/s per key over the openssl speed runs.
speed_table() {
    echo "| algorithm (openssl speed, CPU 0) | sign/s | verify/s | us per sign |"
    echo "|---|---:|---:|---:|"
    awk -F'\t' '
    function median(s,   n, a, i, j, t) {
        n = split(s, a, " ")
        for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return n == 0 ? "na" : (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 }
      sign[$2] = sign[$2] " " $3; if ($4 != "na") verify[$2] = verify[$2] " " $4 }
    END {
        name["rsa2048"] = "RSA-2048"; name["ecdsap256"] = "ECDSA P-256"
        name["x25519"] = "X25519 key exchange (op/s in the sign column)"
        name["aes256gcm"] = "AES-256-GCM, " ENVIRON["ECHO_SIZE"] "-byte records (MB/s in the sign column; us per record)"
        for (i = 1; i <= n; i++) {
            k = order[i]; s = median(sign[k]); v = verify[k] == "" ? "na" : median(verify[k])
            us = s + 0 > 0 ? 1e6 / s : 0
            if (k == "aes256gcm") { us = ENVIRON["ECHO_SIZE"] * us; s = s / 1e6 }
            printf "| %s | %.0f | %s | %.1f |\n", name[k], s,
                v == "na" ? "na" : sprintf("%.0f", v), us
        }
    }' "$SPEED"
}

# The best TLS/plain ratio AES-256-GCM alone allows (see print_echo).
aead_ceiling() {
    local bps
    bps=$(speed_median aes256gcm)
    awk -v p="$1" -v b="$bps" -v n="$ECHO_SIZE" 'BEGIN {
        if (p == "na" || b == "na" || b + 0 <= 0) { print "na"; exit }
        a = n / b * 1e6; printf "%.2f\n", p / (p + 2 * a) }'
}

fmt_ratio() {
    awk -v m="$1" -v lo="$2" -v hi="$3" -v n="$4" 'BEGIN {
        if (m == "na") print "na"; else printf "%.2f (%.2f..%.2f, %d rounds)\n", m, lo, hi, n }'
}

verdict() {
    awk -v m="$1" -v t="$2" 'BEGIN {
        if (m == "na") print "not measured"
        else if (m + 0 >= t + 0) printf "met (>= %.1f)\n", t
        else printf "**missed** (< %.1f)\n", t }'
}

print_handshakes() {
    local summary=$1
    echo "### Handshakes per second of server CPU"
    echo
    echo "tls_loadgen keeps ${HS_CONNS} cycles in flight. A cycle: connect, TLS 1.3 handshake"
    echo "(X25519, TLS_AES_256_GCM_SHA384), a 35-byte request, first byte of the reply,"
    echo "close_notify, close."
    echo "hs/s is what the client achieved (its core saturates first); hs per server"
    echo "CPU-s = cycles / server CPU seconds (schedstat) is the comparison."
    echo
    echo "| config | server | ok | hs/s | server cpu % | runq % | client cpu % | server us/hs | hs per server cpu-s | resumed | p99 ms |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "$summary" | awk -F'\t' '$1 == "S" && $2 !~ /^echo/ {
        f = "%.0f"
        printf "| %s | %s | %d/%d | %s | %s | %s | %s | %s | %s | %s | %s |\n", $2, $3, $4, $5,
            $6 == "na" ? "na" : sprintf(f, $6), $9 == "na" ? "na" : sprintf(f, $9),
            $10 == "na" ? "na" : sprintf(f, $10),
            $11 == "na" ? "na" : sprintf(f, $11), $8 == "na" ? "na" : sprintf(f, $8),
            $7 == "na" ? "na" : sprintf(f, $7), $12 == "na" ? "na" : sprintf("%.2f", $12),
            $13 == "na" ? "na" : sprintf("%.1f", $13 / 1000) }'
    echo
    echo "| config | libem/nginx hs per server cpu-s: median (min..max) | libem/nginx hs/s | target 1.0 | public-key floor us/hs |"
    echo "|---|---|---|---|---:|"
    local row
    while IFS=$'\t' read -r -a row; do
        [ "${row[0]}" = R ] || continue
        case "${row[1]}" in echo*) continue ;; esac
        echo "| ${row[1]} | $(fmt_ratio "${row[8]}" "${row[9]}" "${row[10]}" "${row[11]}")" \
             "| $(fmt_ratio "${row[4]}" "${row[5]}" "${row[6]}" "${row[7]}")" \
             "| $(verdict "${row[8]}" "$HS_TARGET") | $(pubkey_floor_us "${row[1]}") |"
    done <<<"$summary"
    echo
    echo "Public-key floor: what \`openssl speed\` says the signature (full handshakes)"
    echo "and two X25519 operations cost on CPU 0; the rest of server us/hs is the rest"
    echo "of OpenSSL (key schedule, records, tickets, allocation), the kernel and the server."
    echo
}

print_echo() {
    local summary=$1
    echo "### ${ECHO_SIZE}-byte echo: TLS against plaintext (echo_tls_libem)"
    echo
    echo "${ECHO_CONNS} keep-alive connections, one message in flight each, every byte verified."
    echo
    echo "| config | server | ok | msgs/s | MB/s | server cpu % | runq % | client cpu % | server us/msg | p99 us |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "$summary" | awk -F'\t' '$1 == "S" && $2 ~ /^echo/ {
        printf "| %s | %s | %d/%d | %s | %s | %s | %s | %s | %s | %s |\n", $2, $3, $4, $5,
            $6 == "na" ? "na" : sprintf("%.0f", $6), $14 == "na" ? "na" : sprintf("%.0f", $14),
            $9 == "na" ? "na" : sprintf("%.0f", $9), $10 == "na" ? "na" : sprintf("%.0f", $10),
            $11 == "na" ? "na" : sprintf("%.0f", $11),
            $8 == "na" ? "na" : sprintf("%.1f", $8), $13 == "na" ? "na" : sprintf("%.0f", $13) }'
    echo
    echo "| config | TLS/plain msgs/s: median (min..max) | TLS/plain msgs per server cpu-s | target 0.8 (msgs/s) | AES-GCM ceiling |"
    echo "|---|---|---|---|---:|"
    local row plain_us
    plain_us=$(printf '%s\n' "$summary" |
        awk -F'\t' '$1 == "S" && $3 == "libem-plain" { print $8 }')
    while IFS=$'\t' read -r -a row; do
        [ "${row[0]}" = R ] || continue
        case "${row[1]}" in echo*) ;; *) continue ;; esac
        echo "| ${row[1]} | $(fmt_ratio "${row[4]}" "${row[5]}" "${row[6]}" "${row[7]}")" \
             "| $(fmt_ratio "${row[8]}" "${row[9]}" "${row[10]}" "${row[11]}")" \
             "| $(verdict "${row[4]}" "$ECHO_TARGET") | $(aead_ceiling "${plain_us:-na}") |"
    done <<<"$summary"
    echo
    echo "AES-GCM ceiling: P / (P + 2A), P = plaintext server us/msg, A = us per"
    echo "${ECHO_SIZE}-byte AES-256-GCM record from \`openssl speed\`. Each echoed message is"
    echo "decrypted and encrypted once by the server (and by the client), so even a"
    echo "TLS layer that cost nothing else could not do better than this ratio."
}

print_markdown() {
    local summary
    summary=$(summarize)
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r), $(nproc) CPUs," \
         "$(openssl version | cut -d' ' -f1-2), nginx $("$NGINX" -v 2>&1 | sed 's|.*nginx/||')," \
         "rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s."
    echo "Servers on CPU 0 (echo_tls_libem; nginx with one process, master_process off,"
    echo "access_log off, tickets on, default session cache), tls_loadgen on CPU 1."
    echo "Ratios are per round (both servers in the same round, order alternating),"
    echo "reported as median (min..max). runq % = share of the window the server waited"
    echo "for its CPU (other load on the machine; high = noisy run). ok = runs kept /"
    echo "runs made: a pair with a noisy run is redone up to $RETRIES times."
    [ "$ROUNDS" -lt 5 ] &&
        echo "Only $ROUNDS rounds: runs drift by about 15% here, so verdicts are indicative."
    echo
    case " $CONFIGS " in *" hs-"*|*" resume-"*) print_handshakes "$summary" ;; esac
    echo "$(ECHO_SIZE=$ECHO_SIZE speed_table)"
    echo
    case " $CONFIGS " in *" echo-"*) print_echo "$summary" ;; esac
}

# -------------------------------------------------------------------- main

main() {
    parse_args "$@"
    mkdir -p "$BENCH_DIR"
    RESULTS="$BENCH_DIR/tls_results.tsv"
    LOG="$BENCH_DIR/tls_run.log"
    SPEED="$BENCH_DIR/tls_speed.tsv"
    : >"$LOG"
    : >"$SPEED"
    TMP=$(mktemp -d /tmp/tls_bench.XXXXXX)
    trap cleanup EXIT
    trap on_interrupt INT TERM
    check_prerequisites
    setup_pinning
    make_certs
    printf 'round\tconfig\tserver\tstatus\tops_per_s\tops_per_cpu_s\tus_per_op\tcpu_pct\trunq_pct\tclient_pct\tresumed\terrors\tp99_us\tmb_per_s\tcipher\n' >"$RESULTS"
    local round
    for round in $(seq 1 "$ROUNDS"); do
        if [ "$round" -eq 1 ] || [ "$SPEED_EVERY_ROUND" = yes ]; then
            log "round $round/$ROUNDS: openssl speed"
            run_openssl_speed "$round"
        fi
        log "round $round/$ROUNDS: $CONFIGS"
        run_round "$round"
    done
    print_markdown
    log "raw results: $RESULTS"
}

main "$@"
