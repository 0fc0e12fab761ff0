"""The export spec: everything the ONNX exporter and the engines need to know about one model.

Pattern of TensorRT's demo/Diffusion ``models.py``: one subclass per model (text encoder, fused
UNet+ControlNet, ControlNet, UNet, VAE encoder/decoder, NLA field, atlas, depth) declares

* the torch module to export (:meth:`ExportSpec.build_module`, a wrapper taking the inputs
  positionally in :meth:`input_names` order and returning a tuple in :meth:`output_names` order),
* its I/O: names, symbolic shapes over a few symbols (``B``, ``h``, ``w``, ``N``; latent-space
  ``h``/``w``, images are ``h*8``), dtypes,
* the symbol ranges (min/opt/max), from which the dynamic axes and the min/opt/max shape profile of
  every input are derived,
* sample inputs (random, seeded) for tracing, parity and benchmarks.

Abstract methods raise ``NotImplementedError`` naming the class (and ``ExportSpec`` itself cannot be
instantiated), so a half-written spec fails loudly.

Default shapes: batch 1–2 (classifier-free guidance doubles the batch), images with short side 512
and long side 512–1024 in multiples of 64 → latents 64×64 .. 128×128 (the profile covers both
orientations), so one engine serves every clip shape.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
import types
from abc import ABC, abstractmethod
from typing import Any

import torch
from sv_engine.engine.backend import ModelSource, dtype_name, eval_dim
from sv_engine.stablevideo.model_source import PRECISIONS
from torch import nn

from sv_engine.errors import SvEngineError

logger = logging.getLogger(__name__)

#: ONNX opset of every export (17: LayerNormalization; TorchScript exporter maximum is 20).
DEFAULT_OPSET = 17


@dataclasses.dataclass(frozen=True)
class ShapeRange:
    """min/opt/max of the batch and of the *image* height/width (pixels)."""

    batch: tuple[int, int, int] = (1, 2, 2)
    height: tuple[int, int, int] = (512, 512, 1024)
    width: tuple[int, int, int] = (512, 512, 1024)
    #: Image sizes must be multiples of this (64 = latent multiple of 8 = the UNet's 3 downsamplings).
    multiple: int = 64
    latent_factor: int = 8

    def latent(self, dim: str) -> tuple[int, int, int]:
        rng = self.height if dim == "h" else self.width
        return tuple(v // self.latent_factor for v in rng)  # type: ignore[return-value]


#: The production profile (SD 1.5 at 512 short side).
DEFAULT_SHAPES = ShapeRange()
#: Small profile for tiny models/tests (64..128 px images, 8..16 latents).
TINY_SHAPES = ShapeRange(height=(64, 64, 128), width=(64, 64, 128), multiple=16)


def _fp32_forward(norm: nn.Module):
    """A forward computing GroupNorm/LayerNorm in fp32 and returning the input dtype; a GroupNorm that
    fuses its SiLU (nets.norms.GroupNorm) keeps it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self, nn.GroupNorm):
            y = nn.functional.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)
            if getattr(self, "silu", False):
                y = nn.functional.silu(y)
        else:
            y = nn.functional.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.to(x.dtype)

    return types.MethodType(forward, norm)


def _half_copy(module: nn.Module) -> nn.Module:
    """``module`` copied in fp16, sharing the tensors that are fp16 already: the pipeline's fp16 UNet
    is not held twice on the GPU (the two fused UNet+ControlNet specs held 4.9 GB of copies on an
    H100). Norm layers get tensors of their own, as they turn fp32 in the copy."""
    norm_tensors = {
        id(t)
        for sub in module.modules()
        if isinstance(sub, (nn.GroupNorm, nn.LayerNorm))
        for t in (*sub.parameters(recurse=False), *sub.buffers(recurse=False))
    }
    shared = {
        id(t): t
        for t in (*module.parameters(), *module.buffers())
        if t.dtype == torch.float16 and id(t) not in norm_tensors
    }
    return copy.deepcopy(module, shared).half()


def prepare_for_precision(
    module: nn.Module, precision: str, fused_attention: bool = False, native_norms: bool = False
) -> nn.Module:
    """A copy of ``module`` in ``precision`` with fp16 overflow guards.

    fp16: weights in half, but GroupNorm/LayerNorm compute in fp32 (variance of large activations
    overflows 65504), and attention computes QKᵀ and softmax in fp32 (``Attention.upcast``: the
    explicit form) — the two places SD 1.5 overflows in fp16.
    ``fused_attention=True`` keeps the fused form (``scaled_dot_product_attention``) for modules that
    torch runs: its kernels accumulate QKᵀ and softmax in fp32 internally, so the guard is built in,
    while the explicit form materialises every fp32 score matrix (on the H100 it made attention 6×
    and the GEMMs 6.5× slower over a whole edit). The standard ONNX export keeps the explicit form
    (the ONNX decomposition of SDPA runs its softmax in fp16); ONNX Runtime's export form starts from
    the fused one (:mod:`sv_engine.export.ort_attention`).
    """
    if precision not in PRECISIONS:
        raise SvEngineError(f"Unknown precision {precision!r}.", f"Use one of {tuple(PRECISIONS)}.")
    if precision == "fp32":
        return module.float()
    from sv_engine.stablevideo.models.nets.blocks import Attention

    module = _half_copy(module)
    for sub in module.modules():
        if isinstance(sub, (nn.GroupNorm, nn.LayerNorm)):
            if native_norms:
                continue
            sub.float()
            sub.forward = _fp32_forward(sub)
        elif isinstance(sub, Attention) and not fused_attention:
            sub.upcast = True
    return module


def axis_name(expr: int | str) -> str:
    """ONNX dim_param of a symbolic dimension (``"h*8"`` -> ``"H"``)."""
    expr = str(expr).replace(" ", "")
    special = {"h*8": "H", "w*8": "W"}
    return special.get(expr, re.sub(r"\W+", "_", expr).strip("_"))


class ExportSpec(ABC):
    """One exportable model. Subclasses set :attr:`name` and implement the abstract methods."""

    #: Model name (ONNX file stem, manifest key, engine cache name).
    name: str = ""
    #: Whether fp16 is sensible for this model (else it is exported in fp32 whatever was asked).
    fp16_ok: bool = True
    opset: int = DEFAULT_OPSET

    def __init__(
        self, precision: str = "fp32", shapes: ShapeRange = DEFAULT_SHAPES, device: str | torch.device = "cpu"
    ) -> None:
        if not self.name:
            raise NotImplementedError(f"{type(self).__name__} must set the class attribute `name`")
        if precision not in PRECISIONS:
            raise SvEngineError(f"Unknown precision {precision!r} for {self.name}.", f"Use one of {tuple(PRECISIONS)}.")
        if precision == "fp16" and not self.fp16_ok:
            logger.info("%s stays fp32 (fp16 is not precise enough for it)", self.name)
            precision = "fp32"
        self.precision = precision
        self.shapes = shapes
        self.device = torch.device(device)
        self._modules: dict[tuple[bool, bool], nn.Module] = {}  # by (fused_attention, native_norms)

    # ---- to implement ---------------------------------------------------------------------------
    @abstractmethod
    def build_module(self) -> nn.Module:
        """The fp32 torch module to export: ``forward(*inputs in input_names order) -> tuple of outputs``."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_module()")

    @abstractmethod
    def input_names(self) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} must implement input_names()")

    @abstractmethod
    def output_names(self) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} must implement output_names()")

    @abstractmethod
    def input_shapes(self) -> dict[str, list[int | str]]:
        """Symbolic input shapes (ints and symbol expressions, e.g. ``["B", 3, "h*8", "w*8"]``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement input_shapes()")

    @abstractmethod
    def output_shapes(self) -> dict[str, list[int | str]]:
        raise NotImplementedError(f"{type(self).__name__} must implement output_shapes()")

    @abstractmethod
    def symbol_ranges(self) -> dict[str, tuple[int, int, int]]:
        """``{symbol: (min, opt, max)}`` for every symbol used in :meth:`input_shapes`."""
        raise NotImplementedError(f"{type(self).__name__} must implement symbol_ranges()")

    @abstractmethod
    def input_dtypes(self) -> dict[str, torch.dtype]:
        """Input dtypes of the exported graph (floats follow :attr:`dtype` unless noted)."""
        raise NotImplementedError(f"{type(self).__name__} must implement input_dtypes()")

    # ---- derived --------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the exported graph."""
        return torch.float16 if self.precision == "fp16" else torch.float32

    def output_dtypes(self) -> dict[str, torch.dtype]:
        return {n: self.dtype for n in self.output_names()}

    def torch_module(self, fused_attention: bool = False, native_norms: bool = False) -> nn.Module:
        """The module in :attr:`precision` on :attr:`device` (fp16: a guarded copy), in eval mode: the
        export form, or with ``fused_attention`` and ``native_norms`` the form the torch backends run
        (see :func:`prepare_for_precision`)."""
        key = (fused_attention, native_norms)
        if key not in self._modules:
            module = self.build_module().eval()
            module.requires_grad_(False)
            self._modules[key] = (
                prepare_for_precision(module, self.precision, fused_attention, native_norms).to(self.device).eval()
            )
        return self._modules[key]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export`` dynamic axes for inputs and outputs (symbolic dims only)."""
        axes: dict[str, dict[int, str]] = {}
        for name, shape in {**self.input_shapes(), **self.output_shapes()}.items():
            dyn = {i: axis_name(d) for i, d in enumerate(shape) if isinstance(d, str)}
            if dyn:
                axes[name] = dyn
        return axes

    def onnx_dim_values(self, symbols: dict[str, int]) -> dict[str, int]:
        """Each symbolic ONNX dim name of the inputs at these symbol values (ORT's ``free_dimensions``)."""
        return {
            dim: eval_dim(expr, symbols)
            for shape in self.input_shapes().values()
            for expr in shape
            if isinstance(expr, str)
            for dim in [axis_name(expr)]
        }

    def concrete_shape(self, name: str, symbols: dict[str, int]) -> tuple[int, ...]:
        shapes = {**self.input_shapes(), **self.output_shapes()}
        return tuple(eval_dim(d, symbols) for d in shapes[name])

    def symbols(self, which: str = "opt", **overrides: int) -> dict[str, int]:
        idx = {"min": 0, "opt": 1, "max": 2}[which]
        values = {k: v[idx] for k, v in self.symbol_ranges().items()}
        values.update(overrides)
        return values

    def profiles(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """min/opt/max shape of every input (all inputs listed, static ones with min=opt=max)."""
        return {
            n: tuple(self.concrete_shape(n, self.symbols(w)) for w in ("min", "opt", "max"))  # type: ignore[misc]
            for n in self.input_names()
        }

    def sample_inputs(
        self, which: str = "opt", seed: int = 0, device: str | torch.device | None = None, **symbol_overrides: int
    ) -> dict[str, torch.Tensor]:
        """Seeded random inputs at the ``which`` profile point (symbols overridable, e.g. ``h=8``)."""
        gen = torch.Generator().manual_seed(seed)
        symbols = self.symbols(which, **symbol_overrides)
        dtypes = self.input_dtypes()
        out = {}
        for name in self.input_names():
            shape = self.concrete_shape(name, symbols)
            out[name] = self.sample_input(name, shape, dtypes[name], gen)
        device = torch.device(device) if device is not None else self.device
        return {k: v.to(device) for k, v in out.items()}

    def export_symbols(self) -> dict[str, int]:
        """Symbol overrides for the tracing inputs (default: the opt point)."""
        return {}

    def sample_input(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
        """One random input (override for token ids, timesteps, scales ...): standard normal by default."""
        if dtype.is_floating_point:
            return torch.randn(shape, generator=gen).to(dtype)
        return torch.randint(0, 100, shape, generator=gen).to(dtype)

    def model_source(
        self,
        onnx_path=None,
        sha256: str | None = None,
        external_data: list[str] | None = None,
        with_module: bool = True,
    ) -> ModelSource:
        """The engine-layer contract of this model (``module`` set for the torch backends)."""
        return ModelSource(
            name=self.name,
            input_names=self.input_names(),
            output_names=self.output_names(),
            onnx_path=onnx_path,
            module=self.torch_module(fused_attention=True, native_norms=True) if with_module else None,
            input_shapes=self.input_shapes(),
            output_shapes=self.output_shapes(),
            input_dtypes={n: dtype_name(d) for n, d in self.input_dtypes().items()},
            output_dtypes={n: dtype_name(d) for n, d in self.output_dtypes().items()},
            profiles=self.profiles(),
            precision=self.precision,
            sha256=sha256,
            external_data=list(external_data or []),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "precision": self.precision,
            "inputs": self.input_shapes(),
            "outputs": self.output_shapes(),
            "symbols": self.symbol_ranges(),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, precision={self.precision!r})"


def latent_ranges(shapes: ShapeRange) -> dict[str, tuple[int, int, int]]:
    return {"B": shapes.batch, "h": shapes.latent("h"), "w": shapes.latent("w")}
