#!/usr/bin/env bash
# install_test.sh BUILD_DIR - installs the build into a temporary prefix and
# builds and runs one small program against it four ways: pkg-config
# shared, pkg-config static, CMake find_package(libem) with
# libem::em_shared and with libem::em_static. Proves the installed
# libem.pc and CMake package point at where they were installed, not at
# the configure-time prefix. Exit 0 only when all four run and print "ok".
set -euo pipefail
build=$(cd "$1" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/libem-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"

cmake --install "$build" --prefix "$prefix" >/dev/null
pc=$(find "$prefix" -name libem.pc | head -n1)
[ -n "$pc" ] || { echo "install_test: no libem.pc installed" >&2; exit 1; }
libdir=$(dirname "$(dirname "$pc")")

cat >"$tmp/prog.c" <<'C'
#include <em.h>
#include <stdio.h>

static void done(em_loop *loop, void *arg)
{
    (void)arg;
    em_stop(loop);
}

int main(void)
{
    em_loop *loop;
    if (em_loop_new(&loop) < 0)
        return 1;
    em_add_timer(loop, 0.01, done, NULL, NULL);
    em_run(loop);
    if (em_loop_free(loop) != 0)
        return 1;
    puts("ok");
    return 0;
}
C

check()
{
    local what=$1 out
    shift
    out=$("$@")
    if [ "$out" != ok ]; then
        echo "install_test: $what printed '$out'" >&2
        exit 1
    fi
    echo "install_test: $what ok"
}

export PKG_CONFIG_PATH="$(dirname "$pc")"
cflags=$(pkg-config --cflags libem)
case "$cflags" in
*"$prefix"*) ;;
*) echo "install_test: pkg-config points elsewhere: $cflags" >&2; exit 1 ;;
esac

# shellcheck disable=SC2046
cc -std=c11 "$tmp/prog.c" -o "$tmp/pc_shared" $(pkg-config --cflags --libs libem)
check "pkg-config, shared" env LD_LIBRARY_PATH="$libdir" "$tmp/pc_shared"

# shellcheck disable=SC2046
cc -std=c11 "$tmp/prog.c" -o "$tmp/pc_static" $cflags -Wl,--as-needed \
    "$libdir/libem.a" $(pkg-config --static --libs libem | sed 's/-lem\b//')
if ldd "$tmp/pc_static" | grep -q 'libem\.so'; then
    echo "install_test: the static build needs libem.so" >&2
    exit 1
fi
check "pkg-config, static" "$tmp/pc_static"

mkdir -p "$tmp/consumer"
cp "$tmp/prog.c" "$tmp/consumer/prog.c"
cat >"$tmp/consumer/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.20)
project(consumer C)
find_package(libem REQUIRED)
add_executable(prog_shared prog.c)
target_link_libraries(prog_shared PRIVATE libem::em_shared)
add_executable(prog_static prog.c)
target_link_libraries(prog_static PRIVATE libem::em_static)
CM
cmake -S "$tmp/consumer" -B "$tmp/consumer/build" \
    -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$tmp/consumer/build" >/dev/null
check "find_package, libem::em_shared" "$tmp/consumer/build/prog_shared"
check "find_package, libem::em_static" "$tmp/consumer/build/prog_static"
