#!/usr/bin/env bash
# docs_ruby.sh SRC_DIR [--selftest] - every ```ruby block of README.md and
# docs/*.md is valid Ruby (`ruby -wc`: syntax, and no warning such as an
# unused variable or a mistyped block parameter).
#
# Why syntax only: the blocks talk to servers (example.com over TLS) or
# stand for a program's parts; the programs they come from run in the Ruby
# tests (ruby/test, ruby/examples). --selftest proves a broken block fails.
set -euo pipefail

src=${1:?usage: docs_ruby.sh SRC_DIR [--selftest]}
selftest=${2:-}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/docs_ruby.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Writes each ```ruby block of $1 to $tmp/<n>.rb, with a first line naming
# the page and line; prints how many.
extract() {
    awk -v out="$tmp" -v page="$1" '
        /^```ruby[ \t]*$/ {
            n++
            file = sprintf("%s/b-%d.rb", out, n + base)
            printf "# %s:%d\n", page, NR > file
            inside = 1
            next
        }
        /^```/ && inside { inside = 0; close(file); next }
        inside { print > file }
        END { print n + 0 }' base="$2" "$1"
}

check() {
    local failed=0 f
    for f in "$tmp"/*.rb; do
        [ -e "$f" ] || continue
        if ! out=$(ruby -wc "$f" 2>&1) || grep -q "warning" <<<"$out"; then
            echo "docs_ruby: $(head -n 1 "$f" | cut -c3-): $out" >&2
            failed=1
        fi
    done
    return "$failed"
}

if [ "$selftest" = "--selftest" ]; then
    printf '# t\n\n```ruby\ndef f(x\n  x\nend\n```\n' > "$tmp/broken.md"
    extract "$tmp/broken.md" 0 > /dev/null
    if check 2> /dev/null; then
        echo "docs_ruby: selftest: a broken block passed" >&2
        exit 1
    fi
    echo "docs_ruby: selftest: a broken block fails"
    exit 0
fi

total=0
for page in "$src/README.md" "$src"/docs/*.md; do
    n=$(extract "$page" "$total")
    total=$((total + n))
done
check
echo "docs_ruby: $total ruby blocks are valid"
