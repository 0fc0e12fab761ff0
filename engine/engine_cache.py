"""On-disk cache of built engines, keyed by everything that changes the engine.

key = sha256(ONNX bytes hash, profile shapes, precision, GPU name, runtime version, extra options).
Layout in the cache directory::

    <name>-<key[:16]>.engine   the serialized engine
    <name>-<key[:16]>.json     {"key": full key, "sha256": of the engine bytes, "meta": ...}

A missing, corrupt, truncated or stale entry (hash mismatch, failed deserialisation) is rebuilt with
a log line — never a crash. The builder and loader are injected, so the cache logic is testable
without TensorRT. The ``.json`` is written last and names the engine's sha256: an engine whose build
was cut short (a crash, a full disk) never has a matching one, so it is never taken as valid.

Engines that a runtime loads from a path (AOTInductor packages) use :meth:`EngineCache.get_or_build_file`:
the builder writes a temporary file in the cache folder, which is renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sv_engine.atomic_write import atomic_write_bytes
from sv_engine.errors import SvEngineError

logger = logging.getLogger(__name__)


class RuntimeCannotLoad(SvEngineError):
    """The runtime cannot load engines of its kind on this machine at all (not this entry's fault):
    :meth:`EngineCache.get_or_build_file` raises it instead of rebuilding."""


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


@contextlib.contextmanager
def _disk_full_is_an_error(what: Path) -> Iterator[None]:
    """A full disk while an entry is written: one clear error (nothing half-written is kept: every
    write goes to a temporary file first, and the metadata that vouches for an engine comes last)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise SvEngineError(
            f"No space left on the disk of {what.parent} while writing {what.name}.",
            "free space there, or set SV_ENGINE_CACHE to a folder on a disk with room, and build again.",
        ) from exc


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

    def __init__(self, directory: str | Path, suffix: str = ".engine") -> None:
        self.directory = Path(directory)
        self.suffix = suffix  # runtimes that load from a path may insist on theirs (AOTInductor: .pt2)

    def paths(self, name: str, key: str) -> tuple[Path, Path]:
        stem = f"{name}-{key[:16]}"
        return self.directory / f"{stem}{self.suffix}", self.directory / f"{stem}.json"

    def _meta_ok(self, name: str, key: str) -> dict[str, Any] | None:
        """The entry's metadata when it exists and names ``key``, else None (logged when stale/unreadable)."""
        path, meta_path = self.paths(name, key)
        if not path.exists() and not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("engine cache entry %s unreadable (%s): rebuilding", path.name, exc)
            return None
        if meta.get("key") != key:
            logger.warning("engine cache entry %s is stale (key mismatch): rebuilding", path.name)
            return None
        return meta

    def valid_file(self, name: str, key: str) -> bool:
        """Whether a complete, uncorrupted engine file for ``key`` is present (its sha256 is checked)."""
        meta = self._meta_ok(name, key)
        if meta is None:
            return False
        path = self.paths(name, key)[0]
        try:
            ok = meta.get("sha256") == file_sha256([path])
        except OSError as exc:
            logger.warning("engine cache entry %s unreadable (%s): rebuilding", path.name, exc)
            return False
        if not ok:
            logger.warning("engine cache entry %s is corrupt (hash mismatch): rebuilding", path.name)
        return ok

    def meta(self, name: str, key: str) -> dict[str, Any]:
        """The ``meta`` an entry was written with (``{}`` when absent)."""
        return (self._meta_ok(name, key) or {}).get("meta", {})

    def add_meta(self, name: str, key: str, **fields: Any) -> None:
        """Records ``fields`` in a valid entry's ``meta`` (what was learnt using it, e.g. that it loads)."""
        entry = self._meta_ok(name, key)
        if entry is not None:
            self._write_meta(name, key, entry["sha256"], {**entry.get("meta", {}), **fields})

    def _write_meta(self, name: str, key: str, sha256: str, meta: dict[str, Any] | None) -> None:
        payload = {"key": key, "sha256": sha256, "meta": meta or {}}
        atomic_write_bytes(self.paths(name, key)[1], json.dumps(payload, indent=1).encode())

    def get_or_build_file(
        self,
        name: str,
        key: str,
        build: Callable[[Path], dict[str, Any] | None],
        load: Callable[[Path], Any],
        meta: dict[str, Any] | None = None,
    ) -> tuple[Any, CacheEntry]:
        """As :meth:`get_or_build` for engines kept as files: ``build(tmp_path)`` writes the engine to
        ``tmp_path`` (and may return more metadata), ``load(path)`` opens it and raises when it cannot."""
        path, meta_path = self.paths(name, key)
        if self.valid_file(name, key):
            try:
                obj = load(path)
                logger.info("engine cache hit: %s", path.name)
                return obj, CacheEntry(path, meta_path, rebuilt=False)
            except RuntimeCannotLoad:
                raise  # the runtime, not the entry, is at fault: a rebuild would fail to load the same way
            except Exception as exc:  # noqa: BLE001 - any other load failure means rebuild
                logger.warning("engine cache entry %s failed to load (%s): rebuilding", path.name, exc)
        logger.info("building engine %s (cache miss)", path.name)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=f".{path.name}-", suffix=f".tmp{self.suffix}")
        os.close(fd)
        tmp = Path(tmp_name)
        with _disk_full_is_an_error(path):
            try:
                more = build(tmp)
                sha = file_sha256([tmp])
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            self._write_meta(name, key, sha, {**(meta or {}), **(more or {}), "bytes": path.stat().st_size})
        return load(path), CacheEntry(path, meta_path, rebuilt=True)

    def _read(self, name: str, key: str) -> bytes | None:
        meta = self._meta_ok(name, key)
        if meta is None:
            return None
        path = self.paths(name, key)[0]
        try:
            data = path.read_bytes()
        except OSError as exc:
            logger.warning("engine cache entry %s unreadable (%s): rebuilding", path.name, exc)
            return None
        if meta.get("sha256") != hashlib.sha256(data).hexdigest():
            logger.warning("engine cache entry %s is corrupt (hash mismatch): rebuilding", path.name)
            return None
        return data

    def _write(self, name: str, key: str, data: bytes, meta: dict[str, Any] | None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.paths(name, key)[0]
        with _disk_full_is_an_error(path):
            atomic_write_bytes(path, data)
            self._write_meta(name, key, hashlib.sha256(data).hexdigest(), meta)  # last: it vouches for the engine

    def get(self, name: str, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """A valid entry's bytes and ``meta`` (None when missing, stale, unreadable or corrupt: logged)."""
        data = self._read(name, key)
        return None if data is None else (data, self.meta(name, key))

    def put(self, name: str, key: str, data: bytes, meta: dict[str, Any] | None = None) -> None:
        """Writes (or replaces) an entry; the engine first, its metadata last."""
        self._write(name, key, bytes(data), meta)

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
            except RuntimeCannotLoad:
                raise  # the runtime, not the entry, is at fault: a rebuild would fail to load the same way
            except Exception as exc:  # noqa: BLE001 - any other load failure means rebuild
                logger.warning("engine cache entry %s failed to load (%s): rebuilding", path.name, exc)
        logger.info("building engine %s (cache miss)", path.name)
        data = build()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)
        data = bytes(data)
        self._write(name, key, data, meta)
        return load(data), CacheEntry(path, meta_path, rebuilt=True)
