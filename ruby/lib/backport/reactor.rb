# frozen_string_literal: true

module Backport
  # Running code on the reactor thread (internal).
  #
  # Everything that touches EventMachine (send_data, close_connection, timers,
  # servers) runs on the thread that runs the reactor. Calls made elsewhere
  # are handed over with EM.next_tick, whose queue is FIFO: work handed over by
  # one thread runs in the order it was handed over. Rejected: a Mutex around
  # the engine, since the reactor thread holds it while it sleeps in the poll
  # (a writer would wait for the next event), and EM's engine is not written
  # for concurrent calls anyway.
  #
  # @api private
  module Reactor
    module_function

    # True on the thread running the reactor.
    def on_thread?
      EM.reactor_running? && EM.reactor_thread?
    end

    # Run the block now when on the reactor thread or when no reactor runs
    # (nothing to race with), else hand it to the reactor without waiting.
    #
    # @return [void]
    def call(&block)
      if !EM.reactor_running? || EM.reactor_thread?
        yield
      else
        schedule(block)
      end
      nil
    end

    # Hand a proc to the reactor, to run after what was handed over before.
    #
    # @return [void]
    def schedule(block)
      EM.next_tick(block)
    rescue ThreadError
      # A signal trap cannot take a Mutex and EM.next_tick takes one: hand the
      # block over from a thread instead.
      Thread.new { EM.next_tick(block) }
    end

    # True inside a signal trap handler, where Mutex#lock (so Logger, Monitor,
    # EM.next_tick) raises ThreadError.
    def in_trap?
      Mutex.new.synchronize {}
      false
    rescue ThreadError
      true
    end

    # Log an exception raised by application code (an adapter callback, an
    # interval's block) that the library caught to keep the reactor running.
    #
    # @return [void]
    def report(error, where)
      return if in_trap?

      Backport.logger.error "#{where} raised [#{error.class}] #{error.message}\n  " \
                            "#{Array(error.backtrace).first(8).join("\n  ")}"
    rescue StandardError
      nil
    end
  end
end
