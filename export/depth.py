"""DPT (MiDaS hybrid) depth: ``pixel_values`` (B,3,S,S) normalised -> ``depth`` (B,S,S).

The spatial size is fixed at the model's ``image_size`` (384 for DPT-hybrid): the pipeline resizes
to it (as MiDaS does) and back; a fixed size keeps the ViT position-embedding resize out of the graph.
"""

from __future__ import annotations

from sv_engine.export.spec import DEFAULT_SHAPES, ExportSpec, ShapeRange
from torch import nn


class _Depth(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return (self.model(pixel_values).predicted_depth,)


class DepthSpec(ExportSpec):
    name = "depth"
    #: Stays fp32: BiT's weight-standardised convs + ViT in fp16 measured cosine 0.92 vs fp32 (tiny
    #: model, ORT); the depth net runs once per keyframe/atlas, so fp32 costs nothing noticeable.
    fp16_ok = False

    def __init__(
        self, depth_model: nn.Module, precision: str = "fp32", shapes: ShapeRange = DEFAULT_SHAPES, device="cpu"
    ) -> None:
        super().__init__(precision, shapes, device)
        self.depth_model = depth_model
        self.size = int(depth_model.config.image_size)

    def build_module(self):
        return _Depth(self.depth_model)

    def input_names(self):
        return ["pixel_values"]

    def output_names(self):
        return ["depth"]

    def input_shapes(self):
        return {"pixel_values": ["B", 3, self.size, self.size]}

    def output_shapes(self):
        return {"depth": ["B", self.size, self.size]}

    def symbol_ranges(self):
        return {"B": self.shapes.batch}

    def input_dtypes(self):
        return {"pixel_values": self.dtype}
