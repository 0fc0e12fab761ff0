"""ONNX Runtime CUDA EP with IO binding / CUDA graphs, and torch.compile on GPU (skipped on CPU)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu  # skipped without a CUDA GPU (tests/conftest.py)


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
    specs = build_specs(
        build_tiny_components(0),
        NLAModel.random(0),
        names=["unet_controlnet_canny", "controlnet_canny", "nla_field"],
        shapes=TINY_SHAPES,
        device="cuda",
    )
    export_all(specs, out)
    return specs, load_manifest(out)


@pytest.mark.parametrize("name", ["unet_controlnet_canny", "controlnet_canny"])
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_ort_cuda_io_binding(exported, name, cuda_graph):
    _ort_cuda()
    from sv_engine.engine.parity import compare
    from sv_engine.engine.registry import get_backend

    specs, sources = exported
    spec = specs[name]
    # A CUDA graph needs fixed dims (ORT keeps symbolic shape arithmetic on the CPU and refuses to capture).
    fixed = {"cuda_graphs": True, "free_dimensions": spec.onnx_dim_values(spec.symbols("opt"))} if cuda_graph else {}
    model = get_backend("ort", device="cuda", **fixed).compile(sources[name])
    for seed in (0, 1):
        x = spec.sample_inputs("opt", seed=seed, device="cuda")
        with torch.inference_mode():
            ref = spec.torch_module()(*[x[n] for n in spec.input_names()])
        out = model(**x)
        for key, r in zip(spec.output_names(), ref, strict=False):
            assert out[key].device.type == "cuda"
            assert compare(r, out[key])["max_rel"] < 1e-3


def test_torch_compile_cuda(exported):
    from sv_engine.engine.parity import compare
    from sv_engine.engine.registry import get_backend

    specs, _ = exported
    spec = specs["nla_field"]
    model = get_backend("torch_compile", device="cuda").compile(spec.model_source())
    x = spec.sample_inputs("opt", device="cuda", N=4096)
    with torch.inference_mode():
        ref = spec.torch_module()(x["xyt"])
    for _ in range(3):
        out = model(**x)
    assert compare(ref[0], out["fg_uv"])["max_rel"] < 1e-4


# Graphs alone replay the eager kernels (1e-5); NHWC weights make cuDNN pick other convolution
# algorithms (TF32 by default in both), whose summation order differs at ~1e-4-1e-3 relative.
@pytest.mark.parametrize(
    "options,max_rel", [({"cuda_graphs": True}, 1e-5), ({"cuda_graphs": True, "channels_last": True}, 5e-3)]
)
def test_torch_cuda_graph_replays_every_shape_correctly(exported, options, max_rel):
    """Per-shape CUDA graphs sharing one pool: each shape, revisited after another, and new inputs
    give the eager module's answer (not a stale replay); also with the edit's NHWC default."""
    from sv_engine.engine.parity import compare
    from sv_engine.engine.registry import get_backend

    specs, _ = exported
    spec = specs["unet_controlnet_canny"]
    model = get_backend("torch", device="cuda", **options).compile(spec.model_source())
    assert model.thread_safe  # per stream (tests/test_cuda_graph_streams.py; two streams at once below)
    small, large = spec.symbol_ranges()["h"][0], spec.symbol_ranges()["h"][2]
    for seed, h in ((0, small), (1, large), (2, small), (3, large)):
        x = spec.sample_inputs("opt", seed=seed, device="cuda", h=h)
        with torch.inference_mode():
            ref = spec.torch_module()(*[x[n] for n in spec.input_names()])
        ref = (ref,) if isinstance(ref, torch.Tensor) else ref
        out = model(**x)
        for key, r in zip(spec.output_names(), ref, strict=False):
            assert compare(r, out[key])["max_rel"] < max_rel, (seed, h, key)


def test_torch_cuda_graphs_on_two_streams_at_once(exported):
    """Two threads, each on its own stream, replaying one model's graphs at once (the background edit
    beside the keyframe loop): each gets the eager answer for its own inputs."""
    from concurrent.futures import ThreadPoolExecutor

    from sv_engine.engine.parity import compare
    from sv_engine.engine.registry import get_backend

    specs, _ = exported
    spec = specs["unet_controlnet_canny"]
    model = get_backend("torch", device="cuda", cuda_graphs=True).compile(spec.model_source())
    inputs = [spec.sample_inputs("opt", seed=seed, device="cuda") for seed in (0, 1)]
    with torch.inference_mode():
        refs = [spec.torch_module()(*[x[n] for n in spec.input_names()]) for x in inputs]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]

    def run(i: int) -> list[torch.Tensor]:
        outs = []
        with torch.cuda.stream(streams[i]):
            for _ in range(5):
                outs.append(model(**inputs[i])[spec.output_names()[0]])
        streams[i].synchronize()
        return outs

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, (0, 1)))
    for ref, outs in zip(refs, results, strict=True):
        ref = ref[0] if isinstance(ref, (tuple, list)) else ref
        for out in outs:
            assert compare(ref, out)["max_rel"] < 1e-5


def test_a_shape_captured_ahead_replays_what_a_capture_on_first_use_does(exported):
    """CudaGraphModel.prepare: the large shape's graph captured on the helper thread while this thread
    warms up, captures and replays the small one (the keyframe chain's first keyframe); the prepared
    graph's answers equal, bit for bit, those of a model that captured it on first use."""
    from sv_engine.engine.registry import get_backend

    specs, _ = exported
    spec = specs["unet_controlnet_canny"]
    small, large = spec.symbol_ranges()["h"][0], spec.symbol_ranges()["h"][2]
    ahead, plain = (get_backend("torch", device="cuda", cuda_graphs=True).compile(spec.model_source()) for _ in "ab")
    first = spec.sample_inputs("opt", seed=0, device="cuda", h=small)
    later = [spec.sample_inputs("opt", seed=s, device="cuda", h=large) for s in (1, 2)]
    ahead.prepare(**{n: torch.zeros_like(t) for n, t in later[0].items()})
    for _ in range(3):
        ahead(**first)
    for x in later:
        got, want = ahead(**x), plain(**x)
        for key in spec.output_names():
            assert torch.equal(got[key], want[key]), key
    assert len(ahead._graphs()) == 2, "the prepared shape was not captured again"


def test_ort_cuda_fused_attention_fp16(tmp_path):
    """The ORT attention form in fp16 on the CUDA EP (flash / memory-efficient MultiHeadAttention)
    keeps the fp32 reference's direction, as the per-component fp16 bound asks."""
    _ort_cuda()
    import onnx
    from sv_engine.engine.parity import compare
    from sv_engine.engine.registry import get_backend
    from sv_engine.export.onnx_export import export_onnx
    from sv_engine.export.registry import build_specs
    from sv_engine.export.spec import TINY_SHAPES
    from sv_engine.stablevideo.models.tiny import build_tiny_components

    components = build_tiny_components(0)
    names = ["unet_controlnet_canny", "vae_decoder"]
    ref_specs = build_specs(components, None, names=names, precision="fp32", shapes=TINY_SHAPES, device="cuda")
    specs = build_specs(components, None, names=names, precision="fp16", shapes=TINY_SHAPES, device="cuda")
    for name, spec in specs.items():
        source = export_onnx(spec, tmp_path, attention="ort")
        assert "MultiHeadAttention" in [n.op_type for n in onnx.load(str(source.onnx_path)).graph.node]
        model = get_backend("ort", device="cuda").compile(source)
        x = ref_specs[name].sample_inputs("opt", seed=0, device="cuda")
        with torch.inference_mode():
            ref = ref_specs[name].torch_module()(*[x[n] for n in spec.input_names()])
        out = model(**x)
        for key, r in zip(spec.output_names(), (ref,) if isinstance(ref, torch.Tensor) else ref, strict=False):
            m = compare(r, out[key])
            assert m["finite"] and m["cosine"] >= 0.999, (name, key, m)


def test_edit_runs_torch_from_cuda_graphs_by_default_on_a_gpu():
    from sv_engine.export.compose import RuntimeConfig, build_pipeline

    auto = build_pipeline(RuntimeConfig(tiny=True, device="cuda", backend="torch")).accelerated
    assert auto.cuda_graphs and set(auto.unet_controlnet) == {"canny", "depth"}
    eager = build_pipeline(RuntimeConfig(tiny=True, device="cuda", backend="torch", cuda_graphs=False)).accelerated
    assert not eager.cuda_graphs and not eager.unet_controlnet


def test_the_gpu_warm_up_runs_each_op_family_and_loads_the_pipeline_kernels():
    """What a cold edit runs beside its model load (export.compose.warm_up_gpu): every op family in
    fp16, synchronized, and every NVRTC kernel module loaded (then the edit's first calls only launch)."""
    from sv_engine.engine.warmup import warm_gpu_libraries
    from sv_engine.export.compose import warm_up_gpu
    from sv_engine.kernels import SOURCES, _nvrtc

    device = torch.device("cuda")
    seconds = warm_gpu_libraries(device, torch.float16)
    assert set(seconds) == {"context", "convolution", "group norm", "linear", "matmul", "attention"}
    _nvrtc._load_module.cache_clear()
    warm_up_gpu(device, torch.float16)
    assert _nvrtc._load_module.cache_info().currsize == len(SOURCES) == 7


def test_the_keyframe_loop_on_its_priority_stream_gives_the_same_frames():
    """The GPU default runs the background beside the keyframe loop, and the loop on a high-priority
    stream (StableVideoPipeline.prioritize_foreground): scheduling only, so the frames are the same
    bits as with the loop on the main stream."""
    import numpy as np
    from sv_engine.export.compose import RuntimeConfig, build_pipeline
    from sv_engine.stablevideo.demo import demo_data_dir
    from sv_engine.stablevideo.params import EditParams

    pipeline = build_pipeline(RuntimeConfig(tiny=True, device="cuda", backend="torch")).pipeline
    assert pipeline.overlap_background and pipeline.prioritize_foreground
    params = EditParams("a red toy", "snowy hills", steps=4, image_resolution=128, depth_resolution=128, seed=7)
    first = pipeline.edit(demo_data_dir(), params)
    assert pipeline._priority_stream is not None and pipeline._priority_stream.priority < 0
    pipeline.prioritize_foreground = False
    plain = pipeline.edit(demo_data_dir(), params)
    assert np.array_equal(first.frames, plain.frames)
