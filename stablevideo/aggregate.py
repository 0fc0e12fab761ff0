"""Combining the keyframe atlases: per-pixel median, optionally refined by the aggregation network."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from sv_engine.stablevideo.seeding import seeded
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)


def median_aggregate(atlases: torch.Tensor) -> torch.Tensor:
    """(K, C, H, W) -> (C, H, W): ``torch.median`` over keyframes (the lower middle value for even K)."""
    return torch.median(atlases, dim=0).values


class AggregationNet(nn.Module):
    """StableVideo's AGGNet: Conv(3→64, k3, p1) → ReLU → ConvTranspose(64→3, k3, p1), no biases, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, kernel_size=3, padding=1, bias=False)
        self.deconv = nn.ConvTranspose2d(64, 3, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.deconv(torch.relu(self.conv(x)))


# (atlas (C, H, W)) -> list of K reconstructed keyframe crops, each (C, h, w)
Sampler = Callable[[torch.Tensor], list[torch.Tensor]]


def train_aggregation_net(
    atlas: torch.Tensor,
    sample_keyframes: Sampler,
    targets: list[torch.Tensor],
    iterations: int = 500,
    lr: float = 1e-3,
    momentum: float = 0.9,
    seed: int = 0,
    progress: bool = True,
) -> tuple[torch.Tensor, list[float]]:
    """Trains AGGNet on the median atlas so its warps match the edited keyframes (L1), as SV intends.

    SV's own loop runs under ``no_grad`` and so never trains; here gradients are enabled explicitly.
    Returns the refined atlas and the loss per iteration.
    """
    with seeded(seed):
        net = AggregationNet().to(atlas.device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    l1 = nn.L1Loss()
    losses = []
    with torch.enable_grad():
        for _ in tqdm(range(iterations), desc="aggregation net", disable=not progress, leave=False):
            refined = net(atlas[None])[0]
            loss = sum(l1(rec, tgt) for rec, tgt in zip(sample_keyframes(refined), targets, strict=False))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    with torch.no_grad():
        refined = net(atlas[None])[0]
    log.info("aggregation net: L1 %.4f -> %.4f over %d iterations", losses[0], losses[-1], iterations)
    return refined, losses
