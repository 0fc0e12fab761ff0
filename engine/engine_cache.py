"""On-disk cache of built engines, keyed by everything that changes the engine.

key = sha256(ONNX bytes hash, profile shapes, precision, GPU name, runtime version, extra options).
Layout in the cache directory::

    <name>-<key[:16]>.engine   the serialized engine
    <name>-<key[:16]>.json     {"key": full key, "sha256": of the engine bytes, "meta": ...}

A missing, corrupt, truncated or stale entry (hash mismatch, failed deserialisation) is rebuilt with
a log line — never a crash. The builder and loader are injected, so the cache logic is testable
without TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sv_engine.atomic_write import atomic_write_bytes

logger = logging.getLogger(__name__)


def file_sha256(paths: Iterable[str | Path], chunk: int = 1 << 24) -> str:
    """sha256 over the bytes of several files (an ONNX file and its external data), in order."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def engine_key(
    onnx_hash: str,
    profile: dict[str, Any],
    precision: str,
    gpu_name: str,
    runtime_version: str,
    extra: dict[str, Any] | None = None,
) -> str:
    """The cache key: changes whenever the ONNX, the profile, the precision, the GPU, the runtime
    version or any ``extra`` build option changes."""
    payload = {
        "onnx": onnx_hash,
        "profile": {k: [list(map(int, s)) for s in v] for k, v in sorted(profile.items())},
        "precision": precision,
        "gpu": gpu_name,
        "runtime": runtime_version,
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class CacheEntry:
    path: Path
    meta_path: Path
    rebuilt: bool


class EngineCache:
    """``get_or_build(name, key, build, load)`` -> ``(loaded engine, CacheEntry)``.

    ``build()`` returns the serialized engine bytes; ``load(bytes)`` turns them into the runtime object
    and raises on corrupt data (the cache then rebuilds once).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def paths(self, name: str, key: str) -> tuple[Path, Path]:
        stem = f"{name}-{key[:16]}"
        return self.directory / f"{stem}.engine", self.directory / f"{stem}.json"

    def _read(self, name: str, key: str) -> bytes | None:
        path, meta_path = self.paths(name, key)
        if not path.exists() and not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            data = path.read_bytes()
        except (OSError, ValueError) as exc:
            logger.warning("engine cache entry %s unreadable (%s): rebuilding", path.name, exc)
            return None
        if meta.get("key") != key:
            logger.warning("engine cache entry %s is stale (key mismatch): rebuilding", path.name)
            return None
        if meta.get("sha256") != hashlib.sha256(data).hexdigest():
            logger.warning("engine cache entry %s is corrupt (hash mismatch): rebuilding", path.name)
            return None
        return data

    def _write(self, name: str, key: str, data: bytes, meta: dict[str, Any] | None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path, meta_path = self.paths(name, key)
        for target, blob in (
            (path, data),
            (
                meta_path,
                json.dumps(
                    {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "meta": meta or {}}, indent=1
                ).encode(),
            ),
        ):
            atomic_write_bytes(target, blob)

    def get_or_build(
        self,
        name: str,
        key: str,
        build: Callable[[], bytes],
        load: Callable[[bytes], Any],
        meta: dict[str, Any] | None = None,
    ) -> tuple[Any, CacheEntry]:
        path, meta_path = self.paths(name, key)
        data = self._read(name, key)
        if data is not None:
            try:
                obj = load(data)
                if obj is None:
                    raise ValueError("loader returned None")
                logger.info("engine cache hit: %s", path.name)
                return obj, CacheEntry(path, meta_path, rebuilt=False)
            except Exception as exc:  # noqa: BLE001 - any load failure means rebuild
                logger.warning("engine cache entry %s failed to load (%s): rebuilding", path.name, exc)
        logger.info("building engine %s (cache miss)", path.name)
        data = build()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)
        data = bytes(data)
        self._write(name, key, data, meta)
        return load(data), CacheEntry(path, meta_path, rebuilt=True)
