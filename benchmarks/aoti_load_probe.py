"""Why an AOTInductor package does not load on this machine: one small model, several loaders, each
in its own process, a native backtrace of any crash.

It separates the suspects: the package loader against the older ``.so`` runner and the legacy
``aot_load`` on the same model, CPU against CUDA packages, weights and kernels inside the ``.so`` or
beside it, libstdc++ preloaded or shared (the backend's fix, ``share_libstdcxx``) or not. A crash
prints its native stack (``backtrace`` from a SIGSEGV handler compiled here with the system C
compiler), so the failing library and function are named. On the H200 image it named ``std::regex``
inside the wrapper, whose libstdc++ is linked in statically (benchmarks/results/aoti-load-*-0efa9ae.json).

    python -m sv_engine.benchmarks.aoti_load_probe --out probe.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

log = logging.getLogger("aoti_load_probe")

#: A SIGSEGV/SIGABRT handler that writes the native stack to stderr (loaded with ctypes before the load).
HANDLER_C = r"""
#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
static void on_fault(int sig) {
  void *frames[96];
  int n = backtrace(frames, 96);
  const char *head = "\n=== native backtrace ===\n";
  write(2, head, strlen(head));
  backtrace_symbols_fd(frames, n, 2);
  _exit(128 + sig);
}
void sv_install(void) { signal(SIGSEGV, on_fault); signal(SIGABRT, on_fault); signal(SIGBUS, on_fault); }
"""

#: Builds the model once per device (the child cases load what it wrote).
BUILD = textwrap.dedent(
    """
    import os, sys, json, torch
    device, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32))
    model = model.to(device).eval()
    x = torch.randn(4, 64, device=device)
    ep = torch.export.export(model, (x,))
    made = {}
    for name, cfg in json.loads(sys.argv[3]).items():
        try:
            path = torch._inductor.aoti_compile_and_package(
                ep, package_path=os.path.join(out, name + ".pt2"), inductor_configs=cfg
            )
            made[name] = path
        except Exception as exc:
            made[name] = "error: " + repr(exc)[:300]
    if sys.argv[4] == "legacy":
        try:
            legacy = {"aot_inductor.output_path": os.path.join(out, "legacy.so")}
            made["legacy_so"] = torch._export.aot_compile(model, (x,), options=legacy)
        except Exception as exc:
            made["legacy_so"] = "error: " + repr(exc)[:300]
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"x": x.cpu(), "y": model(x).detach().cpu(), "state": state}, os.path.join(out, "io.pt"))
    print(json.dumps(made))
    """
)

#: Loads one way and checks the output against eager (printed as JSON on success).
LOAD = textwrap.dedent(
    """
    import ctypes, json, os, sys, zipfile, glob
    how, path, device, handler = sys.argv[1:5]
    ctypes.CDLL(handler).sv_install()
    import torch
    io = torch.load(os.path.join(os.path.dirname(path), "io.pt"))
    x = io["x"].to(device)
    if how.endswith("_shared"):  # the backend's fix: the process's libstdc++ made global first
        from sv_engine.engine.aoti_backend import share_libstdcxx

        share_libstdcxx()
        how = how.removesuffix("_shared")
    if how == "package_loader":
        loader = torch._C._aoti.AOTIModelPackageLoader(path, "model", False, 1, -1)
        if "weights_outside" in path:  # constants, update_inactive, check_full_update, user_managed
            state = {k: v.to(device) for k, v in io["state"].items()}
            loader.load_constants({f: state[f] for f in loader.get_constant_fqns()}, False, False, True)
        y = loader.boxed_run([x])[0]
    elif how == "aoti_load_package":
        y = torch._inductor.aoti_load_package(path)(x)
    elif how == "legacy_aot_load":
        y = torch._export.aot_load(path, device)(x)
    elif how == "runner_from_package":
        # The package's .so with the older container runner, bypassing the package loader.
        root = path + ".unzipped"
        zipfile.ZipFile(path).extractall(root)
        so = [p for p in glob.glob(root + "/**/*.so", recursive=True)][0]
        aoti = torch._C._aoti
        cls = aoti.AOTIModelContainerRunnerCuda if device == "cuda" else aoti.AOTIModelContainerRunnerCpu
        runner = cls(so, 1, device, os.path.dirname(so)) if device == "cuda" else cls(so, 1)
        y = runner.run([x])[0]
    else:
        raise SystemExit("unknown loader " + how)
    err = (y.float().cpu() - io["y"].float()).abs().max().item()
    print(json.dumps({"max_abs_err": err}))
    """
)

CONFIGS = {
    "default": {},
    # The wrapper .so then names libstdc++ itself (NEEDED) instead of taking whichever copy the
    # process's global symbol scope offers first.
    "link_libstdcxx": {"aot_inductor.custom_op_libs": ["stdc++"]},
    "weights_outside": {"aot_inductor.package_constants_in_so": False},
    "embed_kernels": {"aot_inductor.embed_kernel_binary": True},
}


def _run(args: list[str], timeout: float, env: dict | None = None) -> dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"returncode": "timeout", "seconds": round(time.perf_counter() - t0, 1)}
    row = {"returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1)}
    if proc.returncode == 0:
        try:
            row["result"] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            row["stdout_tail"] = proc.stdout[-2000:]
    else:
        at = proc.stderr.find("=== native backtrace")  # the crash's innermost frames come first
        row["stderr_tail"] = proc.stderr[-6000:] if at < 0 else proc.stderr[max(0, at - 1500) : at + 6000]
    return row


def _needed(folder: Path, name: str) -> str:
    """The wrapper .so's NEEDED libraries (readelf), unpacked from package ``name``."""
    script = (
        f"cd {folder} && mkdir -p x-{name} && cd x-{name} && python3 -m zipfile -e ../{name}.pt2 . && "
        "readelf -d $(find . -name '*.so' | head -1) | grep NEEDED"
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    return proc.stdout[-3000:] + proc.stderr[-500:]


#: Which libraries of a process that imported torch (and triton) define libstdc++'s locale: a copy
#: linked statically into one of them can take the place of the system's for a .so that names none.
LOCALE_OWNERS = textwrap.dedent(
    """
    import json, subprocess, torch
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if ".so" in l and "/" in l})
    owners = []
    for lib in libs:
        syms = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True).stdout
        if "_ZNSt6locale7classicEv" in syms:
            owners.append(lib)
    print(json.dumps(owners))
    """
)


def _environment(work: Path) -> dict:
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_file": torch.__file__,
        "cuda": torch.version.cuda,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    for cmd in (["gcc", "--version"], ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]):
        try:
            env[cmd[0]] = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired) as exc:
            env[cmd[0]] = repr(exc)
    libs = subprocess.run(
        ["bash", "-c", "find / -xdev -name 'libtorch_cuda.so' 2>/dev/null | head"], capture_output=True, text=True
    )
    env["libtorch_cuda_copies"] = libs.stdout.split()
    env["ld_library_path"] = os.environ.get("LD_LIBRARY_PATH", "")
    from torch._inductor import cpp_builder

    env["inductor_cpp_compiler"] = cpp_builder.get_cpp_compiler()
    env["cxx_env"] = os.environ.get("CXX")
    env["locale_owners"] = _run([sys.executable, "-c", LOCALE_OWNERS], 120).get("result")
    return env


def _system_libstdcxx() -> str | None:
    proc = subprocess.run(
        ["bash", "-c", "ldconfig -p | grep 'libstdc++.so.6 ' | head -1"], capture_output=True, text=True
    )
    return proc.stdout.split("=>")[-1].strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", default="cuda,cpu")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="build configs to try (of CONFIGS)")
    parser.add_argument("--loaders", default="package_loader,runner_from_package,legacy_aot_load,package_loader_shared")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = Path(tempfile.mkdtemp(prefix="aoti-probe-"))
    handler = work / "segv_backtrace.so"
    (work / "h.c").write_text(HANDLER_C)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O0", "-o", str(handler), str(work / "h.c")], check=True)
    result: dict = {"benchmark": "aoti-load-probe", "environment": _environment(work), "devices": {}}
    libstdcxx = result["environment"]["system_libstdcxx"] = _system_libstdcxx()
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}
    loaders = set(args.loaders.split(","))
    for device in args.devices.split(","):
        folder = work / device
        folder.mkdir()
        build = _run(
            [
                sys.executable,
                "-c",
                BUILD,
                device,
                str(folder),
                json.dumps(configs),
                "legacy" if "legacy_aot_load" in loaders else "-",
            ],
            600,
        )
        made = build.get("result", {})
        row: dict = {"build": build, "loads": {}}
        for name, path in made.items():
            if str(path).startswith("error"):
                continue
            hows = ["legacy_aot_load"] if name == "legacy_so" else ["package_loader", "runner_from_package"]
            hows += [f"{how}_shared" for how in hows]
            if name == "weights_outside":  # the runner has no way to be given the weights here
                hows = ["package_loader"]
            runs = [(how, None) for how in hows if how in loaders]
            if name == "default" and libstdcxx:
                runs.append(("package_loader", {**os.environ, "LD_PRELOAD": libstdcxx}))
            for how, env in runs:
                key = f"{name} / {how}" + (" / LD_PRELOAD libstdc++" if env else "")
                cmd = [sys.executable, "-c", LOAD, how, path, device, str(handler)]
                row["loads"][key] = _run(cmd, args.timeout_s, env)
                log.info("%s %s: %s", device, key, {k: v for k, v in row["loads"][key].items() if k != "stderr_tail"})
                args.out.write_text(json.dumps({**result, "devices": {**result["devices"], device: row}}, indent=1))
        for name in ("default", "link_libstdcxx"):
            if made.get(name) and not str(made[name]).startswith("error"):
                row[f"needed_{name}_so"] = _needed(folder, name)
        result["devices"][device] = row
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1)[-6000:])


if __name__ == "__main__":
    main()
