"""UNet + ControlNet, fused in one graph and split in two graphs.

Fused (:class:`UNetControlNetSpec`): inputs ``sample`` (B,4,h,w), ``timestep`` (1,) fp32,
``encoder_hidden_states`` (B,77,D), ``controlnet_cond`` (B,3,8h,8w), ``control_scale`` (1,) fp32 ->
``noise_pred`` (B,4,h,w). The control scale is a *runtime input* multiplying every residual inside
the graph (ControlNet 1.0's ``control_scales = [strength] * 13``), so changing it never re-exports or
rebuilds. One fused engine per ControlNet (canny, depth).

Split: :class:`ControlNetSpec` (same inputs -> ``down_res_0..down_res_{N-2}``, ``mid_res``; N = 13 for
SD 1.5, already multiplied by the scale) and :class:`UNetSpec` (``sample``, ``timestep``,
``encoder_hidden_states`` + the N residuals -> ``noise_pred``), so one UNet engine serves both
ControlNets.
"""

from __future__ import annotations

import torch
from sv_engine.export.spec import DEFAULT_SHAPES, ExportSpec, ShapeRange, latent_ranges
from sv_engine.stablevideo.models.diffusion import TorchUNetControlNet
from torch import nn

#: Names of the UNet inputs shared by the three specs.
BASE_INPUTS = ["sample", "timestep", "encoder_hidden_states"]
CONTROL_INPUTS = ["controlnet_cond", "control_scale"]


def _dim(sym: str, factor: int) -> str:
    return sym if factor == 1 else f"({sym}+{factor - 1})//{factor}"


def residual_layout(unet_or_controlnet: nn.Module) -> list[tuple[str, int, int]]:
    """``[(name, channels, spatial factor)]`` of the ControlNet residuals, from the config.

    conv_in, then per down block ``layers_per_block`` resnets and a downsampler (not the last block),
    then the mid block — 12 + 1 = 13 for SD 1.5.
    """
    cfg = unet_or_controlnet.config
    channels = list(cfg.block_out_channels)
    lpb = cfg.layers_per_block
    lpb = [lpb] * len(channels) if isinstance(lpb, int) else list(lpb)
    layout = [(channels[0], 1)]
    for i, ch in enumerate(channels):
        layout += [(ch, 2**i)] * lpb[i]
        if i < len(channels) - 1:
            layout.append((ch, 2 ** (i + 1)))
    out = [(f"down_res_{i}", ch, f) for i, (ch, f) in enumerate(layout)]
    out.append(("mid_res", channels[-1], 2 ** (len(channels) - 1)))
    return out


class _FusedUNetControlNet(TorchUNetControlNet):
    """The pipeline's fused module with the spec's output contract (a tuple in output-name order)."""

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, control_scale):
        return (super().forward(sample, timestep, encoder_hidden_states, controlnet_cond, control_scale),)


class _ControlNetOnly(TorchUNetControlNet):
    """The fused module's first half: the scaled residuals, as the ControlNet graph's outputs."""

    def __init__(self, controlnet: nn.Module) -> None:
        super().__init__(None, controlnet)

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, control_scale):
        down, mid = self.residuals(sample, timestep, encoder_hidden_states, controlnet_cond, control_scale)
        return (*down, mid)


class _UNetWithResiduals(TorchUNetControlNet):
    """The fused module's second half: the UNet with the residuals as graph inputs."""

    def __init__(self, unet: nn.Module, n_down: int) -> None:
        super().__init__(unet, None)
        self.n_down = n_down

    def forward(self, sample, timestep, encoder_hidden_states, *residuals):
        down, mid = list(residuals[: self.n_down]), residuals[self.n_down]
        return (self.denoise(sample, timestep, encoder_hidden_states, down, mid),)


class _UNetBase(ExportSpec):
    """Construction and shared I/O of the three UNet-family specs: the UNet, the ControlNet, or both
    (the sizes come from the UNet when there is one; ``layout``: the ControlNet residuals that the
    split specs pass between them)."""

    def __init__(
        self,
        unet: nn.Module | None = None,
        controlnet: nn.Module | None = None,
        *,
        precision: str = "fp32",
        shapes: ShapeRange = DEFAULT_SHAPES,
        device="cpu",
        name: str | None = None,
        seq_len: int = 77,
    ) -> None:
        if name:
            self.name = name
        super().__init__(precision, shapes, device)
        self.unet = unet
        self.controlnet = controlnet
        config = (unet if unet is not None else controlnet).config
        self.seq_len = seq_len
        self.context_dim = int(config.cross_attention_dim)
        self.latent_channels = int(config.in_channels)
        self.out_channels = int(getattr(config, "out_channels", config.in_channels))
        self.layout = residual_layout(controlnet if controlnet is not None else unet)

    def symbol_ranges(self):
        return latent_ranges(self.shapes)

    def _base_shapes(self):
        return {
            "sample": ["B", self.latent_channels, "h", "w"],
            "timestep": [1],
            "encoder_hidden_states": ["B", self.seq_len, self.context_dim],
        }

    def _control_shapes(self):
        return {"controlnet_cond": ["B", 3, "h*8", "w*8"], "control_scale": [1]}

    def input_dtypes(self):
        d = {n: self.dtype for n in self.input_names()}
        d["timestep"] = torch.float32  # timesteps up to 999 and the sinusoid need fp32
        if "control_scale" in d:
            d["control_scale"] = torch.float32
        return d

    def sample_input(self, name, shape, dtype, gen):
        if name == "timestep":
            return torch.tensor([501.0], dtype=dtype)
        if name == "control_scale":
            return torch.tensor([1.0], dtype=dtype)
        if name == "controlnet_cond":
            return torch.rand(shape, generator=gen).to(dtype)  # control images are in [0, 1]
        return super().sample_input(name, shape, dtype, gen)


class UNetControlNetSpec(_UNetBase):
    """UNet and one ControlNet in one graph with a runtime control scale."""

    name = "unet_controlnet"

    def build_module(self):
        return _FusedUNetControlNet(self.unet, self.controlnet)

    def input_names(self):
        return BASE_INPUTS + CONTROL_INPUTS

    def output_names(self):
        return ["noise_pred"]

    def input_shapes(self):
        return {**self._base_shapes(), **self._control_shapes()}

    def output_shapes(self):
        return {"noise_pred": ["B", self.out_channels, "h", "w"]}


class ControlNetSpec(_UNetBase):
    """ControlNet alone: -> the scaled residuals (13 for SD 1.5)."""

    name = "controlnet"

    def build_module(self):
        return _ControlNetOnly(self.controlnet)

    def input_names(self):
        return BASE_INPUTS + CONTROL_INPUTS

    def output_names(self):
        return [n for n, _, _ in self.layout]

    def input_shapes(self):
        return {**self._base_shapes(), **self._control_shapes()}

    def output_shapes(self):
        return {n: ["B", ch, _dim("h", f), _dim("w", f)] for n, ch, f in self.layout}


class UNetSpec(_UNetBase):
    """UNet taking the ControlNet residuals as inputs (serves every ControlNet)."""

    name = "unet"

    def build_module(self):
        return _UNetWithResiduals(self.unet, len(self.layout) - 1)

    def input_names(self):
        return BASE_INPUTS + [n for n, _, _ in self.layout]

    def output_names(self):
        return ["noise_pred"]

    def input_shapes(self):
        res = {n: ["B", ch, _dim("h", f), _dim("w", f)] for n, ch, f in self.layout}
        return {**self._base_shapes(), **res}

    def output_shapes(self):
        return {"noise_pred": ["B", self.out_channels, "h", "w"]}

    def sample_input(self, name, shape, dtype, gen):
        if "_res" in name:
            return (torch.randn(shape, generator=gen) * 0.1).to(dtype)
        return super().sample_input(name, shape, dtype, gen)
