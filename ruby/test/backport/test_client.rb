# frozen_string_literal: true

require_relative 'helper'

# Backport::Client: what it accepts as an adapter, and a client driven by
# hand over pipes.
class TestClient < BackportTest::TestCase
  def test_accepts_a_module
    mod = Module.new
    client = Backport::Client.new(nil, nil, mod)
    assert_kind_of Backport::Adapter, client.adapter
    assert_kind_of mod, client.adapter
  end

  def test_accepts_an_adapter_subclass_and_adapter_itself
    klass = Class.new(Backport::Adapter)
    assert_instance_of klass, Backport::Client.new(nil, nil, klass).adapter
    assert_instance_of Backport::Adapter, Backport::Client.new(nil, nil, Backport::Adapter).adapter
  end

  def test_rejects_anything_else_with_type_error
    [Object, String, Class.new, Object.new, nil, 'Adapter', :adapter, Backport::Adapter.new(StringIO.new)].each do |bad|
      error = assert_raise(TypeError, bad.inspect) { Backport::Client.new(nil, nil, bad) }
      assert_match(/not a valid Backport adapter/, error.message)
    end
  end

  def test_module_methods_override_the_adapters
    mod = Module.new do
      def write(data)
        super("<#{data}>")
      end
    end
    out = StringIO.new
    adapter = Backport::Client.class_for_module(mod).new(out)
    adapter.write('x')
    assert_equal '<x>', out.string
  end

  # One class per module, shared by its clients.
  def test_module_adapters_share_a_class
    mod = Module.new
    a = Backport::Client.new(nil, nil, mod).adapter
    b = Backport::Client.new(nil, nil, mod).adapter
    assert_same a.class, b.class
    assert_true a.class < Backport::Adapter
  end

  # A module with an extend hook is extended into each adapter, as
  # Backport does.
  def test_module_with_extended_hook_is_extended
    seen = []
    mod = Module.new
    mod.define_singleton_method(:extended) { |base| seen << base }
    adapter = Backport::Client.new(nil, nil, mod).adapter
    assert_equal [adapter], seen
    assert_instance_of Backport::Adapter, adapter
    assert_kind_of mod, adapter
  end

  def test_start_on_ios_without_a_reactor_raises
    r, w = IO.pipe
    client = Backport::Client.new(r, w, Backport::Adapter)
    assert_raise(RuntimeError) { client.start }
    assert_true client.stopped?
  ensure
    r&.close
    w&.close
  end

  # A client made and started by hand over pipes: opening, receiving in
  # pieces, write, stop, closing once, observers notified.
  def test_client_over_pipes_driven_by_hand
    events = BackportTest::Events.new
    in_r, in_w = IO.pipe
    out_r, out_w = IO.pipe
    client = Backport::Client.new(in_r, out_w, recorder(events, echo: true))
    observer = Object.new
    notified = Queue.new
    observer.define_singleton_method(:update) { |c| notified << c }
    client.add_observer(observer)
    assert_true client.stopped?
    machine, thread = start_machine { client.start }
    assert_false client.stopped?
    assert_equal 1, count(events, :opening)
    assert_nil client.tick
    in_w.write('hel')
    in_w.flush
    sleep 0.05
    in_w.write('lo')
    assert_equal 'hello', read_bytes(out_r, 5)
    client.adapter.write_line('bye')
    assert_equal "bye\n", read_bytes(out_r, 4)
    client.stop
    assert_same client, pop_with_timeout(notified, 5, 'the client to end')
    assert_true client.stopped?
    assert_equal 1, count(events, :closing)
    assert_equal 'hello', received(events)
    stop_machine(machine, thread)
    assert_equal 1, count(events, :closing)
  ensure
    [in_r, in_w, out_r, out_w].each { |io| io&.close unless io&.closed? }
  end
end
