"""A whole edit on AOTInductor engines, on the CPU with the tiny random models (the real UNet and
ControlNet architectures): the first pipeline builds the packages, its edit matches eager torch's, and
a second pipeline (as a new process would) loads them without compiling and edits the same frames.
(The full-size package's build and edits on a GPU: benchmarks/engine_bench.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sv_engine.benchmarks.e2e import edit_params, synth_data_dir
from sv_engine.engine.parity import psnr
from sv_engine.export.compose import RuntimeConfig, build_pipeline

#: The issue's parity bar for an engine's edit against eager torch (fp32 on the CPU: measured exact).
PARITY_DB = 40.0


def _edit(backend: str, data: Path) -> np.ndarray:
    runtime = build_pipeline(RuntimeConfig(tiny=True, backend=backend, device="cpu"))
    assert runtime.accelerated.backend == backend
    return runtime.pipeline.edit(data, edit_params(4, 0.8, tiny=True)).frames


def test_edit_on_aoti_engines_matches_torch_and_a_new_pipeline_loads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SV_ENGINE_CACHE", str(tmp_path / "cache"))
    data = synth_data_dir(tmp_path, 8, 128, 192)
    reference = _edit("torch", data)
    first = _edit("aoti", data)
    packages = sorted((tmp_path / "cache" / "engines").glob("aoti-*.pt2"))
    # Two: the tiny ControlNets' 8-channel biases are compiled in (INLINED_NUMEL), so canny and depth
    # differ in the key; the full-size models' are not, and share one package.
    assert len(packages) == 2
    assert psnr(first, reference) >= PARITY_DB

    def no_compile(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a built package must be loaded, not compiled again")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compile)
    again = _edit("aoti", data)
    np.testing.assert_array_equal(again, first)
