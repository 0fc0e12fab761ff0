"""The cyclic garbage collector paused while a process loads its libraries and models, and kept off the
objects that live until the process ends.

Importing diffusers and transformers makes ~750 k tracked objects, and the collector's full passes over
them are a good part of that import. Those objects (modules, classes, the models' parameters) live as
long as the process, so when loading ends they are moved to the permanent generation (``gc.freeze``):
later passes skip them, and so does the interpreter's last pass at exit. A cold CPU edit (tiny models;
benchmarks/results/cold-start-cpu-2core-2026-12-01-912acbf.json, median of 5): model libraries
3.46 -> 2.58 s, loading 0.63 -> 0.39 s, the exit 1.33 -> 0.29 s, 8.02 -> 6.08 s in all. (The model
libraries are 8.6 s of a cold edit on the H200's host; not measured there with the pause yet.)

Cycles made while paused are not collected; loading makes few (reference counting frees the rest).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0  # blocks open, in any thread (a service's workers may load at once)
_resume = False  # whether collection was on when the first of them opened


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection inside the block; when the last open block ends (nested, or in other
    threads) what exists is frozen and collection resumes as it was before the first."""
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.freeze()
                if _resume:
                    gc.enable()


def freeze_before_exit() -> None:
    """Called as a command ends: everything left is freed by the exit, not traced by a last collection."""
    gc.freeze()
