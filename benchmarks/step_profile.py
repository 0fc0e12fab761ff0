"""Where one UNet+ControlNet CFG step's GPU time goes, kernel by kernel, per variant of the torch path.

    python -m sv_engine.benchmarks.step_profile --out step-profile.json [--shapes 64x112,64x64]

The full-size random fp16 UNet+canny ControlNet through the GPU default (channels-last weights): per
latent shape, the step replayed from its CUDA graph (CUDA events, median of ``--repeat``), then a few
eager steps under torch.profiler, grouped by kernel category (:mod:`.torch_profile`). The eager
steps launch the same kernels a graph replays, so the categories say what a faster step must
shrink. Variants run side by side in one process, so their ratios hold whatever the host.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: name -> the (GroupNorm, GEGLU, conv bias) implementations the nets use (nets.fused.kernel_backends).
VARIANTS: dict[str, tuple[str, str, str]] = {
    "torch ops": ("torch", "torch", "torch"),
    "fused group norm and GEGLU": ("auto", "auto", "torch"),
    "fused group norm, GEGLU and conv bias (default)": ("auto", "auto", "auto"),
    # The same with PyTorch's FlashAttention-2 kernels instead of its default choice (cuDNN's on Hopper).
    "default, FlashAttention-2": ("auto", "auto", "auto", "flash"),
}


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"64x112,64x64"`` -> latent (h, w) pairs."""
    return [tuple(int(v) for v in part.split("x")) for part in text.split(",") if part]  # type: ignore[misc]


def _inputs(h: int, w: int, device: torch.device) -> tuple:
    latent = torch.randn(2, 4, h, w, device=device, dtype=torch.float16)
    control = torch.rand(2, 3, 8 * h, 8 * w, device=device, dtype=torch.float16)
    emb = torch.randn(2, 77, 768, device=device, dtype=torch.float16)
    t = torch.full((2,), 500, device=device, dtype=torch.long)
    return latent, t, emb, control, 1.0


def _step(components, device: torch.device, graphs: bool) -> Callable:  # noqa: ANN001
    from sv_engine.engine.registry import TorchOptions
    from sv_engine.export.runtime import accelerate

    options = TorchOptions(channels_last=True, cuda_graphs=graphs)
    models = ("unet_controlnet_canny",)
    return accelerate(components, "torch", "fp16", device, models=models, options=options).unet_controlnet["canny"]


#: Elementwise ops the census counts (their unfused kernels make up the step's "elementwise" time).
_CENSUS_OPS = ("add", "mul", "div", "sub", "gelu", "silu", "copy_", "clone", "_to_copy", "cat")


def _layout(t: object) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        kind = "NHWC"
    else:
        kind = "contiguous" if t.is_contiguous() else f"strides {t.stride()}"
    return f"{list(t.shape)} {kind}"


def elementwise_census(fn: Callable[[], object], top: int = 20) -> list[dict]:
    """One call of ``fn`` under a dispatch mode: the elementwise ops it runs, by operand shapes and
    layouts, most frequent first (which unfused passes a kernel could take over)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    seen: Counter = Counter()

    class Census(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            name = func.overloadpacket.__name__
            if name in _CENSUS_OPS:
                seen[(name, tuple(_layout(a) for a in args[:2]))] += 1
            return func(*args, **(kwargs or {}))

    with Census():
        fn()
    return [{"op": op, "operands": list(operands), "calls": n} for (op, operands), n in seen.most_common(top)]


def _rows(components, device: torch.device, shapes, repeat: int, profiled_steps: int, reference: dict) -> dict:  # noqa: ANN001
    from sv_engine.benchmarks.timing import time_fn
    from sv_engine.benchmarks.torch_profile import profile_call

    graphed, eager = _step(components, device, True), _step(components, device, False)
    rows = {}
    with torch.inference_mode():
        for h, w in shapes:
            torch.manual_seed(0)
            args = _inputs(h, w, device)
            timing = time_fn(lambda args=args: graphed(*args), device, repeat, warmup=3)
            result = eager(*args).float()
            first = reference.setdefault((h, w), result)
            for _ in range(2):
                eager(*args)
            profile = profile_call(lambda args=args: [eager(*args) for _ in range(profiled_steps)], device, top=25)
            rows[f"{h}x{w}"] = {
                "graph_step_ms": timing,
                "elementwise_census": elementwise_census(lambda args=args: eager(*args)),
                "max_abs_vs_first_variant": float((result - first).abs().max()),
                "profile_of_eager_steps": {**profile, "steps": profiled_steps},
            }
            log.info("%dx%d: %.2f ms per step", h, w, timing["median_ms"])
    return rows


def _attention(kind: str | None):  # noqa: ANN202
    """``scaled_dot_product_attention`` limited to one kernel family (None: PyTorch's own choice)."""
    import contextlib

    if kind is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([{"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[kind]])


def run(
    shapes: list[tuple[int, int]], repeat: int, profiled_steps: int, variants: dict[str, tuple[str, str, str]]
) -> dict:
    from sv_engine.stablevideo.model_source import to_edit_precision
    from sv_engine.stablevideo.models.nets.fused import kernel_backends
    from sv_engine.stablevideo.models.tiny import build_random_components

    device = torch.device("cuda")
    components = to_edit_precision(build_random_components(0, device=device), device, torch.float16)
    reference: dict[tuple[int, int], torch.Tensor] = {}
    out: dict[str, dict] = {}
    for name, (*backends, attention) in ((n, (*v, None)[:4]) for n, v in variants.items()):
        log.info("variant %s", name)
        with kernel_backends(*backends), _attention(attention):
            out[name] = _rows(components, device, shapes, repeat, profiled_steps, reference)
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", default="64x112,64x64", help="latent h x w, comma separated")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--profiled-steps", type=int, default=3)
    parser.add_argument("--variants", default=";".join(VARIANTS), help="';' list of: " + "; ".join(VARIANTS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    chosen = {n: VARIANTS[n] for n in args.variants.split(";") if n}
    from sv_engine.benchmarks.timing import environment

    record: dict = {"environment": environment("cuda"), "what": __doc__.splitlines()[0]}
    record["variants"] = run(parse_shapes(args.shapes), args.repeat, args.profiled_steps, chosen)
    args.out.write_text(json.dumps(record, indent=1))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
