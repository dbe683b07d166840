# frozen_string_literal: true
#
# test_connections.rb - servers and connections through EventMachine's
# public API: echo with arbitrary chunking, the order of post_init,
# connection_completed, receive_data and unbind, unbind reasons, the
# synchronous errors (unresolvable names, busy ports, missing Unix
# sockets), names, pause/resume, timeouts, keepalive, close after writing,
# stop_server, bind_connect, reconnect and connection counts.

module EchoServer
  def receive_data(data)
    send_data(data)
  end
end

class TestConnections < EngineTest
  # A client that sends `chunks` one per turn and stops once it got all
  # of it back.
  class ChunkClient < EM::Connection
    attr_reader :got, :reads

    def initialize(chunks, total, done)
      super()
      @chunks = chunks.dup
      @total = total
      @done = done
      @got = +""
      @reads = 0
    end

    def connection_completed
      push
    end

    def push
      return if @chunks.empty?
      send_data(@chunks.shift)
      EM.next_tick { push }
    end

    def receive_data(data)
      @reads += 1
      @got << data
      @done.call(self) if @got.bytesize >= @total
    end
  end

  def test_echo_with_arbitrary_chunking
    data = Pattern.bytes(300_000)
    chunks = Pattern.chunks(data)
    client = nil
    run_em do
      _sig, port = server(EchoServer)
      client = EM.connect("127.0.0.1", port, ChunkClient, chunks,
                          data.bytesize, ->(_c) { EM.stop })
    end
    assert_equal data.bytesize, client.got.bytesize
    assert_true data == client.got, "echoed bytes differ"
    assert_equal Encoding::ASCII_8BIT, client.got.encoding
  end

  def test_many_clients_at_once
    done = 0
    run_em do
      _sig, port = server(EchoServer)
      20.times do |i|
        payload = Pattern.bytes(5000 + i, i)
        EM.connect("127.0.0.1", port, ChunkClient, Pattern.chunks(payload, i, 900),
                   payload.bytesize, lambda { |c|
                     assert_true c.got == payload
                     c.close_connection
                     done += 1
                     EM.stop if done == 20
                   })
      end
    end
    assert_equal 20, done
  end

  class OrderClient < EM::Connection
    def initialize(log)
      super()
      @log = log
      @log << [:initialize, signature.class]
    end

    def post_init
      @log << :post_init
    end

    def connection_completed
      @log << :connection_completed
      send_data("ping")
    end

    def receive_data(data)
      @log << [:receive_data, data]
      close_connection
    end

    def unbind(reason = nil)
      @log << [:unbind, reason]
      EM.stop
    end
  end

  module OrderServer
    def post_init
      $order_server_log << :server_post_init
    end

    def receive_data(data)
      $order_server_log << [:server_receive_data, data]
      send_data(data.upcase)
    end

    def unbind
      $order_server_log << :server_unbind
    end
  end

  def test_callback_order
    log = []
    $order_server_log = []
    run_em do
      _sig, port = server(OrderServer)
      EM.connect("127.0.0.1", port, OrderClient, log)
    end
    assert_equal [[:initialize, Integer], :post_init, :connection_completed,
                  [:receive_data, "PING"], [:unbind, nil]], log
    assert_equal [:server_post_init, [:server_receive_data, "ping"]],
                 $order_server_log.first(2)
  end

  class ReasonClient < EM::Connection
    def initialize(reasons)
      super()
      @reasons = reasons
    end

    def unbind(reason = nil)
      @reasons << reason
      EM.stop
    end
  end

  def test_unbind_reason_connection_refused
    reasons = []
    run_em { EM.connect("127.0.0.1", free_port, ReasonClient, reasons) }
    assert_equal [Errno::ECONNREFUSED], reasons
  end

  def test_unbind_reason_inactivity_timeout
    reasons = []
    t0 = Time.now
    run_em do
      _sig, port = server
      c = EM.connect("127.0.0.1", port, ReasonClient, reasons)
      c.comm_inactivity_timeout = 0.2
      assert_in_delta 0.2, c.comm_inactivity_timeout, 0.001
    end
    assert_equal [Errno::ETIMEDOUT], reasons
    assert_operator Time.now - t0, :>=, 0.19
  end

  def test_unbind_reason_without_argument_and_peer_close
    reasons = []
    run_em do
      _sig, port = server(Module.new { def post_init; close_connection; end })
      EM.connect("127.0.0.1", port, ReasonClient, reasons)
    end
    assert_equal [nil], reasons
  end

  def test_unresolvable_name_raises_at_once
    run_em do
      e = assert_raise(EM::ConnectionError) do
        EM.connect("no-such-host.invalid", 80)
      end
      assert_match(/\Aunable to resolve address: /, e.message)
      e = assert_raise(EM::ConnectionError) do
        EM.bind_connect("no-such-host.invalid", 0, "127.0.0.1", 80)
      end
      assert_match(/\Ainvalid bind address: /, e.message)
      EM.stop
    end
  end

  def test_busy_port_raises_no_acceptor
    blocker = TCPServer.new("127.0.0.1", 0)
    run_em do
      e = assert_raise(RuntimeError) do
        EM.start_server("127.0.0.1", blocker.addr[1])
      end
      assert_equal "no acceptor (port is in use or requires root privileges)",
                   e.message
      EM.stop
    end
  ensure
    blocker&.close
  end

  def test_missing_unix_socket_raises
    run_em do
      assert_raise(RuntimeError) do
        EM.connect_unix_domain(File.join(Dir.tmpdir, "no-such-em-#{$$}.sock"))
      end
      EM.stop
    end
  end

  def test_unix_domain_echo
    path = File.join(Dir.tmpdir, "em-test-#{$$}.sock")
    got = nil
    run_em do
      EM.start_unix_domain_server(path, EchoServer)
      EM.connect_unix_domain(path, Module.new do
        define_method(:connection_completed) { send_data("over unix") }
        define_method(:receive_data) { |d| got = d; EM.stop }
      end)
    end
    assert_equal "over unix", got
  ensure
    File.unlink(path) if path && File.exist?(path)
  end

  def test_peername_and_sockname_are_packed_sockaddrs
    names = {}
    run_em do
      _sig, port = server
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:connection_completed) do
          names[:peer] = Socket.unpack_sockaddr_in(get_peername)
          names[:sock] = Socket.unpack_sockaddr_in(get_sockname)
          names[:port] = port
          EM.stop
        end
      end)
    end
    assert_equal [names[:port], "127.0.0.1"], names[:peer]
    assert_equal "127.0.0.1", names[:sock][1]
    assert_operator names[:sock][0], :>, 0
  end

  def test_send_data_returns_the_length_and_pause_resume
    r = {}
    run_em do
      _sig, port = server(EchoServer)
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:connection_completed) do
          r[:sent] = send_data("hello")
          r[:pause] = [pause, pause, paused?]
          r[:resume] = [resume, resume, paused?]
        end
        define_method(:receive_data) do |d|
          r[:data] = d
          r[:outbound] = get_outbound_data_size
          close_connection
          r[:after_close] = send_data("late")
          EM.stop
        end
      end)
    end
    assert_equal 5, r[:sent]
    assert_equal [true, false, true], r[:pause]
    assert_equal [true, false, false], r[:resume]
    assert_equal "hello", r[:data]
    assert_equal 0, r[:outbound]
    assert_equal 0, r[:after_close]
  end

  def test_stale_signature
    run_em do
      assert_equal(-1, EM.send_data(123_456_789, "x", 1))
      assert_nil EM.close_connection(123_456_789, false)
      assert_nil EM.get_peername(123_456_789)
      assert_false EM.pause_connection(123_456_789)
      assert_equal(-1, EM.report_connection_error_status(123_456_789))
      EM.stop
    end
  end

  def test_paused_connection_gets_no_data_until_resumed
    got = +""
    t_resume = nil
    early = false
    run_em do
      _sig, port = server(Module.new do
        define_method(:post_init) do
          pause
          EM.add_timer(0.2) { t_resume = Time.now; resume }
        end
        define_method(:receive_data) do |d|
          got << d
          early = true if t_resume.nil?
          EM.stop
        end
      end)
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:connection_completed) { send_data("x" * 100) }
      end)
    end
    assert_equal "x" * 100, got
    assert_false early, "data arrived while paused"
  end

  def test_close_after_writing_flushes
    data = Pattern.bytes(2_000_000, 5)
    got = +""
    reason = :none
    run_em do
      _sig, port = server(Module.new do
        define_method(:post_init) do
          send_data(data)
          close_connection_after_writing
        end
      end)
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:receive_data) { |d| got << d }
        define_method(:unbind) { |r = nil| reason = r; EM.stop }
      end)
    end
    assert_equal data.bytesize, got.bytesize
    assert_true data == got
    assert_nil reason
  end

  def test_keepalive_and_socket_options
    r = {}
    run_em do
      _sig, port = server
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:connection_completed) do
          r[:enable] = enable_keepalive(30, 5, 3)
          opt = get_sock_opt(Socket::SOL_SOCKET, Socket::SO_KEEPALIVE)
          r[:on] = opt.unpack1("i")
          r[:disable] = disable_keepalive
          r[:off] = get_sock_opt(Socket::SOL_SOCKET, Socket::SO_KEEPALIVE).unpack1("i")
          set_sock_opt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, true)
          r[:nodelay] = get_sock_opt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY).unpack1("i")
          r[:error] = error?
          EM.stop
        end
      end)
    end
    assert_equal 1, r[:on]
    assert_equal 0, r[:off]
    assert_not_equal 0, r[:nodelay]
    assert_false r[:error]
  end

  def test_pending_connect_timeout_accessors
    r = nil
    run_em do
      _sig, port = server
      c = EM.connect("127.0.0.1", port)
      c.pending_connect_timeout = 3
      r = [c.pending_connect_timeout, c.get_idle_time]
      EM.stop
    end
    assert_in_delta 3.0, r[0], 0.001
    assert_kind_of Numeric, r[1]
  end

  def test_stop_server_frees_the_port
    run_em do
      sig, port = server
      EM.stop_server(sig)
      EM.add_timer(0.05) do
        reasons = []
        EM.connect("127.0.0.1", port, ReasonClient, reasons)
        EM.add_timer(1) { flunk "no unbind" }
      end
    end
  end

  def test_bind_connect_uses_the_local_port
    seen = nil
    local = free_port
    run_em do
      _sig, port = server(Module.new do
        define_method(:post_init) do
          seen = Socket.unpack_sockaddr_in(get_peername)
          EM.stop
        end
      end)
      EM.bind_connect("127.0.0.1", local, "127.0.0.1", port)
    end
    assert_equal [local, "127.0.0.1"], seen
  end

  def test_reconnect_after_refusal
    attempts = []
    run_em do
      _sig, port = server(EchoServer)
      refused = free_port
      client = Module.new do
        define_method(:unbind) do |r = nil|
          attempts << r
          reconnect("127.0.0.1", port) if attempts.size == 1
        end
        define_method(:connection_completed) { attempts << :completed; EM.stop }
      end
      EM.connect("127.0.0.1", refused, client)
    end
    # The reconnected connection is unbound at release (nil).
    assert_equal [Errno::ECONNREFUSED, :completed, nil], attempts
  end

  def release_with_unbind(&unbind)
    log = []
    run_em do
      sig, port = server
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:connection_completed) { log << :completed; EM.stop }
        define_method(:unbind) do |_r = nil|
          log << :unbind
          unbind.call(self, sig, port)
        end
      end)
    end
    assert_equal %i[completed unbind], log
  end

  def test_reconnecting_client_at_release
    # As clients that reconnect from unbind do: EM.run must not raise.
    release_with_unbind { |c, _sig, port| c.reconnect("127.0.0.1", port) }
  end

  def test_stop_server_at_release
    libem_only "stop_server from an unbind at release (Debian's engine aborts)"
    release_with_unbind { |_c, sig, _port| EM.stop_server(sig) }
  end

  def test_connection_count_counts_servers_and_connections
    counts = []
    run_em do
      counts << EM.connection_count
      _sig, port = server
      counts << EM.connection_count
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:connection_completed) do
          EM.next_tick { counts << EM.connection_count; EM.stop }
        end
      end)
    end
    assert_equal [0, 1, 3], counts
  end

  def test_release_unbinds_remaining_connections_oldest_first
    log = []
    tagged = Class.new(EM::Connection) do
      define_method(:initialize) { |tag| super(); @tag = tag }
      define_method(:unbind) { |r = nil| log << [@tag, r] }
    end
    run_em do
      _sig, port = server
      EM.connect("127.0.0.1", port, tagged, :first)
      EM.connect("127.0.0.1", port, tagged, :second)
      EM.add_timer(0.1) { EM.connect("127.0.0.1", port, tagged, :third); EM.stop }
    end
    assert_equal [[:first, nil], [:second, nil], [:third, nil]], log
  end

  # A reply made of a header and a body in two send_data calls, to a
  # client that waits for all of it before its next request (HTTP
  # keep-alive): written one by one, the body would wait for the ACK the
  # client delays (Nagle), ~40 ms a round. Both engines write a turn's
  # sends to a connection together.
  def test_a_reply_in_two_send_data_calls_is_not_held_back
    rounds = 100
    header = "HTTP/1.1 200 OK\r\nContent-Length: 14\r\n" + ("X-Pad: ." * 6) + "\r\n\r\n"
    reply = header + "Hello, world!\n"
    done = 0
    bad = []
    elapsed = nil
    run_em do
      _sig, port = server(Module.new do
        define_method(:receive_data) do |_d|
          send_data(header)
          send_data("Hello, world!\n")
        end
      end)
      start = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:connection_completed) { @buf = +""; send_data("GET\n") }
        define_method(:receive_data) do |d|
          @buf << d
          next if @buf.bytesize < reply.bytesize
          bad << @buf unless @buf == reply
          @buf = +""
          done += 1
          if done == rounds
            elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - start
            EM.stop
          else
            send_data("GET\n")
          end
        end
      end)
    end
    assert_equal rounds, done
    assert_equal [], bad
    # Held back, 100 rounds take 4 s; otherwise well under 0.1 s.
    assert_operator elapsed, :<, 2.0, "#{rounds} request/reply rounds"
  end

  # Pieces of every size sent in one callback (some held until the end of
  # the turn, some too big to hold), with other calls on the connection
  # between them, arrive whole and in order.
  def test_many_send_data_calls_in_one_callback_keep_their_order
    rng = Random.new(7)
    pieces = Array.new(300) { |i| Pattern.bytes(1 + rng.rand(i % 10 == 0 ? 5000 : 300), i) }
    want = pieces.join
    got = +""
    sizes = []
    run_em do
      _sig, port = server(Module.new do
        define_method(:receive_data) do |_d|
          pieces.each_with_index do |piece, i|
            send_data(piece)
            sizes << get_outbound_data_size if i % 7 == 0
          end
          close_connection_after_writing
        end
      end)
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:connection_completed) { send_data("go") }
        define_method(:receive_data) { |d| got << d }
        define_method(:unbind) { |_r = nil| EM.stop }
      end)
    end
    assert_equal want.bytesize, got.bytesize
    assert_true want == got, "bytes differ"
    assert_true sizes.all? { |n| n.is_a?(Integer) && n >= 0 }
  end

  # Clients that upload and half-close (shutdown(SHUT_WR)) get the answer
  # sent from the receive_data that completed the upload, also when the
  # FIN is read at once after it: the server reads only once everything,
  # FIN included, has arrived, and uploads of 64 KiB and 128 KiB (libem's
  # read buffer, filled) make libem read again at once and find the FIN
  # in the same event.
  def test_an_answer_to_an_upload_ending_in_fin_is_delivered
    sizes = [65_532, 131_068, 100_000, 5, 16_380, 70_000]
    answers = nil
    written = Queue.new
    run_em do
      paused = []
      _sig, port = server(Module.new do
        define_method(:post_init) { pause; paused << self }
        # The upload: a 4-byte length, then that many bytes.
        define_method(:receive_data) do |d|
          @buf = (@buf || +"") << d
          want = @buf.bytesize >= 4 ? @buf.unpack1("N") : -1
          send_data("got #{want}\n") if @buf.bytesize == want + 4
        end
      end)
      threads = sizes.map do |n|
        Thread.new do
          sock = TCPSocket.new("127.0.0.1", port)
          sock.write([n].pack("N") + ("x" * n))
          sock.close_write
          written << n
          sock.read.tap { sock.close }
        end
      end
      Thread.new do
        sizes.size.times { written.pop }
        EM.schedule do
          # Every upload and FIN is in the server's socket buffers.
          EM.add_timer(0.05) { paused.each(&:resume) }
        end
        answers = threads.map(&:value)
        EM.schedule { EM.stop }
      end
    end
    assert_equal sizes.map { |n| "got #{n}\n" }, answers
  end
end
