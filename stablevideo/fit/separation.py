"""Foreground / background separation without learned weights, for fits without user masks.

The moving object is found as a whole, not only its fastest-moving parts:

1. per-frame motion evidence: flow departing from the dominant (background) homography;
2. a background model per frame: the temporal median of the homography-aligned other frames,
   leaving out the pixels where those frames moved (so an object that moves in place does not
   become its own background wherever it uncovered the scene at least once);
3. the residual of each frame against its background model;
4. GrabCut (colour models) per frame, seeded by the confident pixels: strong motion or residual
   (and the user's ``--fg-box`` / ``--fg-point`` hints) as foreground, pixels that never moved nor
   differ from the background over the whole clip as background;
5. temporal smoothing (flow-warped votes of the neighbouring frames), hole filling, and removal of
   small specks.

Works at a reduced resolution (long side <= ``work_size``) and returns masks at the frames' size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
from sv_engine.stablevideo.fit import flow as flowlib
from tqdm import tqdm

from sv_engine.errors import SvEngineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Box:
    """A foreground box ``x, y, w, h`` in fit-resolution pixels; ``frame`` None = every frame."""

    x: float
    y: float
    w: float
    h: float
    frame: int | None = None


@dataclass(frozen=True)
class Point:
    """A foreground point ``x, y`` in fit-resolution pixels; ``frame`` None = frame 0."""

    x: float
    y: float
    frame: int | None = None


@dataclass
class Hints:
    boxes: list[Box] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.boxes or self.points)


def _parse_frame(text: str, what: str) -> tuple[str, int | None]:
    if "@" not in text:
        return text, None
    body, frame = text.rsplit("@", 1)
    try:
        return body, int(frame)
    except ValueError as err:
        raise SvEngineError(
            f"Bad value {text!r}: frame {frame!r} is not an integer.", "write it like ...@12.", field=what
        ) from err


def parse_box(text: str) -> Box:
    """'X,Y,W,H[@FRAME]' -> :class:`Box` (numbers in the fitted frames' pixels)."""
    body, frame = _parse_frame(text, "fg_box")
    try:
        x, y, w, h = (float(v) for v in body.split(","))
    except ValueError as err:
        raise SvEngineError(
            f"Bad box {text!r}.",
            "give X,Y,W,H[@FRAME] in pixels of the fitted size, e.g. 40,10,60,80@0.",
            field="fg_box",
        ) from err
    if w <= 0 or h <= 0:
        raise SvEngineError(f"Box {text!r} has no area.", "give a positive width and height.", field="fg_box")
    return Box(x, y, w, h, frame)


def parse_point(text: str) -> Point:
    """'X,Y[@FRAME]' -> :class:`Point`."""
    body, frame = _parse_frame(text, "fg_point")
    try:
        x, y = (float(v) for v in body.split(","))
    except ValueError as err:
        raise SvEngineError(
            f"Bad point {text!r}.", "give X,Y[@FRAME] in pixels of the fitted size, e.g. 70,50@0.", field="fg_point"
        ) from err
    return Point(x, y, frame)


def validate_hints(hints: Hints, num_frames: int, width: int, height: int) -> None:
    """Boxes / points must lie in the frame and name an existing frame (checked before any work)."""
    for b in hints.boxes:
        spec = f"{b.x:g},{b.y:g},{b.w:g},{b.h:g}" + (f"@{b.frame}" if b.frame is not None else "")
        if b.x < 0 or b.y < 0 or b.x + b.w > width or b.y + b.h > height:
            raise SvEngineError(
                f"Box {spec} is outside the {width}x{height} frame.",
                f"give X,Y,W,H inside 0..{width} x 0..{height} (pixels of the fitted $size).",
                field="fg_box",
                mentions=("size",),
            )
        if b.frame is not None and not 0 <= b.frame < num_frames:
            raise SvEngineError(
                f"Box {spec}: no frame {b.frame}.", f"use a frame in 0..{num_frames - 1}.", field="fg_box"
            )
    for p in hints.points:
        spec = f"{p.x:g},{p.y:g}" + (f"@{p.frame}" if p.frame is not None else "")
        if not (0 <= p.x < width and 0 <= p.y < height):
            raise SvEngineError(
                f"Point {spec} is outside the {width}x{height} frame.",
                f"give X,Y inside 0..{width} x 0..{height} (pixels of the fitted $size).",
                field="fg_point",
                mentions=("size",),
            )
        if p.frame is not None and not 0 <= p.frame < num_frames:
            raise SvEngineError(
                f"Point {spec}: no frame {p.frame}.", f"use a frame in 0..{num_frames - 1}.", field="fg_point"
            )


@dataclass
class Separation:
    masks: np.ndarray  # (T, H, W) bool at the frames' size
    stats: dict


NOTHING_MOVES = (
    "nothing moves in this clip against its background, so no foreground can be found automatically",
    "give $fg_box X,Y,W,H (or $fg_point X,Y) on the object, foreground masks with $mask, or $mask_model DIR"
    " (SAM 2) with a box / point",
)


def separate(
    frames: np.ndarray,
    flows: flowlib.Flows,
    hints: Hints | None = None,
    work_size: int = 256,
    progress: bool = True,
) -> Separation:
    """(T, H, W, 3) uint8 frames + their flows -> foreground masks (T, H, W) bool (see the module doc)."""
    hints = hints or Hints()
    t_count, h0, w0 = frames.shape[:3]
    s = min(1.0, work_size / max(h0, w0))
    w, h = max(8, int(round(w0 * s))), max(8, int(round(h0 * s)))
    sx, sy = w / w0, h / h0
    small = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    fw = _resize_flows(flows.forward, w, h, sx, sy)
    bw = _resize_flows(flows.backward, w, h, sx, sy)
    fwv = np.stack(
        [cv2.resize(v.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0 for v in flows.forward_valid]
    )
    bwv = np.stack(
        [cv2.resize(v.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0 for v in flows.backward_valid]
    )
    m = max(h, w)

    # 1. motion evidence: residual flow against the dominant motion, in both directions where there are
    # two (the smaller: DIS smears motion over its patch, and the dis-occluded trail moves in one only).
    fw_res = np.stack(
        [flowlib.residual_motion(fw[t], flowlib.flow_homography(fw[t], fwv[t])) for t in range(t_count - 1)]
    )
    bw_res = np.stack(
        [flowlib.residual_motion(bw[t], flowlib.flow_homography(bw[t], bwv[t])) for t in range(t_count - 1)]
    )
    res = np.empty((t_count, h, w), np.float32)
    res[0], res[-1] = fw_res[0], bw_res[-1]
    res[1:-1] = np.minimum(fw_res[1:], bw_res[:-1])
    noise = float(np.percentile(res, 50))
    motion_thr = max(0.35, 0.003 * m, 3.0 * noise)
    strong_motion = res > 2.0 * motion_thr
    some_motion = res > motion_thr

    # Background homographies (frame t -> frame 0), the moving pixels excluded.
    to_ref = [np.eye(3)]
    for t in range(t_count - 1):
        hb = flowlib.flow_homography(bw[t], bwv[t], exclude=some_motion[t + 1])  # t+1 -> t
        to_ref.append(to_ref[-1] @ hb)
    to_ref = [hh / hh[2, 2] for hh in to_ref]
    canvas = _Canvas(to_ref, w, h)

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, m // 40) | 1,) * 2)
    lab = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2LAB).astype(np.float32) for f in small])

    # The region the object ever occupied: where there was motion at some time (in canvas coordinates).
    ever = np.zeros(canvas.shape, np.float32)
    for t in range(t_count):
        ever = np.maximum(ever, canvas.to_canvas(some_motion[t].astype(np.float32), t, cv2.INTER_LINEAR))
    ever_u8 = cv2.morphologyEx((ever > 0.5).astype(np.uint8), cv2.MORPH_CLOSE, kernel, iterations=2)
    ever_u8 = cv2.dilate(_fill_holes(ever_u8), kernel, iterations=2)
    regions = np.stack([canvas.from_canvas(ever_u8, t, cv2.INTER_NEAREST) > 0 for t in range(t_count)])

    moving_fraction = float(some_motion.mean())
    box_masks, point_seeds = _hint_masks(hints, t_count, h0, w0, w, h, fw, bw)
    if box_masks is not None:  # the object may stand still: its box is where it may be, motion or not
        regions = regions | box_masks

    # 2. background model: masked temporal median over the clip of the (blurred: texture edges that
    # move by a fraction of a pixel are no evidence) aligned frames, leaving out the pixels that moved.
    exclude = np.stack([cv2.dilate(sm.astype(np.uint8), kernel, iterations=2) > 0 for sm in some_motion])
    blurred = np.stack([cv2.GaussianBlur(x, (0, 0), 1.0) for x in lab])
    bg_pano = canvas.masked_median(blurred, exclude)
    # 3. residual against it (no evidence where no frame saw the background), and global colour models:
    # the object's colours from its confidently moving pixels, the background's from the never-moving ones.
    residual = np.stack(
        [
            np.nan_to_num(_lab_distance(blurred[t], canvas.from_canvas(bg_pano, t, cv2.INTER_LINEAR)))
            for t in range(t_count)
        ]
    )
    res_thr = max(10.0, 3.0 * float(np.percentile(residual, 50)))
    some_res = residual > res_thr
    sure = (strong_motion & some_res) | ((residual > 2.0 * res_thr) & some_motion)
    if not hints.boxes and sure.mean() < 1e-4:
        raise SvEngineError(*NOTHING_MOVES, mentions=("fg_box", "fg_point", "mask", "mask_model"))
    colour = _ColourModel.fit(lab, sure & regions, ~regions)
    ratio = colour.log_ratio(lab) if colour is not None else np.zeros((t_count, h, w), np.float32)
    # 4. GrabCut per frame: outside the region the object ever occupied is background for sure.
    gc_base = np.full((t_count, h, w), cv2.GC_BGD, np.uint8)
    gc_base[regions] = cv2.GC_PR_BGD
    # likely object: changed (residual / motion) and not coloured like the background, or coloured like the object
    gc_base[regions & (((some_res | some_motion) & (ratio > 0)) | (ratio > 2))] = cv2.GC_PR_FGD
    gc_base[regions & (ratio < -3) & ~strong_motion] = cv2.GC_BGD  # clearly the background's colours
    if box_masks is not None:  # GrabCut's classic start: the box is likely object, outside it surely not
        gc_base[~box_masks] = cv2.GC_BGD
        gc_base[box_masks & (gc_base != cv2.GC_BGD)] = cv2.GC_PR_FGD
        sure &= box_masks
    sure = np.stack([cv2.erode(x.astype(np.uint8), np.ones((2, 2), np.uint8)) > 0 for x in sure])
    if point_seeds is not None:
        sure |= point_seeds
    masks = _propagating_grabcut(small, gc_base, sure, fw, bw, progress)

    # 5. temporal smoothing: vote of the frame and its flow-warped neighbours, holes filled, specks removed.
    smoothed = np.zeros_like(masks)
    min_area = max(4, int(0.002 * h * w))
    for t in range(t_count):
        votes = masks[t].astype(np.float32) * 2
        weight = 2.0
        if t > 0:  # frame t-1 seen from frame t: sample it at x + backward flow (t -> t-1)
            votes += flowlib.warp_by_flow(masks[t - 1].astype(np.float32), bw[t - 1])
            weight += 1
        if t < t_count - 1:
            votes += flowlib.warp_by_flow(masks[t + 1].astype(np.float32), fw[t])
            weight += 1
        mm = (votes / weight > 0.5).astype(np.uint8)
        mm = cv2.morphologyEx(mm, cv2.MORPH_CLOSE, kernel)
        smoothed[t] = _drop_specks(_fill_holes(mm), min_area) > 0
    full = np.stack(
        [cv2.resize(mm.astype(np.float32), (w0, h0), interpolation=cv2.INTER_LINEAR) > 0.5 for mm in smoothed]
    )
    stats = {
        "method": "motion + background residual + GrabCut" + (" + hints" if hints else ""),
        "work_size": [w, h],
        "motion_threshold_px": round(motion_thr / sx, 3),
        "residual_threshold_lab": round(res_thr, 2),
        "moving_fraction": round(moving_fraction, 5),
        "coverage": round(float(full.mean()), 5),
    }
    log.info("fg/bg separation: %.1f%% of pixels foreground (%s)", 100 * full.mean(), stats["method"])
    return Separation(full, stats)


def _propagating_grabcut(
    small: np.ndarray,
    gc_base: np.ndarray,
    sure: np.ndarray,
    fw: np.ndarray,
    bw: np.ndarray,
    progress: bool,
) -> np.ndarray:
    """GrabCut per frame, forward then backward through the clip: each frame also takes the previous
    one's result (warped by the flow) as likely foreground and its eroded core as sure foreground, so
    evidence from the frames where the object moved carries over to those where it stood still."""
    t_count, h, w = gc_base.shape
    core_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, max(h, w) // 24) | 1,) * 2)
    masks = np.zeros((t_count, h, w), bool)
    first = np.zeros_like(masks)
    for direction in (1, -1):
        order = range(t_count) if direction == 1 else range(t_count - 1, -1, -1)
        prev = None
        for t in tqdm(order, desc="fg/bg separation", disable=not progress, leave=False):
            gc = gc_base[t].copy()
            if direction == -1:
                gc[first[t] & (gc != cv2.GC_BGD)] = cv2.GC_PR_FGD
            if prev is not None:
                # prev's mask seen from frame t: sample it at x + flow(t -> prev)
                f = bw[t - 1] if direction == 1 else fw[t]
                warped = (flowlib.warp_by_flow(prev.astype(np.float32), f) > 0.5).astype(np.uint8)
                gc[(warped > 0) & (gc != cv2.GC_BGD)] = cv2.GC_PR_FGD
                if sure[t].sum() < 0.2 * warped.sum():  # little evidence of its own: keep the object's core
                    core = cv2.erode(warped, core_kernel) > 0
                    gc[core & (gc != cv2.GC_BGD)] = cv2.GC_FGD
            gc[sure[t] & (gc != cv2.GC_BGD)] = cv2.GC_FGD
            if not ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).any():
                masks[t] = False
                prev = None
                continue
            masks[t] = _grabcut(small[t], gc)
            prev = masks[t]
        first = masks.copy()
    return masks


class _ColourModel:
    """Global colour models of the clip (smoothed 16³ Lab histograms): the object from its confidently
    moving pixels, the background from the pixels outside the region the object ever occupied."""

    BINS = 16

    def __init__(self, log_ratio_table: np.ndarray) -> None:
        self.table = log_ratio_table

    @classmethod
    def fit(cls, lab: np.ndarray, fg_mask: np.ndarray, bg_mask: np.ndarray) -> _ColourModel | None:
        hists = []
        for sel in (fg_mask, bg_mask):
            if sel.sum() < 50:
                return None
            hist = np.bincount(cls._index(lab[sel]), minlength=cls.BINS**3).astype(np.float32)
            hist = cv2.GaussianBlur(hist.reshape(cls.BINS, cls.BINS * cls.BINS), (0, 0), 0.7).ravel()  # smooth a/b
            hists.append(hist / hist.sum() + 1e-6)
        return cls(np.log(hists[0]) - np.log(hists[1]))

    @classmethod
    def _index(cls, lab: np.ndarray) -> np.ndarray:
        q = np.clip(lab.reshape(-1, 3) * (cls.BINS / 256.0), 0, cls.BINS - 1).astype(np.int64)
        return (q[:, 0] * cls.BINS + q[:, 1]) * cls.BINS + q[:, 2]

    def log_ratio(self, lab: np.ndarray) -> np.ndarray:
        """log p_fg(colour) − log p_bg(colour) per pixel, shape lab.shape[:-1]."""
        return self.table[self._index(lab)].reshape(lab.shape[:-1])


class _Canvas:
    """The background's common coordinates: frame 0's pixels, extended to every frame's footprint."""

    def __init__(self, to_ref: list[np.ndarray], w: int, h: int, max_area: float = 6.0) -> None:
        corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64)
        pts = np.concatenate([flowlib.apply_homography(hh, corners) for hh in to_ref])
        lo = np.floor(pts.min(0))
        hi = np.ceil(pts.max(0))
        span = hi - lo + 1
        scale = min(1.0, float(np.sqrt(max_area * w * h / max(span[0] * span[1], 1.0))))
        self.shape = (max(1, int(span[1] * scale)), max(1, int(span[0] * scale)))
        place = np.array([[scale, 0, -lo[0] * scale], [0, scale, -lo[1] * scale], [0, 0, 1]])
        self.to_canvas_h = [place @ hh for hh in to_ref]
        self.size = (w, h)

    def to_canvas(self, img: np.ndarray, t: int, interp: int, border: float = 0.0) -> np.ndarray:
        return cv2.warpPerspective(
            img, self.to_canvas_h[t], self.shape[::-1], flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=border
        )

    def from_canvas(self, img: np.ndarray, t: int, interp: int) -> np.ndarray:
        return cv2.warpPerspective(
            img, self.to_canvas_h[t], self.size, flags=interp | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
        )

    def masked_median(self, lab: np.ndarray, exclude: np.ndarray, max_frames: int = 40) -> np.ndarray:
        """Per canvas pixel, the median colour over the frames that see it and do not exclude it there
        (NaN where every frame that sees it excludes it)."""
        picks = np.unique(np.linspace(0, len(lab) - 1, min(len(lab), max_frames)).round().astype(int))
        hc, wc = self.shape
        stack = np.full((len(picks), hc, wc, 3), np.nan, np.float32)
        keep = np.zeros((len(picks), hc, wc), bool)
        for i, t in enumerate(picks):
            seen = self.to_canvas(np.ones(lab.shape[1:3], np.uint8), t, cv2.INTER_NEAREST) > 0
            stack[i][seen] = self.to_canvas(lab[t], t, cv2.INTER_LINEAR)[seen]
            keep[i] = seen & ~(self.to_canvas(exclude[t].astype(np.uint8), t, cv2.INTER_NEAREST, 1) > 0)
        # NaN where no frame saw the background there: no evidence either way (not the object's own colour)
        return _nan_median(np.where(keep[..., None], stack, np.nan))


def _nan_median(stack: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN (lower middle for an even count; NaN where all are NaN)."""
    valid = ~np.isnan(stack)
    count = valid.sum(0)
    ordered = np.sort(stack, axis=0)  # NaN sort last
    idx = np.clip((count - 1) // 2, 0, None)[None]
    out = np.take_along_axis(ordered, idx, axis=0)[0]
    out[count == 0] = np.nan
    return out


def _lab_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIELAB distance (OpenCV's 8-bit Lab: L in 0..255); chroma weighted up (shading changes L most)."""
    d = a - b
    return np.sqrt(0.5 * d[..., 0] ** 2 + d[..., 1] ** 2 + d[..., 2] ** 2)


def _resize_flows(flows: np.ndarray, w: int, h: int, sx: float, sy: float) -> np.ndarray:
    if flows.shape[2] == w and flows.shape[1] == h:
        return flows
    out = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in flows])
    out[..., 0] *= sx
    out[..., 1] *= sy
    return out


def _grabcut(img: np.ndarray, gc: np.ndarray, iterations: int = 3) -> np.ndarray:
    has_fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).any()
    has_bg = ((gc == cv2.GC_BGD) | (gc == cv2.GC_PR_BGD)).any()
    if not (has_fg and has_bg):
        return (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    mask = gc.copy()
    try:
        cv2.grabCut(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # too few samples of one class for its colour model
        return (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def _hint_masks(
    hints: Hints, t_count: int, h0: int, w0: int, w: int, h: int, fw: np.ndarray, bw: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Boxes -> per-frame regions where the object may be: a box without @FRAME holds for every frame;
    one with @FRAME follows the flow (its corners tracked) to the other frames, growing with the distance
    from its frame (by up to 10 % of the frame each side) for the object's deformation and the drift.
    Points -> per-frame sure-foreground dots, tracked along the flow from their frame (default 0)."""
    sx, sy = w / w0, h / h0
    box_masks = None
    if hints.boxes:
        box_masks = np.zeros((t_count, h, w), bool)
        for b in hints.boxes:
            x0, y0, x1, y1 = b.x * sx, b.y * sy, (b.x + b.w) * sx, (b.y + b.h) * sy
            if b.frame is None:
                box_masks[:, int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
                continue
            corners = _track(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]), b.frame, fw, bw)
            for t in range(t_count):
                grow = 0.1 * min(1.0, abs(t - b.frame) / 10)
                lo = corners[t].min(0) - grow * np.array([w, h])
                hi = corners[t].max(0) + grow * np.array([w, h])
                box_masks[t, max(0, int(lo[1])) : int(np.ceil(hi[1])), max(0, int(lo[0])) : int(np.ceil(hi[0]))] = True
    seeds = None
    if hints.points:
        dots = np.zeros((t_count, h, w), np.uint8)
        r = max(1, int(round(0.015 * max(h, w))))
        for p in hints.points:
            frame = p.frame or 0
            track = _track(np.array([[p.x * sx, p.y * sy]]), frame, fw, bw)
            for t in range(t_count):
                x, y = track[t][0]
                if 0 <= x < w and 0 <= y < h:  # thinner away from its frame: tracked points drift
                    cv2.circle(dots[t], (int(x), int(y)), r if t == frame else max(1, r // 2), 1, -1)
        seeds = dots > 0
    return box_masks, seeds


def _track(points: np.ndarray, frame: int, fw: np.ndarray, bw: np.ndarray) -> list[np.ndarray]:
    """Follows (N, 2) points from ``frame`` through the chained flows to every frame."""
    t_count = len(fw) + 1
    h, w = fw.shape[1:3]
    out: list[np.ndarray] = [np.empty(0)] * t_count
    out[frame] = points.astype(np.float64)
    for t in range(frame, t_count - 1):
        out[t + 1] = out[t] + _sample(fw[t], out[t], w, h)
    for t in range(frame, 0, -1):
        out[t - 1] = out[t] + _sample(bw[t - 1], out[t], w, h)
    return out


def _sample(vectors: np.ndarray, pts: np.ndarray, w: int, h: int) -> np.ndarray:
    xi = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
    return vectors[yi, xi].astype(np.float64)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    flood = np.zeros((h + 2, w + 2), np.uint8)
    flood[1:-1, 1:-1] = mask
    ff_mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 2)
    return np.where(flood[1:-1, 1:-1] == 2, 0, 1).astype(np.uint8)


def _drop_specks(mask: np.ndarray, min_area: int) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[labels].astype(np.uint8)
