"""The knobs of one StableVideo edit, with StableVideo's UI defaults."""

from __future__ import annotations

from dataclasses import dataclass

from sv_engine.stablevideo.models.ddim import DDIMSampler

from sv_engine.errors import SvEngineError, about

FG_ADDED_PROMPT = "best quality, extremely detailed, no background"
FG_NEGATIVE_PROMPT = (
    "lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, worst quality, low quality"
)
BG_ADDED_PROMPT = "best quality, extremely detailed"
BG_NEGATIVE_PROMPT = (
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, worst quality, "
    "low quality"
)


@dataclass
class EditParams:
    fg_prompt: str
    bg_prompt: str
    keyframes: list[int] | None = None  # None: default_keyframes(T)
    strength: float = 0.8
    steps: int = 20
    cfg: float = 9.0
    control_scale: float = 1.0
    seed: int = -1  # -1: random, as SV
    image_resolution: int = 512
    depth_resolution: int = 512
    canny_low: int = 100
    canny_high: int = 200
    aggregation: str = "median"  # or "net"
    aggregation_iterations: int = 500
    fg_added_prompt: str = FG_ADDED_PROMPT
    fg_negative_prompt: str = FG_NEGATIVE_PROMPT
    bg_added_prompt: str = BG_ADDED_PROMPT
    bg_negative_prompt: str = BG_NEGATIVE_PROMPT
    edit_background: bool = True

    def validate(self) -> None:
        """The knobs' own ranges (what needs the video, e.g. keyframes, is in :mod:`~sv_engine.stablevideo.inputs`)."""
        if not 1 <= self.steps <= 1000:
            raise SvEngineError(f"{self.steps} DDIM steps is outside 1..1000.", "use e.g. 20.", field="steps")
        with about("steps"):
            DDIMSampler().make_schedule(self.steps)  # LDM's schedule rejects counts like 3 (timestep 1000)
        if not 0.0 < self.strength <= 1.0:
            raise SvEngineError(f"strength {self.strength} is outside (0, 1].", "use e.g. 0.8.", field="strength")
        # Keyframes after the first are noised to DDIM index int(steps·strength), which must be a real step.
        propagates = self.keyframes is None or len(self.keyframes) > 1
        if propagates and not 1 <= int(self.steps * self.strength) < self.steps:
            raise SvEngineError(
                f"strength {self.strength} with {self.steps} steps gives no valid img2img start "
                "(int(steps·strength) must be in 1..steps−1).",
                "use a strength in (0, 1), e.g. 0.8.",
                field="strength",
            )
        if self.aggregation not in ("median", "net"):
            raise SvEngineError(f"Unknown aggregation {self.aggregation!r}.", "use median or net.", field="aggregation")
        if self.image_resolution % 64 or self.image_resolution < 64:
            raise SvEngineError(
                f"image resolution {self.image_resolution} is not a positive multiple of 64.",
                "use 512 (SD 1.5's native size).",
                field="image_resolution",
            )
