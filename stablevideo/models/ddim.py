"""LDM's DDIM sampler (``ldm/models/diffusion/ddim.py``), as StableVideo runs it.

Schedule (SD 1.5, ``v1-inference.yaml``): ``linear`` β in LDM's naming = sqrt-spaced, i.e.
diffusers' ``scaled_linear``: β = linspace(√0.00085, √0.012, 1000)², ᾱ = cumprod(1 − β) (float64,
stored as float32 like LDM's buffers).

DDIM ("uniform" discretisation): timesteps = range(0, 1000, 1000 // steps) + 1 → 1, 51, …, 951 for
20 steps; ᾱ_t at those timesteps; ᾱ_prev = [ᾱ[0], ᾱ_t[:-1]] (the first step's "previous" alpha is
ᾱ[0], not 1). With η = 0 one step is::

    x0   = (x − √(1 − ᾱ_t)·ε) / √ᾱ_t
    x'   = √ᾱ_prev·x0 + √(1 − ᾱ_prev)·ε

img2img (``stochastic_encode`` / ``decode``): noise to DDIM index ``t_enc`` (timestep
``timesteps[t_enc]``, 801 for 20 steps and strength 0.8) but denoise with ``timesteps[:t_enc]``
reversed (751 … 1) — the first denoise step is one below the noise level. That is LDM's quirk,
kept on purpose (reference mode).

diffusers' ``DDIMScheduler(steps_offset=1, set_alpha_to_one=False, timestep_spacing="leading")``
gives the same txt2img trajectory (tested).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from sv_engine.errors import SvEngineError

logger = logging.getLogger(__name__)

#: ``eps_fn(x_t, t) -> eps``: the (CFG-combined) noise prediction at integer timestep ``t``.
EpsFn = Callable[[torch.Tensor, int], torch.Tensor]
#: ``callback(i, total, x)`` after each denoising step (``i`` counts from 0).
StepCallback = Callable[[int, int, torch.Tensor], None]


def ldm_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> np.ndarray:
    """ᾱ of SD 1.5 as LDM computes it (float64 math, float32 values)."""
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas, axis=0).astype(np.float32)


class DDIMSampler:
    """Deterministic (η = 0) DDIM over an arbitrary ``eps_fn``.

    Args:
        num_train_timesteps: DDPM steps (1000).
        beta_start, beta_end: the ``scaled_linear`` β range (SD 1.5: 0.00085 → 0.012).
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012):
        self.num_train_timesteps = num_train_timesteps
        self.alphas_cumprod = ldm_alphas_cumprod(num_train_timesteps, beta_start, beta_end)
        self.steps: int | None = None
        self.timesteps = np.zeros(0, dtype=np.int64)
        self.alphas = np.zeros(0, dtype=np.float64)
        self.alphas_prev = np.zeros(0, dtype=np.float64)

    # -- schedule ------------------------------------------------------------------------------

    def make_schedule(self, steps: int) -> None:
        """Set the DDIM timesteps and alphas for ``steps`` sampling steps."""
        if not 0 < steps <= self.num_train_timesteps:
            raise SvEngineError(
                f"DDIM steps must be in 1..{self.num_train_timesteps}, got {steps}.",
                "Pass a positive number of steps (StableVideo uses 20).",
            )
        if steps == self.steps:
            return
        c = self.num_train_timesteps // steps
        self.timesteps = np.asarray(list(range(0, self.num_train_timesteps, c))) + 1
        if self.timesteps[-1] >= self.num_train_timesteps:
            # LDM would index past the schedule here (steps that do not divide 1000 well).
            raise SvEngineError(
                f"{steps} DDIM steps give timestep {self.timesteps[-1]} ≥ {self.num_train_timesteps}.",
                "Use a step count that divides 1000 (e.g. 20, 25, 50).",
            )
        ac = self.alphas_cumprod.astype(np.float64)
        self.alphas = ac[self.timesteps]
        self.alphas_prev = np.asarray([ac[0]] + ac[self.timesteps[:-1]].tolist())
        self.steps = steps

    def timesteps_for(self, steps: int) -> list[int]:
        """The DDIM timesteps (ascending) for ``steps`` steps; sets the schedule."""
        self.make_schedule(steps)
        return [int(t) for t in self.timesteps]

    def _check_schedule(self, steps: int | None) -> None:
        if steps is not None:
            self.make_schedule(steps)
        elif self.steps is None:
            raise SvEngineError("The DDIM schedule is not set.", "Pass steps= or call make_schedule(steps) first.")

    # -- one step ------------------------------------------------------------------------------

    def step(self, x: torch.Tensor, eps: torch.Tensor, index: int) -> torch.Tensor:
        """One η = 0 DDIM update from DDIM index ``index`` (timestep ``timesteps[index]``)."""
        a_t = float(self.alphas[index])
        a_prev = float(self.alphas_prev[index])
        pred_x0 = (x - (1.0 - a_t) ** 0.5 * eps) / a_t**0.5
        return a_prev**0.5 * pred_x0 + (1.0 - a_prev) ** 0.5 * eps

    def _loop(
        self, eps_fn: EpsFn, x: torch.Tensor, num: int, callback: StepCallback | None, progress: bool
    ) -> torch.Tensor:
        indices = list(reversed(range(num)))
        iterator = indices
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(indices, desc="DDIM", total=num, leave=False)
        for i, index in enumerate(iterator):
            t = int(self.timesteps[index])
            x = self.step(x, eps_fn(x, t), index)
            if callback is not None:
                callback(i, num, x)
        return x

    # -- txt2img -------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self, eps_fn: EpsFn, x_T: torch.Tensor, steps: int, callback: StepCallback | None = None, progress: bool = False
    ) -> torch.Tensor:
        """Full DDIM sampling from ``x_T`` over timesteps 951, 901, …, 1 (for 20 steps)."""
        self.make_schedule(steps)
        return self._loop(eps_fn, x_T, steps, callback, progress)

    # -- img2img -------------------------------------------------------------------------------

    def t_enc_for_strength(self, strength: float, steps: int) -> int:
        """``int(steps · strength)`` as StableVideo computes it (16 for 20 steps, 0.8)."""
        if not 0.0 <= strength <= 1.0:
            raise SvEngineError(f"Strength must be in [0, 1], got {strength}.", "Pass a strength between 0 and 1.")
        return int(steps * strength)

    def stochastic_encode(
        self, x0: torch.Tensor, t_enc: int, noise: torch.Tensor, steps: int | None = None
    ) -> torch.Tensor:
        """Noise clean latents to DDIM index ``t_enc``: √ᾱ·x0 + √(1−ᾱ)·noise, ᾱ = ᾱ[timesteps[t_enc]]."""
        self._check_schedule(steps)
        if not 0 <= t_enc < len(self.timesteps):
            raise SvEngineError(
                f"t_enc {t_enc} is outside the {len(self.timesteps)}-step DDIM schedule.",
                "Use a strength < 1 (t_enc = int(steps · strength) must be < steps).",
            )
        a = float(self.alphas[t_enc])
        return a**0.5 * x0 + (1.0 - a) ** 0.5 * noise

    @torch.no_grad()
    def decode(
        self,
        x_t: torch.Tensor,
        t_enc: int,
        eps_fn: EpsFn,
        steps: int | None = None,
        callback: StepCallback | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Denoise with DDIM timesteps ``[:t_enc]`` reversed (751, …, 1 for t_enc 16 of 20): LDM's quirk."""
        self._check_schedule(steps)
        if not 0 <= t_enc <= len(self.timesteps):
            raise SvEngineError(
                f"t_enc {t_enc} is outside the {len(self.timesteps)}-step DDIM schedule.", "Use 0 ≤ t_enc ≤ steps."
            )
        return self._loop(eps_fn, x_t, t_enc, callback, progress)
