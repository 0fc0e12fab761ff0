"""Which implementation the networks' fused ops use: the CUDA kernels of sv_engine.kernels where they
apply (``"auto"``, the default), or torch's unfused ops (``"torch"``) to compare against them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sv_engine.kernels._checks import BACKENDS, check_choice

from .blocks import GEGLU
from .norms import GroupNorm


@contextlib.contextmanager
def kernel_backends(group_norm: str = "auto", geglu: str = "auto") -> Iterator[None]:
    """Every network's GroupNorm (+ SiLU) and GEGLU use these backends inside the block (``"auto"``,
    ``"cuda"`` or ``"torch"``: sv_engine.kernels.group_norm / .geglu), process-wide."""
    check_choice("group_norm", group_norm, BACKENDS)
    check_choice("geglu", geglu, BACKENDS)
    previous = GroupNorm.backend, GEGLU.backend
    GroupNorm.backend, GEGLU.backend = group_norm, geglu
    try:
        yield
    finally:
        GroupNorm.backend, GEGLU.backend = previous
