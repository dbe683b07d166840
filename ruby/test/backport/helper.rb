# frozen_string_literal: true

# helper.rb - what the Backport library's tests share: a per-test time limit,
# a machine run on a thread of its own, sockets that read until what is
# expected has arrived (never assuming one read is one message), and a
# recording adapter.
require 'test/unit'
require 'socket'
require 'timeout'
require 'stringio'
require 'logger'
require 'rbconfig'
require 'backport'

module BackportTest
  ROOT = File.expand_path('../../..', __dir__)
  LIB = File.join(ROOT, 'ruby', 'lib')
  RUBY = RbConfig.ruby

  # A test that ran out of time (a failure, not a hang).
  class TestTimeout < StandardError; end

  # Base class: every test has a time limit, and leaves no reactor running.
  class TestCase < Test::Unit::TestCase
    LIMIT = Float(ENV.fetch('BACKPORT_TEST_TIMEOUT', '30'))

    def setup
      @threads = []
      @saved_logger = Backport.logger
      @log = StringIO.new
      Backport.logger = Logger.new(@log, level: Logger::INFO, progname: 'Backport')
    end

    def teardown
      Backport.logger = @saved_logger
      if EM.reactor_running?
        EM.next_tick { EM.stop_event_loop }
        wait_for(5, 'the reactor to stop after the test') { !EM.reactor_running? }
      end
      @threads.each { |t| t.join(5) || t.kill }
    end

    private

    def run_test
      Timeout.timeout(LIMIT, TestTimeout) { super }
    end

    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    # Wait until the block is true, checking every 2 ms.
    def wait_for seconds = 5, what = 'a condition'
      deadline = now + seconds
      until yield
        flunk("timed out after #{seconds} s waiting for #{what}") if now > deadline
        sleep 0.002
      end
    end

    # Run machine.run on a thread; returns once the block has run and the
    # servers have started. The block's value is returned too.
    def start_machine machine = Backport::Machine.new
      ready = Queue.new
      thread = Thread.new do
        machine.run do
          value = block_given? ? yield(machine) : nil
          EM.next_tick { ready << [:ok, value] }
        end
      rescue Exception => e # rubocop:disable Lint/RescueException
        ready << [:error, e]
        raise
      end
      thread.report_on_exception = false
      @threads << thread
      status, value = pop_with_timeout(ready, 10, 'the machine to start')
      raise value if status == :error

      [machine, thread, value]
    end

    # Stop the machine from the test thread and wait for run to return.
    def stop_machine machine, thread
      machine.stop
      join(thread)
    end

    def join thread, seconds = 10
      assert_not_nil thread.join(seconds), 'Machine#run did not return'
      thread.value
    end

    def pop_with_timeout queue, seconds, what
      deadline = now + seconds
      loop do
        return queue.pop(true)
      rescue ThreadError
        flunk("timed out after #{seconds} s waiting for #{what}") if now > deadline
        sleep 0.002
      end
    end

    # Run a block on the reactor thread and return its value.
    def on_reactor(&block)
      q = Queue.new
      EM.schedule do
        q << [:ok, block.call]
      rescue Exception => e # rubocop:disable Lint/RescueException
        q << [:error, e]
      end
      status, value = pop_with_timeout(q, 10, 'the reactor')
      raise value if status == :error

      value
    end

    def connect port, host = '127.0.0.1'
      TCPSocket.new(host, port)
    end

    # Read until the block says the data is complete (or until EOF when no
    # block is given), in whatever pieces it comes.
    def read_until sock, seconds = 10
      data = +''
      deadline = now + seconds
      loop do
        return data if block_given? && yield(data)

        left = deadline - now
        flunk("timed out reading; got #{data.bytesize} bytes: #{data[0, 200].inspect}") if left <= 0
        next unless IO.select([sock], nil, nil, [left, 0.5].min)

        begin
          data << sock.readpartial(65_536)
        rescue EOFError
          return data unless block_given?

          flunk("EOF before the expected data; got #{data[0, 200].inspect}")
        end
      end
    end

    def read_bytes sock, count, seconds = 10
      read_until(sock, seconds) { |d| d.bytesize >= count }
    end

    def read_to_eof sock, seconds = 10
      read_until(sock, seconds)
    end

    # True once connecting to the port is refused. A reset means the
    # connection reached the listener as it closed: not yet (callers retry).
    def refused? port, host = '127.0.0.1'
      TCPSocket.new(host, port).close
      false
    rescue Errno::ECONNREFUSED
      true
    rescue Errno::ECONNRESET
      false
    end

    def fd_count
      Dir.children('/proc/self/fd').size
    end

    # An Adapter subclass that records its calls in events (a Queue-backed
    # Array of [event, adapter, detail]) and echoes when echo is true.
    def recorder events, echo: false
      Class.new(Backport::Adapter) do
        define_method(:opening) { events << [:opening, self, remote.dup] }
        define_method(:closing) { events << [:closing, self, closed?] }
        define_method(:receiving) do |data|
          events << [:receiving, self, data]
          write(data) if echo
        end
      end
    end

    def count events, kind
      events.count { |e| e[0] == kind }
    end

    def received events, adapter = nil
      events.select { |e| e[0] == :receiving && (adapter.nil? || e[1].equal?(adapter)) }
            .map { |e| e[2] }.join
    end
  end

  # A thread-safe event list.
  class Events
    def initialize
      @lock = Mutex.new
      @list = []
    end

    def << event
      @lock.synchronize { @list << event }
      self
    end

    def to_a
      @lock.synchronize { @list.dup }
    end

    def count(&block)
      to_a.count(&block)
    end

    def select(&block)
      to_a.select(&block)
    end

    def size
      to_a.size
    end
  end
end
