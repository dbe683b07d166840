# An ordinary EventMachine echo server, as in EventMachine's getting-started
# guide; it knows nothing of libem. Usage: echo_server.rb PORT
require "eventmachine"

module EchoServer
  def post_init
    puts "-- someone connected to the echo server!"
  end

  def receive_data(data)
    send_data ">>> you sent: #{data}"
    close_connection if data =~ /quit/i
  end

  def unbind
    puts "-- someone disconnected from the echo server!"
  end
end

EventMachine.run do
  trap("INT") { EventMachine.stop }
  EventMachine.start_server "127.0.0.1", Integer(ARGV.fetch(0)), EchoServer
  puts "listening"
  $stdout.flush
end
puts "stopped"
