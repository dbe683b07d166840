# extconf.rb - builds the rubyeventmachine extension: the engine of
# EventMachine's Ruby layer, on libem.
#
# libem's sources are compiled into the extension (from the repository,
# or a copy bundled at ext/rubyeventmachine/libem in the gem; LIBEM_SRC
# points elsewhere). Why not link libem.a from the project's build: the
# gem must build where no libem is installed, a sanitizer build of libem
# cannot be loaded into an uninstrumented ruby, and compiling here gives
# the extension Ruby's own compiler flags. --with-libem-dir / pkg-config
# linking against an installed libem can come later without changing
# the binding.
require "mkmf"

here = File.expand_path(__dir__)
roots = [ENV["LIBEM_SRC"], File.join(here, "libem"),
         File.expand_path("../../..", here)].compact
root = roots.find do |dir|
  File.file?(File.join(dir, "include", "em.h")) &&
    File.directory?(File.join(dir, "src"))
end
abort "extconf.rb: libem's sources not found (set LIBEM_SRC)" unless root
libem_src = File.join(root, "src")

$INCFLAGS << " -I#{File.join(root, 'include')} -I#{libem_src}"
$VPATH << libem_src
binding_srcs = Dir[File.join(here, "rem_*.c")].map { |f| File.basename(f) }
libem_srcs = Dir[File.join(libem_src, "*.c")].map { |f| File.basename(f) }
clash = binding_srcs & libem_srcs
abort "extconf.rb: file names clash: #{clash.join(' ')}" unless clash.empty?
$srcs = binding_srcs.sort + libem_srcs.sort

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

create_makefile("rubyeventmachine")

# mkmf's Makefile knows only the headers next to extconf.rb: libem's
# objects must be rebuilt when its headers change too.
headers = Dir[File.join(libem_src, "*.h")] +
          [File.join(root, "include", "em.h")]
File.open("Makefile", "a") { |f| f.puts "\n$(OBJS): #{headers.sort.join(' ')}" }
