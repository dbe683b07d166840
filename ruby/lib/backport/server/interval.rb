# frozen_string_literal: true

module Backport
  module Server
    # Runs a block every `period` seconds while started, the first time one
    # period after the start (an EventMachine periodic timer: no thread).
    # The block gets the server, so it can stop itself. An exception from the
    # block is logged and the interval goes on.
    class Interval < Base
      # @param period [Numeric] seconds
      # @yieldparam [Interval]
      # @raise [ArgumentError] for a period that is not a number >= 0
      def initialize period, &block
        super()
        raise ArgumentError, "period must be a number >= 0, not #{period.inspect}" unless period.is_a?(Numeric) && period >= 0

        @period = period
        @block = block
        @ready = false
        @timer = nil
      end

      def starting
        @ready = false
        @timer = EM.add_periodic_timer(@period) do
          @ready = true
          tick
        end
      end

      def stopping
        @timer&.cancel
        @timer = nil
      end

      # Run the block if a period has passed since it last ran.
      #
      # @return [void]
      def tick
        return unless @ready

        @ready = false
        @block&.call(self)
      rescue StandardError => e
        Reactor.report(e, 'Backport interval block')
      end
    end
  end
end
