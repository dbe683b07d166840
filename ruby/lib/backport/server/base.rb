# frozen_string_literal: true

require 'observer'

module Backport
  module Server
    # A server a Machine runs: `start` and `stop` call the `starting` and
    # `stopping` hooks subclasses override. Observable: a server that stops
    # notifies its observers (the machine, which drops it, and stops when no
    # server is left); a server of one's own that has work to do calls
    # `changed; notify_observers(self)` from any thread, and the machine runs
    # its `tick` on the reactor thread.
    #
    # The hooks run on the reactor thread. Called elsewhere, start and stop
    # are handed to the reactor and happen shortly after they return.
    class Base
      include Observable

      # Start the server (its `starting` hook); no-op when started.
      #
      # @return [void]
      def start
        Reactor.call do
          unless started?
            starting
            @started = true
          end
        end
        nil
      end

      # Stop the server (its `stopping` hook) and notify the observers;
      # no-op when stopped.
      #
      # @return [void]
      def stop
        Reactor.call do
          # @stopping: a client that ends inside `stopping` may stop the
          # server again (Stdio does): once is enough.
          if started? && !@stopping
            @stopping = true
            begin
              stopping
            ensure
              @stopping = false
            end
            @started = false
            changed
            notify_observers self
          end
        end
        nil
      end

      def started?
        @started ? true : false
      end

      def stopped?
        !started?
      end

      # Hook: the machine started running, or the server was prepared on a
      # running machine.
      #
      # @return [void]
      def starting; end

      # Hook: the server is stopping.
      #
      # @return [void]
      def stopping; end

      # Hook: the server notified its observers while running; the machine
      # calls it on the reactor thread.
      #
      # @return [void]
      def tick; end
    end
  end
end
