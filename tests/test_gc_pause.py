"""The collector pause of loading (sv_engine/gc_pause.py): off inside, frozen and back on after, nested
blocks resuming only at the outermost end, and restored when the block raises."""

from __future__ import annotations

import gc

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
    with gc_paused():
        assert not gc.isenabled()
        keep = [[i] for i in range(1000)]  # lists are tracked by the collector
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(keep), "what existed at the end is in the permanent generation"
    del keep


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
