# extconf.rb - builds the rubyeventmachine extension: the engine of
# EventMachine's Ruby layer, on libem.
#
# libem's sources are compiled into the extension: from LIBEM_SRC, from the
# repository this file lives in, or from the copy the gem carries in
# ext/rubyeventmachine/libem (ruby/libem.gemspec makes it). Why not link
# libem.a from the project's build: the gem must build where no libem is
# installed, a sanitizer build of libem cannot be loaded into an
# uninstrumented ruby, and compiling here gives the extension Ruby's own
# compiler flags. `--with-system-libem` (gem install libem --
# --with-system-libem) links an installed libem found by pkg-config
# instead; the binding uses only em.h's public API, so both work.
#
# The extension installs as libem/rubyeventmachine.so (next to
# libem/eventmachine.rb in a gem), never as a bare rubyeventmachine.so
# that a plain `require "rubyeventmachine"` would find instead of
# EventMachine's own engine.
require "mkmf"

here = File.expand_path(__dir__)
binding_srcs = Dir[File.join(here, "rem_*.c")].map { |f| File.basename(f) }

if with_config("system-libem")
  pkg_config("libem") or
    abort "extconf.rb: --with-system-libem: pkg-config finds no libem " \
          "(set PKG_CONFIG_PATH to its lib/pkgconfig)"
  have_func("em_set_wait_hook", "em.h") or
    abort "extconf.rb: the installed libem has no em_set_wait_hook (too old)"
  # An install outside the linker's default paths (cmake --install
  # --prefix DIR) is found at run time too.
  libdir = pkg_config("libem", "variable=libdir")
  $LDFLAGS << " -Wl,-rpath,#{libdir}" if libdir && !libdir.empty?
  $srcs = binding_srcs.sort
  headers = []
else
  repo = File.expand_path("../../..", here)
  # In a checkout (not in an installed gem), the repository's own sources.
  in_repo = File.identical?(File.join(repo, "ruby", "ext", "rubyeventmachine"), here)
  roots = [ENV["LIBEM_SRC"], (repo if in_repo), File.join(here, "libem")].compact
  root = roots.find do |dir|
    !dir.empty? && File.file?(File.join(dir, "include", "em.h")) &&
      File.directory?(File.join(dir, "src"))
  end
  abort "extconf.rb: libem's sources not found (set LIBEM_SRC)" unless root
  libem_src = File.join(root, "src")

  $INCFLAGS << " -I#{File.join(root, 'include')} -I#{libem_src}"
  $VPATH << libem_src
  libem_srcs = Dir[File.join(libem_src, "*.c")].map { |f| File.basename(f) }
  clash = binding_srcs & libem_srcs
  abort "extconf.rb: file names clash: #{clash.join(' ')}" unless clash.empty?
  $srcs = binding_srcs.sort + libem_srcs.sort
  headers = Dir[File.join(libem_src, "*.h")] + [File.join(root, "include", "em.h")]
end

# libem is C11 with GNU extensions; only Init_rubyeventmachine leaves the
# shared object (libem's em_ symbols stay private to it).
$CFLAGS << " -std=gnu11 -D_GNU_SOURCE -fvisibility=hidden"
$warnflags = "-Wall -Wextra -Wno-unused-parameter"
$warnflags << " -Werror" if ENV["LIBEM_WERROR"]

have_header("ruby/thread.h") or abort "extconf.rb: ruby/thread.h missing"
have_func("rb_nogvl", "ruby/thread.h") or abort "extconf.rb: rb_nogvl missing"
unless pkg_config("openssl")
  have_library("crypto") && have_library("ssl") or
    abort "extconf.rb: OpenSSL 3 (libssl-dev) missing"
end
have_library("pthread")

create_makefile("libem/rubyeventmachine")

# mkmf's Makefile knows only the headers next to extconf.rb: libem's
# objects must be rebuilt when its headers change too.
unless headers.empty?
  File.open("Makefile", "a") { |f| f.puts "\n$(OBJS): #{headers.sort.join(' ')}" }
end
