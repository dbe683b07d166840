# An ordinary em-http-request client; it knows nothing of libem.
# Usage: http_client.rb PORT N CONCURRENCY
# GETs http://127.0.0.1:PORT/ N times, CONCURRENCY at a time, each on its
# own connection, then POSTs a 300 KB body to /echo and checks it comes
# back. Prints "ok GETS POSTS" and exits 0, or says what went wrong and
# exits 1.
require "eventmachine"
require "em-http"

port = Integer(ARGV.fetch(0))
total = Integer(ARGV.fetch(1, "100"))
concurrency = Integer(ARGV.fetch(2, "10"))
base = "http://127.0.0.1:#{port}"
body = Array.new(300_000) { |i| (97 + i % 26).chr }.join
failures = []
done = 0
posted = 0

EventMachine.run do
  finish = lambda do
    EventMachine.stop if done == total && posted == 1
  end
  post = lambda do
    http = EventMachine::HttpRequest.new("#{base}/echo").post(body: body)
    http.callback do
      failures << "POST /echo: #{http.response_header.status}, #{http.response.bytesize} bytes back" unless
        http.response_header.status == 200 && http.response == body
      posted += 1
      finish.call
    end
    http.errback { failures << "POST /echo: #{http.error}"; posted += 1; finish.call }
  end
  started = 0
  get = lambda do
    next if started == total
    started += 1
    http = EventMachine::HttpRequest.new("#{base}/").get
    http.callback do
      failures << "GET /: #{http.response_header.status} #{http.response.inspect}" unless
        http.response_header.status == 200 && http.response == "Hello, world!\n"
      done += 1
      done == total ? post.call : get.call
    end
    http.errback { failures << "GET /: #{http.error}"; done += 1; done == total ? post.call : get.call }
  end
  concurrency.times { get.call }
  EventMachine.add_timer(20) { failures << "timed out"; EventMachine.stop }
end

if failures.empty?
  puts "ok #{done} #{posted}"
else
  puts failures.first(5)
  exit 1
end
