#!/usr/bin/env bash
# docs_reference.sh --src DIR [--cc CC] - docs/reference.md is up to date.
#
# 1. scripts/reference.awk run on include/em.h must give exactly the
#    checked-in docs/reference.md (else: the command that refreshes it).
# 2. Every name em.h declares - each em_* function, type, struct and
#    enumerator, and each macro - has an entry (an anchor) in the page. The
#    names come from the C preprocessor's view of em.h (comments gone,
#    declarations as the compiler sees them), not from the awk script, so a
#    declaration the script fails to parse is caught here.
set -euo pipefail

src=
cc=${CC:-cc}
while [ $# -gt 0 ]; do
    case "$1" in
    --src) src=$2; shift ;;
    --cc) cc=$2; shift ;;
    *) echo "docs_reference: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if ! { [ -n "$src" ] && [ -f "$src/include/em.h" ]; }; then
    echo "docs_reference: --src DIR (the source tree) is required" >&2
    exit 2
fi
cd "$src"
page=docs/reference.md
refresh="make reference   (or: awk -f scripts/reference.awk include/em.h > $page)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/libem-reference.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

status=0
awk -f scripts/reference.awk include/em.h >"$tmp/reference.md"
if [ ! -f "$page" ]; then
    echo "docs_reference: FAIL $page is missing. Make it with: $refresh"
    status=1
elif ! cmp -s "$tmp/reference.md" "$page"; then
    echo "docs_reference: FAIL $page is not what include/em.h gives."
    echo "Refresh it with: $refresh"
    echo "and commit it. The difference (- checked in, + from em.h):"
    diff -u "$page" "$tmp/reference.md" | head -n 60 | sed 's/^/    /' || true
    status=1
fi

# em.h's own lines after preprocessing, with its #defines (-dD).
printf '#include "em.h"\n' >"$tmp/names.c"
"$cc" -std=c11 -E -dD -Iinclude "$tmp/names.c" >"$tmp/pp.i"
awk '
    /^# [0-9]+ "/ { own = ($3 ~ /\/em\.h"$/); next }
    own
' "$tmp/pp.i" >"$tmp/em.i"
grep -oE '\b(em|EM)_[A-Za-z0-9_]*\b' "$tmp/em.i" | grep -vx 'EM_H' |
    sort -u >"$tmp/names"
grep -oE '\bem_[a-z0-9_]*[[:space:]]*\(' "$tmp/em.i" | tr -d ' \t(' |
    sort -u >"$tmp/functions"
nfun=$(wc -l <"$tmp/functions")
nall=$(wc -l <"$tmp/names")
if [ "$nfun" -lt 50 ]; then
    echo "docs_reference: FAIL only $nfun functions found in em.h: is this check broken?"
    status=1
fi

missing=0
while read -r name; do
    if ! grep -qF "<a id=\"$name\"></a>" "$page" 2>/dev/null; then
        kind=name
        grep -qx "$name" "$tmp/functions" && kind=function
        echo "docs_reference: FAIL $kind $name (include/em.h) has no entry in $page"
        missing=$((missing + 1))
    fi
done <"$tmp/names"
if [ "$missing" -gt 0 ]; then
    echo "docs_reference: $missing name(s) without an entry. If $page is up to date,"
    echo "scripts/reference.awk did not recognise their declarations."
    status=1
fi
[ "$status" = 0 ] &&
    echo "docs_reference: $page is current; all $nfun functions and $((nall - nfun)) other names of em.h have entries"
exit "$status"
