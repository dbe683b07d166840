# frozen_string_literal: true

module Backport
  # The Backport API this library implements (castwide/backport 1.2), so a
  # Gemfile or a check such as `Backport::VERSION >= "1.2"` keeps working.
  VERSION = '1.2.0'
end
