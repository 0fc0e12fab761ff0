"""geglu: the fused kernel against float64 value * GELU(gate) (GPU), and where it applies (CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sv_engine.kernels.geglu import fused_applies, geglu, geglu_reference

from sv_engine.errors import SvEngineError

gpu = pytest.mark.gpu  # skipped without a CUDA GPU (tests/conftest.py)


def test_cpu_input_is_the_torch_expression():
    projected = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    assert not fused_applies(projected)
    value, gate = projected.chunk(2, dim=-1)
    assert torch.equal(geglu(projected), value * F.gelu(gate))
    assert torch.equal(geglu_reference(projected), value * F.gelu(gate))
    with pytest.raises(SvEngineError, match="fused GEGLU"):
        geglu(projected, backend="cuda")


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 7168, 2560), (2, 448, 10240), (3, 5, 16)])  # SD's widths; a tiny one
def test_kernel_matches_float64(dtype, shape):
    g = torch.Generator("cuda").manual_seed(0)
    projected = (torch.randn(shape, generator=g, device="cuda") * 3).to(dtype)
    assert fused_applies(projected)
    out = geglu(projected)
    value, gate = projected.double().chunk(2, dim=-1)
    want = value * F.gelu(gate)
    assert out.shape == want.shape and out.dtype == dtype
    # one rounding to fp16/bf16 (half an ulp relative) plus float32 erf (~1e-7): torch's unfused
    # expression rounds twice and is held to the same bar
    tol = 2**-10 if dtype == torch.float16 else 2**-7
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    unfused = geglu_reference(projected).double()
    assert (out.double() - want).abs().max() <= (unfused - want).abs().max() + tol


@gpu
def test_strided_input_runs_torch():
    projected = torch.randn(4, 64, device="cuda", dtype=torch.float16)[:, :32]
    assert not fused_applies(projected)
    assert torch.equal(geglu(projected), geglu_reference(projected))
