#!/usr/bin/env bash
# docs_snippets.sh - every ```c block of README.md and docs/*.md compiles.
#
#   docs_snippets.sh --src DIR --lib LIBEM_A [--cc CC] [--flags "FLAGS"]
#                    [--libs "LIBS"] [FILE.md ...]
#   docs_snippets.sh --selftest (same options): proves that broken blocks fail
#
# Without FILE arguments it checks DIR/README.md and DIR/docs/*.md (but not
# docs/reference.md, em.h's declarations), so a new page is checked as soon
# as it exists. Each ```c block is extracted into a
# C file of its own and compiled with -std=c11 -Wall -Wextra -Werror against
# DIR/include/em.h. The HTML comment before a block says what the block is
# (the convention is written down in docs/README.md):
#
#   (none)                     a whole translation unit, compiled as it is;
#                              with a main() it is linked against LIBEM_A
#   <!-- snippet: run -->      the same, and the program is run: it must exit 0
#                              within 30 s (cwd: an empty temporary directory,
#                              stdin: /dev/null)
#   <!-- snippet: toplevel --> file-scope code: the common includes come first
#   <!-- snippet: fragment --> the block's last paragraph (after its last blank
#                              line outside braces) is the body of
#                              int f(em_loop *loop, em_conn *conn); what comes
#                              before it is file scope; common includes first
#
# A toplevel or fragment comment may carry hidden file-scope setup code on
# the lines between "<!-- snippet: KIND" and a closing "-->" line. Snippets
# of those two kinds are compiled with -Wno-unused-* (illustrations declare
# parameters and handlers they do not use). #line directives make every
# compiler message point at the Markdown file and line.
#
# Why a script run by ctest rather than CMake targets: a glob in CMake sees
# new files only when CMake runs again and never sees a block edited inside
# a page; this reads the pages every time the test runs. Why awk rather than
# Python: the test needs nothing beyond what the build already needs.
set -euo pipefail

src=
lib=
cc=${CC:-cc}
flags=
libs="-lssl -lcrypto -pthread"
selftest=0
files=()
while [ $# -gt 0 ]; do
    case "$1" in
    --src) src=${2-}; shift ;;
    --lib) lib=${2-}; shift ;;
    --cc) cc=${2-}; shift ;;
    --flags) flags=${2-}; shift ;;
    --libs) libs=${2-}; shift ;;
    --selftest) selftest=1 ;;
    -h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "docs_snippets: unknown option $1" >&2; exit 2 ;;
    *) files+=("$1") ;;
    esac
    shift
done
if ! { [ -n "$src" ] && [ -d "$src/include" ]; }; then
    echo "docs_snippets: --src DIR (the source tree) is required" >&2
    exit 2
fi
if [ ! -f "$lib" ]; then
    echo "docs_snippets: --lib LIBEM_A (the built static library) is required" >&2
    exit 2
fi
src=$(cd "$src" && pwd)
lib=$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/libem-snippets.XXXXXX")
trap '[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT

# ---- extraction ----------------------------------------------------------
# Reads one Markdown file; writes DIR/N.c per ```c block and prints one
# manifest line per block: FILE.c TAB kind TAB run TAB doc TAB line TAB main.
# Marker mistakes are reported as "doc:line: message" and make it exit 1.
cat >"$tmp/extract.awk" <<'AWK'
function fail(line, msg) {
    printf "%s:%d: %s\n", doc, line, msg > "/dev/stderr"
    bad = 1
}
function emit(s) { print s > cfile; ol++ }
function header() {
    emit("#define _POSIX_C_SOURCE 200809L")
    emit("#include <em.h>")
    emit("#include <errno.h>")
    emit("#include <poll.h>")
    emit("#include <signal.h>")
    emit("#include <stdint.h>")
    emit("#include <stdio.h>")
    emit("#include <stdlib.h>")
    emit("#include <string.h>")
    emit("#include <sys/wait.h>")
    emit("#include <unistd.h>")
    if (np > 0) {
        emit("#line " pfirst " \"" doc "\"")
        for (i = 1; i <= np; i++) emit(prelude[i])
    }
}
# Brace depth after line s, ignoring braces in literals and comments.
function depth_after(d, s,    t) {
    t = s
    gsub(/\\./, "", t)
    gsub(/"[^"]*"/, "", t)
    gsub(/'[^']*'/, "", t)
    gsub(/\/\*([^*]|\*+[^*\/])*\*+\//, "", t)
    sub(/\/\/.*/, "", t)
    return d + gsub(/\{/, "{", t) - gsub(/\}/, "}", t)
}
function finish_block(    i, d, cut, has_main) {
    nblock++
    cfile = outdir "/" nblock ".c"
    ol = 0
    has_main = 0
    for (i = 1; i <= nl; i++)
        if (body[i] ~ /^(static[ \t]+)?int[ \t]+main[ \t]*\(/) has_main = 1
    if (kind == "program") {
        emit("#line " first " \"" doc "\"")
        for (i = 1; i <= nl; i++) emit(body[i])
    } else if (kind == "toplevel") {
        header()
        emit("#line " first " \"" doc "\"")
        for (i = 1; i <= nl; i++) emit(body[i])
    } else {
        # file scope up to the last blank line outside braces
        d = 0
        cut = 0
        for (i = 1; i <= nl; i++) {
            if (d == 0 && body[i] ~ /^[ \t]*$/) cut = i
            d = depth_after(d, body[i])
        }
        header()
        if (cut > 1) {
            emit("#line " first " \"" doc "\"")
            for (i = 1; i < cut; i++) emit(body[i])
        }
        emit("#line " (ol + 2) " \"" cfile "\"")
        emit("int em_doc_snippet(em_loop *loop, em_conn *conn);")
        emit("int em_doc_snippet(em_loop *loop, em_conn *conn)")
        emit("{")
        emit("    (void)loop;")
        emit("    (void)conn;")
        emit("    {")
        emit("#line " (first + cut) " \"" doc "\"")
        for (i = cut + 1; i <= nl; i++) emit(body[i])
        emit("#line " (ol + 2) " \"" cfile "\"")
        emit("    }")
        emit("    return 0;")
        emit("}")
    }
    close(cfile)
    if (has_main && kind != "program")
        fail(open, "a " kind " block must not define main(): leave the snippet comment out")
    if (run && !has_main)
        fail(open, "a block marked run needs a main()")
    printf "%s\t%s\t%d\t%s\t%d\t%d\n", cfile, kind, run, doc, open, has_main
}
# Starts a marker: "<!-- snippet: WORDS" with or without the closing -->.
function start_marker(s, line,    words, n, w, i, k) {
    sub(/^[ \t]*<!--[ \t]*snippet:[ \t]*/, "", s)
    closed = sub(/[ \t]*-->[ \t]*$/, "", s)
    if (index(s, "-->")) fail(line, "text after --> in a snippet comment")
    mkind = ""
    mrun = 0
    n = split(s, words, /[ \t,]+/)
    for (i = 1; i <= n; i++) {
        w = words[i]
        if (w == "") continue
        if (w == "run") mrun = 1
        else if (w == "program" || w == "toplevel" || w == "fragment") {
            if (mkind != "") fail(line, "two kinds in one snippet comment")
            mkind = w
        } else
            fail(line, "unknown snippet word '" w "' (program, toplevel, fragment, run)")
    }
    if (mkind == "") mkind = "program"
    if (mrun && mkind != "program")
        fail(line, "only a whole program can be run, not a " mkind)
    mline = line
    np = 0
    pfirst = line + 1
    if (closed) pending = 1
    else collecting = 1
}
BEGIN { bad = 0; nblock = 0; fence = 0; pending = 0; collecting = 0; np = 0 }
collecting {
    if ($0 ~ /^[ \t]*-->[ \t]*$/) {
        collecting = 0
        pending = 1
        if (np > 0 && mkind == "program")
            fail(mline, "a whole program cannot have hidden setup code")
    } else if (index($0, "-->"))
        fail(NR, "put the --> that ends a snippet comment on a line of its own")
    else
        prelude[++np] = $0
    next
}
fence {
    if ($0 ~ /^[ \t]*(```|~~~)[ \t]*$/) {
        fence = 0
        if (capture) finish_block()
    } else if (capture) {
        t = $0
        for (k = 0; k < indent && substr(t, 1, 1) == " "; k++) t = substr(t, 2)
        body[++nl] = t
    }
    next
}
/^[ \t]*(```|~~~)/ {
    fence = 1
    t = $0
    match(t, /^[ \t]*/)
    indent = RLENGTH
    info = substr(t, indent + 4)
    gsub(/[ \t]/, "", info)
    capture = (tolower(info) == "c")
    if (pending) {
        if (!capture) fail(mline, "a snippet comment must come right before a ```c block")
        kind = mkind
        run = mrun
        pending = 0
    } else {
        kind = "program"
        run = 0
        np = 0
    }
    open = NR
    first = NR + 1
    nl = 0
    next
}
/^[ \t]*<!--[ \t]*snippet:/ {
    if (pending) fail(mline, "a snippet comment must come right before a ```c block")
    start_marker($0, NR)
    next
}
pending && $0 !~ /^[ \t]*$/ {
    fail(mline, "a snippet comment must come right before a ```c block")
    pending = 0
}
END {
    if (collecting) fail(mline, "snippet comment never closed with -->")
    if (pending) fail(mline, "a snippet comment must come right before a ```c block")
    if (fence) fail(open, "code block never closed")
    exit bad
}
AWK

# ---- compiling -------------------------------------------------------------

strict=(-std=c11 -Wall -Wextra -Werror -O1 -I"$src/include")
relaxed=(-Wno-unused-parameter -Wno-unused-function -Wno-unused-variable
         -Wno-unused-but-set-variable -Wno-unused-const-variable)
# shellcheck disable=SC2206 # word splitting of user-given flag lists is wanted
extra=($flags)
# shellcheck disable=SC2206
linklibs=($libs)

# check FILE.md... : extracts and compiles every block; prints one line per
# failure. Returns 1 if any block failed.
check()
{
    local total=0 failed=0 n=0 doc rel dir cfile kind run line has_main out exe
    for doc in "$@"; do
        n=$((n + 1))
        dir="$tmp/f$n"
        mkdir -p "$dir"
        rel=${doc#"$src"/}
        if ! (cd "$src" && awk -v doc="$rel" -v outdir="$dir" \
            -f "$tmp/extract.awk" "$rel") >"$dir/manifest" 2>"$dir/err"; then
            sed 's/^/docs_snippets: FAIL /' "$dir/err"
            failed=$((failed + 1))
        fi
        while IFS=$'\t' read -r cfile kind run doc line has_main; do
            total=$((total + 1))
            local flagset=("${strict[@]}" "${extra[@]}")
            [ "$kind" = program ] || flagset+=("${relaxed[@]}")
            if [ "$has_main" = 1 ]; then
                exe=${cfile%.c}
                out=$(cd "$src" && "$cc" "${flagset[@]}" "$cfile" "$lib" \
                    "${linklibs[@]}" -o "$exe" 2>&1) || {
                    echo "docs_snippets: FAIL $doc:$line: this $kind block does not compile and link:"
                    echo "$out" | sed 's/^/    /'
                    failed=$((failed + 1))
                    continue
                }
                if [ "$run" = 1 ]; then
                    mkdir -p "$exe.run"
                    out=$(cd "$exe.run" && timeout 30 "$exe" </dev/null 2>&1) || {
                        echo "docs_snippets: FAIL $doc:$line: this program, marked run, exited with $?${out:+:}"
                        [ -z "$out" ] || echo "$out" | tail -n 20 | sed 's/^/    /'
                        failed=$((failed + 1))
                        continue
                    }
                fi
            else
                out=$(cd "$src" && "$cc" "${flagset[@]}" -c "$cfile" \
                    -o "${cfile%.c}.o" 2>&1) || {
                    echo "docs_snippets: FAIL $doc:$line: this $kind block does not compile:"
                    echo "$out" | sed 's/^/    /'
                    failed=$((failed + 1))
                    continue
                }
            fi
        done <"$dir/manifest"
    done
    if [ "$failed" -gt 0 ]; then
        echo "docs_snippets: $failed failure(s) among $total blocks in $# files." \
            "Markers and how blocks are compiled: docs/README.md."
        return 1
    fi
    if [ "$total" -eq 0 ]; then
        echo "docs_snippets: no \`\`\`c block found in $*: is the extractor broken?"
        return 1
    fi
    echo "docs_snippets: all $total blocks in $# files compile"
}

if [ "$selftest" = 0 ]; then
    if [ "${#files[@]}" -eq 0 ]; then
        files=("$src/README.md")
        for f in "$src"/docs/*.md; do
            # generated from em.h, which every build compiles
            [ "$f" = "$src/docs/reference.md" ] && continue
            [ -e "$f" ] && files+=("$f")
        done
    fi
    abs=()
    for f in "${files[@]}"; do
        case "$f" in /*) abs+=("$f") ;; *) abs+=("$src/$f") ;; esac
    done
    check "${abs[@]}"
    exit $?
fi

# ---- selftest: good blocks pass, each broken one fails at its line ----------
# The script checks pages written to a temporary directory: good.md (every
# kind of block, 5 in all) must pass; each page of cases must fail, and its
# output must name the page and the line where the mistake is.
st="$tmp/selftest"
mkdir -p "$st"
cat >"$st/good.md" <<'MD'
# Good

```c
#include <em.h>
#include <stdio.h>

static void tick(em_loop *loop, void *arg)
{
    ++*(int *)arg;
    em_stop(loop);
}

int main(void)
{
    em_loop *loop;
    int fired = 0;
    if (em_loop_new(&loop) < 0)
        return 1;
    em_add_timer(loop, 0.001, tick, &fired, NULL);
    em_run(loop);
    printf("fired %d\n", fired);
    return em_loop_free(loop) != 0 || fired != 1;
}
```

<!-- snippet: run -->
```c
#include <em.h>

int main(void)
{
    em_loop *loop;
    if (em_loop_new(&loop) < 0)
        return 1;
    return em_loop_free(loop) != 0;
}
```

<!-- snippet: toplevel
static const char *greeting = "hi";
-->
```c
static void hello(em_conn *c, void *arg) { em_send_data(c, greeting, 2); }
```

<!-- snippet: fragment -->
```c
static void on_data(em_conn *c, const char *data, size_t len)
{
    em_send_data(c, data, len);

    em_close_connection(c, 1);
}
static const em_handler echo = {.receive_data = on_data};

em_loop *loop;           /* shadows the context's loop */
em_loop_new(&loop);
em_start_server(loop, "127.0.0.1", 0, &echo, NULL, NULL, NULL);
em_loop_free(loop);
```

  - a block in a list item:

    <!-- snippet: fragment -->
    ```c
    em_stop(loop);
    if (conn)
        return -EINVAL;
    ```

```sh
not C at all {
```
MD

# NAME, where the output must point (an extended regex: clang and gcc may
# name different lines for one error), page text
cases=(
"compile|compile.md:6|# Compile error in a fragment

<!-- snippet: fragment -->
\`\`\`c
em_stop(loop);
em_no_such_function(loop);
\`\`\`"
"warning|warning.md:6|# An unused variable in a whole program

\`\`\`c
int main(void)
{
    int unused;
    return 0;
}
\`\`\`"
"run|run.md:4|# A program marked run that fails

<!-- snippet: run -->
\`\`\`c
int main(void) { return 3; }
\`\`\`"
"link|link.md:3|# A program calling what libem does not have

\`\`\`c
#include <em.h>
int em_not_in_libem(void);
int main(void) { return em_not_in_libem(); }
\`\`\`"
"word|word.md:3|# A misspelt marker

<!-- snippet: fragmnet -->
\`\`\`c
em_stop(loop);
\`\`\`"
"orphan|orphan.md:3|# A marker before a shell block

<!-- snippet: fragment -->
\`\`\`sh
echo hi
\`\`\`"
"prelude|prelude.md:[45]:|# An error in hidden setup code

<!-- snippet: toplevel
static int x = 1
static int y = 2;
-->
\`\`\`c
int z;
\`\`\`"
)

ok=1
out=$(bash "$self" --src "$src" --lib "$lib" --cc "$cc" --flags "$flags" \
    --libs "$libs" "$st/good.md" 2>&1) || {
    echo "docs_snippets selftest: good.md should pass:"
    echo "$out" | sed 's/^/    /'
    ok=0
}
if ! echo "$out" | grep -q "all 5 blocks"; then
    echo "docs_snippets selftest: good.md should have 5 blocks: $out"
    ok=0
fi
for c in "${cases[@]}"; do
    name=${c%%|*}
    rest=${c#*|}
    where=${rest%%|*}
    printf '%s\n' "${rest#*|}" >"$st/$name.md"
    if out=$(bash "$self" --src "$src" --lib "$lib" --cc "$cc" \
        --flags "$flags" --libs "$libs" "$st/$name.md" 2>&1); then
        echo "docs_snippets selftest: $name.md passed but must fail"
        ok=0
    elif ! echo "$out" | grep -qE "$where"; then
        echo "docs_snippets selftest: $name.md failed without naming $where:"
        echo "$out" | sed 's/^/    /'
        ok=0
    fi
done
[ "$ok" = 1 ] || exit 1
echo "docs_snippets selftest: good blocks pass; ${#cases[@]} kinds of broken block fail at their line"
