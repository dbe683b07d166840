# frozen_string_literal: true
#
# test_more.rb - the rest of the engine through EventMachine's public API:
# processes (popen, system, get_status), datagrams, attached and watched
# descriptors, file watches, proxies, send_file_data, process watches and
# the keyboard.

class TestMore < EngineTest
  def test_system_output_and_status
    r = nil
    run_em do
      EM.system("sh", "-c", "echo out; exit 3") do |output, status|
        r = [output, status.class, status.exitstatus, status.pid.class]
        EM.stop
      end
    end
    assert_equal ["out\n", Process::Status, 3, Integer], r
  end

  def test_popen_talks_both_ways
    got = +""
    pid = nil
    status = nil
    run_em do
      EM.popen("cat", Module.new do
        define_method(:post_init) do
          send_data("through cat\n")
          EM.add_timer(0.05) { close_connection_after_writing }
        end
        define_method(:receive_data) { |d| got << d }
        define_method(:unbind) do
          pid = get_pid
          status = get_status
          EM.stop
        end
      end)
    end
    assert_equal "through cat\n", got
    assert_kind_of Integer, pid
    assert_kind_of Process::Status, status
    assert_equal pid, status.pid
  end

  def test_deferrable_child_process
    out = nil
    run_em do
      EM::DeferrableChildProcess.open("echo deferred").callback do |o|
        out = o
        EM.stop
      end
    end
    assert_equal "deferred\n", out
  end

  def test_udp_round_trip
    got = []
    run_em do
      server = EM.open_datagram_socket("127.0.0.1", 0, Module.new do
        define_method(:receive_data) do |d|
          port, ip = Socket.unpack_sockaddr_in(get_peername)
          got << [:server, d, ip]
          send_data(d.upcase) # a reply to the sender
        end
      end)
      port = Socket.unpack_sockaddr_in(server.get_sockname)[0]
      client = EM.open_datagram_socket("127.0.0.1", 0, Module.new do
        define_method(:receive_data) { |d| got << [:client, d]; EM.stop }
      end)
      assert_equal 5, client.send_datagram("hello", "127.0.0.1", port)
      e = assert_raise(EM::ConnectionError) do
        client.send_datagram("x", "no-such-host.invalid", port)
      end
      assert_equal "error in sending datagram", e.message
    end
    assert_equal [[:server, "hello", "127.0.0.1"], [:client, "HELLO"]], got
  end

  # Every send_data on a datagram socket is one datagram, also when a
  # callback sends several.
  def test_udp_send_data_twice_in_a_callback_makes_two_datagrams
    got = []
    run_em do
      server = EM.open_datagram_socket("127.0.0.1", 0, Module.new do
        define_method(:receive_data) do |_d|
          send_data("first")
          send_data("second")
        end
      end)
      port = Socket.unpack_sockaddr_in(server.get_sockname)[0]
      client = EM.open_datagram_socket("127.0.0.1", 0, Module.new do
        define_method(:receive_data) { |d| got << d; EM.stop if got.size == 2 }
      end)
      client.send_datagram("go", "127.0.0.1", port)
    end
    assert_equal %w[first second], got
  end

  def test_udp_bad_host
    run_em do
      e = assert_raise(RuntimeError) do
        EM.open_datagram_socket("no-such-host.invalid", 0)
      end
      assert_equal "no datagram socket", e.message
      EM.stop
    end
  end

  def test_attach_reads_a_pipe_and_closes_the_io_after_unbind
    rd, wr = IO.pipe
    got = +""
    unbound = false
    run_em do
      EM.attach(rd, Module.new do
        define_method(:receive_data) { |d| got << d }
        define_method(:unbind) { unbound = true; EM.stop }
      end)
      wr.write("attached pipe")
      wr.close
    end
    assert_equal "attached pipe", got
    assert_true unbound
    assert_true rd.closed?, "EventMachine's Ruby closes the attached IO"
  end

  def test_attach_writes
    rd, wr = IO.pipe
    run_em do
      c = EM.attach(wr)
      c.send_data("written by the reactor")
      c.close_connection_after_writing
      EM.add_timer(0.1) { EM.stop }
    end
    assert_equal "written by the reactor", rd.read
  ensure
    rd&.close
  end

  def test_watch_notify_readable_and_detach
    rd, wr = IO.pipe
    log = []
    run_em do
      c = EM.watch(rd, Module.new do
        define_method(:notify_readable) do
          log << [:readable, @io.read_nonblock(100)]
          log << [:watch_only, watch_only?]
          detach
        end
        define_method(:unbind) { log << :unbind; EM.stop }
      end)
      log << [:before, c.notify_readable?]
      c.notify_readable = true
      log << [:after, c.notify_readable?]
      wr.write("ping")
    end
    assert_equal [[:before, false], [:after, true], [:readable, "ping"],
                  [:watch_only, true], :unbind], log
    assert_false rd.closed?, "a watched IO stays open"
  ensure
    rd&.close
    wr&.close
  end

  def test_attach_refuses_notify_handlers
    rd, wr = IO.pipe
    run_em do
      assert_raise(ArgumentError) do
        EM.attach(rd, Module.new { def notify_readable; end })
      end
      EM.stop
    end
  ensure
    rd&.close
    wr&.close
  end

  def test_file_watch_modified_moved_deleted
    dir = Dir.mktmpdir("em-watch")
    path = File.join(dir, "watched")
    File.write(path, "a")
    events = []
    run_em do
      EM.watch_file(path, Module.new do
        define_method(:file_modified) { events << :modified }
        define_method(:file_moved) { events << :moved }
        define_method(:file_deleted) { events << :deleted }
        define_method(:unbind) { events << :unbind; EM.stop }
      end)
      EM.add_timer(0.05) { File.write(path, "b") }
      EM.add_timer(0.15) { File.rename(path, path + ".2") }
      EM.add_timer(0.25) { File.unlink(path + ".2") }
    end
    assert_equal %i[modified moved deleted unbind], events.uniq
  ensure
    FileUtils.rm_rf(dir) if dir
  end

  def test_file_watch_errors
    run_em do
      e = assert_raise(EM::Unsupported) { EM.watch_file("/nonexistent/em/x") }
      assert_match(/error registering file .* for watching/, e.message)
      e = assert_raise(EM::InvalidSignature) { EM.unwatch_filename(987_654) }
      assert_equal "attempted to remove invalid watch signature", e.message
      EM.stop
    end
  end

  def test_stop_watching_unbinds
    dir = Dir.mktmpdir("em-watch")
    path = File.join(dir, "watched")
    File.write(path, "a")
    events = []
    run_em do
      w = EM.watch_file(path, Module.new do
        define_method(:unbind) { events << :unbind; EM.stop }
      end)
      assert_equal path, w.path
      EM.add_timer(0.02) { w.stop_watching }
    end
    assert_equal [:unbind], events
  ensure
    FileUtils.rm_rf(dir) if dir
  end

  module ProxyFront
    def initialize(backend_port, log)
      super()
      @log = log
      @backend = EM.connect("127.0.0.1", backend_port, ProxyBack, self)
    end

    def connection_completed_back
      proxy_incoming_to(@backend)
      @backend.proxy_incoming_to(self)
    end

    def proxy_target_unbound
      @log << :front_target_unbound
    end
  end

  module ProxyBack
    def initialize(front)
      super()
      @front = front
    end

    def connection_completed
      @front.connection_completed_back
      @front.send_data("ready")
    end
  end

  def test_proxy_both_ways
    data = Pattern.bytes(200_000, 9)
    got = +""
    log = []
    proxied = nil
    run_em do
      _bsig, bport = server(EchoServer)
      fsig = EM.start_server("127.0.0.1", 0, ProxyFront, bport, log)
      fport = port_of(fsig)
      EM.connect("127.0.0.1", fport, Module.new do
        define_method(:receive_data) do |d|
          if got.empty? && d.start_with?("ready")
            d = d.byteslice(5..)
            send_data(data)
          end
          got << d
          if got.bytesize >= data.bytesize
            proxied = true
            EM.stop
          end
        end
      end)
    end
    assert_true proxied
    assert_true data == got
  end

  def test_send_file_data
    dir = Dir.mktmpdir("em-file")
    path = File.join(dir, "f")
    File.binwrite(path, "file contents" * 100)
    got = +""
    run_em do
      _sig, port = server(Module.new do
        define_method(:post_init) do
          send_file_data(path)
          close_connection_after_writing
        end
      end)
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:receive_data) { |d| got << d }
        define_method(:unbind) { EM.stop }
      end)
    end
    assert_equal "file contents" * 100, got
  ensure
    FileUtils.rm_rf(dir) if dir
  end

  def test_send_file_data_over_32k
    libem_only "send_file_data takes files of any size (EventMachine: 32 KiB)"
    dir = Dir.mktmpdir("em-file")
    path = File.join(dir, "big")
    data = Pattern.bytes(1_000_000, 3)
    File.binwrite(path, data)
    got = +""
    run_em do
      _sig, port = server(Module.new do
        define_method(:post_init) do
          send_file_data(path)
          close_connection_after_writing
        end
      end)
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:receive_data) { |d| got << d }
        define_method(:unbind) { EM.stop }
      end)
    end
    assert_true data == got
  ensure
    FileUtils.rm_rf(dir) if dir
  end

  def test_watch_process_reports_the_exit
    libem_only "watch_process works on Linux (pidfd; Debian's needs kqueue)"
    pid = Process.spawn("sleep", "0.2")
    events = []
    run_em do
      EM.watch_process(pid, Module.new do
        define_method(:process_exited) { events << :exited }
        define_method(:unbind) { events << :unbind; EM.stop }
      end)
    end
    Process.wait(pid)
    assert_equal %i[exited unbind], events
  end

  def test_watch_process_unsupported_on_the_reference
    omit("checks the reference engine") if libem?
    run_em do
      assert_raise(EM::Unsupported) { EM.watch_process(Process.pid) }
      EM.stop
    end
  end

  def test_calls_that_abort_the_reference_raise
    libem_only "bad signatures and descriptors raise (Debian's engine aborts)"
    run_em do
      e = assert_raise(RuntimeError) { EM.stop_server(987_654) }
      assert_equal "failed to close nonexistent acceptor", e.message
      e = assert_raise(RuntimeError) { EM.attach_fd(987_654, false) }
      assert_equal "invalid file descriptor", e.message
      EM.stop
    end
  end

  def test_keyboard_reads_standard_input
    engine_args = libem? ? ["-I", File.expand_path("../lib", __dir__), "-rlibem/eventmachine"] : []
    script = <<~RUBY
      require "eventmachine"
      EM.run do
        EM.open_keyboard(Module.new do
          buf = +""
          # Debian's engine reads the keyboard a byte at a time.
          define_method(:receive_data) do |d|
            buf << d
            next unless buf.end_with?("\n")
            print "got:" + buf
            $stdout.flush
            EM.stop
          end
        end)
      end
    RUBY
    out = IO.popen([RbConfig.ruby, *engine_args, "-e", script], "r+") do |io|
      io.write("typed\n")
      io.close_write
      Timeout.timeout(RUN_LIMIT) { io.read }
    end
    assert_equal "got:typed\n", out
  end
end
