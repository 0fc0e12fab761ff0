"""The stages of ``sv-engine bench``: each times every implementation it has in this process.

A stage function takes a :class:`BenchContext` and returns ``{"description", "shape", "backends"}``
where ``backends`` maps an implementation name to its timing (:func:`~.timing.time_fn`), or to
``{"status": "skipped", "reason"}`` / ``{"status": "error", "error"}``. The first successful entry of
``REFERENCE_ORDER`` becomes the stage's reference (the way StableVideo does it: eager fp32 torch,
scipy ``griddata`` on the CPU, ``F.grid_sample``); the other columns get a ``speedup`` against it.

Model stages (text encoder, UNet+ControlNet CFG step, VAE, depth) run the export specs' modules:
``reference`` = eager fp32 torch, ``torch-fp16`` = eager fp16 torch (GPU), ``torch-cuda-graph`` = the
same replayed from a CUDA graph with NHWC convolutions (GPU; the registry's named choice, the path
`sv-engine edit` takes with torch on a GPU), ``torch-compile``, ``ort`` and ``trt`` (ONNX exported once into
a cache folder, compiled by ``sv_engine.engine``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sv_engine.benchmarks.options import MODEL_BACKENDS
from sv_engine.benchmarks.timing import time_fn
from sv_engine.engine.registry import CHOICES, canonical_name

from sv_engine.errors import SvEngineError
from sv_engine.paths import cache_root

log = logging.getLogger(__name__)

#: Which column a stage's speed-ups are measured against (first one that ran).
REFERENCE_ORDER = ("reference", "scipy", "torch")
#: Eager fp16 columns that need a GPU ("torch" is eager fp16 there; the CPU's eager column is the fp32 reference).
_EAGER_GPU = {
    "torch": "eager fp16 needs a CUDA GPU (the fp32 reference is the CPU's eager torch)",
    "torch-cuda-graph": "CUDA graphs need a CUDA GPU",
}


class BudgetExceeded(Exception):
    """The ``--time-budget`` ran out; the remaining work is recorded as skipped."""


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Problem sizes of every stage (full = the StableVideo clip on a GPU; tiny = CPU smoke test)."""

    frames: int
    height: int
    width: int
    unet_sizes: tuple[tuple[int, int], ...]  # image (h, w) of the CFG-step stages
    vae_size: int
    keyframes: int
    keyframe_hw: tuple[int, int]  # warp crops (h, w)
    splat_hw: tuple[int, int]  # the splatted keyframe crop (h, w)
    atlas: int  # grid atlas (warp source, splat target, aggregation)
    render_atlas: int
    aggregation_iterations: int
    nla_chunk: int = 1 << 18


FULL = Sizes(
    frames=70,
    height=432,
    width=768,
    unet_sizes=((512, 512), (512, 768)),
    vae_size=512,
    keyframes=3,
    keyframe_hw=(512, 768),
    splat_hw=(432, 768),
    atlas=2000,
    render_atlas=2048,
    aggregation_iterations=500,
)
TINY = Sizes(
    frames=4,
    height=48,
    width=64,
    unet_sizes=((64, 64), (64, 128)),
    vae_size=64,
    keyframes=3,
    keyframe_hw=(64, 96),
    splat_hw=(48, 64),
    atlas=256,
    render_atlas=256,
    aggregation_iterations=5,
    nla_chunk=1 << 12,
)


STAGE_NAMES = [
    "text_encoder",
    "unet_step",
    "unet_step_wide",
    "vae_encode",
    "vae_decode",
    "nla_maps",
    "warp",
    "splat",
    "aggregation_median",
    "aggregation_net",
    "depth",
    "render",
    "video_encode",
]
#: ``--stages`` shorthands.
STAGE_GROUPS = {
    "all": STAGE_NAMES,
    "unet": ["unet_step", "unet_step_wide"],
    "vae": ["vae_encode", "vae_decode"],
    "aggregation": ["aggregation_median", "aggregation_net"],
    "kernels": ["warp", "splat", "render"],
    "models": ["text_encoder", "unet_step", "unet_step_wide", "vae_encode", "vae_decode", "depth"],
}

#: H100 fp16 targets of the issue (ms), shown next to the results, never asserted.
TARGETS_MS = {"unet_step": 6.0, "vae_decode": 4.0, "nla_maps": 60.0, "splat": 2.0, "render": 1.0}
E2E_TARGETS = {"warm_ms": 600.0, "cold_ms": 4000.0, "peak_mem_gb": 8.0}


def parse_stages(stages: str | list[str] | None) -> list[str]:
    """``"all"`` / ``"unet,splat"`` / group names -> ordered, validated stage names."""
    if stages is None or stages == "" or stages == "all":
        return list(STAGE_NAMES)
    if stages == "none":
        return []
    items = [s.strip() for s in stages.split(",")] if isinstance(stages, str) else list(stages)
    wanted: set[str] = set()
    for item in items:
        if not item:
            continue
        if item in STAGE_GROUPS:
            wanted.update(STAGE_GROUPS[item])
        elif item in STAGE_NAMES:
            wanted.add(item)
        else:
            raise SvEngineError(
                f"Unknown benchmark stage {item!r}.",
                f"use all or a comma list of {', '.join(STAGE_NAMES)} "
                f"(groups: {', '.join(k for k in STAGE_GROUPS if k != 'all')}).",
                field="stages",
            )
    return [s for s in STAGE_NAMES if s in wanted]


def parse_backends(backends: str | list[str] | None, field: str = "backends") -> list[str]:
    """Canonical backend names of a comma list (``all``/empty: every model column); ``field``: the
    input an unknown name is reported against."""
    if backends is None or backends == "" or backends == "all":
        return list(MODEL_BACKENDS)
    items = [b.strip() for b in backends.split(",")] if isinstance(backends, str) else list(backends)
    out = []
    for item in items:
        if not item:
            continue
        try:
            name = item if item in CHOICES else canonical_name(item)
        except SvEngineError:
            raise SvEngineError(
                f"Unknown backend {item!r}.", f"use a comma list of {', '.join(MODEL_BACKENDS)}.", field=field
            ) from None
        if name not in out:
            out.append(name)
    return out


def error_string(exc: BaseException) -> str:
    if isinstance(exc, SvEngineError):
        return str(exc)
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ''}".rstrip(": ")


# --------------------------------------------------------------------------------------------------
# Context
# --------------------------------------------------------------------------------------------------


class BenchContext:
    """Device, sizes, options, the time budget and the lazily loaded models shared by the stages."""

    def __init__(
        self,
        device: torch.device,
        sizes: Sizes,
        *,
        tiny: bool,
        repeat: int,
        warmup: int,
        weights: Path | None = None,
        backends: list[str],
        deadline: float | None,
        skip_slow_reference: bool,
        seed: int = 0,
        export_dir: Path | None = None,
        engine_dir: Path | None = None,
    ) -> None:
        self.device = device
        self.sizes = sizes
        self.tiny = tiny
        self.weights = weights
        self.repeat = repeat
        self.warmup = warmup
        self.backends = backends
        self.deadline = deadline
        self.skip_slow_reference = skip_slow_reference
        self.seed = seed
        root = cache_root()
        self.export_dir = Path(export_dir) if export_dir else root / "bench-onnx"
        self.engine_dir = Path(engine_dir) if engine_dir else root / "bench-engines"
        self._components = None
        self._specs: dict[tuple[str, str], Any] = {}
        self._compiled: dict[tuple[str, str, str], tuple[Any, float]] = {}
        self.load_seconds: float | None = None

    # -- budget --------------------------------------------------------------------------------
    def remaining(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def check_budget(self) -> None:
        if self.remaining() <= 0:
            raise BudgetExceeded("time budget exceeded")

    # -- precision -----------------------------------------------------------------------------
    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def fast_precision(self) -> str:
        """Precision of the optimised backends: fp16 on a GPU, fp32 on the CPU."""
        return "fp16" if self.cuda else "fp32"

    # -- models --------------------------------------------------------------------------------
    @property
    def components(self):
        if self._components is None:
            from sv_engine.stablevideo.models.tiny import build_random_components, build_tiny_components

            t0 = time.perf_counter()
            if self.weights is not None:
                from sv_engine.stablevideo.models.loaders import load_weights

                self._components = load_weights(Path(self.weights))
            elif self.tiny:
                self._components = build_tiny_components(self.seed)
            else:
                self._components = build_random_components(self.seed, "full", device=self.device if self.cuda else None)
            self._components.to(device=self.device, dtype=torch.float32).eval()
            for module in self._components.modules().values():
                module.requires_grad_(False)
            self.load_seconds = time.perf_counter() - t0
        return self._components

    def spec(self, name: str, precision: str):
        key = (name, precision)
        if key not in self._specs:
            from sv_engine.export.registry import build_specs
            from sv_engine.export.spec import DEFAULT_SHAPES, TINY_SHAPES

            shapes = TINY_SHAPES if self.tiny else DEFAULT_SHAPES
            self._specs[key] = build_specs(self.components, None, [name], precision, shapes, self.device)[name]
        return self._specs[key]

    def onnx_source(self, spec, attention: str = "onnx"):
        """The spec exported to ONNX once per (model config, precision, size, attention form): reused
        across runs."""
        from sv_engine.engine.backend import ModelSource
        from sv_engine.export.onnx_export import export_onnx

        digest = hashlib.sha256(json.dumps(spec.describe(), sort_keys=True, default=str).encode()).hexdigest()[:12]
        folder = (
            self.export_dir / f"{'tiny' if self.tiny else 'full'}-{spec.name}-{spec.precision}-{attention}-{digest}"
        )
        meta = folder / "source.json"
        if meta.is_file():
            try:
                source = ModelSource.from_manifest(json.loads(meta.read_text()), folder)
                if source.onnx_path is not None and source.onnx_path.is_file():
                    return source, 0.0
            except (ValueError, KeyError, TypeError):
                pass
        t0 = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        source = export_onnx(spec, folder, attention=attention)
        meta.write_text(json.dumps(source.to_manifest()))
        return source, time.perf_counter() - t0

    def compiled(self, backend: str, name: str, precision: str):
        """``(CompiledModel, seconds spent exporting + compiling)``, cached for the process."""
        key = (backend, name, precision)
        if key in self._compiled:
            return self._compiled[key][0], 0.0
        from sv_engine.engine.registry import get_backend

        spec = self.spec(name, precision)
        t0 = time.perf_counter()
        engine = get_backend(
            "torch" if backend in ("reference", "torch-fp16") else backend,
            self.device,
            cache_dir=self.engine_dir / backend,
        )
        if engine.needs == "module":
            model = engine.compile(spec.model_source())
        else:
            source, _ = self.onnx_source(spec, engine.onnx_attention)
            model = engine.compile(source)
        seconds = time.perf_counter() - t0
        self._compiled[key] = (model, seconds)
        return model, seconds

    def release(self) -> None:
        """Drops compiled models (GPU memory) between stages; specs and components stay."""
        self._compiled.clear()
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    # -- timing --------------------------------------------------------------------------------
    def time(self, fn: Callable[[], object], repeat: int | None = None, warmup: int | None = None) -> dict:
        return {
            "status": "ok",
            **time_fn(
                fn, self.device, self.repeat if repeat is None else repeat, self.warmup if warmup is None else warmup
            ),
        }


def run_variant(ctx: BenchContext, results: dict, name: str, fn: Callable[[], dict]) -> None:
    """Runs one implementation, recording its timing, its error or why it was skipped."""
    try:
        ctx.check_budget()
        results[name] = fn()
    except BudgetExceeded as exc:
        results[name] = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one failing backend must not lose the others
        log.warning("%s failed: %s", name, error_string(exc))
        log.debug("%s", traceback.format_exc())
        results[name] = {"status": "error", "error": error_string(exc)}
    finally:
        if ctx.cuda:
            torch.cuda.synchronize(ctx.device)


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def _backend_unavailable(ctx: BenchContext, backend: str) -> str | None:
    if backend in _EAGER_GPU:
        return None if ctx.cuda else _EAGER_GPU[backend]
    from sv_engine.engine.registry import backend_class

    try:
        ok, reason = backend_class(backend).availability(ctx.device)
    except Exception as exc:  # noqa: BLE001
        ok, reason = False, error_string(exc)
    return None if ok else (reason or "not available")


# --------------------------------------------------------------------------------------------------
# Model stages (export specs through sv_engine.engine)
# --------------------------------------------------------------------------------------------------


def model_stage(ctx: BenchContext, spec_name: str, symbols: dict[str, int], description: str) -> dict:
    """Times every backend on the same seeded inputs; each column also reports its accuracy against the
    fp32 reference's outputs (cosine, max relative error: engine.parity.compare), so a fast column is
    never a wrong one."""
    from sv_engine.engine.parity import compare

    results: dict[str, dict] = {}
    input_cache: dict[str, dict] = {}
    reference_outputs: dict[str, torch.Tensor] = {}

    def variant(backend: str, precision: str) -> Callable[[], dict]:
        def fn() -> dict:
            model, compile_s = ctx.compiled(backend, spec_name, precision)
            if precision not in input_cache:
                input_cache[precision] = ctx.spec(spec_name, precision).sample_inputs(
                    "opt", device=ctx.device, **symbols
                )
            inputs = input_cache[precision]
            with torch.inference_mode():
                out = ctx.time(lambda: model(**inputs))
                outputs = model(**inputs)
            accuracy = {}
            if backend == "reference":
                reference_outputs.update({k: v.float().cpu() for k, v in outputs.items()})
            elif reference_outputs:
                metrics = [compare(reference_outputs[k], outputs[k]) for k in reference_outputs]
                accuracy = {"cosine": min(m["cosine"] for m in metrics), "max_rel": max(m["max_rel"] for m in metrics)}
            return {**out, "precision": precision, "compile_s": round(compile_s, 3), **accuracy}

        return fn

    run_variant(ctx, results, "reference", variant("reference", "fp32"))
    for backend in ctx.backends:
        reason = _backend_unavailable(ctx, backend)
        name = "torch-fp16" if backend == "torch" else backend
        if reason:
            results[name] = skipped(reason)
            continue
        run_variant(ctx, results, name, variant(name, "fp16" if backend in _EAGER_GPU else ctx.fast_precision))
    spec = ctx.spec(spec_name, "fp32")
    shape = {n: list(spec.concrete_shape(n, spec.symbols("opt", **symbols))) for n in spec.input_names()}
    return {"description": description, "shape": shape, "backends": results}


def stage_text_encoder(ctx: BenchContext) -> dict:
    return model_stage(ctx, "text_encoder", {"B": 2}, "CLIP text encoder, 2 prompts (cond + uncond) of 77 tokens")


def _unet(ctx: BenchContext, index: int) -> dict:
    h, w = ctx.sizes.unet_sizes[index]
    f = 8
    return model_stage(
        ctx,
        "unet_controlnet_canny",
        {"B": 2, "h": h // f, "w": w // f},
        f"one ControlNet+UNet CFG step, batch 2, {h}x{w} image ({h // f}x{w // f} latents)",
    )


def stage_unet_step(ctx: BenchContext) -> dict:
    return _unet(ctx, 0)


def stage_unet_step_wide(ctx: BenchContext) -> dict:
    return _unet(ctx, -1)


def stage_vae_encode(ctx: BenchContext) -> dict:
    s = ctx.sizes.vae_size
    return model_stage(ctx, "vae_encoder", {"B": 1, "h": s // 8, "w": s // 8}, f"VAE encode {s}x{s}")


def stage_vae_decode(ctx: BenchContext) -> dict:
    s = ctx.sizes.vae_size
    return model_stage(ctx, "vae_decoder", {"B": 1, "h": s // 8, "w": s // 8}, f"VAE decode to {s}x{s}")


def stage_depth(ctx: BenchContext) -> dict:
    return model_stage(ctx, "depth", {"B": 1}, "MiDaS DPT-hybrid depth, one image at the model's size")


# --------------------------------------------------------------------------------------------------
# NLA maps
# --------------------------------------------------------------------------------------------------


def _fast_maps_variant(ctx: BenchContext, field, config, fused: bool | None) -> dict:  # noqa: ANN001
    """FastMaps (what opening a video runs on a GPU) timed, with its largest error against fp32."""
    from sv_engine.stablevideo.fast_maps import FastMaps
    from sv_engine.stablevideo.maps import compute_maps

    fast = FastMaps(field, fused=fused)
    if fused is None and fast.fused is None:
        return skipped("the fused kernels need compute capability 8.0+")
    ref = compute_maps(field, config, ctx.device, chunk_size=ctx.sizes.nla_chunk, progress=False)
    errors = [(a - b).abs().max().item() for a, b in zip(fast(config), (ref.fg_uv, ref.bg_uv, ref.alpha), strict=True)]
    del ref
    return {**ctx.time(lambda: fast(config)), "max_abs_err_fg_uv_bg_uv_alpha": [round(e, 6) for e in errors]}


def stage_nla_maps(ctx: BenchContext) -> dict:
    from sv_engine.stablevideo.data import VideoConfig
    from sv_engine.stablevideo.maps import compute_maps
    from sv_engine.stablevideo.nla import NLAField, NLAModel

    s = ctx.sizes
    config = VideoConfig(s.width, s.height, s.frames)
    nla = NLAModel.random(ctx.seed).to(ctx.device).eval()
    field = NLAField(nla).to(ctx.device).eval().requires_grad_(False)
    results: dict[str, dict] = {}

    def run(fn, autocast: torch.dtype | None = None) -> Callable[[], dict]:
        def timed() -> dict:
            def once():
                ctx_mgr = torch.autocast(ctx.device.type, dtype=autocast) if autocast else contextlib.nullcontext()
                with ctx_mgr:
                    return compute_maps(fn, config, ctx.device, chunk_size=s.nla_chunk, progress=False)

            return ctx.time(once)

        return timed

    run_variant(ctx, results, "reference", run(field))
    for name, dtype in (("autocast-fp16", torch.float16), ("autocast-bf16", torch.bfloat16)):
        if ctx.cuda:
            run_variant(ctx, results, name, run(field, dtype))
        else:
            results[name] = skipped("autocast variants are timed on a GPU only")
    for name, fused in (("fp16 GEMMs + CUDA graph", False), ("fused MLP kernels", None)):
        if ctx.cuda:
            run_variant(ctx, results, name, lambda fused=fused: _fast_maps_variant(ctx, field, config, fused))
        else:
            results[name] = skipped("FastMaps runs on a GPU only")
    for backend in ctx.backends:
        if backend in _EAGER_GPU:
            continue  # eager fp16 = the autocast variants above; the field's chunks leave nothing for a graph to save
        reason = _backend_unavailable(ctx, backend)
        if reason:
            results[backend] = skipped(reason)
            continue

        def engine_variant(backend=backend) -> dict:
            from sv_engine.engine.registry import get_backend
            from sv_engine.export.registry import build_specs
            from sv_engine.export.spec import DEFAULT_SHAPES, TINY_SHAPES

            spec = build_specs(
                None, nla, ["nla_field"], "fp32", TINY_SHAPES if ctx.tiny else DEFAULT_SHAPES, ctx.device
            )["nla_field"]
            t0 = time.perf_counter()
            if backend == "torch-compile":
                model = get_backend(backend, ctx.device, dynamic=True).compile(spec.model_source())
            else:
                source, _ = ctx.onnx_source(spec)
                model = get_backend(backend, ctx.device, cache_dir=ctx.engine_dir / backend).compile(source)
            compile_s = time.perf_counter() - t0

            def field_fn(xyt: torch.Tensor):
                out = model(xyt=xyt)
                return out["fg_uv"], out["bg_uv"], out["alpha"].reshape(-1)

            return {**run(field_fn)(), "precision": spec.precision, "compile_s": round(compile_s, 3)}

        run_variant(ctx, results, backend, engine_variant)
    points = s.frames * s.height * s.width
    return {
        "description": f"NLA field (fg+bg mapping, alpha) over {s.frames}x{s.width}x{s.height} = {points} pixels, "
        "random NLA weights",
        "shape": {"frames": s.frames, "height": s.height, "width": s.width, "points": points, "chunk": s.nla_chunk},
        "backends": results,
    }


# --------------------------------------------------------------------------------------------------
# UV-mapping kernels: warp, splat, render
# --------------------------------------------------------------------------------------------------


def _grids(n: int, h: int, w: int, device: torch.device, seed: int, scale: float = 0.35) -> torch.Tensor:
    from sv_engine.benchmarks.kernels_bench import smooth_grid

    return smooth_grid(n, h, w, device, seed, scale=scale).float().contiguous()


def _rgba_half(atlas: torch.Tensor) -> torch.Tensor:
    return torch.cat([atlas, torch.ones_like(atlas[..., :1])], dim=-1).half().contiguous()


def stage_warp(ctx: BenchContext) -> dict:
    from sv_engine.kernels import warp_atlas, warp_atlas_reference

    s = ctx.sizes
    (h, w), k, r = s.keyframe_hw, s.keyframes, s.atlas
    gen = torch.Generator().manual_seed(ctx.seed + 3)
    atlas = torch.rand(r, r, 3, generator=gen).to(ctx.device)
    grids = _grids(k, h, w, ctx.device, ctx.seed + 10)
    results: dict[str, dict] = {}
    run_variant(ctx, results, "reference", lambda: ctx.time(lambda: warp_atlas_reference(atlas, grids)))
    if ctx.cuda:
        run_variant(ctx, results, "cuda", lambda: ctx.time(lambda: warp_atlas(atlas, grids, backend="cuda")))
        rgba = _rgba_half(atlas)
        run_variant(ctx, results, "cuda-fp16-rgba", lambda: ctx.time(lambda: warp_atlas(rgba, grids, backend="cuda")))
    else:
        results["cuda"] = skipped("the CUDA kernel needs a GPU")
    return {
        "description": f"atlas warp: {k} keyframes {h}x{w} from a {r}x{r} atlas (reference: F.grid_sample)",
        "shape": {"keyframes": k, "height": h, "width": w, "atlas": r},
        "backends": results,
    }


def scipy_splat(points: np.ndarray, values: np.ndarray, resolution: int) -> np.ndarray:
    """StableVideo's splat: ``scipy.interpolate.griddata`` (linear, NaN -> 0) of the keyframe's 3 channels."""
    from scipy.interpolate import griddata

    gy, gx = np.mgrid[0:resolution, 0:resolution]
    out = griddata(points.reshape(-1, 2), values.reshape(values.shape[0], -1).T, (gx, gy), method="linear")
    return np.nan_to_num(out, nan=0.0)


def stage_splat(ctx: BenchContext) -> dict:
    from sv_engine.kernels import splat_to_atlas, splat_to_atlas_reference

    s = ctx.sizes
    (h, w), r = s.splat_hw, s.atlas
    gen = torch.Generator().manual_seed(ctx.seed + 4)
    grid = _grids(1, h, w, torch.device("cpu"), ctx.seed + 20, scale=0.6)[0]
    points = ((grid + 1) * 0.5 * r).contiguous()
    values = torch.rand(3, h, w, generator=gen)
    results: dict[str, dict] = {}
    slow = not ctx.tiny
    if ctx.skip_slow_reference and slow:
        results["scipy"] = skipped("--skip-slow-reference")
    else:
        pts_np, val_np = points.numpy(), values.numpy()
        # ~20 s at full size: timed once, not N times.
        run_variant(
            ctx,
            results,
            "scipy",
            lambda: {
                **time_fn(
                    lambda: scipy_splat(pts_np, val_np, r), "cpu", 1 if slow else ctx.repeat, 0 if slow else ctx.warmup
                ),
                "status": "ok",
                "device": "cpu",
            },
        )
    points_d, values_d = points.to(ctx.device), values.to(ctx.device)
    run_variant(
        ctx,
        results,
        "torch",
        lambda: ctx.time(
            lambda: splat_to_atlas_reference(points_d, values_d, r), repeat=min(ctx.repeat, 3) if slow else None
        ),
    )
    if ctx.cuda:
        run_variant(
            ctx, results, "cuda", lambda: ctx.time(lambda: splat_to_atlas(points_d, values_d, r, backend="cuda"))
        )
    else:
        results["cuda"] = skipped("the CUDA kernel needs a GPU")
    return {
        "description": f"splat one {h}x{w} keyframe crop into a {r}x{r} atlas (reference: scipy griddata, CPU)",
        "shape": {"height": h, "width": w, "atlas": r, "channels": 3},
        "backends": results,
    }


def stage_render(ctx: BenchContext) -> dict:
    from sv_engine.kernels import render_composite, render_composite_reference

    s = ctx.sizes
    t, h, w, r = s.frames, s.height, s.width, s.render_atlas
    gen = torch.Generator().manual_seed(ctx.seed + 5)
    fg = torch.rand(r, r, 3, generator=gen).to(ctx.device)
    bg = torch.rand(r, r, 3, generator=gen).to(ctx.device)
    fg_grid, bg_grid = _grids(t, h, w, ctx.device, ctx.seed + 1), _grids(t, h, w, ctx.device, ctx.seed + 2, scale=0.45)
    alpha = torch.rand(t, h, w, generator=gen).to(ctx.device)
    args = (fg_grid, bg_grid, alpha)
    results: dict[str, dict] = {}
    run_variant(ctx, results, "reference", lambda: ctx.time(lambda: render_composite_reference(fg, bg, *args)))
    if ctx.cuda:
        run_variant(ctx, results, "cuda", lambda: ctx.time(lambda: render_composite(fg, bg, *args, backend="cuda")))
        fg4, bg4 = _rgba_half(fg), _rgba_half(bg)
        run_variant(
            ctx, results, "cuda-fp16-rgba", lambda: ctx.time(lambda: render_composite(fg4, bg4, *args, backend="cuda"))
        )
    else:
        results["cuda"] = skipped("the CUDA kernel needs a GPU")
    return {
        "description": f"render {t} frames {w}x{h} from two {r}x{r} atlases (reference: F.grid_sample)",
        "shape": {"frames": t, "height": h, "width": w, "atlas": r},
        "backends": results,
    }


# --------------------------------------------------------------------------------------------------
# Aggregation, video encode
# --------------------------------------------------------------------------------------------------


def stage_aggregation_median(ctx: BenchContext) -> dict:
    from sv_engine.stablevideo.aggregate import median_aggregate

    s = ctx.sizes
    gen = torch.Generator().manual_seed(ctx.seed + 6)
    stack = torch.rand(s.keyframes, 3, s.atlas, s.atlas, generator=gen).to(ctx.device)
    results: dict[str, dict] = {}
    run_variant(ctx, results, "reference", lambda: ctx.time(lambda: median_aggregate(stack)))
    return {
        "description": f"median of {s.keyframes} keyframe atlases 3x{s.atlas}x{s.atlas}",
        "shape": {"keyframes": s.keyframes, "atlas": s.atlas},
        "backends": results,
    }


def stage_aggregation_net(ctx: BenchContext) -> dict:
    from sv_engine.stablevideo.aggregate import train_aggregation_net

    s = ctx.sizes
    (h, w), k, r, iters = s.keyframe_hw, s.keyframes, s.atlas, s.aggregation_iterations
    gen = torch.Generator().manual_seed(ctx.seed + 7)
    atlas = torch.rand(3, r, r, generator=gen).to(ctx.device)
    grids = [_grids(1, h, w, ctx.device, ctx.seed + 30 + i) for i in range(k)]
    targets = [torch.rand(3, h, w, generator=gen).to(ctx.device) for _ in range(k)]

    def sample(a: torch.Tensor) -> list[torch.Tensor]:
        return [
            torch.nn.functional.grid_sample(a[None], g, mode="bilinear", align_corners=False)[0].clamp(0, 1)
            for g in grids
        ]

    def fn() -> dict:
        train_aggregation_net(atlas, sample, targets, iterations=2, progress=False)  # warm-up (cuDNN autotune)
        return ctx.time(
            lambda: train_aggregation_net(atlas, sample, targets, iterations=iters, progress=False),
            repeat=min(ctx.repeat, 3),
            warmup=0,
        )

    results: dict[str, dict] = {}
    run_variant(ctx, results, "reference", fn)
    return {
        "description": f"aggregation net, {iters} SGD iterations on a 3x{r}x{r} atlas, {k} keyframes {h}x{w}",
        "shape": {"iterations": iters, "atlas": r, "keyframes": k, "height": h, "width": w},
        "backends": results,
    }


def panned_photo(frames: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8: scikit-image's astronaut photo tiled to the size and panned 4 px a frame (real
    content: an encoder's time and quality on noise say little about a rendered edit)."""
    from skimage.data import astronaut

    photo = astronaut()
    tiled = np.tile(photo, (height // photo.shape[0] + 1, width // photo.shape[1] + 1, 1))[:height, :width]
    return np.stack([np.roll(tiled, 4 * t, axis=1) for t in range(frames)])


def stage_video_encode(ctx: BenchContext) -> dict:
    import imageio.v2 as imageio
    from sv_engine.stablevideo.video_io import H264_OPTIONS, write_mp4

    s = ctx.sizes
    frames = panned_photo(s.frames, s.height, s.width)
    # the reference: imageio's defaults (x264 "medium", quality 5); then write_mp4's own options
    variants = {"reference": {}, "x264 veryfast": H264_OPTIONS}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sv-bench-mp4-") as tmp:
        path = Path(tmp) / "bench.mp4"
        for name, options in variants.items():

            def run(options: dict = options) -> dict:
                timing = time_fn(lambda: write_mp4(path, frames, h264_options=options), "cpu", min(ctx.repeat, 5), 0)
                decoded = np.stack(imageio.mimread(path, memtest=False)).astype(np.float64)
                mse = float(np.mean((decoded - frames) ** 2))
                return {
                    **timing,
                    "status": "ok",
                    "device": "cpu",
                    "bytes": path.stat().st_size,
                    "psnr_db": round(10 * np.log10(255**2 / max(mse, 1e-12)), 2),
                }

            run_variant(ctx, results, name, run)
    return {
        "description": f"write_mp4 of {s.frames} frames {s.width}x{s.height}, a panned photo, imageio's "
        "defaults against write_mp4's (imageio/ffmpeg, CPU; psnr_db of the decoded frames)",
        "shape": {"frames": s.frames, "height": s.height, "width": s.width},
        "backends": results,
    }


STAGES: dict[str, Callable[[BenchContext], dict]] = {
    "text_encoder": stage_text_encoder,
    "unet_step": stage_unet_step,
    "unet_step_wide": stage_unet_step_wide,
    "vae_encode": stage_vae_encode,
    "vae_decode": stage_vae_decode,
    "nla_maps": stage_nla_maps,
    "warp": stage_warp,
    "splat": stage_splat,
    "aggregation_median": stage_aggregation_median,
    "aggregation_net": stage_aggregation_net,
    "depth": stage_depth,
    "render": stage_render,
    "video_encode": stage_video_encode,
}
assert list(STAGES) == STAGE_NAMES
