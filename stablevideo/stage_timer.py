"""Per-stage wall-clock timing of a pipeline run (CUDA-synchronised), for logs and ``sv-engine bench``."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


class StageTimer:
    """Accumulates seconds per stage name; nested stages are counted in both.

    Thread-safe: stages may be timed from several threads at once (the pipeline's overlapped
    background edit). Each stage syncs only its thread's current CUDA stream, so a thread's timings
    do not wait for the work another thread runs on its own stream.
    """

    def __init__(
        self, enabled: bool = True, sync_cuda: bool = True, on_start: Callable[[str], None] | None = None
    ) -> None:
        self.enabled = enabled
        self.on_start = on_start  # told each stage's name as it starts (a service's live progress)
        self.sync_cuda = sync_cuda and torch.cuda.is_available()
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def _sync(self) -> None:
        if self.sync_cuda:
            torch.cuda.current_stream().synchronize()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.on_start is not None:
            self.on_start(stage)
        if not self.enabled:
            yield
            return
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            elapsed = time.perf_counter() - start
            with self._lock:
                self.seconds[stage] += elapsed

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return {k: round(v, 6) for k, v in self.seconds.items()}
