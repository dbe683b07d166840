# frozen_string_literal: true

module Backport
  module Server
    # What servers with clients share: the list of connected clients, which
    # start with the server and are closed when it stops.
    module Connectable
      # The connected clients (a snapshot: a client leaves the list when its
      # connection is gone).
      #
      # @return [Array<Client>]
      def clients
        client_set.keys
      end

      def starting
        client_set.each_key(&:start)
      end

      def stopping
        client_set.keys.each(&:close)
      end

      # A client notified: it has ended.
      #
      # @param client [Client]
      # @return [void]
      def update client
        client_set.delete(client) if client.stopped?
      end

      private

      # Insertion-ordered, and removal costs O(1) where an Array's costs O(n).
      def client_set
        @client_set ||= {}
      end

      def add_client client
        client_set[client] = true
        client.add_observer self
        client
      end
    end
  end
end
