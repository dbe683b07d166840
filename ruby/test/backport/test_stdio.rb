# frozen_string_literal: true

require_relative 'helper'
require 'open3'
require 'fcntl'

# Backport::Server::Stdio over pipes (in this process and in a child),
# over a StringIO and /dev/null (read by a thread), with a slow reader.
class TestStdio < BackportTest::TestCase
  def nonblock? io
    io.fcntl(Fcntl::F_GETFL).anybits?(Fcntl::O_NONBLOCK)
  end

  # Ruby makes its pipes non-blocking; a process's stdin and stdout are
  # not: pipes like those.
  def pipe
    r, w = IO.pipe
    [r, w].each { |io| io.fcntl(Fcntl::F_SETFL, io.fcntl(Fcntl::F_GETFL) & ~Fcntl::O_NONBLOCK) }
    [r, w]
  end

  def test_pipes_echo_until_eof_then_the_machine_stops
    events = BackportTest::Events.new
    in_r, in_w = pipe
    out_r, out_w = pipe
    server = nil
    machine, thread = start_machine do |m|
      server = m.prepare(Backport::Server::Stdio.new(input: in_r, output: out_w, adapter: recorder(events, echo: true)))
    end
    assert_true server.started?
    assert_equal 1, server.clients.size
    wait_for(5, 'opening') { count(events, :opening) == 1 }
    assert_equal({}, events.to_a.first[2])
    'hello, stdio'.each_char do |c|
      in_w.write(c)
      sleep 0.001
    end
    assert_equal 'hello, stdio', read_bytes(out_r, 12)
    in_w.close
    # The input's EOF ends the client, the client the server, the last
    # server the machine: run returns by itself.
    join(thread)
    assert_true machine.stopped?
    assert_true server.stopped?
    assert_equal 1, count(events, :closing)
    assert_equal 'hello, stdio', received(events)
    # The application's IOs stay open, their flags as they were.
    assert_false in_r.closed?
    assert_false out_w.closed?
    assert_false nonblock?(in_r)
    assert_false nonblock?(out_w)
  ensure
    [in_r, in_w, out_r, out_w].each { |io| io&.close unless io&.closed? }
  end

  # Output the pipe cannot take at once waits for the reader.
  def test_large_output_to_a_slow_reader
    in_r, in_w = pipe
    out_r, out_w = pipe
    big = Random.new(3).bytes(1_500_000)
    events = BackportTest::Events.new
    klass = Class.new(recorder(events)) do
      define_method(:receiving) do |_data|
        write(big)
        write_line('end')
      end
    end
    machine, thread = start_machine do |m|
      m.prepare(Backport::Server::Stdio.new(input: in_r, output: out_w, adapter: klass))
    end
    in_w.write('go')
    data = +''
    while data.bytesize < big.bytesize + 4
      IO.select([out_r], nil, nil, 5) or flunk('no output')
      data << out_r.readpartial(rand(1..50_000))
      sleep 0.001 if rand(20).zero?
    end
    assert_equal big + "end\n", data
    in_w.close
    join(thread)
    assert_true machine.stopped?
    assert_equal 1, count(events, :closing)
  ensure
    [in_r, in_w, out_r, out_w].each { |io| io&.close unless io&.closed? }
  end

  # The adapter's close: what it wrote is sent, then closing, then the
  # server stops; input after it is not delivered.
  def test_close_flushes_then_stops
    in_r, in_w = pipe
    out_r, out_w = pipe
    events = BackportTest::Events.new
    klass = Class.new(recorder(events)) do
      def receiving(data)
        super
        write_line('bye')
        close
      end
    end
    machine, thread = start_machine do |m|
      m.prepare(Backport::Server::Stdio.new(input: in_r, output: out_w, adapter: klass))
    end
    in_w.write('quit')
    assert_equal "bye\n", read_bytes(out_r, 4)
    join(thread)
    assert_true machine.stopped?
    assert_equal 1, count(events, :closing)
    in_w.write('more')
    sleep 0.02
    assert_equal 'quit', received(events)
  ensure
    [in_r, in_w, out_r, out_w].each { |io| io&.close unless io&.closed? }
  end

  # Input the reactor cannot poll (a StringIO, /dev/null) is read by a
  # thread; output without a descriptor is written directly.
  def test_stringio_and_dev_null
    events = BackportTest::Events.new
    out = StringIO.new
    machine, thread = start_machine do |m|
      m.prepare(Backport::Server::Stdio.new(input: StringIO.new('from a string'), output: out,
                                            adapter: recorder(events, echo: true)))
    end
    join(thread)
    assert_true machine.stopped?
    assert_equal 'from a string', out.string
    assert_equal 1, count(events, :closing)

    events = BackportTest::Events.new
    File.open(File::NULL) do |null|
      machine, thread = start_machine do |m|
        m.prepare(Backport::Server::Stdio.new(input: null, output: StringIO.new, adapter: recorder(events)))
      end
      join(thread)
      assert_equal %i[opening closing], events.to_a.map(&:first)
    end
  end

  # Machine#stop closes the stdio client too.
  def test_stop_closes_the_stdio_client
    in_r, in_w = pipe
    out_r, out_w = pipe
    events = BackportTest::Events.new
    machine, thread = start_machine do |m|
      m.prepare(Backport::Server::Stdio.new(input: in_r, output: out_w, adapter: recorder(events)))
    end
    wait_for(5, 'opening') { count(events, :opening) == 1 }
    stop_machine(machine, thread)
    assert_equal 1, count(events, :closing)
    assert_false nonblock?(in_r)
  ensure
    [in_r, in_w, out_r, out_w].each { |io| io&.close unless io&.closed? }
  end

  # Backport.prepare_stdio_server on a child's real stdin and stdout.
  def test_stdio_server_in_a_child_process
    script = <<~RUBY
      require 'backport'
      module Upcase
        def opening
          write_line 'ready'
        end

        def receiving(data)
          write data.upcase
        end

        def closing
          $stderr.puts 'closing'
        end
      end
      Backport.run { Backport.prepare_stdio_server(adapter: Upcase) }
      $stderr.puts 'done'
    RUBY
    Open3.popen3(BackportTest::RUBY, '-I', BackportTest::LIB, '-e', script) do |stdin, stdout, stderr, wait|
      assert_equal "ready\n", read_bytes(stdout, 6)
      %w[ab c def].each do |piece|
        stdin.write(piece)
        stdin.flush
        sleep 0.01
      end
      assert_equal 'ABCDEF', read_bytes(stdout, 6)
      stdin.close
      assert_equal '', read_to_eof(stdout)
      status = wait.join(10)&.value
      assert_not_nil status, 'the child did not exit'
      assert_true status.success?, "child: #{status.inspect}"
      assert_equal "closing\ndone\n", stderr.read
    end
  end
end
