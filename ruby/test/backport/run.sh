#!/usr/bin/env bash
# run.sh - run the Backport library's tests (ruby/test/backport/test_*.rb).
#
#   ruby/test/backport/run.sh [test-unit options, e.g. -n /closing/]
#
# Engine: Debian's EventMachine (ruby-eventmachine) by default;
# BACKPORT_ENGINE=libem loads libem's instead (ruby/lib/libem/eventmachine.rb,
# the `ruby -rlibem/eventmachine` activation) when this tree has it.
# BACKPORT_TEST_TIMEOUT sets each test's time limit in seconds (30).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
ruby=${RUBY:-ruby}

case "${BACKPORT_ENGINE:-eventmachine}" in
eventmachine) ;;
libem)
    if [ ! -f "$root/ruby/lib/libem/eventmachine.rb" ]; then
        echo "run.sh: BACKPORT_ENGINE=libem but ruby/lib/libem/eventmachine.rb is missing" >&2
        exit 2
    fi
    # RUBYOPT: the examples the tests start as children load it too.
    export RUBYOPT="-I$root/ruby/lib -rlibem/eventmachine ${RUBYOPT:-}"
    ;;
*)
    echo "run.sh: BACKPORT_ENGINE must be eventmachine or libem" >&2
    exit 2
    ;;
esac

exec "$ruby" -I "$root/ruby/lib" -I "$here" "$here/all.rb" "$@"
