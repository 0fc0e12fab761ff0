"""Every tiny model exported to ONNX, run in ONNX Runtime (CPU) and compared with torch."""

from __future__ import annotations

import json

import pytest
import torch
from sv_engine.engine.backend import load_manifest
from sv_engine.engine.engine_cache import file_sha256
from sv_engine.engine.parity import compare
from sv_engine.engine.registry import get_backend
from sv_engine.export.onnx_export import export_all, export_onnx, prepare_out_dir
from sv_engine.export.registry import MODEL_NAMES, build_specs
from sv_engine.export.spec import TINY_SHAPES, ExportSpec

from sv_engine.errors import SvEngineError

#: fp32 ORT vs torch: same math, different summation order / fused kernels -> ≈1e-6 relative on
#: these tiny nets; 1e-4 (the production fp32 bound) leaves room for other CPUs/thread counts.
FP32_MAX_REL = 1e-4
#: fp16 graphs (GroupNorm/attention kept in fp32) vs the fp32 reference: direction must hold.
FP16_MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def bundle():
    from sv_engine.stablevideo.models.tiny import build_tiny_components
    from sv_engine.stablevideo.nla import NLAModel

    return build_tiny_components(0), NLAModel.random(0)


@pytest.fixture(scope="module")
def exported(bundle, tmp_path_factory):
    components, nla = bundle
    out = tmp_path_factory.mktemp("onnx")
    specs = build_specs(components, nla, precision="fp32", shapes=TINY_SHAPES)
    export_all(specs, out)
    return specs, load_manifest(out), out


@pytest.fixture(scope="module")
def ort_cpu():
    return get_backend("ort", device="cpu")


def _reference(spec, inputs):
    with torch.inference_mode():
        outs = spec.torch_module()(*[inputs[n] for n in spec.input_names()])
    return dict(zip(spec.output_names(), outs, strict=False))


def _other_point(name):
    """A second shape inside the profile (batch 1, non-square latent) to prove the axes are dynamic."""
    if name.startswith("nla"):
        return {"N": 77}
    if name in ("depth", "text_encoder"):
        return {"B": 1}
    return {"B": 1, "h": 8, "w": 16}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_ort_matches_torch(name, exported, ort_cpu):
    specs, sources, _ = exported
    spec = specs[name]
    model = ort_cpu.compile(sources[name])
    for point in ({**spec.export_symbols()}, _other_point(name)):
        inputs = spec.sample_inputs("opt", **point)
        ref = _reference(spec, inputs)
        out = model(**inputs)
        assert list(out) == spec.output_names()
        for key, r in ref.items():
            assert out[key].shape == r.shape, (name, key)
            m = compare(r, out[key])
            assert m["finite"] and m["max_rel"] <= FP32_MAX_REL, (name, key, point, m)


def test_fused_control_scale_is_a_runtime_input(exported, ort_cpu):
    specs, sources, _ = exported
    spec = specs["unet_controlnet_canny"]
    model = ort_cpu.compile(sources["unet_controlnet_canny"])  # one graph, one session
    inputs = spec.sample_inputs("opt")
    outs = {}
    for scale in (0.3, 1.4):
        inputs["control_scale"] = torch.tensor([scale])
        ref = _reference(spec, inputs)["noise_pred"]
        outs[scale] = model(**inputs)["noise_pred"]
        assert compare(ref, outs[scale])["max_rel"] <= FP32_MAX_REL
    assert (outs[0.3] - outs[1.4]).abs().max() > 1e-3, "the control scale has no effect"


def test_split_controlnet_unet_equals_fused(exported, ort_cpu):
    specs, sources, _ = exported
    fused = ort_cpu.compile(sources["unet_controlnet_depth"])
    cn = ort_cpu.compile(sources["controlnet_depth"])
    unet = ort_cpu.compile(sources["unet"])
    inputs = specs["controlnet_depth"].sample_inputs("opt", B=1, h=16, w=8)
    inputs["control_scale"] = torch.tensor([0.7])
    residuals = cn(**inputs)
    assert len(residuals) == len(specs["unet"].input_names()) - 3
    split = unet(**{k: inputs[k] for k in ("sample", "timestep", "encoder_hidden_states")}, **residuals)
    m = compare(fused(**inputs)["noise_pred"], split["noise_pred"])
    assert m["max_rel"] <= FP32_MAX_REL, m


def test_manifest_describes_files(exported):
    specs, sources, out = exported
    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["name"] for m in manifest["models"]] == list(specs)
    for entry in manifest["models"]:
        assert file_sha256([out / entry["file"]]) == entry["sha256"]
        assert entry["precision"] == "fp32"
        for inp in entry["inputs"]:
            lo, opt, hi = inp["profile"]
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=False))
    unet = sources["unet_controlnet_canny"]
    assert unet.input_names == ["sample", "timestep", "encoder_hidden_states", "controlnet_cond", "control_scale"]
    assert unet.profiles["sample"] == ((1, 4, 8, 8), (2, 4, 8, 8), (2, 4, 16, 16))


def test_sd15_residual_count():
    from types import SimpleNamespace

    from sv_engine.export.unet_controlnet import residual_layout

    cfg = SimpleNamespace(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    layout = residual_layout(SimpleNamespace(config=cfg))
    assert len(layout) == 13 and layout[-1] == ("mid_res", 1280, 8)
    assert [f for _, _, f in layout[:12]] == [1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8, 8]


def test_fp16_export_guards_and_parity(bundle, tmp_path, ort_cpu):
    components, nla = bundle
    specs16 = build_specs(components, nla, names=["vae_decoder", "nla_atlas"], precision="fp16", shapes=TINY_SHAPES)
    specs32 = build_specs(components, nla, names=["vae_decoder", "nla_atlas"], precision="fp32", shapes=TINY_SHAPES)
    assert specs16["nla_atlas"].precision == "fp32"  # coordinates stay fp32
    src = export_onnx(specs16["vae_decoder"], tmp_path)
    import onnx

    graph = onnx.load(str(src.onnx_path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    model = ort_cpu.compile(src)
    inputs = specs32["vae_decoder"].sample_inputs("opt")
    out = model(**inputs)["image"]  # fp32 inputs are cast to the graph's fp16
    assert out.dtype == torch.float16
    m = compare(_reference(specs32["vae_decoder"], inputs)["image"], out)
    assert m["finite"] and m["cosine"] >= FP16_MIN_COSINE, m


def test_out_dir_refuses_overwrite(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"1")
    with pytest.raises(SvEngineError, match="not empty") as err:
        prepare_out_dir(tmp_path, force=False)
    assert err.value.field == "out" and "force" in err.value.mentions
    prepare_out_dir(tmp_path, force=True)
    assert not any(tmp_path.iterdir())


def test_export_spec_fails_loudly():
    with pytest.raises(TypeError):
        ExportSpec()  # abstract

    class Half(ExportSpec):
        name = "half"

        def build_module(self):
            return super().build_module()

        input_names = output_names = input_shapes = output_shapes = symbol_ranges = input_dtypes = build_module

    with pytest.raises(NotImplementedError, match="Half must implement build_module"):
        Half().build_module()

    class NoName(Half):
        name = ""

    with pytest.raises(NotImplementedError, match="name"):
        NoName()


def test_unknown_model_name():
    from sv_engine.export.registry import parse_model_list

    with pytest.raises(SvEngineError, match="Unknown model"):
        parse_model_list("unet,unicorn")


def test_fp16_attention_forms(bundle):
    """Export form: explicit attention with fp32 QKᵀ/softmax (the ONNX graph's softmax would run in
    fp16). ORT's export form: the fused SDPA form, whose kernels accumulate in fp32; both
    keep GroupNorm in fp32. The torch backends' form: fused attention and native fp16 norms (PyTorch's
    norm kernels keep their statistics in fp32). In fp32 the forms are the same computation."""
    from sv_engine.stablevideo.models.nets.blocks import Attention

    components, _ = bundle
    spec = build_specs(components, None, names=["unet_controlnet_canny"], precision="fp16", shapes=TINY_SHAPES)[
        "unet_controlnet_canny"
    ]
    classic, fused = spec.torch_module(), spec.torch_module(fused_attention=True)
    runtime = spec.model_source().module
    assert runtime is spec.torch_module(fused_attention=True, native_norms=True) and runtime is not fused
    runtime_norms = [m for m in runtime.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert runtime_norms and all(m.weight.dtype == torch.float16 and "forward" not in vars(m) for m in runtime_norms)
    attention = [m for m in classic.modules() if isinstance(m, Attention)]
    assert attention and all(m.upcast for m in attention)
    fused_attention = [m for m in fused.modules() if isinstance(m, Attention)]
    assert fused_attention and not any(m.upcast for m in fused_attention)
    assert all(m.weight.dtype == torch.float32 for m in fused.modules() if isinstance(m, torch.nn.GroupNorm))

    spec32 = build_specs(components, None, names=["unet_controlnet_canny"], precision="fp32", shapes=TINY_SHAPES)[
        "unet_controlnet_canny"
    ]
    inputs = spec32.sample_inputs("opt")
    with torch.inference_mode():
        ref = spec32.torch_module()(*[inputs[n] for n in spec32.input_names()])[0]
        half = {n: t.to(spec.input_dtypes()[n]) for n, t in inputs.items()}
        for module in (classic, fused, runtime):
            out = module(*[half[n] for n in spec.input_names()])[0]
            m = compare(ref, out)
            assert m["finite"] and m["cosine"] >= FP16_MIN_COSINE, m


def test_fp16_spec_modules_share_the_pipelines_fp16_weights():
    """The specs' fp16 modules reuse the pipeline's fp16 tensors (no second UNet on the GPU) and leave
    the pipeline's own modules untouched: its norms stay fp16 with their own forward."""
    from sv_engine.stablevideo.models.tiny import build_tiny_components

    components = build_tiny_components(0)
    components.to(dtype=torch.float16)
    spec = build_specs(components, None, names=["unet_controlnet_canny"], precision="fp16", shapes=TINY_SHAPES)[
        "unet_controlnet_canny"
    ]
    module = spec.torch_module(fused_attention=True)
    conv_in = components.unet.conv_in.weight
    assert any(p.data_ptr() == conv_in.data_ptr() for p in module.parameters())
    norm = next(m for m in components.unet.modules() if isinstance(m, torch.nn.GroupNorm))
    assert norm.weight.dtype == torch.float16 and "forward" not in vars(norm)
    copied_norms = [m for m in module.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert copied_norms and all(m.weight.dtype == torch.float32 for m in copied_norms)
    own = {p.data_ptr() for p in components.unet.parameters()} | {
        p.data_ptr() for p in components.controlnet_canny.parameters()
    }
    copied = sum(p.numel() for p in module.parameters() if p.data_ptr() not in own)
    assert copied < 0.05 * sum(p.numel() for p in module.parameters())  # only the norms were copied
    inputs = spec.sample_inputs("opt")
    with torch.inference_mode():
        out = module(*[inputs[n] for n in spec.input_names()])[0]
    assert torch.isfinite(out).all()


def test_ort_attention_form_exports_fused_attention_and_matches_torch(bundle, tmp_path, ort_cpu):
    """``attention="ort"``: every attention of the UNet+ControlNet and the VAE becomes a
    com.microsoft.MultiHeadAttention node (no Softmax left), ONNX Runtime (CPU) gives torch's answer at
    the fp32 bound on two shapes, the manifest keeps the form, and the spec's module gets its own
    attention core back after the export."""
    import onnx
    from sv_engine.export.onnx_export import write_manifest
    from sv_engine.stablevideo.models.nets.blocks import Attention

    components, _ = bundle
    specs = build_specs(
        components, None, names=["unet_controlnet_canny", "vae_decoder"], precision="fp32", shapes=TINY_SHAPES
    )
    sources = {}
    for name, spec in specs.items():
        module = spec.torch_module(fused_attention=True)
        attention = [sub for sub in module.modules() if isinstance(sub, Attention)]
        sources[name] = export_onnx(spec, tmp_path, attention="ort")
        assert attention and not any("attend" in vars(sub) for sub in attention)  # the own core is back
        graph = onnx.load(str(sources[name].onnx_path)).graph
        ops = [n.op_type for n in graph.node]
        assert "MultiHeadAttention" in ops and "Softmax" not in ops, name  # no attention left unfused
        for point in ({}, _other_point(name)):
            inputs = spec.sample_inputs("opt", seed=1, **point)
            ref = _reference(spec, inputs)
            out = ort_cpu.compile(sources[name])(**inputs)
            for key in spec.output_names():
                assert compare(ref[key], out[key])["max_rel"] < FP32_MAX_REL, (name, key, point)
    write_manifest(tmp_path, sources.values())
    assert {s.attention for s in load_manifest(tmp_path).values()} == {"ort"}


def test_ort_attention_core_matches_the_modules_own():
    """In torch, the ORT export form's core (:func:`ort_attend`: SDPA split into the module's heads) gives
    the module's own answer, self and cross attention (fp32, only op order differs: 1e-6)."""
    from sv_engine.export.ort_attention import attention_export
    from sv_engine.stablevideo.models.nets.blocks import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8, cross_attention_dim=12).eval()
    self_attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 12)
    with torch.inference_mode():
        refs = attn(x, encoder_hidden_states=ctx), self_attn(x)
        with attention_export(torch.nn.ModuleList([attn, self_attn]), "ort"):
            outs = attn(x, encoder_hidden_states=ctx), self_attn(x)
    for out, ref in zip(outs, refs, strict=True):
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
