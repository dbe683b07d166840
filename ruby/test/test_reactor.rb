# frozen_string_literal: true
#
# test_reactor.rb - the reactor through EventMachine's public API: run and
# stop, timers (one-shot, periodic, cancelled, the limit), next_tick and
# schedule from threads, defer, shutdown hooks, exceptions (propagation,
# error_handler, throw), interrupts while the reactor sleeps (trap,
# Thread#raise), and the machine's settings.

class TestReactor < EngineTest
  def test_run_block_and_stop
    ran = false
    run_em do
      assert_true EM.reactor_running?
      ran = true
      EM.stop
    end
    assert_true ran
    assert_false EM.reactor_running?
  end

  def test_library_type_and_backend
    assert_equal :extension, EM.library_type
    assert_true EM.epoll?
    assert_false EM.kqueue?
    assert_raise(EM::Unsupported) { EM.kqueue = true }
  end

  def test_functions_need_a_machine
    e = assert_raise(RuntimeError) { EM.add_oneshot_timer(10) }
    assert_match(/eventmachine not initialized/, e.message)
    e = assert_raise(RuntimeError) { EM.get_timer_count }
    assert_equal "eventmachine not initialized: evma_get_timer_count", e.message
    assert_raise(RuntimeError) { EM.connection_count }
    assert_raise(RuntimeError) { EM.signal_loopbreak }
  end

  def test_timers_fire_in_order_and_not_early
    fired = []
    t0 = nil
    run_em do
      t0 = Time.now
      EM.add_timer(0.15) { fired << [:c, Time.now - t0]; EM.stop }
      EM.add_timer(0.05) { fired << [:a, Time.now - t0] }
      EM.add_timer(0.10, proc { fired << [:b, Time.now - t0] })
    end
    assert_equal %i[a b c], fired.map(&:first)
    assert_operator fired[0][1], :>=, 0.049
    assert_operator fired[2][1], :>=, 0.149
  end

  def test_cancelled_timer_never_fires
    fired = []
    run_em do
      t = EM::Timer.new(0.05) { fired << :cancelled }
      sig = EM.add_timer(0.05) { fired << :cancelled_by_sig }
      t.cancel
      EM.cancel_timer(sig)
      EM.add_timer(0.15) { fired << :kept; EM.stop }
    end
    assert_equal [:kept], fired
  end

  def test_periodic_timer
    ticks = 0
    run_em do
      timer = EM.add_periodic_timer(0.02) do
        ticks += 1
        if ticks == 5
          timer.cancel
          EM.add_timer(0.1) { EM.stop }
        end
      end
    end
    assert_equal 5, ticks
  end

  def test_timer_count_includes_the_firing_timer
    counts = []
    run_em do
      3.times { EM.add_timer(5) {} }
      counts << EM.get_timer_count
      EM.add_timer(0.01) { counts << EM.get_timer_count; EM.stop }
    end
    # 3 long timers and the 0.01 one; inside its callback it still counts.
    assert_equal [4, 4], counts
  end

  def test_timer_limit
    assert_equal 100_000, EM.get_max_timers
    EM.set_max_timers(10) # EventMachine never goes below 100
    assert_equal 100, EM.get_max_timers
    error = nil
    added = 0
    run_em do
      e = assert_raise(RuntimeError) { EM.set_max_timers(200) }
      assert_equal "eventmachine already initialized: " \
                   "evma_set_max_timer_count", e.message
      begin
        200.times do
          EM.add_timer(10) {}
          added += 1
        end
      rescue RuntimeError => e
        error = e
      end
      EM.stop
    end
    assert_not_nil error
    assert_equal "ran out of timers; use #set_max_timers to increase limit",
                 error.message
    # More than the maximum is refused: the EM.run block's own timer still
    # counts while it runs, so 100 more fit.
    assert_equal 100, added
  ensure
    EM.set_max_timers(100_000) unless EM.reactor_running?
  end

  def test_next_tick_runs_in_order_before_timers
    order = []
    run_em do
      EM.add_timer(0.05) { order << :timer; EM.stop }
      EM.next_tick { order << :tick1; EM.next_tick { order << :tick3 } }
      EM.next_tick { order << :tick2 }
    end
    assert_equal %i[tick1 tick2 tick3 timer], order
  end

  def test_next_tick_and_schedule_from_threads
    got = Queue.new
    run_em do
      threads = 4.times.map do |i|
        Thread.new do
          10.times { |j| EM.schedule { got << [i, j] } }
        end
      end
      EM.add_periodic_timer(0.01) { EM.stop if got.size == 40 }
      threads.each(&:join)
    end
    all = []
    all << got.pop until got.empty?
    assert_equal 40, all.size
    4.times { |i| assert_equal (0...10).to_a, all.select { |t, _| t == i }.map(&:last) }
  end

  def test_next_tick_wakes_a_sleeping_reactor
    t0 = Time.now
    took = nil
    run_em do
      Thread.new do
        sleep 0.1
        EM.next_tick { took = Time.now - t0; EM.stop }
      end
    end
    assert_operator took, :<, 2.0
  end

  def test_defer_runs_on_another_thread
    result = nil
    run_em do
      reactor = Thread.current
      EM.defer(proc { [Thread.current != reactor, 6 * 7] },
               proc { |r| result = r; EM.stop })
    end
    assert_equal [true, 42], result
  end

  def test_other_threads_run_while_the_reactor_sleeps
    count = 0
    run_em do
      worker = Thread.new { 50.times { count += 1; sleep 0.001 } }
      EM.add_timer(1.0) { EM.stop }
      EM.add_periodic_timer(0.05) { EM.stop unless worker.alive? }
    end
    assert_equal 50, count
  end

  def test_shutdown_hooks_run_before_unbinds_in_reverse_order
    log = []
    client = Class.new(EM::Connection) do
      define_method(:connection_completed) { log << :completed; EM.stop }
      define_method(:unbind) { log << [:unbind, EM.reactor_running?] }
    end
    run_em do
      _sig, port = server
      EM.add_shutdown_hook { log << :hook_b }
      EM.add_shutdown_hook { log << :hook_a }
      EM.connect("127.0.0.1", port, client)
    end
    assert_equal [:completed, :hook_a, :hook_b, [:unbind, true]], log
  end

  def test_stop_then_more_turns_never_happen
    fired = []
    run_em do
      EM.add_timer(0.01) { fired << 1; EM.stop }
      EM.add_timer(0.5) { fired << 2 }
    end
    assert_equal [1], fired
    assert_false EM.reactor_running?
  end

  def test_stopping_flag
    states = []
    run_em do
      states << EM.stopping?
      EM.stop
      states << EM.stopping?
    end
    assert_equal [false, true], states
  end

  def test_exception_in_a_callback_leaves_run_and_runs_hooks
    log = []
    e = assert_raise(RuntimeError) do
      run_em do
        EM.add_shutdown_hook { log << :hook }
        EM.add_timer(0.01) { raise "boom" }
        EM.add_timer(0.01) { log << :same_turn_timer }
      end
    end
    assert_equal "boom", e.message
    assert_equal [:hook], log
    assert_false EM.reactor_running?
    # The machine is usable again.
    run_em { EM.add_timer(0.01) { log << :again; EM.stop } }
    assert_equal %i[hook again], log
  end

  def test_error_handler_gets_exceptions_and_the_reactor_goes_on
    seen = []
    EM.error_handler { |e| seen << e.message }
    run_em do
      EM.add_timer(0.01) { raise "first" }
      EM.add_timer(0.02) { raise ArgumentError, "second" }
      EM.add_timer(0.05) { EM.stop }
    end
    assert_equal %w[first second], seen
  ensure
    EM.error_handler(nil)
  end

  def test_error_handler_does_not_catch_non_standard_errors
    EM.error_handler { |_e| flunk "handler called" }
    assert_raise(Interrupt) do
      run_em { EM.add_timer(0.01) { raise Interrupt } }
    end
  ensure
    EM.error_handler(nil)
  end

  def test_throw_out_of_the_reactor
    r = catch(:done) do
      run_em { EM.add_timer(0.01) { throw :done, 42 } }
      :not_thrown
    end
    assert_equal 42, r
    assert_false EM.reactor_running?
  end

  def test_exception_in_unbind_propagates_after_release
    klass = Class.new(EM::Connection) do
      define_method(:connection_completed) { EM.stop }
      define_method(:unbind) { raise "unbind boom" }
    end
    e = assert_raise(RuntimeError) do
      run_em do
        _sig, port = server
        EM.connect("127.0.0.1", port, klass)
      end
    end
    assert_equal "unbind boom", e.message
  end

  def test_trap_handler_runs_while_the_reactor_sleeps
    old = trap("USR1") { EM.stop }
    t0 = Time.now
    run_em do
      Thread.new { sleep 0.1; Process.kill("USR1", Process.pid) }
    end
    assert_operator Time.now - t0, :<, 2.0
  ensure
    trap("USR1", old || "DEFAULT")
  end

  def test_thread_raise_interrupts_the_sleeping_reactor
    reactor = Thread.current
    e = assert_raise(RuntimeError) do
      run_em { Thread.new { sleep 0.1; reactor.raise("from a thread") } }
    end
    assert_equal "from a thread", e.message
  end

  def test_timeout_interrupts_the_sleeping_reactor
    assert_raise(Timeout::Error) { run_em(0.2) {} }
    assert_false EM.reactor_running?
  end

  def test_current_time_and_heartbeat
    run_em do
      t = EM.current_time
      assert_kind_of Time, t
      assert_equal 2.0, EM.heartbeat_interval
      EM.heartbeat_interval = 0.5
      assert_equal 0.5, EM.heartbeat_interval
      EM.set_quantum(20)
      EM.add_timer(0.02) do
        assert_operator EM.current_time, :>, t
        EM.stop
      end
    end
  end

  def test_invalid_quantum_raises
    libem_only "an invalid timer quantum raises (Debian's engine aborts)"
    run_em do
      assert_raise(RuntimeError) { EM.set_quantum(1) }
      EM.stop
    end
  end

  def test_fork_reactor_child_runs_its_own_reactor
    rd, wr = IO.pipe
    pid = nil
    run_em do
      pid = EM.fork_reactor do
        EM.add_timer(0.01) { wr.write("child ran"); wr.close; EM.stop }
      end
      EM.add_timer(0.01) { EM.stop }
    end
    wr.close
    Process.wait(pid)
    assert_equal "child ran", rd.read
    assert_true $?.success?
  end

  # A child forked inside a callback after send_data must not send the
  # parent's bytes a second time (libem holds them until the callback
  # returns: rem_write.c). Debian's engine closes the inherited connections
  # in the child, which can end the peer's stream before the reply: ""
  # is EventMachine's behaviour too, "replyreply" never is.
  def test_fork_inside_a_callback_sends_held_bytes_once
    got = +""
    pid = nil
    run_em do
      _sig, port = server(Module.new do
        define_method(:receive_data) do |_d|
          send_data("reply")
          pid = EM.fork_reactor { EM.add_timer(0.01) { EM.stop } }
          EM.add_timer(0.2) { close_connection_after_writing }
        end
      end)
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:connection_completed) { send_data("go") }
        define_method(:receive_data) { |d| got << d }
        define_method(:unbind) { |_r = nil| EM.stop }
      end)
    end
    Process.wait(pid)
    assert_include ["reply", ""], got
  end
end
