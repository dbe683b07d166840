# Thin wrapper around CMake for the common tasks. The real build is
# CMakeLists.txt; every target works from a fresh clone.
#
#   make run        install deps, build, run examples/echo_server on :8000
#   make test       install deps, build, run every test (ctest)
#   make sanitize   the tests again, built with ASan + UBSan (build-asan/)
#   make valgrind   the tests under valgrind memcheck (build-valgrind/);
#                   VG_TESTS="error loop" limits it to those areas
#   make bench      the benchmarks (build-bench/): bench/results.sh $(BENCH_ARGS)
#                   writes bench/RESULTS.md, e.g. make bench BENCH_ARGS=--quick
#   make fuzz       the framers' fuzz harnesses (build-fuzz/, clang's
#                   libFuzzer when installed), FUZZ_SECONDS each (60)
#   make format     clang-format every C file in place
#   make reference  regenerate docs/reference.md from include/em.h
#   make clean      remove the build directories

BUILD        ?= build
ASAN_BUILD   ?= build-asan
VG_BUILD     ?= build-valgrind
BENCH_BUILD  ?= build-bench
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
JOBS         ?= 2
PORT         ?= 8000
BENCH_ARGS   ?=
CMAKE_FLAGS  ?=
CTEST_FLAGS  ?= --output-on-failure --no-tests=error

# Checking builds keep -O2 -g but not -DNDEBUG: assert() stays on there.
CHECK_FLAGS  = -DCMAKE_BUILD_TYPE=RelWithDebInfo \
               -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O2 -g"

# A valgrind run is 10-50x slower: stretch test time bounds (TH_TIMEOUT).
VG_SCALE     ?= 10
VG_TESTS     ?=

SAN_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
          UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

.PHONY: all deps build run test sanitize valgrind bench fuzz format reference clean

all: build

deps:
	bash scripts/deps.sh

build:
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j$(JOBS)

# Only what it runs: the example server, not the test suite.
run: deps
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j$(JOBS) --target echo_server
	exec $(BUILD)/examples/echo_server $(PORT)

test: deps build
	ctest --test-dir $(BUILD) $(CTEST_FLAGS)

sanitize: deps
	cmake -S . -B $(ASAN_BUILD) -DEM_SANITIZE=ON $(CHECK_FLAGS) $(CMAKE_FLAGS)
	cmake --build $(ASAN_BUILD) -j$(JOBS)
	$(SAN_ENV) ctest --test-dir $(ASAN_BUILD) $(CTEST_FLAGS)

# clang (with libFuzzer) when scripts/deps.sh --fuzz could install it;
# otherwise the default compiler and fuzz/driver.c's random inputs.
fuzz:
	bash scripts/deps.sh --fuzz
	cmake -S . -B $(FUZZ_BUILD) -DEM_FUZZ=ON -DEM_BUILD_TESTS=OFF \
	    -DEM_BUILD_EXAMPLES=OFF -DEM_FUZZ_SECONDS=$(FUZZ_SECONDS) \
	    $$(command -v clang >/dev/null && echo -DCMAKE_C_COMPILER=clang) \
	    $(CHECK_FLAGS) $(CMAKE_FLAGS)
	cmake --build $(FUZZ_BUILD) -j$(JOBS)
	$(SAN_ENV) ctest --test-dir $(FUZZ_BUILD) $(CTEST_FLAGS)

valgrind:
	bash scripts/deps.sh --valgrind
	cmake -S . -B $(VG_BUILD) -DEM_TEST_TIMEOUT_SCALE=$(VG_SCALE) \
	    $(CHECK_FLAGS) $(CMAKE_FLAGS)
	cmake --build $(VG_BUILD) -j$(JOBS)
	bash scripts/valgrind.sh $(VG_BUILD) $(VG_TESTS)

# A build tree of its own, so a benchmark that fails to compile never breaks
# `make test`, and tests and examples are not built for it.
bench:
	bash scripts/deps.sh --bench
	cmake -S . -B $(BENCH_BUILD) -DEM_BUILD_BENCH=ON -DEM_BUILD_TESTS=OFF \
	    -DEM_BUILD_EXAMPLES=OFF $(CMAKE_FLAGS)
	cmake --build $(BENCH_BUILD) -j$(JOBS)
	bash bench/results.sh --bench-dir $(abspath $(BENCH_BUILD))/bench $(BENCH_ARGS)

format:
	clang-format -i include/*.h src/*.[ch] tests/*.[ch] \
	    $(wildcard examples/*.c)

# docs/reference.md is checked in; the docs_reference test fails when it
# and em.h disagree. awk only: no build needed.
reference:
	awk -f scripts/reference.awk include/em.h > docs/reference.md.tmp
	mv docs/reference.md.tmp docs/reference.md

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(VG_BUILD) $(BENCH_BUILD) $(FUZZ_BUILD)
