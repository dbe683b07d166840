# frozen_string_literal: true
#
# gem_test.rb SRC [BUILD] - the gem, end to end (ctest ruby_gem):
#
#   1. `gem build` of ruby/libem.gemspec in a copy of the checkout's ruby/
#      (beside links to its src/ and include/) makes a gem that carries
#      libem's sources;
#   2. `gem install --local` into an empty GEM_HOME compiles the extension
#      from that bundled copy (LIBEM_SRC unset, the checkout out of reach);
#   3. from there an unchanged EventMachine echo program
#      (apps/echo_server.rb), started as `ruby -rlibem/eventmachine` (and
#      again with RUBYOPT), serves a round trip on libem's engine;
#   4. with BUILD given: `cmake --install BUILD` into a temporary prefix and
#      `gem install ... -- --with-system-libem` links that libem instead,
#      and the same program runs on it.
#
# Exits 77 (ctest: skipped) when `gem` is missing.

require "rbconfig"
require "socket"
require "timeout"
require "tmpdir"
require "fileutils"
require "open3"

SRC = File.expand_path(ARGV.fetch(0) { abort "usage: gem_test.rb SRC [BUILD]" })
BUILD = ARGV[1] && File.expand_path(ARGV[1])
LIMIT = 20 # seconds for one echo program run

def step(msg)
  puts "gem_test: #{msg}"
  $stdout.flush
end

def fail!(msg)
  puts "gem_test: FAIL #{msg}"
  exit 1
end

GEM = ENV.fetch("PATH", "").split(File::PATH_SEPARATOR)
         .map { |d| File.join(d, "gem") }.find { |f| File.executable?(f) }
unless GEM
  puts "gem_test: SKIP `gem` (RubyGems' command) is not installed"
  exit 77
end

# Runs a command; fails the test with its output unless it succeeds.
def run!(env, *cmd, chdir: Dir.pwd)
  out, status = Open3.capture2e(env, *cmd, chdir: chdir)
  fail!("#{cmd.join(' ')} failed (#{status.inspect}):\n#{out}") unless status.success?
  out
end

def free_port
  s = TCPServer.new("127.0.0.1", 0)
  s.addr[1]
ensure
  s&.close
end

# An environment that sees only the gems under gem_home, and nothing of
# the checkout or of the project's build.
def gem_env(gem_home, extra = {})
  { "GEM_HOME" => gem_home, "GEM_PATH" => gem_home, "LIBEM_SRC" => nil,
    "LIBEM_RUBY_EXT" => nil, "RUBYOPT" => nil, "RUBYLIB" => nil,
    "MAKEFLAGS" => "-j2" }.merge(extra)
end

# The unchanged echo program on the installed gem: `ruby ARGS app PORT`.
# Returns the engine's path as the program's process loaded it.
def echo_round_trip(env, ruby_args, where)
  port = free_port
  app = File.join(SRC, "ruby", "test", "apps", "echo_server.rb")
  probe = "require 'eventmachine'; print $LOADED_FEATURES.grep(/rubyeventmachine\\.so\\z/).first, " \
          "' ', EM.const_defined?(:LIBEM_VERSION) ? EM::LIBEM_VERSION : 'reference'"
  loaded = run!(env, RbConfig.ruby, *ruby_args, "-e", probe, chdir: Dir.tmpdir)
  IO.popen(env, [RbConfig.ruby, *ruby_args, app, port.to_s],
           err: %i[child out], chdir: Dir.tmpdir) do |io|
    Timeout.timeout(LIMIT) do
      fail!("#{where}: the echo program did not start") unless io.gets == "listening\n"
      sock = TCPSocket.new("127.0.0.1", port)
      sock.write("hello\n")
      got = sock.readpartial(100)
      fail!("#{where}: echoed #{got.inspect}") unless got == ">>> you sent: hello\n"
      sock.write("quit\n")
      # libem's engine writes the reply before close_connection closes;
      # Debian's drops it: this also tells the engines apart.
      got = sock.read
      fail!("#{where}: quit answered #{got.inspect}") unless got == ">>> you sent: quit\n"
      sock.close
      Process.kill("INT", io.pid)
      rest = io.read
      fail!("#{where}: the program said #{rest.inspect}") unless rest =~ /disconnected.*stopped/m
    end
  rescue Timeout::Error
    Process.kill("KILL", io.pid)
    fail!("#{where}: no round trip within #{LIMIT} s")
  end
  fail!("#{where}: exit status #{$?.inspect}") unless $?.success?
  loaded
end

def check_engine(loaded, gem_home, where)
  path, version = loaded.split(" ", 2)
  unless path.to_s.start_with?(gem_home) && version =~ /\A\d+\.\d+\.\d+\z/
    fail!("#{where}: loaded #{loaded.inspect}, not libem's engine from #{gem_home}")
  end
  step "#{where}: round trip on #{path} (libem #{version})"
end

Dir.mktmpdir("libem-gem") do |tmp|
  # 1. gem build, in a copy laid out as a checkout.
  tree = File.join(tmp, "tree")
  FileUtils.mkdir_p(File.join(tree, "ruby", "ext"))
  FileUtils.cp(File.join(SRC, "ruby", "libem.gemspec"), File.join(tree, "ruby"))
  FileUtils.cp_r(File.join(SRC, "ruby", "lib"), File.join(tree, "ruby"))
  ext = File.join(tree, "ruby", "ext", "rubyeventmachine")
  FileUtils.mkdir_p(ext)
  FileUtils.cp(Dir[File.join(SRC, "ruby", "ext", "rubyeventmachine", "*.{c,h,rb}")], ext)
  FileUtils.ln_s(File.join(SRC, "src"), File.join(tree, "src"))
  FileUtils.ln_s(File.join(SRC, "include"), File.join(tree, "include"))
  gem_file = File.join(tmp, "libem.gem")
  run!({ "LIBEM_SRC" => nil }, GEM, "build", "libem.gemspec", "-o", gem_file,
       chdir: File.join(tree, "ruby"))
  files = run!({}, GEM, "spec", gem_file, "files").lines.map { |l| l.sub(/\A- /, "").strip }
  want = Dir[File.join(SRC, "src", "*.[ch]")].map { |f| "ext/rubyeventmachine/libem/src/#{File.basename(f)}" } +
         ["ext/rubyeventmachine/libem/include/em.h", "ext/rubyeventmachine/extconf.rb",
          "lib/libem/eventmachine.rb"]
  missing = want - files
  fail!("the gem lacks #{missing.join(', ')}") unless missing.empty?
  step "gem build: #{File.size(gem_file)} bytes, #{files.size} files, libem's sources included"

  # 2. gem install --local, compiled from the bundled copy.
  home = File.join(tmp, "gems")
  run!(gem_env(home), GEM, "install", "--local", "--no-document", gem_file, chdir: tmp)
  makefile = Dir[File.join(home, "gems", "libem-*", "ext", "rubyeventmachine", "Makefile")].first
  fail!("no Makefile in the installed gem") unless makefile
  unless File.read(makefile).include?("-I#{File.dirname(makefile)}/libem/include")
    fail!("the installed gem was not compiled from its bundled sources")
  end
  step "gem install --local: compiled from the gem's own copy of libem"

  # 3. the unchanged program, activated with -r and with RUBYOPT.
  loaded = echo_round_trip(gem_env(home), ["-rlibem/eventmachine"], "ruby -rlibem/eventmachine")
  check_engine(loaded, home, "ruby -rlibem/eventmachine")
  loaded = echo_round_trip(gem_env(home, "RUBYOPT" => "-rlibem/eventmachine"), [],
                           "RUBYOPT=-rlibem/eventmachine")
  check_engine(loaded, home, "RUBYOPT=-rlibem/eventmachine")

  # 4. against an installed libem.
  if BUILD
    prefix = File.join(tmp, "prefix")
    run!({}, "cmake", "--install", BUILD, "--prefix", prefix)
    pcdir = Dir[File.join(prefix, "**", "pkgconfig")].first or fail!("no pkgconfig dir in #{prefix}")
    home2 = File.join(tmp, "gems-system")
    run!(gem_env(home2, "PKG_CONFIG_PATH" => pcdir), GEM, "install", "--local",
         "--no-document", gem_file, "--", "--with-system-libem", chdir: tmp)
    so = Dir[File.join(home2, "extensions", "**", "rubyeventmachine.so")].first
    deps = run!({}, "ldd", so)
    unless deps =~ /libem\.so\.\d+ => #{Regexp.escape(prefix)}/
      fail!("--with-system-libem: #{so} does not use #{prefix}'s libem:\n#{deps}")
    end
    loaded = echo_round_trip(gem_env(home2), ["-rlibem/eventmachine"], "--with-system-libem")
    check_engine(loaded, home2, "--with-system-libem")
  end
end
puts "gem_test: PASS"
