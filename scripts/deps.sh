#!/usr/bin/env bash
# deps.sh - make sure the Debian packages libem's build needs are installed.
#
#   scripts/deps.sh              build + test: cmake gcc make pkg-config
#                                libcriterion-dev libssl-dev openssl
#                                nginx-light (TLS interop tests), ruby
#                                ruby-dev ruby-eventmachine ruby-test-unit
#                                (the Ruby engine, its tests and the
#                                reference engine they also run on), thin
#                                ruby-rack ruby-em-http-request
#                                ruby-em-websocket apache2-utils (real
#                                programs on it, driven by ab)
#   scripts/deps.sh --bench      also what bench/ compares against and uses
#                                (wrk for the thin benchmark)
#   scripts/deps.sh --valgrind   also valgrind
#   scripts/deps.sh --fuzz       also clang (libFuzzer for make fuzz)
#
# Only missing packages are installed (apt-get update first, once, and only
# then); with everything present it is a quick no-op. Uses sudo when not
# root. Never prompts.
set -euo pipefail

packages=(cmake gcc make pkg-config libcriterion-dev libssl-dev openssl
          nginx-light ruby ruby-dev ruby-eventmachine ruby-test-unit
          thin ruby-rack ruby-em-http-request ruby-em-websocket apache2-utils)

for arg in "$@"; do
    case "$arg" in
    --bench)
        packages+=(libuv1-dev libevent-dev libev-dev gnuplot-nox strace
                   linux-perf wrk)
        ;;
    --valgrind)
        packages+=(valgrind)
        ;;
    --fuzz)
        packages+=(clang)
        ;;
    -h | --help)
        sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "deps.sh: unknown option: $arg" >&2
        exit 2
        ;;
    esac
done

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "installed" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

echo "deps.sh: installing ${missing[*]}" >&2

# sudo would drop DEBIAN_FRONTEND from the environment: pass it through env.
apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "deps.sh: not root and no sudo; please install: ${missing[*]}" >&2
        exit 1
    fi
    apt=(sudo -n "${apt[@]}")
fi

"${apt[@]}" update -q </dev/null
"${apt[@]}" install -y -q --no-install-recommends "${missing[@]}" </dev/null
