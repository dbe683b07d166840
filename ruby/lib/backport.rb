# frozen_string_literal: true

# backport.rb - Backport's API (castwide/backport 1.2: adapters, TCP, stdio and
# interval servers, a machine that runs them) written on EventMachine's public
# Ruby API, so it runs on Debian's EventMachine engine today and on libem's
# (`ruby -rlibem/eventmachine`) unchanged.
#
# Why on EventMachine rather than Backport's own design (a thread per client,
# a thread per server, a machine that sleeps in 0.1 s steps): one reactor
# thread waits for every socket and timer, so accepts are not capped by a
# sleep, a connection costs no thread, and `closing`, `stop` and a peer's
# disconnect are the reactor's unbind, which happens exactly once. What is
# kept is Backport's surface: the same classes, methods and keywords, and
# adapters written for Backport run unchanged. docs/ruby-backport.md lists
# what differs and the Backport bugs this library does not have.
require 'logger'
require 'eventmachine'
require 'backport/version'

module Backport
  autoload :Adapter, 'backport/adapter'
  autoload :Client,  'backport/client'
  autoload :Machine, 'backport/machine'
  autoload :Server,  'backport/server'
  autoload :Reactor, 'backport/reactor'

  class << self
    # Prepare a server on stdin and stdout. It starts when the machine runs
    # (at once if it is running).
    #
    # @param adapter [Class, Module] a Backport::Adapter subclass or a module
    # @return [Server::Stdio]
    def prepare_stdio_server adapter: Adapter
      machine.prepare Server::Stdio.new(adapter: adapter)
    end

    # Prepare a TCP server. The port is bound here (an address in use raises
    # at once); connections are accepted once the machine runs.
    #
    # @param host [String]
    # @param port [Integer] 0 picks a free port (Server::Tcpip#port tells)
    # @param adapter [Class, Module]
    # @return [Server::Tcpip]
    def prepare_tcp_server host: 'localhost', port: 1117, adapter: Adapter
      machine.prepare Server::Tcpip.new(host: host, port: port, adapter: adapter)
    end

    # Prepare a block to run every `period` seconds, first one period after
    # the machine starts. The block gets the Server::Interval (to stop it).
    #
    # @param period [Numeric] seconds
    # @return [Server::Interval]
    def prepare_interval period, &block
      machine.prepare Server::Interval.new(period, &block)
    end

    # Run the machine: the block runs first (prepare servers there), then the
    # servers start and the call blocks until the machine stops.
    #
    # @return [void]
    def run(&block)
      machine.run(&block)
    end

    # Stop the machine: every server stops and every client is closed. Safe
    # from any thread and from a signal trap.
    #
    # @return [void]
    def stop
      machine.stop
    end

    # The library's logger (stderr, WARN, progname "Backport").
    #
    # @return [Logger]
    def logger
      @logger ||= Logger.new($stderr, level: Logger::WARN, progname: 'Backport')
    end

    # Replace the logger (nil restores the default).
    attr_writer :logger

    private

    # @return [Machine]
    def machine
      @machine ||= Machine.new
    end
  end
end
