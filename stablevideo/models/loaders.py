"""Loading real weights: a diffusers-style folder, the original ControlNet 1.0 files, MiDaS DPT-hybrid.

Three sources, one result (:class:`~.components.SDComponents`):

(a) **Folder layout** (:func:`load_diffusers_folder`, written by :func:`save_components` /
    :func:`convert_original_to_folder`)::

        MODEL_DIR/
          text_encoder/      config.json + model.safetensors | pytorch_model.bin       (CLIPTextModel)
          tokenizer/         optional: tokenizer.json | vocab.json + merges.txt (else the packaged CLIP BPE)
          unet/              config.json + diffusion_pytorch_model.safetensors | .bin  (UNet2DConditionModel)
          vae/               config.json + diffusion_pytorch_model.safetensors | .bin  (AutoencoderKL)
          controlnet_canny/  config.json + diffusion_pytorch_model.safetensors | .bin  (ControlNetModel)
          controlnet_depth/  same                                                       (ControlNetModel)
          dpt/               optional: config.json + model.safetensors | pytorch_model.bin
                             (DPTForDepthEstimation, hybrid)

    The usual diffusers SD 1.5 folder (e.g. a ``stable-diffusion-v1-5`` snapshot) already has
    ``text_encoder``, ``tokenizer``, ``unet`` and ``vae``; copy or link ``lllyasviel/sd-controlnet-canny``
    and ``sd-controlnet-depth`` in as ``controlnet_canny`` / ``controlnet_depth`` and
    ``Intel/dpt-hybrid-midas`` as ``dpt``.

(b) **Original ControlNet 1.0 files** ``control_sd15_canny.pth`` / ``control_sd15_depth.pth``
    (lllyasviel/ControlNet ``models/``): one LDM state dict each with ``model.diffusion_model.*`` (UNet),
    ``control_model.*`` (ControlNet), ``first_stage_model.*`` (VAE) and ``cond_stage_model.transformer.*``
    (CLIP). Converted with diffusers' single-file helpers and the configs shipped in
    ``stablevideo/assets/configs`` (:func:`convert_control_sd15`, :func:`load_original_checkpoints`).

(c) **MiDaS** ``dpt_hybrid-midas-501f0c75.pt`` (keys ``pretrained.model.*``, ``pretrained.act_postprocess*``,
    ``scratch.*``) mapped onto transformers' hybrid ``DPTForDepthEstimation`` (:func:`load_midas_dpt_hybrid`,
    mapping in :func:`midas_key`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from sv_engine.errors import SvEngineError

from .components import SDComponents
from .model_classes import model_classes
from .tiny import build_dpt, build_text_encoder, load_config
from .tokenizer import load_clip_tokenizer

logger = logging.getLogger(__name__)

CONTROLNET_URL = "https://huggingface.co/lllyasviel/ControlNet/tree/main/models"
MIDAS_FILE = "dpt_hybrid-midas-501f0c75.pt"
MIDAS_URL = "https://huggingface.co/lllyasviel/ControlNet/tree/main/annotator/ckpts"

FOLDER_SUBDIRS = {
    "text_encoder": "text_encoder",
    "unet": "unet",
    "vae": "vae",
    "controlnet_canny": "controlnet_canny",
    "controlnet_depth": "controlnet_depth",
    "depth_model": "dpt",
}
_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)

StateDict = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def read_state_dict(
    path: str | os.PathLike,
    what: str = "checkpoint",
    fix: str | None = None,
    device: torch.device | None = None,
) -> StateDict:
    """Tensors of a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` file, on ``device``
    (default the CPU; a GPU gets them from the file with no CPU copy).

    Unwraps ``{"state_dict": ...}`` (Lightning) and ``{"model": ...}`` (MiDaS training) containers.
    Missing / unreadable files raise :class:`SvEngineError` with ``fix``.
    """
    path = Path(path)
    fix = fix or f"Check the path, or re-download the {what}."
    if not path.is_file():
        raise SvEngineError(f"The {what} file {path} does not exist.", fix)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device=str(device or "cpu"))
        else:
            sd = torch.load(str(path), map_location=device or "cpu", weights_only=True, mmap=_is_zip(path))
    except Exception as exc:  # noqa: BLE001 - any read failure means a bad file
        raise SvEngineError(
            f"Cannot read the {what} {path} ({type(exc).__name__}: {exc}); the file is "
            "corrupt, truncated or not a PyTorch/safetensors checkpoint.",
            f"Re-download the {what}. {fix}",
        ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = sd[wrapper]
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SvEngineError(f"The {what} {path} does not hold a state dict of tensors.", fix)
    return dict(sd)


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


_ORIGINAL_FILES_FIX = (
    "Use the original SD 1.5 ControlNet 1.0 files (control_sd15_canny.pth / control_sd15_depth.pth) "
    f"from {CONTROLNET_URL} and the MiDaS {MIDAS_FILE}."
)


_NO_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """``torch.nn.init``'s functions as no-ops while a model is built on the meta device for weights that
    come from a file: initialising meta tensors runs torch's reference decompositions, whose first use
    imports torch._dynamo and sympy (seconds of a cold edit). As transformers' ``no_init_weights``."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    with _NO_INIT_LOCK:  # the patch is process-wide: one build at a time under it
        saved = {n: getattr(torch.nn.init, n) for n in names}
        for name in names:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        try:
            yield
        finally:
            for name, fn in saved.items():
                setattr(torch.nn.init, name, fn)


def _instantiate(
    factory: Callable[[], torch.nn.Module],
    state_dict: StateDict,
    name: str,
    source: str,
    fix: str = _ORIGINAL_FILES_FIX,
) -> torch.nn.Module:
    """Build ``factory()`` and load ``state_dict`` strictly (meta-device init when possible: no random init)."""
    try:
        with torch.device("meta"), _no_init():
            model = factory()
    except (TypeError, ValueError, KeyError) as exc:  # a config value of the wrong kind
        raise SvEngineError(f"The {name} config in {source} is not valid ({type(exc).__name__}: {exc}).", fix) from exc
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches
        raise SvEngineError(
            f"The {name} weights in {source} do not fit the expected architecture: "
            f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}",
            fix,
        ) from exc
    if missing or unexpected:
        raise SvEngineError(
            f"The {name} weights in {source} do not fit the expected architecture: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}).",
            fix,
        )
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        # non-persistent buffers (e.g. CLIP position_ids) are not in the state dict: build for real
        model = factory()
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# (b) original ControlNet 1.0 checkpoints
# --------------------------------------------------------------------------------------------------


def _check_converted(converted: dict[str, Any], name: str, source: str) -> StateDict:
    bad = [k for k, v in converted.items() if v is None]
    if bad or not converted:
        raise SvEngineError(
            f"The {name} part of {source} is incomplete ({len(bad)} tensors missing, e.g. {bad[:3]}).",
            f"Re-download the checkpoint from {CONTROLNET_URL}.",
        )
    return converted


def split_control_sd15(state_dict: StateDict) -> dict[str, StateDict]:
    """Split an LDM ControlNet 1.0 state dict into its four prefixes (prefixes kept)."""
    prefixes = {
        "unet": "model.diffusion_model.",
        "controlnet": "control_model.",
        "vae": "first_stage_model.",
        "text_encoder": "cond_stage_model.transformer.",
    }
    return {name: {k: v for k, v in state_dict.items() if k.startswith(p)} for name, p in prefixes.items()}


def convert_control_sd15(
    path: str | os.PathLike | StateDict,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    parts: Iterable[str] = ("text_encoder", "unet", "vae", "controlnet"),
) -> dict[str, torch.nn.Module]:
    """Convert ``control_sd15_*.pth`` (SD 1.5 + ControlNet 1.0, LDM layout) into diffusers/transformers modules.

    Args:
        path: the checkpoint file (or an already loaded state dict).
        configs: architecture configs by part name (``unet``, ``controlnet``, ``vae``, ``text_encoder``);
            default: the shipped SD 1.5 configs.
        parts: which of ``text_encoder``, ``unet``, ``vae``, ``controlnet`` to build.

    Returns:
        ``{"text_encoder": CLIPTextModel, "unet": UNet2DConditionModel, "vae": AutoencoderKL,
        "controlnet": ControlNetModel}`` (only the requested parts), in eval mode, float32 as stored.
    """
    classes = model_classes()  # first: the single-file helpers import diffusers' models too
    from diffusers.loaders.single_file_utils import (
        convert_controlnet_checkpoint,
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    fix = f"Download control_sd15_canny.pth / control_sd15_depth.pth from {CONTROLNET_URL}."
    source = "the state dict" if isinstance(path, Mapping) else str(path)
    state_dict = dict(path) if isinstance(path, Mapping) else read_state_dict(path, "ControlNet checkpoint", fix)
    split = split_control_sd15(state_dict)
    parts = tuple(parts)
    for part in parts:
        if part not in split:
            raise SvEngineError(f"Unknown checkpoint part {part!r}.", f"Use some of {', '.join(split)}.")
        if not split[part]:
            raise SvEngineError(
                f"{source} has no {part} weights (no '{_PREFIX_NAMES[part]}*' keys): it is not an "
                "SD 1.5 + ControlNet 1.0 checkpoint.",
                fix,
            )
    configs = dict(configs or {})
    cfg = {name: dict(configs.get(name) or load_config(name)) for name in parts}
    out: dict[str, torch.nn.Module] = {}
    if "unet" in parts:
        sd = _check_converted(convert_ldm_unet_checkpoint(split["unet"], cfg["unet"]), "UNet", source)
        out["unet"] = _instantiate(lambda: classes.unet.from_config(cfg["unet"]), sd, "UNet", source)
    if "controlnet" in parts:
        sd = _check_converted(
            convert_controlnet_checkpoint(split["controlnet"], cfg["controlnet"]), "ControlNet", source
        )
        out["controlnet"] = _instantiate(
            lambda: classes.controlnet.from_config(cfg["controlnet"]), sd, "ControlNet", source
        )
    if "vae" in parts:
        sd = _check_converted(convert_ldm_vae_checkpoint(split["vae"], cfg["vae"]), "VAE", source)
        out["vae"] = _instantiate(lambda: classes.vae.from_config(cfg["vae"]), sd, "VAE", source)
    if "text_encoder" in parts:
        sd = convert_ldm_clip_checkpoint(split["text_encoder"])
        sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}  # a buffer in old transformers
        sd = _check_converted(sd, "text encoder", source)
        out["text_encoder"] = _instantiate(lambda: build_text_encoder(cfg["text_encoder"]), sd, "text encoder", source)
    return out


_PREFIX_NAMES = {
    "unet": "model.diffusion_model.",
    "controlnet": "control_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
}


def load_original_checkpoints(
    canny_path: str | os.PathLike | None,
    depth_path: str | os.PathLike | None,
    dpt_path: str | os.PathLike | None = None,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> SDComponents:
    """SD 1.5 + both ControlNets (+ MiDaS) from the original files StableVideo uses.

    The SD 1.5 base (text encoder, UNet, VAE) is taken from the first given ControlNet file: ControlNet 1.0
    trains with SD frozen, so both files carry the same SD 1.5 weights; only ``control_model.*`` is read
    from the other. Either ControlNet may be ``None`` (that field is then ``None``).
    """
    if canny_path is None and depth_path is None:
        raise SvEngineError(
            "No ControlNet checkpoint given.",
            f"Pass control_sd15_canny.pth and/or control_sd15_depth.pth ({CONTROLNET_URL}).",
        )
    base_path = canny_path if canny_path is not None else depth_path
    base = convert_control_sd15(base_path, configs)
    controlnets: dict[str, torch.nn.Module | None] = {"canny": None, "depth": None}
    controlnets["canny" if canny_path is not None else "depth"] = base.pop("controlnet")
    if canny_path is not None and depth_path is not None:
        controlnets["depth"] = convert_control_sd15(depth_path, configs, parts=("controlnet",))["controlnet"]
    depth_model = None
    if dpt_path is not None:
        depth_model = load_midas_dpt_hybrid(dpt_path, (configs or {}).get("dpt_hybrid"))
    return SDComponents(
        tokenizer=load_clip_tokenizer(),
        text_encoder=base["text_encoder"],
        unet=base["unet"],
        controlnet_canny=controlnets["canny"],
        controlnet_depth=controlnets["depth"],
        vae=base["vae"],
        depth_model=depth_model,
        is_random=False,
        description=f"original checkpoints: canny={canny_path}, depth={depth_path}, dpt={dpt_path}",
    ).eval()


def convert_original_to_folder(
    canny_path: str | os.PathLike | None,
    depth_path: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    dpt_path: str | os.PathLike | None = None,
    dtype: torch.dtype | None = torch.float16,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Offline conversion of the original files into the folder layout (a), safetensors, ``dtype``
    (default fp16, halves the size; ``None`` keeps float32; the depth model stays float32). Returns
    ``out_dir``."""
    components = load_original_checkpoints(canny_path, depth_path, dpt_path, configs)
    if dtype is not None:
        components.to(dtype=dtype, depth_dtype=torch.float32)
    return save_components(components, out_dir)


# --------------------------------------------------------------------------------------------------
# (a) folder layout
# --------------------------------------------------------------------------------------------------


def save_components(components: SDComponents, out_dir: str | os.PathLike, safe_serialization: bool = True) -> Path:
    """Write ``components`` in the folder layout (a) (``tokenizer/`` included)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for field, sub in FOLDER_SUBDIRS.items():
        module = getattr(components, field)
        if module is not None:
            module.save_pretrained(out / sub, safe_serialization=safe_serialization)
    components.tokenizer.save_pretrained(out / "tokenizer")
    logger.info("Saved models to %s", out)
    return out


def _weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder: the library's own name, else a sharded index's shards, else the
    folder's one ``*.safetensors`` (a variant such as ``diffusion_pytorch_model.fp16.safetensors``)."""
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    for index in sorted(folder.glob("*.safetensors.index.json")):
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        if shards:
            return [folder / shard for shard in shards]
    singles = sorted(folder.glob("*.safetensors"))
    return singles[:1] if len(singles) == 1 else []


def _read_weights(files: list[Path], name: str, device: torch.device | None, dtype: torch.dtype | None) -> StateDict:
    """The tensors of ``files`` on ``device`` (default the CPU), cast to ``dtype`` there. safetensors'
    own loader straight to the GPU was the fastest route measured (benchmarks/weights_load.py)."""
    state: StateDict = {}
    for path in files:
        state.update(read_state_dict(path, f"{name} weights", device=device))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return state


def _model_folder(folder: Path, name: str) -> tuple[dict, list[Path]]:
    """A model folder's ``config.json`` and weight files, checked."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SvEngineError(
            f"{folder} has no config.json (expected the {name} in diffusers/transformers format).",
            "See the layout in sv_engine.stablevideo.models.loaders (save_pretrained output).",
        )
    files = _weight_files(folder)
    if not files:
        raise SvEngineError(
            f"{folder} has no weights ({' / '.join(_WEIGHT_FILES)}).", f"Copy the {name} weights into {folder}."
        )
    try:
        return json.loads(config_path.read_text()), files
    except (OSError, ValueError) as exc:
        raise SvEngineError(
            f"Cannot read {config_path} ({exc}).", f"Re-download or re-convert the {name} (corrupt config)."
        ) from exc


#: Model folders whose weights are read at once (threads: the reads and host-to-GPU copies run without
#: the GIL); the models are built one after another meanwhile, on the calling thread.
READ_THREADS = 4


def load_diffusers_folder(
    model_dir: str | os.PathLike,
    need: Iterable[str] = ("canny", "depth"),
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> SDComponents:
    """Load the folder layout (a) (see module docstring).

    Args:
        model_dir: the folder.
        need: which optional models must be present: ``"canny"``, ``"depth"`` (ControlNets), ``"dpt"``.
            Absent optional models that are not needed become ``None``.
        dtype: load in this dtype (default: as stored).
        device: read the weights straight onto this device (default: the CPU).
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise SvEngineError(
            f"Model folder {root} does not exist.",
            "Pass a folder in the sv-engine layout (see `sv-engine convert-weights`) or the original .pth files.",
        )
    need = set(need)
    unknown = need - {"canny", "depth", "dpt"}
    if unknown:
        raise SvEngineError(f"Unknown model names {sorted(unknown)}.", "Use 'canny', 'depth', 'dpt'.")
    found = model_classes()
    classes = {
        "text_encoder": found.text_encoder,
        "unet": found.unet,
        "vae": found.vae,
        "controlnet_canny": found.controlnet,
        "controlnet_depth": found.controlnet,
        "depth_model": found.depth,
    }
    required = {"text_encoder", "unet", "vae"} | {f"controlnet_{n}" for n in ("canny", "depth") if n in need}
    if "dpt" in need:
        required.add("depth_model")
    loaded: dict[str, torch.nn.Module | None] = {}
    present: dict[str, tuple[dict, list[Path]]] = {}
    for field, sub in FOLDER_SUBDIRS.items():
        if (root / sub).is_dir():
            present[field] = _model_folder(root / sub, sub)
        elif field in required:
            raise SvEngineError(
                f"Model folder {root} has no {sub}/ subfolder.",
                f"Add {sub}/ (config.json + weights) or convert the original checkpoints.",
            )
        else:
            loaded[field] = None
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="sv-read-weights") as pool:
        reads = {
            field: pool.submit(
                _read_weights,
                files,
                FOLDER_SUBDIRS[field],
                device,
                torch.float32 if field == "depth_model" and dtype else dtype,  # see SDComponents.to
            )
            for field, (_, files) in present.items()
        }
        for field, (config, _) in present.items():
            sub = FOLDER_SUBDIRS[field]
            fix = (
                f"Re-download or re-convert the {sub} weights in {root / sub} "
                f"(an SD 1.5-family {sub} in its library's format)."
            )
            build = functools.partial(classes[field].from_config, config)
            loaded[field] = _instantiate(build, reads[field].result(), sub, str(root / sub), fix)
    tokenizer = load_clip_tokenizer(root / "tokenizer") if (root / "tokenizer").is_dir() else load_clip_tokenizer()
    return SDComponents(
        tokenizer=tokenizer,
        **loaded,
        is_random=False,  # type: ignore[arg-type]
        description=f"diffusers folder {root}",
    ).eval()


# --------------------------------------------------------------------------------------------------
# (c) MiDaS DPT-hybrid
# --------------------------------------------------------------------------------------------------

_MIDAS_RULES: list[tuple[str, str]] = [
    # (transformers regex, MiDaS template); first match wins.
    (r"dpt\.embeddings\.cls_token", "pretrained.model.cls_token"),
    (r"dpt\.embeddings\.position_embeddings", "pretrained.model.pos_embed"),
    (r"dpt\.embeddings\.projection\.(\w+)", "pretrained.model.patch_embed.proj.{0}"),
    (
        r"dpt\.embeddings\.backbone\.bit\.embedder\.convolution\.(\w+)",
        "pretrained.model.patch_embed.backbone.stem.conv.{0}",
    ),
    (r"dpt\.embeddings\.backbone\.bit\.embedder\.norm\.(\w+)", "pretrained.model.patch_embed.backbone.stem.norm.{0}"),
    (
        r"dpt\.embeddings\.backbone\.bit\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)",
        "pretrained.model.patch_embed.backbone.stages.{0}.blocks.{1}.{2}",
    ),
    (r"dpt\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(\w+)", "pretrained.model.blocks.{0}.attn.proj.{1}"),
    (r"dpt\.encoder\.layer\.(\d+)\.intermediate\.dense\.(\w+)", "pretrained.model.blocks.{0}.mlp.fc1.{1}"),
    (r"dpt\.encoder\.layer\.(\d+)\.output\.dense\.(\w+)", "pretrained.model.blocks.{0}.mlp.fc2.{1}"),
    (r"dpt\.encoder\.layer\.(\d+)\.layernorm_before\.(\w+)", "pretrained.model.blocks.{0}.norm1.{1}"),
    (r"dpt\.encoder\.layer\.(\d+)\.layernorm_after\.(\w+)", "pretrained.model.blocks.{0}.norm2.{1}"),
    (r"dpt\.layernorm\.(\w+)", "pretrained.model.norm.{0}"),
    (r"neck\.reassemble_stage\.readout_projects\.(\d+)\.0\.(\w+)", "pretrained.act_postprocess{0+1}.0.project.0.{1}"),
    (r"neck\.reassemble_stage\.layers\.(\d+)\.projection\.(\w+)", "pretrained.act_postprocess{0+1}.3.{1}"),
    (r"neck\.reassemble_stage\.layers\.(\d+)\.resize\.(\w+)", "pretrained.act_postprocess{0+1}.4.{1}"),
    (r"neck\.convs\.(\d+)\.(\w+)", "scratch.layer{0+1}_rn.{1}"),
    (r"neck\.fusion_stage\.layers\.(\d+)\.projection\.(\w+)", "scratch.refinenet{4-0}.out_conv.{1}"),
    (
        r"neck\.fusion_stage\.layers\.(\d+)\.residual_layer(\d)\.convolution(\d)\.(\w+)",
        "scratch.refinenet{4-0}.resConfUnit{1}.conv{2}.{3}",
    ),
    (r"head\.head\.(\d+)\.(\w+)", "scratch.output_conv.{0}.{1}"),
]
_QKV = re.compile(r"dpt\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(\w+)")
#: MiDaS keys with no transformers counterpart (timm's ImageNet classifier head).
MIDAS_IGNORED = re.compile(r"pretrained\.model\.head\.(weight|bias)")


def midas_key(hf_key: str) -> tuple[str, int | None]:
    """MiDaS name of a transformers DPT-hybrid key, and the q/k/v chunk (0, 1, 2) of timm's fused ``qkv``."""
    m = _QKV.fullmatch(hf_key)
    if m:
        return f"pretrained.model.blocks.{m.group(1)}.attn.qkv.{m.group(3)}", ("query", "key", "value").index(
            m.group(2)
        )
    for pattern, template in _MIDAS_RULES:
        m = re.fullmatch(pattern, hf_key)
        if m:
            groups = list(m.groups())

            def fill(match: re.Match, groups: list[str] = groups) -> str:
                expr = match.group(1)
                if "+" in expr:
                    i, k = expr.split("+")
                    return str(int(groups[int(i)]) + int(k))
                if "-" in expr:
                    k, i = expr.split("-")
                    return str(int(k) - int(groups[int(i)]))
                return groups[int(expr)]

            return re.sub(r"\{([^}]+)\}", fill, template), None
    raise KeyError(f"No MiDaS name for transformers DPT key {hf_key!r}")


def convert_midas_state_dict(midas: StateDict, model: torch.nn.Module, source: str = "the state dict") -> StateDict:
    """Map a MiDaS DPT-hybrid state dict onto ``model``'s (transformers) keys. Raises on missing tensors."""
    out: StateDict = {}
    missing: list[str] = []
    used: set[str] = set()
    target = model.state_dict()
    for key, ref in target.items():
        name, chunk = midas_key(key)
        tensor = midas.get(name)
        if tensor is None:
            missing.append(name)
            continue
        used.add(name)
        if chunk is not None:
            tensor = tensor.chunk(3, dim=0)[chunk]
        if tensor.shape != ref.shape:
            raise SvEngineError(
                f"MiDaS tensor {name} in {source} has shape {tuple(tensor.shape)}, expected {tuple(ref.shape)}.",
                f"Use the dpt_hybrid MiDaS weights ({MIDAS_FILE}, {MIDAS_URL}).",
            )
        out[key] = tensor
    if missing:
        raise SvEngineError(
            f"{source} is not a MiDaS DPT-hybrid checkpoint: {len(missing)} tensors missing (e.g. {missing[:3]}).",
            f"Use {MIDAS_FILE} from {MIDAS_URL}.",
        )
    extra = [k for k in midas if k not in used and not MIDAS_IGNORED.fullmatch(k)]
    if extra:
        logger.warning("Ignoring %d unexpected MiDaS tensors (e.g. %s)", len(extra), extra[:3])
    return out


def midas_state_dict_from_model(model: torch.nn.Module) -> StateDict:
    """The inverse mapping: a transformers DPT-hybrid as a MiDaS-named state dict (qkv fused)."""
    sd: StateDict = {}
    qkv: dict[str, dict[int, torch.Tensor]] = {}
    for key, tensor in model.state_dict().items():
        name, chunk = midas_key(key)
        if chunk is None:
            sd[name] = tensor.clone()
        else:
            qkv.setdefault(name, {})[chunk] = tensor
    for name, parts in qkv.items():
        sd[name] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return sd


def load_midas_dpt_hybrid(
    path: str | os.PathLike | StateDict, config: Mapping[str, Any] | None = None
) -> torch.nn.Module:
    """MiDaS ``dpt_hybrid-midas-*.pt`` → transformers ``DPTForDepthEstimation`` (hybrid), eval mode.

    ``config``: DPT config (default: the shipped full-size ``dpt_hybrid`` config).
    """
    fix = f"Download {MIDAS_FILE} from {MIDAS_URL} and pass its path."
    source = "the state dict" if isinstance(path, Mapping) else str(path)
    midas = dict(path) if isinstance(path, Mapping) else read_state_dict(path, "MiDaS DPT-hybrid checkpoint", fix)
    if not any(k.startswith("pretrained.model.") for k in midas) or not any(k.startswith("scratch.") for k in midas):
        raise SvEngineError(f"{source} is not a MiDaS DPT checkpoint (no pretrained.model.* / scratch.* keys).", fix)
    cfg = dict(config or load_config("dpt_hybrid"))
    with torch.device("meta"):
        skeleton = build_dpt(cfg)
    sd = convert_midas_state_dict(midas, skeleton, source)
    return _instantiate(lambda: build_dpt(cfg), sd, "MiDaS DPT-hybrid", source)


# --------------------------------------------------------------------------------------------------
# One entry point
# --------------------------------------------------------------------------------------------------


def load_components(
    model_dir: str | os.PathLike | None = None,
    *,
    canny_ckpt: str | os.PathLike | None = None,
    depth_ckpt: str | os.PathLike | None = None,
    dpt_ckpt: str | os.PathLike | None = None,
    need: Iterable[str] = ("canny", "depth"),
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> SDComponents:
    """Load user weights from a folder (a) or the original files (b) + (c), then move to ``device``/``dtype``.

    With ``model_dir``, ``dpt_ckpt`` may still supply the MiDaS file when the folder has no ``dpt/``.
    """
    if model_dir is not None:
        need = set(need)
        folder_need = need - ({"dpt"} if dpt_ckpt is not None else set())
        components = load_diffusers_folder(model_dir, folder_need, dtype, torch.device(device) if device else None)
        if dpt_ckpt is not None and components.depth_model is None:
            components.depth_model = load_midas_dpt_hybrid(dpt_ckpt)
    elif canny_ckpt is not None or depth_ckpt is not None:
        components = load_original_checkpoints(canny_ckpt, depth_ckpt, dpt_ckpt)
    else:
        raise SvEngineError(
            "No model weights given.",
            "Pass a converted model folder, or control_sd15_canny.pth / control_sd15_depth.pth "
            f"({CONTROLNET_URL}) and {MIDAS_FILE}.",
        )
    if device is not None or dtype is not None:
        components.to(device, dtype, depth_dtype=torch.float32 if dtype else None)
    return components.eval()


def _find_one(root: Path, patterns: Iterable[str]) -> Path | None:
    for pattern in patterns:
        hits = sorted(p for p in root.rglob(pattern) if p.is_file())
        if hits:
            if len(hits) > 1:
                logger.warning("Several files match %s under %s; using %s", pattern, root, hits[0])
            return hits[0]
    return None


def load_weights(
    path: str | os.PathLike,
    need: Iterable[str] = ("canny", "depth"),
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> SDComponents:
    """Load user weights from one path, detecting the format:

    * a folder in layout (a) (has ``unet/``): :func:`load_diffusers_folder`; if it has no ``dpt/`` but a
      ``dpt_hybrid-midas*.pt`` lies anywhere below it, that file is loaded as the depth model;
    * a folder holding the original files (anywhere below it, e.g. ControlNet's ``models/`` and
      ``annotator/ckpts/``): ``control_sd15_canny*.pth``, ``control_sd15_depth*.pth``,
      ``dpt_hybrid-midas*.pt`` (``.safetensors`` also accepted): :func:`load_original_checkpoints`;
    * a single ``control_sd15_{canny,depth}*.pth`` file: that ControlNet only.

    ``configs``: architecture overrides for the original files (tests); default the shipped SD 1.5 configs.
    ``dtype``: the folder layout loads straight into it (fp16 files for an fp16 edit are never widened to
    fp32 and back); the original checkpoints load as stored. ``device``: the folder layout's weights are
    read straight onto it (no CPU copy of a GPU edit's models); the original checkpoints load on the CPU.
    """
    root = Path(path)
    layout_help = (
        "Pass a folder in the sv-engine layout (text_encoder/, unet/, vae/, controlnet_canny/, "
        "controlnet_depth/, dpt/) or a folder with control_sd15_canny.pth, control_sd15_depth.pth "
        f"({CONTROLNET_URL}) and {MIDAS_FILE} ({MIDAS_URL})."
    )
    if not root.exists():
        raise SvEngineError(f"Weights path {root} does not exist.", layout_help)
    if root.is_file():
        name = root.name.lower()
        if "canny" in name:
            return load_original_checkpoints(root, None, configs=configs)
        if "depth" in name:
            return load_original_checkpoints(None, root, configs=configs)
        raise SvEngineError(f"Cannot tell which model {root} is.", layout_help)
    if (root / "unet").is_dir():
        need = set(need)
        midas = None if (root / "dpt").is_dir() else _find_one(root, ["dpt_hybrid-midas*.pt", "dpt_hybrid*.pt"])
        return load_components(root, dpt_ckpt=midas, need=need, dtype=dtype, device=device)
    canny = _find_one(root, ["control_sd15_canny*.pth", "control_sd15_canny*.safetensors"])
    depth = _find_one(root, ["control_sd15_depth*.pth", "control_sd15_depth*.safetensors"])
    midas = _find_one(root, ["dpt_hybrid-midas*.pt", "dpt_hybrid*.pt"])
    missing = [n for n, p in (("canny", canny), ("depth", depth)) if n in set(need) and p is None]
    if missing or (canny is None and depth is None):
        raise SvEngineError(
            f"{root} is neither an sv-engine model folder nor holds the original "
            f"control_sd15_{'/'.join(missing or ['canny', 'depth'])}.pth.",
            layout_help,
        )
    if midas is None:
        logger.warning("No %s under %s: background (depth) editing will be unavailable.", MIDAS_FILE, root)
    return load_original_checkpoints(canny, depth, midas, configs)
