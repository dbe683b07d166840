# frozen_string_literal: true
#
# test_tls.rb - TLS through EventMachine's Connection#start_tls on both
# engines: a server with no certificate (the engine's default one), with
# certificate files and in-memory PEM strings, ssl_verify_peer accepting
# and rejecting, client certificates, SNI, protocol versions, the getters,
# and bytes in arbitrary chunks both ways.

require "openssl"
require "pathname"

module TLSFixtures
  # A CA, and a server and a client certificate it signed (EC P-256,
  # made once per process; nothing on disk but the temporary files).
  def self.dir
    @dir ||= begin
      dir = Dir.mktmpdir("em-tls")
      at_exit { FileUtils.rm_rf(dir) }
      ca_key = OpenSSL::PKey::EC.generate("prime256v1")
      ca = cert("CN=em test CA", ca_key, nil, ca_key, ca: true)
      # A second CA nobody trusts signs "rogue", named as the server.
      rogue_ca_key = OpenSSL::PKey::EC.generate("prime256v1")
      rogue_ca = cert("CN=rogue CA", rogue_ca_key, nil, rogue_ca_key, ca: true)
      [["server", ca, ca_key], ["client", ca, ca_key], ["rogue", rogue_ca, rogue_ca_key]].each do |name, issuer, issuer_key|
        key = OpenSSL::PKey::EC.generate("prime256v1")
        cn = name == "rogue" ? "server" : name
        san = name == "client" ? nil : "DNS:server.em.test,DNS:localhost,IP:127.0.0.1"
        crt = cert("CN=#{cn}.em.test", key, issuer, issuer_key, san: san)
        File.write(File.join(dir, "#{name}.key"), key.to_pem)
        File.write(File.join(dir, "#{name}.crt"), crt.to_pem)
      end
      File.write(File.join(dir, "ca.crt"), ca.to_pem)
      File.write(File.join(dir, "bad.key"), "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
      dir
    end
  end

  def self.cert(subject, key, issuer, issuer_key, ca: false, san: nil)
    c = OpenSSL::X509::Certificate.new
    c.version = 2
    c.serial = rand(1 << 60)
    c.subject = OpenSSL::X509::Name.parse(subject)
    c.issuer = issuer ? issuer.subject : c.subject
    c.public_key = key
    c.not_before = Time.now - 60
    c.not_after = Time.now + 3600
    ef = OpenSSL::X509::ExtensionFactory.new(issuer || c, c)
    c.add_extension(ef.create_extension("basicConstraints", ca ? "CA:TRUE" : "CA:FALSE", true))
    c.add_extension(ef.create_extension("subjectAltName", san, false)) if san
    c.sign(issuer_key, OpenSSL::Digest.new("SHA256"))
    c
  end

  def self.path(name)
    File.join(dir, name)
  end
end

class TestTLS < EngineTest
  # Starts TLS with `opts` in post_init, records the callbacks, echoes or
  # collects, and runs `on` hooks. It has no ssl_verify_peer of its own
  # (EventMachine's stub answers nil); Peer has.
  class QuietPeer < EM::Connection
    attr_reader :log, :got

    def initialize(opts, log, hooks = {})
      super()
      @opts = opts
      @log = log
      @hooks = hooks
      @got = +""
    end

    def post_init
      start_tls(@opts)
    end

    def ssl_handshake_completed
      @log << :handshake
      @log << [:cipher, get_cipher_name.is_a?(String), get_cipher_bits.is_a?(Integer)]
      @log << [:protocol, get_cipher_protocol]
      @hooks[:handshake]&.call(self)
    end

    def receive_data(data)
      @got << data
      @hooks[:data]&.call(self, data)
    end

    def unbind(reason = nil)
      @log << [:unbind, reason]
      @hooks[:unbind]&.call(self, reason)
    end
  end

  class Peer < QuietPeer
    def ssl_verify_peer(pem)
      @log << [:verify, pem.start_with?("-----BEGIN CERTIFICATE-----")]
      @hooks.fetch(:verify, true)
    end
  end

  def tls_pair(server_opts, client_opts, server_hooks: {}, client_hooks: {},
               server_class: Peer, client_class: Peer)
    slog = []
    clog = []
    client = nil
    run_em do
      _sig, port = server(server_class, server_opts, slog, server_hooks)
      client = EM.connect("127.0.0.1", port, client_class, client_opts, clog, client_hooks)
      EM.add_timer(RUN_LIMIT - 1) { EM.stop }
    end
    [slog, clog, client]
  end

  def test_default_server_certificate_and_echo_in_chunks
    data = Pattern.bytes(200_000, 4)
    server_hooks = { data: ->(c, d) { c.send_data(d) } }
    peer_cert = nil
    client_hooks = {
      handshake: lambda { |c|
        peer_cert = c.get_peer_cert
        Pattern.chunks(data, 5, 3000).each { |piece| c.send_data(piece) }
      },
      data: ->(c, _d) { EM.stop if c.got.bytesize >= data.bytesize }
    }
    slog, clog, client = tls_pair({}, {}, server_hooks: server_hooks,
                                          client_hooks: client_hooks)
    assert_include slog, :handshake
    assert_include clog, :handshake
    assert_include clog, [:cipher, true, true]
    assert_true data == client.got
    assert_match(/\A-----BEGIN CERTIFICATE-----/, peer_cert)
    assert_not_include clog.map { |e| Array(e).first }, :verify # verify_peer was not asked
  end

  def test_certificate_files_and_verify_peer_accepting
    server_opts = { private_key_file: TLSFixtures.path("server.key"),
                    cert_chain_file: TLSFixtures.path("server.crt") }
    subject = nil
    client_hooks = {
      handshake: lambda { |c|
        subject = OpenSSL::X509::Certificate.new(c.get_peer_cert).subject.to_s
        EM.stop
      }
    }
    _slog, clog, = tls_pair(server_opts, { verify_peer: true },
                            client_hooks: client_hooks)
    assert_include clog, [:verify, true]
    assert_include clog, :handshake
    assert_equal "/CN=server.em.test", subject
  end

  def test_verify_peer_rejecting_fails_the_handshake
    server_opts = { private_key_file: TLSFixtures.path("server.key"),
                    cert_chain_file: TLSFixtures.path("server.crt") }
    client_hooks = { verify: false, unbind: ->(_c, _r) { EM.stop } }
    _slog, clog, = tls_pair(server_opts, { verify_peer: true },
                            client_hooks: client_hooks)
    assert_include clog, [:verify, true]
    assert_not_include clog, :handshake
    assert_equal :unbind, clog.last.first
  end

  def test_in_memory_pem_strings
    server_opts = { private_key: File.read(TLSFixtures.path("server.key")),
                    cert: File.read(TLSFixtures.path("server.crt")) }
    subject = nil
    client_hooks = {
      handshake: lambda { |c|
        subject = OpenSSL::X509::Certificate.new(c.get_peer_cert).subject.to_s
        EM.stop
      }
    }
    tls_pair(server_opts, {}, client_hooks: client_hooks)
    assert_equal "/CN=server.em.test", subject
  end

  def test_client_certificate_checked_by_the_server
    server_opts = { private_key_file: TLSFixtures.path("server.key"),
                    cert_chain_file: TLSFixtures.path("server.crt"),
                    verify_peer: true, fail_if_no_peer_cert: true }
    client_opts = { private_key_file: TLSFixtures.path("client.key"),
                    cert_chain_file: TLSFixtures.path("client.crt") }
    client_subject = nil
    server_hooks = {
      handshake: lambda { |c|
        client_subject = OpenSSL::X509::Certificate.new(c.get_peer_cert).subject.to_s
        EM.stop
      }
    }
    slog, = tls_pair(server_opts, client_opts, server_hooks: server_hooks)
    assert_include slog, [:verify, true]
    assert_equal "/CN=client.em.test", client_subject
  end

  def test_sni_hostname_reaches_the_server
    sni = nil
    server_hooks = { handshake: ->(c) { sni = c.get_sni_hostname; EM.stop } }
    tls_pair({}, { sni_hostname: "sni.em.test" }, server_hooks: server_hooks)
    assert_equal "sni.em.test", sni
  end

  def test_protocol_version_choice
    protocol = nil
    client_hooks = { handshake: ->(c) { protocol = c.get_cipher_protocol; EM.stop } }
    tls_pair({}, { ssl_version: %w[tlsv1_2] }, client_hooks: client_hooks)
    assert_equal "TLSv1.2", protocol
  end

  def test_getters_without_tls
    libem_only "TLS getters on a plain connection give nil (Debian's engine aborts)"
    r = nil
    run_em do
      _sig, port = server
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:connection_completed) do
          r = [get_peer_cert, get_cipher_name, get_cipher_protocol,
               get_cipher_bits, get_sni_hostname]
          EM.stop
        end
      end)
    end
    assert_equal [nil, nil, nil, nil, nil], r
  end

  def test_ssl_is_available
    assert_true EM.ssl?
  end

  def test_start_tls_argument_errors_from_ruby
    run_em do
      _sig, port = server
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:connection_completed) do
          begin
            start_tls(private_key_file: "/nonexistent/key.pem",
                      cert_chain_file: "/nonexistent/cert.pem")
          rescue EM::FileNotFoundException => e
            EM.stop
            raise unless e.message.include?("/nonexistent/")
          end
        end
      end)
    end
  end

  # ---- libem's secure verification (start_tls keys of its own) ----------

  def server_opts(name = "server", **more)
    { private_key_file: TLSFixtures.path("#{name}.key"),
      cert_chain_file: TLSFixtures.path("#{name}.crt") }.merge(more)
  end

  def stop_on_handshake
    { handshake: ->(_c) { EM.stop }, unbind: ->(_c, _r) { EM.stop } }
  end

  def handshake?(log)
    log.include?(:handshake)
  end

  def test_secure_name_and_ca_file_accept_the_right_server
    libem_only "start_tls(verify_hostname:, ca_file:) verifies chain and name"
    data = Pattern.bytes(50_000, 9)
    client_hooks = {
      handshake: ->(c) { Pattern.chunks(data, 9, 700).each { |piece| c.send_data(piece) } },
      data: ->(c, _d) { EM.stop if c.got.bytesize >= data.bytesize }
    }
    server_hooks = { data: ->(c, d) { c.send_data(d) } }
    _slog, clog, client = tls_pair(server_opts, { verify_hostname: "server.em.test",
                                                  ca_file: TLSFixtures.path("ca.crt") },
                                   server_hooks: server_hooks, client_hooks: client_hooks,
                                   client_class: QuietPeer)
    assert_true handshake?(clog)
    assert_true data == client.got
  end

  def test_secure_verify_hostname_true_checks_the_host_connected_to
    libem_only "verify_hostname: true checks the address given to EM.connect"
    ca = Pathname.new(TLSFixtures.path("ca.crt")) # a Pathname works as a String
    _slog, clog, = tls_pair(server_opts, { verify_hostname: true, ca_file: ca },
                            client_hooks: stop_on_handshake, client_class: QuietPeer)
    assert_true handshake?(clog)
  end

  def test_secure_verify_hostname_true_checks_the_name_connected_to
    libem_only "verify_hostname: true checks (and sends as SNI) the name given to EM.connect"
    results = [%w[server localhost], %w[client localhost]].map do |cert, _|
      slog = []
      clog = []
      sni = nil
      run_em do
        sig = EM.start_server("localhost", 0, QuietPeer, server_opts(cert), slog,
                              handshake: ->(c) { sni = c.get_sni_hostname; EM.stop })
        EM.connect("localhost", port_of(sig), QuietPeer,
                   { verify_hostname: true, ca_file: TLSFixtures.path("ca.crt") },
                   clog, unbind: ->(_c, _r) { EM.stop })
      end
      [handshake?(clog), sni]
    end
    assert_equal [true, "localhost"], results[0]
    assert_equal false, results[1][0] # client.crt does not name localhost
  end

  def test_secure_wrong_name_fails_even_if_ssl_verify_peer_accepts
    libem_only "a certificate OpenSSL rejects is rejected whatever ssl_verify_peer says"
    _slog, clog, = tls_pair(server_opts, { verify_hostname: "other.em.test",
                                           ca_file: TLSFixtures.path("ca.crt") },
                            client_hooks: stop_on_handshake)
    assert_false handshake?(clog)
    assert_equal :unbind, clog.last.first
    assert_not_nil clog.last[1] # an error, not a clean close
  end

  def test_secure_untrusted_chains_fail
    libem_only "the system CA store by default; a CA nobody trusts fails"
    # Our CA is not in the system store.
    _slog, clog, = tls_pair(server_opts, { verify_hostname: "server.em.test" },
                            client_hooks: stop_on_handshake, client_class: QuietPeer)
    assert_false handshake?(clog)
    # Right name, signed by a CA the client does not trust.
    _slog, clog, = tls_pair(server_opts("rogue"), { verify_hostname: "server.em.test",
                                                    ca_file: TLSFixtures.path("ca.crt") },
                            client_hooks: stop_on_handshake, client_class: QuietPeer)
    assert_false handshake?(clog)
  end

  def test_secure_ssl_verify_peer_is_asked_and_may_reject
    libem_only "ssl_verify_peer pins on top of the secure verification"
    opts = { verify_hostname: "server.em.test", ca_file: TLSFixtures.path("ca.crt") }
    _slog, clog, = tls_pair(server_opts, opts, client_hooks: stop_on_handshake)
    assert_true handshake?(clog)
    assert_equal [[:verify, true]] * 2, clog.select { |e| Array(e).first == :verify } # CA, server
    _slog, clog, = tls_pair(server_opts, opts, client_hooks: stop_on_handshake.merge(verify: false))
    assert_include clog, [:verify, true]
    assert_false handshake?(clog)
  end

  def test_secure_server_verifies_client_certificates_against_ca_file
    libem_only "a server's ca_file verifies client certificates without ssl_verify_peer"
    opts = server_opts(verify_peer: true, fail_if_no_peer_cert: true, ca_file: TLSFixtures.path("ca.crt"))
    slog, = tls_pair(opts, { private_key_file: TLSFixtures.path("client.key"),
                             cert_chain_file: TLSFixtures.path("client.crt") },
                     server_hooks: stop_on_handshake, server_class: QuietPeer)
    assert_true handshake?(slog)
    slog, = tls_pair(opts, { private_key_file: TLSFixtures.path("rogue.key"),
                             cert_chain_file: TLSFixtures.path("rogue.crt") },
                     server_hooks: stop_on_handshake, server_class: QuietPeer)
    assert_false handshake?(slog)
  end

  # The portable recipe (docs/ruby.md): verify_peer too, and no
  # ssl_verify_peer of the program's own. libem verifies chain and name;
  # Debian's engine ignores the new keys and its ssl_verify_peer stub
  # rejects, so the handshake fails closed there rather than open.
  def test_secure_keys_with_verify_peer_fail_closed_on_the_reference
    _slog, clog, = tls_pair(server_opts, { verify_peer: true, verify_hostname: "server.em.test",
                                           ca_file: TLSFixtures.path("ca.crt") },
                            client_hooks: stop_on_handshake, client_class: QuietPeer)
    assert_equal libem?, handshake?(clog)
  end

  def test_secure_key_errors
    libem_only "libem checks its own start_tls keys"
    errors = []
    run_em do
      _sig, port = server
      EM.connect("127.0.0.1", port, Module.new do
        define_method(:connection_completed) do
          [{ verify_hostname: 5 }, { ca_file: "/nonexistent/ca.pem" }].each do |opts|
            start_tls(opts)
          rescue TypeError, EM::FileNotFoundException => e
            errors << [e.class, e.message]
          end
          EM.stop
        end
      end)
    end
    assert_equal TypeError, errors[0][0]
    assert_equal [EM::FileNotFoundException, "Could not find /nonexistent/ca.pem for start_tls"], errors[1]
  end
end
