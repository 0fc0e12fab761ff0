"""ControlNet-guided SD 1.5 denoising with swappable compute (torch modules by default).

:class:`ControlledDenoiser` is the one place that knows how StableVideo calls the networks:

* text: CLIP tokens padded/truncated to 77 → ``last_hidden_state`` (LDM's ``FrozenCLIPEmbedder``);
* noise prediction: classifier-free guidance with ONE batch of 2B = [uncond; cond] through
  ControlNet → UNet, the same control image for both halves, every residual × ``control_scale``,
  ``eps = eps_u + cfg · (eps_c − eps_u)``;
* VAE: encode → posterior **sampled** (not the mean) × 0.18215; decode ÷ 0.18215.

Every network call goes through a replaceable callable so an ONNX / TensorRT engine can take over:

* ``unet_controlnet(latent_2b, t_2b, emb_2b, control_2b, scale) -> eps_2b``
  (``t_2b``: int64 tensor (2B,) of the timestep; ``control_2b``: float (2B, 3, H, W) in [0, 1]);
* ``text_encode(input_ids (N, 77) int64) -> (N, 77, D)``;
* ``vae_encode(image (B, 3, H, W) in [-1, 1]) -> moments (B, 8, H/8, W/8)`` (mean ‖ logvar, unscaled);
* ``vae_decode(latents (B, 4, h, w), unscaled) -> image (B, 3, 8h, 8w) in [-1, 1]``.

:func:`txt2img` and :func:`img2img` wire this with :class:`~.ddim.DDIMSampler` exactly as
StableVideo's ``depth_edit`` (txt2img) and keyframe ``advanced_edit_foreground`` (img2img) do.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from sv_engine.errors import SvEngineError

from .components import SDComponents
from .ddim import DDIMSampler, StepCallback

logger = logging.getLogger(__name__)

UNetControlNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
TextEncodeFn = Callable[[torch.Tensor], torch.Tensor]
VaeEncodeFn = Callable[[torch.Tensor], torch.Tensor]
VaeDecodeFn = Callable[[torch.Tensor], torch.Tensor]

MAX_TOKENS = 77


# --------------------------------------------------------------------------------------------------
# Default torch callables
# --------------------------------------------------------------------------------------------------


class TorchUNetControlNet(torch.nn.Module):
    """``unet_controlnet`` from the diffusers modules: ControlNet residuals × scale into the UNet.

    The one fused module: the pipeline's eager call (``scale`` a float, as diffusers scales) and the
    exported graphs (``export.unet_controlnet``: ``scale`` a (1,) tensor, a runtime input of the graph
    that multiplies every residual, so a new scale never re-exports). Its two halves,
    :meth:`residuals` and :meth:`denoise`, are the split export's two graphs.
    """

    def __init__(self, unet: torch.nn.Module | None, controlnet: torch.nn.Module | None) -> None:
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet

    def forward(
        self,
        latent: torch.Tensor,
        t: torch.Tensor,
        emb: torch.Tensor,
        control: torch.Tensor,
        scale: float | torch.Tensor,
    ) -> torch.Tensor:
        down, mid = self.residuals(latent, t, emb, control, scale)
        return self.denoise(latent, t, emb, down, mid)

    def residuals(
        self,
        latent: torch.Tensor,
        t: torch.Tensor,
        emb: torch.Tensor,
        control: torch.Tensor,
        scale: float | torch.Tensor,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The ControlNet's down-block and mid-block residuals, × ``scale``."""
        runtime_scale = isinstance(scale, torch.Tensor)
        down, mid = self.controlnet(
            latent,
            t,
            encoder_hidden_states=emb,
            controlnet_cond=control,
            conditioning_scale=1.0 if runtime_scale else float(scale),
            return_dict=False,
        )
        if runtime_scale:
            scale = scale.to(latent.dtype)
            down, mid = [d * scale for d in down], mid * scale
        return down, mid

    def denoise(
        self, latent: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, down: list[torch.Tensor], mid: torch.Tensor
    ) -> torch.Tensor:
        """The UNet's noise prediction with the ControlNet residuals added."""
        return self.unet(
            latent,
            t,
            encoder_hidden_states=emb,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]


def torch_text_encode(text_encoder: torch.nn.Module) -> TextEncodeFn:
    def encode(input_ids: torch.Tensor) -> torch.Tensor:
        return text_encoder(input_ids=input_ids)[0]

    return encode


def torch_vae_encode(vae: torch.nn.Module) -> VaeEncodeFn:
    def encode(image: torch.Tensor) -> torch.Tensor:
        dist = vae.encode(image).latent_dist
        return torch.cat([dist.mean, dist.logvar], dim=1)

    return encode


def torch_vae_decode(vae: torch.nn.Module) -> VaeDecodeFn:
    def decode(latents: torch.Tensor) -> torch.Tensor:
        return vae.decode(latents).sample

    return decode


# --------------------------------------------------------------------------------------------------
# The denoiser
# --------------------------------------------------------------------------------------------------


class ControlledDenoiser:
    """CFG noise prediction through ControlNet + UNet, text encoding and VAE for StableVideo.

    Args:
        components: the model bundle (tokenizer, text encoder, UNet, ControlNets, VAE).
        controlnet: ``"canny"`` (foreground keyframes), ``"depth"`` (background) or a ControlNet module.
        unet_controlnet, text_encode, vae_encode, vae_decode: replacements for the torch calls
            (see the module docstring for their contracts); ``None`` = the torch modules.
        device, dtype: where inputs are placed; default: the UNet's.
    """

    def __init__(
        self,
        components: SDComponents,
        controlnet: str | torch.nn.Module = "canny",
        *,
        unet_controlnet: UNetControlNetFn | None = None,
        text_encode: TextEncodeFn | None = None,
        vae_encode: VaeEncodeFn | None = None,
        vae_decode: VaeDecodeFn | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.components = components
        self.tokenizer = components.tokenizer
        self.vae_scale = components.vae_scale
        self.latent_factor = components.latent_factor
        self.device = torch.device(device) if device is not None else components.device
        self.dtype = dtype if dtype is not None else components.dtype
        if unet_controlnet is None:
            unet_controlnet = TorchUNetControlNet(components.unet, self._pick_controlnet(components, controlnet))
        self.unet_controlnet = unet_controlnet
        self.text_encode = text_encode or torch_text_encode(components.text_encoder)
        self.vae_encode = vae_encode or torch_vae_encode(components.vae)
        self.vae_decode = vae_decode or torch_vae_decode(components.vae)
        self._prompts: dict[tuple[str, ...], torch.Tensor] | None = None  # see prompt_cache

    def prepare(self, image_sizes: Iterable[tuple[int, int]]) -> None:
        """Lets the UNet+ControlNet engine get ready for CFG steps at these generation sizes (H, W) before
        their first step: CUDA graphs capture them on a helper thread meanwhile (a new size's first step
        otherwise pays 0.5-0.9 s on an H200). Engines without such work ignore it."""
        prepare = getattr(self.unet_controlnet, "prepare", None)
        if prepare is None:
            return
        channels = self.components.unet.config.in_channels
        embedding = self.components.text_encoder.config.hidden_size  # what encode_text hands the step
        f = self.latent_factor
        for height, width in image_sizes:
            latent = torch.zeros(2, channels, height // f, width // f, device=self.device, dtype=self.dtype)
            t_2b = torch.zeros(2, device=self.device, dtype=torch.long)
            emb = torch.zeros(2, self.tokenizer.model_max_length, embedding, device=self.device, dtype=self.dtype)
            control = torch.zeros(2, 3, height, width, device=self.device, dtype=self.dtype)
            prepare(latent, t_2b, emb, control, 1.0)

    @staticmethod
    def _pick_controlnet(components: SDComponents, controlnet: str | torch.nn.Module) -> torch.nn.Module:
        if isinstance(controlnet, torch.nn.Module):
            return controlnet
        module = {"canny": components.controlnet_canny, "depth": components.controlnet_depth}.get(controlnet)
        if module is None:
            raise SvEngineError(
                f"No {controlnet!r} ControlNet in the loaded models.",
                "Use 'canny' or 'depth' and load the matching ControlNet weights.",
            )
        return module

    # -- text ----------------------------------------------------------------------------------

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """(N, 77) int64 token ids, padded with ``<|endoftext|>`` and truncated like LDM."""
        ids = self.tokenizer(
            list(prompts), truncation=True, max_length=MAX_TOKENS, padding="max_length", return_tensors="pt"
        ).input_ids
        return ids.to(self.device)

    @torch.no_grad()
    def encode_text(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """CLIP ``last_hidden_state`` (N, 77, D) of the final prompt strings (inside
        :meth:`prompt_cache`, a prompt encoded before is not encoded again)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        key = tuple(prompts)
        if self._prompts is not None and key in self._prompts:
            return self._prompts[key]
        emb = self.text_encode(self.tokenize(prompts)).to(self.dtype)
        if self._prompts is not None:
            self._prompts[key] = emb
        return emb

    @contextmanager
    def prompt_cache(self) -> Iterator[None]:
        """Within the block each prompt is encoded once: an edit's keyframes share their prompts, so 4
        of its 6 foreground text-encoder calls were repeats (eager CLIP: 7-10 ms each on an H200, 39 ms
        beside the background edit). The embeddings are forgotten when the block ends."""
        self._prompts = {}
        try:
            yield
        finally:
            self._prompts = None

    # -- noise prediction ----------------------------------------------------------------------

    @torch.no_grad()
    def eps(
        self,
        latents: torch.Tensor,
        t: int | torch.Tensor,
        cond_emb: torch.Tensor,
        uncond_emb: torch.Tensor,
        control: torch.Tensor,
        control_scale: float = 1.0,
        cfg: float = 9.0,
    ) -> torch.Tensor:
        """Guided ε for latents (B, 4, h, w) at timestep ``t``.

        ``cond_emb`` / ``uncond_emb``: (B or 1, 77, D); ``control``: (B or 1, 3, 8h, 8w) in [0, 1].
        One batch of 2B = [uncond; cond] goes through ``unet_controlnet``.
        """
        emb_2b, control_2b = self.guidance_inputs(latents.shape, cond_emb, uncond_emb, control)
        return self._guided(latents, t, emb_2b, control_2b, control_scale, cfg)

    def guidance_inputs(
        self,
        latent_shape: torch.Size | tuple[int, ...],
        cond_emb: torch.Tensor,
        uncond_emb: torch.Tensor,
        control: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The CFG batch's fixed inputs on the device: ``[uncond; cond]`` embeddings (2B, 77, D) and the
        control image twice (2B, 3, 8h, 8w), checked against the latents' size."""
        b = latent_shape[0]
        if tuple(control.shape[-2:]) != (latent_shape[-2] * self.latent_factor, latent_shape[-1] * self.latent_factor):
            raise SvEngineError(
                f"Control image {tuple(control.shape[-2:])} does not match latents {tuple(latent_shape[-2:])} "
                f"× {self.latent_factor}.",
                "Resize the control image to the generation size (multiples of 64).",
            )
        cond = cond_emb.to(self.device, self.dtype).expand(b, -1, -1)
        uncond = uncond_emb.to(self.device, self.dtype).expand(b, -1, -1)
        control = control.to(self.device, self.dtype).expand(b, -1, -1, -1)
        return torch.cat([uncond, cond]), torch.cat([control, control])

    def _guided(
        self,
        latents: torch.Tensor,
        t: int | torch.Tensor,
        emb_2b: torch.Tensor,
        control_2b: torch.Tensor,
        control_scale: float,
        cfg: float,
    ) -> torch.Tensor:
        latents = latents.to(self.device, self.dtype)
        b = latents.shape[0]
        t_val = int(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else int(t)
        t_2b = torch.full((2 * b,), t_val, device=self.device, dtype=torch.long)
        eps_2b = self.unet_controlnet(torch.cat([latents, latents]), t_2b, emb_2b, control_2b, float(control_scale))
        eps_u, eps_c = eps_2b.chunk(2)
        return eps_u + cfg * (eps_c - eps_u)

    # -- VAE -----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_image(
        self, image: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """Image (B, 3, H, W) in [−1, 1] → scaled latents: posterior sample (or mean) × 0.18215."""
        moments = self.vae_encode(image.to(self.device, self.dtype))
        mean, logvar = moments.chunk(2, dim=1)
        latents = mean
        if sample:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            latents = mean + std * randn_like(mean, generator)
        return latents * self.vae_scale

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents → image (B, 3, H, W) in about [−1, 1] (÷ 0.18215 first)."""
        return self.vae_decode(latents.to(self.device, self.dtype) / self.vae_scale)

    def eps_fn(
        self,
        cond_emb: torch.Tensor,
        uncond_emb: torch.Tensor,
        control: torch.Tensor,
        control_scale: float = 1.0,
        cfg: float = 9.0,
    ) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """An ``eps_fn(x, t)`` for :class:`DDIMSampler` with fixed conditioning, placed on the device
        once for the whole sampling loop: per step, the control image's host-to-device copy (pageable,
        so the host waited for the GPU) and the batch concatenations left the GPU idle between steps."""
        fixed: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

        @torch.no_grad()
        def fn(x: torch.Tensor, t: int) -> torch.Tensor:
            key = tuple(x.shape)
            if key not in fixed:
                fixed[key] = self.guidance_inputs(x.shape, cond_emb, uncond_emb, control)
            return self._guided(x, t, *fixed[key], control_scale, cfg)

        return fn


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device, then moved to ``x``."""
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(x.device, x.dtype)


def resolve_seed(seed: int | None) -> int:
    """StableVideo's seed rule: −1 (or None) → a random seed in [0, 65535]."""
    if seed is None or seed == -1:
        seed = random.randint(0, 65535)
        logger.info("Using random seed %d", seed)
    return int(seed)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`resolve_seed` (seed)."""
    return torch.Generator(device=device).manual_seed(resolve_seed(seed))


def control_to_tensor(control: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Control image: uint8 HWC / NHWC (→ /255) or float (N, 3, H, W) in [0, 1] → float (N, 3, H, W)."""
    if isinstance(control, torch.Tensor):
        return control if control.ndim == 4 else control[None]
    arr = np.asarray(control)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise SvEngineError(f"Control image has shape {arr.shape}, expected H×W×3.", "Pass an RGB uint8 image.")
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    return torch.from_numpy(arr.astype(np.float32) / scale).permute(0, 3, 1, 2).contiguous()


def image_to_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 HWC / NHWC → float (N, 3, H, W) in [−1, 1]; a float tensor is passed through."""
    if isinstance(image, torch.Tensor):
        return image if image.ndim == 4 else image[None]
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise SvEngineError(
            f"Image has shape {arr.shape} / {arr.dtype}, expected uint8 H×W×3.", "Pass an RGB uint8 image."
        )
    return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[−1, 1] (N, 3, H, W) → uint8 (N, H, W, 3) as ControlNet's app does (×127.5 + 127.5, clip, truncate)."""
    arr = (images.float().permute(0, 2, 3, 1) * 127.5 + 127.5).cpu().numpy()
    return arr.clip(0, 255).astype(np.uint8)


def _conditioning(denoiser: ControlledDenoiser, prompt: str, negative_prompt: str):
    return denoiser.encode_text(prompt), denoiser.encode_text(negative_prompt)


def txt2img(
    denoiser: ControlledDenoiser,
    prompt: str,
    negative_prompt: str,
    control: np.ndarray | torch.Tensor,
    *,
    steps: int = 20,
    cfg: float = 9.0,
    control_scale: float = 1.0,
    seed: int | None = -1,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
    sampler: DDIMSampler | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> np.ndarray:
    """Full DDIM generation guided by ``control`` (H×W×3 uint8, H and W multiples of 64).

    ``prompt`` / ``negative_prompt`` are the final strings (the pipeline appends the added prompt).
    x_T = randn(num_samples, 4, H/8, W/8) from ``generator`` (or one seeded with ``seed``).
    Returns uint8 (num_samples, H, W, 3).
    """
    control_t = control_to_tensor(control)
    h, w = control_t.shape[-2:]
    f = denoiser.latent_factor
    if h % f or w % f:
        raise SvEngineError(f"Control size {h}×{w} is not a multiple of {f}.", "Resize to multiples of 64.")
    generator = generator if generator is not None else make_generator(seed)
    cond, uncond = _conditioning(denoiser, prompt, negative_prompt)
    x_T = randn_like(
        torch.empty(num_samples, 4, h // f, w // f, device=denoiser.device, dtype=torch.float32), generator
    ).to(denoiser.dtype)
    sampler = sampler or DDIMSampler()
    latents = sampler.sample(
        denoiser.eps_fn(cond, uncond, control_t, control_scale, cfg), x_T, steps, callback=callback, progress=progress
    )
    return to_uint8(denoiser.decode_latents(latents))


def img2img(
    denoiser: ControlledDenoiser,
    init_image: np.ndarray | torch.Tensor,
    prompt: str,
    negative_prompt: str,
    control: np.ndarray | torch.Tensor,
    *,
    strength: float = 0.8,
    steps: int = 20,
    cfg: float = 9.0,
    control_scale: float = 1.0,
    seed: int | None = -1,
    generator: torch.Generator | None = None,
    sampler: DDIMSampler | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> np.ndarray:
    """LDM img2img: VAE-encode (sampled) → noise to DDIM index int(steps·strength) → decode with the
    one-below quirk (see :mod:`.ddim`). ``init_image``: uint8 H×W×3 (or float [−1, 1] NCHW) of the
    control's size. Returns uint8 (N, H, W, 3)."""
    control_t = control_to_tensor(control)
    image_t = image_to_tensor(init_image)
    if image_t.shape[-2:] != control_t.shape[-2:]:
        raise SvEngineError(
            f"Init image {tuple(image_t.shape[-2:])} and control {tuple(control_t.shape[-2:])} differ in size.",
            "Resize both to the generation size.",
        )
    generator = generator if generator is not None else make_generator(seed)
    sampler = sampler or DDIMSampler()
    sampler.make_schedule(steps)
    t_enc = sampler.t_enc_for_strength(strength, steps)
    cond, uncond = _conditioning(denoiser, prompt, negative_prompt)
    z0 = denoiser.encode_image(image_t, generator)
    z_t = sampler.stochastic_encode(z0, t_enc, randn_like(z0, generator))
    latents = sampler.decode(
        z_t, t_enc, denoiser.eps_fn(cond, uncond, control_t, control_scale, cfg), callback=callback, progress=progress
    )
    return to_uint8(denoiser.decode_latents(latents))
