"""Neural Layered Atlas networks with the exact original (NLA / Text2LIVE / StableVideo) architectures.

Each network is an MLP of ``hidden.{i}`` Linear layers (width 256, ReLU between, tanh out), so
original checkpoints load with ``strict=True``:

| net        | in -> out | layers | positional encoding | skips |
|------------|-----------|--------|---------------------|-------|
| fg mapping | 3 -> 2    | 6      | none                | -     |
| bg mapping | 3 -> 2    | 4      | none                | -     |
| atlas      | 2 -> 3    | 8      | 10 freqs            | 4, 7  |
| alpha      | 3 -> 1    | 8      | 5 freqs             | -     |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Self

import torch
from sv_engine.stablevideo.seeding import seeded
from torch import nn

CHECKPOINT_KEYS = {
    "fg_mapping": "model_F_mapping1_state_dict",
    "bg_mapping": "model_F_mapping2_state_dict",
    "atlas": "F_atlas_state_dict",
    "alpha": "model_F_alpha_state_dict",
}


def positional_encoding(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """NLA's encoding: per frequency, sin of every input dim then cos of every input dim.

    x: (N, D); freqs: (F,) -> (N, 2·D·F). Same memory order as the original
    ``cat(sin, cos, dim=1).transpose(2, 1).view(N, -1)``.
    """
    proj = x[:, :, None] * freqs  # (N, D, F)
    mapped = torch.cat((torch.sin(proj), torch.cos(proj)), dim=1)  # (N, 2D, F)
    return mapped.transpose(2, 1).reshape(x.shape[0], -1)


class IMLP(nn.Module):
    """The NLA MLP. A skip layer takes ``cat(hidden, encoded_input)``; there is no raw-x input."""

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        num_layers: int,
        positional_dim: int = 0,
        skip_layers: tuple[int, ...] = (),
        hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.skip_layers = tuple(skip_layers)
        self.positional_dim = positional_dim
        # Not a buffer: the original keeps `b` out of the state dict, so checkpoints hold only `hidden.*`.
        self._freqs = torch.tensor([(2.0**j) * math.pi for j in range(positional_dim)])
        encoding_dim = 2 * input_dim * positional_dim if positional_dim else input_dim
        layers = []
        for i in range(num_layers):
            fan_in = encoding_dim if i == 0 else hidden_dim + (encoding_dim if i in self.skip_layers else 0)
            layers.append(nn.Linear(fan_in, output_dim if i == num_layers - 1 else hidden_dim))
        self.hidden = nn.ModuleList(layers)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if not self.positional_dim:
            return x
        return positional_encoding(x, self._freqs.to(device=x.device, dtype=x.dtype))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The output before the final tanh (fitting code regresses it directly)."""
        encoded = self.encode(x)
        h = encoded
        for i, layer in enumerate(self.hidden):
            if i > 0:
                h = torch.relu(h)
            if i in self.skip_layers:
                h = torch.cat((h, encoded), dim=1)
            h = layer(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pre_activation(x))


def fg_mapping_net() -> IMLP:
    return IMLP(3, 2, num_layers=6)


def bg_mapping_net() -> IMLP:
    return IMLP(3, 2, num_layers=4)


def atlas_net() -> IMLP:
    return IMLP(2, 3, num_layers=8, positional_dim=10, skip_layers=(4, 7))


def alpha_net() -> IMLP:
    return IMLP(3, 1, num_layers=8, positional_dim=5)


class NetworkSet:
    """Device moves and eval mode for a set of networks (:meth:`modules`): the NLA's four, or their hash-grid form."""

    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Self:
        for net in self.modules().values():
            net.to(device)
        return self

    def eval(self) -> Self:
        for net in self.modules().values():
            net.eval()
        return self


@dataclass
class NLAModel(NetworkSet):
    """The four networks of one video's layered atlas (StableVideo uses ONE atlas net for both layers)."""

    fg_mapping: IMLP
    bg_mapping: IMLP
    atlas: IMLP
    alpha: IMLP

    @classmethod
    def random(cls, seed: int = 0) -> NLAModel:
        with seeded(seed):
            return cls(fg_mapping_net(), bg_mapping_net(), atlas_net(), alpha_net())

    def modules(self) -> dict[str, IMLP]:
        return {"fg_mapping": self.fg_mapping, "bg_mapping": self.bg_mapping, "atlas": self.atlas, "alpha": self.alpha}

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """The checkpoint dict in the original NLA key layout (without optimizer state)."""
        return {CHECKPOINT_KEYS[name]: net.state_dict() for name, net in self.modules().items()}

    def load_state_dict(self, checkpoint: dict) -> None:
        """Loads an original NLA checkpoint dict with ``strict=True`` for every network."""
        for name, net in self.modules().items():
            net.load_state_dict(checkpoint[CHECKPOINT_KEYS[name]], strict=True)


def normalize_xyt(xyt: torch.Tensor, resx: int, resy: int, num_frames: int) -> torch.Tensor:
    """Pixel coordinates (x, y, t) -> the networks' input: (x/(m/2) − 1, y/(m/2) − 1, t/(T/2) − 1), with
    m = max(resx, resy)."""
    half = max(resx, resy) / 2.0
    scale = torch.tensor([half, half, num_frames / 2.0], dtype=xyt.dtype, device=xyt.device)
    return xyt / scale - 1.0


def fg_uv(out: torch.Tensor) -> torch.Tensor:
    """Foreground mapping output -> fg atlas uv (SV: out·0.5 + 0.5)."""
    return out * 0.5 + 0.5


def bg_uv(out: torch.Tensor) -> torch.Tensor:
    """Background mapping output -> bg atlas uv (SV: out·0.5 − 0.5)."""
    return out * 0.5 - 0.5


def alpha_from_output(out: torch.Tensor) -> torch.Tensor:
    """Alpha network output -> opacity (SV: 0.99·(out+1)/2 + 0.001)."""
    return 0.99 * (out + 1.0) * 0.5 + 0.001


def atlas_rgb(out: torch.Tensor) -> torch.Tensor:
    """Atlas network output -> RGB in [0, 1]."""
    return (out + 1.0) * 0.5


class NLAField(nn.Module):
    """fg mapping, bg mapping and alpha evaluated together on normalised (x, y, t) points.

    One module (and one exported graph, ``export.nla_field``) for the per-pixel maps of a video:
    (N, 3) -> fg_uv (N, 2), bg_uv (N, 2), alpha (N,), in StableVideo's conventions; alpha (N, 1) with
    ``alpha_column`` (the exported graph's outputs are all 2-D).
    """

    def __init__(self, nla: NLAModel, alpha_column: bool = False) -> None:
        super().__init__()
        self.fg_mapping = nla.fg_mapping
        self.bg_mapping = nla.bg_mapping
        self.alpha = nla.alpha
        self.alpha_column = alpha_column

    def forward(self, xyt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha = alpha_from_output(self.alpha(xyt))
        alpha = alpha if self.alpha_column else alpha[:, 0]
        return fg_uv(self.fg_mapping(xyt)), bg_uv(self.bg_mapping(xyt)), alpha
