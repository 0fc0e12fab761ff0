"""The pipeline's heavy models on an inference backend.

Export (ONNX, cached on disk per model fingerprint and precision) -> compile with a backend of
:mod:`sv_engine.engine` -> the callables :class:`~sv_engine.stablevideo.models.diffusion.ControlledDenoiser`
accepts (UNet+ControlNet step per ControlNet, VAE encode/decode, text encoder). The pipeline stays
backend-agnostic; this module is the only glue between export specs, engines and the pipeline.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sv_engine.engine.backend import CompiledModel, load_manifest
from sv_engine.engine.registry import (
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

from sv_engine.paths import cache_root

log = logging.getLogger(__name__)

#: What runs on the backend: the UNet+ControlNet steps dominate an edit; the VAE and text encoder follow.
ACCELERATED_MODELS = ("unet_controlnet_canny", "unet_controlnet_depth", "vae_encoder", "vae_decoder", "text_encoder")
#: torch.compile pays its compile in the first edit of every process (~94 s per graph and shape on
#: an H100 for the fused UNet+ControlNet), and eager torch's CUDA graphs a capture per shape, so both
#: take only the UNet+ControlNet steps (~95% of the diffusion time) by default; the VAE and text
#: encoder run a handful of times per edit and stay eager.
DEFAULT_MODELS = {
    "torch-compile": ("unet_controlnet_canny", "unet_controlnet_depth"),
    "torch": ("unet_controlnet_canny", "unet_controlnet_depth"),
}


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
    def call(
        latent: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, control: torch.Tensor, scale: float
    ) -> torch.Tensor:
        # The graph takes one timestep for the batch and the control scale as a runtime input.
        timestep = t.reshape(-1)[:1].float()
        scale_t = torch.full((1,), float(scale), device=latent.device, dtype=torch.float32)
        out = model(
            sample=latent, timestep=timestep, encoder_hidden_states=emb, controlnet_cond=control, control_scale=scale_t
        )
        return out["noise_pred"].to(latent.dtype)

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
    result = AcceleratedModels(backend, cuda_graphs=backend == "torch" and options.cuda_graphs)
    if backend == "torch" and options == TorchOptions():
        return result
    models = models or DEFAULT_MODELS.get(backend, ACCELERATED_MODELS)
    engine = get_backend(backend, device=device, options=options, cache_dir=cache_dir)
    specs = build_specs(
        components,
        None,
        names=[m for m in models if _has_model(components, m)],
        precision=precision,
        shapes=shapes,
        device=device,
    )
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


def _has_model(components: SDComponents, name: str) -> bool:
    if name.endswith("canny"):
        return components.controlnet_canny is not None
    if name.endswith("depth"):
        return components.controlnet_depth is not None
    return True
