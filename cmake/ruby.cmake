# ruby.cmake - the Ruby engine in ruby/: EventMachine's `rubyeventmachine`
# extension built on libem (ruby/ext/rubyeventmachine, by its extconf.rb,
# which compiles libem's sources in), and its tests (ruby/test), run on
# this engine (ctest `ruby_engine`) and on Debian's own engine when
# ruby-eventmachine is installed (`ruby_reference`), real programs (thin,
# em-http-request, em-websocket) on both (`ruby_thin`,
# `ruby_thin_reference`), and the gem
# (ruby/libem.gemspec) built, installed and run (`ruby_gem`). See
# docs/ruby.md.
#
# Output: ${CMAKE_BINARY_DIR}/ruby/rubyeventmachine.so, which
# ruby/lib/libem/eventmachine.rb finds in build*/ruby by itself.

find_program(EM_RUBY_EXECUTABLE ruby)
set(_em_ruby_found OFF)
if(EM_RUBY_EXECUTABLE)
    execute_process(
        COMMAND "${EM_RUBY_EXECUTABLE}" -rrbconfig -e
                "print RbConfig::CONFIG['rubyhdrdir']"
        OUTPUT_VARIABLE _em_ruby_hdrdir
        RESULT_VARIABLE _em_ruby_rc
        ERROR_QUIET)
    if(_em_ruby_rc EQUAL 0 AND EXISTS "${_em_ruby_hdrdir}/ruby.h")
        set(_em_ruby_found ON)
    endif()
endif()

# The docs' ```ruby blocks are valid Ruby (docs_ruby; needs only ruby).
if(EM_RUBY_EXECUTABLE AND EM_BUILD_TESTS)
    add_test(NAME docs_ruby COMMAND bash
        "${CMAKE_CURRENT_SOURCE_DIR}/tests/docs_ruby.sh"
        "${CMAKE_CURRENT_SOURCE_DIR}")
    add_test(NAME docs_ruby_selftest COMMAND bash
        "${CMAKE_CURRENT_SOURCE_DIR}/tests/docs_ruby.sh"
        "${CMAKE_CURRENT_SOURCE_DIR}" --selftest)
    set_tests_properties(docs_ruby docs_ruby_selftest PROPERTIES
        TIMEOUT 120 LABELS docs)
endif()

# On by default where ruby-dev is installed; sanitizer builds leave it out
# (the extension is built with Ruby's flags, not instrumented).
set(_em_ruby_default OFF)
if(_em_ruby_found AND NOT EM_SANITIZE)
    set(_em_ruby_default ON)
endif()
option(EM_BUILD_RUBY "Build the Ruby engine (ruby/) and its tests"
       ${_em_ruby_default})

if(EM_BUILD_RUBY)
    if(NOT _em_ruby_found)
        message(FATAL_ERROR
            "EM_BUILD_RUBY needs ruby and its headers (apt-get install ruby-dev)")
    endif()
    set(_em_ruby_dir "${CMAKE_BINARY_DIR}/ruby")
    set(_em_ruby_ext "${CMAKE_CURRENT_SOURCE_DIR}/ruby/ext/rubyeventmachine")
    file(GLOB _em_ruby_sources CONFIGURE_DEPENDS
         "${_em_ruby_ext}/*.c" "${_em_ruby_ext}/*.h")
    file(GLOB _em_lib_headers CONFIGURE_DEPENDS
         "${CMAKE_CURRENT_SOURCE_DIR}/src/*.h")
    # extconf.rb lists the sources when it writes the Makefile: a new file
    # (CONFIGURE_DEPENDS re-globs) changes this list and re-runs it.
    string(REPLACE ";" "\n" _em_ruby_list
           "${_em_ruby_sources};${EM_SOURCES}")
    file(CONFIGURE OUTPUT "${_em_ruby_dir}/sources.txt"
         CONTENT "${_em_ruby_list}\n")

    if(CMAKE_GENERATOR MATCHES "Make")
        set(_em_make "$(MAKE)") # the outer make's jobserver
    else()
        find_program(_em_make make REQUIRED)
    endif()
    add_custom_command(
        OUTPUT "${_em_ruby_dir}/Makefile"
        COMMAND "${CMAKE_COMMAND}" -E env
                "LIBEM_SRC=${CMAKE_CURRENT_SOURCE_DIR}" LIBEM_WERROR=1
                "${EM_RUBY_EXECUTABLE}" "${_em_ruby_ext}/extconf.rb"
                > extconf.out
        DEPENDS "${_em_ruby_ext}/extconf.rb" "${_em_ruby_dir}/sources.txt"
        WORKING_DIRECTORY "${_em_ruby_dir}"
        COMMENT "Configuring the Ruby engine (extconf.rb)")
    add_custom_command(
        OUTPUT "${_em_ruby_dir}/rubyeventmachine.so"
        COMMAND ${_em_make} -s
        DEPENDS "${_em_ruby_dir}/Makefile" ${_em_ruby_sources} ${EM_SOURCES}
                ${_em_lib_headers} "${CMAKE_CURRENT_SOURCE_DIR}/include/em.h"
        WORKING_DIRECTORY "${_em_ruby_dir}"
        COMMENT "Building the Ruby engine (rubyeventmachine.so)")
    add_custom_target(ruby_engine_ext ALL
        DEPENDS "${_em_ruby_dir}/rubyeventmachine.so")

    if(EM_BUILD_TESTS)
        # The same tests on both engines; runner.rb says which it loaded.
        # Each EM.run in them has its own time limit (helper.rb).
        add_test(NAME ruby_engine
            COMMAND "${EM_RUBY_EXECUTABLE}"
                    "${CMAKE_CURRENT_SOURCE_DIR}/ruby/test/runner.rb" libem)
        set_tests_properties(ruby_engine PROPERTIES
            ENVIRONMENT "LIBEM_RUBY_EXT=${_em_ruby_dir}" TIMEOUT 300)
        execute_process(
            COMMAND "${EM_RUBY_EXECUTABLE}" -e "require 'rubyeventmachine'"
            RESULT_VARIABLE _em_ruby_ref_rc OUTPUT_QUIET ERROR_QUIET)
        if(_em_ruby_ref_rc EQUAL 0)
            add_test(NAME ruby_reference
                COMMAND "${EM_RUBY_EXECUTABLE}"
                        "${CMAKE_CURRENT_SOURCE_DIR}/ruby/test/runner.rb"
                        reference)
            set_tests_properties(ruby_reference PROPERTIES TIMEOUT 300)
        else()
            message(STATUS "ruby-eventmachine not installed: no ruby_reference test")
        endif()
        # Real programs from Debian on each engine: thin under ab, an
        # em-http-request client, an em-websocket server (real_programs.rb;
        # skipped when thin, ab or the libraries are missing).
        add_test(NAME ruby_thin
            COMMAND "${EM_RUBY_EXECUTABLE}"
                    "${CMAKE_CURRENT_SOURCE_DIR}/ruby/test/real_programs.rb" libem)
        set_tests_properties(ruby_thin PROPERTIES
            ENVIRONMENT "LIBEM_RUBY_EXT=${_em_ruby_dir}" TIMEOUT 300
            SKIP_RETURN_CODE 77)
        if(_em_ruby_ref_rc EQUAL 0)
            add_test(NAME ruby_thin_reference
                COMMAND "${EM_RUBY_EXECUTABLE}"
                        "${CMAKE_CURRENT_SOURCE_DIR}/ruby/test/real_programs.rb"
                        reference)
            set_tests_properties(ruby_thin_reference PROPERTIES
                TIMEOUT 300 SKIP_RETURN_CODE 77)
        endif()
        # The gem end to end: gem build, gem install --local into a
        # temporary GEM_HOME (from its bundled sources, then against this
        # build's libem installed in a temporary prefix), an unchanged
        # program run with -rlibem/eventmachine. Skipped without `gem`.
        add_test(NAME ruby_gem
            COMMAND "${EM_RUBY_EXECUTABLE}"
                    "${CMAKE_CURRENT_SOURCE_DIR}/ruby/test/gem_test.rb"
                    "${CMAKE_CURRENT_SOURCE_DIR}" "${CMAKE_BINARY_DIR}")
        set_tests_properties(ruby_gem PROPERTIES
            TIMEOUT 300 SKIP_RETURN_CODE 77)
    endif()
endif()
