# frozen_string_literal: true

module Backport
  # The application's side of a connection: subclass it, or write a module
  # that servers mix into one (see Client). A server calls `opening` when the
  # connection is made, `receiving(data)` for each piece of input, as it
  # arrives (pieces are not messages: a message may come in several pieces,
  # several messages in one), and `closing` once, when the connection is gone.
  #
  # The library's state lives in instance variables named @_backport_* so an
  # adapter's own variables do not collide with it. (Backport kept it in a
  # closure behind a singleton method, which gives every adapter a singleton
  # class of its own.)
  #
  # `write` is on the path of every message: while its Client allows it
  # (started on an EventMachine connection, not closed, nothing handed over
  # from other threads waiting) the Client leaves the connection's signature
  # and the reactor thread in @_backport_sig and @_backport_thread, and a
  # write on that thread goes straight to the engine's send_data: one thread
  # comparison, no call into the Client. Everything else (another thread, a
  # queue to keep the order of, a closed connection, an IO) takes the
  # Client's way.
  class Adapter
    # @param output [Client, IO, #write] where `write` sends: the Client a
    #   server made, or any object with `write` (an IO, a StringIO), which
    #   then gets `flush` after every write when it has one
    # @param remote [Hash{Symbol => String, Integer}]
    def initialize output, remote = {}
      @_backport_client = output.is_a?(Client) ? output : nil
      @_backport_out = output
      @_backport_flush = @_backport_client.nil? && output.respond_to?(:flush)
      @_backport_remote = remote
      @_backport_closed = false
      @_backport_sig = nil
      @_backport_thread = nil
    end

    # The peer of the connection: for TCP {family: "AF_INET" or "AF_INET6",
    # address:, hostname: (the numeric address, never a DNS lookup), port:};
    # {} for stdio. Fixed when the connection opens, so it still answers in
    # `closing` and after the peer reset the connection.
    #
    # @return [Hash{Symbol => String, Integer}]
    def remote
      @_backport_remote
    end

    # Called when the connection opens, before any `receiving`.
    #
    # @return [void]
    def opening; end

    # Called once when the connection is gone: after `close`, the peer's
    # disconnect (EOF or reset) or the machine's stop, never from inside a
    # call the adapter made.
    #
    # @return [void]
    def closing; end

    # Called with each piece of input as it arrives (a binary String).
    #
    # @param data [String]
    # @return [void]
    def receiving(data); end

    # Send data to the peer. From any thread: off the reactor thread the write
    # is handed to the reactor, in order. Ignored once the adapter is closed.
    #
    # @param data [String] (anything else is sent as its to_s)
    # @return [void]
    def write data
      if (sig = @_backport_sig) && Thread.current == @_backport_thread
        # EM::Connection#send_data without its method call and respond_to?.
        data = data.to_s
        EventMachine.send_data(sig, data, data.bytesize)
      elsif (client = @_backport_client)
        client.write(data)
      elsif !@_backport_closed
        out = @_backport_out
        out.write(data)
        out.flush if @_backport_flush
      end
      nil
    end

    # Send data and a "\n", unless data already ends with "\n" (as puts).
    #
    # @param data [String]
    # @return [void]
    def write_line data
      line = data.to_s
      write(line.end_with?("\n") ? line : line + "\n")
    end

    # True once the connection is closed or closing: after `close`, once the
    # peer is gone, and inside `closing`.
    def closed?
      c = @_backport_client
      c ? c.closed? : @_backport_closed
    end

    # Close the connection: what was written before is sent first, then the
    # connection closes and `closing` runs (once, from the reactor). From any
    # thread, in order with writes.
    #
    # @return [void]
    def close
      if (c = @_backport_client)
        c.close
      elsif !@_backport_closed
        # No connection behind this adapter (made on a plain IO): nothing to
        # wait for.
        @_backport_closed = true
        closing
      end
      nil
    end
  end
end
