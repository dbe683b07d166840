# frozen_string_literal: true
#
# test_activation.rb - an unchanged EventMachine program, run as its own
# process with the activation line (`ruby -I ruby/lib -rlibem/eventmachine
# app.rb`; on the reference engine without it), serves clients and stops
# on SIGINT; and libem/eventmachine's own checks.

class TestActivation < EngineTest
  LIB = File.expand_path("../lib", __dir__)

  def engine_args
    libem? ? ["-I", LIB, "-rlibem/eventmachine"] : []
  end

  def test_unchanged_echo_server_app
    port = free_port
    app = File.join(__dir__, "apps", "echo_server.rb")
    IO.popen([RbConfig.ruby, *engine_args, app, port.to_s], err: [:child, :out]) do |io|
      begin
        run_app(io, port)
      ensure
        Process.kill("KILL", io.pid) unless $!.nil? # never wait for a stuck app
      end
    end
    assert_true $?.success?, "exit status #{$?.inspect}"
  end

  def run_app(io, port)
    Timeout.timeout(RUN_LIMIT) do
      assert_equal "listening\n", io.gets
      sock = TCPSocket.new("127.0.0.1", port)
      sock.write("hello\n")
      assert_equal ">>> you sent: hello\n", sock.readpartial(100)
      sock.write("quit\n")
      # send_data then close_connection: Debian's engine drops the reply
      # (it writes on the next turn); libem wrote it at once (docs/ruby.md).
      reply = sock.read # to the server's close
      if libem?
        assert_equal ">>> you sent: quit\n", reply
      else
        assert_include ["", ">>> you sent: quit\n"], reply
      end
      sock.close
      Process.kill("INT", io.pid)
      assert_match(/someone connected.*someone disconnected.*stopped/m, io.read)
    end
  end

  def test_the_engine_is_registered_as_rubyeventmachine
    libem_only "checks libem/eventmachine's registration"
    assert_include $LOADED_FEATURES, "rubyeventmachine.so"
    assert_false require("rubyeventmachine")
    assert_match(/\A\d+\.\d+\.\d+\z/, EM::LIBEM_VERSION)
  end

  def test_requiring_it_after_eventmachine_fails
    libem_only "checks libem/eventmachine's guard"
    out = IO.popen([RbConfig.ruby, "-I", LIB, "-e",
                    'require "eventmachine"; begin; require "libem/eventmachine"; ' \
                    'rescue LoadError => e; print e.message; end'], &:read)
    assert_match(/EventMachine's own engine is already loaded/, out)
  end
end
