"""The one-read safetensors reader against safetensors' own loader, and its refusals of broken files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from sv_engine.stablevideo.models.safetensors_io import read_safetensors

from sv_engine.errors import SvEngineError


@pytest.fixture
def mixed_file(tmp_path: Path) -> Path:
    # an odd number of fp16 values ahead of fp32 and int64 ones: offsets not aligned to their elements
    tensors = {
        "a.half": torch.randn(3, 5).half(),
        "b.float": torch.randn(7, 2),
        "c.long": torch.arange(5),
        "d.bf16": torch.randn(2, 2).bfloat16(),
        "e.bool": torch.tensor([True, False, True]),
        "f.scalar": torch.tensor(2.5),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def test_reads_what_safetensors_reads(mixed_file: Path) -> None:
    ours, ref = read_safetensors(mixed_file), load_file(str(mixed_file))
    assert ours.keys() == ref.keys()
    for name, tensor in ref.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("damage", ["truncated", "garbage header", "empty"])
def test_a_broken_file_is_one_error_naming_the_fix(mixed_file: Path, damage: str) -> None:
    data = mixed_file.read_bytes()
    garbage = (16).to_bytes(8, "little") + b"not json at all!"
    broken = {"truncated": data[:-9], "garbage header": garbage, "empty": b""}
    mixed_file.write_bytes(broken[damage])
    with pytest.raises(SvEngineError, match="Cannot read the safetensors file") as info:
        read_safetensors(mixed_file)
    assert "Re-download or re-convert" in info.value.fix
