"""torch.compile backend (inductor), with compiled code that persists between processes.

Options and their defaults: :class:`~sv_engine.engine.registry.CompileOptions` (on CUDA
``"reduce-overhead"``, inductor + CUDA graphs where shapes are static; on CPU plain inductor, which
needs a C++ compiler: :meth:`availability` probes a one-op compile once and reports the reason when
that fails).

Persistence (``CompileOptions.persist``, on by default): after a call compiles a new input shape,
``torch.compiler.save_cache_artifacts()`` (inductor's compiled graphs, kernels and autotuning
results of this process) is stored in the engine cache, keyed like the other engines: the module's
architecture (classes, their source, parameter names, shapes and dtypes: the weights are graph
inputs, not compiled in), the profile, the precision, the options, the GPU and the torch version. A
later process loads the stored artifacts (``load_cache_artifacts``) before compiling, so its compile
finds them: 13 s instead of 90 s per shape for the fused UNet+ControlNet on an H200
(benchmarks/results/). ``sv-engine build --backend torch-compile --shapes HxW,...`` compiles the given
shapes ahead; another GPU, torch or model is another key (compiled afresh), a corrupt entry is
compiled afresh with a warning, and ``build`` again with the shapes stored is a no-op.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import torch
from sv_engine.engine.aoti_backend import architecture_fingerprint
from sv_engine.engine.backend import Backend, CompiledModel, ModelSource
from sv_engine.engine.cuda_graphs import shape_key
from sv_engine.engine.engine_cache import EngineCache, engine_key
from sv_engine.engine.registry import CompileOptions
from sv_engine.engine.torch_backend import TorchModel

logger = logging.getLogger(__name__)

#: Bumped when what a stored entry holds changes (so old entries are not taken for new ones).
ARTIFACTS_FORMAT = 1


@functools.lru_cache(maxsize=4)
def _probe_inductor(device_type: str) -> tuple[bool, str]:
    try:
        import torch._inductor  # noqa: F401

        fn = torch.compile(lambda x: torch.relu(x) * 2.0 + 1.0, backend="inductor", dynamic=False)
        x = torch.randn(8, device=device_type)
        y = fn(x)
        if not torch.allclose(y, torch.relu(x) * 2.0 + 1.0):
            return False, "inductor produced wrong results in the probe"
        return True, ""
    except Exception as exc:  # noqa: BLE001 - any compiler/toolchain failure means "not usable"
        return (
            False,
            f"inductor cannot compile on {device_type}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
        )


def shape_label(inputs: dict[str, torch.Tensor]) -> str:
    """One input-shape signature as stored in an entry's metadata (``"sample=2x4x64x64,..."``)."""
    return ",".join(f"{n}={'x'.join(map(str, s))}" for n, s, _ in shape_key(inputs))


class CompileArtifacts:
    """One model architecture's stored artifacts: the blobs of earlier processes (loaded before this
    process compiles) and this process's own blob, rewritten each time it compiles a new shape
    (``save_cache_artifacts`` returns everything this process compiled so far)."""

    def __init__(self, cache: EngineCache, name: str, key: str, meta: dict[str, Any]) -> None:
        self.cache, self.name, self.key, self.base_meta = cache, name, key, meta
        self.blobs: list[bytes] = []  # earlier processes'
        self.shapes: list[str] = []
        self.own: bytes | None = None
        self.loaded = False

    def load(self) -> bool:
        """Hot-loads the stored artifacts into this process's compile caches; False when there were
        none for this key or they could not be used (then the model is compiled afresh)."""
        found = self.cache.get(self.name, self.key)
        if found is None:
            return False
        data, meta = found
        try:
            sizes = [int(n) for n in meta["blob_sizes"]]
            if sum(sizes) != len(data):
                raise ValueError(f"blob sizes {sum(sizes)} != {len(data)} bytes")
            blobs, offset = [], 0
            for size in sizes:
                blobs.append(data[offset : offset + size])
                offset += size
            for blob in blobs:
                torch.compiler.load_cache_artifacts(blob)
        except Exception as exc:  # noqa: BLE001 - unusable artifacts are compiled again, never trusted
            logger.warning("torch.compile artifacts %s unusable (%s): compiling afresh", self.name, exc)
            return False
        self.blobs, self.shapes, self.loaded = blobs, list(meta.get("shapes", [])), True
        logger.info("torch.compile artifacts %s loaded (%d shapes)", self.name, len(self.shapes))
        return True

    def covers(self, label: str) -> bool:
        return label in self.shapes

    def save(self, label: str) -> None:
        """Stores this process's artifacts after it compiled the shape ``label``."""
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            logger.warning("torch.compile produced no cache artifacts for %s: nothing stored", self.name)
            return
        self.own = saved[0]
        if label not in self.shapes:
            self.shapes.append(label)
        blobs = [*self.blobs, self.own]
        meta = {**self.base_meta, "blob_sizes": [len(b) for b in blobs], "shapes": self.shapes}
        self.cache.put(self.name, self.key, b"".join(blobs), meta)
        logger.info(
            "torch.compile artifacts %s stored (%d shapes, %.1f MB)",
            self.name,
            len(self.shapes),
            len(b"".join(blobs)) / 1e6,
        )


class TorchCompileBackend(Backend):
    """``torch.compile(module, mode=..., dynamic=...)``, its compiled code kept in the engine cache
    (default ``<cache>/engines``)."""

    name = "torch-compile"
    pip_package = "torch"
    needs = "module"
    options: CompileOptions

    @classmethod
    def availability(cls, device=None):
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cuda" and not torch.cuda.is_available():
            return False, "no CUDA GPU"
        return _probe_inductor(dev.type)

    def __init__(
        self, device: str | torch.device | None = None, cache_dir: str | Path | None = None, options: Any = None
    ) -> None:
        super().__init__(device=device, cache_dir=cache_dir, options=options)
        self.cache = self.engine_cache("engines", suffix=".bin")
        self._artifacts: dict[str, CompileArtifacts] = {}  # per entry name: one per architecture and process

    def _mode(self) -> str | None:
        mode = self.options.mode
        return "reduce-overhead" if mode is None and self.device.type == "cuda" else mode

    @staticmethod
    def entry_name(source: ModelSource) -> str:
        """Models of one architecture (UNet+canny, UNet+depth) share an entry: the weights are inputs."""
        return f"compile-{source.name.removesuffix('_canny').removesuffix('_depth')}"

    def engine_key(self, source: ModelSource, module: torch.nn.Module) -> str:
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return engine_key(
            architecture_fingerprint(module),
            source.profiles,
            source.precision,
            gpu,
            f"torch-{torch.__version__}",
            extra={
                "backend": "torch-compile",
                "format": ARTIFACTS_FORMAT,
                "mode": self._mode(),
                "dynamic": self.options.dynamic,
            },
        )

    def stored_shapes(self, source: ModelSource) -> list[str]:
        """The input-shape signatures a valid stored entry covers, read without loading it
        (``sv-engine build`` checks them to be a no-op)."""
        name = self.entry_name(source)
        key = self.engine_key(source, self._require_module(source))
        return list(self.cache.meta(name, key).get("shapes", [])) if self.cache.valid_file(name, key) else []

    def artifacts(self, source: ModelSource) -> CompileArtifacts:
        """The stored artifacts of ``source``'s architecture (loaded once per process)."""
        name = self.entry_name(source)
        if name not in self._artifacts:
            module = self._require_module(source)
            meta = {"model": source.name, "torch": torch.__version__, "mode": self._mode()}
            store = CompileArtifacts(self.cache, name, self.engine_key(source, module), meta)
            if self.options.persist:
                store.load()
            self._artifacts[name] = store
        return self._artifacts[name]

    def compile(self, source: ModelSource) -> CompiledModel:
        module = self._require_module(source).to(self.device).eval()
        mode, dynamic = self._mode(), self.options.dynamic
        store = self.artifacts(source) if self.options.persist else None
        logger.info("torch.compile %s (mode=%s, dynamic=%s)", source.name, mode, dynamic)
        compiled = torch.compile(module, mode=mode, dynamic=dynamic, fullgraph=False)
        graphs = mode == "reduce-overhead"
        seen: set[str] = set()

        def fn(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            outs = compiled(*args)
            outs = (outs,) if isinstance(outs, torch.Tensor) else outs
            if graphs:  # CUDA-graph outputs are overwritten by the next replay: hand out clones
                outs = tuple(o.clone() for o in outs)
            label = shape_label(dict(zip(source.input_names, args, strict=True)))
            if store is not None and label not in seen:
                seen.add(label)
                if not store.covers(label):
                    store.save(label)
            return outs

        model = TorchModel(source, self.device, fn)
        model.thread_safe = not graphs  # CUDA-graph trees replay into shared static buffers
        return model
