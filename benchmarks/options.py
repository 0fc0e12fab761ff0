"""The options of ``sv-engine bench``, declared once (kept free of torch: the CLI builds its ``--help``
from them without importing the benchmarks)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from sv_engine.engine.registry import backend_names

from sv_engine.errors import as_flag

#: The model columns (``--backends``): the registry's backends and named choices, except AOTInductor,
#: whose engines are built ahead by ``sv-engine build`` (minutes per architecture) and timed by
#: benchmarks/engine_bench.py.
MODEL_BACKENDS = tuple(name for name in backend_names() if name != "aoti")


def _option(default: Any, flag: str, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"flag": flag, "help": help})


_BACKENDS_HELP = ", ".join(MODEL_BACKENDS)


@dataclasses.dataclass
class BenchOptions:
    """What to benchmark. Each field carries its command-line flag and help: ``sv-engine bench`` (typer)
    and ``python -m sv_engine.benchmarks.bench`` (argparse) are both built from this one declaration."""

    stages: str = _option(
        "all", "--stages", "all, or a comma list of stages/groups (unet, vae, aggregation, kernels, models)."
    )
    backends: str = _option(
        ",".join(MODEL_BACKENDS),
        "--backends",
        f"Comma list of {_BACKENDS_HELP} (unavailable ones are recorded as skipped).",
    )
    e2e: bool = _option(
        False, "--e2e", "Also time a whole edit: warm (second edit in-process) and cold (a fresh process)."
    )
    e2e_cold: bool = _option(True, "--cold/--no-cold", "With --e2e: the cold subprocess edit (--no-cold skips it).")
    e2e_backend: str = _option(
        "torch",
        "--e2e-backend",
        "UNet+ControlNet backend of the e2e edit, or a comma list timed side by side, warm and cold each "
        f"(the first is the others' PSNR reference): {_BACKENDS_HELP}, aoti.",
    )
    e2e_steps: int = _option(20, "--e2e-steps", "DDIM steps of the e2e edit.")
    e2e_data: Path | None = _option(
        None, "--e2e-data", "Data folder for the e2e edit (default: synthesised, or the demo clip with --tiny)."
    )
    profile: bool = _option(
        False, "--profile", "With --e2e: profile one more warm edit (GPU busy time, kernels by category, top kernels)."
    )
    frames: int | None = _option(None, "--frames", "Clip frames (default 70; --tiny 4).")
    size: str | None = _option(None, "--size", "Clip WIDTHxHEIGHT (default 768x432; --tiny 64x48).")
    tiny: bool = _option(False, "--tiny", "Tiny sizes, and tiny random models unless --weights (CPU smoke test).")
    weights: Path | None = _option(
        None,
        "--weights",
        "Benchmark these models (diffusers folder layout, see README: weight formats) instead of random ones.",
    )
    repeat: int | None = _option(None, "--repeat", "Timed repeats per implementation (default 20 GPU / 3 CPU).")
    warmup: int | None = _option(None, "--warmup", "Untimed warm-up calls (default 3 GPU / 1 CPU).")
    device: str = _option("auto", "--device", "cpu, cuda or cuda:N (default: cuda if available).")
    json_path: Path | None = _option(None, "--json", "Write the JSON result here.")
    save_result: bool = _option(False, "--save-result", "Also write benchmarks/results/<gpu>-<date>-<commit>.json.")
    time_budget: float | None = _option(
        None, "--time-budget", "Skip the remaining stages once this many seconds have passed."
    )
    skip_slow_reference: bool = _option(
        False, "--skip-slow-reference", "Skip the ~20 s scipy griddata splat reference."
    )
    seed: int = _option(0, "--seed", "Seed of the random weights and inputs.")


def option_flag(field: str) -> str:
    """The flag of a :class:`BenchOptions` field (``json_path`` -> ``--json``); other inputs as the CLI spells them."""
    flags = {f.name: f.metadata["flag"].split("/")[0] for f in dataclasses.fields(BenchOptions)}
    return flags.get(field) or as_flag(field)


def option_fields() -> list[tuple[str, type, Any, str, str]]:
    """``(name, type, default, flag, help)`` of every :class:`BenchOptions` field (``X | None`` -> ``X``)."""
    hints = typing.get_type_hints(BenchOptions)
    out = []
    for f in dataclasses.fields(BenchOptions):
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
        out.append((f.name, kind, f.default, f.metadata["flag"], f.metadata["help"]))
    return out
