"""The collector pause of loading (sv_engine/gc_pause.py): off inside, frozen and back on after, nested
or overlapping blocks (two threads) resuming only when the last ends, and restored when a block raises."""

from __future__ import annotations

import gc
import threading

import pytest

from sv_engine.gc_pause import gc_paused


@pytest.fixture(autouse=True)
def _collector_on():
    gc.enable()
    yield
    gc.unfreeze()
    gc.enable()


def test_paused_inside_then_frozen_and_resumed() -> None:
    gc.unfreeze()
    with gc_paused(freeze=True):
        assert not gc.isenabled()
        keep = [[i] for i in range(1000)]  # lists are tracked by the collector
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(keep), "what existed at the end is in the permanent generation"
    del keep


def test_a_library_block_only_pauses_so_its_cycles_are_collected_later() -> None:
    """Cycles made while paused (an import's traceback pinning its caller's frame) must stay
    collectable unless a block asked to freeze; one nested inner freeze request is enough."""
    import weakref

    class Node:
        pass

    gc.unfreeze()
    with gc_paused():
        node = Node()
        node.me = node
        gone = weakref.ref(node)
        del node
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None, "a cycle made inside a plain block was frozen"
    with gc_paused(), gc_paused(freeze=True):
        pass
    assert gc.get_freeze_count() > 0, "an inner block's freeze request applies at the outermost end"


def test_nested_blocks_resume_at_the_outermost_end() -> None:
    with gc_paused():
        with gc_paused():
            pass
        assert not gc.isenabled(), "the inner block's end must not resume collection"
    assert gc.isenabled()


def test_raised_block_restores_collection() -> None:
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("load failed")
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled() -> None:
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()


def test_blocks_of_two_threads_resume_when_the_last_ends() -> None:
    """Thread A opens, B opens, A closes (still paused: B loads), B closes: collection is back on."""
    a_open, b_open, a_closed = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a() -> None:
        with gc_paused():
            a_open.set()
            b_open.wait(5)
        a_closed.set()

    def b() -> None:
        a_open.wait(5)
        with gc_paused():
            b_open.set()
            a_closed.wait(5)
            seen["after A closed"] = gc.isenabled()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"after A closed": False}
    assert gc.isenabled()


def test_a_dropped_pipeline_is_freed(random_data_dir) -> None:  # noqa: ANN001
    """A process may build several pipelines (the engine bench's variants, a service worker switching
    models): a dropped one must be freed, which a freeze of the load's cyclic garbage (an import's
    traceback pins build_pipeline's frame) prevented. Tiny models on the CPU, after a real edit."""
    import weakref

    from sv_engine.benchmarks.e2e import edit_params
    from sv_engine.export.compose import RuntimeConfig, build_pipeline

    runtime = build_pipeline(RuntimeConfig(tiny=True, device="cpu", backend="torch"))
    runtime.pipeline.edit(random_data_dir, edit_params(2, 0.8, tiny=True))
    unet = weakref.ref(runtime.components.unet)
    pipeline = weakref.ref(runtime.pipeline)
    del runtime
    gc.collect()
    assert pipeline() is None and unet() is None, "the dropped pipeline's models are still alive (frozen?)"
