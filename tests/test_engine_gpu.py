"""ONNX Runtime CUDA EP with IO binding / CUDA graphs, and torch.compile on GPU (skipped on CPU)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _ort_cuda():
    from sv_engine.engine.ort_backend import OrtBackend

    ok, reason = OrtBackend.availability(torch.device("cuda"))
    if not ok:
        pytest.skip(f"ORT CUDA EP unavailable: {reason}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from sv_engine.engine.backend import load_manifest
    from sv_engine.export.onnx_export import export_all
    from sv_engine.export.registry import build_specs
    from sv_engine.export.spec import TINY_SHAPES
    from sv_engine.stablevideo.models.tiny import build_tiny_components
    from sv_engine.stablevideo.nla import NLAModel

    out = tmp_path_factory.mktemp("gpu-onnx")
    specs = build_specs(build_tiny_components(0), NLAModel.random(0), names=["unet_controlnet_canny", "controlnet_canny", "nla_field"],
                        shapes=TINY_SHAPES, device="cuda")
    export_all(specs, out)
    return specs, load_manifest(out)


@pytest.mark.parametrize("name", ["unet_controlnet_canny", "controlnet_canny"])
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_ort_cuda_io_binding(exported, name, cuda_graph):
    _ort_cuda()
    from sv_engine.engine.backend import get_backend
    from sv_engine.engine.parity import compare

    specs, sources = exported
    spec = specs[name]
    # A CUDA graph needs fixed dims (ORT keeps symbolic shape arithmetic on the CPU and refuses to capture).
    fixed = {"enable_cuda_graph": True, "free_dimensions": spec.onnx_dim_values(spec.symbols("opt"))} if cuda_graph else {}
    model = get_backend("ort", device="cuda", **fixed).compile(sources[name])
    for seed in (0, 1):
        x = spec.sample_inputs("opt", seed=seed, device="cuda")
        with torch.inference_mode():
            ref = spec.torch_module()(*[x[n] for n in spec.input_names()])
        out = model(**x)
        for key, r in zip(spec.output_names(), ref):
            assert out[key].device.type == "cuda"
            assert compare(r, out[key])["max_rel"] < 1e-3


def test_torch_compile_cuda(exported):
    from sv_engine.engine.backend import get_backend
    from sv_engine.engine.parity import compare

    specs, _ = exported
    spec = specs["nla_field"]
    model = get_backend("torch_compile", device="cuda").compile(spec.model_source())
    x = spec.sample_inputs("opt", device="cuda", N=4096)
    with torch.inference_mode():
        ref = spec.torch_module()(x["xyt"])
    for _ in range(3):
        out = model(**x)
    assert compare(ref[0], out["fg_uv"])["max_rel"] < 1e-4


def test_torch_cuda_graph_replays_every_shape_correctly(exported):
    """Per-shape CUDA graphs sharing one pool: each shape, revisited after another, and new inputs
    give the eager module's answer (not a stale replay)."""
    from sv_engine.engine.backend import get_backend
    from sv_engine.engine.parity import compare

    specs, _ = exported
    spec = specs["unet_controlnet_canny"]
    model = get_backend("torch", device="cuda", cuda_graph=True).compile(spec.model_source())
    assert not model.thread_safe
    small, large = spec.symbol_ranges()["h"][0], spec.symbol_ranges()["h"][2]
    for seed, h in ((0, small), (1, large), (2, small), (3, large)):
        x = spec.sample_inputs("opt", seed=seed, device="cuda", h=h)
        with torch.inference_mode():
            ref = spec.torch_module()(*[x[n] for n in spec.input_names()])
        ref = (ref,) if isinstance(ref, torch.Tensor) else ref
        out = model(**x)
        for key, r in zip(spec.output_names(), ref):
            assert compare(r, out[key])["max_rel"] < 1e-5, (seed, h, key)
