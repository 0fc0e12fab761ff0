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

#: The implementations :func:`set_group_norm_backend` takes (sv_engine.kernels.group_norm.group_norm).
GROUP_NORM_BACKENDS = ("auto", "cuda", "torch")


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm``, followed by SiLU when ``silu``; ``backend`` picks the implementation
    (``"auto"``: the fused kernel where it applies; set per module by :func:`set_group_norm_backend`,
    or on the class for every module that was not)."""

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


def set_group_norm_backend(module: nn.Module, backend: str) -> int:
    """Every :class:`GroupNorm` under ``module`` uses ``backend``; returns how many there are."""
    from sv_engine.kernels._checks import check_choice

    check_choice("backend", backend, GROUP_NORM_BACKENDS)
    norms = [m for m in module.modules() if isinstance(m, GroupNorm)]
    for norm in norms:
        norm.backend = backend
    return len(norms)


def is_silu(name: str) -> bool:
    """Whether the activation a config names (diffusers' ``act_fn``) is SiLU, which GroupNorm can fuse."""
    return name.lower() in ("silu", "swish")
