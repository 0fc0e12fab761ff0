"""`sv-engine export / build / parity` command modules (registered on the shared typer app)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sv_engine.cli import app, flag_of  # the package registers every command on the app
from sv_engine.errors import SvEngineError

#: ``sv-engine parity`` of the tiny models through ONNX Runtime on the CPU.
PARITY_ORT = ["parity", "--tiny", "--backend", "ort", "--device", "cpu"]


def invoke(*args: object):
    """Runs ``sv-engine ARGS`` in-process; the result keeps the exception a library error raised."""
    return CliRunner().invoke(app, [str(a) for a in args])


def test_export_build_parity(tmp_path):
    out = tmp_path / "onnx"
    r = invoke("export", "--tiny", "--out", out, "--models", "nla_atlas,vae_decoder")
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["name"] for m in manifest["models"]] == ["nla_atlas", "vae_decoder"]
    r = invoke("export", "--tiny", "--out", out, "--models", "nla_atlas")
    assert isinstance(r.exception, SvEngineError) and "Pass --force" in r.exception.describe(flag_of)
    r = invoke("build", "--backend", "ort", "--device", "cpu", out)
    assert r.exit_code == 0, r.output
    report = tmp_path / "parity.json"
    r = invoke(*PARITY_ORT, "--models", "nla_atlas,vae_decoder", "--json", report)
    assert r.exit_code == 0, r.output
    data = json.loads(report.read_text())
    assert data["ok"] and set(data["models"]) == {"nla_atlas", "vae_decoder"}
    assert data["models"]["vae_decoder"]["attention"] == "ort"  # ORT exports its fused-attention form for itself
    m = data["models"]["vae_decoder"]["outputs"]["image"]
    assert {"max_abs", "max_rel", "cosine"} <= set(m)


def test_export_attention_option(tmp_path):
    r = invoke("export", "--tiny", "--out", tmp_path / "a", "--attention", "flash")
    assert isinstance(r.exception, SvEngineError) and "onnx, ort" in str(r.exception)
    assert not (tmp_path / "a").exists()  # refused before anything was written
    r = invoke("export", "--tiny", "--out", tmp_path / "b", "--models", "vae_decoder", "--attention", "ort")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["models"][0]["attention"] == "ort"


def test_export_and_parity_check_the_model_source_as_edit_does(tmp_path):
    """One check of the model source for every command (before anything loads or is written)."""
    for args in (["export", "--out", tmp_path / "x"], ["parity"]):
        r = invoke(*args, "--tiny", "--random")
        assert isinstance(r.exception, SvEngineError), r.output
        assert r.exception.describe(flag_of).startswith("--tiny and --random-full are exclusive")
        r = invoke(*args, "--weights", tmp_path / "missing")
        assert r.exception.describe(flag_of).startswith(f"--weights: Weights folder {tmp_path / 'missing'} does not")
    assert not (tmp_path / "x").exists()


def test_edit_backend_on_a_cpu_is_eager_torch():
    """`edit`'s defaults on a CPU: eager torch, no CUDA graphs (they are the default only on a GPU)."""
    from sv_engine.export.compose import RuntimeConfig, build_pipeline

    runtime = build_pipeline(RuntimeConfig(tiny=True, device="cpu"))
    accelerated = runtime.accelerated
    assert (accelerated.backend, accelerated.cuda_graphs, accelerated.unet_controlnet) == ("torch", False, {})
    assert runtime.describe()["backend"] == "torch" and set(runtime.seconds_per_phase) == {
        "import model libraries",
        "load models",
        "prepare backend",
        "finish the warm-up",
    }


def test_parity_e2e_compares_a_whole_edit(tmp_path):
    """`parity --e2e`: the ORT edit (fp32 on the CPU) renders the torch fp32 edit's frames within the
    fp32 bar (40 dB: only the final uint8 rounding may differ); a missing clip is refused up front."""
    from sv_engine.engine.parity import PSNR_MIN_DB

    report = tmp_path / "parity.json"
    r = invoke(
        *PARITY_ORT, "--models", "vae_decoder", "--e2e", "--steps", 4, "--onnx-dir", tmp_path / "onnx", "--json", report
    )
    assert r.exit_code == 0, r.output
    edit = json.loads(report.read_text())["edit"]
    assert edit["ok"] and edit["psnr_db"] >= PSNR_MIN_DB["fp32"] and edit["frames"][0] == 30
    assert (tmp_path / "onnx" / "edit" / "manifest.json").is_file()  # the edit's exports beside the components'
    r = invoke("parity", "--tiny", "--e2e", "--data", tmp_path / "missing")
    assert isinstance(r.exception, SvEngineError) and "no config.json" in str(r.exception).lower()


def test_runtime_config_policy_and_checks():
    """The composition root's policy: auto is eager torch on a CPU and torch with CUDA graphs on a GPU
    when asked; explicit options win; bad combinations are refused before anything loads."""
    import torch
    from sv_engine.engine.registry import OrtOptions, TorchOptions
    from sv_engine.export.compose import RuntimeConfig, choose_backend

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert choose_backend(RuntimeConfig(tiny=True), cpu).options == TorchOptions()
    assert choose_backend(RuntimeConfig(tiny=True, cuda_graphs=True), gpu).options.cuda_graphs
    assert choose_backend(RuntimeConfig(tiny=True, backend="torch"), gpu).options == TorchOptions(True, True)
    assert choose_backend(RuntimeConfig(backend="torch", options=TorchOptions()), gpu).options == TorchOptions()
    assert choose_backend(RuntimeConfig(backend="onnxruntime"), gpu).backend == "ort"
    with pytest.raises(SvEngineError, match="No model weights"):
        RuntimeConfig().check()
    with pytest.raises(SvEngineError, match="tiny and random_full are exclusive") as err:
        RuntimeConfig(tiny=True, random_full=True).check()
    assert err.value.describe(flag_of).startswith("--tiny and --random-full are exclusive")
    with pytest.raises(SvEngineError, match="takes OrtOptions"):
        RuntimeConfig(tiny=True, backend="ort", options=TorchOptions()).check()
    with pytest.raises(SvEngineError, match="Unknown backend"):
        RuntimeConfig(tiny=True, backend="tensorflow").check()
    RuntimeConfig(tiny=True, backend="ort", options=OrtOptions(intra_op_threads=2)).check()


def test_background_overlap_policy() -> None:
    """The background runs beside the keyframe loop by default only with torch's CUDA graphs on a GPU
    (measured there); an explicit setting wins everywhere."""
    import torch
    from sv_engine.export.compose import RuntimeConfig, overlap_background

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert overlap_background(RuntimeConfig(), gpu, "torch", cuda_graphs=True)
    assert not overlap_background(RuntimeConfig(), gpu, "torch", cuda_graphs=False)
    assert not overlap_background(RuntimeConfig(), gpu, "ort", cuda_graphs=False)
    assert not overlap_background(RuntimeConfig(), cpu, "torch", cuda_graphs=False)
    assert not overlap_background(RuntimeConfig(overlap_background=False), gpu, "torch", cuda_graphs=True)
    assert overlap_background(RuntimeConfig(overlap_background=True), cpu, "torch", cuda_graphs=False)
