# frozen_string_literal: true
#
# real_programs.rb ENGINE [test-unit options] - real EventMachine programs
# from Debian, unchanged, on one engine (ctest ruby_thin on libem's,
# ruby_thin_reference on Debian's own), each as its own process:
#
#   - thin serving a hello-world Rack app (apps/hello.ru), driven by ab
#     (apache2-utils) with and without keep-alive: every request completes,
#     none fails, all are 2xx; SIGINT (thin's trap) stops it cleanly;
#   - an em-http-request client (apps/http_client.rb), on the same engine,
#     GETs from that thin and POSTs a 300 KB body it echoes back;
#   - an em-websocket echo server (apps/ws_echo_server.rb) answering a
#     WebSocket client written here.
#
# ENGINE is libem (ruby -I ruby/lib -rlibem/eventmachine, finding the build
# as runner.rb does; LIBEM_RUBY_EXT overrides) or reference (plain ruby).
# Exits 77 (ctest: skipped) when thin, ab, em-http-request or em-websocket
# is missing (scripts/deps.sh installs them).

require "rbconfig"
require "socket"
require "timeout"
require "tmpdir"
require "digest/sha1"
require "base64"

ENGINE = ARGV.shift
abort "usage: real_programs.rb libem|reference [test-unit options]" unless
  %w[libem reference].include?(ENGINE)

def find_command(name)
  ENV.fetch("PATH", "").split(File::PATH_SEPARATOR)
     .map { |d| File.join(d, name) }.find { |f| File.executable?(f) }
end

THIN = find_command("thin")
AB = find_command("ab")
missing = []
missing << "thin (Debian package thin)" unless THIN
missing << "ab (apache2-utils)" unless AB
%w[em-http em-websocket].each do |lib|
  ok = system(RbConfig.ruby, "-e", "require '#{lib}'", out: File::NULL, err: File::NULL)
  missing << "#{lib} (ruby-#{lib == 'em-http' ? 'em-http-request' : lib})" unless ok
end
unless missing.empty?
  puts "real_programs: SKIP missing #{missing.join(', ')}: run scripts/deps.sh"
  exit 77
end

require "test/unit"

class RealProgramsTest < Test::Unit::TestCase
  APPS = File.join(__dir__, "apps")
  LIB = File.expand_path("../lib", __dir__)
  LIMIT = Float(ENV.fetch("EM_TEST_RUN_LIMIT", "20"))

  def engine_args
    ENGINE == "libem" ? ["-I", LIB, "-rlibem/eventmachine"] : []
  end

  def free_port
    s = TCPServer.new("127.0.0.1", 0)
    s.addr[1]
  ensure
    s&.close
  end

  # Starts `ruby ENGINE_ARGS *args` with its output in a log, waits until
  # it accepts on port, yields, then stops it with SIGINT and asserts that
  # it exited cleanly. Returns the log.
  def with_program(port, *args)
    log = File.join(Dir.tmpdir, "libem-real-#{Process.pid}-#{port}.log")
    pid = spawn(RbConfig.ruby, *engine_args, *args, out: log, err: %i[child out],
                                                     chdir: APPS)
    begin
      wait_accepting(pid, port, log)
      yield
      Process.kill("INT", pid)
      status = Timeout.timeout(LIMIT) { Process.wait2(pid)[1] }
      pid = nil
      assert_true status.success?, "#{args.first}: #{status.inspect}\n#{File.read(log)}"
      File.read(log)
    ensure
      if pid
        Process.kill("KILL", pid)
        Process.wait(pid)
      end
      File.delete(log) if File.exist?(log)
    end
  end

  def wait_accepting(pid, port, log)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + LIMIT
    loop do
      begin
        TCPSocket.new("127.0.0.1", port).close
        return
      rescue SystemCallError
        nil
      end
      if Process.wait(pid, Process::WNOHANG)
        flunk "exited before accepting: #{$?.inspect}\n#{File.read(log)}"
      end
      flunk "not accepting on #{port} after #{LIMIT} s\n#{File.read(log)}" if
        Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      sleep 0.05
    end
  end

  def thin(port)
    [THIN, "-R", "hello.ru", "-a", "127.0.0.1", "-p", port.to_s, "-e", "production",
     "start"]
  end

  def http_get(port, path)
    Timeout.timeout(LIMIT) do
      sock = TCPSocket.new("127.0.0.1", port)
      sock.write("GET #{path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
      sock.read.split("\r\n\r\n", 2)
    ensure
      sock&.close
    end
  end

  # ab's report as a Hash of its "Name: value" lines.
  def ab(*args)
    out = Timeout.timeout(4 * LIMIT) do
      IO.popen([AB, *args], err: %i[child out], &:read)
    end
    assert_true $?.success?, "ab #{args.join(' ')}:\n#{out}"
    out.lines.grep(/:/).to_h { |l| l.split(":", 2).map(&:strip) }.merge("raw" => out)
  end

  def assert_ab_clean(report, n)
    assert_equal n.to_s, report["Complete requests"], report["raw"]
    assert_equal "0", report["Failed requests"], report["raw"]
    assert_equal "0", report.fetch("Non-2xx responses", "0"), report["raw"]
    assert_equal "14 bytes", report["Document Length"], report["raw"]
  end

  def test_thin_runs_on_this_engine_under_ab
    port = free_port
    log = with_program(port, *thin(port)) do
      head, body = http_get(port, "/engine")
      assert_match(%r{\AHTTP/1\.[01] 200}, head)
      assert_match(ENGINE == "libem" ? /\Alibem \d+\.\d+\.\d+\z/ : /\Areference\z/, body)
      assert_ab_clean(ab("-n", "2000", "-c", "20", "http://127.0.0.1:#{port}/"), 2000)
      report = ab("-k", "-n", "2000", "-c", "20", "http://127.0.0.1:#{port}/")
      assert_ab_clean(report, 2000)
      assert_equal "2000", report["Keep-Alive requests"], report["raw"]
    end
    assert_match(/Listening on 127\.0\.0\.1:#{port}.*Stopping/m, log)
  end

  def test_em_http_request_client_talks_to_thin
    port = free_port
    with_program(port, *thin(port)) do
      out = Timeout.timeout(LIMIT + 10) do
        IO.popen([RbConfig.ruby, *engine_args, File.join(APPS, "http_client.rb"),
                  port.to_s, "200", "10"], err: %i[child out], &:read)
      end
      assert_true $?.success?, out
      assert_equal "ok 200 1\n", out
    end
  end

  def test_em_websocket_echo_server
    port = free_port
    log = with_program(port, File.join(APPS, "ws_echo_server.rb"), port.to_s) do
      Timeout.timeout(LIMIT) do
        sock = TCPSocket.new("127.0.0.1", port)
        key = Base64.strict_encode64(Random.new(1).bytes(16))
        sock.write("GET /chat HTTP/1.1\r\nHost: 127.0.0.1:#{port}\r\nUpgrade: websocket\r\n" \
                   "Connection: Upgrade\r\nSec-WebSocket-Key: #{key}\r\n" \
                   "Sec-WebSocket-Version: 13\r\n\r\n")
        head = +""
        head << sock.readpartial(4096) until head.include?("\r\n\r\n")
        accept = Base64.strict_encode64(
          Digest::SHA1.digest(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
        )
        assert_match(/\AHTTP\/1\.1 101 /, head)
        assert_include head, "Sec-WebSocket-Accept: #{accept}\r\n"
        rest = head.split("\r\n\r\n", 2)[1].b
        ["hello", "x" * 70_000].each do |msg|
          sock.write(ws_frame(msg))
          reply, rest = ws_read(sock, rest)
          assert_equal "echo: #{msg}", reply
        end
        sock.close
      end
    end
    assert_match(/listening.*stopped/m, log)
  end

  # A masked text frame, as a client must send it (RFC 6455, 5.2).
  def ws_frame(text)
    data = text.b
    mask = Random.new(2).bytes(4)
    len = data.bytesize
    head = [0x81].pack("C")
    head << if len < 126 then [0x80 | len].pack("C")
            elsif len < 65_536 then [0x80 | 126, len].pack("Cn")
            else [0x80 | 127, len].pack("CQ>")
            end
    masked = data.bytes.each_with_index.map { |b, i| b ^ mask.getbyte(i % 4) }.pack("C*")
    head + mask + masked
  end

  # Reads one unmasked server frame; returns [payload, what followed it].
  def ws_read(sock, buf)
    buf << sock.readpartial(65_536) while buf.bytesize < 2
    len = buf.getbyte(1) & 0x7f
    off = 2
    if len == 126
      buf << sock.readpartial(65_536) while buf.bytesize < 4
      len = buf.byteslice(2, 2).unpack1("n")
      off = 4
    elsif len == 127
      buf << sock.readpartial(65_536) while buf.bytesize < 10
      len = buf.byteslice(2, 8).unpack1("Q>")
      off = 10
    end
    buf << sock.readpartial(65_536) while buf.bytesize < off + len
    assert_equal 0x81, buf.getbyte(0), "a final text frame"
    [buf.byteslice(off, len).force_encoding("UTF-8"), buf.byteslice(off + len..).b]
  end
end
