# echo.rb PORT - the Ruby echo server of bench/ruby_run.sh: an ordinary
# EventMachine program, the same on both engines (the script activates
# libem's with -rlibem/eventmachine, or not). EM.epoll as thin and any
# server that cares would call it: Debian's engine uses select() without.
# SIGTERM stops it.
require "eventmachine"

module Echo
  def receive_data(data)
    send_data(data)
  end
end

EventMachine.epoll
EventMachine.run do
  trap("TERM") { EventMachine.stop }
  EventMachine.start_server("127.0.0.1", Integer(ARGV.fetch(0)), Echo)
end
