# reference.awk - turns include/em.h into docs/reference.md.
#
#   awk -f scripts/reference.awk include/em.h > docs/reference.md
#   (or: make reference)
#
# What: em.h is the manual; this prints it as one Markdown page with a
# heading per declaration, so that every public function, type, macro and
# enumerator has an entry and an anchor (#em_send_data). The header's
# structure is all it needs:
#   - a section starts at a one-line comment next to a rule line
#     (/* ----- */) and is titled by it; new sections at the end of em.h
#     appear without any change here;
#   - a comment followed by a blank line is prose of the current section;
#   - a comment directly followed by code documents that code: the
#     declarations up to the next blank line or top-level comment form one
#     entry (several declarations may share one comment);
#   - code without a comment is an entry without text.
# The comment text is printed as Markdown prose: identifiers with an
# underscore, negative errnos and <headers> become code spans (links when
# they name an entry), docs/*.md become links, and other characters
# Markdown would interpret are escaped.
#
# Why awk and not Doxygen or a C parser: the header's comments are written
# as prose for people reading em.h, not as Doxygen markup, and the build
# must not need more than what it already has (tests/docs_reference.sh
# checks the page with the C preprocessor as an independent reader of the
# declarations). Why a checked-in page rather than one made at build time:
# it is read on the forge and in a clone without building.

# The page is kept in OUT[] (PROSE[] marks comment text) and printed at the
# end, once every name is known, so that prose can link to entries.
function emit(s, isprose) {
    OUT[++nout] = s
    PROSE[nout] = isprose
}
# Links each code span of prose line s that names an entry to it.
function link(s,    out, a, b, tok, name) {
    out = ""
    while ((a = index(s, "`")) > 0) {
        b = index(substr(s, a + 1), "`")
        if (b == 0) break
        tok = substr(s, a + 1, b - 1)
        name = tok
        sub(/[(][)]$/, "", name)
        sub(/[.].*$/, "", name)
        out = out substr(s, 1, a - 1)
        if (name in ISNAME && substr(s, a - 1, 1) != "[")
            out = out "[`" tok "`](#" name ")"
        else
            out = out "`" tok "`"
        s = substr(s, a + b + 1)
    }
    return out s
}
function trim(s) {
    sub(/^[ \t]+/, "", s)
    sub(/[ \t]+$/, "", s)
    return s
}
function is_rule(s) { return s ~ /^\/\* -+ \*\/$/ }
function is_title(i) {
    return L[i] ~ /^\/\* [^ ].*\*\/$/ && L[i] !~ /^\/\* -+ \*\/$/ &&
           (is_rule(L[i - 1]) || is_rule(L[i + 1]))
}
function slug(s,    t) {
    t = tolower(s)
    gsub(/[^a-z0-9 _-]/, "", t)
    gsub(/ /, "-", t)
    return t
}
# Escapes what Markdown would take as markup in running text: emphasis
# characters, backslashes and backticks, and a "<" that could open an HTML
# tag. (A line that would start a list or a quote is handled by its caller.)
function esc(s,    out, i, c) {
    out = ""
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (index("\\`*_", c) ||
            (c == "<" && substr(s, i + 1, 1) ~ /[A-Za-z\/!?]/))
            out = out "\\" c
        else
            out = out c
    }
    return out
}
# One line of comment prose as Markdown. The tokens are found one pattern
# at a time, the leftmost winning: mawk's match() does not always find the
# leftmost match of an alternation.
function prose(s,    out, tok, i, best, blen, pats, np) {
    np = split("docs/[A-Za-z0-9_-]+[.]md|`[^`]*`|<[A-Za-z0-9_/.]+[.]h>|[A-Za-z_][A-Za-z0-9_]*_[A-Za-z0-9_]*[*]?([.][A-Za-z_][A-Za-z0-9_]*)*([(][)])?|-E[A-Z][A-Z0-9]+|[*][a-z_]+", pats, "|")
    # (no pattern contains a "|" of its own)
    out = ""
    for (;;) {
        best = 0
        for (i = 1; i <= np; i++)
            if (match(s, pats[i]) && (best == 0 || RSTART < best ||
                (RSTART == best && RLENGTH > blen))) {
                best = RSTART
                blen = RLENGTH
            }
        if (best == 0) break
        tok = substr(s, best, blen)
        if (tok ~ /^docs\//) tok = "[" tok "](" substr(tok, 6) ")"
        else if (tok !~ /^`/) tok = "`" tok "`"
        out = out esc(substr(s, 1, best - 1)) tok
        s = substr(s, best + blen)
    }
    return out esc(s)
}
# Prints comment lines c[1..n] (already stripped of the comment syntax).
function print_comment(n,    i, s, inlist) {
    inlist = 0
    for (i = 1; i <= n; i++) {
        s = C[i]
        if (trim(s) == "") {
            emit("", 1)
            inlist = 0
        } else if (trim(s) ~ /^- /) {
            emit("- " prose(substr(trim(s), 3)), 1)
            inlist = 1
        } else if (inlist && s ~ /^[ \t]/) {
            emit("  " prose(trim(s)), 1)
        } else {
            inlist = 0
            s = prose(trim(s))
            # a line that would start a list, heading or quote is text
            if (s ~ /^([0-9]+[.)]|[-+#=>])( |$)/)
                s = "\\" s
            emit(s, 1)
        }
    }
}
# Reads the comment starting at line i into C[]; returns the line after it.
function read_comment(i,    s, last) {
    nc = 0
    for (;; i++) {
        s = L[i]
        last = index(s, "*/") > 0
        sub(/[ \t]*\*+\/[ \t]*$/, "", s)
        if (!sub(/^[ \t]*\/\*+ ?/, "", s))
            sub(/^[ \t]*\* ?/, "", s)
        if (!(nc == 0 && trim(s) == "" ))
            C[++nc] = s
        if (last) break
    }
    while (nc > 0 && trim(C[nc]) == "") nc--
    return i + 1
}
# Brace depth after line s (comments and literals ignored).
function depth_after(d, s,    t) {
    t = s
    gsub(/"[^"]*"/, "", t)
    gsub(/\/\*([^*]|\*+[^*\/])*\*+\//, "", t)
    sub(/\/\*.*/, "", t)
    return d + gsub(/\{/, "{", t) - gsub(/\}/, "}", t)
}
# Names declared by one declaration (comments removed, joined on one line);
# appended to NAMES (space-separated).
function names_of(d,    t, n, parts, i, p) {
    if (d ~ /^#[ \t]*define[ \t]/) {
        t = d
        sub(/^#[ \t]*define[ \t]+/, "", t)
        match(t, /^[A-Za-z_][A-Za-z0-9_]*/)
        add_name(substr(t, 1, RLENGTH))
        return
    }
    if (d ~ /enum[ \t]*[A-Za-z0-9_]*[ \t]*\{/) {
        if (d ~ /^typedef/) {
            t = d
            sub(/^.*\}[ \t]*/, "", t)
            sub(/[ \t]*;.*$/, "", t)
            add_name(t)
        }
        t = d
        sub(/^[^{]*\{/, "", t)
        sub(/\}[^}]*$/, "", t)
        n = split(t, parts, ",")
        for (i = 1; i <= n; i++) {
            p = trim(parts[i])
            if (match(p, /^[A-Za-z_][A-Za-z0-9_]*/))
                add_name(substr(p, 1, RLENGTH))
        }
        return
    }
    if (d ~ /^typedef[ \t]+(struct|union)[^{;]*\{/) {
        t = d
        sub(/^.*\}[ \t]*/, "", t)
        sub(/[ \t]*;.*$/, "", t)
        add_name(t)
        return
    }
    if (d ~ /^typedef/) {
        if (match(d, /\(\*[ \t]*[A-Za-z_][A-Za-z0-9_]*[ \t]*\)/)) {
            t = substr(d, RSTART + 2, RLENGTH - 3)
            add_name(trim(t))
            return
        }
        t = d
        sub(/[ \t]*;[ \t]*$/, "", t)
        sub(/^.*[^A-Za-z0-9_]/, "", t)
        add_name(t)
        return
    }
    if (d ~ /^struct[ \t]+[A-Za-z0-9_]+[ \t]*\{/) {
        t = d
        sub(/^struct[ \t]+/, "", t)
        sub(/[^A-Za-z0-9_].*$/, "", t)
        add_name(t)
        return
    }
    # a function (or a variable): the identifier before the first "("
    t = strip_attributes(d)
    if (index(t, "(")) t = substr(t, 1, index(t, "(") - 1)
    else sub(/[ \t]*(\[.*)?;[ \t]*$/, "", t)
    sub(/[ \t]+$/, "", t)
    sub(/^.*[^A-Za-z0-9_]/, "", t)
    add_name(t)
}
# d without GCC's __attribute__((...)) (balanced parentheses).
function strip_attributes(d,    p, i, depth, c) {
    while ((p = index(d, "__attribute__")) > 0) {
        i = p + length("__attribute__")
        while (substr(d, i, 1) ~ /[ \t]/) i++
        depth = 0
        for (; i <= length(d); i++) {
            c = substr(d, i, 1)
            if (c == "(") depth++
            else if (c == ")" && --depth == 0) break
        }
        d = substr(d, 1, p - 1) substr(d, i + 1)
    }
    return d
}
function add_name(n) {
    if (n == "") return
    NAMES = NAMES (NAMES == "" ? "" : " ") n
}
# Splits code lines K[1..nk] into declarations and fills NAMES.
function collect_names(    i, d, cur, s, depth) {
    NAMES = ""
    cur = ""
    depth = 0
    for (i = 1; i <= nk; i++) {
        s = K[i]
        if (depth == 0 && s ~ /^#/) {
            names_of(s)
            continue
        }
        depth = depth_after(depth, s)
        gsub(/\/\*([^*]|\*+[^*\/])*\*+\//, " ", s)
        if (s ~ /\/\*/ || s ~ /^[ \t]*\*/) {
            sub(/\/\*.*/, "", s)
            sub(/^[ \t]*\*.*/, "", s)
        }
        cur = cur " " trim(s)
        if (depth == 0 && cur ~ /;[ \t]*$/) {
            names_of(trim(cur))
            cur = ""
        }
    }
}
function entry(nc_doc,    i, n, parts, heading) {
    collect_names()
    n = split(NAMES, parts, " ")
    if (n == 0) return
    heading = ""
    emit("", 0)
    for (i = 1; i <= n; i++) {
        emit(sprintf("<a id=\"%s\"></a>", parts[i]), 0)
        heading = heading (i > 1 ? ", " : "") "`" parts[i] "`"
        ALL[++nall] = parts[i]
        SEC_OF[parts[i]] = cur_section
    }
    emit("### " heading, 0)
    emit("", 0)
    emit("```c", 0)
    for (i = 1; i <= nk; i++) emit(K[i], 0)
    emit("```", 0)
    if (nc_doc > 0) {
        emit("", 0)
        print_comment(nc_doc)
    }
}
function section(title) {
    cur_section = title
    emit("", 0)
    emit("## " esc(title), 0)
    TITLES[++ntitles] = title
}

{ L[NR] = $0 }

END {
    n = NR
    L[0] = ""
    L[n + 1] = ""
    i = 1
    # The file's first comment is the introduction.
    while (i <= n && L[i] !~ /^\/\*/) i++
    i = read_comment(i)
    nintro = nc
    for (j = 1; j <= nc; j++) INTRO[j] = C[j]

    # The section titles, for the contents list at the top.
    for (k = i; k <= n; k++)
        if (is_title(k)) {
            t = L[k]
            sub(/^\/\* /, "", t)
            sub(/[ \t]*\*\/$/, "", t)
            PRE[++npre] = t
        }

    emit("# libem API reference", 0)
    emit("", 0)
    emit("<!-- Generated from include/em.h by scripts/reference.awk: do not edit.", 0)
    emit("     Regenerate with `make reference`; the docs_reference test fails when", 0)
    emit("     this page and em.h disagree. -->", 0)
    emit("", 0)
    emit("Every public declaration of `include/em.h`, section by section, with the", 0)
    emit("header's own comment. The header is the source of truth; this page is", 0)
    emit("generated from it. Guides: [docs/guide.md](guide.md) and the other pages", 0)
    emit("listed in the [README](../README.md#documentation).", 0)
    emit("", 0)
    emit("## Conventions", 0)
    emit("", 0)
    for (j = 1; j <= nintro; j++) C[j] = INTRO[j]
    # drop the first line ("em.h - libem, ...") and the blank after it
    skip = 1
    while (skip <= nintro && trim(C[skip]) != "") skip++
    while (skip <= nintro && trim(C[skip]) == "") skip++
    for (j = skip; j <= nintro; j++) C[j - skip + 1] = C[j]
    print_comment(nintro - skip + 1)
    emit("", 0)
    emit("## Contents", 0)
    emit("", 0)
    emit("- [Basic types and macros](#basic-types-and-macros)", 0)
    for (k = 1; k <= npre; k++)
        emit(sprintf("- [%s](#%s)", esc(PRE[k]), slug(PRE[k])), 0)
    emit("- [Index](#index)", 0)

    section("Basic types and macros")
    depth = 0
    while (i <= n) {
        s = L[i]
        if (trim(s) == "" || is_rule(s)) { i++; continue }
        if (is_title(i)) {
            t = s
            sub(/^\/\* /, "", t)
            sub(/[ \t]*\*\/$/, "", t)
            section(t)
            i++
            continue
        }
        # the header's frame: include guard, includes, extern "C"
        if (s ~ /^#[ \t]*(ifndef|ifdef|if|else|elif|endif|include)/ ||
            s ~ /^#[ \t]*define[ \t]+EM_H[ \t]*$/ || s ~ /^extern "C"/ ||
            s ~ /^}[ \t]*$/) {
            i++
            continue
        }
        ndoc = 0
        if (s ~ /^[ \t]*\/\*/) {
            i = read_comment(i)
            if (trim(L[i]) == "" || L[i] ~ /^[ \t]*\/\*/ || is_title(i) ||
                L[i] ~ /^#[ \t]*(ifdef|endif)/) {
                emit("", 0)
                print_comment(nc)
                continue
            }
            ndoc = nc
            for (j = 1; j <= nc; j++) DOC[j] = C[j]
        }
        # the code the comment documents: up to a blank line or a comment
        # at the top level
        nk = 0
        depth = 0
        while (i <= n) {
            s = L[i]
            if (depth == 0 && (trim(s) == "" || s ~ /^[ \t]*\/\*/ ||
                s ~ /^#[ \t]*(ifdef|ifndef|endif)/ || s ~ /^}[ \t]*$/))
                break
            K[++nk] = s
            if (s !~ /^#/) depth = depth_after(depth, s)
            i++
        }
        for (j = 1; j <= ndoc; j++) C[j] = DOC[j]
        entry(ndoc)
    }

    # Index: every name, sorted (insertion sort: a few hundred names).
    for (a = 2; a <= nall; a++) {
        v = ALL[a]
        for (b = a - 1; b >= 1 && ALL[b] > v; b--) ALL[b + 1] = ALL[b]
        ALL[b + 1] = v
    }
    emit("", 0)
    emit("## Index", 0)
    emit("", 0)
    for (a = 1; a <= nall; a++)
        emit(sprintf("- [`%s`](#%s) (%s)", ALL[a], ALL[a], esc(SEC_OF[ALL[a]])), 0)

    for (a = 1; a <= nall; a++) ISNAME[ALL[a]] = 1
    for (a = 1; a <= nout; a++)
        print (PROSE[a] ? link(OUT[a]) : OUT[a])
}
