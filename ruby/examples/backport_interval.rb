# frozen_string_literal: true

# backport_interval.rb - the interval server from Backport's README, on
# this repository's Backport library:
#
#   ruby -I ruby/lib ruby/examples/backport_interval.rb
#
# Prints "tick" once per second until stopped. What it adds to the README's
# program: stdout is written at once (not held in a buffer when it is a
# pipe), and Ctrl-C or SIGTERM stop it cleanly.
require 'backport'

$stdout.sync = true
%w[INT TERM].each { |sig| trap(sig) { Backport.stop } }

Backport.run do
  Backport.prepare_interval 1 do
    puts "tick"
  end
end
