"""Which export specs exist and how to build them from a model bundle.

Names: ``text_encoder``, ``unet_controlnet_canny``, ``unet_controlnet_depth`` (fused, runtime scale),
``controlnet_canny``, ``controlnet_depth``, ``unet`` (split form), ``vae_encoder``, ``vae_decoder``,
``nla_field``, ``nla_atlas``, ``depth``.
"""

from __future__ import annotations

from typing import Any

from sv_engine.export.depth import DepthSpec
from sv_engine.export.nla_field import NLAAtlasSpec, NLAFieldSpec
from sv_engine.export.spec import DEFAULT_SHAPES, ExportSpec, ShapeRange
from sv_engine.export.text_encoder import TextEncoderSpec
from sv_engine.export.unet_controlnet import ControlNetSpec, UNetControlNetSpec, UNetSpec
from sv_engine.export.vae import VAEDecoderSpec, VAEEncoderSpec

from sv_engine.errors import SvEngineError

MODEL_NAMES = (
    "text_encoder",
    "unet_controlnet_canny",
    "unet_controlnet_depth",
    "controlnet_canny",
    "controlnet_depth",
    "unet",
    "vae_encoder",
    "vae_decoder",
    "nla_field",
    "nla_atlas",
    "depth",
)


def parse_model_list(models: str | list[str] | None) -> list[str]:
    """``"unet,vae_decoder"`` / list / None (= all) -> validated names."""
    if models is None or models == "" or models == "all":
        return list(MODEL_NAMES)
    names = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown:
        raise SvEngineError(f"Unknown model name(s) {unknown}.", f"Use a comma list of {', '.join(MODEL_NAMES)}.")
    return names


def build_specs(
    components: Any,
    nla: Any = None,
    names: list[str] | None = None,
    precision: str = "fp32",
    shapes: ShapeRange = DEFAULT_SHAPES,
    device="cpu",
) -> dict[str, ExportSpec]:
    """Specs for ``names`` (default all) from an ``SDComponents`` bundle and an ``NLAModel``.

    Models the bundle lacks (``depth_model=None``, no NLA) are skipped when not asked explicitly, and
    raise when asked explicitly.
    """
    explicit = names is not None
    names = parse_model_list(names)
    c = components
    seq = int(c.text_encoder.config.max_position_embeddings) if c is not None else 77
    kw = dict(precision=precision, shapes=shapes, device=device)
    factories = {
        "text_encoder": lambda: TextEncoderSpec(c.text_encoder, **kw),
        "unet_controlnet_canny": lambda: UNetControlNetSpec(
            c.unet, c.controlnet_canny, name="unet_controlnet_canny", seq_len=seq, **kw
        ),
        "unet_controlnet_depth": lambda: UNetControlNetSpec(
            c.unet, c.controlnet_depth, name="unet_controlnet_depth", seq_len=seq, **kw
        ),
        "controlnet_canny": lambda: ControlNetSpec(
            controlnet=c.controlnet_canny, name="controlnet_canny", seq_len=seq, **kw
        ),
        "controlnet_depth": lambda: ControlNetSpec(
            controlnet=c.controlnet_depth, name="controlnet_depth", seq_len=seq, **kw
        ),
        "unet": lambda: UNetSpec(c.unet, seq_len=seq, **kw),
        "vae_encoder": lambda: VAEEncoderSpec(c.vae, **kw),
        "vae_decoder": lambda: VAEDecoderSpec(c.vae, **kw),
        "nla_field": lambda: NLAFieldSpec(nla, **kw),
        "nla_atlas": lambda: NLAAtlasSpec(nla, **kw),
        "depth": lambda: DepthSpec(c.depth_model, **kw),
    }
    needs = {
        "nla_field": nla,
        "nla_atlas": nla,
        "depth": getattr(c, "depth_model", None) if c is not None else None,
        "controlnet_canny": getattr(c, "controlnet_canny", None),
        "unet_controlnet_canny": getattr(c, "controlnet_canny", None),
        "controlnet_depth": getattr(c, "controlnet_depth", None),
        "unet_controlnet_depth": getattr(c, "controlnet_depth", None),
    }
    specs: dict[str, ExportSpec] = {}
    for name in names:
        if name in needs and needs[name] is None or (c is None and not name.startswith("nla")):
            if explicit:
                raise SvEngineError(
                    f"Cannot export {name}: the model bundle has no weights for it.",
                    "Load a bundle that includes it, or leave it out of the list.",
                    field="models",
                )
            continue
        specs[name] = factories[name]()
    return specs
