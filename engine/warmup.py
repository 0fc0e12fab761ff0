"""The GPU libraries a process's first edit needs, loaded on a thread beside the work that does not need them.

The first call of each op family in a process pays for opening its libraries (cuDNN's engines, cuBLAS
and cuBLASLt: hundreds of MB of shared objects) and loading its kernels into the context, whatever
the shapes. Those calls run in C++ with the GIL released (torch's bindings release it around each
op), so they proceed while the main thread imports the model libraries (10-16 s of a cold start on
the H200) and loads the weights. What is per thread stays per thread (cuDNN/cuBLAS handles, ATen's
cuDNN plan caches): the warm-up buys the libraries and kernels, not the plans of the real shapes,
which each new shape pays on its first call (benchmarks/results/new-shape-*). Measured with the
clip's opening beside it: a cold edit's edit phase 4.27 / 4.71 s against 5.17 / 4.92 s with the
clip's opening alone (benchmarks/results/cold-start-*-e0d966f.json).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def warm_gpu_libraries(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Runs one small op of each family a diffusion edit uses on ``device`` in ``dtype`` (convolution in
    channels-last, group norm, linear, batched matmul, fused attention); returns the seconds of each,
    synchronized (so the libraries they open are open when it returns)."""
    seconds: dict[str, float] = {}

    def part(name: str, op: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        op()
        # this thread's stream: a device-wide sync would be refused while another thread captures a graph
        torch.cuda.current_stream(device).synchronize()
        seconds[name] = round(time.perf_counter() - t0, 4)

    def tensor(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    with torch.inference_mode():
        part("context", lambda: torch.zeros(1, device=device))
        image = tensor(2, 64, 32, 32).to(memory_format=torch.channels_last)
        part(
            "convolution",
            lambda: F.conv2d(image, tensor(64, 64, 3, 3).to(memory_format=torch.channels_last), padding=1),
        )
        part("group norm", lambda: F.silu(F.group_norm(image, 32)))
        tokens = tensor(2, 77, 64)
        part("linear", lambda: F.linear(tokens, tensor(64, 64), tensor(64)))
        part("matmul", lambda: torch.bmm(tokens, tokens.transpose(1, 2)))
        heads = tensor(2, 8, 77, 64)
        part("attention", lambda: F.scaled_dot_product_attention(heads, heads, heads))
    return seconds
