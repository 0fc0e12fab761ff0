"""The StableVideo edit, end to end: one object that keeps its models loaded between edits.

``StableVideoPipeline.edit`` = open the video (NLA maps cached, atlases) -> foreground keyframe
propagation and background depth edit -> render. ``sv-engine edit``, ``demo``, ``bench`` and the
render service all use this one implementation.

The background edit needs nothing from the foreground chain, so it can run in a worker thread (on
CUDA: on its own stream) while the keyframe loop runs (``overlap_background``); the result is the
same either way, as each edit draws its noise from its own generator seeded with the edit's seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sv_engine.stablevideo.background import edit_background
from sv_engine.stablevideo.foreground import ForegroundEdit, edit_foreground
from sv_engine.stablevideo.images import tensor_to_image
from sv_engine.stablevideo.keyframes import check_keyframes, default_keyframes
from sv_engine.stablevideo.models.components import SDComponents
from sv_engine.stablevideo.models.diffusion import ControlledDenoiser, resolve_seed
from sv_engine.stablevideo.params import EditParams
from sv_engine.stablevideo.render import render_video
from sv_engine.stablevideo.session import SessionCache, VideoSession
from sv_engine.stablevideo.stage_timer import StageTimer
from sv_engine.stablevideo.video_io import contact_sheet

log = logging.getLogger(__name__)


@dataclass
class EditResult:
    frames: np.ndarray  # (T, H, W, 3) uint8
    fg_atlas: torch.Tensor  # (3, h, w) edited fg atlas (cropped to its bbox)
    bg_atlas: torch.Tensor  # (3, H, W) edited bg atlas
    foreground: ForegroundEdit
    session: VideoSession
    seed: int
    keyframes: list[int]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage; overlapped stages each count in full
    overlapped_background: bool = False  # the background edit ran beside the keyframe loop

    def preview(self) -> np.ndarray:
        """A contact sheet: original and edited atlases, keyframe edits, sample frames."""
        atlas = self.session.atlas
        tiles = [
            ("fg atlas", tensor_to_image(atlas.cropped_fg_atlas)),
            ("fg atlas edited", tensor_to_image(self.fg_atlas)),
            ("bg atlas", tensor_to_image(atlas.bg_grid_atlas)),
            ("bg atlas edited", tensor_to_image(self.bg_atlas)),
        ]
        edits = self.foreground.keyframe_edits
        tiles += [(f"keyframe {k}", edit) for k, edit in zip(self.keyframes, edits, strict=False)]
        t = self.frames.shape[0]
        for i in sorted({0, t // 3, (2 * t) // 3, t - 1}):
            tiles += [(f"frame {i}", tensor_to_image(atlas.frames[i])), (f"frame {i} edited", self.frames[i])]
        return np.asarray(contact_sheet(tiles))


class EditListener:
    """Follows one edit as it runs (the render service's live progress); every hook is optional.

    Hooks are called from the edit's own threads (the background edit may run in a worker thread):
    keep them quick and thread-safe.
    """

    def stage_started(self, stage: str) -> None:
        """A :class:`StageTimer` stage (``"keyframe diffusion"``, ``"background"``, ``"render"``, ...) begins."""

    def video_opened(self, session: VideoSession, keyframes: list[int]) -> None:
        """The video's maps and atlases are ready and the keyframes are chosen."""

    def keyframe_edited(self, index: int, frame: int, image: np.ndarray) -> None:
        """Keyframe ``index`` (video frame ``frame``) is edited: (h, w, 3) uint8, × alpha."""

    def atlas_edited(self, layer: str, atlas: torch.Tensor) -> None:
        """The edited ``"fg"`` (cropped to its bbox) or ``"bg"`` atlas, (3, h, w) in [0, 1]."""


def _should_overlap(shared: Iterable[Callable], requested: bool) -> bool:
    """Whether to run the background edit beside the keyframe loop.

    ``shared``: the callables both halves call (the VAE and text-encoder overrides; a UNet+ControlNet
    step serving both ControlNets). One with ``thread_safe = False`` (CUDA graphs replay into its
    static buffers) forces sequential even when requested: the two threads would race on its
    buffers. Each half's own UNet+ControlNet step is called by one thread only, so graphs there are
    fine: on an H200, the background's steps replayed from CUDA graphs on their own stream beside the
    keyframe steps took 551 ms against 639 ms one after the other (benchmarks/results/probe-*.json).
    """
    unsafe = [fn for fn in shared if not getattr(fn, "thread_safe", True)]
    if requested and unsafe:
        log.warning(
            "background overlap requested but %d shared backend callable(s) are not thread-safe: running sequentially",
            len(unsafe),
        )
        return False
    return requested


class StableVideoPipeline:
    """Models + devices for StableVideo edits; reuse one instance for many edits (models stay warm).

    An inference backend (ONNX Runtime, TensorRT, torch.compile) takes over the networks through
    ``unet_controlnet`` ({"canny"|"depth": callable}) and ``denoiser_overrides`` (text_encode,
    vae_encode, vae_decode), with :class:`ControlledDenoiser`'s contracts; absent entries run the
    torch modules. ``overlap_background``: run the background edit concurrently with the keyframe
    loop (see :func:`_should_overlap`). ``sessions``: the opened videos to start from (videos opened
    while the models loaded).
    """

    def __init__(
        self,
        components: SDComponents,
        device: torch.device,
        unet_controlnet: dict[str, Callable] | None = None,
        denoiser_overrides: dict[str, Callable] | None = None,
        overlap_background: bool = False,
        sessions: SessionCache | None = None,
    ) -> None:
        self.components = components.eval()
        self.device = device
        self.sessions = sessions or SessionCache(device)
        unet_controlnet = unet_controlnet or {}
        overrides = denoiser_overrides or {}
        self.fg_denoiser = ControlledDenoiser(
            components, "canny", unet_controlnet=unet_controlnet.get("canny"), **overrides
        )
        self.bg_denoiser = ControlledDenoiser(
            components, "depth", unet_controlnet=unet_controlnet.get("depth"), **overrides
        )
        canny, depth = unet_controlnet.get("canny"), unet_controlnet.get("depth")
        shared = [*overrides.values(), *([canny] if canny is not None and canny is depth else [])]
        self.overlap_background = _should_overlap(shared, overlap_background)
        # One side stream for every edit, so the caching allocator reuses its blocks from edit to edit.
        self._side_stream = torch.cuda.Stream(device) if self.overlap_background and device.type == "cuda" else None
        #: With the background beside it, run the keyframe loop on a high-priority stream, so the GPU
        #: schedules its kernels ahead of the background's: the loop is the edit's critical path, and
        #: the background's graph replays starved its eager VAE calls (an encode 109-119 ms against
        #: 25-35 ms). The whole warm edit: 1.20 s against 1.29 s (engines-norm-*-c850aa6), 1.26 s
        #: against 1.23 s (*-80d2604), within the spread of a variant's place in the run.
        self.prioritize_foreground = True
        self._priority_stream: torch.cuda.Stream | None = None

    def edit(self, data_dir: str | Path, params: EditParams, listener: EditListener | None = None) -> EditResult:
        params.validate()
        listener = listener or EditListener()
        timer = StageTimer(on_start=listener.stage_started)
        with timer("open video (maps, atlases)"):
            session = self.sessions.open(data_dir)
        num_frames = session.video.config.num_frames
        keyframes = (
            default_keyframes(num_frames) if params.keyframes is None else check_keyframes(params.keyframes, num_frames)
        )
        seed = resolve_seed(params.seed)
        listener.video_opened(session, keyframes)
        log.info(
            "editing %s: keyframes %s, seed %d, %d steps, strength %.2f",
            session.video.name,
            keyframes,
            seed,
            params.steps,
            params.strength,
        )
        bg_atlas = session.atlas.bg_grid_atlas
        overlap = params.edit_background and self.overlap_background
        if params.edit_background:
            log.info(
                "background edit %s", "overlapped with the keyframe loop" if overlap else "after the keyframe loop"
            )

        def foreground() -> ForegroundEdit:
            with timer("foreground"):
                return edit_foreground(
                    session.atlas, self.fg_denoiser, params, keyframes, seed, timer, listener.keyframe_edited
                )

        with self.fg_denoiser.prompt_cache(), self.bg_denoiser.prompt_cache():  # the keyframes share prompts
            if overlap:
                fg, bg_atlas = self._overlapped(foreground, session, params, seed, timer, listener)
                listener.atlas_edited("fg", fg.atlas)
            else:
                fg = foreground()
                listener.atlas_edited("fg", fg.atlas)
                if params.edit_background:
                    bg_atlas = self._edit_background(session, params, seed, timer, listener)
        with timer("render"):
            frames = render_video(session.atlas, fg.atlas, bg_atlas).cpu().numpy()
        return EditResult(
            frames, fg.atlas, bg_atlas, fg, session, seed, keyframes, timer.as_dict(), overlapped_background=overlap
        )

    def _edit_background(
        self, session: VideoSession, params: EditParams, seed: int, timer: StageTimer, listener: EditListener
    ) -> torch.Tensor:
        with timer("background"):
            edited = edit_background(
                session.atlas.bg_grid_atlas,
                self.components.depth_model,
                self.bg_denoiser,
                params,
                seed,
                timer,
                depth_memo=session.bg_depth,
            )[0]
        listener.atlas_edited("bg", edited)
        return edited

    def _overlapped(
        self,
        foreground: Callable[[], ForegroundEdit],
        session: VideoSession,
        params: EditParams,
        seed: int,
        timer: StageTimer,
        listener: EditListener,
    ) -> tuple[ForegroundEdit, torch.Tensor]:
        """``foreground()`` here and the background edit in a worker thread (on CUDA: on the side stream)."""
        side, main = self._side_stream, None
        if side is not None:
            main = torch.cuda.current_stream(self.device)
            # The atlas was produced on the main stream. Ordered here, before the keyframe loop
            # enqueues anything, so the background waits for nothing of the foreground's.
            side.wait_stream(main)

        def background() -> torch.Tensor:
            with torch.cuda.stream(side):  # a no-op for None (CPU)
                edited = self._edit_background(session, params, seed, timer, listener)
            if side is not None:
                edited.record_stream(main)  # render reads it on the main stream: keep its memory until then
            return edited

        fg_stream = self._foreground_stream()
        if fg_stream is not None:
            fg_stream.wait_stream(main)
        # Leaving the with-block joins the worker, also when the foreground raises.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sv-background") as pool:
            pending = pool.submit(background)
            with torch.cuda.stream(fg_stream):  # a no-op for None
                fg = foreground()
            edited = pending.result()  # re-raises the background's exception here
        if fg_stream is not None:
            # The next edit's keyframe loop waits for the main stream first: no block it frees is
            # reused before what the main stream enqueued reading it has run.
            main.wait_stream(fg_stream)
        if side is not None:
            main.wait_stream(side)  # after the keyframe loop is enqueued, so only render waits for it
        return fg, edited

    def _foreground_stream(self) -> torch.cuda.Stream | None:
        if not (self.prioritize_foreground and self._side_stream is not None):
            return None
        if self._priority_stream is None:
            self._priority_stream = torch.cuda.Stream(self.device, priority=-1)  # torch's "high"
        return self._priority_stream
