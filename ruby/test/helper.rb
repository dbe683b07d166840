# frozen_string_literal: true
#
# helper.rb - what every engine test shares. The same tests run on libem's
# engine and on Debian's (runner.rb ENGINE); a test that only libem's
# engine passes must say which documented improvement it checks
# (libem_only) and is skipped on the reference.

require "socket"
require "timeout"
require "tmpdir"
require "fileutils"
require "rbconfig"
require "test/unit"

class EngineTest < Test::Unit::TestCase
  # Seconds a whole EM.run may take before the test fails (Timeout raises
  # in the reactor thread: the wait must be interruptible).
  RUN_LIMIT = Float(ENV.fetch("EM_TEST_RUN_LIMIT", "10"))

  def libem?
    EM.const_defined?(:LIBEM_VERSION)
  end

  # Skips the test on the reference engine: `why` names the improvement.
  def libem_only(why)
    omit("libem improvement: #{why}") unless libem?
  end

  # EM.run with a time limit; returns what the block's run left in @result.
  def run_em(limit = RUN_LIMIT, &block)
    Timeout.timeout(limit) { EM.run(&block) }
  end

  def port_of(sig)
    Socket.unpack_sockaddr_in(EM.get_sockname(sig))[0]
  end

  # A server on 127.0.0.1, any port; returns [signature, port].
  def server(handler = nil, *args, &block)
    sig = EM.start_server("127.0.0.1", 0, handler, *args, &block)
    [sig, port_of(sig)]
  end

  # A TCP port nothing listens on.
  def free_port
    s = TCPServer.new("127.0.0.1", 0)
    port = s.addr[1]
    s.close
    port
  end

  def teardown
    # A failed test must not leave a reactor behind for the next one.
    EM.stop if EM.reactor_running?
  rescue StandardError
    nil
  end
end

# A deterministic pseudo-random byte stream and chunking.
module Pattern
  def self.bytes(n, seed = 1)
    rng = Random.new(seed)
    rng.bytes(n).b
  end

  def self.chunks(data, seed = 2, max = 7000)
    rng = Random.new(seed)
    out = []
    i = 0
    while i < data.bytesize
      n = 1 + rng.rand(max)
      out << data.byteslice(i, n)
      i += n
    end
    out
  end
end
