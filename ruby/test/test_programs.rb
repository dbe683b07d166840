# frozen_string_literal: true
#
# test_programs.rb - EventMachine's own Ruby layer (em/*.rb) end to end, as
# unchanged programs use it, over real sockets, files and Unix sockets:
# FileStreamer (stream_file_data, small and chunked), the line and block
# protocols (LineText2, LineAndTextProtocol, LineProtocol) and
# ObjectProtocol / HeaderAndContentProtocol fed at arbitrary byte
# boundaries, Queue, Channel, Iterator, tick_loop, PeriodicTimer,
# DefaultDeferrable timeouts, Completion, defer, schedule, inactivity and
# pending-connect timeouts (a listener with a full backlog), Unix
# servers, STARTTLS in the middle of a plain exchange, proxies with a
# length (proxy_completed) and a target that goes away, SmtpServer talking
# to SmtpClient, and HttpClient2.

require "digest"
require "stringio"

class TestPrograms < EngineTest
  # Sends `chunks` one per reactor turn (next_tick), so the peer sees the
  # stream cut wherever the chunks and the kernel cut it.
  module ChunkSender
    def send_chunks(chunks, &after)
      return after&.call if chunks.empty?
      send_data(chunks.shift)
      EM.next_tick { send_chunks(chunks, &after) }
    end
  end

  # Cuts `data` into pieces of 1..max bytes (a deterministic pattern).
  def cut(data, seed, max)
    Pattern.chunks(data.b, seed, max)
  end

  def with_tmpdir
    dir = Dir.mktmpdir("em-prog")
    yield dir
  ensure
    FileUtils.rm_rf(dir) if dir
  end

  # ---- FileStreamer ----------------------------------------------------

  # A server that streams `path` to each client and records whether the
  # streamer's deferrable succeeded, and how often it found the
  # connection's outbound queue above FileStreamer's backpressure level
  # (the chunked path then waits a tick).
  module StreamServer
    def initialize(path, log)
      super()
      @path = path
      @log = log
    end

    def post_init
      # A small kernel buffer, and a reader that starts late, so that the
      # file cannot vanish into the kernel and the queue must back up.
      set_sock_opt(Socket::SOL_SOCKET, Socket::SO_SNDBUF, 16_384)
      streamer = stream_file_data(@path)
      streamer.callback do
        @log << :streamed
        close_connection_after_writing
      end
      streamer.errback { |e| @log << [:failed, e] }
    end

    def get_outbound_data_size
      n = super
      @backpressure = @log << :backpressure if n > EM::FileStreamer::BackpressureLevel && !@backpressure
      n
    end
  end

  # The reader: another process (a thread would wait for the GVL while the
  # streamer's next_tick polls keep the reactor busy) that reads in
  # random sizes after a pause and with small pauses, and prints how many
  # reads, bytes and their SHA-256.
  READER = <<~'RUBY'
    require "socket"
    require "digest"
    rng = Random.new(Integer(ARGV[1]))
    sha = Digest::SHA256.new
    n = reads = 0
    s = Socket.tcp("127.0.0.1", Integer(ARGV[0]))
    sleep 0.2
    loop do
      d = s.readpartial(1 + rng.rand(40_000))
      sha << d
      n += d.bytesize
      reads += 1
      sleep 0.001 if rng.rand(16).zero?
    rescue EOFError
      break
    end
    puts [reads, n, sha.hexdigest].join(" ")
  RUBY

  def stream_file(size, seed)
    with_tmpdir do |dir|
      path = File.join(dir, "f")
      data = Pattern.bytes(size, seed)
      File.binwrite(path, data)
      log = []
      out = nil
      run_em do
        _sig, port = server(Class.new(EM::Connection) do
          include StreamServer
          define_method(:unbind) { EM.stop }
        end, path, log)
        out = IO.popen([RbConfig.ruby, "-e", READER, port.to_s, seed.to_s])
      end
      reads, n, sha = Timeout.timeout(RUN_LIMIT) { out.read }.split
      out.close
      assert_true $?.success?
      assert_equal data.bytesize, Integer(n)
      assert_equal Digest::SHA256.hexdigest(data), sha, "streamed bytes differ"
      assert_equal 1, log.count(:streamed)
      [log, Integer(reads)]
    end
  end

  def test_stream_file_data_small_file
    log, = stream_file(10_000, 21)
    assert_equal [:streamed], log
  end

  def test_stream_file_data_large_file_in_chunks
    log, reads = stream_file(3 * 1024 * 1024, 22)
    assert_operator log.count(:backpressure), :>, 0, "the chunked path never waited"
    assert_operator reads, :>, 10
  end

  # ---- LineText2, LineAndTextProtocol, LineProtocol ---------------------

  # "LINE text" lines, "BLOCK n" followed by n binary bytes (text mode),
  # a "DELIM x" that changes the delimiter, and "END", after which the
  # rest of the stream is unlimited binary data until the peer closes.
  class LT2Server < EM::Connection
    include EM::Protocols::LineText2

    def initialize(log)
      super()
      @log = log
      @tail = +""
    end

    def receive_line(line)
      case line
      when /\ABLOCK (\d+)\z/
        set_text_mode(Integer(Regexp.last_match(1)))
      when /\ADELIM (.+)\z/
        set_delimiter(Regexp.last_match(1))
        @log << [:delim, Regexp.last_match(1)]
      when "END"
        @log << :end
        set_binary_mode
      else
        @log << [:line, line]
      end
    end

    def receive_binary_data(data)
      if @log.last == :end || @log.last == [:tail_started]
        @tail << data
        @log << [:tail_started] unless @log.last == [:tail_started]
      else
        @log << [:block, data.bytesize, Digest::SHA256.hexdigest(data)]
      end
    end

    def receive_end_of_binary_data
      @log << :end_of_block
    end

    def unbind
      super
      @log << [:tail, @tail.bytesize, Digest::SHA256.hexdigest(@tail)]
      EM.stop
    end
  end

  class Sender < EM::Connection
    include ChunkSender

    def initialize(chunks)
      super()
      @chunks = chunks
    end

    def connection_completed
      send_chunks(@chunks) { close_connection_after_writing }
    end
  end

  def test_line_text2_lines_blocks_and_delimiters_split_anywhere
    block1 = Pattern.bytes(5000, 31) # binary, with newlines in it
    block2 = "a line inside a block\n" * 50
    tail = Pattern.bytes(20_000, 32)
    stream = "LINE one\nLINE two\r\nBLOCK #{block1.bytesize}\n#{block1}" \
             "LINE after block\nBLOCK #{block2.bytesize}\n#{block2}BLOCK 0\n" \
             "DELIM ;;\nLINE x;;LINE y\n;;END;;#{tail}"
    [[5, 41], [13, 42], [700, 43]].each do |max, seed|
      log = []
      run_em do
        _sig, port = server(LT2Server, log)
        EM.connect("127.0.0.1", port, Sender, cut(stream, seed, max))
      end
      assert_equal [[:line, "LINE one"], [:line, "LINE two"],
                    [:block, block1.bytesize, Digest::SHA256.hexdigest(block1)],
                    :end_of_block, [:line, "LINE after block"],
                    [:block, block2.bytesize, Digest::SHA256.hexdigest(block2)],
                    :end_of_block, [:delim, ";;"], [:line, "LINE x"],
                    [:line, "LINE y\n"], :end, [:tail_started],
                    [:tail, tail.bytesize, Digest::SHA256.hexdigest(tail)]],
                   log, "chunks of up to #{max} bytes"
    end
  end

  # LineAndTextProtocol splits a whole read into lines before it calls
  # receive_line, so a set_binary_mode from there only applies to what
  # follows that read (EventMachine documents LineText2 as the correct
  # one). Programs using it have the peer wait for a go-ahead after the
  # line that switches modes; everything else is sent cut anywhere.
  class LATServer < EM::Protocols::LineAndTextProtocol
    def initialize(log)
      super()
      @log = log
    end

    def receive_line(line)
      if line =~ /\ABIN (\d+)\z/
        set_binary_mode(Integer(Regexp.last_match(1)))
        send_data("send\n")
      else
        @log << [:line, line]
        send_data("#{line.reverse}\n")
      end
    end

    def receive_binary_data(data)
      @log << [:binary, data.bytesize, Digest::SHA256.hexdigest(data)]
      send_data("got #{data.bytesize}\n")
    end

    def unbind
      super
      EM.stop
    end
  end

  # Sends each segment cut anywhere, the next one after each "send"
  # reply; closes once the replies end with `last`.
  class SegmentSender < EM::Connection
    include ChunkSender

    def initialize(segments, seed, replies, last)
      super()
      @segments = segments
      @seed = seed
      @replies = replies
      @last = last
      @sent = 0
    end

    def connection_completed
      next_segment
    end

    def next_segment
      seg = @segments.shift
      send_chunks(Pattern.chunks(seg, @seed += 1, 9)) if seg
    end

    def receive_data(data)
      @replies << data
      next_segment while @sent < @replies.scan("send\n").size && (@sent += 1)
      close_connection if @replies.end_with?(@last)
    end
  end

  def test_line_and_text_protocol_split_anywhere
    blob = Pattern.bytes(20_000, 33)
    segments = ["hello\nBIN #{blob.bytesize}\n", "#{blob}world\nBIN 3\n", "abcBIN 1\n", "\n"]
    log = []
    replies = +""
    run_em do
      _sig, port = server(LATServer, log)
      EM.connect("127.0.0.1", port, SegmentSender, segments, 44, replies, "got 1\n")
    end
    assert_equal [[:line, "hello"], [:binary, blob.bytesize, Digest::SHA256.hexdigest(blob)],
                  [:line, "world"], [:binary, 3, Digest::SHA256.hexdigest("abc")],
                  [:binary, 1, Digest::SHA256.hexdigest("\n")]], log
    assert_equal "olleh\nsend\ngot 20000\ndlrow\nsend\ngot 3\nsend\ngot 1\n", replies
  end

  # EventMachine's LineProtocol keeps its whole buffer when a read ends
  # exactly at a newline (it only replaces it with a partial line), so
  # the next read delivers those lines again, on either engine. Programs
  # that use it work when reads end inside lines: the chunks here never
  # end right after a newline except the last, and every read is made of
  # whole chunks.
  module LineProtocolServer
    include EM::Protocols::LineProtocol

    def initialize(log)
      super()
      @log = log
    end

    def receive_line(line)
      @log << line
      close_connection if line == "bye"
    end

    def unbind
      EM.stop
    end
  end

  def test_line_protocol_lines_split_inside_lines
    lines = (1..40).map { |i| "line #{i} " + ("x" * (i * 7)) } << "bye"
    stream = lines.map { |l| "#{l}\n" }.join
    # Merge any chunk that ends right after a newline with the next one.
    joined = []
    cur = +""
    cut(stream, 45, 30).each do |c|
      cur << c
      next if cur.end_with?("\n")
      joined << cur
      cur = +""
    end
    joined << cur unless cur.empty?
    assert_true joined[0...-1].none? { |c| c.end_with?("\n") }
    log = []
    run_em do
      _sig, port = server(LineProtocolServer, log)
      EM.connect("127.0.0.1", port, Sender, joined)
    end
    assert_equal lines, log
  end

  # ---- ObjectProtocol, HeaderAndContentProtocol -------------------------

  module ObjectServer
    include EM::Protocols::ObjectProtocol

    def receive_object(obj)
      send_object(obj.is_a?(Hash) ? obj.merge(seen: true) : [:echo, obj])
    end
  end

  class ObjectClient < EM::Connection
    include EM::Protocols::ObjectProtocol
    include ChunkSender

    def initialize(objects, got)
      super()
      @objects = objects
      @got = got
    end

    def connection_completed
      # The objects framed as send_object frames them, sent in pieces.
      stream = @objects.map do |o|
        d = Marshal.dump(o)
        [d.bytesize, d].pack("Na*")
      end.join
      send_chunks(Pattern.chunks(stream, 46, 300))
    end

    def receive_object(obj)
      @got << obj
      EM.stop if @got.size == @objects.size
    end
  end

  def test_object_protocol_round_trip
    big = Pattern.bytes(200_000, 34)
    objects = [{ n: 1, s: "small" }, [1, 2.5, nil, :sym], big, { list: (1..1000).to_a },
               "last"]
    got = []
    run_em do
      _sig, port = server(ObjectServer)
      EM.connect("127.0.0.1", port, ObjectClient, objects, got)
    end
    assert_equal [{ n: 1, s: "small", seen: true }, [:echo, [1, 2.5, nil, :sym]],
                  [:echo, big], { list: (1..1000).to_a, seen: true }, [:echo, "last"]], got
  end

  class HCServer < EM::Protocols::HeaderAndContentProtocol
    def initialize(log)
      super()
      @log = log
    end

    def receive_request(headers, content)
      @log << [headers_2_hash(headers), content]
      send_data("ok #{content.bytesize}\n")
    end

    def unbind
      EM.stop
    end
  end

  def test_header_and_content_protocol_split_anywhere
    body = Pattern.bytes(3000, 35)
    stream = "Subject: one\r\nContent-length: #{body.bytesize}\r\n\r\n#{body}" \
             "Subject: two\r\nX-Empty: yes\r\n\r\n"
    log = []
    run_em do
      _sig, port = server(HCServer, log)
      EM.connect("127.0.0.1", port, Sender, cut(stream, 47, 11))
    end
    assert_equal [[{ subject: "one", content_length: body.bytesize.to_s }, body],
                  [{ subject: "two", x_empty: "yes" }, ""]], log
  end

  # ---- Queue, Channel, Iterator, tick_loop, timers -----------------------

  def test_queue_and_channel
    log = []
    run_em do
      q = EM::Queue.new
      q.pop { |x| log << [:popped_early, x] }
      log << [:waiting, q.num_waiting]
      q.push(1, 2, 3)
      EM.next_tick do
        log << [:size, q.size]
        q.pop { |x| log << [:pop, x] }
        q.pop { |x| log << [:pop, x] }
        EM.next_tick do
          log << [:empty, q.empty?]
          ch = EM::Channel.new
          a = ch.subscribe { |m| log << [:a, m] }
          ch.subscribe { |m| log << [:b, m] }
          ch.push("one")
          EM.next_tick do
            ch.unsubscribe(a)
            log << [:subscribers, ch.num_subscribers]
            ch.push("two", "three")
            ch.pop { |m| log << [:once, m] }
            ch.push("four")
            EM.add_timer(0.05) do
              ch.push("five")
              EM.next_tick { EM.stop }
            end
          end
        end
      end
    end
    assert_equal [[:waiting, 1], [:popped_early, 1], [:size, 2], [:pop, 2], [:pop, 3],
                  [:empty, true], [:a, "one"], [:b, "one"], [:subscribers, 1],
                  [:b, "two"], [:b, "three"], [:b, "four"], [:once, "four"], [:b, "five"]], log
  end

  def test_iterator_with_concurrency_two
    in_flight = 0
    peak = 0
    order = []
    results = nil
    sum = nil
    run_em do
      EM::Iterator.new(1..8, 2).map(proc { |i, iter|
        in_flight += 1
        peak = [peak, in_flight].max
        order << i
        EM.add_timer(0.01 * (9 - i) / 4.0) do
          in_flight -= 1
          iter.return(i * i)
        end
      }, proc { |res|
        results = res
        EM::Iterator.new([1, 2, 3]).inject(0, proc { |acc, i, iter|
          EM.next_tick { iter.return(acc + i) }
        }, proc { |total|
          sum = total
          EM.stop
        })
      })
    end
    assert_equal (1..8).map { |i| i * i }, results
    assert_equal 2, peak
    assert_equal (1..8).to_a, order.sort
    assert_equal [1, 2], order.first(2)
    assert_equal 6, sum
  end

  def test_tick_loop_and_periodic_timer_interval_change
    ticks = 0
    stopped = false
    stamps = []
    run_em do
      tl = EM.tick_loop do
        ticks += 1
        :stop if ticks == 50
      end
      tl.on_stop { stopped = true }
      EM::Timer.new(0.01) { ticks += 1000 }.cancel
      pt = EM::PeriodicTimer.new(0.01) do
        stamps << EM.current_time
        pt.interval = 0.1 if stamps.size == 3
        if stamps.size == 5
          pt.cancel
          EM.add_timer(0.25) { EM.stop }
        end
      end
    end
    assert_equal 50, ticks
    assert_true stopped
    assert_equal 5, stamps.size
    gaps = stamps.each_cons(2).map { |a, b| b - a }
    assert_operator gaps[0], :<, 0.09
    assert_operator gaps[3], :>=, 0.09
  end

  def test_deferrable_timeout_completion_defer_and_schedule
    log = []
    run_em do
      d = EM::DefaultDeferrable.new
      d.timeout(0.05, :timed_out)
      d.errback { |why| log << [:errback, why] }
      d.callback { log << :never }

      ok = EM::DefaultDeferrable.new
      ok.timeout(5)
      ok.callback { |v| log << [:callback, v] }
      EM.add_timer(0.01) { ok.succeed(:early) }

      c = EM::Completion.new
      c.completion { |v| log << [:completion, c.state, v] }
      c.errback { log << :never }
      c.callback { |v| log << [:completed, v] }

      EM.defer(proc { Thread.current == Thread.main ? :main : 40 + 2 },
               proc { |r| log << [:deferred, r, Thread.current == Thread.main] })
      Thread.new { EM.schedule { log << [:scheduled, EM.reactor_thread?] } }

      EM.add_timer(0.1) do
        c.succeed(:done)
        c.succeed(:again)
        EM.next_tick { EM.stop }
      end
    end
    assert_include log, [:callback, :early]
    assert_include log, [:errback, :timed_out]
    assert_include log, [:deferred, 42, true]
    assert_include log, [:scheduled, true]
    assert_equal [[:completed, :done], [:completion, :succeeded, :done]],
                 log.select { |e| %i[completed completion].include?(e[0]) }
    assert_not_include log, :never
  end

  # ---- inactivity timeout on a live connection ---------------------------

  class IdleClient < EM::Connection
    def initialize(log)
      super()
      @log = log
    end

    def connection_completed
      @log << [:initial, comm_inactivity_timeout]
      send_data("ping")
    end

    def receive_data(data)
      @log << [:data, data]
      # Busy for a while, then idle: the timeout set now counts from the
      # last activity.
      self.comm_inactivity_timeout = 0.3
      @log << [:set, comm_inactivity_timeout]
      @t0 = Time.now
    end

    def unbind(reason = nil)
      @log << [:unbind, reason, EM::ERRNOS[reason.new.errno], Time.now - @t0]
      EM.stop
    end
  end

  def test_comm_inactivity_timeout_on_a_live_connection
    log = []
    run_em do
      _sig, port = server(EchoServer)
      EM.connect("127.0.0.1", port, IdleClient, log)
    end
    assert_equal [:initial, 0.0], log[0]
    assert_equal [:data, "ping"], log[1]
    assert_in_delta 0.3, log[2][1], 0.001
    assert_equal :unbind, log[3][0]
    assert_equal Errno::ETIMEDOUT, log[3][1]
    assert_equal Errno::ETIMEDOUT, log[3][2]
    assert_operator log[3][3], :>=, 0.28
    assert_operator log[3][3], :<, 3
  end

  # A listener whose accept queue is full (backlog 0, one connection
  # waiting, nobody accepting) drops further SYNs on Linux, so a connect
  # to it stays pending until the pending-connect timeout.
  def test_pending_connect_timeout_against_a_full_backlog
    listener = Socket.new(:INET, :STREAM)
    listener.bind(Addrinfo.tcp("127.0.0.1", 0))
    listener.listen(0)
    port = listener.local_address.ip_port
    fillers = 2.times.map do
      s = Socket.new(:INET, :STREAM)
      s.connect_nonblock(Addrinfo.tcp("127.0.0.1", port), exception: false)
      s
    end
    sleep 0.05
    reasons = []
    t0 = nil
    elapsed = nil
    run_em do
      t0 = Time.now
      c = EM.connect("127.0.0.1", port, Class.new(EM::Connection) do
        define_method(:connection_completed) { reasons << :connected }
        define_method(:unbind) do |reason = nil|
          elapsed = Time.now - t0
          reasons << reason
          EM.stop
        end
      end)
      c.pending_connect_timeout = 0.3
      reasons << [:timeout, c.pending_connect_timeout]
    end
    assert_equal [:timeout, Errno::ETIMEDOUT], [reasons[0][0], reasons[1]]
    assert_in_delta 0.3, reasons[0][1], 0.001 # Debian's engine keeps a float
    assert_equal 2, reasons.size
    assert_operator elapsed, :>=, 0.28
    assert_operator elapsed, :<, 3
  ensure
    fillers&.each(&:close)
    listener&.close
  end

  # ---- Unix domain sockets ------------------------------------------------

  def test_unix_server_echo_with_chunking_and_peername
    data = Pattern.bytes(150_000, 36)
    with_tmpdir do |dir|
      path = File.join(dir, "s.sock")
      got = +""
      names = []
      run_em do
        # Not `include EchoServer`: EventMachine finds the connection class
        # it made for EchoServer through the constant lookup and would use
        # that one instead of this module.
        EM.start_unix_domain_server(path, Module.new do
          define_method(:receive_data) { |d| send_data(d) }
          define_method(:post_init) { names << [:server_peer, get_peername] }
        end)
        EM.connect_unix_domain(path, Class.new(Sender) do
          define_method(:post_init) { names << [:client_peer_pending] }
          define_method(:connection_completed) do
            names << [:client_peer, get_peername]
            send_chunks(Pattern.chunks(data, 48, 5000))
          end
          define_method(:receive_data) do |d|
            got << d
            EM.stop if got.bytesize >= data.bytesize
          end
        end, [])
      end
      assert_true data == got
      client_peer = names.assoc(:client_peer)[1]
      assert_equal path, Socket.unpack_sockaddr_un(client_peer)
      server_peer = names.assoc(:server_peer)[1]
      assert_equal Socket::AF_UNIX, Addrinfo.new(server_peer).afamily
    end
  end

  # ---- STARTTLS in the middle of a plain exchange -------------------------

  class StartTLSServer < EM::Connection
    include EM::Protocols::LineText2

    def initialize(log)
      super()
      @log = log
      @got = +""
    end

    def receive_line(line)
      @log << [:server_line, line]
      return unless line == "STARTTLS"
      send_data("GO\n")
      start_tls
      set_binary_mode
    end

    def ssl_handshake_completed
      @log << :server_tls
    end

    def receive_binary_data(data)
      @got << data
      return unless @got.bytesize >= @log.first[1]
      @log << [:server_got, Digest::SHA256.hexdigest(@got)]
      send_data(@got.reverse)
    end
  end

  class StartTLSClient < EM::Connection
    include EM::Protocols::LineText2
    include ChunkSender

    def initialize(data, log)
      super()
      @data = data
      @log = log
      @got = +""
    end

    def connection_completed
      send_data("HELLO plain\nSTARTTLS\n")
    end

    def receive_line(line)
      @log << [:client_line, line]
      return unless line == "GO"
      start_tls
      set_binary_mode
    end

    def ssl_handshake_completed
      @log << :client_tls
      @log << [:ssl, get_cipher_protocol.is_a?(String)]
      send_chunks(Pattern.chunks(@data, 49, 3000))
    end

    def receive_binary_data(data)
      @got << data
      return unless @got.bytesize >= @data.bytesize
      @log << [:client_got, @got == @data.reverse]
      EM.stop
    end
  end

  def test_starttls_after_a_plain_line
    data = Pattern.bytes(100_000, 37)
    slog = [[:size, data.bytesize]]
    clog = []
    run_em do
      _sig, port = server(StartTLSServer, slog)
      EM.connect("127.0.0.1", port, StartTLSClient, data, clog)
    end
    assert_equal [[:size, data.bytesize], [:server_line, "HELLO plain"],
                  [:server_line, "STARTTLS"], :server_tls,
                  [:server_got, Digest::SHA256.hexdigest(data)]], slog
    assert_equal [[:client_line, "GO"], :client_tls, [:ssl, true], [:client_got, true]], clog
  end

  # ---- proxies: with a length, and to a target that goes away ------------

  module RecordingBackend
    def initialize(log, name)
      super()
      @log = log
      @name = name
      @got = +""
    end

    def receive_data(data)
      @got << data
      close_connection if @name == :closing # goes away at the first bytes
    end

    def unbind
      @log << [@name, @got]
    end
  end

  # Proxies exactly `length` bytes of what its client sends to backend A
  # (proxy_completed), answers the next bytes itself, then proxies to
  # backend B, which closes at once (proxy_target_unbound).
  module TwoStageProxy
    def initialize(a_port, b_port, length, log)
      super()
      @log = log
      @b_port = b_port
      @a = EM.connect("127.0.0.1", a_port)
      EM.enable_proxy(self, @a, 0, length)
      send_data("ready\n")
    end

    def proxy_completed
      @log << [:proxy_completed, get_proxied_bytes]
    end

    def proxy_target_unbound
      @log << [:target_unbound, get_proxied_bytes]
      close_connection
    end

    def receive_data(data)
      @log << [:own, data]
      @a.close_connection_after_writing
      proxy_incoming_to(EM.connect("127.0.0.1", @b_port))
      send_data("ready\n")
    end

    def unbind
      EM.add_timer(0.05) { EM.stop }
    end
  end

  class ProxyClient < EM::Connection
    include ChunkSender

    def initialize(stages)
      super()
      @stages = stages
    end

    def receive_data(data)
      data.scan("ready\n") { send_chunks(@stages.shift || []) }
    end
  end

  def test_proxy_with_a_length_then_to_a_target_that_goes_away
    payload = Pattern.bytes(50_000, 38)
    log = []
    run_em do
      _asig, aport = server(RecordingBackend, log, :a)
      _bsig, bport = server(RecordingBackend, log, :closing)
      fsig = EM.start_server("127.0.0.1", 0, TwoStageProxy, aport, bport, payload.bytesize, log)
      EM.connect("127.0.0.1", port_of(fsig), ProxyClient,
                 [Pattern.chunks(payload, 50, 4000) + ["after"], ["to b"]])
    end
    assert_equal [:proxy_completed, payload.bytesize], log.assoc(:proxy_completed)
    assert_equal [:own, "after"], log.assoc(:own)
    a_got = log.assoc(:a)[1]
    assert_equal payload.bytesize, a_got.bytesize
    assert_true payload == a_got
    assert_equal [:closing, "to b"], log.assoc(:closing)
    assert_equal [:target_unbound, 4], log.assoc(:target_unbound)
    assert_operator log.index(log.assoc(:target_unbound)), :>, log.index(log.assoc(:closing))
  end

  # ---- SMTP and HTTP protocol classes ------------------------------------

  class MailServer < EM::Protocols::SmtpServer
    def initialize(log)
      super()
      @log = log
      @data = +""
    end

    def receive_sender(sender)
      @log << [:from, sender]
      true
    end

    def receive_recipient(rcpt)
      @log << [:to, rcpt]
      true
    end

    def receive_data_chunk(lines)
      @data << lines.join("\n") << "\n"
      true
    end

    def receive_message
      @log << [:message, @data]
      true
    end
  end

  def test_smtp_server_and_client_deliver_one_mail
    log = []
    status = nil
    body = (1..300).map { |i| "line #{i} of the body" }.join("\r\n")
    run_em do
      _sig, port = server(MailServer, log)
      mail = EM::Protocols::SmtpClient.send(
        domain: "client.em.test", host: "127.0.0.1", port: port,
        from: "alice@em.test", to: ["bob@em.test", "carol@em.test"],
        header: { "Subject" => "test" }, body: body
      )
      mail.callback { status = :sent; EM.stop }
      mail.errback { |e| status = [:failed, e.code, e.message]; EM.stop }
    end
    assert_equal :sent, status
    assert_equal [:from, "<alice@em.test>"], log[0]
    assert_equal [[:to, "<bob@em.test>"], [:to, "<carol@em.test>"]], log[1, 2]
    message = log.assoc(:message)[1]
    assert_match(/^Subject: test$/, message)
    assert_include message, "line 1 of the body\n"
    assert_include message, "line 300 of the body\n"
  end

  module TinyHTTP
    def receive_data(data)
      (@req ||= +"") << data
      return unless @req.include?("\r\n\r\n")
      path = @req[/\AGET (\S+) /, 1]
      body = path == "/big" ? "z" * 100_000 : "you asked for #{path}"
      send_data("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" \
                "Content-Length: #{body.bytesize}\r\n\r\n")
      body.each_char.each_slice(7000) { |s| send_data(s.join) }
      @req = +""
    end
  end

  def test_http_client2_get
    results = []
    run_em do
      _sig, port = server(TinyHTTP)
      conn = silence_warnings { EM::Protocols::HttpClient2.connect("127.0.0.1", port) }
      conn.get("/hello").callback do |r|
        results << [r.status, r.headers["content-type"], r.content]
        conn.get("/big").callback do |r2|
          results << [r2.status, r2.content.bytesize]
          EM.stop
        end
      end
    end
    assert_equal [[200, ["text/plain"], "you asked for /hello"], [200, 100_000]], results
  end

  def silence_warnings
    old = $stderr
    $stderr = StringIO.new
    yield
  ensure
    $stderr = old
  end
end
