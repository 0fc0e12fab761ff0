"""Where an edit's time goes: a torch.profiler (Kineto/CUPTI) run summarised into JSON.

(Not named ``profile``: a benchmark run as a script has benchmarks/ first on sys.path, and a module of
that name hides the standard library's, which torch._dynamo imports through cProfile.)

CUPTI records every CUDA kernel of the process, ONNX Runtime's and TensorRT's included, so the
summary compares the wall time with the GPU's kernel time: a low ``gpu_busy_fraction`` means the
GPU waits for the host (kernel launches, Python, synchronisations), a high one that only faster
kernels help. Kernels are grouped by what they compute (convolution, GEMM, attention, norm,
elementwise ...) and the top kernels and host calls are listed.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Kernel-name patterns per category, first match wins (cuDNN/cuBLAS/CUTLASS/inductor/ORT names).
KERNEL_CATEGORIES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("attention", r"flash|fmha|attention|sdpa|mha|softmax"),
        ("convolution", r"conv|fprop|dgrad|wgrad|winograd|implicit_?gemm|xmma_.*nhwc|cudnn"),
        ("gemm", r"gemm|cutlass|cublas|xmma|matmul|sm90_|ampere_|hopper_|nvjet"),
        ("norm", r"norm|welford|reduce|mean|var"),
        ("copy / layout", r"copy|transpose|permute|cat|memcpy|memset|nchw|nhwc|fill|convert"),
        ("elementwise", r"elementwise|vectorized|unrolled|pointwise|triton_poi|silu|gelu|add|mul|sigmoid"),
    )
)
SYNC_CALLS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpyAsync")
LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaGraphLaunch")


def kernel_category(name: str) -> str:
    for category, pattern in KERNEL_CATEGORIES:
        if pattern.search(name):
            return category
    return "other"


def profile_call(fn: Callable[[], Any], device: torch.device, top: int = 15) -> dict[str, Any]:
    """Runs ``fn()`` once under torch.profiler and returns the summary (CPU devices: host ops only)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False, with_stack=False) as prof:
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    log.info("profiled %.2f s; summarising the trace", wall)
    return summarise(prof.events(), wall, top)


def summarise(events, wall_s: float, top: int = 15) -> dict[str, Any]:
    """The JSON summary of a profiler's ``events()``."""
    kernels: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])  # name -> [count, microseconds]
    host_calls: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    ops: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    spans: list[tuple[float, float]] = []
    for evt in events:
        duration = evt.time_range.elapsed_us()
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            entry = kernels[evt.name]
            spans.append((evt.time_range.start, evt.time_range.end))
        elif _is_cuda_api(evt.name):
            entry = host_calls[evt.name]
        elif evt.name.startswith("aten::"):
            entry = ops[evt.name]
            duration = evt.self_cpu_time_total
        else:
            continue
        entry[0] += 1
        entry[1] += duration
    kernel_us = sum(v[1] for v in kernels.values())
    categories: dict[str, float] = defaultdict(float)
    for name, (_, us) in kernels.items():
        categories[kernel_category(name)] += us
    busy_us = _union_us(spans)

    def rows(table: dict[str, list[float]], n: int) -> list[dict]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1][1])[:n]
        return [{"name": k[:120], "count": int(c), "total_ms": round(us / 1e3, 3)} for k, (c, us) in ranked]

    return {
        "wall_s": round(wall_s, 4),
        "gpu_kernel_s": round(kernel_us / 1e6, 4),
        "gpu_busy_s": round(busy_us / 1e6, 4),
        "gpu_busy_fraction": round(busy_us / 1e6 / wall_s, 3) if wall_s > 0 else None,
        "kernel_launches": int(sum(v[0] for v in kernels.values())),
        "kernel_ms_by_category": {k: round(v / 1e3, 2) for k, v in sorted(categories.items(), key=lambda kv: -kv[1])},
        "top_kernels": rows(kernels, top),
        "host_cuda_calls": rows(host_calls, 8),
        "host_sync_ms": round(sum(v[1] for k, v in host_calls.items() if k in SYNC_CALLS) / 1e3, 2),
        "host_launch_ms": round(sum(v[1] for k, v in host_calls.items() if k in LAUNCH_CALLS) / 1e3, 2),
        "top_aten_ops_self_cpu": rows(ops, 10),
        "note": "gpu_busy = union of kernel intervals; kernel_s sums kernels of all streams (overlap counts twice)",
    }


def _is_cuda_api(name: str) -> bool:
    """CUDA runtime (``cudaLaunchKernel``) or driver (``cuLaunchKernel``) API calls on the host."""
    return name.startswith("cuda") or (name.startswith("cu") and name[2:3].isupper())


def _union_us(spans: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals (kernels on several streams overlap)."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total
