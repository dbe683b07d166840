#!/usr/bin/env bash
# ruby_backport_echo.sh - the seed's Backport echo server on this repository's
# Backport library (ruby/lib/backport.rb) against the same adapter written
# directly on EventMachine's API (an EM::Connection module), both on the same
# engine, driven by bench/loadgen.
#
#   bench/ruby_backport_echo.sh [--rounds N] [--duration T] [--warmup T]
#                               [--conns "LIST"] [--size S] [--pipeline D]
#                               [--engine eventmachine|libem]
#
# What: for each connection count and round, runs the two servers in turn
# (backport, em, then again), each pinned to CPU 0 with loadgen on CPU 1
# (pingpong mode: every connection keeps D messages of S bytes in flight and
# loadgen checks every echoed byte). Prints a markdown table: messages/s and
# server CPU per message for each server (median of the rounds), and the
# Backport/EM ratio of messages/s (median, and the min..max of the per-round
# ratios: rounds are interleaved, so machine noise hits both alike).
# Why these servers: the seed's adapter answers "Client sent: " + data, which
# loadgen's byte check would reject, so both echo the data as it came;
# opening and closing count connections instead of printing. Everything
# else is the seed's shape: a module adapter, prepare_tcp_server in
# Backport.run. The engine is Debian's EventMachine unless
# --engine libem (ruby -rlibem/eventmachine, when this tree has it).
# loadgen: build-bench/bench/loadgen or build/bench/loadgen when built
# (make bench), else compiled from bench/loadgen.c into a temporary directory.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

ROUNDS=3
DURATION=2
WARMUP=0.5
CONNS_LIST="1 100"
SIZE=64
PIPELINE=1
ENGINE=eventmachine
PORT=$((21000 + RANDOM % 2000))

while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --conns) CONNS_LIST=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --pipeline) PIPELINE=$2; shift ;;
    --engine) ENGINE=$2; shift ;;
    -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "ruby_backport_echo.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill -KILL "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

LOADGEN=
for f in "$REPO_DIR/build-bench/bench/loadgen" "$REPO_DIR/build/bench/loadgen"; do
    [ -x "$f" ] && LOADGEN=$f && break
done
if [ -z "$LOADGEN" ]; then
    LOADGEN=$WORK/loadgen
    cc -std=c11 -O2 -Wall -Wextra -o "$LOADGEN" "$SCRIPT_DIR/loadgen.c"
fi

RUBY_ARGS=(-I "$REPO_DIR/ruby/lib")
case "$ENGINE" in
eventmachine) ;;
libem) RUBY_ARGS+=(-rlibem/eventmachine) ;;
*) echo "ruby_backport_echo.sh: --engine eventmachine or libem" >&2; exit 2 ;;
esac

if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c 0)
    PIN_CLIENT=(taskset -c 1)
else
    PIN_SERVER=()
    PIN_CLIENT=()
fi

cat >"$WORK/backport_echo.rb" <<'RUBY'
require 'backport'

module EchoAdapter
  def opening
    $connections += 1
  end

  def closing
    $connections -= 1
  end

  def receiving data
    write data
  end
end

$connections = 0
%w[INT TERM].each { |sig| trap(sig) { Backport.stop } }
Backport.run do
  Backport.prepare_tcp_server(host: '127.0.0.1', port: Integer(ARGV[0]), adapter: EchoAdapter)
end
RUBY

cat >"$WORK/em_echo.rb" <<'RUBY'
require 'eventmachine'

module EchoConnection
  def post_init
    $connections += 1
  end

  def unbind
    $connections -= 1
  end

  def receive_data data
    send_data data
  end
end

$connections = 0
%w[INT TERM].each { |sig| trap(sig) { EM.stop } }
EM.epoll
EM.run do
  EM.start_server('127.0.0.1', Integer(ARGV[0]), EchoConnection)
end
RUBY

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# run_one SERVER CONNS PORT -> "msgs_per_s cpu_ns_per_msg errors" (or "fail")
run_one() {
    local server=$1 conns=$2 i line
    PORT=$3
    "${PIN_SERVER[@]}" ruby "${RUBY_ARGS[@]}" "$WORK/$server.rb" "$PORT" \
        >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for i in $(seq 1 500); do
        port_open "$PORT" && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.02
    done
    line=$("${PIN_CLIENT[@]}" "$LOADGEN" --port "$PORT" --mode pingpong \
        --conns "$conns" --size "$SIZE" --pipeline "$PIPELINE" \
        --duration "$DURATION" --warmup "$WARMUP" --server-pid "$SERVER_PID" \
        2>>"$WORK/loadgen.log" | grep '^RESULT' | tail -n 1 || true)
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    if [ -z "$line" ]; then
        echo fail
        return
    fi
    local rate=na cpu=na errors=na word
    for word in $line; do
        case "$word" in
        msgs_per_s=*) rate=${word#*=} ;;
        server_cpu_ns_per_msg=*) cpu=${word#*=} ;;
        errors=*) errors=${word#*=} ;;
        esac
    done
    echo "$rate $cpu $errors"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "na"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

engine_name=$ENGINE
[ "$ENGINE" = eventmachine ] && engine_name="Debian's EventMachine ($(ruby -reventmachine -e 'print EM::VERSION'))"
echo "Backport echo vs EventMachine echo on $engine_name: ruby $(ruby -e 'print RUBY_VERSION'), $ROUNDS rounds x ${DURATION} s, $SIZE-byte messages, pipeline $PIPELINE"
echo
echo "| conns | Backport msgs/s | EM msgs/s | Backport/EM msgs/s, median (min..max) | Backport CPU ns/msg | EM CPU ns/msg | errors |"
echo "|---|---|---|---|---|---|---|"
status=0
for conns in $CONNS_LIST; do
    : >"$WORK/bp" && : >"$WORK/em" && : >"$WORK/ratio" && : >"$WORK/bpcpu" && : >"$WORK/emcpu"
    errors=0
    for round in $(seq 1 "$ROUNDS"); do
        # A port per run: no TIME_WAIT leftovers between runs.
        read -r bp_rate bp_cpu bp_err <<<"$(run_one backport_echo "$conns" $((PORT += 1)))"
        read -r em_rate em_cpu em_err <<<"$(run_one em_echo "$conns" $((PORT += 1)))"
        if [ "$bp_rate" = fail ] || [ "$em_rate" = fail ]; then
            echo "round $round at $conns connections failed (logs: $WORK)" >&2
            status=1
            continue
        fi
        errors=$((errors + bp_err + em_err))
        echo "$bp_rate" >>"$WORK/bp"
        echo "$em_rate" >>"$WORK/em"
        echo "$bp_cpu" >>"$WORK/bpcpu"
        echo "$em_cpu" >>"$WORK/emcpu"
        awk -v a="$bp_rate" -v b="$em_rate" 'BEGIN { printf "%.3f\n", (b > 0 ? a / b : 0) }' >>"$WORK/ratio"
    done
    if [ ! -s "$WORK/ratio" ]; then
        echo "| $conns | failed | failed | | | | |"
        continue
    fi
    ratio_med=$(median <"$WORK/ratio")
    ratio_min=$(sort -g "$WORK/ratio" | head -n 1)
    ratio_max=$(sort -g "$WORK/ratio" | tail -n 1)
    printf '| %s | %.0f | %.0f | %.2f (%.2f..%.2f) | %.0f | %.0f | %s |\n' "$conns" \
        "$(median <"$WORK/bp")" "$(median <"$WORK/em")" "$ratio_med" "$ratio_min" "$ratio_max" \
        "$(median <"$WORK/bpcpu")" "$(median <"$WORK/emcpu")" "$errors"
    [ "$errors" = 0 ] || status=1
done
exit $status
