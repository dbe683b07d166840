# frozen_string_literal: true

require 'socket'

module Backport
  module Server
    # A TCP server: every accepted connection gets a Client with an adapter.
    #
    # The socket is made and bound by `socket_class.new(host, port)` when the
    # server is made (an address in use raises there), and handed to the
    # reactor when the server starts (EM.attach_server): connections are
    # accepted as they arrive, several per wakeup, with no polling. Backport
    # accepted from a thread that slept 10 ms between accepts (about 100 a
    # second at most).
    #
    # Who closes what: EventMachine's own engine takes the descriptor
    # attach_server is given and closes it when the server stops, so it gets
    # a duplicate, and the server closes its socket. Rejected: handing it the
    # socket's own descriptor, which the engine would close while the
    # TCPServer object still holds its number (closing that again later
    # could close an unrelated descriptor that reused it). libem's engine
    # works on a duplicate of its own and leaves the descriptor it was given
    # to the caller: it gets the socket itself.
    class Tcpip < Base
      include Connectable

      # @return [String] the host given
      attr_reader :host

      # @return [Integer] the bound port (the one picked when 0 was given)
      attr_reader :port

      # @return [Class, Module] the adapter every client gets
      attr_reader :adapter

      # @param host [String]
      # @param port [Integer] 0 picks a free port (see #port)
      # @param adapter [Class, Module] a Backport::Adapter subclass or a module
      # @param socket_class [Class] makes the listening socket with
      #   new(host, port); anything with a listening descriptor (#fileno)
      # @raise [TypeError] for an adapter that is neither
      # @raise [SystemCallError] when the socket cannot be made or bound
      def initialize host: 'localhost', port: 1117, adapter: Adapter, socket_class: TCPServer
        super()
        @adapter = Client.check_adapter(adapter)
        @host = host
        @socket = socket_class.new(host, port)
        @port = bound_port || port
        @signature = nil
      end

      def starting
        super
        listener = @socket
        if Tcpip.engine_takes_descriptor?
          listener = @socket.dup
          listener.autoclose = false # the engine closes this descriptor
        end
        @signature = EM.attach_server(listener, Connection, self)
      end

      def stopping
        if @signature
          EM.stop_server(@signature) if EM.reactor_running?
          @signature = nil
        end
        release_socket
        super
      end

      # Stop the server. A server that never started closes its socket too.
      #
      # @return [void]
      def stop
        super
        Reactor.call { release_socket unless started? }
        nil
      end

      # Accept one pending connection now, on the reactor thread. The reactor
      # accepts by itself once the server runs; this is for a server driven
      # by hand.
      #
      # @return [Client, nil] the new client, nil when none was pending
      def accept
        return nil if @socket.closed? || !Reactor.on_thread?

        sock = @socket.accept_nonblock(exception: false)
        return nil unless sock.is_a?(BasicSocket)

        EM.attach(sock, Connection, self).client
      rescue IOError, SystemCallError => e
        Backport.logger.info { "Accept failed [#{e.class}] #{e.message}" }
        nil
      end

      # True when the engine closes the descriptor EM.attach_server was
      # given when the server stops (EventMachine's own engine), false for
      # libem's engine, which leaves it to the caller.
      #
      # @api private
      def self.engine_takes_descriptor?
        !defined?(EventMachine::LIBEM_VERSION)
      end

      # The peer of an accepted connection as Backport's `remote` hash.
      #
      # @api private
      def self.remote_of conn
        packed = conn.get_peername
        return {} unless packed

        ai = Addrinfo.new(packed)
        if ai.ip?
          # An IPv4 client of a dual-stack listener is reported as IPv4.
          v4 = ai.ipv6? ? ai.ipv6_to_ipv4 : nil
          address = (v4 || ai).ip_address
          { family: v4 || ai.ipv4? ? 'AF_INET' : 'AF_INET6', port: ai.ip_port,
            hostname: address, address: address }
        elsif ai.unix?
          { family: 'AF_UNIX', address: ai.unix_path }
        else
          {}
        end
      rescue StandardError
        {}
      end

      private

      def bound_port
        @socket.local_address.ip_port
      rescue StandardError
        nil
      end

      def release_socket
        @socket.close unless @socket.closed?
      rescue IOError, SystemCallError
        nil
      end

      # A connection the reactor accepted (reactor thread).
      def accepted client
        add_client(client)
        if @socket.closed?
          client.close # accepted in the turn the server stopped
        else
          client.start
          Backport.logger.info { "Client connected: #{client.adapter.remote}" }
        end
      end

      # The EventMachine side of an accepted connection.
      #
      # @api private
      class Connection < EM::Connection
        # @return [Client]
        attr_reader :client

        # Three instance variables (@signature, EventMachine's, @client and
        # @receiver) so that Ruby keeps them inside the object: a fourth
        # moves them to a separate array, one more cache miss on every
        # message (see Adapter). So the server waits in @client until
        # post_init replaces it with the Client.
        def initialize server
          super()
          @client = server
        end

        def post_init
          server = @client
          @client = Client.new(self, self, server.adapter, Tcpip.remote_of(self))
          # Who gets input: the adapter until the client closes.
          @receiver = @client.adapter
          server.__send__(:accepted, @client)
        end

        # Client#receive, inlined: this runs for every piece of input, so
        # it calls nothing but the adapter.
        def receive_data data
          @receiver&.receiving(data)
        rescue StandardError => e
          Reactor.report(e, "#{@client.adapter.class}#receiving")
          @client.close
        end

        # The client closed (any thread): no more input for the adapter.
        #
        # @api private
        def backport_client_closed
          @receiver = nil
        end

        def unbind
          # Not a Client when post_init failed: @client is still the server.
          @client.unbound if @client.is_a?(Client)
        end
      end
    end
  end
end
