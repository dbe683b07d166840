# frozen_string_literal: true

module Backport
  # Runs servers on EventMachine's reactor.
  #
  # `run` starts the reactor (EM.run, with epoll where the engine has it)
  # and blocks until `stop`. `stop` stops every server (a TCP server stops
  # listening and closes its clients, each of which runs `closing` once),
  # gives closed clients up to STOP_GRACE seconds to send what they were
  # still writing, and stops the reactor. Backport's stop iterated over the
  # list its servers removed themselves from (every other server was
  # skipped) and never closed its clients.
  #
  # In a program that already runs a reactor (EM.run elsewhere), `run` uses
  # that one: called on the reactor thread it starts the servers and returns
  # at once (it cannot block the reactor); on another thread it blocks until
  # `stop`. `stop` then stops the servers and leaves the reactor running.
  class Machine
    # Seconds `stop` waits for closed clients to finish writing before it
    # stops the reactor (whatever is left unsent is dropped then).
    STOP_GRACE = 1.0

    def initialize
      @stopped = true
      @servers = []
      @generation = 0
      @torn_down = false
      @owns_reactor = false
      @lock = Mutex.new
      @cond = ConditionVariable.new
    end

    # Run the machine: the block runs first, then the prepared servers start;
    # blocks until the machine stops. No-op when running.
    #
    # @return [void]
    def run(&block)
      return unless stopped?

      if EM.reactor_running?
        run_inside(&block)
      else
        run_reactor(&block)
      end
      nil
    end

    # Stop every server and close every client, then the reactor (when this
    # machine started it). From any thread and from a signal trap.
    #
    # @return [void]
    def stop
      gen = @generation
      @stopped = true
      if Reactor.on_thread?
        if Reactor.in_trap?
          # Closing connections and logging take locks a trap cannot take:
          # do it on the reactor's next turn.
          EM.add_timer(0) { teardown(gen) }
        else
          teardown(gen)
        end
      elsif EM.reactor_running?
        Reactor.schedule(proc { teardown(gen) })
      else
        teardown(gen)
      end
      nil
    end

    # True unless running.
    def stopped?
      @stopped
    end

    # Add a server. It starts when the machine runs, or at once when it is
    # running.
    #
    # @param server [Server::Base]
    # @return [Server::Base] server
    def prepare server
      server.add_observer self
      @servers.push server
      server.start unless stopped?
      server
    end

    # The servers prepared and not stopped.
    #
    # @return [Array<Server::Base>]
    attr_reader :servers

    # A server notified: it stopped (dropped; with no server left the
    # machine stops), or it has work (its `tick` runs on the reactor thread).
    #
    # @param server [Server::Base]
    # @return [void]
    def update server
      Reactor.call do
        if server.stopped?
          @servers.delete(server)
          stop if @servers.empty? && !stopped?
        else
          begin
            server.tick
          rescue StandardError => e
            Reactor.report(e, "#{server.class}#tick")
          end
        end
      end
    end

    private

    def run_reactor
      gen = (@generation += 1)
      @owns_reactor = true
      EM.epoll if EM.respond_to?(:epoll) # select() otherwise: at most 1024 descriptors
      EM.run do
        @stopped = false
        @torn_down = false
        yield if block_given?
        start_servers unless stopped?
      end
    ensure
      @owns_reactor = false
      reactor_gone(gen)
    end

    def run_inside
      gen = (@generation += 1)
      @stopped = false
      @torn_down = false
      yield if block_given?
      Reactor.call { start_servers unless stopped? || gen != @generation }
      return if Reactor.on_thread?

      @lock.synchronize do
        @cond.wait(@lock, 0.1) until (@torn_down && gen == @generation) || !EM.reactor_running?
      end
      reactor_gone(gen) unless EM.reactor_running?
    end

    def start_servers
      @servers.dup.each(&:start)
    end

    def teardown gen
      return if gen != @generation || @torn_down

      @torn_down = true
      servers = @servers.dup
      @servers.clear
      servers.each do |server|
        server.delete_observer self
        begin
          server.stop
        rescue StandardError => e
          Reactor.report(e, "#{server.class}#stop")
        end
      end
      if @owns_reactor && Reactor.on_thread?
        drain(servers, now + STOP_GRACE)
      else
        wake_waiters
      end
    end

    # Stop the reactor once the stopped servers' clients are gone, or at the
    # deadline.
    def drain servers, deadline
      busy = servers.any? { |s| s.respond_to?(:clients) && !s.clients.empty? }
      if busy && now < deadline
        EM.add_timer(0.005) { drain(servers, deadline) }
      else
        EM.stop_event_loop
      end
    end

    # The reactor ended (stopped, or an exception unwound it): whatever was
    # not torn down is stopped now, without a reactor.
    def reactor_gone gen
      @stopped = true
      return unless gen == @generation

      @torn_down = false if @servers.any?
      teardown(gen)
    end

    def wake_waiters
      @lock.synchronize { @cond.broadcast }
    rescue ThreadError
      nil # in a trap with no reactor: nobody can be waiting on a reactor
    end

    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end
