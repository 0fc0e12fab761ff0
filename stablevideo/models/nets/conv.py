"""``nn.Conv2d`` whose bias, on a channels-last fp16/bf16 CUDA output, is added by the vectorised
kernel of sv_engine.kernels.bias (the same bits as ATen's broadcast add, which runs unvectorised)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sv_engine.kernels._checks import tracing
from sv_engine.kernels.bias import add_channel_bias_
from torch import nn


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, initialisation and result); ``backend`` as
    :class:`.norms.GroupNorm`'s, for the bias add."""

    backend: str = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None or self.padding_mode != "zeros" or not x.is_cuda or self.backend == "torch" or tracing():
            return super().forward(x)
        y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return add_channel_bias_(y, self.bias, backend=self.backend)
