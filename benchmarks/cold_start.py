"""Cold ``sv-engine edit`` of several installs of sv-engine side by side (issue 16's cold path: a change's
before and after), on one GPU (or ``--device cpu``: the tiny models, the CPU's own cold start), on the same
saved weights, clip and caches.

    python -m sv_engine.benchmarks.cold_start --out cold.json --variant before=/tmp/before --variant after=/tmp/after

Each ``--variant NAME=DIR`` is a folder put first on ``PYTHONPATH`` holding an ``sv_engine`` package (e.g.
a checkout laid out as installed). The setup runs once in this process: a 70-frame 768×432 clip with a
random NLA, full-size random fp16 weights saved in the diffusers folder layout, the clip's NLA maps cached
(as a warm edit leaves them). Then each variant's cold edit (:func:`sv_engine.benchmarks.e2e.cold_edit`:
process start to written video, the report's phases and the first edit's stages), alternating the
variants' order each round, and, time left, each variant's import of its model libraries
(``-X importtime``, the slowest imports).

A variant folder from a source tree (``git archive REV | tar -x -C TREE``), as installed::

    mkdir -p DIR/sv_engine && cp -r TREE/sv_engine/. DIR/sv_engine/ &&
      for p in stablevideo engine export kernels benchmarks; do cp -r TREE/$p DIR/sv_engine/$p; done

then ``python -m compileall -q -j0`` over the variants and site-packages, so that no variant pays
another's bytecode compilation; run from a folder without a ``kernels/`` of its own (transformers
probes for a ``kernels`` package).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from sv_engine.benchmarks.timing import slowest_imports

log = logging.getLogger(__name__)

#: How each variant imports its model libraries: through ``model_classes`` where it has it, else the
#: diffusers / transformers top levels (what ``loaders`` did before it).
_IMPORT_SCRIPT = """
import json, time
t0 = time.perf_counter()
import torch
if torch.cuda.is_available():
    torch.zeros(1, device="cuda")
t1 = time.perf_counter()
try:
    from sv_engine.stablevideo.models.model_classes import model_classes
except ImportError:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel, DPTForDepthEstimation
    how = "diffusers and transformers top levels"
else:
    model_classes()
    how = "model_classes()"
t2 = time.perf_counter()
print("IMPORTS " + json.dumps({"how": how, "torch import + CUDA init": t1 - t0, "model libraries": t2 - t1}))
"""


def parse_variant(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"a variant is NAME=DIR, not {text!r}")
    return name, Path(folder)


def variant_env(folder: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])}


def import_profile(folder: Path, timeout: float) -> dict:
    """A fresh process's torch + CUDA init and model-library import seconds, and its slowest imports."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _IMPORT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=variant_env(folder),
        cwd=tempfile.gettempdir(),
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("IMPORTS ")), None)
    if line is None:
        return {"status": "error", "error": " | ".join(proc.stderr.strip().splitlines()[-4:])}
    seconds = json.loads(line[len("IMPORTS ") :])
    return {
        "status": "ok",
        "how": seconds.pop("how"),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "modules": proc.stderr.count("import time:") - 1,  # less the header line
        "slowest_imports_cumulative_s": slowest_imports(proc.stderr, 15),
    }


#: (frames, height, width) of the cold edits' clip: full size, and with the tiny models on a CPU.
FULL_CLIP, TINY_CLIP = (70, 432, 768), (8, 128, 192)


def setup_clip_and_weights(tmp: Path, device: torch.device, tiny: bool) -> tuple[Path, Path]:
    """A clip with a random NLA and random models saved in the diffusers layout, under ``tmp``; the clip's
    NLA maps in the cache (``$SV_ENGINE_CACHE``), as a warm edit leaves them. Full size: 70 frames
    768×432 and the fp16 SD 1.5 models; ``tiny``: 8 frames 192×128 and the tiny models."""
    from sv_engine.benchmarks.e2e import synth_data_dir
    from sv_engine.stablevideo.model_source import load_components
    from sv_engine.stablevideo.models.loaders import save_components
    from sv_engine.stablevideo.models.tiny import build_tiny_components
    from sv_engine.stablevideo.session import open_video

    frames, height, width = TINY_CLIP if tiny else FULL_CLIP
    data_dir = synth_data_dir(tmp, frames, height, width)
    components = build_tiny_components(0) if tiny else load_components(device, random_full=True, precision="fp16")
    weights = save_components(components, tmp / "weights")
    del components
    if device.type == "cuda":
        torch.cuda.empty_cache()
    open_video(data_dir, device)
    return data_dir, weights


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variant", type=parse_variant, action="append", required=True, help="NAME=DIR (repeatable)")
    ap.add_argument("--rounds", type=int, default=1, help="cold edits per variant (time allowing)")
    ap.add_argument("--budget-s", type=float, default=120.0)
    ap.add_argument(
        "--backend",
        default="torch-cuda-graph",
        help="the edits' --backend (auto: a user's default, with its backend choice)",
    )
    ap.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: the tiny random models on an 8-frame 192x128 clip, 4 steps (the CPU's own cold start)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    deadline = time.monotonic() + args.budget_s
    from sv_engine.benchmarks.e2e import cold_edit
    from sv_engine.benchmarks.timing import environment

    device = torch.device(args.device)
    tiny = device.type == "cpu"
    (frames, height, width), steps = (TINY_CLIP, 4) if tiny else (FULL_CLIP, 20)
    variants = dict(args.variant)
    result: dict = {
        "environment": environment(device),
        "what": "cold `sv-engine edit` (process start to written video) per sv-engine install, side by side",
        "params": {
            "frames": frames,
            "size": f"{width}x{height}",
            "steps": steps,
            "keyframes": 3,
            "precision": "fp32" if tiny else "fp16",
            "models": "tiny random" if tiny else "full-size random",
        },
        "variants": {name: str(folder) for name, folder in variants.items()},
        "backend": args.backend,
        "cold_edit": {name: [] for name in variants},
        "imports": {},
    }

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=1, default=str))

    tmp = Path(tempfile.mkdtemp(prefix="sv-engine-cold-"))
    os.environ["SV_ENGINE_CACHE"] = str(tmp / "cache")  # this process's maps and every edit's: one cache
    t0 = time.perf_counter()
    data_dir, weights = setup_clip_and_weights(tmp, device, tiny)
    result["setup_s"] = round(time.perf_counter() - t0, 2)
    save()
    names = list(variants)
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            left = deadline - time.monotonic()
            if left < 15:  # every variant's cold edit comes before the import profiles: only a sure miss is skipped
                result["cold_edit"][name].append({"status": "skipped", "reason": "time budget"})
                continue
            run_dir = tmp / f"{name}-{round_}"
            run_dir.mkdir()
            res = cold_edit(
                data_dir,
                weights,
                run_dir,
                device,
                tiny,
                steps,
                0.8,
                left - 5,
                "torch" if tiny else args.backend,
                variant_env(variants[name]),
            )
            res.pop("command", None)
            log.info("cold edit %s: %s", name, {k: v for k, v in res.items() if k != "seconds_per_phase"})
            result["cold_edit"][name].append(res)
            save()
    for name in names:
        left = deadline - time.monotonic()
        if left < 25:
            result["imports"][name] = {"status": "skipped", "reason": "time budget"}
            continue
        try:
            result["imports"][name] = import_profile(variants[name], left - 5)
        except subprocess.TimeoutExpired:
            result["imports"][name] = {"status": "error", "error": "timed out"}
        save()
    save()
    print(json.dumps(result, indent=1, default=str)[-5000:])


if __name__ == "__main__":
    main()
