"""Which implementation the networks' fused ops use: the CUDA kernels of sv_engine.kernels where they
apply (``"auto"``, the default), or torch's unfused ops (``"torch"``) to compare against them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sv_engine.kernels._checks import BACKENDS, check_choice

from .blocks import GEGLU
from .conv import Conv2d
from .norms import GroupNorm


@contextlib.contextmanager
def kernel_backends(group_norm: str = "auto", geglu: str = "auto", conv_bias: str = "auto") -> Iterator[None]:
    """Every network's GroupNorm (+ SiLU), GEGLU and convolution bias use these backends inside the
    block (``"auto"``, ``"cuda"`` or ``"torch"``: sv_engine.kernels.group_norm, .geglu, .bias),
    process-wide."""
    for name, value in (("group_norm", group_norm), ("geglu", geglu), ("conv_bias", conv_bias)):
        check_choice(name, value, BACKENDS)
    previous = GroupNorm.backend, GEGLU.backend, Conv2d.backend
    GroupNorm.backend, GEGLU.backend, Conv2d.backend = group_norm, geglu, conv_bias
    try:
        yield
    finally:
        GroupNorm.backend, GEGLU.backend, Conv2d.backend = previous
