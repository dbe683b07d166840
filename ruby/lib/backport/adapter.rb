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
  #
  # Three instance variables, the rest in a State: Ruby keeps up to three
  # inside the object and moves them all to a separate array beyond that,
  # which costs one more cache miss per message when many connections take
  # turns (measured with perf: about 0.1 µs on the echo benchmark).
  class Adapter
    # What the slow paths need. (Struct readers are as cheap as attribute
    # readers.)
    State = Struct.new(:client, :out, :flush, :remote, :closed)
    private_constant :State

    # @param output [Client, IO, #write] where `write` sends: the Client a
    #   server made, or any object with `write` (an IO, a StringIO), which
    #   then gets `flush` after every write when it has one
    # @param remote [Hash{Symbol => String, Integer}]
    def initialize output, remote = {}
      @_backport_sig = nil
      @_backport_thread = nil
      client = output.is_a?(Client) ? output : nil
      @_backport_state = State.new(client, output, client.nil? && output.respond_to?(:flush), remote, false)
    end

    # The peer of the connection: for TCP {family: "AF_INET" or "AF_INET6",
    # address:, hostname: (the numeric address, never a DNS lookup), port:};
    # {} for stdio. Fixed when the connection opens, so it still answers in
    # `closing` and after the peer reset the connection.
    #
    # @return [Hash{Symbol => String, Integer}]
    def remote
      @_backport_state.remote
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
      else
        state = @_backport_state
        if (client = state.client)
          client.write(data)
        elsif !state.closed
          out = state.out
          out.write(data)
          out.flush if state.flush
        end
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
      state = @_backport_state
      (c = state.client) ? c.closed? : state.closed
    end

    # Close the connection: what was written before is sent first, then the
    # connection closes and `closing` runs (once, from the reactor). From any
    # thread, in order with writes.
    #
    # @return [void]
    def close
      state = @_backport_state
      if (c = state.client)
        c.close
      elsif !state.closed
        # No connection behind this adapter (made on a plain IO): nothing to
        # wait for.
        state.closed = true
        closing
      end
      nil
    end
  end
end
