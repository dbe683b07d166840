# frozen_string_literal: true

require_relative 'helper'

# Backport::Adapter on its own, over a plain IO (no reactor involved).
class TestAdapter < BackportTest::TestCase
  # An output that records writes and flushes.
  class Out
    attr_reader :data, :flushes

    def initialize
      @data = +''
      @flushes = 0
    end

    def write(str)
      @data << str
      str.bytesize
    end

    def flush
      @flushes += 1
    end
  end

  def test_callbacks_default_to_nothing
    adapter = Backport::Adapter.new(Out.new)
    assert_nil adapter.opening
    assert_nil adapter.receiving('x')
    assert_nil adapter.closing
  end

  def test_write_sends_and_flushes
    out = Out.new
    adapter = Backport::Adapter.new(out)
    assert_nil adapter.write('abc')
    adapter.write("\x00\xff".b)
    assert_equal "abc\x00\xff".b, out.data.b
    assert_equal 2, out.flushes
  end

  def test_write_line_appends_newline_unless_there
    out = Out.new
    adapter = Backport::Adapter.new(out)
    adapter.write_line('a')
    adapter.write_line("b\n")
    adapter.write_line('')
    adapter.write_line("c\r\n")
    adapter.write_line("d\ne")
    adapter.write_line(nil)
    adapter.write_line(42)
    assert_equal "a\nb\n\nc\r\nd\ne\n\n42\n", out.data
  end

  def test_write_to_an_object_without_flush
    sink = []
    def sink.write(s) = push(s)
    adapter = Backport::Adapter.new(sink)
    adapter.write('x')
    assert_equal ['x'], sink
  end

  def test_close_runs_closing_once_and_stops_writes
    out = Out.new
    calls = 0
    adapter = Backport::Adapter.new(out)
    adapter.define_singleton_method(:closing) { calls += 1 }
    assert_false adapter.closed?
    adapter.close
    adapter.close
    assert_true adapter.closed?
    assert_equal 1, calls
    adapter.write('late')
    assert_equal '', out.data
  end

  def test_remote_defaults_to_an_empty_hash
    assert_equal({}, Backport::Adapter.new(Out.new).remote)
    remote = { family: 'AF_INET', address: '127.0.0.1', hostname: '127.0.0.1', port: 5 }
    assert_equal remote, Backport::Adapter.new(Out.new, remote).remote
  end

  # An adapter's own instance variables do not collide with the library's.
  def test_adapter_instance_variables_are_its_own
    klass = Class.new(Backport::Adapter) do
      def opening
        @out = :mine
        @remote = :mine
        @closed = :mine
        @data = :mine
      end
    end
    out = Out.new
    adapter = klass.new(out, { port: 1 })
    adapter.opening
    adapter.write('still works')
    assert_equal 'still works', out.data
    assert_equal({ port: 1 }, adapter.remote)
    assert_false adapter.closed?
  end

  def test_subclass_initialize_with_super
    klass = Class.new(Backport::Adapter) do
      attr_reader :extra

      def initialize(output, remote = {})
        super
        @extra = remote[:port]
      end
    end
    adapter = klass.new(Out.new, { port: 7 })
    assert_equal 7, adapter.extra
    assert_equal 7, adapter.remote[:port]
  end
end
