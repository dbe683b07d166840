# frozen_string_literal: true

require_relative 'helper'

# The seed's two examples (Backport's README), run as child processes:
# ruby/examples/backport_echo.rb and ruby/examples/backport_interval.rb.
class TestExamples < BackportTest::TestCase
  EXAMPLES = File.join(BackportTest::ROOT, 'ruby', 'examples')

  def spawn_example name, *args
    out_r, out_w = IO.pipe
    err_r, err_w = IO.pipe
    pid = Process.spawn(BackportTest::RUBY, '-I', BackportTest::LIB, File.join(EXAMPLES, name), *args.map(&:to_s),
                        in: File::NULL, out: out_w, err: err_w)
    out_w.close
    err_w.close
    [pid, out_r, err_r]
  end

  def reap pid, seconds = 10
    deadline = now + seconds
    loop do
      _, status = Process.wait2(pid, Process::WNOHANG)
      return status if status

      if now > deadline
        Process.kill('KILL', pid)
        Process.wait(pid)
        flunk "#{pid} did not exit"
      end
      sleep 0.01
    end
  end

  def free_port
    s = TCPServer.new('localhost', 0)
    s.local_address.ip_port
  ensure
    s&.close
  end

  # Lines read so far from out, waiting until there are count of them.
  def lines out, count, seconds = 10
    read_until(out, seconds) { |d| d.count("\n") >= count }.lines
  end

  # The README's echo server: "Opening a connection", "Client sent: " and
  # the input (for each piece the server received), "Closing a connection".
  def test_echo_example
    port = free_port
    pid, out, err = spawn_example('backport_echo.rb', port)
    sock = nil
    wait_for(15, 'the example to listen') do
      sock = TCPSocket.new('localhost', port)
    rescue Errno::ECONNREFUSED, Errno::EADDRNOTAVAIL
      false
    end
    stdout = +''
    stdout << read_until(out) { |d| d.include?("Opening a connection\n") }
    message = "hello, backport\n"
    sock.write(message)
    # Each piece the server receives is answered on its own: strip the
    # prefixes, the rest is what was sent, whatever the pieces were.
    reply = read_until(sock) { |d| d.delete_prefix('Client sent: ').gsub('Client sent: ', '') == message }
    assert_true reply.start_with?('Client sent: ')
    sock.close
    stdout << read_until(out) { |d| d.include?("Closing a connection\n") }
    assert_equal "Opening a connection\nClosing a connection\n", stdout

    # A client still connected when the server is stopped is closed, and
    # says so.
    second = TCPSocket.new('localhost', port)
    assert_equal "Opening a connection\n", read_until(out) { |d| d.end_with?("\n") }
    Process.kill('TERM', pid)
    assert_equal '', read_to_eof(second)
    status = reap(pid)
    assert_true status.success?, status.inspect
    assert_equal "Closing a connection\n", out.read
    assert_equal '', err.read
  ensure
    sock&.close unless sock&.closed?
    second&.close
    out&.close
    err&.close
    begin
      Process.kill('KILL', pid) if pid && !status
      Process.wait(pid) if pid && !status
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
  end

  def test_echo_example_rejects_a_bad_port
    pid, out, err = spawn_example('backport_echo.rb', 'not-a-port')
    status = reap(pid)
    assert_false status.success?
    assert_match(/invalid value for Integer/, err.read)
    out.close
    err.close
  end

  # The README's interval server: "tick" once per second.
  def test_interval_example
    pid, out, err = spawn_example('backport_interval.rb')
    assert_equal ["tick\n"], lines(out, 1, 15)
    t1 = now
    assert_equal ["tick\n"], lines(out, 1, 5)
    gap = now - t1
    assert_in_delta 1.0, gap, 0.5
    Process.kill('INT', pid)
    status = reap(pid)
    assert_true status.success?, status.inspect
    rest = out.read
    assert_match(/\A(tick\n)*\z/, rest)
    assert_equal '', err.read
  ensure
    out&.close
    err&.close
  end
end
