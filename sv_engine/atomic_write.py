"""Files that appear whole or not at all: the one way sv-engine writes caches, engines and data folders."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` at ``path``: written and synced under a temporary name of this writer's own in the same
    folder, then renamed. A crash never leaves a half-written file under the real name, and writers of
    one path at once (the GPUs of a batch opening one clip, threads of a service) never share a
    temporary file: each rename is atomic and the last one wins."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_torch_save(obj: object, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
