# frozen_string_literal: true
#
# libem/eventmachine - run EventMachine programs on libem.
#
#   ruby -rlibem/eventmachine app.rb
#   require "libem/eventmachine"   # before anything requires "eventmachine"
#
# Loads libem's engine (the rubyeventmachine extension built on libem) and
# registers it under the feature name "rubyeventmachine", so that
# EventMachine's own Ruby layer (require "eventmachine") finds its engine
# already loaded and uses it, unchanged. See docs/ruby.md.

module LibEM
  # Where the extension is: $LIBEM_RUBY_EXT (the .so or its directory),
  # next to this file (an installed gem), a build tree of the repository
  # this file lives in (build*/ruby/), or libem/rubyeventmachine.so on the
  # load path (a gem whose extension stays in its extension directory).
  def self.engine_path
    candidates = []
    if (env = ENV["LIBEM_RUBY_EXT"]) && !env.empty?
      candidates << (File.directory?(env) ? File.join(env, "rubyeventmachine.so") : env)
    end
    candidates << File.join(__dir__, "rubyeventmachine.so")
    root = File.expand_path("../../..", __dir__)
    candidates << File.join(root, "build", "ruby", "rubyeventmachine.so")
    candidates.concat(Dir[File.join(root, "build*", "ruby", "rubyeventmachine.so")].sort)
    $LOAD_PATH.each do |dir|
      candidates << File.join(dir.to_s, "libem", "rubyeventmachine.so")
    end
    found = candidates.find { |path| File.file?(path) }
    return File.expand_path(found) if found

    raise LoadError, "libem's rubyeventmachine.so not found (looked in: " \
                     "#{candidates.uniq.join(', ')}); build it with " \
                     "`make` or set LIBEM_RUBY_EXT"
  end
end

unless defined?(EventMachine::LIBEM_VERSION)
  if $LOADED_FEATURES.any? { |f| File.basename(f) == "rubyeventmachine.so" }
    raise LoadError, "EventMachine's own engine is already loaded: require " \
                     "\"libem/eventmachine\" before \"eventmachine\""
  end
  require LibEM.engine_path
  # EventMachine's `require "rubyeventmachine"` now finds it loaded.
  $LOADED_FEATURES << "rubyeventmachine.so"
end

module LibEM
  # Connection#start_tls understands three keys of libem's own, which
  # EventMachine's start_tls ignores, for libem's secure verification:
  #
  #   verify_hostname: true   # the host given to EM.connect (or sni_hostname)
  #   verify_hostname: "name" # this name (or IP address)
  #   ca_file: "ca.pem", ca_path: "dir"  # the CA store (default: the system's)
  #
  # With any of them the chain is verified against the CA store (and the
  # host name, with verify_hostname) and OpenSSL's verdict decides; the
  # program's own ssl_verify_peer, when it defines one, is asked about each
  # certificate OpenSSL accepted and may still reject it. See docs/ruby.md.
  module SecureTLS
    def start_tls(args = {})
      name = args[:verify_hostname]
      ca_file = args[:ca_file] && File.path(args[:ca_file]) # a Pathname too
      ca_path = args[:ca_path] && File.path(args[:ca_path])
      unless name.nil? || name == true || name == false || name.is_a?(String)
        raise TypeError, "verify_hostname must be true, false or a String"
      end
      [ca_file, ca_path].each do |path|
        next if path.nil? || path.empty?
        raise EventMachine::FileNotFoundException, "Could not find #{path} for start_tls" unless File.exist?(path)
      end
      if name || (ca_file && !ca_file.empty?) || (ca_path && !ca_path.empty?)
        own = method(:ssl_verify_peer).owner != EventMachine::Connection
        LibEM.set_tls_verify(@signature, name, ca_file, ca_path, own)
      end
      super
    end
  end
end

EventMachine::Connection.prepend(LibEM::SecureTLS)
