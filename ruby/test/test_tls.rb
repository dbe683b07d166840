# frozen_string_literal: true
#
# test_tls.rb - TLS through EventMachine's Connection#start_tls on both
# engines: a server with no certificate (the engine's default one), with
# certificate files and in-memory PEM strings, ssl_verify_peer accepting
# and rejecting, client certificates, SNI, protocol versions, the getters,
# and bytes in arbitrary chunks both ways.

require "openssl"

module TLSFixtures
  # A CA, and a server and a client certificate it signed (EC P-256,
  # made once per process; nothing on disk but the temporary files).
  def self.dir
    @dir ||= begin
      dir = Dir.mktmpdir("em-tls")
      at_exit { FileUtils.rm_rf(dir) }
      ca_key = OpenSSL::PKey::EC.generate("prime256v1")
      ca = cert("CN=em test CA", ca_key, nil, ca_key, ca: true)
      %w[server client].each do |name|
        key = OpenSSL::PKey::EC.generate("prime256v1")
        crt = cert("CN=#{name}.em.test", key, ca, ca_key)
        File.write(File.join(dir, "#{name}.key"), key.to_pem)
        File.write(File.join(dir, "#{name}.crt"), crt.to_pem)
      end
      File.write(File.join(dir, "ca.crt"), ca.to_pem)
      File.write(File.join(dir, "bad.key"), "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
      dir
    end
  end

  def self.cert(subject, key, issuer, issuer_key, ca: false)
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
    c.sign(issuer_key, OpenSSL::Digest.new("SHA256"))
    c
  end

  def self.path(name)
    File.join(dir, name)
  end
end

class TestTLS < EngineTest
  # Starts TLS with `opts` in post_init, records the callbacks, echoes or
  # collects, and runs `on` hooks.
  class Peer < EM::Connection
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

    def ssl_verify_peer(pem)
      @log << [:verify, pem.start_with?("-----BEGIN CERTIFICATE-----")]
      @hooks.fetch(:verify, true)
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

  def tls_pair(server_opts, client_opts, server_hooks: {}, client_hooks: {})
    slog = []
    clog = []
    client = nil
    run_em do
      _sig, port = server(Peer, server_opts, slog, server_hooks)
      client = EM.connect("127.0.0.1", port, Peer, client_opts, clog, client_hooks)
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
end
