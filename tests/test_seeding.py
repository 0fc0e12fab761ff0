"""Seeded model construction stays reproducible while another thread constructs networks (a cold edit
opens its video on a worker while the random-weight models are built)."""

from __future__ import annotations

import threading
import time

import torch
from sv_engine.stablevideo.nla import NLAModel
from sv_engine.stablevideo.seeding import seeded


def test_a_seeded_block_is_not_interleaved_with_another_threads_seeding() -> None:
    with seeded(3):
        alone = torch.randn(256)
    stop = threading.Event()

    def open_videos() -> None:  # what loading an NLA checkpoint constructs (seeded: NLAModel.random)
        while not stop.is_set():
            NLAModel.random(seed=1)

    worker = threading.Thread(target=open_videos)
    worker.start()
    draws = []
    try:
        for _ in range(10):
            with seeded(3):
                time.sleep(0.005)  # the other thread runs here; it must not seed or draw in between
                draws.append(torch.randn(256))
    finally:
        stop.set()
        worker.join()
    assert all(torch.equal(d, alone) for d in draws)
