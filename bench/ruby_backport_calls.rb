# frozen_string_literal: true

# ruby_backport_calls.rb - Ruby method calls per echoed message on the
# reactor thread: the seed's echo adapter on the Backport library against the
# same adapter on EventMachine's API (bench/ruby_backport_echo.sh's two
# servers), in one process.
#
#   ruby -I ruby/lib [-rlibem/eventmachine] bench/ruby_backport_calls.rb [MESSAGES]
#
# Then the time those calls take: both servers in one reactor, the reactor
# thread calls each server connection's receive_data with a 64-byte message
# 100,000 times in a row (the echo is buffered by the engine and read by a
# client thread between batches), 15 batches per server, in turn; the
# thread's CPU time per message, min and median. The engine's own work in
# send_data is the same for both: the difference is the layers'.
#
# How: each server runs on a reactor thread; a client thread sends MESSAGES
# 64-byte messages one at a time (ping-pong) over one connection, and a
# TracePoint on :call and :c_call (Ruby methods, and C functions including
# attribute readers) counts what the reactor thread calls while they flow.
# Prints the calls per message, total and by method. Why a count and not a
# profile: the machine is shared and noisy; a count is exact and says which
# layer costs what. Tracing C calls turns off the VM's specialised
# instructions, so `BasicObject#==` (Adapter#write's thread comparison) is
# counted here but is no call in an untraced run (opt_eq compares the two
# references itself).
require 'socket'
require 'backport'

MESSAGES = Integer(ARGV.fetch(0, '2000'))
MESSAGE = ('x' * 64).b.freeze

module EchoAdapter
  def receiving data
    write data
  end
end

module EchoConnection
  def receive_data data
    send_data data
  end
end

def drive port
  sock = TCPSocket.new('127.0.0.1', port)
  sock.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
  # Warm up: the connection's opening and the method caches.
  50.times { sock.write(MESSAGE) && sock.read(MESSAGE.bytesize) }
  counts = Hash.new(0)
  reactor = $reactor_thread
  trace = TracePoint.new(:call, :c_call) do |tp|
    counts["#{tp.defined_class}##{tp.method_id}"] += 1 if Thread.current.equal?(reactor)
  end
  trace.enable
  MESSAGES.times do
    sock.write(MESSAGE)
    got = sock.read(MESSAGE.bytesize)
    raise "echo mismatch: #{got.inspect}" unless got == MESSAGE
  end
  trace.disable
  sock.close
  counts
end

def report name, counts
  total = counts.values.sum
  puts format('%-10s %6.2f calls/message', name, total.fdiv(MESSAGES))
  counts.sort_by { |k, v| [-v, k] }.each do |k, v|
    per = v.fdiv(MESSAGES)
    puts format('    %6.2f  %s', per, k) if per >= 0.01
  end
end

def backport_counts
  port = nil
  ready = Queue.new
  thread = Thread.new do
    Backport.run do
      $reactor_thread = Thread.current
      server = Backport.prepare_tcp_server(host: '127.0.0.1', port: 0, adapter: EchoAdapter)
      port = server.port
      ready << true
    end
  end
  ready.pop
  counts = drive(port)
  Backport.stop
  thread.join
  counts
end

def em_counts
  ready = Queue.new
  port = nil
  thread = Thread.new do
    EM.run do
      $reactor_thread = Thread.current
      sig = EM.start_server('127.0.0.1', 0, EchoConnection)
      port = Socket.unpack_sockaddr_in(EM.get_sockname(sig)).first
      ready << true
    end
  end
  ready.pop
  counts = drive(port)
  EM.stop
  thread.join
  counts
end

BATCH = 100_000

def batch_ns conn
  t = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)
  i = 0
  while i < BATCH
    conn.receive_data(MESSAGE)
    i += 1
  end
  (Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID) - t) * 1e9 / BATCH
end

def timings batches = 15
  times = { 'Backport' => [], 'EM' => [] }
  EM.run do
    server = Backport::Server::Tcpip.new(host: '127.0.0.1', port: 0, adapter: EchoAdapter)
    server.start
    em_conn = nil
    sig = EM.start_server('127.0.0.1', 0, EchoConnection) { |c| em_conn = c }
    em_port = Socket.unpack_sockaddr_in(EM.get_sockname(sig)).first
    [server.port, em_port].each do |port|
      Thread.new do
        sock = TCPSocket.new('127.0.0.1', port)
        loop { sock.readpartial(1 << 20) }
      rescue IOError, SystemCallError
        nil
      end
    end
    turn = 0
    # One batch a tick, the servers in turn: what one batch leaves buffered
    # is written out before the next.
    EM.add_periodic_timer(0.05) do
      bp_conn = server.clients.first&.instance_variable_get(:@transport)
      next unless bp_conn && em_conn

      name, conn = (turn += 1).odd? ? ['Backport', bp_conn] : ['EM', em_conn]
      times[name] << batch_ns(conn)
      EM.stop if times['EM'].size == batches
    end
  end
  times
end

engine = defined?(EventMachine::LIBEM_VERSION) ? "libem #{EventMachine::LIBEM_VERSION}" : "EventMachine #{EM::VERSION}"
puts "Ruby calls per echoed message on the reactor thread (#{engine}, ruby #{RUBY_VERSION}, #{MESSAGES} messages)"
report 'Backport', backport_counts
report 'EM', em_counts
puts "CPU time per receive_data on the reactor thread (#{BATCH} messages a batch):"
timings.each do |name, list|
  list.sort!
  puts format('%-10s min %4.0f ns, median %4.0f ns', name, list.first, list[list.size / 2])
end
