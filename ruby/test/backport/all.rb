# frozen_string_literal: true

# all.rb - loads every test_*.rb beside it; test-unit runs them at exit.
# ruby -I ruby/lib -I ruby/test/backport ruby/test/backport/all.rb [test-unit options]
Dir[File.join(__dir__, 'test_*.rb')].sort.each { |f| require f }
