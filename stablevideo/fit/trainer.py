"""The fitting loop: flow-initialised layout, mapping pretraining, NLA optimisation with a
fast-converging schedule, periodic / Ctrl-C checkpoints to ``fit_state.pt`` and ``--resume``."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template

import numpy as np
import torch
from sv_engine.stablevideo.fit import datafolder, flow, report, separation
from sv_engine.stablevideo.fit.distill import distill_step
from sv_engine.stablevideo.fit.losses import FitTensors, Layout, LossWeights, StepFlags, nla_step, pretrain_step
from sv_engine.stablevideo.fit.video_input import read_frames, read_masks
from sv_engine.stablevideo.hash_nla import HashNLAConfig, HashNLAModel
from sv_engine.stablevideo.nla import NLAModel
from tqdm import tqdm

from sv_engine.atomic_write import atomic_torch_save
from sv_engine.device import resolve_device
from sv_engine.errors import Spelling, SvEngineError

log = logging.getLogger(__name__)

STATE_VERSION = 1
#: The fit's notes name the hint inputs as ``$name``; :attr:`FitOptions.spell` spells them for the front end
#: that runs the fit (the CLI as flags, the service as its JSON keys), as :class:`SvEngineError` texts do.
AUTO_MASK_NOTE = Template(
    "no masks given: automatic fg/bg separation (motion, background residual, colour models) bootstrapped alpha;"
    " check fit_preview.png, and give $fg_box / $fg_point, $mask or $mask_model where it missed the object"
)
COLLAPSE_FIX = Template(
    "give $fg_box X,Y,W,H (or $fg_point X,Y) on the object, foreground masks with $mask, or $mask_model DIR"
    " (SAM 2) with a box / point"
)
HINT_INPUTS = ("fg_box", "fg_point", "mask", "mask_model")


def spell_note(note: Template, spell: Spelling) -> str:
    """``note`` with the inputs it names spelled by ``spell``."""
    return note.substitute({name: spell(name) for name in HINT_INPUTS})


@dataclass
class FitOptions:
    """Everything about one fit except the video itself. Budgets (``minutes`` / ``iters``) are totals
    over all runs of one output folder: ``--resume`` continues up to them."""

    out: Path
    minutes: float | None = None
    iters: int | None = None
    device: str = "auto"
    resume: bool = False
    force: bool = False
    arch: str = "auto"  # see ARCHS and resolve_arch
    seed: int = 0
    # None: the defaults of ARCH_DEFAULTS for the arch and device
    batch_size: int | None = None
    lr: float | None = None  # main phase, cosine-decayed to lr_min
    warm_lr: float | None = None  # the warm start's direct regression tolerates (and gains from) a higher lr
    lr_min: float | None = None
    pretrain_fraction: float | None = None  # warm start on direct targets (layout, colours, masks)
    # "process": budget in CPU-seconds / torch threads ("M minutes of a dedicated machine"), robust to busy hosts
    clock: str = "wall"
    bootstrap_fraction: float | None = None  # alpha BCE against the masks for this part of the main phase
    distill_fraction: float | None = None  # --arch hash: the budget's last part distils into the NLA MLPs
    global_rigidity_fraction: float = 0.4  # of the main phase
    checkpoint_minutes: float = 3.0
    eval_seconds: float = 30.0
    amp: bool = True  # bf16 autocast for atlas / alpha on CUDA
    progress: bool = True
    write_outputs: bool = True  # preview + report (the bench turns the preview off)
    hints: separation.Hints | None = None  # --fg-box / --fg-point: seed the automatic separation (or prompt SAM 2)
    mask_model: Path | None = None  # --mask-model: SAM 2 checkpoint folder, prompted by the hints
    weights: LossWeights = field(default_factory=LossWeights)
    spell: Spelling = str  # how the notes in the log and report spell the inputs they name (the front end's)


@dataclass(frozen=True)
class ArchDefaults:
    batch_size: int
    lr: float
    warm_lr: float
    lr_min: float
    pretrain_fraction: float
    bootstrap_fraction: float
    distill_fraction: float = 0.0


ARCHS = ("auto", "hash", "nla")


def resolve_arch(arch: str, device: torch.device) -> str:
    """``auto``: what met the fit's targets where it runs. On a GPU the NLA MLPs (real footage 30.4 dB in
    4.4 min, the synthetic clip 47.6 dB in 150 s, where hash ends at 45.7 dB; and the checkpoint StableVideo
    renders is the fitted one, not a distillation); on a CPU the hash grids (29.3 dB in 4 min on 2 cores,
    the MLPs ~20 dB). Numbers: the README's fit section and benchmarks/results/fit-*."""
    if arch != "auto":
        return arch
    return "nla" if device.type == "cuda" else "hash"


ARCH_DEFAULTS = {
    # A short CPU budget gives the NLA MLPs only ~1.5k main-phase steps: there the full objective at lr 1e-3
    # undoes the warm start (measured 28 -> 24 dB on the synthetic test clip); NLA's lr 1e-4 with masks kept
    # on holds 30 dB. On CUDA (~30 it/s) thousands of steps take lr 1e-3.
    ("nla", "cpu"): ArchDefaults(1024, 1e-4, 2e-3, 1e-4, 0.85, 1.0),
    ("nla", "cuda"): ArchDefaults(131072, 1e-3, 2e-3, 1e-4, 0.3, 0.6),
    # Grid tables take Instant-NGP's lr 1e-2; the warm start is short (the mappings start at the layout).
    # The distillation into the NLA MLPs gets the last quarter.
    ("hash", "cpu"): ArchDefaults(16384, 1e-2, 1e-2, 1e-3, 0.2, 0.5, 0.25),
    ("hash", "cuda"): ArchDefaults(262144, 1e-2, 1e-2, 1e-3, 0.2, 0.5, 0.25),
}


@dataclass
class FitResult:
    out: Path
    iterations: int
    elapsed_s: float
    psnr_db: float
    interrupted: bool
    report: dict


def fit_video(
    source: str | Path,
    options: FitOptions,
    mask_source: str | Path | None = None,
    max_frames: int | None = None,
    size: tuple[int, int] | None = (768, 432),
) -> FitResult:
    """Reads the video (and masks) and fits it; see :func:`fit_arrays`."""
    frames, src_size, _ = read_frames(source, max_frames, size)
    masks = None
    if mask_source is not None:
        masks = read_masks(mask_source, len(frames), src_size, (frames.shape[2], frames.shape[1]))
    return fit_arrays(frames, masks, options)


# ----------------------------------------------------------------------------------------- layout
@dataclass
class InitLayout:
    """The flow-initialised uv layout the mapping nets are pretrained to."""

    bg_homographies: np.ndarray  # (T, 3, 3): frame-t pixel -> frame-0 pixel
    bg_center: tuple[float, float]
    bg_scale: float
    fg_centroids: np.ndarray  # (T, 2)
    fg_scale: float = 0.8


def make_init_layout(frames: np.ndarray, flows: flow.Flows, masks: np.ndarray) -> InitLayout:
    t_count, h, w = frames.shape[:3]
    half = max(h, w) / 2.0
    hs = np.stack(flow.background_trajectory(flows, masks))
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [(w - 1) / 2, (h - 1) / 2]], np.float64)
    pts = np.concatenate([flow.apply_homography(hh, corners) for hh in hs])
    lo, hi = pts.min(0), pts.max(0)
    center = (lo + hi) / 2
    extent = float(np.max((hi - lo) / 2))
    bg_scale = float(min(0.8, 0.9 * half / max(extent, 1.0)))
    log.info("background layout: %.0fx%.0f px panorama, scale %.3f", hi[0] - lo[0], hi[1] - lo[1], bg_scale)
    # fg: identity moved with the foreground centroid, scaled so that no pixel's target leaves the
    # tanh range (a clamped, flat target would make the rigidity loss explode there).
    cents = flow.foreground_trajectory(masks)
    shift = cents.mean(0) - cents  # (T, 2)
    xs = np.array([0.0, w - 1.0])[None, :] + shift[:, :1]
    ys = np.array([0.0, h - 1.0])[None, :] + shift[:, 1:]
    reach = max(float(np.abs(xs / half - 1).max()), float(np.abs(ys / half - 1).max()), 1e-3)
    fg_scale = float(min(0.8, 0.9 / reach))
    return InitLayout(hs, (float(center[0]), float(center[1])), bg_scale, cents, fg_scale)


def make_targets(init: InitLayout, layout: Layout, device: torch.device) -> Callable:
    hs = torch.tensor(init.bg_homographies, dtype=torch.float32, device=device)
    cents = torch.tensor(init.fg_centroids, dtype=torch.float32, device=device)
    cmean = cents.mean(0)
    center = torch.tensor(init.bg_center, dtype=torch.float32, device=device)
    half = layout.half

    def targets(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.stack([x, y, torch.ones_like(x)], dim=1)
        q = (hs[t] @ p[:, :, None])[:, :, 0]
        q = q[:, :2] / q[:, 2:3]
        bg = (q - center) / half * init.bg_scale
        fg = ((torch.stack([x, y], 1) - cents[t] + cmean) / half - 1.0) * init.fg_scale
        return fg.clamp(-0.95, 0.95), bg.clamp(-0.95, 0.95)

    return targets


# ------------------------------------------------------------------------------------------ state
def _signature(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()[:32]


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _make_optimizer(nla: NLAModel | HashNLAModel, lr: float) -> torch.optim.Adam:
    groups = [{"params": list(net.parameters()), "name": name} for name, net in nla.modules().items()]
    if isinstance(nla, HashNLAModel):  # Instant-NGP's Adam: the tables' rarely-hit entries need a tiny eps
        return torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.99), eps=1e-15)
    return torch.optim.Adam(groups, lr=lr)


def _lr_at(progress: float, lr: float, lr_min: float) -> float:
    """Cosine decay lr -> lr_min over the (main-phase) budget."""
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


# ------------------------------------------------------------------------------------------- loop
class _Trainer:
    def __init__(
        self, frames: np.ndarray, masks: np.ndarray | None, options: FitOptions, callback: Callable[[dict], None] | None
    ) -> None:
        self.o = options
        self.callback = callback
        self.root = Path(options.out).expanduser().resolve()
        if options.arch not in ARCHS:
            raise SvEngineError(
                f"{options.arch} is not available.",
                "use auto, hash (grid encodings, fast; distilled into the NLA MLPs for StableVideo) or nla.",
                field="arch",
            )
        if options.minutes is None and options.iters is None:
            options.minutes = 10.0
        self.device = resolve_device(options.device)
        if options.arch == "auto":
            options.arch = resolve_arch(options.arch, self.device)
            log.info("arch: %s (auto on %s)", options.arch, self.device.type)
        defaults = ARCH_DEFAULTS[(options.arch, "cuda" if self.device.type == "cuda" else "cpu")]
        for name, value in asdict(defaults).items():
            if getattr(options, name) is None:
                setattr(options, name, value)
        threads = max(1, torch.get_num_threads())
        self.clock = (lambda: time.process_time() / threads) if options.clock == "process" else time.time
        self.frames_u8 = frames
        t_count, h, w = frames.shape[:3]
        if t_count < 3:
            raise SvEngineError(f"{t_count} frame(s); fitting needs at least 3.", "pass a longer clip.")
        if masks is not None and masks.shape != (t_count, h, w):
            raise SvEngineError(
                f"Masks have shape {masks.shape} but the frames are {(t_count, h, w)}.",
                "give one mask per frame, of the frames' size.",
            )
        self.batch = options.batch_size
        self.layout = Layout(w, h, t_count)
        if options.hints:
            separation.validate_hints(options.hints, t_count, w, h)
        datafolder.prepare_out_dir(self.root, options.resume, options.force)
        torch.manual_seed(options.seed)

        t0 = time.time()
        flows = flow.compute_flows(frames, progress=options.progress)
        self.masks_given = masks is not None
        self.separation_stats: dict | None = None
        self.mask_source = "user masks"
        if masks is None and options.mask_model is not None:
            from sv_engine.stablevideo.fit.sam2_masks import sam2_masks

            masks = sam2_masks(Path(options.mask_model), frames, options.hints or separation.Hints(), self.device)
            self.mask_source = f"SAM 2 ({options.mask_model})"
        elif masks is None:
            log.warning("%s", spell_note(AUTO_MASK_NOTE, self.o.spell))
            found = separation.separate(frames, flows, options.hints, progress=options.progress)
            masks, self.separation_stats = found.masks, found.stats
            self.mask_source = "automatic fg/bg separation"
        self.mask_coverage = masks.reshape(t_count, -1).mean(1)
        self.init = make_init_layout(frames, flows, masks)
        self.layout.bg_scale = self.init.bg_scale
        self.layout.fg_scale = self.init.fg_scale
        log.info("preprocessing (flow, masks, layout) took %.1fs", time.time() - t0)

        dev = self.device
        self.data = FitTensors(
            frames=torch.from_numpy(frames).to(dev).float().div_(255.0),
            masks=torch.from_numpy(masks).to(dev).float(),
            flow_fw=torch.from_numpy(flows.forward).to(dev),
            flow_bw=torch.from_numpy(flows.backward).to(dev),
            valid_fw=torch.from_numpy(flows.forward_valid).to(dev),
            valid_bw=torch.from_numpy(flows.backward_valid).to(dev),
        )
        self.nla = self._make_model().to(dev)
        self.opt = _make_optimizer(self.nla, options.lr)
        # --arch hash: the NLA MLPs the hash model is distilled into (StableVideo's checkpoint format)
        self.student: NLAModel | None = None
        self.student_opt: torch.optim.Adam | None = None
        if options.arch == "hash":
            self.student = NLAModel.random(options.seed).to(dev)
            self.student_defaults = ARCH_DEFAULTS[("nla", "cuda" if dev.type == "cuda" else "cpu")]
            self.student_opt = _make_optimizer(self.student, self.student_defaults.warm_lr)
        self.iteration = 0
        self.elapsed = 0.0
        self.phase_warm = True
        self.distilling = False
        self.psnr_history: list[dict] = []
        self.loss_history: list[dict] = []
        self.losses: dict[str, float] = {}
        self.signature = _signature(frames)
        gen = torch.Generator().manual_seed(1234)
        n_eval = min(65536 if dev.type == "cuda" or options.arch == "hash" else 4096, t_count * h * w)
        idx = torch.randperm(t_count * h * w, generator=gen)[:n_eval].to(dev)
        self.eval_t, self.eval_y, self.eval_x = idx // (h * w), (idx % (h * w)) // w, idx % w
        if options.resume:
            self._load_state()
        else:
            datafolder.write_frames_and_config(self.root, frames)

    def _make_model(self) -> NLAModel | HashNLAModel:
        if self.o.arch == "nla":
            return NLAModel.random(self.o.seed)
        layout = self.layout
        config = HashNLAConfig(
            layout.resx, layout.resy, layout.num_frames, self.init.bg_center, self.init.bg_scale, self.init.fg_scale
        )
        hs = torch.from_numpy(self.init.bg_homographies).float()
        return HashNLAModel.create(config, hs, torch.from_numpy(self.init.fg_centroids).float(), self.o.seed)

    # ---- state
    def _state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "signature": self.signature,
            "shape": list(self.frames_u8.shape),
            "arch": self.o.arch,
            "nla": self.nla.state_dict(),
            "optimizer": self.opt.state_dict(),
            "iteration": self.iteration,
            "elapsed_s": self.elapsed,
            "rng": _rng_state(self.device),
            "phase_warm": self.phase_warm,
            "student": None if self.student is None else self.student.state_dict(),
            "student_optimizer": None if self.student_opt is None else self.student_opt.state_dict(),
            "psnr_history": self.psnr_history,
            "loss_history": self.loss_history,
            "masks_given": self.masks_given,
        }

    def save(self) -> None:
        atomic_torch_save(self._state(), self.root / datafolder.STATE_FILE)
        if isinstance(self.nla, HashNLAModel):
            datafolder.write_checkpoint(self.root, self.student, self.iteration, hash_model=self.nla)
        else:
            datafolder.write_checkpoint(self.root, self.nla, self.iteration)
        log.info("saved fit state at iteration %d (%s)", self.iteration, self.root / datafolder.STATE_FILE)

    def _load_state(self) -> None:
        path = self.root / datafolder.STATE_FILE
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as err:
            raise SvEngineError(
                f"Cannot read {path}: {type(err).__name__}: {err}.",
                "the state file is damaged; start over in a new $out folder.",
                mentions=("out",),
            ) from err
        if state.get("signature") != self.signature or list(state.get("shape", [])) != list(self.frames_u8.shape):
            raise SvEngineError(
                f"{path} was fitted on a different input (shape {state.get('shape')} vs {list(self.frames_u8.shape)}).",
                "pass the same video with the same $frames / $size as the interrupted fit,"
                " or fit into a new $out folder.",
                field="resume",
                mentions=("frames", "size", "out"),
            )
        if state.get("arch", "nla") != self.o.arch:
            raise SvEngineError(
                f"{path} is a fit with $arch {state.get('arch', 'nla')}, not {self.o.arch}.",
                f"resume with $arch {state.get('arch', 'nla')}, or fit into a new $out folder.",
                field="resume",
                mentions=("arch", "out"),
            )
        self.nla.load_state_dict(state["nla"])
        self.opt.load_state_dict(state["optimizer"])
        if self.student is not None:
            self.student.load_state_dict(state["student"])
            self.student_opt.load_state_dict(state["student_optimizer"])
        self.iteration = int(state["iteration"])
        self.elapsed = float(state["elapsed_s"])
        self.psnr_history = list(state.get("psnr_history", []))
        self.loss_history = list(state.get("loss_history", []))
        self.phase_warm = bool(state.get("phase_warm", True))
        _set_rng_state(state["rng"], self.device)
        log.info("resuming at iteration %d (%.0fs fitted so far)", self.iteration, self.elapsed)

    # ---- phases
    def progress(self) -> float:
        p = 0.0
        if self.o.iters:
            p = max(p, self.iteration / self.o.iters)
        if self.o.minutes:
            p = max(p, self.elapsed / (self.o.minutes * 60.0))
        return p

    @torch.no_grad()
    def quick_psnr(self, model: NLAModel | HashNLAModel | None = None) -> float:
        xyt = self.layout.normalize(self.eval_x.float(), self.eval_y.float(), self.eval_t.float())
        rgb = report.evaluate_points(model or self.nla, xyt)[0]
        return report.psnr(rgb.clamp(0, 1), self.data.frames[self.eval_t, self.eval_y, self.eval_x])

    def _record(self) -> None:
        p = self.quick_psnr(self.student if self.distilling else None)
        entry = {"time_s": round(self.elapsed, 2), "iteration": self.iteration, "psnr_db": round(p, 3)}
        if self.distilling:
            entry["distilled"] = True
        self.psnr_history.append(entry)
        log.info(
            "iteration %d (%.0fs): %sPSNR %.2f dB (sampled pixels)",
            self.iteration,
            self.elapsed,
            "distilled NLA " if self.distilling else "",
            p,
        )
        self.loss_history.append({"iteration": self.iteration, **{k: round(v, 6) for k, v in self.losses.items()}})
        if self.callback:
            self.callback(entry)

    def run(self) -> FitResult:
        interrupted = False
        try:
            self._loop()
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted at iteration %d: saving (a resumed fit continues from here)", self.iteration)
        except torch.cuda.OutOfMemoryError as err:
            torch.cuda.empty_cache()
            self.save()
            raise SvEngineError(
                f"Out of GPU memory at {self.layout.resx}x{self.layout.resy}, {self.layout.num_frames} frames,"
                f" batch {self.batch} ({err}).",
                "use a smaller $batch, $size or $frames (state saved: $resume continues).",
                mentions=("batch", "size", "frames", "resume"),
            ) from err
        self.save()
        return self.finish(interrupted)

    def _step(
        self, p: float, targets: Callable, flags: StepFlags
    ) -> tuple[torch.optim.Adam, torch.Tensor, dict[str, torch.Tensor], float, bool]:
        """The loss of one step at budget progress ``p`` in [0, 1): warm start, main phase, and for
        --arch hash the distillation; returns (optimizer, loss, terms, lr, in the warm start)."""
        o = self.o
        fit_end = 1.0 - (o.distill_fraction if self.student is not None else 0.0)
        if p >= fit_end:
            if not self.distilling:
                self.distilling = True
                self.nla.eval()
                log.info("distilling into the NLA MLPs (StableVideo's format) from iteration %d", self.iteration)
            student = self.student_defaults
            lr = _lr_at((p - fit_end) / max(1e-6, 1.0 - fit_end), student.warm_lr, student.lr_min)
            total, values = distill_step(self.student, self.nla, self.data, self.layout, student.batch_size, o.amp)
            return self.student_opt, total, {f"distill_{k}": v for k, v in values.items()}, lr, False
        if p < o.pretrain_fraction:
            total, values = pretrain_step(self.nla, self.data, self.layout, targets, self.batch, o.amp)
            return self.opt, total, {f"warm_{k}": v for k, v in values.items()}, o.warm_lr, True
        main_p = (p - o.pretrain_fraction) / max(1e-6, fit_end - o.pretrain_fraction)
        lr = _lr_at(main_p, o.lr, o.lr_min) * min(1.0, 0.1 + main_p / 0.05)
        if self.phase_warm:
            # New objective, ~5000x the gradient scale: fresh Adam moments (stale second moments
            # would turn the first steps into huge jumps) and a short lr warm-up.
            self.opt = _make_optimizer(self.nla, lr)
        flags.bootstrap = main_p < o.bootstrap_fraction
        flags.global_rigidity = main_p < o.global_rigidity_fraction
        terms = nla_step(self.nla, self.data, self.layout, o.weights, self.batch, flags, o.amp)
        return self.opt, terms.total, terms.values, lr, False

    def _loop(self) -> None:
        o = self.o
        targets = make_targets(self.init, self.layout, self.device)
        flags = StepFlags(global_derivative=100.0 * max(self.layout.resx, self.layout.resy) / 768.0)
        sums: dict[str, torch.Tensor] = {}
        count = 0
        bar = tqdm(total=100, desc="fit", unit="%", disable=not o.progress, leave=False)
        last_ckpt = time.time()
        last_eval = -1e9
        start = self.clock() - self.elapsed
        distilling = self.distilling
        if not self.psnr_history:
            self._record()
        for net in self.nla.modules().values():
            net.train()
        while True:
            self.elapsed = self.clock() - start
            p = self.progress()
            if p >= 1.0:
                break
            opt, total, values, lr, warm = self._step(p, targets, flags)
            if warm != self.phase_warm or self.distilling != distilling:
                sums, count, distilling = {}, 0, self.distilling  # a new objective: fresh loss means
            self.phase_warm = warm
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            self.iteration += 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0) + v.detach()
            count += 1
            if count >= 25 or self.elapsed - last_eval >= o.eval_seconds:
                self.losses = {k: float(v) / count for k, v in sums.items()}
                sums, count = {}, 0
                bar.n = int(100 * p)
                bar.set_postfix(it=self.iteration, rgb=f"{self.losses.get('rgb', 0):.4f}", lr=f"{lr:.1e}")
            if self.elapsed - last_eval >= o.eval_seconds:
                if not self.losses and count:
                    self.losses = {k: float(v) / count for k, v in sums.items()}
                self._record()
                last_eval = self.elapsed
            if time.time() - last_ckpt >= o.checkpoint_minutes * 60.0:
                self.save()
                last_ckpt = time.time()
        if count:
            self.losses = {k: float(v) / count for k, v in sums.items()}
        bar.close()

    def finish(self, interrupted: bool) -> FitResult:
        for net in self.nla.modules().values():
            net.eval()
        final, fg_coverage, fg_iou = report.video_psnr_and_coverage(
            self.nla, self.layout, self.data.frames, self.data.masks
        )
        fg_check = report.foreground_check(
            fg_coverage, self.mask_coverage, fg_iou, spell_note(COLLAPSE_FIX, self.o.spell)
        )
        distilled = None
        if self.student is not None:
            self.student.eval()
            distilled = round(self.quick_psnr(self.student), 3)
            log.info(
                "hash model %.2f dB (what sv-engine renders); the distilled NLA MLPs (what StableVideo renders)"
                " %.2f dB on %d sampled pixels",
                final,
                distilled,
                self.eval_x.numel(),
            )
        if fg_check["collapsed"]:
            log.warning("%s", fg_check["warning"])
        self.psnr_history.append(
            {"time_s": round(self.elapsed, 2), "iteration": self.iteration, "psnr_db": round(final, 3), "full": True}
        )
        rep = {
            "psnr_db": round(final, 3),
            "distilled_psnr_db": distilled,
            "psnr_history": self.psnr_history,
            "losses": self.losses,
            "loss_history": self.loss_history,
            "time_s": round(self.elapsed, 2),
            "iterations": self.iteration,
            "iterations_per_s": round(self.iteration / max(self.elapsed, 1e-6), 3),
            "interrupted": interrupted,
            "masks_given": self.masks_given,
            "mask_source": self.mask_source,
            "quality_note": spell_note(AUTO_MASK_NOTE, self.o.spell) if self.separation_stats is not None else None,
            "separation": self.separation_stats,
            "hints": None if not self.o.hints else asdict(self.o.hints),
            "mask_model": None if self.o.mask_model is None else str(self.o.mask_model),
            **fg_check,
            "frames": self.layout.num_frames,
            "resx": self.layout.resx,
            "resy": self.layout.resy,
            "arch": self.o.arch,
            "device": str(self.device)
            + (f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else ""),
            "batch_size": self.batch,
            "torch": torch.__version__,
            "options": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in asdict(self.o).items()
                if k not in ("weights", "hints", "mask_model", "spell")
            },
            "loss_weights": asdict(self.o.weights),
        }
        if self.o.write_outputs:
            report.write_report(self.root / "fit_report.json", rep)
            report.write_preview(self.root / "fit_preview.png", self.nla, self.layout, self.data.frames)
        log.info(
            "fit %s: %d iterations in %.0fs, reconstruction PSNR %.2f dB -> %s",
            "interrupted" if interrupted else "done",
            self.iteration,
            self.elapsed,
            final,
            self.root,
        )
        return FitResult(self.root, self.iteration, self.elapsed, final, interrupted, rep)


def fit_arrays(
    frames: np.ndarray, masks: np.ndarray | None, options: FitOptions, callback: Callable[[dict], None] | None = None
) -> FitResult:
    """Fits NLA layered atlases to ``frames`` (T, H, W, 3) uint8 with optional ``masks`` (T, H, W) bool
    and writes the StableVideo data folder ``options.out`` (config.json, frames, checkpoint) plus
    ``fit_state.pt``, ``fit_report.json`` and ``fit_preview.png``. ``callback`` gets each PSNR record."""
    return _Trainer(frames, masks, options, callback).run()
