# frozen_string_literal: true

# all.rb - loads every test_*.rb beside it; test-unit runs them at exit.
# ruby -I ruby/lib -I ruby/test/backport ruby/test/backport/all.rb [test-unit options]
require_relative 'helper'

engine = if defined?(EventMachine::LIBEM_VERSION)
           "libem's engine #{EventMachine::LIBEM_VERSION}"
         else
           "EventMachine's engine #{EventMachine::VERSION}"
         end
warn "Backport #{Backport::VERSION} tests on #{engine}, ruby #{RUBY_VERSION}"
Dir[File.join(__dir__, 'test_*.rb')].sort.each { |f| require f }
