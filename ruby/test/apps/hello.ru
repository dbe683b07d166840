# A hello-world Rack app, as in Rack's and thin's READMEs; it knows nothing
# of libem. `thin -R hello.ru start`.
#   GET /        "Hello, world!\n"
#   GET /engine  which EventMachine engine runs underneath: "libem X.Y.Z"
#                or "reference" (Debian's)
#   POST /echo   the request body
ENGINE = defined?(EM::LIBEM_VERSION) ? "libem #{EM::LIBEM_VERSION}" : "reference"

run lambda { |env|
  body = case env["PATH_INFO"]
         when "/engine" then ENGINE
         when "/echo" then env["rack.input"].read
         else "Hello, world!\n"
         end
  [200, { "Content-Type" => "text/plain", "Content-Length" => body.bytesize.to_s }, [body]]
}
