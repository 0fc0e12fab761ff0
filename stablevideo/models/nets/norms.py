"""GroupNorm with an optional SiLU in the same pass: the NHWC kernel (sv_engine.kernels.group_norm) on
channels-last fp16/bf16 CUDA activations, ``F.group_norm`` (then ``F.silu``) everywhere else.

The module is ``nn.GroupNorm`` with the same parameters, names and result, so checkpoints load
unchanged; where a block computes ``act(norm(x))`` with SiLU it builds ``GroupNorm(..., silu=True)``
and skips its own activation.
"""

from __future__ import annotations

import torch
from sv_engine.kernels.group_norm import group_norm
from torch import nn


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm``, followed by SiLU when ``silu``; ``backend`` picks the implementation
    (``"auto"``: the fused kernel where it applies; :func:`.fused.kernel_backends` sets it)."""

    backend: str = "auto"

    def __init__(
        self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *, silu: bool = False
    ):
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
        self.silu = silu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, silu=self.silu, backend=self.backend)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", silu=True" if self.silu else "")


def is_silu(name: str) -> bool:
    """Whether the activation a config names (diffusers' ``act_fn``) is SiLU, which GroupNorm can fuse."""
    return name.lower() in ("silu", "swish")
