"""TensorRT backend on a real GPU (tensorrt or tensorrt_rtx); skipped with the reason elsewhere."""

from __future__ import annotations

import pytest
import torch
from sv_engine.engine.trt_backend import trt_available

_ok, _reason = trt_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _ok, reason=f"TensorRT backend unavailable: {_reason}")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from sv_engine.engine.backend import load_manifest
    from sv_engine.export.onnx_export import export_all
    from sv_engine.export.registry import build_specs
    from sv_engine.export.spec import TINY_SHAPES
    from sv_engine.stablevideo.models.tiny import build_tiny_components
    from sv_engine.stablevideo.nla import NLAModel

    out = tmp_path_factory.mktemp("trt-onnx")
    specs = build_specs(
        build_tiny_components(0),
        NLAModel.random(0),
        names=["unet_controlnet_canny", "nla_field"],
        shapes=TINY_SHAPES,
        device="cuda",
    )
    export_all(specs, out)
    return specs, load_manifest(out), out


def test_trt_fused_unet_matches_torch_and_caches(exported, tmp_path):
    from sv_engine.engine.parity import compare
    from sv_engine.engine.registry import get_backend

    specs, sources, _ = exported
    spec = specs["unet_controlnet_canny"]
    backend = get_backend("trt", device="cuda", cache_dir=tmp_path, precision="fp32")
    try:
        engine, rebuilt = backend.build(sources["unet_controlnet_canny"])
    except Exception as exc:  # TensorRT-RTX builds on Hopper but its engines do not run there
        if backend.flavor == "tensorrt_rtx":
            pytest.skip(f"tensorrt_rtx engine cannot load on {torch.cuda.get_device_name()}: {exc}")
        raise
    assert rebuilt
    assert not backend.build(sources["unet_controlnet_canny"])[1]  # cache hit
    model = backend.compile(sources["unet_controlnet_canny"])
    for scale in (0.5, 1.5):
        x = spec.sample_inputs("opt", device="cuda")
        x["control_scale"] = torch.tensor([scale], device="cuda")
        with torch.inference_mode():
            ref = spec.torch_module()(*[x[n] for n in spec.input_names()])[0]
        out = model(**x)["noise_pred"]
        assert compare(ref, out)["cosine"] > 0.9999


def test_trt_cuda_graph_nla(exported, tmp_path):
    from sv_engine.engine.parity import compare
    from sv_engine.engine.registry import get_backend

    specs, sources, _ = exported
    backend = get_backend("trt", device="cuda", cache_dir=tmp_path, precision="fp32", cuda_graphs=True)
    if backend.flavor == "tensorrt_rtx" and torch.cuda.get_device_capability()[0] >= 9:
        pytest.skip("tensorrt_rtx engines do not run on datacenter GPUs")
    model = backend.compile(sources["nla_field"])
    spec = specs["nla_field"]
    for seed in (0, 1):
        x = spec.sample_inputs("opt", seed=seed, device="cuda", N=1000)
        with torch.inference_mode():
            ref = spec.torch_module()(x["xyt"])
        out = model(**x)
        assert compare(ref[2], out["alpha"])["max_rel"] < 1e-4
