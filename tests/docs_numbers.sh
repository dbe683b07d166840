#!/usr/bin/env bash
# docs_numbers.sh SRC - the numbers README.md and docs/*.md quote are the
# ones bench/RESULTS.md (and bench/UDP_RESULTS.md) report.
#
#   - idle connection memory: every sentence (or table row) about idle
#     connections that gives "N bytes", "N-byte `em_conn`" or "N-byte malloc
#     chunk" gives RESULTS.md's bytes per idle connection (first count,
#     rounded), sizeof(em_conn) and malloc chunk; README.md must give them;
#   - README.md's performance paragraph: the range of libem's median CPU
#     per message against the best rival over the echo configurations, the
#     range of the TLS handshake ratios against nginx, and a timer ratio
#     range that contains RESULTS.md's add+fire ratio;
#   - every "median (min..max" quoted in README.md or docs/*.md appears in
#     bench/RESULTS.md or bench/UDP_RESULTS.md.
# When a number changes, re-run the benchmark (make bench) and update the
# prose; when the prose is rewritten, keep the phrases below or adjust them.
set -euo pipefail

src=${1:?usage: docs_numbers.sh SRC}
cd "$src"
results=bench/RESULTS.md
[ -f "$results" ] || { echo "docs_numbers: FAIL no $results"; exit 1; }
pages=(README.md)
for f in docs/*.md; do
    [ -e "$f" ] && pages+=("$f")
done
status=0
fail()
{
    echo "docs_numbers: FAIL $*"
    status=1
}

# ---- what RESULTS.md says ------------------------------------------------

# cell TABLE_HEADER_REGEX COLUMN_NAME ROW_REGEX: the first cell of the named
# column in the first row matching ROW_REGEX of the first table whose header
# matches TABLE_HEADER_REGEX (cells trimmed).
cell()
{
    awk -F'|' -v hre="$1" -v col="$2" -v rre="$3" '
        function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
        !intable && $0 ~ /^\|/ && $0 ~ hre {
            for (i = 2; i < NF; i++) if (trim($i) == col) c = i
            intable = (c > 0); next
        }
        intable && $0 !~ /^\|/ { intable = 0; c = 0 }
        intable && $0 ~ rre { print trim($c); exit }
    ' "$results"
}

idle_raw=$(awk -F'|' '/^\| bytes per idle connection at / {
    gsub(/[ \t]/, "", $3); print $3; exit }' "$results")
idle_conns=$(sed -n 's/^| bytes per idle connection at \([0-9]*\) .*/\1/p' "$results" | head -n1)
conn_size=$(cell 'sizeof\\(em_conn\\)' 'sizeof(em_conn)' "^\\| $idle_conns \\|")
chunk=$(cell 'sizeof\\(em_conn\\)' 'malloc chunk' "^\\| $idle_conns \\|")
if [ -z "$idle_raw" ] || [ -z "$conn_size" ] || [ -z "$chunk" ]; then
    fail "$results has no idle connection memory table and summary row"
    exit 1
fi
idle=$(printf '%.0f' "$idle_raw")

# libem's "cpu/best rival" medians over the echo configurations
read -r echo_min echo_max < <(awk -F'|' '
    function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
    /^\|/ && /cpu\/best rival/ {
        for (i = 2; i < NF; i++) if (trim($i) == "cpu/best rival") c = i
        next
    }
    c && trim($3) == "echo_libem" {
        split(trim($c), v, " "); x = v[1] + 0
        if (n++ == 0 || x < lo) lo = x
        if (n == 1 || x > hi) hi = x
    }
    END { if (n) printf "%.2f %.2f\n", lo, hi }
' "$results")
# medians of libem/nginx handshakes per server CPU-second
read -r tls_min tls_max < <(awk -F'|' '
    function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
    /^\|/ && /libem\/nginx hs per server cpu-s/ { t = 1; next }
    t && !/^\|/ { t = 0 }
    t && $2 !~ /---/ {
        split(trim($3), v, " "); x = v[1] + 0
        if (n++ == 0 || x < lo) lo = x
        if (n == 1 || x > hi) hi = x
    }
    END { if (n) printf "%.2f %.2f\n", lo, hi }
' "$results")
timers=$(sed -n 's/^libem\/libuv add+fire: \*\*\([0-9.]*\)\*\*.*/\1/p' "$results" | head -n1)
[ -n "${echo_min:-}" ] || fail "$results: no echo table with libem's cpu/best rival"
[ -n "${tls_min:-}" ] || fail "$results: no libem/nginx handshake ratio table"
[ -n "$timers" ] || fail "$results: no 'libem/libuv add+fire' timer ratio"

# ---- idle connection memory in README.md and docs/*.md -------------------

readme_idle=0
for page in "${pages[@]}"; do
    # units: a table row, or a sentence of a paragraph (lines joined)
    while IFS=$'\t' read -r line unit; do
        for n in $(grep -oE '[0-9][0-9,]* bytes' <<<"$unit" | tr -d ', bytes'); do
            if [ "$n" = "$idle" ]; then
                [ "$page" = README.md ] && readme_idle=1
            else
                fail "$page:$line: an idle connection costs $idle bytes ($results: $idle_raw at $idle_conns connections), not $n"
            fi
        done
        for n in $(grep -oE '[0-9]+-byte `em_conn`' <<<"$unit" | tr -dc '0-9\n'); do
            [ "$n" = "$conn_size" ] ||
                fail "$page:$line: sizeof(em_conn) is $conn_size in $results, not $n"
        done
        for n in $(grep -oE '[0-9]+-byte malloc chunk' <<<"$unit" | tr -dc '0-9\n'); do
            [ "$n" = "$chunk" ] ||
                fail "$page:$line: an em_conn's malloc chunk is $chunk bytes in $results, not $n"
        done
    done < <(awk '
        # prints each sentence about idle connections with its line
        function flush(    n, s, i, j, off, line) {
            if (para == "") return
            n = split(para, s, /[.;] /)
            off = 1
            for (i = 1; i <= n; i++) {
                off += index(substr(para, off), s[i]) - 1
                line = start
                for (j = 1; j <= nlines && at[j] <= off; j++) line = start + j - 1
                if (tolower(s[i]) ~ /idle connection/) print line "\t" s[i]
                off += length(s[i])
            }
            para = ""
            nlines = 0
        }
        /^```/ { code = !code; flush(); next }
        code { next }
        /^\|/ {
            flush()
            if (tolower($0) ~ /idle connection/) print NR "\t" $0
            next
        }
        /^[ \t]*$/ { flush(); next }
        {
            if (para == "") start = NR
            at[++nlines] = length(para) + 1
            para = para " " $0
        }
        END { flush() }
    ' "$page")
done
[ "$readme_idle" = 1 ] ||
    fail "README.md: no sentence says an idle connection costs $idle bytes ($results)"

# ---- README.md's performance paragraph -------------------------------------

readme=$(tr '\n' ' ' <README.md | tr -s ' ')
# range PHRASE_REGEX: prints "LOW HIGH" of "... LOW to HIGH ..." in README.
range()
{
    grep -oE "$1" <<<"$readme" | head -n1 | grep -oE '[0-9]+\.[0-9]+' | tr '\n' ' '
}
read -r lo hi < <(range 'ratios per configuration [0-9.]+ to [0-9.]+'; echo)
if [ -z "${lo:-}" ]; then
    fail "README.md no longer says 'median ratios per configuration A to B' (CPU per message against libuv and libev); adjust tests/docs_numbers.sh if that was meant"
elif [ -n "${echo_min:-}" ] && { [ "$lo" != "$echo_min" ] || [ "$hi" != "$echo_max" ]; }; then
    fail "README.md: CPU per message against the best rival is $echo_min to $echo_max in $results, not $lo to $hi"
fi
read -r lo hi < <(range 'handshakes per server CPU-second are [0-9.]+ to [0-9.]+'; echo)
if [ -z "${lo:-}" ]; then
    fail "README.md no longer says 'TLS handshakes per server CPU-second are A to B times nginx's'; adjust tests/docs_numbers.sh if that was meant"
elif [ -n "${tls_min:-}" ] && { [ "$lo" != "$tls_min" ] || [ "$hi" != "$tls_max" ]; }; then
    fail "README.md: TLS handshakes per server CPU-second are $tls_min to $tls_max times nginx's in $results, not $lo to $hi"
fi
read -r lo hi < <(range 'add and fire in about [0-9.]+ to [0-9.]+'; echo)
if [ -z "${lo:-}" ]; then
    fail "README.md no longer says 'timers add and fire in about A to B of libuv's time'; adjust tests/docs_numbers.sh if that was meant"
elif [ -n "$timers" ] && ! awk -v x="$timers" -v lo="$lo" -v hi="$hi" \
    'BEGIN { x = sprintf("%.2f", x) + 0; exit !(x >= lo + 0 && x <= hi + 0) }'; then
    fail "README.md: timers add and fire in $timers of libuv's time in $results, outside $lo to $hi"
fi

# ---- quoted medians with their ranges --------------------------------------

# Read once, not piped into grep -q: grep -q quits at the first match and,
# under pipefail, the writer's SIGPIPE would turn a match into a failure.
reported=$(tr -d '*' <bench/RESULTS.md)
if [ -f bench/UDP_RESULTS.md ]; then
    reported+=$'\n'$(tr -d '*' <bench/UDP_RESULTS.md)
fi
for page in "${pages[@]}"; do
    while IFS=: read -r line quote; do
        plain=$(tr -d '*' <<<"$quote")
        if [[ "$reported" != *"$plain"* ]]; then
            fail "$page:$line: '$plain' is not in bench/RESULTS.md or bench/UDP_RESULTS.md"
        fi
    done < <(grep -noE '[0-9]+\.[0-9]+\**[ ]*\([0-9.]+\.\.[0-9.]+' "$page" || true)
done

[ "$status" = 0 ] && echo "docs_numbers: README.md and docs/*.md agree with $results" \
    "(idle connection $idle bytes, em_conn $conn_size; echo CPU $echo_min..$echo_max;" \
    "TLS $tls_min..$tls_max; timers $timers)"
exit "$status"
