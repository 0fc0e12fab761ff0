"""Full-size device parity + timing (run by the lead on an H100/H200).

    python -m sv_engine.benchmarks.device_parity --out results/device_parity.json \
        [--workdir /tmp/sv-dev] [--budget-s 540] [--models LIST] [--skip SECTION,...]

Sections (each in try/except; the JSON is rewritten after every section, so a crash or timeout
keeps what finished; a section is skipped with the reason when the time budget is spent):

1. ``env``            torch / CUDA / GPU / onnxruntime / TensorRT versions.
2. ``components``     full-size random SD1.5 + ControlNet + DPT-hybrid (build_random_components) on cuda.
3. ``export_fp16`` / ``export_fp32``  ONNX exports of the models (fused UNet+ControlNet > 2 GB in fp32:
                      external data) with the time per model.
4. ``parity_ort_fp16`` / ``parity_ort_fp32`` / ``parity_torch_compile``  per-component metrics vs
                      torch fp32 (TF32 off) on the same inputs.
5. ``timing``         fused UNet+ControlNet CFG step (batch 2) at 512×512 and 512×768 per backend:
                      torch fp32/fp16 eager, torch.compile fp16, ORT CUDA fp16 (+CUDA graph), ORT fp32,
                      TensorRT when the ``tensorrt`` flavour is present. CUDA events, warm-up, median.
6. ``trt_build``      parse + build the full-size fused fp16 ONNX with tensorrt_rtx (or tensorrt):
                      build time, engine size, and whether it deserialises/runs on this GPU
                      (TensorRT-RTX builds on Hopper but its engines cannot run there).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sv_engine.benchmarks.timing import environment, time_fn

logger = logging.getLogger("sv_engine.benchmarks.device_parity")

DEFAULT_MODELS = [
    "unet_controlnet_canny",
    "text_encoder",
    "vae_decoder",
    "vae_encoder",
    "nla_field",
    "depth",
    "controlnet_canny",
    "unet",
]
SHAPES = {"512x512": {"B": 2, "h": 64, "w": 64}, "512x768": {"B": 2, "h": 64, "w": 96}}


class Runner:
    def __init__(self, out: Path, budget_s: float, skip: set[str]) -> None:
        self.out = out
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.skip = skip
        self.result: dict[str, Any] = {"budget_s": budget_s, "sections": {}}

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result, indent=1, default=str))

    def section(self, name: str, fn: Callable[[], Any], need_s: float = 0.0) -> Any:
        if name in self.skip:
            self.result["sections"][name] = {"skipped": "--skip"}
            self.save()
            return None
        if self.left() < need_s:
            self.result["sections"][name] = {"skipped": f"time budget: {self.left():.0f}s left < {need_s:.0f}s needed"}
            self.save()
            return None
        t = time.perf_counter()
        logger.info("== %s (%.0fs left)", name, self.left())
        try:
            value = fn()
            self.result["sections"][name] = {"ok": True, "seconds": round(time.perf_counter() - t, 2), "result": value}
        except Exception as exc:  # noqa: BLE001 - record and go on
            value = None
            self.result["sections"][name] = {
                "ok": False,
                "seconds": round(time.perf_counter() - t, 2),
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-3000:],
            }
            logger.error("%s failed: %s", name, exc)
        finally:
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
        self.save()
        return value


def time_cuda(fn: Callable[[], Any], iters: int = 10) -> dict[str, Any]:
    """Median/min ms of ``fn`` with CUDA events after 3 warm-up calls (benchmarks.timing.time_fn)."""
    stats = time_fn(fn, "cuda", iters, warmup=3)
    return {"median_ms": round(stats["median_ms"], 3), "min_ms": round(stats["min_ms"], 3), "iters": stats["repeat"]}


def env_info() -> dict[str, Any]:
    """The benchmarks' one environment record, plus what this run's backends found."""
    info = environment("cuda" if torch.cuda.is_available() else "cpu")
    try:
        import onnxruntime as ort

        info["ort_providers"] = ort.get_available_providers()
    except Exception as exc:  # noqa: BLE001
        info["onnxruntime"] = f"unavailable: {exc}"
    try:
        from sv_engine.engine.trt_backend import import_tensorrt

        trt, flavor = import_tensorrt()
        info["tensorrt"] = {"flavor": flavor, "version": trt.__version__}
    except Exception as exc:  # noqa: BLE001
        info["tensorrt"] = f"unavailable: {exc}"
    from sv_engine.engine.registry import backend_status

    info["backends_cuda"] = backend_status("cuda")
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON result path")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/sv-device"), help="ONNX/engine scratch directory")
    p.add_argument("--budget-s", type=float, default=540.0, help="stop starting sections after this many seconds")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="models for export/parity")
    p.add_argument("--skip", default="", help="comma list of sections to skip")
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("sv_engine.engine.engine_cache",):
        logging.getLogger(noisy).setLevel(logging.INFO)

    run = Runner(args.out, args.budget_s, {s for s in args.skip.split(",") if s})
    run.result["args"] = {k: str(v) for k, v in vars(args).items()}
    run.section("env", env_info)
    if not torch.cuda.is_available():
        run.result["fatal"] = "no CUDA GPU"
        run.save()
        return run.result
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference is real fp32
    torch.backends.cudnn.allow_tf32 = False
    models = [m for m in args.models.split(",") if m]
    state: dict[str, Any] = {}

    from sv_engine.export.spec import DEFAULT_SHAPES

    def components():
        from sv_engine.stablevideo.models.tiny import build_random_components
        from sv_engine.stablevideo.nla import NLAModel

        c = build_random_components(0, size="full", with_depth="depth" in models)
        c.to("cuda")
        state["components"], state["nla"] = c, NLAModel.random(0).to("cuda")
        return {"params_M": {k: round(v / 1e6, 1) for k, v in c.num_parameters().items()}}

    run.section("components", components)
    if "components" not in state:
        return run.result
    comps, nla = state["components"], state["nla"]

    def export(precision: str):
        from sv_engine.export.onnx_export import export_onnx, prepare_out_dir, write_manifest
        from sv_engine.export.registry import build_specs

        out = prepare_out_dir(args.workdir / precision, force=True)
        specs = build_specs(comps, nla, names=models, precision=precision, shapes=DEFAULT_SHAPES, device="cuda")
        done, times, errors = {}, {}, {}
        for name, spec in specs.items():
            if run.left() < 60:
                errors[name] = "skipped: time budget"
                continue
            t = time.perf_counter()
            try:
                done[name] = export_onnx(spec, out)
                times[name] = round(time.perf_counter() - t, 1)
            except Exception as exc:  # noqa: BLE001
                errors[name] = f"{type(exc).__name__}: {exc}"
            spec._module = None  # free the fp16 copy
            torch.cuda.empty_cache()
        write_manifest(out, done.values())
        sizes = {
            n: round(sum((out / f).stat().st_size for f in [s.onnx_path.name, *s.external_data]) / 2**20, 1)
            for n, s in done.items()
        }
        state[f"onnx_{precision}"] = out
        return {"seconds": times, "size_mib": sizes, "errors": errors}

    run.section("export_fp16", lambda: export("fp16"), need_s=120)

    def parity(backend: str, precision: str, onnx_dir: Path | None, names: list[str], options=None):
        from sv_engine.export.parity_run import run_parity

        report = run_parity(
            comps,
            nla,
            backend=backend,
            precision=precision,
            models=names,
            shapes=DEFAULT_SHAPES,
            device="cuda",
            onnx_dir=onnx_dir,
            backend_options=options,
        )
        return report

    if "onnx_fp16" in state:
        run.section("parity_ort_fp16", lambda: parity("ort", "fp16", state["onnx_fp16"], models), need_s=60)

    # ---- timing of the fused UNet+ControlNet CFG step ------------------------------------------------
    def timing():
        from sv_engine.engine.backend import load_manifest
        from sv_engine.engine.registry import get_backend
        from sv_engine.export.registry import build_specs

        res: dict[str, Any] = {}
        spec32 = build_specs(comps, nla, names=["unet_controlnet_canny"], precision="fp32", device="cuda")[
            "unet_controlnet_canny"
        ]
        spec16 = build_specs(comps, nla, names=["unet_controlnet_canny"], precision="fp16", device="cuda")[
            "unet_controlnet_canny"
        ]
        candidates: list[tuple[str, Callable[[], Any], Any]] = [
            ("torch_fp32", lambda: get_backend("torch", device="cuda").compile(spec32.model_source()), spec32),
            ("torch_fp16", lambda: get_backend("torch", device="cuda").compile(spec16.model_source()), spec16),
        ]
        if "onnx_fp16" in state:
            src16 = load_manifest(state["onnx_fp16"]).get("unet_controlnet_canny")
            if src16 is not None:
                candidates.append(("ort_fp16", lambda: get_backend("ort", device="cuda").compile(src16), spec16))
        if "onnx_fp32" in state:
            src32 = load_manifest(state["onnx_fp32"]).get("unet_controlnet_canny")
            if src32 is not None:
                candidates.append(("ort_fp32", lambda: get_backend("ort", device="cuda").compile(src32), spec32))
        for label, make, spec in candidates:
            if run.left() < 45:
                res[label] = {"skipped": "time budget"}
                continue
            entry: dict[str, Any] = {}
            try:
                t = time.perf_counter()
                model = make()
                entry["load_s"] = round(time.perf_counter() - t, 1)
                for shape_name, sym in SHAPES.items():
                    x = spec.sample_inputs("opt", device="cuda", **sym)
                    x["control_scale"] = torch.tensor([1.0], device="cuda")
                    entry[shape_name] = time_cuda(lambda model=model, x=x: model(**x), iters=args.iters)
            except Exception as exc:  # noqa: BLE001
                entry["error"] = f"{type(exc).__name__}: {exc}"
            res[label] = entry
            del entry
            torch.cuda.empty_cache()
        # ORT CUDA graph: one session per fixed shape
        if "onnx_fp16" in state and run.left() > 60:
            src16 = load_manifest(state["onnx_fp16"]).get("unet_controlnet_canny")
            entry = {}
            for shape_name, sym in SHAPES.items():
                try:
                    model = get_backend("ort", device="cuda", cuda_graphs=True).compile(src16)
                    x = spec16.sample_inputs("opt", device="cuda", **sym)
                    entry[shape_name] = time_cuda(lambda model=model, x=x: model(**x), iters=args.iters)
                    del model
                except Exception as exc:  # noqa: BLE001
                    entry[shape_name] = {"error": f"{type(exc).__name__}: {exc}"}
            res["ort_fp16_cudagraph"] = entry
        # torch.compile (reduce-overhead) fp16, first shape only unless time is left
        if run.left() > 150:
            entry = {}
            try:
                t = time.perf_counter()
                model = get_backend("torch_compile", device="cuda").compile(spec16.model_source())
                for shape_name, sym in SHAPES.items():
                    if run.left() < 90:
                        entry[shape_name] = {"skipped": "time budget"}
                        continue
                    x = spec16.sample_inputs("opt", device="cuda", **sym)
                    t = time.perf_counter()
                    model(**x)
                    torch.cuda.synchronize()
                    entry[f"{shape_name}_compile_s"] = round(time.perf_counter() - t, 1)
                    entry[shape_name] = time_cuda(lambda model=model, x=x: model(**x), iters=args.iters)
            except Exception as exc:  # noqa: BLE001
                entry["error"] = f"{type(exc).__name__}: {exc}"
            res["torch_compile_fp16"] = entry
        else:
            res["torch_compile_fp16"] = {"skipped": "time budget"}
        return res

    # ---- TensorRT build of the fused graph ----------------------------------------------------------
    def trt_build():
        from sv_engine.engine.backend import load_manifest
        from sv_engine.engine.trt_backend import _Logger, build_serialized_engine, import_tensorrt

        trt, flavor = import_tensorrt()
        onnx_dir = state.get("onnx_fp16")
        if onnx_dir is None:
            raise RuntimeError("no fp16 export to build from")
        src = load_manifest(onnx_dir)["unet_controlnet_canny"]
        out: dict[str, Any] = {"flavor": flavor, "version": trt.__version__, "onnx": str(src.onnx_path)}
        t = time.perf_counter()
        data = build_serialized_engine(
            trt, flavor, src.onnx_path, src, "fp16", timing_cache_path=args.workdir / f"timing-{flavor}.cache"
        )
        out["build_s"] = round(time.perf_counter() - t, 1)
        out["engine_mib"] = round(len(data) / 2**20, 1)
        try:
            engine = trt.Runtime(_Logger.get(trt)).deserialize_cuda_engine(data)
            out["deserialize"] = "ok" if engine is not None else "returned None"
            if engine is not None:
                from sv_engine.engine.trt_backend import TrtModel

                model = TrtModel(src, torch.device("cuda"), trt, engine, cuda_graph=False)
                spec = state.get("spec16_fused")
                if spec is not None:
                    for shape_name, sym in SHAPES.items():
                        x = spec.sample_inputs("opt", device="cuda", **sym)
                        out[shape_name] = time_cuda(lambda model=model, x=x: model(**x), iters=args.iters)
        except Exception as exc:  # noqa: BLE001 - expected for tensorrt_rtx on Hopper
            out["deserialize"] = f"{type(exc).__name__}: {exc}"
        if flavor == "tensorrt_rtx" and torch.cuda.get_device_capability()[0] >= 9 and out.get("deserialize") != "ok":
            out["note"] = "TensorRT-RTX targets RTX (consumer/workstation) GPUs: builds on Hopper, cannot run there"
        return out

    from sv_engine.export.registry import build_specs as _bs

    state["spec16_fused"] = _bs(comps, nla, names=["unet_controlnet_canny"], precision="fp16", device="cuda")[
        "unet_controlnet_canny"
    ]
    run.section("trt_build", trt_build, need_s=120)
    run.section("timing", timing, need_s=90)
    run.section("export_fp32", lambda: export("fp32"), need_s=150)
    if "onnx_fp32" in state:
        run.section("parity_ort_fp32", lambda: parity("ort", "fp32", state["onnx_fp32"], models), need_s=60)
    run.section(
        "parity_torch_compile",
        lambda: parity("torch_compile", "fp32", None, ["text_encoder", "vae_decoder", "nla_field"]),
        need_s=120,
    )
    run.result["done"] = True
    run.save()
    return run.result


if __name__ == "__main__":
    main()
