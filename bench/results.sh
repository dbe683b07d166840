#!/usr/bin/env bash
# results.sh - regenerates bench/RESULTS.md (and bench/ratios.png) in one go.
#
#   bench/results.sh [--quick] [--bench-dir DIR]
#                    [--tls-only | --http-only | --ruby-only]
#                    [-- run.sh options]
#
# Runs the echo comparison (bench/run.sh), the micro-benchmarks
# (bench/micro.sh), the TLS comparison with nginx (bench/tls_run.sh), the
# zero-copy stream paths (bench/stream_run.sh), UDP echo against libuv
# (bench/udp_run.sh), HTTP hello servers against evhttp and nginx
# (bench/http_run.sh) and the Ruby engine against Debian's
# (bench/ruby_run.sh) on this machine and writes what a reader needs to
# judge the numbers: the
# machine (CPU, cores, kernel, library versions), the exact commands, the
# tables and the chart. `make bench` calls it; the committed RESULTS.md is
# the last full run, so anyone can compare against it. --tls-only runs just
# tls_run.sh and replaces the "## TLS" section of the existing RESULTS.md
# (appending it when there is none), leaving everything else as it was;
# --http-only and --ruby-only do the same with http_run.sh and the
# "## HTTP" section, ruby_run.sh and the "## Ruby engine" section.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_DIR="$SCRIPT_DIR/../build-bench/bench"
QUICK=""
TLS_ONLY=no
HTTP_ONLY=no
RUBY_ONLY=no
RUN_ARGS=()

while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=--quick ;;
    --bench-dir) BENCH_DIR=$2; shift ;;
    --tls-only) TLS_ONLY=yes ;;
    --http-only) HTTP_ONLY=yes ;;
    --ruby-only) RUBY_ONLY=yes ;;
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
    echo "- TLS: OpenSSL $(dpkg-query -W -f='${Version}' libssl3 2>/dev/null)," \
        "nginx $(dpkg-query -W -f='${Version}' nginx 2>/dev/null)"
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'), load average before the run:" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
    echo
}

out="$SCRIPT_DIR/RESULTS.md.new"
run_cmd=(bash "$SCRIPT_DIR/run.sh" --bench-dir "$BENCH_DIR" $QUICK "${RUN_ARGS[@]}")
micro_cmd=(bash "$SCRIPT_DIR/micro.sh" --bench-dir "$BENCH_DIR" $QUICK)
tls_cmd=(bash "$SCRIPT_DIR/tls_run.sh" --bench-dir "$BENCH_DIR" $QUICK)
stream_cmd=(bash "$SCRIPT_DIR/stream_run.sh" --bench-dir "$BENCH_DIR" $QUICK)
http_cmd=(bash "$SCRIPT_DIR/http_run.sh" --bench-dir "$BENCH_DIR" $QUICK)
udp_cmd=(bash "$SCRIPT_DIR/udp_run.sh" --bench-dir "$BENCH_DIR" --rounds 5
         --duration 2 --sizes "64 1024" --load "8x32")
ruby_cmd=(bash "$SCRIPT_DIR/ruby_run.sh" --bench-dir "$BENCH_DIR" $QUICK)
backport_cmd=(bash "$SCRIPT_DIR/ruby_backport_echo.sh" --rounds 5 --duration 3
              --engine libem)

# The "## TLS" section: its heading, the command and tls_run.sh's tables.
# A failed TLS run leaves a note instead of stopping the whole report.
tls_section()
{
    echo "## TLS: libem against nginx, TLS echo against plaintext"
    echo
    echo "Command: \`${tls_cmd[*]#"$SCRIPT_DIR/"}\`"
    echo
    "${tls_cmd[@]}" || echo "(tls_run.sh failed: see $BENCH_DIR/tls_run.log)"
}

# The "## HTTP" section: http_hello against evhttp and nginx under wrk.
http_section()
{
    echo "## HTTP: http_hello against evhttp and nginx (wrk)"
    echo
    echo "Command: \`${http_cmd[*]#"$SCRIPT_DIR/"}\`"
    echo
    "${http_cmd[@]}" || echo "(http_run.sh failed: see $BENCH_DIR/http_run.log)"
}

# The "## Ruby engine" section: ruby_run.sh's tables, or a note.
ruby_section()
{
    echo "## Ruby engine: libem's rubyeventmachine against Debian's"
    echo
    echo "The same Ruby programs on both engines (docs/ruby.md): an EventMachine"
    echo "echo server and thin serving a hello-world Rack app."
    echo
    echo "Command: \`${ruby_cmd[*]#"$SCRIPT_DIR/"}\`"
    echo
    "${ruby_cmd[@]}" || echo "(ruby_run.sh failed: see $BENCH_DIR/ruby_run.log)"
}

# Replaces the section of RESULTS.md whose heading starts with $1 (up to
# the next "## " heading) with the file $2, or appends it when there is
# none.
splice_section()
{
    local heading=$1 new=$2 file="$SCRIPT_DIR/RESULTS.md"
    [ -f "$file" ] || : >"$file"
    awk -v heading="$heading" -v new="$new" '
        function put(   line) {
            while ((getline line < new) > 0) print line
            close(new); done = 1
        }
        index($0, heading) == 1 { put(); skip = 1; next }
        skip && /^## / { skip = 0; print ""; }
        !skip { print }
        END { if (!done) { print ""; put() } }' "$file" >"$out"
    mv "$out" "$SCRIPT_DIR/RESULTS.md"
}

if [ "$TLS_ONLY" = yes ]; then
    tls_section >"$out.tls"
    splice_section "## TLS" "$out.tls"
    rm -f "$out.tls"
    echo "wrote the TLS section of $SCRIPT_DIR/RESULTS.md"
    exit 0
fi
if [ "$HTTP_ONLY" = yes ]; then
    http_section >"$out.http"
    splice_section "## HTTP" "$out.http"
    rm -f "$out.http"
    echo "wrote the HTTP section of $SCRIPT_DIR/RESULTS.md"
    exit 0
fi
if [ "$RUBY_ONLY" = yes ]; then
    ruby_section >"$out.ruby"
    splice_section "## Ruby engine" "$out.ruby"
    rm -f "$out.ruby"
    echo "wrote the Ruby engine section of $SCRIPT_DIR/RESULTS.md"
    exit 0
fi

{
    echo "# Benchmark results"
    echo
    echo "Regenerate with \`make bench\` (full) or \`make bench BENCH_ARGS=--quick\`;"
    echo "only the TLS section with \`bench/results.sh --tls-only\`, only HTTP's with"
    echo "\`--http-only\`, only the Ruby engine's with \`--ruby-only\`."
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
    echo
    tls_section
    echo
    echo "## Streams: splice and sendfile against copying"
    echo
    echo "Command: \`${stream_cmd[*]#"$SCRIPT_DIR/"}\`"
    echo
    "${stream_cmd[@]}" 2>/dev/null || echo "(stream_run.sh failed)"
    echo
    echo "## UDP echo: libem against libuv"
    echo
    echo "Command: \`${udp_cmd[*]#"$SCRIPT_DIR/"}\` (details: UDP_RESULTS.md)"
    echo
    "${udp_cmd[@]}" || echo "(udp_run.sh failed)"
    echo
    http_section
    echo
    ruby_section
    echo
    echo "## Ruby Backport library: the seed's echo adapter against the same adapter on EventMachine's API"
    echo
    echo "Command: \`${backport_cmd[*]#"$SCRIPT_DIR/"}\`"
    echo
    "${backport_cmd[@]}" || echo "(ruby_backport_echo.sh failed)"
} >"$out"
mv "$out" "$SCRIPT_DIR/RESULTS.md"
echo "wrote $SCRIPT_DIR/RESULTS.md"
