# frozen_string_literal: true
#
# test_bad_arguments.rb - issue #9, robustness: every native function of the
# engine, called directly with bad arguments, works or raises a Ruby
# exception (a StandardError); never a segfault, an abort, a hang or a
# leaked descriptor. Outside a reactor (before the first
# initialize_event_machine, after release_machine) and inside a running one.
#
# The sweep runs in a child process (this file, run as
# `ruby test_bad_arguments.rb --child libem|reference`), which prints each
# call before making it: a crash or a hang shows as a failed test with the
# signal and that call. For each native module function (EventMachine's
# singleton methods without a Ruby source location, each of which must have
# an entry in SIGNATURES), each argument position gets each bad value of its
# kind (GENERIC and EXTRA) while the other arguments are valid-looking; then
# the wrong arities, Connection's native methods (a receiver whose
# @signature is bad), LibEM.set_tls_verify, and a few combined misuses
# (EXTRA_CALLS). Inside the reactor every signature is a fresh object made
# for the call (a call may close or detach what it is given).
#
# Calls that crash Debian's engine (ruby-eventmachine 1.3~pre20220315),
# found by running the sweep on it by hand
# (`ruby ruby/test/test_bad_arguments.rb --child reference` with
# BAD_ARGS_SKIP=file naming the calls already found, one per line):
# (339 of the sweep's calls; one line per cause, "segv" a segmentation fault,
# "abort" an uncaught C++ exception, any phase unless "inside"):
#   invoke_popen(anything not an Array)                      segv
#   set_comm_inactivity_timeout(sig, not a Float)            segv
#   set_pending_connect_timeout(sig, not a Float)            segv
#   set_heartbeat_interval(not a Float)                      segv
#   setuid_string(a name that is no user, or "")             abort
#   inside send_data(sig, data, length > data or not Integer) segv (reads past)
#   inside send_datagram(sig, data, length > data or bad)     segv / bus error
#   inside attach_fd(bad fd, or a descriptor attached before) abort
#   inside set_notify_readable/writable(a non-watch connection) abort
#   inside close_connection/pause/resume/send_data/send_file_data/TLS getters
#     on a watch-only or attached connection                  abort
#   inside connect_unix_server(path longer than sun_path)     abort
#   inside stop_tcp_server(not a listener)                    abort
#   inside unwatch_pid(not a pid watch)                       abort
#   inside set_timer_quantum(out of range)                    abort
#   inside watch_filename(a name longer than PATH_MAX)        crash
#   inside release_machine()                                  segv (next call)
#   inside run_machine(), run_machine_without_threads()       hang (100% CPU)

require "socket"
require "tmpdir"
require "rbconfig"

module BadArguments
  # A signature that names nothing (no timer, server or connection).
  NOTHING = 0xFFFF_FFFF_FFFF_FFF0

  # Implicit conversions that raise.
  class Evil
    def to_str = raise("to_str raised")
    def to_int = raise("to_int raised")
    def to_ary = raise("to_ary raised")
    def inspect = "Evil"
  end

  # Implicit conversions that answer the wrong type.
  class Liar
    def to_str = 42
    def to_int = "42"
    def to_ary = 42
    def inspect = "Liar"
  end

  # A fixture made at call time: inside the reactor a fresh object of this
  # kind, outside a signature (or number) that names nothing live.
  Fx = Struct.new(:kind) do
    def inspect = "fx:#{kind}"
  end

  GENERIC = [
    nil, true, false, 0, -1, 1_000_000, 2**31, -2**31 - 1, 2**62, 2**63 - 1,
    2**64, -2**64, 1.5, -1.5, 1e300, Float::NAN, Float::INFINITY,
    -Float::INFINITY, :sym, "", "1", "a\0b", "9" * 5000,
    (+"\xff\xfe").force_encoding(Encoding::UTF_8), [], {}, Object.new,
    Evil.new, Liar.new
  ].freeze

  # Signatures of everything that is not the live connection asked for.
  SIGS = %i[nothing closed timer listener stopped_listener udp watch_only
            attached file_watch unwatched pid_watch].map { |k| Fx.new(k) }.freeze

  # Bad values of each kind beyond GENERIC. Paths stay inside the child's
  # temporary directory (Debian's start_unix_server unlinks its path).
  EXTRA = {
    conn: SIGS,
    attached: SIGS - [Fx.new(:attached)] + [Fx.new(:conn)],
    udp: SIGS - [Fx.new(:udp)] + [Fx.new(:conn)],
    server: SIGS - [Fx.new(:listener)] + [Fx.new(:conn)],
    watch: SIGS - [Fx.new(:file_watch)] + [Fx.new(:conn)],
    pid_watch: SIGS - [Fx.new(:pid_watch)] + [Fx.new(:conn)],
    fd: [99_999, Fx.new(:listen_fd), Fx.new(:file_fd)],
    sd: [99_999, Fx.new(:pipe_fd), Fx.new(:file_fd)],
    path: [".", "/nonexistent/x", Fx.new(:sock_path)],
    upath: [".", "/nonexistent/x", "@abstract-#{Process.pid}", "x" * 200],
    argv: [[nil, nil], [1, 2], ["x"], ["a\0b", "x"], Array.new(3000, "x"),
           [Evil.new, "x"], ["./no-such-program", "no-such-program"]],
    data: ["x" * 1_000_000],
    len: [3000],
    cport: [65_536, 70_000]
  }.freeze

  # Valid-looking values by kind (Fx: made at call time).
  VALID = {
    conn: Fx.new(:conn), attached: Fx.new(:attached), udp: Fx.new(:udp),
    server: Fx.new(:listener), watch: Fx.new(:file_watch),
    pid_watch: Fx.new(:pid_watch), fd: Fx.new(:pipe_fd), sd: Fx.new(:listen_fd),
    host: "127.0.0.1", lport: 0, cport: Fx.new(:port), path: Fx.new(:file),
    upath: Fx.new(:sock_path), bool: false, data: "abc", len: 3, secs: 100.0,
    ms: 1000, quantum: 10, max_timers: 100_000, accepts: 10,
    nofile: Fx.new(:nofile), level: Socket::SOL_SOCKET,
    optname: Socket::SO_KEEPALIVE, optval: 1, str: "", protocols: 96,
    user: "libem-no-such-user", argv: ["./no-such-program", "x"],
    pid: Fx.new(:pid), size: 0, keepalive: 10, name: true
  }.freeze

  # The parameters of every native module function, by kind.
  SIGNATURES = {
    add_oneshot_timer: %i[ms],
    attach_fd: %i[fd bool],
    attach_sd: %i[sd],
    bind_connect_server: %i[host lport host cport],
    close_connection: %i[conn bool],
    connect_server: %i[host cport],
    connect_unix_server: %i[upath],
    connection_paused?: %i[conn],
    current_time: [],
    detach_fd: %i[attached],
    epoll: [], epoll?: [], "epoll=": %i[bool],
    get_cipher_bits: %i[conn],
    get_cipher_name: %i[conn],
    get_cipher_protocol: %i[conn],
    get_comm_inactivity_timeout: %i[conn],
    get_connection_count: [],
    get_file_descriptor: %i[conn],
    get_heartbeat_interval: [],
    get_idle_time: %i[conn],
    get_max_timer_count: [],
    get_peer_cert: %i[conn],
    get_peername: %i[conn],
    get_pending_connect_timeout: %i[conn],
    get_proxied_bytes: %i[conn],
    get_simultaneous_accept_count: [],
    get_sni_hostname: %i[conn],
    get_sock_opt: %i[conn level optname],
    get_sockname: %i[conn],
    get_subprocess_pid: %i[conn],
    get_subprocess_status: %i[conn],
    get_timer_count: [],
    initialize_event_machine: [],
    invoke_popen: %i[argv],
    is_notify_readable: %i[conn],
    is_notify_writable: %i[conn],
    kqueue: [], kqueue?: [], "kqueue=": %i[bool],
    library_type: [],
    num_close_scheduled: [],
    open_udp_socket: %i[host lport],
    pause_connection: %i[conn],
    read_keyboard: [],
    release_machine: [],
    report_connection_error_status: %i[conn],
    resume_connection: %i[conn],
    run_machine: [], run_machine_once: [], run_machine_without_threads: [],
    send_data: %i[conn data len],
    send_datagram: %i[udp data len host cport],
    send_file_data: %i[conn path],
    set_comm_inactivity_timeout: %i[conn secs],
    set_heartbeat_interval: %i[secs],
    set_max_timer_count: %i[max_timers],
    set_notify_readable: %i[conn bool],
    set_notify_writable: %i[conn bool],
    set_pending_connect_timeout: %i[conn secs],
    set_rlimit_nofile: %i[nofile],
    set_simultaneous_accept_count: %i[accepts],
    set_sock_opt: %i[conn level optname optval],
    set_timer_quantum: %i[quantum],
    set_tls_parms: %i[conn str str str str str bool bool str str str str protocols],
    setuid_string: %i[user],
    signal_loopbreak: [],
    ssl?: [],
    start_proxy: %i[conn conn size size],
    start_tcp_server: %i[host lport],
    start_tls: %i[conn],
    start_unix_server: %i[upath],
    stop: [],
    stop_proxy: %i[conn],
    stop_tcp_server: %i[server],
    stopping?: [],
    unwatch_filename: %i[watch],
    unwatch_pid: %i[pid_watch],
    watch_filename: %i[path],
    watch_only?: %i[conn],
    watch_pid: %i[pid]
  }.freeze

  # EventMachine::Connection's native methods (receiver: a connection).
  CONNECTION_METHODS = {
    get_outbound_data_size: [],
    enable_keepalive: %i[keepalive keepalive keepalive],
    disable_keepalive: [],
    associate_callback_target: %i[conn]
  }.freeze

  # Valid-looking calls not made, by phase, and why. Every other call is
  # made; the bad-argument calls of these functions are made too (a bad
  # argument reaches none of the effects below):
  # - initialize_event_machine outside: it would start a machine outside
  #   EM.run (whose own initialize would then fail); inside, where it must
  #   refuse, it is called.
  # - stop inside: it ends the reactor mid-sweep; the sweep's last step is
  #   an EM.stop. Outside it is called.
  # Never passed: a real user name to setuid_string, a real command to
  # invoke_popen (only a program that does not exist), a path outside the
  # child's temporary directory to anything that creates or unlinks one.
  # set_rlimit_nofile, set_max_timer_count and set_simultaneous_accept_count
  # are restored after each call (a tiny descriptor limit would break the
  # rest of the sweep, not the engine).
  SKIP_VALID = {
    before: %i[initialize_event_machine],
    inside: %i[stop],
    after: %i[initialize_event_machine]
  }.freeze

  # Calls not made on libem's engine because they hit a bug in libem's core.
  # None now. The sweep found one, under ASan (the extension built with
  # -fsanitize=address, LD_PRELOAD=libasan): libem closed a descriptor
  # without EPOLL_CTL_DEL, so one whose open file lived on elsewhere stayed
  # in epoll for a freed watcher (attach_fd(0, false): stdin attached
  # natively, its dup closed at unbind; two failed execs in one turn: the
  # second child held the first one's pidfd). Fixed in src/poller_epoll.c
  # (em__poller_forget); tests/test_descriptors.c checks it.
  CORE_BUGS = [].freeze

  # Misuses that need two steps or two arguments that name the same thing.
  EXTRA_CALLS = [
    ["start_proxy(c, c, 0, 0)", lambda { |f|
      c = f.(:conn)
      EM.start_proxy(c, c, 0, 0)
    }],
    ["start_tls(c) twice", lambda { |f|
      c = f.(:conn)
      EM.start_tls(c)
      EM.start_tls(c)
    }],
    ["set_tls_parms(c, protocols 2**32-1) + start_tls(c)", lambda { |f|
      c = f.(:conn)
      EM.set_tls_parms(c, "", "", "", "", "", false, false, "", "", "", "", 2**32 - 1)
      EM.start_tls(c)
    }],
    ["set_tls_parms(c, missing files, bad curve) + start_tls(c)", lambda { |f|
      c = f.(:conn)
      EM.set_tls_parms(c, "no-key", "", "", "no-cert", "", true, true, "",
                       "NO-SUCH-CIPHER", "no-curve", "no-dh", 96)
      EM.start_tls(c)
    }],
    ["set_tls_parms(c, garbage PEM key and cert) + start_tls(c)", lambda { |f|
      c = f.(:conn)
      EM.set_tls_parms(c, "", "-----BEGIN PRIVATE KEY-----\nxx\n", "pw", "",
                       "-----BEGIN CERTIFICATE-----\n", false, false, "", "", "", "", 0)
      EM.start_tls(c)
    }],
    ["detach_fd(attached) twice", lambda { |f|
      c = f.(:attached)
      EM.detach_fd(c)
      EM.detach_fd(c)
    }],
    ["close_connection(c) then send_data, start_tls, start_proxy", lambda { |f|
      c = f.(:conn)
      d = f.(:conn)
      EM.close_connection(c, false)
      EM.send_data(c, "x", 1)
      EM.start_proxy(c, d, 0, 0)
      EM.start_proxy(d, c, 0, 0)
      EM.start_tls(c)
    }],
    ["pause_connection(c) twice + resume twice + close", lambda { |f|
      c = f.(:conn)
      2.times { EM.pause_connection(c) }
      2.times { EM.resume_connection(c) }
      EM.close_connection(c, true)
      EM.pause_connection(c)
    }],
    ["stop_tcp_server(listener) twice", lambda { |f|
      s = f.(:listener)
      EM.stop_tcp_server(s)
      EM.stop_tcp_server(s)
    }],
    ["unwatch_filename(watch) twice", lambda { |f|
      w = f.(:file_watch)
      EM.unwatch_filename(w)
      EM.unwatch_filename(w)
    }]
  ].freeze

  # A connection that ignores everything.
  module Sink
    def receive_data(_data); end

    def unbind(*); end
  end

  # The sweep itself (in the child).
  class Sweep
    Call = Struct.new(:label, :fn, :receiver, :args, :block)

    def initialize(skip)
      @skip = skip
      @calls = 0
      @skipped = 0
      @raised = Hash.new(0)
      @handled = Hash.new(0)
      @nonstandard = []
      @made = {}
      @cleanups = []
      @ios = []
      @n = 0
      @fixed = {}
      @phase = :before
    end

    attr_reader :calls, :nonstandard

    def self.fd_map
      Dir.children("/proc/self/fd").sort_by(&:to_i).to_h do |fd|
        [fd.to_i, (File.readlink("/proc/self/fd/#{fd}") rescue "?")]
      end
    end

    # ---- the calls ------------------------------------------------------

    def natives
      EventMachine.singleton_methods.select do |m|
        EventMachine.method(m).source_location.nil?
      end.sort
    end

    def native_connection_methods
      EventMachine::Connection.instance_methods(false).select do |m|
        EventMachine::Connection.instance_method(m).source_location.nil? &&
          m != :original_method # Kernel#method under another name
      end.sort
    end

    # Groups of calls: one group per function and argument position (inside
    # the reactor a group runs in one callback, its fixtures closed after).
    def groups
      missing = natives - SIGNATURES.keys
      raise "no SIGNATURES entry for #{missing.inspect}" unless missing.empty?

      out = []
      natives.each do |fn|
        kinds = SIGNATURES.fetch(fn)
        valid = kinds.map { |k| VALID.fetch(k) }
        kinds.each_with_index do |kind, i|
          out << (GENERIC + EXTRA.fetch(kind, [])).map do |bad|
            args = valid.dup
            args[i] = bad
            Call.new(nil, fn, EventMachine, args)
          end
        end
        arity = [
          (Call.new(nil, fn, EventMachine, []) if kinds.empty? && !SKIP_VALID[@phase].include?(fn)),
          Call.new(nil, fn, EventMachine, valid + [nil]),
          (Call.new(nil, fn, EventMachine, valid[0...-1]) unless kinds.empty?)
        ].compact
        out << arity
      end
      native_connection_methods.each do |m|
        kinds = CONNECTION_METHODS.fetch(m) { raise "no CONNECTION_METHODS entry for #{m}" }
        valid = kinds.map { |k| VALID.fetch(k) }
        out << (GENERIC + SIGS).map { |bad| Call.new(nil, m, [:connection, bad], valid) }
        kinds.each_with_index do |kind, i|
          out << (GENERIC + EXTRA.fetch(kind, [])).map do |bad|
            args = valid.dup
            args[i] = bad
            Call.new(nil, m, [:connection, Fx.new(:conn)], args)
          end
        end
        out << [Call.new(nil, m, [:connection, Fx.new(:conn)], valid + [nil, nil, nil, nil])]
      end
      if defined?(LibEM) && LibEM.respond_to?(:set_tls_verify)
        kinds = %i[conn name path path bool]
        valid = kinds.map { |k| VALID.fetch(k) }
        kinds.each_with_index do |kind, i|
          out << (GENERIC + EXTRA.fetch(kind, [])).map do |bad|
            args = valid.dup
            args[i] = bad
            Call.new(nil, :set_tls_verify, LibEM, args)
          end
        end
      end
      out << EXTRA_CALLS.map { |label, blk| Call.new(label, nil, nil, nil, blk) }
      out
    end

    def label_of(call)
      return "#{@phase} #{call.label}" if call.label

      recv = if call.receiver.is_a?(Array)
               "Connection(#{call.receiver[1].inspect})#"
             elsif call.receiver == EventMachine
               ""
             else
               "#{call.receiver}."
             end
      args = call.args.map { |a| short(a) }.join(", ")
      "#{@phase} #{recv}#{call.fn}(#{args})"
    end

    def short(value)
      s = value.inspect
      s.length > 24 ? "#{s[0, 12]}...(#{s.length})" : s
    end

    def run_call(call)
      label = label_of(call)
      if @skip.include?(label)
        @skipped += 1
        puts "SKIP #{label}"
        return
      end
      print "CALL #{label}"
      @calls += 1
      saved = save_process_state(call.fn)
      result = begin
        if call.block
          call.block.call(method(:make))
        else
          recv = call.receiver
          recv = connection_object(recv[1]) if recv.is_a?(Array)
          args = call.args.map { |a| resolve(a) }
          r = recv.__send__(call.fn, *args)
          close_detached(call.fn, r)
          r
        end
      rescue FixtureUnavailable => e
        puts " -> fixture unavailable: #{e.message}"
        return
      rescue StandardError => e
        @raised[e.class.name] += 1
        puts " -> #{e.class}: #{e.message[0, 60].inspect}"
        return
      rescue Exception => e # rubocop:disable Lint/RescueException
        @nonstandard << "#{label}: #{e.class}: #{e.message[0, 80]}"
        puts " -> NOT A StandardError: #{e.class}: #{e.message[0, 60].inspect}"
        return
      ensure
        restore_process_state(saved)
      end
      puts " -> #{short(result)}"
    end

    # ---- process-wide state a call may change ----------------------------

    def save_process_state(fn)
      case fn
      when :set_rlimit_nofile then [:nofile, Process.getrlimit(:NOFILE)]
      when :set_max_timer_count then [:timers, EventMachine.get_max_timer_count]
      when :set_simultaneous_accept_count then [:accepts, EventMachine.get_simultaneous_accept_count]
      end
    end

    def restore_process_state(saved)
      return unless saved

      kind, value = saved
      case kind
      when :nofile then Process.setrlimit(:NOFILE, *value)
      when :timers then EventMachine.set_max_timer_count(value)
      when :accepts then EventMachine.set_simultaneous_accept_count(value)
      end
    rescue StandardError
      nil # set_max_timer_count refuses inside a machine: nothing changed
    end

    # detach_fd hands the caller a descriptor it must close (unless it is
    # one of the test's own).
    def close_detached(fn, result)
      return unless %i[detach_fd].include?(fn) && result.is_a?(Integer) && result > 2
      return if @ios.any? { |io| !io.closed? && io.fileno == result }

      IO.for_fd(result, autoclose: true).close
    rescue StandardError
      nil
    end

    # ---- fixtures --------------------------------------------------------

    class FixtureUnavailable < StandardError; end

    def resolve(value)
      value.is_a?(Fx) ? make(value.kind) : value
    end

    def connection_object(sig)
      c = EventMachine::Connection.allocate
      c.instance_variable_set(:@signature, resolve(sig))
      c
    end

    def track(&blk)
      @cleanups << blk
    end

    def cleanup
      @cleanups.each do |blk|
        blk.call
      rescue StandardError
        nil
      end
      @cleanups.clear
    end

    def pipe
      r, w = IO.pipe
      @ios << r << w
      [r, w]
    end

    # Outside a reactor: signatures of the last fixtures made inside (they
    # name nothing live now), or numbers that never did.
    def stale(kind)
      @made.fetch(kind) do
        { conn: 2**32 + 1, attached: 2**32 + 2, udp: 2**32 + 3, listener: 1,
          file_watch: 2, pid_watch: 2**32 + 4, timer: 3, closed: 2**32 + 5,
          stopped_listener: 4, unwatched: 5, watch_only: 2**32 + 6 }.fetch(kind)
      end
    end

    def make(kind)
      case kind
      when :nothing then NOTHING
      when :pipe_fd then @pipe_r.fileno
      when :listen_fd then @tcp_server.fileno
      when :file_fd then @file_io.fileno
      when :file then @file
      when :sock_path then "s#{@n += 1}.sock"
      when :port then @port || 9
      when :pid then Process.pid
      when :nofile then Process.getrlimit(:NOFILE)[0]
      when :closed, :stopped_listener, :unwatched then @fixed.fetch(kind) { stale(kind) }
      else
        return stale(kind) unless @phase == :inside

        @made[kind] = make_live(kind)
      end
    end

    def make_live(kind)
      case kind
      when :conn
        c = EventMachine.connect("127.0.0.1", @port, Sink)
        track { c.close_connection }
        c.signature
      when :timer
        s = EventMachine.add_timer(600) {}
        track { EventMachine.cancel_timer(s) }
        s
      when :listener
        s = EventMachine.start_server("127.0.0.1", 0, Sink)
        track { EventMachine.stop_server(s) }
        s
      when :udp
        c = EventMachine.open_datagram_socket("127.0.0.1", 0, Sink)
        track { c.close_connection }
        c.signature
      when :watch_only
        r, = pipe
        c = EventMachine.watch(r, Sink)
        track { c.detach }
        c.signature
      when :attached
        r, = pipe
        c = EventMachine.attach(r, Sink)
        track { c.close_connection }
        c.signature
      when :file_watch
        c = EventMachine.watch_file(@file)
        track { c.stop_watching }
        c.signature
      when :pid_watch
        begin
          c = EventMachine.watch_process(Process.pid)
        rescue StandardError => e
          raise FixtureUnavailable, "watch_process: #{e.class}"
        end
        track { c.stop_watching }
        c.signature
      else
        raise ArgumentError, "no fixture #{kind}"
      end
    end

    # ---- phases ----------------------------------------------------------

    def outside(phase)
      @phase = phase
      groups.each { |g| g.each { |c| run_call(c) } }
    end

    def inside
      @phase = :inside
      @fixed = {}
      failure = nil
      EventMachine.run do
        EventMachine.error_handler { |e| @handled[e.class.name] += 1 }
        @listener = EventMachine.start_server("127.0.0.1", 0, Sink)
        @port = Socket.unpack_sockaddr_in(EventMachine.get_sockname(@listener))[0]
        prepare_fixed do
          run_groups(groups, 0) do
            echo_check { |err| failure = err }
          end
        end
      end
      failure
    end

    # Signatures of things closed before the sweep (their close completes in
    # a later turn).
    def prepare_fixed(&done)
      s = EventMachine.start_server("127.0.0.1", 0, Sink)
      EventMachine.stop_server(s)
      @fixed[:stopped_listener] = s
      w = EventMachine.watch_file(@file)
      w.stop_watching
      @fixed[:unwatched] = w.signature
      c = EventMachine.connect("127.0.0.1", @port, Module.new do
        define_method(:unbind) { |*| EventMachine.next_tick(&done) }
      end)
      @fixed[:closed] = c.signature
      c.close_connection
    end

    def run_groups(groups, i, &done)
      if i == groups.size
        cleanup
        done.call
        return
      end
      groups[i].each { |c| run_call(c) }
      cleanup
      EventMachine.next_tick { run_groups(groups, i + 1, &done) }
    end

    # The reactor still works after the sweep: a byte stream round trip.
    def echo_check(&failed)
      echo = Module.new do
        define_method(:receive_data) { |d| send_data(d) }
      end
      got = +""
      s = EventMachine.start_server("127.0.0.1", 0, echo)
      port = Socket.unpack_sockaddr_in(EventMachine.get_sockname(s))[0]
      guard = EventMachine.add_timer(10) do
        failed.call("no echo after the sweep")
        EventMachine.stop
      end
      EventMachine.connect("127.0.0.1", port, Module.new do
        define_method(:post_init) { send_data("ping after the sweep") }
        define_method(:receive_data) do |d|
          got << d
          next unless got == "ping after the sweep"

          EventMachine.cancel_timer(guard)
          puts "ECHO ok"
          EventMachine.stop
        end
      end)
    end

    def setup_io
      @file = File.expand_path("file.txt")
      File.write(@file, "some bytes\n")
      @file_io = File.open(@file)
      @pipe_r, @pipe_w = IO.pipe
      @tcp_server = TCPServer.new("127.0.0.1", 0)
    end

    def close_io
      ([@file_io, @pipe_r, @pipe_w, @tcp_server] + @ios).each do |io|
        io.close unless io.closed?
      rescue StandardError
        nil
      end
    end

    def summary
      "calls=#{@calls} skipped=#{@skipped} raised=#{@raised.values.sum} " \
        "(#{@raised.sort_by { |_, n| -n }.map { |k, n| "#{k} #{n}" }.join(', ')}) " \
        "handled=#{@handled.values.sum} nonstandard=#{@nonstandard.size}"
    end
  end

  # The child: ENGINE is libem or reference.
  def self.child(engine)
    $stdout.sync = true
    if engine == "libem"
      $LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
      require "libem/eventmachine"
    end
    require "eventmachine"
    skip = ENV["BAD_ARGS_SKIP"] ? File.readlines(ENV["BAD_ARGS_SKIP"], chomp: true) : []
    skip += CORE_BUGS if engine == "libem"
    sweep = Sweep.new(skip)
    fds0 = Sweep.fd_map
    sweep.setup_io
    sweep.outside(:before)
    failure = sweep.inside
    sweep.outside(:after)
    sweep.close_io
    GC.start
    fds1 = Sweep.fd_map
    puts "FAILURE #{failure}" if failure
    sweep.nonstandard.each { |n| puts "NONSTANDARD #{n}" }
    unless fds0 == fds1
      puts "FDS before: #{fds0.inspect}"
      puts "FDS after:  #{fds1.inspect}"
    end
    puts "DONE #{sweep.summary} fds=#{fds0.size}/#{fds1.size}"
  end

  # Runs the child in a temporary directory; returns [stdout, stderr,
  # Process::Status or nil (hung, killed after limit seconds)].
  def self.run_child(engine, limit, env = {})
    args = [RbConfig.ruby, __FILE__, "--child", engine]
    Dir.mktmpdir("bad-args") do |dir|
      err_path = File.join(dir, "stderr.txt")
      in_r, in_w = IO.pipe
      out_r, out_w = IO.pipe
      pid = Process.spawn(env, *args, chdir: dir, in: in_r, out: out_w,
                                      err: err_path, pgroup: true)
      [in_r, in_w, out_w].each(&:close) # the keyboard reads EOF
      reader = Thread.new { out_r.read }
      waiter = Process.detach(pid)
      unless waiter.join(limit)
        Process.kill(:KILL, -pid)
        waiter.join
      end
      out = reader.value
      out_r.close
      status = waiter.value
      status = nil if status.signaled? && status.termsig == Signal.list["KILL"]
      [out, File.read(err_path), status]
    end
  end
end

if $PROGRAM_NAME == __FILE__ && ARGV[0] == "--child"
  BadArguments.child(ARGV[1])
elsif defined?(EngineTest)
  class TestBadArguments < EngineTest
    # Seconds the child's whole sweep may take (it takes a few).
    CHILD_LIMIT = 20 * Float(ENV.fetch("EM_TEST_TIMEOUT_SCALE", "1"))

    def last_call(out)
      out.lines.reverse.find { |l| l.start_with?("CALL ") }.to_s.chomp
    end

    def test_every_native_function_survives_bad_arguments
      libem_only("bad arguments raise; Debian's engine aborts or segfaults on several")
      so = $LOADED_FEATURES.find { |f| f.start_with?("/") && f.end_with?("/rubyeventmachine.so") }
      out, err, status = BadArguments.run_child("libem", CHILD_LIMIT, "LIBEM_RUBY_EXT" => so)
      assert status, "the sweep hung (killed after #{CHILD_LIMIT} s) at: #{last_call(out)}"
      tail = err.lines.first(15).join
      assert !status.signaled?,
             "the sweep died of signal #{status.termsig} at: #{last_call(out)}\n#{tail}"
      assert status.success?, "the sweep failed (#{status.inspect}) at: #{last_call(out)}\n#{tail}"
      done = out.lines.grep(/\ADONE /).last.to_s
      assert_match(/nonstandard=0 /, done, out.lines.grep(/\ANONSTANDARD /).join)
      assert_empty out.lines.grep(/\AFAILURE /)
      assert_equal 1, out.lines.grep(/\AECHO ok/).size, "the reactor stopped working"
      fds = done[/fds=(\d+)\/(\d+)/] && [$1, $2]
      assert fds, done
      assert_equal fds[0], fds[1], out.lines.grep(/\AFDS /).join
      calls = done[/calls=(\d+)/, 1].to_i
      assert_operator calls, :>, 8000, done
      # Every call either returned or raised: none left unfinished.
      unfinished = out.lines.grep(/\ACALL /).reject { |l| l.include?(" -> ") }
      assert_empty unfinished
      assert_match(/ skipped=#{BadArguments::CORE_BUGS.size} /, done)
    end

    # invoke_popen checked only the arguments after the program (which
    # libem does not use): a program that is not a C string ran argv0.
    def test_invoke_popen_checks_the_program_too
      r = nil
      run_em do
        r = [[nil, "x"], ["a\0b", "x"], [Object.new, "x"]].map do |cmd|
          EM.invoke_popen(cmd)
        rescue StandardError => e
          e.class
        end
        EM.stop
      end
      assert_equal [TypeError, ArgumentError, TypeError], r
    end
  end
end
