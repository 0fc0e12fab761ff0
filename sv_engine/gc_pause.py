"""The cyclic garbage collector paused while a process loads its libraries and models, and, for a
process that ends after one edit, kept off the objects that then live until it ends.

Importing diffusers and transformers makes ~750 k tracked objects, and the collector's full passes over
them are a good part of that import. A one-shot command (``sv-engine edit``) also moves what exists when
loading ends to the permanent generation (``gc_paused(freeze=True)``, ``gc.freeze``): later passes skip
those objects, and so does the interpreter's last pass at exit. A cold CPU edit (tiny models;
benchmarks/results/cold-start-cpu-2core-2026-12-01-912acbf.json, median of 5): model libraries
3.46 -> 2.58 s, loading 0.63 -> 0.39 s, the exit 1.33 -> 0.29 s, 8.02 -> 6.08 s in all.

Freezing is only for processes that never drop what they loaded: cyclic garbage that exists when a
block ends is frozen with the rest and never freed. A dropped pipeline whose CUDA-graph model formed a
cycle with its graph cache was frozen so by the next pipeline's load (the engine bench's peak grew by a
pipeline's weights per variant on an H200), and importing trio (pulled in by the service's libraries)
leaves a traceback cycle whose frames reach back to ``build_pipeline``'s, which then kept the pipeline
alive. A process may build several pipelines (the bench's variants, a service worker switching models),
so the library's blocks only pause; the command, which ends after its edit, freezes.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0  # blocks open, in any thread (a service's workers may load at once)
_resume = False  # whether collection was on when the first of them opened
_freeze = False  # whether one of them asked to freeze what exists when the last ends


@contextmanager
def gc_paused(freeze: bool = False) -> Iterator[None]:
    """No cyclic collection inside the block; when the last open block ends (nested, or in other
    threads) collection resumes as it was before the first, after freezing what exists if any of the
    blocks was opened with ``freeze`` (only for a process that keeps what it loaded until it ends)."""
    global _depth, _resume, _freeze
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
        _freeze = _freeze or freeze
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                if _freeze:
                    gc.freeze()
                    _freeze = False
                if _resume:
                    gc.enable()


def freeze_before_exit() -> None:
    """Called as a command ends: everything left is freed by the exit, not traced by a last collection."""
    gc.freeze()
