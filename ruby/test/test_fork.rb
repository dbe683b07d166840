# frozen_string_literal: true
#
# test_fork.rb - a child forked inside the reactor: EM.fork_reactor from a
# callback, and fork in a callback followed by release_machine and a new
# EM.run in the child (EventMachine's own protocol, as fork_reactor
# does). The child reports through a pipe; the parent's reactor goes on
# meanwhile. On libem's engine the parent's connections also still echo
# after the child exited (the child runs no unbind of them and sends no
# FIN, where Debian's engine shuts the inherited sockets down), and the
# child may return from the callback it forked in (EM.run then returns).

class TestFork < EngineTest
  # A client that keeps what it receives and tells `on_data` about it.
  class Keeper < EM::Connection
    attr_reader :got
    attr_accessor :on_data, :on_unbind

    def post_init
      @got = +""
    end

    def receive_data(data)
      @got << data
      on_data&.call(@got)
    end

    def unbind
      on_unbind&.call
    end
  end

  # Polls the child's pipe from the reactor until EOF (the child exited
  # or closed it), then reaps it and calls back with its output and status.
  def watch_child(pid, reader, &done)
    out = +""
    timer = EM.add_periodic_timer(0.01) do
      begin
        loop { out << reader.read_nonblock(4096) }
      rescue IO::WaitReadable
        nil
      rescue EOFError
        timer.cancel
        _, status = Process.waitpid2(pid)
        done.call(out, status)
      end
    end
  end

  # The parent's client echoes `text` through the server: the connections
  # the child inherited are the parent's still.
  def echo_then_stop(client, text)
    client.on_data = lambda do |got|
      EM.stop if got.end_with?(text)
    end
    client.send_data(text)
  end

  # Connects a Keeper to an echo server and calls back once it echoed.
  def connected_client(&ready)
    _sig, port = server(EchoServer)
    client = EM.connect("127.0.0.1", port, Keeper)
    client.on_data = ->(_got) { ready.call(client) }
    client.send_data("ready")
    client
  end

  def flush_output
    # A forked child that exits normally flushes Ruby's buffers again.
    $stdout.flush
    $stderr.flush
  end

  # Forks with EM.fork_reactor from a callback, once the client is up; the
  # child runs a reactor of its own (a server and an echo) and reports.
  # Calls back in the parent with the child's report and status.
  def fork_reactor_echo(client, reader, writer, &done)
    parent = Process.pid
    flush_output
    pid = EM.fork_reactor do
      reader.close
      _sig, port = server(EchoServer)
      k = EM.connect("127.0.0.1", port, Keeper)
      k.on_data = lambda do |got|
        next unless got == "child echo"
        writer.write("echoed in #{Process.pid == parent ? 'parent' : 'child'}")
        writer.close
        EM.stop
      end
      k.send_data("child echo")
    end
    writer.close
    watch_child(pid, reader) { |out, status| done.call(client, out, status) }
  end

  def test_fork_reactor_from_a_callback
    reader, writer = IO.pipe
    result = nil
    run_em do
      connected_client do |c|
        c.on_data = nil
        fork_reactor_echo(c, reader, writer) do |_c, out, status|
          result = [out, status.success?]
          # The parent's reactor goes on after the child is gone.
          EM.add_timer(0.01) { EM.stop }
        end
      end
    end
    reader.close
    assert_equal ["echoed in child", true], result
  end

  def test_fork_reactor_leaves_the_parents_connections_alone
    libem_only("a child's release_machine runs no unbind and sends no FIN: " \
               "Debian's engine shuts the inherited sockets down")
    reader, writer = IO.pipe
    parent = Process.pid
    result = nil
    client = nil
    run_em do
      client = connected_client do |c|
        c.on_unbind = lambda do
          writer.write("unbind in the child\n") if Process.pid != parent
        end
        c.on_data = nil
        fork_reactor_echo(c, reader, writer) do |_c, out, status|
          result = [out, status.success?]
          echo_then_stop(c, "parent echo")
        end
      end
    end
    reader.close
    assert_equal ["echoed in child", true], result
    assert_true client.got.end_with?("parent echo")
  end

  def test_fork_in_a_callback_then_release_machine_and_a_new_run
    reader, writer = IO.pipe
    result = nil
    run_em do
      connected_client do |c|
        c.on_data = nil
        flush_output
        pid = fork do
          reader.close
          # EventMachine's protocol for a child (fork_reactor's): stop,
          # release the parent's machine, start a new one.
          EM.stop_event_loop
          EM.release_machine
          EM.instance_variable_set(:@reactor_running, false)
          got = nil
          EM.run do
            _sig, port = server(EchoServer)
            k = EM.connect("127.0.0.1", port, Keeper)
            k.on_data = lambda do |data|
              got = data
              EM.stop if data == "new run"
            end
            k.send_data("new run")
          end
          writer.write(got.to_s)
          writer.close
          exit!(0)
        end
        writer.close
        watch_child(pid, reader) do |out, status|
          result = [out, status.success?]
          EM.add_timer(0.01) { EM.stop }
        end
      end
    end
    reader.close
    assert_equal ["new run", true], result
  end

  def test_child_returns_from_the_callback_it_forked_in
    libem_only("the child may leave the callback after release_machine; " \
               "its EM.run returns, and no unbind of the parent's runs")
    reader, writer = IO.pipe
    parent = Process.pid
    result = nil
    client = nil
    run_em do
      client = connected_client do |c|
        c.on_unbind = lambda do
          writer.write("unbind in the child\n") if Process.pid != parent
        end
        c.on_data = nil
        flush_output
        pid = fork
        if pid.nil?
          reader.close
          fds = Dir.children("/proc/self/fd").size
          EM.stop_event_loop
          EM.release_machine
          # epoll, eventfd, the listener, the client and its peer
          closed = fds - Dir.children("/proc/self/fd").size
          EM.instance_variable_set(:@reactor_running, false)
          ran = false
          EM.run do
            ran = true
            EM.stop
          end
          writer.write("new run #{ran}, #{closed} closed\n")
          next # back into the parent's turn, which is gone here
        end
        writer.close
        watch_child(pid, reader) do |out, status|
          result = [out, status.success?]
          echo_then_stop(c, "after")
        end
      end
    end
    if Process.pid != parent
      # The child: its copy of the outer EM.run returned.
      writer.write("outer run returned\n")
      writer.close
      exit!(0)
    end
    reader.close
    assert_equal ["new run true, 5 closed\nouter run returned\n", true], result
    assert_true client.got.end_with?("after")
  end

  class ChildError < StandardError; end

  def test_child_raising_after_release_unwinds_its_run
    libem_only("the child may leave the callback after release_machine")
    reader, writer = IO.pipe
    parent = Process.pid
    result = nil
    begin
      run_em do
        EM.add_timer(0.01) do
          flush_output
          pid = fork
          if pid.nil?
            reader.close
            EM.stop_event_loop
            EM.release_machine
            EM.instance_variable_set(:@reactor_running, false)
            raise ChildError, "from the child's callback"
          end
          writer.close
          watch_child(pid, reader) do |out, status|
            result = [out, status.success?]
            EM.stop
          end
        end
      end
    rescue ChildError => e
      raise unless Process.pid != parent

      writer.write("#{e.message} reached the outer run's caller")
      writer.close
      exit!(0)
    end
    reader.close
    assert_equal ["from the child's callback reached the outer run's caller",
                  true], result
  end

  def test_child_forked_in_an_unbind_at_release
    libem_only("the child may leave the callback after release_machine")
    reader, writer = IO.pipe
    parent = Process.pid
    pid = nil
    run_em do
      connected_client do |c|
        c.on_data = nil
        # Runs in the parent's release_machine, after EM.stop.
        c.on_unbind = lambda do
          next unless Process.pid == parent

          flush_output
          pid = fork
          if pid.nil?
            reader.close
            EM.release_machine
            EM.instance_variable_set(:@reactor_running, false)
            ran = false
            EM.run do
              ran = true
              EM.stop
            end
            writer.write("new run #{ran}\n")
            next # back into the release, which is gone here
          end
          writer.close
        end
        EM.stop
      end
    end
    if Process.pid != parent
      writer.write("outer run returned\n")
      writer.close
      exit!(0)
    end
    out = reader.read
    reader.close
    _, status = Process.waitpid2(pid)
    assert_true status.success?
    assert_equal "new run true\nouter run returned\n", out
  end
end
