"""The pipeline's heavy models on an inference backend.

Export (ONNX, cached on disk per model fingerprint and precision) -> compile with a backend of
:mod:`sv_engine.engine` -> the callables :class:`~sv_engine.stablevideo.models.diffusion.ControlledDenoiser`
accepts (UNet+ControlNet step per ControlNet, VAE encode/decode, text encoder). The pipeline stays
backend-agnostic; this module is the only glue between export specs, engines and the pipeline.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sv_engine.engine.backend import CompiledModel, load_manifest
from sv_engine.engine.registry import (
    AotiOptions,
    BackendChoice,
    BackendOptions,
    TorchOptions,
    backend_class,
    canonical_name,
    get_backend,
    make_options,
    resolve_choice,
)
from sv_engine.export.onnx_export import reuse_or_export, write_manifest
from sv_engine.export.registry import build_specs
from sv_engine.export.spec import DEFAULT_SHAPES, ShapeRange
from sv_engine.stablevideo.models.components import SDComponents

from sv_engine.errors import SvEngineError
from sv_engine.paths import cache_root

log = logging.getLogger(__name__)

#: What runs on the backend: the UNet+ControlNet steps dominate an edit; the VAE and text encoder follow.
ACCELERATED_MODELS = ("unet_controlnet_canny", "unet_controlnet_depth", "vae_encoder", "vae_decoder", "text_encoder")
#: torch.compile pays its compile in the first edit of every process (~90 s per graph and shape for
#: the fused UNet+ControlNet, ~18 s from stored artifacts), and eager torch's CUDA graphs a capture
#: per shape, so both
#: take only the UNet+ControlNet steps (~95% of the diffusion time) by default; the VAE and text
#: encoder run a handful of times per edit and stay eager.
DEFAULT_MODELS = {
    "torch-compile": ("unet_controlnet_canny", "unet_controlnet_depth"),
    "torch": ("unet_controlnet_canny", "unet_controlnet_depth"),
    "aoti": ("unet_controlnet_canny", "unet_controlnet_depth"),
}


def aoti_options(shapes: ShapeRange, base: AotiOptions | None = None) -> AotiOptions:
    """The AOTInductor options for a profile: unless ``base`` sets them, the latent sizes keep the
    profile's multiple (8 for SD's 64 px: the UNet's three down-samplings)."""
    base = base or AotiOptions()
    if base.multiples:
        return base
    multiple = shapes.multiple // shapes.latent_factor
    return make_options("aoti", base, multiples={"h": multiple, "w": multiple})


@dataclass
class AcceleratedModels:
    """Callables with ControlledDenoiser's contracts; a missing entry means "use the torch module"."""

    backend: str
    unet_controlnet: dict[str, Callable] = field(default_factory=dict)  # "canny" / "depth"
    cuda_graphs: bool = False  # torch's UNet+ControlNet steps replayed from CUDA graphs
    text_encode: Callable | None = None
    vae_encode: Callable | None = None
    vae_decode: Callable | None = None

    def denoiser_overrides(self) -> dict[str, Callable]:
        return {
            k: v
            for k, v in (
                ("text_encode", self.text_encode),
                ("vae_encode", self.vae_encode),
                ("vae_decode", self.vae_decode),
            )
            if v is not None
        }


def model_fingerprint(components: SDComponents) -> str:
    """A cheap content hash of the weights (a slice of every parameter tensor) that keys the ONNX cache."""
    digest = hashlib.sha256(components.description.encode())
    for name, module in components.modules().items():
        digest.update(name.encode())
        for param in module.parameters():
            digest.update(param.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:20]


def default_onnx_dir(components: SDComponents, precision: str, attention: str = "onnx") -> Path:
    """One cache folder per weights, precision and attention form (so ORT and TensorRT runs do not
    re-export each other's graphs)."""
    form = "" if attention == "onnx" else f"-{attention}-attention"
    return cache_root() / "onnx" / f"{model_fingerprint(components)}-{precision}{form}"


def _thread_safe_as(model: CompiledModel, call: Callable) -> Callable:
    call.thread_safe = model.thread_safe  # read by the pipeline before overlapping fg and bg edits
    return call


def _unet_controlnet_call(model: CompiledModel) -> Callable:
    def inputs(
        latent: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, control: torch.Tensor, scale: float
    ) -> dict[str, torch.Tensor]:
        # The graph takes one timestep for the batch and the control scale as a runtime input.
        return {
            "sample": latent,
            "timestep": t.reshape(-1)[:1].float(),
            "encoder_hidden_states": emb,
            "controlnet_cond": control,
            "control_scale": torch.full((1,), float(scale), device=latent.device, dtype=torch.float32),
        }

    def call(
        latent: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, control: torch.Tensor, scale: float
    ) -> torch.Tensor:
        return model(**inputs(latent, t, emb, control, scale))["noise_pred"].to(latent.dtype)

    def prepare(latent: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, control: torch.Tensor, scale: float) -> None:
        model.prepare(**inputs(latent, t, emb, control, scale))

    call.prepare = prepare  # read by ControlledDenoiser.prepare
    return _thread_safe_as(model, call)


def _vae_encode_call(model: CompiledModel) -> Callable:
    def call(image: torch.Tensor) -> torch.Tensor:
        out = model(image=image)
        return torch.cat([out["mean"], out["logvar"]], dim=1).to(image.dtype)

    return _thread_safe_as(model, call)


def _vae_decode_call(model: CompiledModel) -> Callable:
    def call(latent: torch.Tensor) -> torch.Tensor:
        return model(latent=latent)["image"].to(latent.dtype)

    return _thread_safe_as(model, call)


def _text_encode_call(model: CompiledModel) -> Callable:
    def call(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids.to(torch.int32))["text_embeddings"]

    return _thread_safe_as(model, call)


def accelerate(
    components: SDComponents,
    backend: str,
    precision: str,
    device: torch.device,
    onnx_dir: Path | None = None,
    shapes: ShapeRange = DEFAULT_SHAPES,
    models: tuple[str, ...] | None = None,
    options: BackendOptions | None = None,
    cache_dir: Path | None = None,
) -> AcceleratedModels:
    """Compile ``models`` (default: the backend's :data:`DEFAULT_MODELS`, else :data:`ACCELERATED_MODELS`)
    with ``backend`` (a registry name or named choice) and its typed ``options``; torch with its default
    options returns no overrides (the modules run as they are), torch with ``cuda_graphs`` replays the
    UNet+ControlNet steps from CUDA graphs. ``cache_dir``: the backend's engine cache."""
    choice = resolve_choice(backend) if options is None else BackendChoice(canonical_name(backend), options)
    backend, options = choice.backend, make_options(choice.backend, choice.options)
    if backend == "aoti":
        options = aoti_options(shapes, options)
    result = AcceleratedModels(backend, cuda_graphs=backend == "torch" and options.cuda_graphs)
    if backend == "torch" and options == TorchOptions():
        return result
    models = models or DEFAULT_MODELS.get(backend, ACCELERATED_MODELS)
    engine = get_backend(backend, device=device, options=options, cache_dir=cache_dir)
    specs = _specs(components, models, precision, shapes, device)
    if backend_class(backend).needs == "onnx":
        onnx_dir = onnx_dir or default_onnx_dir(components, precision, engine.onnx_attention)
        onnx_dir.mkdir(parents=True, exist_ok=True)
        cached = load_manifest(onnx_dir) if (onnx_dir / "manifest.json").exists() else {}
        sources = {name: reuse_or_export(spec, onnx_dir, cached, engine.onnx_attention) for name, spec in specs.items()}
        write_manifest(onnx_dir, sources.values())
    else:
        sources = {name: spec.model_source() for name, spec in specs.items()}
    compiled = {}
    for name, source in sources.items():
        log.info("compiling %s with %s", name, backend)
        compiled[name] = engine.compile(source)
    for controlnet in ("canny", "depth"):
        if f"unet_controlnet_{controlnet}" in compiled:
            result.unet_controlnet[controlnet] = _unet_controlnet_call(compiled[f"unet_controlnet_{controlnet}"])
    if "vae_encoder" in compiled:
        result.vae_encode = _vae_encode_call(compiled["vae_encoder"])
    if "vae_decoder" in compiled:
        result.vae_decode = _vae_decode_call(compiled["vae_decoder"])
    if "text_encoder" in compiled:
        result.text_encode = _text_encode_call(compiled["text_encoder"])
    return result


def _specs(
    components: SDComponents, models: tuple[str, ...], precision: str, shapes: ShapeRange, device: torch.device
) -> dict:
    """The export specs of those of ``models`` the bundle has (a bundle may lack a ControlNet)."""
    names = [m for m in models if _has_model(components, m)]
    return build_specs(components, None, names=names, precision=precision, shapes=shapes, device=device)


def _has_model(components: SDComponents, name: str) -> bool:
    if name.endswith("canny"):
        return components.controlnet_canny is not None
    if name.endswith("depth"):
        return components.controlnet_depth is not None
    return True


#: Backends whose engines ``sv-engine build`` compiles from the torch modules (no export folder).
MODULE_ENGINE_BACKENDS = ("aoti", "torch-compile")
#: The image sizes ``build --backend torch-compile`` compiles when none are given (SD's 512²); an edit
#: compiles the sizes it meets on top and stores them too.
DEFAULT_COMPILE_SIZES = ((512, 512),)


def parse_sizes(text: str, shapes: ShapeRange = DEFAULT_SHAPES) -> tuple[tuple[int, int], ...]:
    """``"512x512,512x896"`` -> ((512, 512), (512, 896)) (height x width), checked against the profile."""
    sizes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        h, sep, w = part.lower().partition("x")
        if not sep or not h.isdigit() or not w.isdigit():
            raise SvEngineError(f"{part!r} is not HEIGHTxWIDTH.", "write e.g. 512x512,512x896.", field="shapes")
        size = (int(h), int(w))
        (lo_h, _, hi_h), (lo_w, _, hi_w) = shapes.height, shapes.width
        if any(v % shapes.multiple for v in size) or not (lo_h <= size[0] <= hi_h and lo_w <= size[1] <= hi_w):
            raise SvEngineError(
                f"{part} is outside the profile ({lo_h}-{hi_h} x {lo_w}-{hi_w} px in multiples of {shapes.multiple}).",
                f"give sizes in multiples of {shapes.multiple} within the profile.",
                field="shapes",
            )
        sizes.append(size)
    if not sizes:
        raise SvEngineError("no size given.", "write e.g. 512x512.", field="shapes")
    return tuple(sizes)


def build_engines(
    components: SDComponents,
    backend: str,
    precision: str,
    device: torch.device,
    shapes: ShapeRange = DEFAULT_SHAPES,
    models: tuple[str, ...] | None = None,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    sizes: tuple[tuple[int, int], ...] = DEFAULT_COMPILE_SIZES,
) -> list[dict]:
    """Compiles the persistent engines of ``backend`` for ``models`` into the engine cache: AOTInductor
    packages (one per architecture, dynamic over the profile) or torch.compile's artifacts for the
    image ``sizes``; models whose engine is there already are only checked (``sv-engine build`` twice
    is a no-op). Returns one row per model: built or already there, seconds, the entry's path and size."""
    backend = canonical_name(backend)
    if backend not in MODULE_ENGINE_BACKENDS:
        raise SvEngineError(
            f"`build` compiles module engines for {', '.join(MODULE_ENGINE_BACKENDS)}, not {backend!r}.",
            "pass an export folder for trt/ort engines (`sv-engine build DIR --backend trt`).",
        )
    options = aoti_options(shapes) if backend == "aoti" else None
    engine = get_backend(backend, device=device, options=options, cache_dir=cache_dir)
    rows = []
    for name, spec in _specs(components, models or DEFAULT_MODELS[backend], precision, shapes, device).items():
        if progress is not None:
            progress(name)
        source = spec.model_source()
        t0 = time.perf_counter()
        if backend == "aoti":
            already = engine.is_built(source)
            if not already:
                engine.compile(source)
            entry = engine.last_entry if not already else {}
        else:
            already, entry = _compile_sizes(engine, spec, source, sizes, device)
        rows.append(
            {
                "model": name,
                "built": not already,
                "seconds": round(time.perf_counter() - t0, 2),
                "path": entry.get("path"),
                "bytes": entry.get("bytes"),
                "export_s": entry.get("export_s"),
                "compile_s": entry.get("compile_s"),
            }
        )
    return rows


def _compile_sizes(engine, spec, source, sizes: tuple[tuple[int, int], ...], device: torch.device) -> tuple[bool, dict]:
    """torch.compile ``source`` at each image size its stored artifacts do not cover yet (each call
    that compiles stores them); ``(all were stored already, the entry's path and size)``."""
    from sv_engine.engine.torch_compile_backend import shape_label

    factor = spec.shapes.latent_factor
    inputs = [spec.sample_inputs("opt", device=device, h=h // factor, w=w // factor) for h, w in sizes]
    stored = engine.stored_shapes(source)
    missing = [x for x in inputs if shape_label(x) not in stored]
    if missing:
        model = engine.compile(source)
        with torch.inference_mode():
            for x in missing:
                model(**x)
    path = engine.cache.paths(engine.entry_name(source), engine.engine_key(source, source.module))[0]
    return not missing, {"path": str(path), "bytes": path.stat().st_size if path.is_file() else None}
