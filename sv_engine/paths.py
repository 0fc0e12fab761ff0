"""Where sv-engine keeps what it can rebuild: one cache root for every layer (maps, ONNX, engines)."""

import os
from pathlib import Path


def cache_root() -> Path:
    """``$SV_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/sv-engine``, else ``~/.cache/sv-engine``."""
    if os.environ.get("SV_ENGINE_CACHE"):
        return Path(os.environ["SV_ENGINE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sv-engine"
