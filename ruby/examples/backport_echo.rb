# frozen_string_literal: true

# backport_echo.rb - the echo server from Backport's README, on this
# repository's Backport library:
#
#   ruby -I ruby/lib ruby/examples/backport_echo.rb [PORT]
#
# It listens on localhost (port 8000 unless PORT is given), prints
# "Opening a connection" and "Closing a connection" as clients come and go,
# and answers every piece of input with "Client sent: " and the input.
# What it adds to the README's program, for a program run from a terminal or
# by a test: stdout is written at once (not held in a buffer when it is a
# pipe), and Ctrl-C or SIGTERM stop it cleanly (Backport.stop closes the
# clients, each printing its "Closing a connection").
require 'backport'

$stdout.sync = true

module MyAdapter
  def opening
    puts "Opening a connection"
  end

  def closing
    puts "Closing a connection"
  end

  def receiving data
    write "Client sent: #{data}"
  end
end

port = Integer(ARGV.fetch(0, 8000))
%w[INT TERM].each { |sig| trap(sig) { Backport.stop } }

Backport.run do
  Backport.prepare_tcp_server(host: 'localhost', port: port, adapter: MyAdapter)
end
