"""The composition root: the one place that builds an edit's pipeline, and the application policy it
applies (the ``auto`` backend, the CUDA-graph default of torch on a GPU).

Every front end describes what it wants as a :class:`RuntimeConfig` and calls :func:`build_pipeline`:
``sv-engine edit``, the render service's workers, the benchmarks (``bench --e2e``, e2e_parity,
service_bench) and ``sv-engine parity --e2e``. Nothing else loads components, accelerates them and
constructs a :class:`~sv_engine.stablevideo.pipeline.StableVideoPipeline`::

    runtime = build_pipeline(RuntimeConfig(weights="models/", precision="fp16", backend="auto"))
    result = runtime.pipeline.edit(data_dir, params)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from sv_engine.engine.parity_gate import gated_default_backend
from sv_engine.engine.registry import (
    CHOICES,
    BackendChoice,
    BackendOptions,
    make_options,
    resolve_choice,
)
from sv_engine.export.runtime import AcceleratedModels, accelerate
from sv_engine.export.spec import DEFAULT_SHAPES, ShapeRange
from sv_engine.stablevideo.model_source import PRECISIONS, check_model_source, load_components
from sv_engine.stablevideo.models.components import SDComponents
from sv_engine.stablevideo.models.model_classes import model_classes
from sv_engine.stablevideo.pipeline import StableVideoPipeline
from sv_engine.stablevideo.session import SessionCache
from sv_engine.stablevideo.stage_timer import StageTimer

from sv_engine.device import resolve_device
from sv_engine.errors import SvEngineError
from sv_engine.gc_pause import gc_paused

log = logging.getLogger(__name__)

#: The tiny random models run the CPU demo at small sizes; the production profile starts at SD's 512 px.
TINY_MODEL_SHAPES = ShapeRange(height=(64, 256, 1024), width=(64, 256, 1536), multiple=64)
#: What ``backend`` may be besides a registry name or named choice.
AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How an edit's pipeline is built.

    Attributes:
        tiny / random_full / weights: the model source, exactly one: tiny random models (tests, the
            CPU demo), full-size SD 1.5 architectures with random weights (latency benchmarks), or
            the user's weights folder.
        precision: ``"fp32"`` or ``"fp16"`` (GPU).
        device: ``"auto"`` (cuda if present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        backend: a registry name or named choice (:mod:`sv_engine.engine.registry`) or ``"auto"``: the
            fastest available on a GPU, eager torch on the CPU.
        cuda_graphs: torch only; ``None`` = on with a GPU (the ``torch-cuda-graph`` choice), off on the
            CPU.
        options: the backend's typed options, replacing the registry's defaults (and the policy).
        seed: seed of the random models.
        models: the models to accelerate (default: the backend's, :data:`export.runtime.DEFAULT_MODELS`).
        shapes: the engines' shape profile (default: :data:`TINY_MODEL_SHAPES` for tiny models, else
            SD's production profile).
        onnx_dir / cache_dir: where ONNX exports and compiled engines are kept (default: the cache).
        overlap_background: run the background edit beside the keyframe loop, on its own CUDA stream
            (the pipeline's option); ``None`` = :func:`overlap_background`'s policy.
    """

    tiny: bool = False
    random_full: bool = False
    weights: str | None = None
    precision: str = "fp32"
    device: str = "auto"
    backend: str = AUTO
    cuda_graphs: bool | None = None
    options: BackendOptions | None = None
    seed: int = 0
    models: tuple[str, ...] | None = None
    shapes: ShapeRange | None = None
    onnx_dir: str | None = None
    cache_dir: str | None = None
    overlap_background: bool | None = None

    def check(self) -> None:
        """Everything that can be checked before a model loads (one clear error, nothing started)."""
        check_model_source(self.tiny, self.random_full, self.weights)
        if self.precision not in PRECISIONS:
            raise SvEngineError(
                f"Unknown precision {self.precision!r}.", f"use {' or '.join(PRECISIONS)}.", field="precision"
            )
        if self.backend != AUTO:
            choice = resolve_choice(self.backend)  # refuses an unknown name with the known ones
            if self.options is not None:
                make_options(choice.backend, self.options)  # the options are that backend's
        check_cuda_graphs(self.backend, self.cuda_graphs)


def check_cuda_graphs(backend: str, cuda_graphs: bool | None) -> None:
    """``cuda_graphs`` goes with eager torch only (also checked before the service starts workers)."""
    if cuda_graphs and backend != AUTO and resolve_choice(backend).backend != "torch":
        raise SvEngineError(
            f"It is an option of the torch backend, not {backend!r}.",
            "drop it (torch-compile captures its own graphs), or use $backend torch.",
            field="cuda_graphs",
            mentions=("backend",),
        )


def choose_backend(config: RuntimeConfig, device: torch.device) -> BackendChoice:
    """The policy: ``auto`` is the fastest backend available on a GPU that passed its parity probe on
    the machine (:func:`parity_probe`, announced) and eager torch on the CPU; torch on a GPU replays
    its UNet+ControlNet steps from CUDA graphs unless told not to."""
    check_cuda_graphs(config.backend, config.cuda_graphs)
    backend = config.backend
    if backend == AUTO:
        backend = (
            "torch" if config.cuda_graphs or device.type != "cuda" else gated_default_backend(device, parity_probe)
        )
        log.info("backend: %s (chosen automatically: name a backend to choose)", backend)
    choice = resolve_choice(backend)
    if config.options is not None:
        return BackendChoice(choice.backend, config.options)
    if backend in CHOICES or choice.backend != "torch":
        return choice
    cuda_graphs = config.cuda_graphs
    if cuda_graphs is None:
        cuda_graphs = device.type == "cuda"
        if cuda_graphs:
            log.info(
                "torch on %s: UNet+ControlNet steps replayed from CUDA graphs (cuda_graphs off: eager steps)",
                device,
            )
    return resolve_choice("torch-cuda-graph" if cuda_graphs else "torch")


#: Whether a GPU edit with torch's CUDA graphs runs the background beside the keyframe loop by
#: default (each half replays its own ControlNet's graphs; see StableVideoPipeline): a warm edit
#: took 1.88 s against 2.11 s one after the other, the same frames (60.57 dB against eager both),
#: peak memory 6.66 GB against 6.50 GB (H200, benchmarks/results/engines-*-3c0532a.json).
OVERLAP_WITH_CUDA_GRAPHS = True


def overlap_background(config: RuntimeConfig, device: torch.device, backend: str, cuda_graphs: bool) -> bool:
    """The policy for the background beside the keyframe loop: as configured, else on for torch's
    CUDA graphs on a GPU when :data:`OVERLAP_WITH_CUDA_GRAPHS` (measured: engine_bench's ``warm``)."""
    if config.overlap_background is not None:
        return config.overlap_background
    return OVERLAP_WITH_CUDA_GRAPHS and device.type == "cuda" and backend == "torch" and cuda_graphs


def parity_probe(backend: str, device: torch.device) -> tuple[bool, str]:
    """The auto backend's parity probe (:mod:`sv_engine.engine.parity_gate`): the tiny random
    UNet+ControlNet (the real architecture) through ``backend`` and through torch on the same inputs,
    in the edit's precision on ``device``; passes at the precision's cosine bar (engine.parity)."""
    from sv_engine.engine.parity import THRESHOLDS, compare
    from sv_engine.export.registry import build_specs
    from sv_engine.stablevideo.model_source import to_edit_precision
    from sv_engine.stablevideo.models.tiny import build_tiny_components

    precision = "fp16" if device.type == "cuda" else "fp32"
    components = to_edit_precision(build_tiny_components(0), device, PRECISIONS[precision])
    name = "unet_controlnet_canny"
    spec = build_specs(components, None, names=[name], precision=precision, shapes=TINY_MODEL_SHAPES, device=device)[
        name
    ]
    step = accelerate(components, backend, precision, device, shapes=TINY_MODEL_SHAPES, models=(name,))
    x = spec.sample_inputs("opt", device=device)
    with torch.inference_mode():
        ref = spec.torch_module(fused_attention=True)(*[x[n] for n in spec.input_names()])[0]
        out = step.unet_controlnet["canny"](
            x["sample"], x["timestep"], x["encoder_hidden_states"], x["controlnet_cond"], 1.0
        )
    metrics = compare(ref, out)
    bar = THRESHOLDS[precision].min_cosine
    passed = bool(metrics["finite"]) and metrics["cosine"] >= bar
    return passed, f"cosine {metrics['cosine']:.6f} vs torch (bar {bar}), {precision}, tiny UNet+ControlNet"


@dataclasses.dataclass
class EditRuntime:
    """A built pipeline and what it was built from (for reports)."""

    config: RuntimeConfig
    device: torch.device
    components: SDComponents
    accelerated: AcceleratedModels
    pipeline: StableVideoPipeline
    #: Seconds of the build's phases: "init CUDA" (on a GPU), "import model libraries" (when it loaded
    #: the models), "load models", "prepare backend", "finish the warm-up".
    seconds_per_phase: dict[str, float]

    @property
    def backend(self) -> str:
        return self.accelerated.backend

    def describe(self) -> dict[str, Any]:
        """The report fields every front end writes: backend, CUDA graphs, models."""
        return {
            "backend": self.accelerated.backend,
            "cuda_graphs": self.accelerated.cuda_graphs,
            "precision": self.config.precision,
            "models": self.components.description,
            "random_weights": self.components.is_random,
        }


def build_pipeline(
    config: RuntimeConfig, components: SDComponents | None = None, open_videos: Sequence[str | Path] = ()
) -> EditRuntime:
    """Loads the components (unless given: they are then used as they are, on the config's device),
    puts the heavy models on the chosen backend and builds the pipeline.

    ``open_videos``: the data folders the edit will open (a cold edit's clip), opened on a worker thread
    while the models load, as are, on a GPU, the libraries and kernels of a first edit
    (:func:`warm_up_gpu`); the build waits for that thread before it returns ("finish the warm-up")."""
    if components is None:
        config.check()
    device = resolve_device(config.device)
    phases = StageTimer(sync_cuda=False)
    sessions = SessionCache(device)
    # One worker: the GPU warm-up, then the videos; what it runs holds the GIL little (GPU calls, file
    # reads, decoding), the main thread's imports hold it most of the time.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sv-warmup")
    try:
        with gc_paused():  # the model libraries' import and the load (sv_engine/gc_pause.py)
            if device.type == "cuda":
                with phases("init CUDA"):  # the context, created by the first CUDA call: timed on its own
                    torch.zeros(1, device=device)
                worker.submit(warm_up_gpu, device, PRECISIONS.get(config.precision, torch.float32))
            for video in open_videos:
                sessions.open_in_background(video, worker)
            if components is None:
                with phases("import model libraries"):  # diffusers, transformers: a cold start's largest import
                    model_classes()
            with phases("load models"):
                if components is None:
                    components = load_components(
                        device,
                        tiny=config.tiny,
                        weights=Path(config.weights).expanduser() if config.weights is not None else None,
                        random_full=config.random_full,
                        precision=config.precision,
                        seed=config.seed,
                    )
        with phases("prepare backend"):
            choice = choose_backend(config, device)
            shapes = config.shapes or (TINY_MODEL_SHAPES if config.tiny else DEFAULT_SHAPES)
            accelerated = accelerate(
                components,
                choice.backend,
                config.precision,
                device,
                onnx_dir=Path(config.onnx_dir) if config.onnx_dir else None,
                shapes=shapes,
                models=config.models,
                options=choice.options,
                cache_dir=Path(config.cache_dir) if config.cache_dir else None,
            )
            pipeline = StableVideoPipeline(
                components,
                device,
                accelerated.unet_controlnet,
                accelerated.denoiser_overrides(),
                overlap_background=overlap_background(config, device, choice.backend, accelerated.cuda_graphs),
                sessions=sessions,
            )
        with phases("finish the warm-up"):  # what is left of it: the edit's captures then run alone
            worker.shutdown(wait=True)
    finally:
        worker.shutdown(wait=True, cancel_futures=True)
    return EditRuntime(config, device, components, accelerated, pipeline, phases.as_dict())


def warm_up_gpu(device: torch.device, dtype: torch.dtype) -> None:
    """A first edit's GPU one-offs that do not depend on its models: the libraries and kernels of its op
    families (:func:`~sv_engine.engine.warmup.warm_gpu_libraries`) and the pipeline's own CUDA kernels.
    A failure only logs: the edit meets it again where it can report it."""
    from sv_engine.engine.warmup import warm_gpu_libraries

    from sv_engine import kernels

    try:
        seconds = warm_gpu_libraries(device, dtype)
        t0 = time.perf_counter()
        kernels.load(device)
        seconds["pipeline kernels"] = round(time.perf_counter() - t0, 4)
    except Exception as exc:  # noqa: BLE001 - a warm-up, not the edit
        log.info("GPU warm-up failed (the edit does the same work when it needs it): %s", exc)
        return
    log.info("GPU warm-up beside the model load: %s", seconds)
