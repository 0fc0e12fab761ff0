"""Per-stage wall-clock timing of a pipeline run (CUDA-synchronised), for logs and ``sv-engine bench``."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StageTimer:
    """Accumulates seconds per stage name; nested stages are counted in both."""

    def __init__(self, enabled: bool = True, sync_cuda: bool = True) -> None:
        self.enabled = enabled
        self.sync_cuda = sync_cuda and torch.cuda.is_available()
        self.seconds: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.sync_cuda:
            torch.cuda.synchronize()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[stage] += time.perf_counter() - start

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in self.seconds.items()}
