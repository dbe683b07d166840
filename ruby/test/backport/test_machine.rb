# frozen_string_literal: true

require_relative 'helper'

# Backport::Machine, Backport::Server::Base and the Backport module.
class TestMachine < BackportTest::TestCase
  def test_run_yields_before_running_and_stop_inside_returns
    machine = Backport::Machine.new
    assert_true machine.stopped?
    var = 0
    machine.run do
      var += 1
      assert_false machine.stopped?
      machine.stop
    end
    assert_equal 1, var
    assert_true machine.stopped?
    assert_false EM.reactor_running?
  end

  def test_prepare_on_a_running_machine_starts_the_server
    server = Backport::Server::Base.new
    machine, thread = start_machine do |m|
      m.prepare(server)
      assert_true server.started?
    end
    assert_equal [server], machine.servers
    later = Backport::Server::Base.new
    assert_same later, machine.prepare(later)
    wait_for(5, 'the later server to start') { later.started? }
    stop_machine(machine, thread)
    assert_true server.stopped?
    assert_true later.stopped?
    assert_equal [], machine.servers
  end

  # Servers prepared before run start with it (Backport 1.2 dropped them).
  def test_servers_prepared_before_run_start_with_it
    machine = Backport::Machine.new
    server = Backport::Server::Base.new
    machine.prepare(server)
    assert_true server.stopped?
    machine, thread = start_machine(machine)
    assert_true server.started?
    stop_machine(machine, thread)
  end

  def test_base_server_hooks_and_observers
    calls = []
    klass = Class.new(Backport::Server::Base) do
      define_method(:starting) { calls << :starting }
      define_method(:stopping) { calls << :stopping }
    end
    server = klass.new
    seen = []
    observer = Object.new
    observer.define_singleton_method(:update) { |s| seen << [s, s.stopped?] }
    server.add_observer(observer)
    server.start
    server.start
    assert_true server.started?
    assert_false server.stopped?
    server.stop
    server.stop
    assert_true server.stopped?
    assert_equal %i[starting stopping], calls
    assert_equal [[server, true]], seen
    assert_nil server.tick
  end

  # A server of one's own notifies from any thread; the machine runs its
  # tick on the reactor thread.
  def test_notify_from_a_thread_ticks_on_the_reactor
    ticks = Queue.new
    klass = Class.new(Backport::Server::Base) do
      define_method(:tick) { ticks << EM.reactor_thread? }
    end
    server = klass.new
    machine, thread = start_machine { |m| m.prepare(server) }
    Thread.new do
      server.instance_eval do
        changed
        notify_observers self
      end
    end.join
    assert_true pop_with_timeout(ticks, 5, 'a tick')
    stop_machine(machine, thread)
  end

  def test_last_server_stopping_stops_the_machine
    server = Backport::Server::Base.new
    machine, thread = start_machine { |m| m.prepare(server) }
    server.stop
    join(thread)
    assert_true machine.stopped?
  end

  def test_stop_from_another_thread
    machine, thread = start_machine { |m| m.prepare(Backport::Server::Base.new) }
    Thread.new { machine.stop }.join
    join(thread)
    assert_true machine.stopped?
  end

  # Backport.stop from a signal trap (the examples' Ctrl-C): clients are
  # closed and run returns.
  def test_stop_from_a_signal_trap
    events = BackportTest::Events.new
    port = nil
    old = trap('USR1') { Backport.stop }
    thread = Thread.new do
      Backport.run do
        port = Backport.prepare_tcp_server(host: '127.0.0.1', port: 0, adapter: recorder(events)).port
      end
    end
    @threads << thread
    wait_for(5, 'the server') { port }
    sock = connect(port)
    wait_for(5, 'opening') { count(events, :opening) == 1 }
    Process.kill('USR1', Process.pid)
    join(thread)
    assert_equal '', read_to_eof(sock)
    assert_equal 1, count(events, :closing)
    assert_true refused?(port)
    sock.close
  ensure
    trap('USR1', old || 'DEFAULT')
  end

  def test_exception_in_run_block_propagates_and_machine_is_reusable
    machine = Backport::Machine.new
    error = assert_raise(RuntimeError) do
      machine.run do
        machine.prepare(Backport::Server::Tcpip.new(host: '127.0.0.1', port: 0))
        raise 'in the block'
      end
    end
    assert_equal 'in the block', error.message
    assert_true machine.stopped?
    assert_equal [], machine.servers
    assert_false EM.reactor_running?
    machine.run { machine.stop }
    assert_true machine.stopped?
  end

  def test_runs_twice
    2.times do
      ticks = 0
      machine, thread = start_machine do |m|
        m.prepare(Backport::Server::Interval.new(0.01) { ticks += 1 })
      end
      wait_for(5, 'a tick') { ticks >= 1 }
      stop_machine(machine, thread)
    end
  end

  def test_run_while_running_returns_at_once
    machine, thread = start_machine { |m| m.prepare(Backport::Server::Base.new) }
    assert_nil machine.run { flunk 'ran the block twice' }
    stop_machine(machine, thread)
  end

  # In a program that runs its own reactor: run blocks (off the reactor
  # thread) until stop, which leaves the reactor running.
  def test_inside_a_running_reactor
    reactor = Thread.new { EM.run }
    @threads << reactor
    wait_for(5, 'the reactor') { EM.reactor_running? }
    events = BackportTest::Events.new
    machine = Backport::Machine.new
    server = nil
    runner = Thread.new do
      machine.run do
        server = machine.prepare(Backport::Server::Tcpip.new(host: '127.0.0.1', port: 0, adapter: recorder(events, echo: true)))
      end
    end
    @threads << runner
    wait_for(5, 'the server') { server&.started? }
    sock = connect(server.port)
    sock.write('in')
    assert_equal 'in', read_bytes(sock, 2)
    assert_true runner.alive?
    machine.stop
    join(runner)
    assert_equal '', read_to_eof(sock)
    assert_true EM.reactor_running?
    sock.close

    # On the reactor thread itself, run starts the servers and returns.
    ticks = Queue.new
    inner = Backport::Machine.new
    on_reactor do
      inner.run { inner.prepare(Backport::Server::Interval.new(0.01) { ticks << 1 }) }
    end
    assert_false inner.stopped?
    pop_with_timeout(ticks, 5, 'a tick')
    on_reactor { inner.stop }
    assert_true inner.stopped?
    EM.next_tick { EM.stop_event_loop }
    join(reactor)
  end

  def test_backport_module_functions
    events = BackportTest::Events.new
    ticks = Queue.new
    servers = []
    thread = Thread.new do
      Backport.run do
        servers << Backport.prepare_tcp_server(host: '127.0.0.1', port: 0, adapter: recorder(events, echo: true))
        servers << Backport.prepare_interval(0.01) { ticks << 1 }
      end
    end
    @threads << thread
    wait_for(5, 'the servers') { servers.size == 2 && servers.all?(&:started?) }
    assert_instance_of Backport::Server::Tcpip, servers[0]
    assert_instance_of Backport::Server::Interval, servers[1]
    pop_with_timeout(ticks, 5, 'a tick')
    sock = connect(servers[0].port)
    sock.write('module')
    assert_equal 'module', read_bytes(sock, 6)
    Backport.stop
    join(thread)
    assert_true servers.all?(&:stopped?)
    sock.close
  end

  def test_logger
    Backport.logger = nil
    logger = Backport.logger
    assert_instance_of Logger, logger
    assert_equal Logger::WARN, logger.level
    assert_equal 'Backport', logger.progname
    assert_same logger, Backport.logger
    mine = Logger.new(StringIO.new)
    Backport.logger = mine
    assert_same mine, Backport.logger
  end

  def test_version
    assert_equal '1.2.0', Backport::VERSION
  end
end
