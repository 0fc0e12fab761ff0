"""Engine cache logic with an injected fake builder (the TensorRT path itself is never faked)."""

from __future__ import annotations

import json
import logging

import pytest
from sv_engine.engine.engine_cache import EngineCache, engine_key, file_sha256

PROFILE = {"sample": ((1, 4, 64, 64), (2, 4, 64, 64), (2, 4, 128, 128))}


def _key(**over):
    args = dict(onnx_hash="abc", profile=PROFILE, precision="fp16", gpu_name="NVIDIA H100", runtime_version="10.9")
    args.update(over)
    return engine_key(**args)


def test_key_changes_with_every_input():
    base = _key()
    assert _key() == base  # deterministic
    assert _key(onnx_hash="abd") != base
    assert _key(profile={"sample": ((1, 4, 64, 64), (2, 4, 64, 64), (2, 4, 128, 192))}) != base
    assert _key(precision="fp32") != base
    assert _key(gpu_name="NVIDIA H200") != base
    assert _key(runtime_version="10.10") != base
    assert engine_key("abc", PROFILE, "fp16", "NVIDIA H100", "10.9", extra={"opt_level": 5}) != base


def test_onnx_bytes_change_the_key(tmp_path):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"graph-1")
    h1 = file_sha256([f])
    f.write_bytes(b"graph-2")
    assert file_sha256([f]) != h1


class Builder:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return b"ENGINE-%d" % self.calls


def _load(data: bytes):
    if not data.startswith(b"ENGINE"):
        raise ValueError("not an engine")
    return data.decode()


def test_hit_after_build(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    obj, entry = cache.get_or_build("unet", _key(), build, _load)
    assert entry.rebuilt and obj == "ENGINE-1" and build.calls == 1
    obj, entry = cache.get_or_build("unet", _key(), build, _load)
    assert not entry.rebuilt and obj == "ENGINE-1" and build.calls == 1
    # another key (e.g. other precision) builds its own entry
    _, entry = cache.get_or_build("unet", _key(precision="fp32"), build, _load)
    assert entry.rebuilt and build.calls == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage_meta", "delete_meta", "wrong_key", "undeserializable"])
def test_corrupt_entry_rebuilds_with_log(tmp_path, caplog, damage):
    cache, build = EngineCache(tmp_path), Builder()
    key = _key()
    cache.get_or_build("unet", key, build, _load)
    path, meta = cache.paths("unet", key)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:3])
    elif damage == "garbage_meta":
        meta.write_text("{not json")
    elif damage == "delete_meta":
        meta.unlink()
    elif damage == "wrong_key":
        data = json.loads(meta.read_text())
        data["key"] = "0" * 64
        meta.write_text(json.dumps(data))
    else:  # bytes consistent with the hash but the runtime refuses them (e.g. other TensorRT)
        cache._write("unet", key, b"not-an-engine", None)
    with caplog.at_level(logging.WARNING, logger="sv_engine.engine.engine_cache"):
        obj, entry = cache.get_or_build("unet", key, build, _load)
    assert entry.rebuilt and obj == "ENGINE-2" and build.calls == 2
    assert "rebuilding" in caplog.text
    # and the rebuilt entry is a clean hit afterwards
    _, entry = cache.get_or_build("unet", key, build, _load)
    assert not entry.rebuilt


def test_no_temp_files_left(tmp_path):
    cache = EngineCache(tmp_path)
    cache.get_or_build("vae", _key(), Builder(), _load)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".engine", ".json"]


@pytest.mark.parametrize("when", ["engine", "metadata"])
@pytest.mark.parametrize("kind", ["bytes", "file"])
def test_a_full_disk_leaves_nothing_taken_as_valid(tmp_path, monkeypatch, when, kind):
    """ENOSPC while the engine or its metadata is written: one clear error, no temporary file left,
    no entry taken as valid, and the next build (with room) writes a good one."""
    import errno

    from sv_engine.engine import engine_cache as cache_module

    from sv_engine.errors import SvEngineError

    cache, key = EngineCache(tmp_path), _key()
    real_write = cache_module.atomic_write_bytes
    disk = {"full": True}

    def full(path, data):
        if when == "metadata" and not str(path).endswith(".json"):
            return real_write(path, data)
        raise OSError(errno.ENOSPC, "No space left on device")

    def build_file(out):
        if when == "engine" and disk["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        out.write_bytes(b"ENGINE-file")

    def build():
        if kind == "bytes":
            return cache.get_or_build("unet", key, Builder(), _load)
        return cache.get_or_build_file("unet", key, build_file, lambda p: p.read_bytes().decode())

    monkeypatch.setattr(cache_module, "atomic_write_bytes", full)
    with pytest.raises(SvEngineError, match="No space left") as err:
        build()
    assert "SV_ENGINE_CACHE" in err.value.fix
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert not cache.valid_file("unet", key) and cache.get("unet", key) is None
    monkeypatch.setattr(cache_module, "atomic_write_bytes", real_write)
    disk["full"] = False
    obj, entry = build()
    assert entry.rebuilt and obj.startswith("ENGINE")
    assert cache.valid_file("unet", key)
