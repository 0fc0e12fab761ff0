"""Backend registry, the CompiledModel contract and its errors, parity metrics."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from requires import import_or_skip
from sv_engine.engine.backend import Backend, CompiledModel, load_manifest
from sv_engine.engine.parity import THRESHOLDS, compare, compare_outputs, passes, psnr
from sv_engine.engine.registry import available_backends, backend_status, default_backend, get_backend
from sv_engine.export.onnx_export import export_all
from sv_engine.export.registry import build_specs
from sv_engine.export.spec import TINY_SHAPES

from sv_engine.errors import SvEngineError


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Two cheap exports: the NLA field (3 MLPs) and the atlas net."""
    from sv_engine.stablevideo.nla import NLAModel

    nla = NLAModel.random(1)
    specs = build_specs(None, nla, names=["nla_field", "nla_atlas"], shapes=TINY_SHAPES)
    for spec in specs.values():
        spec.points = (1, 256, 4096)  # a small profile so "too large" is cheap to provoke
    out = tmp_path_factory.mktemp("small")
    export_all(specs, out)
    return specs, load_manifest(out)


def test_unknown_backend():
    with pytest.raises(SvEngineError) as err:
        get_backend("tensorflow")
    assert "Unknown backend" in err.value.what and "ort" in err.value.fix


def test_missing_backend_names_pip_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("no onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(SvEngineError) as err:
        get_backend("ort", device="cpu")
    assert "pip install onnxruntime" in err.value.fix


def test_trt_not_usable_on_cpu_is_explained():
    with pytest.raises(SvEngineError) as err:
        get_backend("trt", device="cpu")
    assert "tensorrt" in err.value.fix


def test_available_and_default_backend(caplog):
    names = available_backends("cpu")
    assert "torch" in names and "ort" in names and "trt" not in names
    with caplog.at_level("INFO", logger="sv_engine.engine.registry"):
        assert default_backend("cpu") == "ort"
    assert "default backend: ort" in caplog.text
    status = backend_status("cpu")
    assert status["ort"] == "ok" and status["trt"] != "ok"


def test_backend_is_abstract():
    with pytest.raises(TypeError):
        Backend()  # type: ignore[abstract]
    with pytest.raises(TypeError):
        CompiledModel(None, torch.device("cpu"))  # type: ignore[abstract]


def test_missing_onnx(small, tmp_path):
    _, sources = small
    src = dataclasses.replace(sources["nla_atlas"], onnx_path=tmp_path / "gone.onnx")
    with pytest.raises(SvEngineError) as err:
        get_backend("ort", device="cpu").compile(src)
    assert "missing" in err.value.what and "sv-engine export" in err.value.fix


def test_onnx_of_another_model(small):
    _, sources = small
    wrong = dataclasses.replace(sources["nla_atlas"], onnx_path=sources["nla_field"].onnx_path)
    with pytest.raises(SvEngineError) as err:
        get_backend("ort", device="cpu").compile(wrong)
    assert "does not match" in err.value.what and "xyt" in err.value.what


def test_profile_too_small(small):
    specs, sources = small
    model = get_backend("ort", device="cpu").compile(sources["nla_field"])
    with pytest.raises(SvEngineError) as err:
        model(xyt=torch.zeros(5000, 3))
    assert "outside the engine profile" in err.value.what and "Re-export" in err.value.fix
    with pytest.raises(SvEngineError, match="missing"):
        model(uv=torch.zeros(10, 2))


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_backends_agree_with_reference(small, backend):
    specs, sources = small
    spec = specs["nla_field"]
    src = spec.model_source() if backend == "torch" else sources["nla_field"]
    model = get_backend(backend, device="cpu").compile(src)
    x = spec.sample_inputs("opt", seed=3)
    with torch.inference_mode():
        ref = dict(zip(spec.output_names(), spec.torch_module()(x["xyt"]), strict=False))
    out = model(xyt=x["xyt"].double())  # dtype is cast to the graph's
    result = compare_outputs(ref, out, "fp32")
    assert result["ok"], result
    # SV's formulas: fg uv in [0, 1], bg uv in [-1, 0], alpha in [0.001, 0.991]
    assert out["fg_uv"].min() >= 0 and out["bg_uv"].max() <= 0
    assert out["alpha"].min() >= 0.001 - 1e-6 and out["alpha"].max() <= 0.991 + 1e-6


@pytest.mark.slow
def test_torch_compile_backend(small):
    from sv_engine.engine.torch_compile_backend import TorchCompileBackend

    ok, reason = TorchCompileBackend.availability(torch.device("cpu"))
    if not ok:
        pytest.skip(f"torch.compile unavailable on this CPU: {reason}")
    specs, _ = small
    spec = specs["nla_atlas"]
    model = get_backend("torch_compile", device="cpu").compile(spec.model_source())
    x = spec.sample_inputs("opt", seed=5)
    with torch.inference_mode():
        ref = spec.torch_module()(x["uv"])[0]
    assert compare(ref, model(**x)["rgb"])["max_rel"] < THRESHOLDS["fp32"].max_rel


@pytest.mark.slow
def test_torch_compile_compiles_one_static_graph_per_shape(small):
    """Keyframe crops come in several sizes: each new size gets its own static graph (no dynamic
    recompile), and every size gives the reference's answer."""
    from sv_engine.engine.torch_compile_backend import TorchCompileBackend
    from torch._dynamo.utils import counters

    ok, reason = TorchCompileBackend.availability(torch.device("cpu"))
    if not ok:
        pytest.skip(f"torch.compile unavailable on this CPU: {reason}")
    specs, _ = small
    spec = specs["nla_atlas"]
    torch._dynamo.reset()  # graphs compiled by earlier tests for the same module would be reused
    model = get_backend("torch_compile", device="cpu").compile(spec.model_source())
    counters.clear()
    for n in (256, 300, 256, 384):
        x = torch.randn(n, 2, generator=torch.Generator().manual_seed(n)).clamp(-1, 1)
        with torch.inference_mode():
            ref = spec.torch_module()(x)[0]
        assert compare(ref, model(uv=x)["rgb"])["max_rel"] < THRESHOLDS["fp32"].max_rel
    assert counters["stats"]["unique_graphs"] == 3, dict(counters["stats"])  # 256 is reused, not recompiled


def test_torch_cuda_graph_needs_a_gpu(small):
    specs, _ = small
    with pytest.raises(SvEngineError, match="CUDA graphs need a CUDA device"):
        get_backend("torch", device="cpu", cuda_graphs=True).compile(specs["nla_atlas"].model_source())


def test_torch_channels_last_keeps_the_answer():
    """``channels_last`` stores the convolutions in NHWC and computes what the NCHW module did."""
    from sv_engine.stablevideo.models.tiny import build_tiny_components

    spec = build_specs(build_tiny_components(0), None, names=["vae_decoder"], shapes=TINY_SHAPES)["vae_decoder"]
    x = spec.sample_inputs("opt")
    with torch.inference_mode():
        ref = spec.torch_module(fused_attention=True)(*[x[n] for n in spec.input_names()])[0]
    model = get_backend("torch", device="cpu", channels_last=True).compile(spec.model_source())
    conv = next(m for m in spec.torch_module(fused_attention=True).modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert compare(ref, model(**x)["image"])["max_rel"] < THRESHOLDS["fp32"].max_rel


def test_ort_cuda_sessions_use_one_thread_without_spinning():
    import_or_skip("onnxruntime")
    from sv_engine.engine.ort_backend import OrtBackend
    from sv_engine.engine.registry import OrtOptions

    backend = OrtBackend(device="cpu")
    cpu = backend.session_options(None)
    assert cpu.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    backend.device = torch.device("cuda", 0)  # the options only; no session is created
    cuda = backend.session_options(None)
    assert cuda.intra_op_num_threads == 1
    assert cuda.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    tuned = OrtBackend(device="cpu", options=OrtOptions(allow_spinning=True, intra_op_threads=4))
    tuned.device = torch.device("cuda", 0)
    options = tuned.session_options(None)
    assert options.intra_op_num_threads == 4
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_compare_metrics():
    ref = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)
    m = compare(ref, ref + torch.tensor([0.0, 0.0, 0.004], dtype=torch.float64))
    assert math.isclose(m["max_abs"], 0.004, rel_tol=1e-6) and math.isclose(m["max_rel"], 0.001, rel_tol=1e-6)
    assert m["cosine"] > 0.9999 and m["finite"]
    assert passes(m, "fp16")[0] and not passes(m, "fp32")[0]
    nan = compare(ref, torch.tensor([1.0, float("nan"), 4.0]))
    assert not passes(nan, "fp16")[0]
    assert compare(ref, torch.zeros(2))["shape_mismatch"]
    for precision, th in THRESHOLDS.items():
        assert th.reason, precision


def test_psnr_hook():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    assert psnr(a, a) == math.inf
    b = a.copy()
    b[0, 0, 0, 0] = 255
    assert math.isclose(psnr(a, b), 10 * math.log10(255**2 / (255**2 / a.size)), rel_tol=1e-9)
    with pytest.raises(ValueError):
        psnr(a, b[:1])


def test_ort_free_dimensions_fix_the_symbolic_dims(small):
    """``free_dimensions`` turns the graph's symbolic dims into fixed ones (what ORT CUDA graphs need),
    and the fixed session still gives the dynamic session's answer at that size."""
    specs, sources = small
    spec = specs["nla_field"]
    (dim,) = spec.dynamic_axes()["xyt"].values()
    assert spec.onnx_dim_values(spec.symbols("opt", N=300)) == {dim: 300}
    fixed = get_backend("ort", device="cpu", free_dimensions={dim: 300}).compile(sources["nla_field"])
    assert fixed.session.get_inputs()[0].shape == [300, 3]
    dynamic = get_backend("ort", device="cpu").compile(sources["nla_field"])
    assert dynamic.session.get_inputs()[0].shape[0] == dim
    x = spec.sample_inputs("opt", N=300)
    for key, ref in dynamic(**x).items():
        torch.testing.assert_close(fixed(**x)[key], ref)


def ort_graph_capture_refusals() -> list[str]:
    """ONNX Runtime's own refusals of CUDA graph capture, read from the installed library's strings (the CPU
    build carries them: they live in the session code, not in the CUDA provider)."""
    import re

    import onnxruntime as ort

    capi = Path(ort.__file__).parent / "capi"
    found: set[str] = set()
    for library in capi.glob("onnxruntime_pybind11_state*.so"):
        found |= {
            m.decode()
            for m in re.findall(rb"This session cannot use the graph capture feature[ -~]+", library.read_bytes())
        }
    return sorted(found)


def test_ort_cuda_graph_refusal_names_the_fix(small, monkeypatch):
    """ORT refuses graph capture when shape ops stay on the CPU (as on an H100): each of the installed ORT's
    real refusal messages gives the error that says why and how to fix it; other load failures still say
    re-export."""
    import onnxruntime as ort

    refusals = ort_graph_capture_refusals()
    assert refusals, "no graph-capture refusal found in onnxruntime: its wording changed, update OrtBackend.compile"
    _, sources = small
    for message in [*refusals, "Load model from u.onnx failed: Protobuf parsing failed."]:

        def fail(*args, message=message, **kwargs):
            raise RuntimeError(f"[ONNXRuntimeError] : 1 : FAIL : {message}")

        monkeypatch.setattr(ort, "InferenceSession", fail)
        with pytest.raises(SvEngineError) as err:
            get_backend("ort", device="cpu", cuda_graphs=True).compile(sources["nla_field"])
        if message in refusals:
            assert "CUDA graph" in err.value.what and "free_dimensions" in err.value.fix, message
        else:
            assert "Re-export" in err.value.fix, message


def test_trt_refuses_the_ort_attention_form(tmp_path):
    """Graphs with ONNX Runtime's contrib attention get a clear error naming the export to use (checked
    before TensorRT is touched, so it runs everywhere)."""
    from sv_engine.engine.backend import ModelSource
    from sv_engine.engine.trt_backend import check_parsable

    from sv_engine.errors import SvEngineError

    source = ModelSource(
        "unet_controlnet_canny", ["sample"], ["noise_pred"], onnx_path=tmp_path / "u.onnx", attention="ort"
    )
    with pytest.raises(SvEngineError, match="--attention onnx"):
        check_parsable(source)
    check_parsable(ModelSource("unet_controlnet_canny", ["sample"], ["noise_pred"], attention="onnx"))


def test_registry_names_aliases_and_named_choices():
    """One vocabulary: every alias resolves to its canonical name, the named choice to torch with its
    preset options, and unknown names/options are refused with the valid ones."""
    from sv_engine.engine.registry import (
        CHOICES,
        CompileOptions,
        TorchOptions,
        backend_names,
        canonical_name,
        parse_choice,
        resolve_choice,
    )

    assert backend_names() == ["torch", *CHOICES, "torch-compile", "ort", "trt", "aoti"]
    for alias, name in [
        ("torch_compile", "torch-compile"),
        ("compile", "torch-compile"),
        ("tensorrt", "trt"),
        ("aotinductor", "aoti"),
    ]:
        assert canonical_name(alias) == name
    assert resolve_choice("torch-cuda-graph").options == TorchOptions(cuda_graphs=True, channels_last=True)
    assert resolve_choice("torch-cuda-graph", channels_last="0").options == TorchOptions(cuda_graphs=True)
    assert parse_choice("compile:mode=max-autotune:dynamic=none").options == CompileOptions("max-autotune", None)
    with pytest.raises(SvEngineError, match="no option cuda_graph"):
        resolve_choice("torch", cuda_graph=True)
    with pytest.raises(SvEngineError, match="not a"):
        parse_choice("ort:intra_op_threads=many")
    with pytest.raises(SvEngineError, match="takes TorchOptions"):
        get_backend("torch", device="cpu", options=CompileOptions())
    assert get_backend("torch-cuda-graph", device="cpu").options.cuda_graphs


def test_cuda_graph_cache_keys_on_shapes_and_hands_out_copies():
    """The one shape-keyed cache of the torch, TensorRT and ORT graph replays, with a stand-in capture
    (a "replay" that doubles the static input): one capture per shape signature, inputs copied into
    the static buffers, outputs cloned out; the oldest shape dropped past max_shapes; ORT's refusal of
    a second shape."""
    from sv_engine.engine.cuda_graphs import CudaGraphCache

    captures = []

    def capture(static_in):
        captures.append(tuple(static_in["x"].shape))
        out = {"y": torch.empty_like(static_in["x"])}
        return out, lambda: out["y"].copy_(static_in["x"] * 2)

    cache = CudaGraphCache("m", capture)
    a, b = torch.ones(2), torch.full((2,), 3.0)
    first = cache({"x": a})
    assert torch.equal(cache({"x": b})["y"], b * 2) and torch.equal(first["y"], a * 2)  # a copy, not the buffer
    cache({"x": torch.ones(3)})
    assert captures == [(2,), (3,)] and len(cache) == 2
    one = CudaGraphCache("m", capture, max_shapes=1)
    one({"x": a}), one({"x": torch.ones(3)}), one({"x": a})
    assert captures[2:] == [(2,), (3,), (2,)] and len(one) == 1
    fixed = CudaGraphCache("m", capture, recapture=False)
    fixed({"x": a})
    with pytest.raises(SvEngineError, match="captured for input shapes"):
        fixed({"x": torch.ones(3)})


def test_a_backend_holding_its_graph_cache_is_freed_without_the_cycle_collector():
    """The TensorRT and ORT models pass their own ``_capture`` method to the cache they hold: held
    strongly, that cycle would keep a dropped model's graphs and their GPU memory until a collection
    (and none comes for objects gc_paused froze meanwhile)."""
    import gc
    import weakref

    from sv_engine.engine.cuda_graphs import CudaGraphCache

    class Model:
        def __init__(self):
            self.graphs = CudaGraphCache("m", self._capture)

        def _capture(self, static_in):
            out = {"y": torch.empty_like(static_in["x"])}
            return out, lambda: out["y"].copy_(static_in["x"] * 2)

    model = Model()
    assert torch.equal(model.graphs({"x": torch.ones(2)})["y"], torch.full((2,), 2.0))
    gone = weakref.ref(model)
    gc.disable()
    try:
        del model
        assert gone() is None, "the graph cache keeps its model alive through a reference cycle"
    finally:
        gc.enable()
