# frozen_string_literal: true

require_relative 'helper'

# Backport::Server::Tcpip and adapters on TCP connections: echo, chunking,
# remote, closing exactly once, no leaked descriptors, stop, accept rate,
# writes from other threads.
class TestTcpip < BackportTest::TestCase
  def serve adapter, host: '127.0.0.1', **opts
    server = nil
    machine, thread = start_machine do |m|
      server = m.prepare(Backport::Server::Tcpip.new(host: host, port: 0, adapter: adapter, **opts))
    end
    [machine, thread, server]
  end

  def test_echo_with_opening_receiving_closing
    events = BackportTest::Events.new
    machine, thread, server = serve(recorder(events, echo: true))
    assert_true server.started?
    assert_operator server.port, :>, 0
    sock = connect(server.port)
    sock.write('hello')
    assert_equal 'hello', read_bytes(sock, 5)
    sock.close
    wait_for(5, 'closing') { count(events, :closing) == 1 }
    assert_equal %i[opening receiving closing], events.to_a.map(&:first)
    assert_equal [true], events.select { |e| e[0] == :closing }.map { |e| e[2] }
    stop_machine(machine, thread)
    assert_equal 1, count(events, :closing)
  end

  # Input arrives in whatever pieces TCP makes: the adapter sees every byte,
  # in order, and so does the client, whatever the split.
  def test_arbitrary_chunking_both_ways
    events = BackportTest::Events.new
    machine, thread, server = serve(recorder(events, echo: true))
    payload = Random.new(42).bytes(300_000)
    sock = connect(server.port)
    reader = Thread.new { read_bytes(sock, payload.bytesize, 20) }
    rng = Random.new(7)
    offset = 0
    while offset < payload.bytesize
      n = [1, 2, 3, 100, 1460, 4096, 65_536][rng.rand(7)]
      sock.write(payload.byteslice(offset, n))
      offset += n
      sleep 0.001 if rng.rand(50).zero?
    end
    assert_equal payload, reader.value
    assert_equal payload, received(events).b
    sock.close
    stop_machine(machine, thread)
  end

  def test_remote_is_the_peer
    events = BackportTest::Events.new
    machine, thread, server = serve(recorder(events))
    sock = connect(server.port)
    wait_for(5, 'opening') { count(events, :opening) == 1 }
    remote = events.to_a.first[2]
    assert_equal({ family: 'AF_INET', port: sock.local_address.ip_port,
                   hostname: '127.0.0.1', address: '127.0.0.1' }, remote)
    assert_not_equal server.port, remote[:port]
    adapter = events.to_a.first[1]
    sock.close
    wait_for(5, 'closing') { count(events, :closing) == 1 }
    # Still the peer after it is gone.
    assert_equal remote, adapter.remote
    stop_machine(machine, thread)
  end

  def test_remote_ipv6_and_v4_mapped
    begin
      probe = TCPServer.new('::1', 0)
      probe.close
    rescue SystemCallError
      omit 'no IPv6 loopback'
    end
    events = BackportTest::Events.new
    machine, thread, server = serve(recorder(events), host: '::1')
    sock = connect(server.port, '::1')
    wait_for(5, 'opening') { count(events, :opening) == 1 }
    assert_equal({ family: 'AF_INET6', port: sock.local_address.ip_port,
                   hostname: '::1', address: '::1' }, events.to_a.first[2])
    sock.close
    stop_machine(machine, thread)

    # A dual-stack listener: an IPv4 client is reported as IPv4.
    events = BackportTest::Events.new
    machine, thread, server = serve(recorder(events), host: '::')
    sock = connect(server.port, '127.0.0.1')
    wait_for(5, 'opening') { count(events, :opening) == 1 }
    remote = events.to_a.first[2]
    assert_equal 'AF_INET', remote[:family]
    assert_equal '127.0.0.1', remote[:address]
    assert_equal sock.local_address.ip_port, remote[:port]
    sock.close
    stop_machine(machine, thread)
  rescue Errno::EAFNOSUPPORT, Errno::EADDRNOTAVAIL
    omit 'no dual-stack IPv6'
  end

  # closing runs once whatever ends the connection: the adapter's close
  # (called twice), the peer's close, the peer's reset, the machine's stop.
  def test_closing_exactly_once
    events = BackportTest::Events.new
    closer = Class.new(recorder(events)) do
      def receiving(data)
        super
        return unless data.include?('close')

        write('bye')
        close
        close
        write('ignored')
      end
    end
    machine, thread, server = serve(closer)
    by_close = connect(server.port)
    by_peer = connect(server.port)
    by_reset = connect(server.port)
    by_stop = connect(server.port)
    wait_for(5, 'four openings') { count(events, :opening) == 4 }

    by_close.write('please close')
    assert_equal 'bye', read_to_eof(by_close)

    by_peer.close
    by_reset.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack('ii'))
    by_reset.close
    wait_for(5, 'three closings') { count(events, :closing) == 3 }
    stop_machine(machine, thread)
    assert_equal '', read_to_eof(by_stop)
    sleep 0.05
    assert_equal 4, count(events, :closing)
    assert_equal 4, events.select { |e| e[0] == :closing }.map { |e| e[1] }.uniq.size
    assert_true(events.select { |e| e[0] == :closing }.all? { |e| e[2] })
  ensure
    [by_close, by_peer, by_stop].each { |s| s&.close unless s&.closed? }
  end

  def test_closed_states_and_close_flushes
    events = BackportTest::Events.new
    states = BackportTest::Events.new
    big = 'x' * 2_000_000
    klass = Class.new(recorder(events)) do
      define_method(:receiving) do |_data|
        states << [:before, closed?]
        write(big)
        close
        states << [:after, closed?]
      end
    end
    machine, thread, server = serve(klass)
    sock = connect(server.port)
    sock.write('go')
    data = read_to_eof(sock, 20)
    assert_equal big.bytesize, data.bytesize
    assert_equal [[:before, false], [:after, true]], states.to_a.map { |e| e[0..1] }
    wait_for(5, 'closing') { count(events, :closing) == 1 }
    sock.close
    stop_machine(machine, thread)
  end

  # A peer that disconnects leaves no descriptor behind (Backport leaked
  # the server's side of the socket).
  def test_peer_disconnects_leave_no_descriptor
    events = BackportTest::Events.new
    machine, thread, server = serve(recorder(events, echo: true))
    sock = connect(server.port)
    sock.write('warm')
    read_bytes(sock, 4)
    sock.close
    wait_for(5, 'closing') { count(events, :closing) == 1 }
    before = fd_count
    50.times do |i|
      s = connect(server.port)
      s.write('ping')
      read_bytes(s, 4)
      if i.even?
        s.close
      else
        s.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack('ii'))
        s.close
      end
    end
    wait_for(5, '51 closings') { count(events, :closing) == 51 }
    wait_for(5, 'the descriptors to be closed') { fd_count <= before }
    assert_equal [], server.clients
    stop_machine(machine, thread)
  end

  def test_clients_lists_the_connected
    events = BackportTest::Events.new
    machine, thread, server = serve(recorder(events))
    a = connect(server.port)
    b = connect(server.port)
    wait_for(5, 'two clients') { server.clients.size == 2 }
    assert_true(server.clients.all? { |c| c.is_a?(Backport::Client) && !c.stopped? })
    a.close
    wait_for(5, 'one client') { server.clients.size == 1 }
    assert_equal b.local_address.ip_port, server.clients.first.adapter.remote[:port]
    b.close
    wait_for(5, 'no client') { server.clients.empty? }
    stop_machine(machine, thread)
  end

  # Stop stops every server (Backport skipped every other one) and closes
  # every client (Backport left them open).
  def test_stop_closes_every_server_and_client
    events = BackportTest::Events.new
    ticks = 0
    servers = nil
    before = fd_count
    machine, thread = start_machine do |m|
      servers = Array.new(4) { m.prepare(Backport::Server::Tcpip.new(host: '127.0.0.1', port: 0, adapter: recorder(events))) }
      servers << m.prepare(Backport::Server::Interval.new(0.05) { ticks += 1 })
      servers << m.prepare(Backport::Server::Interval.new(0.05) { ticks += 1 })
    end
    ports = servers.first(4).map(&:port)
    socks = ports.flat_map { |p| [connect(p), connect(p)] }
    wait_for(5, 'eight openings') { count(events, :opening) == 8 }
    assert_equal 6, machine.servers.size
    stop_machine(machine, thread)
    assert_true machine.stopped?
    assert_equal [], machine.servers
    assert_true servers.all?(&:stopped?)
    assert_equal 8, count(events, :closing)
    socks.each { |s| assert_equal '', read_to_eof(s) }
    ports.each { |p| assert_true refused?(p), "port #{p} still listening" }
    socks.each(&:close)
    after_ticks = ticks
    sleep 0.15
    assert_equal after_ticks, ticks
    assert_equal before, fd_count
  end

  # Event-driven accepts: Backport's accept thread slept 10 ms per accept.
  def test_accepts_are_not_capped
    events = BackportTest::Events.new
    machine, thread, server = serve(recorder(events))
    socks = []
    t0 = now
    500.times { socks << connect(server.port) }
    wait_for(10, '500 openings') { count(events, :opening) == 500 }
    elapsed = now - t0
    assert_operator elapsed, :<, 1.0, "500 accepts took #{elapsed.round(3)} s"
    warn "500 accepts: #{elapsed.round(3)} s" if ENV["BACKPORT_TEST_VERBOSE"]
    socks.each(&:close)
    wait_for(10, '500 closings') { count(events, :closing) == 500 }
    stop_machine(machine, thread)
  end

  # A write made off the reactor thread goes to the reactor in order, and
  # a reactor write made after it (causally) does not overtake it.
  def test_writes_from_other_threads_keep_their_order
    workers = []
    klass = Class.new(Backport::Adapter) do
      define_method(:receiving) do |_data|
        adapter = self
        workers << Thread.new do
          4.times.map do |t|
            Thread.new do
              2000.times { |i| adapter.write("#{t}:#{i}\n") }
            end
          end.each(&:join)
          # Causal order: written by this thread, then a reactor write.
          adapter.write("worker-last\n")
          EM.schedule { adapter.write_line('reactor-after') }
        end
      end
    end
    machine, thread, server = serve(klass)
    sock = connect(server.port)
    sock.write('go')
    data = read_until(sock, 20) { |d| d.end_with?("reactor-after\n") }
    lines = data.split("\n")
    assert_equal 8002, lines.size
    assert_equal %w[worker-last reactor-after], lines.last(2)
    4.times do |t|
      mine = lines.select { |l| l.start_with?("#{t}:") }
      assert_equal (0...2000).map { |i| "#{t}:#{i}" }, mine
    end
    workers.each(&:join)
    sock.close
    stop_machine(machine, thread)
  end

  # close from another thread comes after the writes that thread made.
  def test_close_from_another_thread_after_its_writes
    events = BackportTest::Events.new
    klass = Class.new(recorder(events)) do
      def receiving(_data)
        adapter = self
        Thread.new do
          500.times { |i| adapter.write_line(i) }
          adapter.close
          adapter.write_line('after close')
        end
      end
    end
    machine, thread, server = serve(klass)
    sock = connect(server.port)
    sock.write('go')
    assert_equal (0...500).map { |i| "#{i}\n" }.join, read_to_eof(sock)
    wait_for(5, 'closing') { count(events, :closing) == 1 }
    sock.close
    stop_machine(machine, thread)
  end

  # Tells the reactor, through a pipe it watches, which adapter write to
  # make: the worker's way to cause a reactor write other than next_tick
  # (whose FIFO would order it after the worker's flush anyway).
  class Poker < EM::Connection
    def initialize adapter
      super()
      @adapter = adapter
      @buffer = +''
    end

    def receive_data data
      @buffer << data
      while (line = @buffer.slice!(/\A[^\n]*\n/))
        @adapter.write(line)
      end
    end
  end

  # Writes from another thread mixed with reactor writes, over and over:
  # the queue starts and empties many times, so reactor writes switch
  # between the straight way and the queue. Each reactor write is made
  # after a handed-over one (causally: the worker asks for it, through
  # next_tick or through a pipe the reactor reads) and must come after it;
  # each source keeps its own order.
  def test_reactor_writes_mixed_with_handed_over_ones
    rounds = 2000
    workers = []
    poke_r, poke_w = IO.pipe
    poker = nil
    klass = Class.new(Backport::Adapter) do
      define_method(:receiving) do |_data|
        adapter = self
        adapter.write("r-first\n") # straight: nothing queued yet
        poker = EM.attach(poke_r, Poker, adapter)
        workers << Thread.new do
          rounds.times do |i|
            adapter.write("w#{i}\n")
            if i.even?
              EM.schedule { adapter.write("r#{i}\n") }
            else
              poke_w.write("p#{i}\n")
            end
          end
          poke_w.write("end\n")
        end
      end
    end
    machine, thread, server = serve(klass)
    sock = connect(server.port)
    sock.write('go')
    # "end" comes through the pipe: the last r lines may follow it.
    data = read_until(sock, 20) { |d| d.count("\n") >= 2 * rounds + 2 }
    lines = data.split("\n")
    assert_equal 2 * rounds + 2, lines.size
    assert_equal 'r-first', lines.first
    assert_include lines, 'end'
    where = lines.each_with_index.to_h
    assert_equal (0...rounds).map { |i| "w#{i}" }, lines.grep(/\Aw/)
    assert_equal (0...rounds).select(&:even?).map { |i| "r#{i}" }, lines.grep(/\Ar\d/)
    assert_equal (0...rounds).select(&:odd?).map { |i| "p#{i}" }, lines.grep(/\Ap/)
    rounds.times do |i|
      mine = i.even? ? "r#{i}" : "p#{i}"
      assert_operator where["w#{i}"], :<, where[mine], "#{mine} overtook w#{i}"
    end
    workers.each(&:join)
    on_reactor { poker.detach } # the pipe stays ours to close
    sock.close
    stop_machine(machine, thread)
  ensure
    [poke_r, poke_w].each { |io| io&.close unless io&.closed? }
  end

  # A close made on another thread stops the reactor's writes too, whether
  # writes were queued before it or not; and a close on the reactor thread
  # stops the writes that follow it, on either thread.
  def test_writes_after_close_are_ignored_on_every_thread
    events = BackportTest::Events.new
    late = Queue.new
    klass = Class.new(recorder(events)) do
      define_method(:receiving) do |data|
        super(data)
        adapter = self
        case data
        when 'queued-then-close'
          Thread.new do
            3.times { |i| adapter.write_line(i) }
            adapter.close
            EM.schedule { late << [adapter.write('reactor-late'), adapter.closed?] }
          end
        when 'close-alone'
          Thread.new do
            adapter.close
            EM.schedule { late << [adapter.write('reactor-late'), adapter.closed?] }
          end
        when 'close-on-reactor'
          write('bye')
          close
          write('late')
          Thread.new do
            adapter.write('worker-late')
            late << [nil, adapter.closed?]
          end
        end
      end
    end
    machine, thread, server = serve(klass)
    a = connect(server.port)
    b = connect(server.port)
    c = connect(server.port)
    wait_for(5, 'three openings') { count(events, :opening) == 3 }
    a.write('queued-then-close')
    b.write('close-alone')
    c.write('close-on-reactor')
    assert_equal "0\n1\n2\n", read_to_eof(a)
    assert_equal '', read_to_eof(b)
    assert_equal 'bye', read_to_eof(c)
    3.times { assert_equal [nil, true], pop_with_timeout(late, 5, 'the late writes') }
    wait_for(5, 'three closings') { count(events, :closing) == 3 }
    stop_machine(machine, thread)
    assert_equal 3, count(events, :closing)
  ensure
    [a, b, c].each { |s| s&.close unless s&.closed? }
  end

  def test_accept_by_hand
    events = BackportTest::Events.new
    server = nil
    machine, thread = start_machine do
      server = Backport::Server::Tcpip.new(host: '127.0.0.1', port: 0, adapter: recorder(events, echo: true))
    end
    assert_true server.stopped?
    assert_nil on_reactor { server.accept }
    sock = connect(server.port)
    client = nil
    wait_for(5, 'a pending connection') { (client = on_reactor { server.accept }) }
    assert_instance_of Backport::Client, client
    assert_equal [client], server.clients
    assert_equal sock.local_address.ip_port, client.adapter.remote[:port]
    assert_equal 1, count(events, :opening)
    sock.write('hi')
    assert_equal 'hi', read_bytes(sock, 2)
    assert_nil server.accept # not on the reactor thread
    sock.close
    wait_for(5, 'closing') { count(events, :closing) == 1 }
    server.stop # off the reactor thread: handed over, done shortly after
    wait_for(5, 'the port to close') { refused?(server.port) }
    assert_true server.stopped?
    stop_machine(machine, thread)
  end

  def test_socket_class
    made = []
    socket_class = Class.new(TCPServer) do
      define_singleton_method(:new) do |host, port|
        made << [host, port]
        super(host, port)
      end
    end
    events = BackportTest::Events.new
    machine, thread, server = serve(recorder(events, echo: true), socket_class: socket_class)
    assert_equal [['127.0.0.1', 0]], made
    sock = connect(server.port)
    sock.write('x')
    assert_equal 'x', read_bytes(sock, 1)
    sock.close
    stop_machine(machine, thread)
  end

  def test_bad_arguments_raise_at_once
    taken = TCPServer.new('127.0.0.1', 0)
    assert_raise(Errno::EADDRINUSE) do
      Backport::Server::Tcpip.new(host: '127.0.0.1', port: taken.local_address.ip_port)
    end
    assert_raise(TypeError) { Backport::Server::Tcpip.new(host: '127.0.0.1', port: 0, adapter: Object) }
  ensure
    taken&.close
  end

  # A server made and never started gives its port back when stopped.
  def test_stop_without_start_releases_the_port
    server = Backport::Server::Tcpip.new(host: '127.0.0.1', port: 0)
    port = server.port
    assert_false refused?(port)
    server.stop
    assert_true refused?(port)
  end

  # An exception in an adapter callback is logged and closes that
  # connection; the server goes on.
  def test_adapter_exception_closes_only_that_connection
    events = BackportTest::Events.new
    klass = Class.new(recorder(events, echo: true)) do
      def receiving(data)
        raise ArgumentError, 'boom' if data.include?('boom')

        super
      end
    end
    machine, thread, server = serve(klass)
    bad = connect(server.port)
    bad.write('boom')
    assert_equal '', read_to_eof(bad)
    good = connect(server.port)
    good.write('fine')
    assert_equal 'fine', read_bytes(good, 4)
    assert_match(/receiving raised \[ArgumentError\] boom/, @log.string)
    good.close
    bad.close
    stop_machine(machine, thread)
  end
end
