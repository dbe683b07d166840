# frozen_string_literal: true
#
# runner.rb ENGINE [test-unit options] - runs the EventMachine engine tests
# (ruby/test/test_*.rb) on one engine:
#
#   libem      libem's rubyeventmachine (ruby/lib/libem/eventmachine.rb
#              finds the build; LIBEM_RUBY_EXT overrides)
#   reference  Debian's own engine (ruby-eventmachine's rubyeventmachine.so)
#
# The tests are the same for both: the reference run proves they encode
# EventMachine's behaviour, not ours.

engine = ARGV.shift
case engine
when "libem"
  $LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
  require "libem/eventmachine"
when "reference"
  nil
else
  abort "usage: runner.rb libem|reference [test-unit options]"
end

require "eventmachine"
if engine == "libem" && !EM.const_defined?(:LIBEM_VERSION)
  abort "runner.rb: libem's engine did not load"
end
if engine == "reference" && EM.const_defined?(:LIBEM_VERSION)
  abort "runner.rb: the reference run loaded libem's engine"
end
$stderr.puts "runner.rb: engine #{engine}: " +
             $LOADED_FEATURES.grep(/rubyeventmachine\.so\z/).first.to_s

require_relative "helper"
Dir[File.join(__dir__, "test_*.rb")].sort.each { |f| require f }
