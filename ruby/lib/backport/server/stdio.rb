# frozen_string_literal: true

module Backport
  module Server
    # A server on an input and an output IO (stdin and stdout by default):
    # one client, made with the server, started with it. When the client
    # ends (the input's EOF, or `close`) the server stops, and a machine left
    # without servers stops; Backport's kept running with nothing to serve.
    class Stdio < Base
      include Connectable

      # @param input [IO] a pipe, socket or tty is read by the reactor;
      #   anything else that has readpartial (a file, a StringIO) by a thread
      # @param output [IO] any object with write
      # @param adapter [Class, Module]
      # @raise [TypeError] for an adapter that is neither a Backport::Adapter
      #   subclass nor a module
      def initialize input: $stdin, output: $stdout, adapter: Adapter
        super()
        @in = input
        @out = output
        @out.binmode if @out.respond_to?(:binmode)
        @adapter = Client.check_adapter(adapter)
        add_client(Client.new(input, output, adapter))
      end

      # A client ended: with it, the server.
      def update client
        super
        stop if client.stopped? && client_set.empty?
      end
    end
  end
end
