# backport.cmake - the Ruby Backport library (ruby/lib/backport.rb and
# ruby/lib/backport/, docs/ruby-backport.md) and its tests
# (ruby/test/backport/run.sh): ctest `ruby_backport`, run on Debian's
# EventMachine engine, when ruby, ruby-eventmachine and ruby-test-unit are
# installed (scripts/deps.sh installs them). The library is pure Ruby:
# nothing to build. When libem's own Ruby engine is built in this tree
# (EM_BUILD_RUBY, cmake/ruby.cmake, included before this file), the same
# tests run on it as well: `ruby_backport_libem`.
#
# Included at the end of CMakeLists.txt.

if(NOT EM_BUILD_TESTS)
    return()
endif()

find_program(EM_RUBY_EXECUTABLE ruby)
set(_em_backport_found OFF)
if(EM_RUBY_EXECUTABLE)
    execute_process(
        COMMAND "${EM_RUBY_EXECUTABLE}" -e
                "require 'eventmachine'; require 'observer'; require 'test/unit'; Test::Unit::AutoRunner.need_auto_run = false"
        RESULT_VARIABLE _em_backport_rc
        OUTPUT_QUIET ERROR_QUIET)
    if(_em_backport_rc EQUAL 0)
        set(_em_backport_found ON)
    endif()
endif()

option(EM_TEST_RUBY_BACKPORT
       "Run the Ruby Backport library's tests (needs ruby, ruby-eventmachine, ruby-test-unit)"
       ${_em_backport_found})

if(EM_TEST_RUBY_BACKPORT)
    if(NOT _em_backport_found)
        message(FATAL_ERROR
            "EM_TEST_RUBY_BACKPORT needs ruby, ruby-eventmachine and ruby-test-unit (scripts/deps.sh)")
    endif()
    set(_em_backport_run "${CMAKE_CURRENT_SOURCE_DIR}/ruby/test/backport/run.sh")
    add_test(NAME ruby_backport COMMAND bash "${_em_backport_run}")
    set_tests_properties(ruby_backport PROPERTIES
        ENVIRONMENT "RUBY=${EM_RUBY_EXECUTABLE}"
        TIMEOUT 300 LABELS ruby)
    if(EM_BUILD_RUBY AND EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/ruby/lib/libem/eventmachine.rb")
        add_test(NAME ruby_backport_libem COMMAND bash "${_em_backport_run}")
        set_tests_properties(ruby_backport_libem PROPERTIES
            ENVIRONMENT "RUBY=${EM_RUBY_EXECUTABLE};BACKPORT_ENGINE=libem;LIBEM_RUBY_EXT=${CMAKE_BINARY_DIR}/ruby"
            TIMEOUT 300 LABELS ruby)
    endif()
elseif(EM_RUBY_EXECUTABLE)
    message(STATUS "ruby-eventmachine or ruby-test-unit missing: no ruby_backport test")
endif()
