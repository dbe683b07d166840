# libem.gemspec - the libem gem: EventMachine's engine (the rubyeventmachine
# extension) built on libem, and libem/eventmachine, which activates it.
#
#   gem build ruby/libem.gemspec          # or, in ruby/: gem build libem.gemspec
#   gem install --local libem-X.Y.Z.gem   # compiles libem's sources in
#   gem install --local libem-X.Y.Z.gem -- --with-system-libem
#                                         # links an installed libem (pkg-config)
#   ruby -rlibem/eventmachine app.rb
#
# The gem carries a copy of libem's sources (src/*.[ch], include/em.h) in
# ext/rubyeventmachine/libem/, because extconf.rb compiles them into the
# extension where no libem is installed. Evaluating this file in a
# checkout (or with LIBEM_SRC naming one) refreshes that copy from the
# repository first; git ignores it. Why a copy made here rather than a
# separate packaging script: `gem build` alone then makes a complete gem,
# and the copy can never be older than the sources it was built from.
#
# EventMachine's own Ruby layer (require "eventmachine") is not a
# dependency: it comes from the eventmachine gem or Debian's
# ruby-eventmachine, whichever the program already uses (docs/ruby.md).

require "fileutils"

Gem::Specification.new do |s|
  here = __dir__
  bundle = File.join(here, "ext", "rubyeventmachine", "libem")
  root = ENV["LIBEM_SRC"]
  root = File.expand_path("..", here) if root.nil? || root.empty?
  if File.file?(File.join(root, "include", "em.h")) &&
     File.directory?(File.join(root, "src"))
    FileUtils.rm_rf(bundle)
    FileUtils.mkdir_p([File.join(bundle, "src"), File.join(bundle, "include")])
    FileUtils.cp(Dir[File.join(root, "src", "*.[ch]")].sort, File.join(bundle, "src"))
    FileUtils.cp(File.join(root, "include", "em.h"), File.join(bundle, "include"))
  end
  em_h = File.join(bundle, "include", "em.h")
  abort "libem.gemspec: no libem sources (#{em_h}); build it from a checkout" \
    unless File.file?(em_h)
  version = %w[MAJOR MINOR PATCH].map do |part|
    File.read(em_h)[/^#define EM_VERSION_#{part} +(\d+)/, 1] or
      abort "libem.gemspec: no EM_VERSION_#{part} in #{em_h}"
  end.join(".")

  s.name = "libem"
  s.version = version
  s.summary = "EventMachine programs, unchanged, on libem"
  s.description = "A drop-in engine for EventMachine's Ruby layer: the " \
                  "rubyeventmachine extension built on libem (epoll, one " \
                  "syscall per turn, non-blocking DNS, TLS per connection " \
                  "context). Activate with ruby -rlibem/eventmachine app.rb."
  s.authors = ["libem contributors"]
  s.required_ruby_version = ">= 2.6" # rb_nogvl and its flags
  s.require_paths = ["lib"]
  s.extensions = ["ext/rubyeventmachine/extconf.rb"]
  s.files = Dir.chdir(here) do
    Dir["lib/**/*.rb"] +
      Dir["ext/rubyeventmachine/*.{c,h,rb}"] +
      Dir["ext/rubyeventmachine/libem/{src,include}/*.[ch]"]
  end.sort
end
