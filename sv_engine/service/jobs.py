"""The job schema shared by the render service and batch jobs, and safe data-folder resolution.

A :class:`JobSpec` is what a client sends (``POST /jobs``) or what one entry of a batch YAML holds:
the data folder *name* and the edit parameters, every one range-checked. :meth:`JobSpec.to_params`
turns it into the pipeline's :class:`EditParams` (the pipeline itself is never re-implemented here).
The other job kinds run on the same warm workers: :class:`AtlasSpec` (export a video's atlases),
:class:`RenderSpec` (re-render an edit's atlases with a keep-mask, no diffusion) and
:class:`FitSpec` (fit an uploaded video into a new data folder).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sv_engine.errors import SvEngineError

MAX_PROMPT_CHARS = 1000
MAX_KEYFRAMES = 64
MAX_DATA_NAME_CHARS = 255

#: Job states. Terminal: done, failed, cancelled.
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
TERMINAL = frozenset({DONE, FAILED, CANCELLED})

#: Names of the files each job writes into its own output folder (named by the job id).
VIDEO_NAME, PREVIEW_NAME, REPORT_NAME = "edit.mp4", "preview.png", "report.json"
#: Live progress a running job's worker rewrites (stage, fraction done); read by ``GET /jobs/{id}``.
PROGRESS_NAME = "progress.json"
#: Intermediate and extra outputs a client may fetch (``GET /jobs/{id}/files/{name}``), also while running:
#: atlases (``fg_atlas.png``, ``bg_atlas_edited.png``, ...), ``keyframe_<i>.png``, ``mask.png``, ``atlas.json``.
ARTIFACT_NAME = re.compile(r"^[a-z0-9_]{1,64}\.(png|json)$")
#: Job kinds: the method of the worker that runs them.
EDIT, ATLAS, RENDER, FIT = "edit", "atlas", "render", "fit"

Prompt = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
ExtraPrompt = Field(default=None, max_length=MAX_PROMPT_CHARS)


class JobSpec(BaseModel):
    """One edit: which data folder (a name under the data root) and the edit's knobs (SV's UI defaults)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    data: str = Field(
        min_length=1,
        max_length=MAX_DATA_NAME_CHARS,
        description="Data folder name (relative path) under the service's --data-root.",
    )
    fg_prompt: str = Prompt
    bg_prompt: str = Prompt
    keyframes: list[int] | None = Field(
        default=None, max_length=MAX_KEYFRAMES, description="Frame indices (default: three evenly spaced)."
    )
    strength: float = Field(default=0.8, gt=0.0, le=1.0)
    steps: int = Field(default=20, ge=1, le=200)
    cfg: float = Field(default=9.0, ge=0.0, le=30.0)
    control_scale: float = Field(default=1.0, ge=0.0, le=2.0)
    seed: int = Field(default=-1, ge=-1, le=2**31 - 1)
    image_resolution: int = Field(default=512, ge=64, le=1024)
    depth_resolution: int = Field(default=512, ge=64, le=1024)
    canny_low: int = Field(default=100, ge=0, le=255)
    canny_high: int = Field(default=200, ge=0, le=255)
    aggregation: Literal["median", "net"] = "median"
    aggregation_iterations: int = Field(default=500, ge=1, le=5000)
    edit_background: bool = True
    fg_added_prompt: str | None = ExtraPrompt
    fg_negative_prompt: str | None = ExtraPrompt
    bg_added_prompt: str | None = ExtraPrompt
    bg_negative_prompt: str | None = ExtraPrompt

    @field_validator("data")
    @classmethod
    def _relative_name(cls, value: str) -> str:
        check_data_name(value)
        return value

    @field_validator("keyframes")
    @classmethod
    def _keyframes(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if not value:
                raise ValueError("keyframes must be a non-empty list of frame indices (or omitted for the default).")
            if any(k < 0 or k > 100_000 for k in value):
                raise ValueError("keyframes must be frame indices >= 0.")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.canny_low > self.canny_high:
            raise ValueError("canny_low must be <= canny_high.")
        try:  # the pipeline's own checks (DDIM schedule, strength, resolution): one definition
            self.to_params().validate()
        except SvEngineError as err:
            raise ValueError(str(err)) from None
        return self

    def to_params(self):
        """The pipeline's :class:`EditParams` (optional prompt add-ons keep SV's defaults when omitted)."""
        from sv_engine.stablevideo.params import EditParams

        extras = {
            k: v
            for k, v in {
                "fg_added_prompt": self.fg_added_prompt,
                "fg_negative_prompt": self.fg_negative_prompt,
                "bg_added_prompt": self.bg_added_prompt,
                "bg_negative_prompt": self.bg_negative_prompt,
            }.items()
            if v is not None
        }
        return EditParams(
            self.fg_prompt,
            self.bg_prompt,
            keyframes=list(self.keyframes) if self.keyframes else None,
            strength=self.strength,
            steps=self.steps,
            cfg=self.cfg,
            control_scale=self.control_scale,
            seed=self.seed,
            image_resolution=self.image_resolution,
            depth_resolution=self.depth_resolution,
            canny_low=self.canny_low,
            canny_high=self.canny_high,
            aggregation=self.aggregation,
            aggregation_iterations=self.aggregation_iterations,
            edit_background=self.edit_background,
            **extras,
        )

    def fingerprint(self) -> str:
        """A stable hash of the whole spec (batch jobs without a name are keyed by it)."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


JobIdField = Field(pattern=r"^[0-9a-f]{32}$", description="Job id returned by POST /jobs.")
FolderName = Field(
    min_length=1,
    max_length=MAX_DATA_NAME_CHARS,
    pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    description="A new folder name directly under the data root (letters, digits, . _ -).",
)


class AtlasSpec(BaseModel):
    """Export a video's original fg/bg atlases (``fg_atlas.png``, ``bg_atlas.png``, ``atlas.json``)."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(min_length=1, max_length=MAX_DATA_NAME_CHARS)

    @field_validator("data")
    @classmethod
    def _relative_name(cls, value: str) -> str:
        check_data_name(value)
        return value


class RenderSpec(AtlasSpec):
    """Re-render a finished edit's atlases without diffusion (``sv-engine render``): where the keep-mask
    is white the fg atlas keeps its original look (StableVideo's ``f_atlas·(1−mask) + original·mask``)."""

    atlases_from: str = JobIdField
    mask_png: str | None = Field(
        default=None,
        max_length=8 * 1024 * 1024,
        description="Base64 PNG, the size of the edited fg atlas; white keeps the original fg atlas.",
    )


class FitSpec(BaseModel):
    """Fit an uploaded video (``PUT /uploads/{name}``) into the new data folder ``data`` (``sv-engine fit``)."""

    model_config = ConfigDict(extra="forbid")

    upload: str = Field(min_length=1, max_length=MAX_DATA_NAME_CHARS, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    data: str = FolderName
    frames: int = Field(default=70, ge=3, le=300, description="Use the first N frames (StableVideo clips: ~70).")
    width: int = Field(default=768, ge=32, le=1920)
    height: int = Field(default=432, ge=32, le=1080)
    minutes: float = Field(default=10.0, gt=0.0, le=240.0)
    iters: int | None = Field(default=None, ge=1, le=10_000_000)


def check_data_name(name: str) -> None:
    """Rejects names that are not a plain relative path: absolute, ``..``, backslashes, NUL, drive letters."""
    if "\x00" in name or "\\" in name:
        raise ValueError("data must be a folder name under the data root (no NUL or backslash characters).")
    if name.startswith(("/", "~")) or (len(name) > 1 and name[1] == ":"):
        raise ValueError("data must be a relative folder name under the data root, not an absolute path.")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise ValueError("data must be a folder name under the data root; '..' is not allowed.")


def resolve_data_dir(data_root: str | Path, name: str) -> Path:
    """``data_root/name`` resolved (symlinks followed) and checked to stay inside ``data_root``.

    Raises :class:`SvEngineError` when the name escapes the root (``..``, absolute path, a symlink
    pointing outside) or is not a StableVideo data folder (no config.json).
    """
    try:
        check_data_name(name)
    except ValueError as err:
        raise SvEngineError(
            f"Data folder {name!r} rejected: {err}", "pass the name of a folder inside the data root.", field="data"
        ) from None
    root = Path(data_root).expanduser().resolve(strict=True)
    target = (root / name).resolve()
    if not target.is_relative_to(root):
        raise SvEngineError(
            f"Data folder {name!r} resolves outside the data root.",
            "pass the name of a folder inside the data root (symlinks must not point outside it).",
            field="data",
        )
    if not target.is_dir() or not (target / "config.json").is_file():
        raise SvEngineError(
            f"Data folder {name!r} does not exist under the data root (or has no config.json).",
            "list the data root and pass one of its StableVideo data folders.",
            field="data",
        )
    return target


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass
class JobRecord:
    """A job's state as the scheduler tracks it (the service's ``GET /jobs/{id}``, a batch results line)."""

    id: str
    spec: JobSpec
    data_dir: Path
    out_dir: Path
    status: str = QUEUED
    attempts: int = 0
    worker: int | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] | None = None
    expected_seconds: float | None = None  # the worker's recent edit time (progress estimate)
    name: str | None = None  # batch job name
    kind: str = EDIT  # the worker method that runs it
    inputs: dict[str, str] = field(default_factory=dict)  # server-side paths the worker needs (never public)
    _final_files: list[str] | None = field(default=None, repr=False)  # a finished job's files, listed once

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def live(self) -> dict[str, Any]:
        """What the running worker last wrote to ``progress.json`` (stage, fraction), or nothing."""
        if self.status != RUNNING:
            return {}
        try:
            live = json.loads((self.out_dir / PROGRESS_NAME).read_text())
        except (OSError, ValueError):
            return {}
        return live if isinstance(live, dict) else {}

    def files(self) -> list[str]:
        """The artifacts present in the job's folder (``GET /jobs/{id}/files/{name}``)."""
        if self._final_files is not None:
            return self._final_files
        try:
            names = [p.name for p in self.out_dir.iterdir()]
        except OSError:
            names = []
        found = sorted(n for n in names if ARTIFACT_NAME.match(n) and n not in (PROGRESS_NAME, REPORT_NAME))
        if self.status in (DONE, FAILED):  # the worker wrote its last file (a cancelled job's are removed)
            self._final_files = found
        return found

    def progress(self, live: dict[str, Any] | None = None) -> float:
        """0 queued .. 1 done; while running, the worker's own fraction when it reports one, else
        elapsed / the worker's recent edit time (capped at 0.95)."""
        if self.status == DONE:
            return 1.0
        if self.status != RUNNING or self.started is None:
            return 0.0
        fraction = (live if live is not None else self.live()).get("fraction")
        if isinstance(fraction, int | float):
            return round(min(0.99, max(0.0, float(fraction))), 3)
        expected = self.expected_seconds or 0.0
        if expected <= 0:
            return 0.05
        return round(min(0.95, max(0.05, (time.time() - self.started) / expected)), 3)

    def public(self) -> dict[str, Any]:
        """JSON-safe status (no server paths)."""
        live = self.live()
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "progress": self.progress(live),
            "stage": live.get("stage"),
            "attempts": self.attempts,
            "worker": self.worker,
            "data": self.spec.data,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
            "spec": self.spec.model_dump(mode="json", exclude={"mask_png"}),
            "files": self.files(),
        }
        if self.name is not None:
            out["name"] = self.name
        if self.result:
            out.update(
                {k: self.result[k] for k in ("seed", "keyframes", "seconds", "timings", "frames") if k in self.result}
            )
        if self.status == DONE and self.kind in (EDIT, RENDER):
            out["video"] = f"/jobs/{self.id}/video"
            out["preview"] = f"/jobs/{self.id}/preview"
        return out
