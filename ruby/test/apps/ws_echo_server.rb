# An ordinary em-websocket echo server, as in em-websocket's README; it
# knows nothing of libem. Usage: ws_echo_server.rb PORT
require "em-websocket"

EventMachine.run do
  trap("INT") { EventMachine.stop }
  EventMachine::WebSocket.run(host: "127.0.0.1", port: Integer(ARGV.fetch(0))) do |ws|
    ws.onmessage { |msg| ws.send("echo: #{msg}") }
  end
  puts "listening"
  $stdout.flush
end
puts "stopped"
