# frozen_string_literal: true

require 'observer'
require 'fcntl'

module Backport
  # One connection as its server sees it: the adapter, and what carries its
  # bytes (an EventMachine connection for TCP, an input and an output IO for
  # stdio). Observable: it notifies its observers (the server) with itself
  # when it ends.
  #
  # Writes from any thread. On the reactor thread a write goes straight to
  # the connection; elsewhere it joins a per-client queue that the reactor
  # drains (one EM.next_tick per batch, not per write). While the queue holds
  # anything, writes made on the reactor thread join it too, so a write never
  # overtakes one that was handed over before it. Rejected: EM.schedule for
  # every write, which keeps the order of writes made off the reactor but lets
  # a reactor write overtake them, and costs a next_tick per write.
  #
  # The per-message path skips the Client: the transport connection calls
  # the adapter's `receiving` itself, and while writes may go straight to
  # the connection (started, not closed, nothing queued) the adapter holds
  # the connection's signature and the reactor thread and its `write` calls
  # the engine's send_data (Adapter#write). The Client takes the signature
  # back, under the queue's lock, before it queues anything, and gives it
  # again, under the lock, once a flush leaves the queue empty: a reactor
  # write either sees the signature (nothing queued: nothing to overtake) or
  # takes the queue's way. Rejected: a Mutex or an ordering check on every
  # write, which costs what the library was slower than EventMachine by.
  class Client
    include Observable

    # @return [Adapter]
    attr_reader :adapter

    # The queue's marker for "close here".
    CLOSE = Object.new.freeze
    private_constant :CLOSE

    class << self
      # Raise TypeError unless adapter is a Backport::Adapter subclass (or
      # Adapter itself) or a plain module.
      #
      # @return [Class, Module] adapter
      def check_adapter adapter
        return adapter if adapter.is_a?(Class) && adapter <= Adapter
        return adapter if adapter.instance_of?(Module)

        raise TypeError, "#{adapter.inspect} is not a valid Backport adapter"
      end

      # The Adapter subclass a module adapter is included into, made once per
      # module (EventMachine does the same with handler modules): every
      # connection's adapter then has the same class, which Ruby's method
      # caches like, instead of a singleton class each. nil when the module
      # has include or extend hooks of its own: those modules are extended
      # into each adapter, as Backport does.
      #
      # @api private
      def class_for_module mod
        @class_for_module ||= {}
        @class_for_module.fetch(mod) do
          @class_for_module[mod] = (make_class(mod) unless hooks?(mod))
        end
      end

      private

      HOOKS = %i[included append_features extended extend_object].freeze

      def hooks? mod
        HOOKS.any? { |hook| mod.method(hook).owner != Module }
      end

      def make_class mod
        klass = Class.new(Adapter)
        klass.include(mod)
        label = "#{mod.name || mod.inspect}(Backport::Adapter)"
        klass.define_singleton_method(:name) { label }
        klass.define_singleton_method(:to_s) { label }
        klass.define_singleton_method(:inspect) { label }
        klass
      end
    end

    # @param input [IO, EM::Connection, nil] where input comes from
    # @param output [IO, EM::Connection, nil] where writes go (the same
    #   EventMachine connection as input for TCP)
    # @param adapter [Class, Module] a Backport::Adapter subclass or a module
    # @param remote [Hash] what the adapter's `remote` returns
    # @raise [TypeError] for anything else as adapter
    def initialize input, output, adapter, remote = {}
      @in = input
      @out = output
      @transport = output.is_a?(EM::Connection) ? output : nil
      # Writes may skip EM::Connection#send_data when the connection does
      # not override it.
      @direct = !@transport.nil? &&
                @transport.class.instance_method(:send_data).owner.equal?(EM::Connection)
      @lock = Mutex.new
      @pending = nil
      @flush = nil
      @started = false
      @closed = false
      @close_sent = false
      @gone = false
      @reactor_thread = nil
      @adapter = make_adapter(Client.check_adapter(adapter), remote)
    end

    # Start the client: the adapter's `opening`, then input starts flowing
    # to `receiving`. A client on IOs needs a running reactor (a machine).
    #
    # @return [void]
    def start
      Reactor.call { start_now }
      nil
    end
    # Backport's older name for start.
    alias run start

    # Close the connection (the adapter's `close`).
    #
    # @return [void]
    def stop
      close
    end

    # True before start and once the connection is closed or closing.
    def stopped?
      !@started || @closed
    end

    # True once a close was requested or the peer is gone. (An attribute
    # reader: the VM calls those without a frame, and a connection asks on
    # every piece of input.)
    attr_reader :closed
    alias closed? closed
    private :closed

    # Backport polled input on ticks; here input is delivered as it arrives,
    # so there is nothing left to do on a tick.
    #
    # @return [void]
    def tick; end

    # Send data (the adapter's `write`): from any thread, in order.
    #
    # @return [void]
    def write data
      return if @closed

      data = data.to_s unless data.is_a?(String)
      if @pending.nil? && Thread.current.equal?(@reactor_thread)
        @transport.send_data(data)
      else
        enqueue(data)
      end
      nil
    end

    # Close after what was written before (the adapter's `close`): from any
    # thread. `closing` runs once the connection is gone.
    #
    # @return [void]
    def close
      return if @closed

      @closed = true
      undirect
      @transport.backport_client_closed if @transport.respond_to?(:backport_client_closed)
      if @pending.nil? && Thread.current.equal?(@reactor_thread)
        close_now
      else
        enqueue(CLOSE)
      end
      nil
    end

    # Input from the transport (reactor thread).
    #
    # @api private
    def receive data
      return if @closed

      @adapter.receiving(data)
    rescue StandardError => e
      Reactor.report(e, "#{@adapter.class}#receiving")
      close
    end

    # The transport is gone (reactor thread): `closing`, once, then the
    # observers hear of it.
    #
    # @api private
    def unbound
      return if @gone

      @gone = true
      @closed = true
      @lock.synchronize do
        @pending = nil
        undirect
      end
      begin
        @adapter.closing if @started
      rescue StandardError => e
        Reactor.report(e, "#{@adapter.class}#closing")
      end
      changed
      notify_observers self
    end

    private

    def make_adapter cls_mod, remote
      return cls_mod.new(self, remote) if cls_mod.is_a?(Class)

      klass = Client.class_for_module(cls_mod)
      return klass.new(self, remote) if klass

      Adapter.new(self, remote).extend(cls_mod)
    end

    def start_now
      return if @started || @closed

      if @transport.nil?
        raise 'Backport::Client#start: a client on IOs needs a running reactor (a machine)' unless EM.reactor_running?

        @transport = Pipe.new(self, @in, @out)
      end
      @started = true
      @reactor_thread = Thread.current
      @lock.synchronize { redirect }
      begin
        @adapter.opening
      rescue StandardError => e
        Reactor.report(e, "#{@adapter.class}#opening")
        close
      end
      @transport.start_reading if !@closed && @transport.is_a?(Pipe)
      # Writes made before the start waited in the queue.
      Reactor.schedule(@flush ||= method(:flush)) if @pending
    end

    def close_now
      return if @gone || @close_sent

      @close_sent = true
      @transport&.close_connection_after_writing
    end

    def enqueue item
      first = false
      @lock.synchronize do
        undirect
        if @pending
          @pending << item
        else
          @pending = [item]
          first = true
        end
      end
      Reactor.schedule(@flush ||= method(:flush)) if first
    end

    # Send what was handed over, in order (reactor thread).
    def flush
      items = @lock.synchronize do
        taken = @pending
        @pending = nil
        taken
      end
      return unless items

      items.each do |item|
        break if @gone

        if item.equal?(CLOSE)
          close_now
          break
        end
        if @transport
          @transport.send_data(item)
        else
          # Written before the client started: keep it for after.
          @lock.synchronize { (@pending ||= []) << item }
        end
      end
      # Nothing queued meanwhile: reactor writes may go straight again.
      @lock.synchronize { redirect }
    end

    # Let the adapter's writes on the reactor thread go straight to the
    # connection, when nothing is queued and the connection is open (called
    # with @lock held, on the reactor thread).
    def redirect
      return unless @direct && @started && @pending.nil? && !@closed

      @adapter.instance_variable_set(:@_backport_thread, @reactor_thread)
      @adapter.instance_variable_set(:@_backport_sig, @transport.signature)
    end

    # Writes take the Client's way again (any thread; with @lock held when
    # a queue is about to start).
    def undirect
      @adapter.instance_variable_set(:@_backport_sig, nil)
    end

    # A client's transport over an input IO and an output IO (stdio, pipes):
    # the same calls as an EventMachine connection (send_data,
    # close_connection_after_writing) and the same end (Client#unbound).
    #
    # Input: a pipe, socket or tty is attached to the reactor (EM.attach, on a
    # dup of the descriptor: EventMachine closes what it attached, and the
    # application's IO stays open); anything else (a regular file, /dev/null,
    # a StringIO), which epoll cannot watch, is read by a thread that hands
    # each piece to the reactor. Output: written at once without blocking;
    # what the pipe does not take waits for writability (EM.watch). Rejected:
    # EM.attach for the output too, which would also read from it (a tty's
    # descriptor 1 is readable when the user types). The descriptors' flags
    # (O_NONBLOCK) are put back when the client ends.
    #
    # @api private
    class Pipe
      CHUNK = 16_384

      def initialize client, input, output
        @client = client
        @in = input
        @out = output
        @out_fd = Pipe.fd_of(output)
        @backlog = nil
        @reader = nil
        @writer = nil
        @thread = nil
        @closing = false
        @finished = false
        @reader_open = false
        @saved = {}
      end

      def self.fd_of io
        return nil if io.nil? || !io.respond_to?(:fileno)

        io.fileno
      rescue IOError, NotImplementedError, SystemCallError
        nil
      end

      def start_reading
        return if @finished

        if pollable?(@in)
          save_flags(@in)
          begin
            @reader = EM.attach(@in.dup, Reader, self)
            @reader_open = true
            return
          rescue StandardError => e
            Backport.logger.info "Reading #{@in.inspect} with a thread (#{e.class}: #{e.message})"
          end
        end
        start_thread
      end

      def send_data data
        return if @finished

        unless @out_fd
          @out&.write(data)
          @out.flush if @out.respond_to?(:flush)
          return
        end
        if @backlog
          @backlog << data.b
          return
        end
        save_flags(@out)
        n = @out.write_nonblock(data, exception: false)
        n = 0 if n == :wait_writable
        return if n == data.bytesize

        @backlog = data.byteslice(n, data.bytesize - n).b
        want_writable
      rescue IOError, SystemCallError
        finish
      end

      def close_connection_after_writing
        return if @closing

        @closing = true
        stop_input
        finish unless @backlog
      end

      def on_input data
        @client.receive(data) unless @closing
      end

      # The reader is gone: EOF, our close, or the reactor's release. On EOF,
      # like a socket after the peer's EOF, what is queued is still written,
      # then the client ends.
      def on_input_closed
        @reader = nil
        @reader_open = false
        restore_flags(@in)
        return if @closing

        @closing = true
        finish unless @backlog
      end

      def on_writable
        return finish if @backlog.nil? && @closing

        n = @out.write_nonblock(@backlog, exception: false)
        return if n == :wait_writable

        if n == @backlog.bytesize
          @backlog = nil
          @writer.notify_writable = false if @writer
          finish if @closing
        else
          @backlog = @backlog.byteslice(n, @backlog.bytesize - n)
        end
      rescue IOError, SystemCallError
        finish
      end

      # The writability watch is gone (the reactor's release): nothing more
      # can be written.
      def on_writer_gone
        @writer = nil
        finish
      end

      private

      def pollable? io
        return false unless Pipe.fd_of(io)

        st = io.stat
        st.pipe? || st.socket? || io.tty?
      rescue IOError, SystemCallError
        false
      end

      def start_thread
        input = @in
        pipe = self
        @thread = Thread.new do
          Thread.current.report_on_exception = false
          loop do
            data = begin
              input.readpartial(CHUNK)
            rescue StandardError
              nil
            end
            Reactor.schedule(data ? proc { pipe.on_input(data) } : proc { pipe.on_input_closed })
            break unless data
          end
        end
      end

      def want_writable
        @writer ||= EM.watch(@out, Writer, self)
        @writer.notify_writable = true
      end

      def stop_input
        if (reader = @reader)
          @reader = nil
          reader.close_connection if EM.reactor_running?
        end
        @thread&.kill
        @thread = nil
      end

      def finish
        return if @finished

        @finished = true
        @backlog = nil
        stop_input
        if (writer = @writer)
          @writer = nil
          writer.detach if EM.reactor_running?
        end
        restore_flags(@out)
        # The input's flags wait for the reader's unbind: EventMachine may
        # still read from it in this turn, and reads until EAGAIN (a
        # blocking descriptor would hang the reactor).
        restore_flags(@in) unless @reader_open
        @client.unbound
      end

      def save_flags io
        return if @saved.key?(io)

        @saved[io] = io.fcntl(Fcntl::F_GETFL)
      rescue IOError, SystemCallError, NotImplementedError
        @saved[io] = nil
      end

      def restore_flags io
        return unless @saved.key?(io)

        flags = @saved.delete(io)
        io.fcntl(Fcntl::F_SETFL, flags) if flags && !io.closed?
      rescue IOError, SystemCallError
        nil
      end

      # Input side of a Pipe.
      class Reader < EM::Connection
        def initialize pipe
          super()
          @pipe = pipe
        end

        def receive_data data
          @pipe.on_input(data)
        end

        def unbind
          @pipe.on_input_closed
        end
      end

      # Output side of a Pipe, watched for writability only.
      class Writer < EM::Connection
        def initialize pipe
          super()
          @pipe = pipe
        end

        def notify_writable
          @pipe.on_writable
        end

        def unbind
          @pipe.on_writer_gone
        end
      end
    end
    private_constant :Pipe
  end
end
