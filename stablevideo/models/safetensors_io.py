"""A ``.safetensors`` file read onto a device in one sequential read and one copy.

Why not ``safetensors.torch.load_file(path, device="cuda")``: it maps the file and reads it tensor by
tensor through page faults (SD 1.5's UNet has 1,700 tensors). Here the data region is read with large
``readinto`` calls into one host buffer (page-locked with ``pin``, so the copies run asynchronously),
and each tensor is copied from it into its own device tensor: separate storages, so a tensor replaced
later (a convolution's NHWC copy) frees its original. The routes side by side: benchmarks/weights_load.py.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from sv_engine.errors import SvEngineError

#: safetensors' dtype names.
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_CHUNK = 64 << 20  # bytes per read call: large sequential reads, few syscalls


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The file's tensor table (name -> dtype, shape, data_offsets) and where its data region starts."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError("shorter than a safetensors header")
        (size,) = struct.unpack("<Q", prefix)
        if size > 100 << 20:
            raise ValueError(f"header of {size} bytes")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def read_safetensors(path: str | os.PathLike, device: torch.device | str = "cpu", pin: bool = False) -> dict:
    """Every tensor of ``path`` on ``device`` (on the CPU: views of the one host buffer; ``pin``: that
    buffer page-locked, for asynchronous copies to a GPU). Raises :class:`SvEngineError` for a corrupt
    file."""
    path = Path(path)
    try:
        header, start = read_header(path)
        end = max((int(e["data_offsets"][1]) for e in header.values()), default=0)
        if path.stat().st_size < start + end:
            raise ValueError(f"truncated: {path.stat().st_size} bytes, the header needs {start + end}")
        host = torch.empty(end, dtype=torch.uint8, pin_memory=pin)
        view = memoryview(host.numpy())
        with open(path, "rb") as f:
            f.seek(start)
            done = 0
            while done < end:
                n = f.readinto(view[done : min(end, done + _CHUNK)])
                if not n:
                    raise ValueError("the file ended inside its data")
                done += n
        device = torch.device(device)
        tensors = {}
        for name, entry in header.items():
            dtype = DTYPES[entry["dtype"]]
            begin, stop = (int(x) for x in entry["data_offsets"])
            raw = host[begin:stop]
            if begin % dtype.itemsize:  # a view needs an offset aligned to the element size
                raw = raw.clone()
            tensor = raw.view(dtype).view(entry["shape"])
            tensors[name] = tensor if device.type == "cpu" else tensor.to(device, non_blocking=pin)
        if pin and device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # the copies read the host buffer until here
        return tensors
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise SvEngineError(
            f"Cannot read the safetensors file {path} ({type(exc).__name__}: {exc}).",
            "Re-download or re-convert it (the file is corrupt or truncated).",
        ) from exc
