"""The auto backend's parity gate: a backend is picked only after passing its probe on this machine."""

from __future__ import annotations

import logging

import pytest
import torch
from sv_engine.engine import parity_gate
from sv_engine.engine.parity_gate import gated_default_backend, recorded

CPU = torch.device("cpu")


class Probe:
    def __init__(self, verdicts: dict[str, object]) -> None:
        self.verdicts = verdicts
        self.calls: list[str] = []

    def __call__(self, backend: str, device: torch.device) -> tuple[bool, str]:
        self.calls.append(backend)
        v = self.verdicts[backend]
        if isinstance(v, Exception):
            raise v
        return bool(v), f"fake verdict {v}"


def test_a_passing_backend_is_picked_and_its_probe_runs_once(isolated_cache) -> None:  # noqa: ANN001
    probe = Probe({"ort": True})
    assert gated_default_backend(CPU, probe, ["ort", "torch"]) == "ort"
    assert gated_default_backend(CPU, probe, ["ort", "torch"]) == "ort"
    assert probe.calls == ["ort"]  # recorded beside the engines, not probed again
    assert recorded("ort", CPU)["passed"] is True
    assert (isolated_cache / "engines" / "parity-gate.json").is_file()


@pytest.mark.parametrize("failure", [False, RuntimeError("engine build crashed")])
def test_a_failing_backend_falls_back_to_torch_with_a_warning(isolated_cache, caplog, failure) -> None:  # noqa: ANN001
    probe = Probe({"trt": failure})
    with caplog.at_level(logging.WARNING, logger="sv_engine.engine.parity_gate"):
        assert gated_default_backend(CPU, probe, ["trt", "torch"]) == "torch"
    assert "not picked automatically" in caplog.text and "choosing trt explicitly" in caplog.text
    assert gated_default_backend(CPU, probe, ["trt", "torch"]) == "torch"
    assert probe.calls == ["trt"]  # a failure is remembered too


def test_the_next_passing_backend_is_picked_after_a_failing_one(isolated_cache) -> None:  # noqa: ANN001
    probe = Probe({"trt": False, "ort": True})
    assert gated_default_backend(CPU, probe, ["trt", "ort", "torch"]) == "ort"


def test_a_new_torch_version_checks_again(isolated_cache, monkeypatch) -> None:  # noqa: ANN001
    probe = Probe({"ort": True})
    gated_default_backend(CPU, probe, ["ort", "torch"])
    monkeypatch.setattr(parity_gate.torch, "__version__", "99.0")
    gated_default_backend(CPU, probe, ["ort", "torch"])
    assert probe.calls == ["ort", "ort"]


def test_torch_needs_no_probe(isolated_cache) -> None:  # noqa: ANN001
    probe = Probe({})
    assert gated_default_backend(CPU, probe, ["torch", "ort"]) == "torch"
    assert probe.calls == []


def test_the_real_probe_passes_onnx_runtime_on_the_cpu(isolated_cache) -> None:  # noqa: ANN001
    """The probe itself: the tiny UNet+ControlNet exported and run by ONNX Runtime matches torch."""
    from sv_engine.export.compose import parity_probe

    passed, detail = parity_probe("ort", CPU)
    assert passed, detail
    assert "cosine" in detail


@pytest.mark.parametrize(("device", "checked"), [("cuda", ["trt"]), ("cpu", ["ort"])])
def test_the_default_checks_only_the_backends_ranked_before_torch(
    isolated_cache, monkeypatch: pytest.MonkeyPatch, device: str, checked: list[str]
) -> None:  # noqa: ANN001
    """A cold GPU edit with ``--backend auto`` never checks torch-compile (its check compiles an
    inductor probe) nor ORT (an import): only TensorRT ranks before torch on a GPU."""
    from sv_engine.engine.registry import BACKENDS, backend_class

    seen: list[str] = []
    for name in BACKENDS:
        monkeypatch.setattr(
            backend_class(name),
            "availability",
            classmethod(lambda cls, device=None, n=name: seen.append(n) or (False, "off")),
        )
    assert gated_default_backend(torch.device(device), Probe({})) == "torch"
    assert seen == checked
