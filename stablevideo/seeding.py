"""Seeded use of torch's global generators, one block at a time in the process.

Module constructors draw their initial weights from the global generators, so a model built "with a
seed" is reproducible only while no other thread seeds or draws from them meanwhile: a cold edit opens
its video (the NLA networks are constructed, then loaded) on a worker while the main thread builds the
random-weight models of the tests, the demo and the benchmarks. Every block that seeds them holds
:data:`GLOBAL_RNG_LOCK`; nested blocks (a bundle seeding each model in turn) are fine.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

GLOBAL_RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global generators (CPU and every GPU's) seeded with ``seed`` for the block, which no other
    :func:`seeded` block of the process interleaves with."""
    with GLOBAL_RNG_LOCK:
        torch.manual_seed(seed)
        yield
