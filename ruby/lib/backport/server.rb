# frozen_string_literal: true

module Backport
  # Backport's servers: a TCP listener, stdin/stdout, an interval timer, and
  # Base for servers of one's own.
  module Server
    autoload :Base,        'backport/server/base'
    autoload :Connectable, 'backport/server/connectable'
    autoload :Stdio,       'backport/server/stdio'
    autoload :Tcpip,       'backport/server/tcpip'
    autoload :Interval,    'backport/server/interval'
  end
end
