"""The Neural Layered Atlas networks as graphs.

* :class:`NLAFieldSpec`: fg mapping, bg mapping and alpha evaluated together for a batch of
  normalised (x, y, t) points -> ``fg_uv`` (N,2), ``bg_uv`` (N,2), ``alpha`` (N,1) with StableVideo's
  formulas (imported from :mod:`sv_engine.stablevideo.nla`, not re-typed).
* :class:`NLAAtlasSpec`: the atlas net, uv (N,2) -> ``rgb`` (N,3) in [0, 1].

Both stay fp32 whatever precision is asked: fp16 resolves [-1, 1] coordinates to ~1e-3, i.e. about
half a pixel of a 1024 atlas — visible as texture swimming — and the MLPs are cheap anyway.
"""

from __future__ import annotations

import torch
from sv_engine.export.spec import DEFAULT_SHAPES, ExportSpec, ShapeRange
from sv_engine.stablevideo.nla import NLAField, NLAModel, atlas_rgb
from torch import nn

#: Points per call: min, opt (one 512×512 frame), max (a 1024×1024 frame).
POINTS_RANGE = (1, 512 * 512, 1024 * 1024)


class _Atlas(nn.Module):
    def __init__(self, nla: NLAModel) -> None:
        super().__init__()
        self.atlas = nla.atlas

    def forward(self, uv):
        return (atlas_rgb(self.atlas(uv)),)


class _NLABase(ExportSpec):
    fp16_ok = False

    def __init__(
        self,
        nla: NLAModel,
        precision: str = "fp32",
        shapes: ShapeRange = DEFAULT_SHAPES,
        device="cpu",
        points: tuple[int, int, int] = POINTS_RANGE,
    ) -> None:
        super().__init__(precision, shapes, device)
        self.nla = nla
        self.points = points

    def symbol_ranges(self):
        return {"N": self.points}

    def export_symbols(self):
        return {"N": 4096}  # tracing does not need a full frame of points

    def input_dtypes(self):
        return {n: torch.float32 for n in self.input_names()}

    def sample_input(self, name, shape, dtype, gen):
        return (torch.rand(shape, generator=gen) * 2 - 1).to(dtype)


class NLAFieldSpec(_NLABase):
    """``xyt`` (N,3) normalised -> ``fg_uv`` (N,2), ``bg_uv`` (N,2), ``alpha`` (N,1)."""

    name = "nla_field"

    def build_module(self):
        return NLAField(self.nla, alpha_column=True)

    def input_names(self):
        return ["xyt"]

    def output_names(self):
        return ["fg_uv", "bg_uv", "alpha"]

    def input_shapes(self):
        return {"xyt": ["N", 3]}

    def output_shapes(self):
        return {"fg_uv": ["N", 2], "bg_uv": ["N", 2], "alpha": ["N", 1]}


class NLAAtlasSpec(_NLABase):
    """``uv`` (N,2) -> ``rgb`` (N,3) in [0, 1]."""

    name = "nla_atlas"

    def build_module(self):
        return _Atlas(self.nla)

    def input_names(self):
        return ["uv"]

    def output_names(self):
        return ["rgb"]

    def input_shapes(self):
        return {"uv": ["N", 2]}

    def output_shapes(self):
        return {"rgb": ["N", 3]}
