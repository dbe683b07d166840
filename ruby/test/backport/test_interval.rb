# frozen_string_literal: true

require_relative 'helper'

# Backport::Server::Interval and Backport.prepare_interval.
class TestInterval < BackportTest::TestCase
  def test_ticks_every_period
    times = []
    t0 = nil
    machine, thread = start_machine do |m|
      t0 = now
      m.prepare(Backport::Server::Interval.new(0.05) { times << now })
    end
    wait_for(5, 'four ticks') { times.size >= 4 }
    stop_machine(machine, thread)
    # The first one period after the start, then about one per period.
    assert_operator times.first - t0, :>=, 0.045
    gaps = times.each_cons(2).map { |a, b| b - a }
    assert_true(gaps.all? { |g| g >= 0.04 && g < 1.0 }, gaps.inspect)
  end

  # The block gets the server; an interval that stops itself, being the
  # machine's only server, stops the machine.
  def test_stops_itself_and_the_machine
    seen = []
    thread = Thread.new do
      Backport.run do
        Backport.prepare_interval(0.01) do |interval|
          seen << interval
          interval.stop
        end
      end
    end
    @threads << thread
    join(thread)
    assert_equal 1, seen.size
    assert_instance_of Backport::Server::Interval, seen.first
    assert_true seen.first.stopped?
  end

  def test_tick_runs_the_block_only_when_a_period_passed
    calls = 0
    interval = Backport::Server::Interval.new(10) { calls += 1 }
    interval.tick
    assert_equal 0, calls
    assert_true interval.stopped?
  end

  def test_stop_cancels_the_timer
    ticks = 0
    interval = nil
    machine, thread = start_machine do |m|
      interval = m.prepare(Backport::Server::Interval.new(0.01) { ticks += 1 })
      m.prepare(Backport::Server::Base.new) # keeps the machine running
    end
    wait_for(5, 'a tick') { ticks >= 1 }
    on_reactor { interval.stop }
    stopped_at = ticks
    sleep 0.1
    assert_equal stopped_at, ticks
    assert_false machine.stopped?
    stop_machine(machine, thread)
  end

  # An exception in the block is logged; the interval goes on.
  def test_exception_is_logged_and_ticks_go_on
    calls = 0
    machine, thread = start_machine do |m|
      m.prepare(Backport::Server::Interval.new(0.01) do
        calls += 1
        raise 'tick failed' if calls == 1
      end)
    end
    wait_for(5, 'three calls') { calls >= 3 }
    stop_machine(machine, thread)
    assert_match(/interval block raised \[RuntimeError\] tick failed/, @log.string)
  end

  def test_bad_period
    assert_raise(ArgumentError) { Backport::Server::Interval.new(-1) {} }
    assert_raise(ArgumentError) { Backport::Server::Interval.new('1') {} }
  end
end
