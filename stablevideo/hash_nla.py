"""Hash-grid Neural Layered Atlas: the NLA's four networks as multi-resolution grid encodings (Instant-NGP,
Müller et al. 2022) with tiny MLP heads, in plain torch.

Same inputs and outputs as :mod:`nla` (normalised (x, y, t) -> tanh outputs for the uv mappings and alpha,
(u, v) in [-1, 1]² -> tanh rgb for the atlas), so the fit's losses, the report, the engine's maps
(:class:`nla.NLAField`) and grid atlases use either unchanged. It fits real footage ~30x faster than the
256-wide MLPs (a step is a few gathers from small tables instead of 2M-MAC MLPs per point).

The mappings are residuals over the flow-initialised layout the fit starts from (background homography per
frame, foreground centroid shift), stored in the model: at initialisation they reproduce that layout exactly,
and a low-resolution grid adds the non-rigid correction. A checkpoint holds :meth:`HashNLAModel.to_checkpoint`
(config + state dict) under :data:`CHECKPOINT_KEY`, beside the original NLA keys (see ``stablevideo.data``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from sv_engine.stablevideo.nla import NetworkSet
from sv_engine.stablevideo.seeding import seeded
from torch import nn

CHECKPOINT_KEY = "sv_engine_hash_nla"
# Instant-NGP's spatial hash: XOR of coordinate x prime per dimension (the first prime is 1, for coherence).
PRIMES = (1, 2654435761, 805459861)


def level_resolutions(coarse: Sequence[int], fine: Sequence[int], levels: int) -> list[list[int]]:
    """Per level, per dimension: cells from ``coarse`` to ``fine`` in a geometric progression."""
    out = []
    for level in range(levels):
        f = level / max(levels - 1, 1)
        out.append([max(1, round(c * (m / c) ** f)) for c, m in zip(coarse, fine, strict=True)])
    return out


class GridEncoding(nn.Module):
    """Multi-resolution grid encoding of points in [-1, 1]^d -> (N, levels * features).

    Level l has ``res[l]`` cells per dimension (``res + 1`` vertices), each vertex a learned feature vector;
    a point gets the d-linear interpolation of its cell's 2^d vertices. A level whose vertices fit into
    ``2**log2_table`` entries is indexed densely, a finer one through the spatial hash (collisions are left
    to the gradient, as in Instant-NGP). All levels live in one table, so one gather serves all of them.
    """

    def __init__(
        self,
        coarse: Sequence[int],
        fine: Sequence[int],
        levels: int,
        features: int = 2,
        log2_table: int = 17,
        init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        self.dims, self.levels, self.features = len(coarse), levels, features
        self.config = {
            "coarse": list(coarse),
            "fine": list(fine),
            "levels": levels,
            "features": features,
            "log2_table": log2_table,
        }
        res = level_resolutions(coarse, fine, levels)
        cap = 2**log2_table
        sizes, strides, hashed = [], [], []
        for r in res:
            vertices = math.prod(v + 1 for v in r)
            hashed.append(vertices > cap)
            sizes.append(cap if vertices > cap else vertices)
            strides.append([math.prod(v + 1 for v in r[:d]) for d in range(self.dims)])
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        self.register_buffer("res", torch.tensor(res, dtype=torch.float32), persistent=False)
        self.register_buffer("max_cell", torch.tensor(res, dtype=torch.int64) - 1, persistent=False)
        self.register_buffer("strides", torch.tensor(strides, dtype=torch.int64), persistent=False)
        self.register_buffer("hashed", torch.tensor(hashed), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        self.table = nn.Parameter(torch.empty(sum(sizes), features).uniform_(-init_scale, init_scale))

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        pos = ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0)[:, None, :] * self.res  # (N, L, d)
        cell = torch.minimum(pos.floor().long(), self.max_cell)  # the last cell holds the upper boundary
        frac = pos - cell
        # Per dimension, the two vertices' contributions to the dense index and to the hash.
        dense = [(cell[..., d] * self.strides[:, d], (cell[..., d] + 1) * self.strides[:, d]) for d in range(self.dims)]
        hashes = [(cell[..., d] * PRIMES[d], (cell[..., d] + 1) * PRIMES[d]) for d in range(self.dims)]
        idx, weights = [], []
        for corner in range(2**self.dims):
            bits = [(corner >> d) & 1 for d in range(self.dims)]
            d_idx = sum(dense[d][b] for d, b in enumerate(bits))
            h_idx = hashes[0][bits[0]]
            for d in range(1, self.dims):
                h_idx = torch.bitwise_xor(h_idx, hashes[d][bits[d]])
            idx.append(torch.where(self.hashed, h_idx % self.sizes, d_idx) + self.offsets)
            w = frac[..., 0] if bits[0] else 1.0 - frac[..., 0]
            for d in range(1, self.dims):
                w = w * (frac[..., d] if bits[d] else 1.0 - frac[..., d])
            weights.append(w)
        index = torch.stack(idx, dim=2)  # (N, L, 2^d)
        weight = torch.stack(weights, dim=2)
        feats = self.table.index_select(0, index.reshape(-1)).view(n, self.levels, 2**self.dims, self.features)
        return (feats * weight[..., None]).sum(2).reshape(n, self.out_dim)


def tiny_mlp(in_dim: int, out_dim: int, hidden: int, zero_out: bool = False) -> nn.Sequential:
    head = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
    if zero_out:  # the residual heads start at exactly the base layout
        nn.init.zeros_(head[2].weight)
        nn.init.zeros_(head[2].bias)
    return head


class GridNet(nn.Module):
    """Grid encoding + tiny MLP head, tanh out (like the NLA MLPs), plus an optional pre-tanh ``base``."""

    def __init__(self, encoding: GridEncoding, out_dim: int, hidden: int, base: nn.Module | None = None) -> None:
        super().__init__()
        self.encoding = encoding
        self.head = tiny_mlp(encoding.out_dim, out_dim, hidden, zero_out=base is not None)
        self.base = base

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.encoding(x))
        return out if self.base is None else out + self.base(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pre_activation(x))


class LayoutBase(nn.Module):
    """The fit's flow-initialised layout as the mappings' pre-tanh base: for frame t (nearest),
    bg: homography of the pixel into frame 0, centred and scaled; fg: the pixel shifted by the foreground
    centroid's offset from its mean (both clamped to ±0.95 like the warm-start targets, then atanh)."""

    def __init__(
        self,
        kind: str,
        resx: int,
        resy: int,
        num_frames: int,
        homographies: torch.Tensor,
        centroids: torch.Tensor,
        bg_center: Sequence[float],
        bg_scale: float,
        fg_scale: float,
    ) -> None:
        super().__init__()
        if kind not in ("fg", "bg"):
            raise ValueError(f"kind must be 'fg' or 'bg', not {kind!r}")
        self.kind, self.num_frames = kind, num_frames
        self.half = max(resx, resy) / 2.0
        self.bg_scale, self.fg_scale = float(bg_scale), float(fg_scale)
        self.register_buffer("homographies", homographies.float().reshape(num_frames, 3, 3).clone())
        self.register_buffer("centroids", centroids.float().reshape(num_frames, 2).clone())
        self.register_buffer("bg_center", torch.tensor(list(bg_center), dtype=torch.float32))

    def forward(self, xyt: torch.Tensor) -> torch.Tensor:
        px = (xyt[:, :2] + 1.0) * self.half
        t = ((xyt[:, 2] + 1.0) * (self.num_frames / 2.0)).round().long().clamp(0, self.num_frames - 1)
        if self.kind == "bg":
            p = torch.cat([px, torch.ones_like(px[:, :1])], dim=1)
            q = (self.homographies[t] @ p[:, :, None])[:, :, 0]
            out = (q[:, :2] / q[:, 2:3] - self.bg_center) / self.half * self.bg_scale
        else:
            shift = self.centroids.mean(0) - self.centroids[t]
            out = ((px + shift) / self.half - 1.0) * self.fg_scale
        return torch.atanh(out.clamp(-0.95, 0.95))


@dataclass
class HashNLAConfig:
    """Everything that shapes a :class:`HashNLAModel` (stored with its checkpoint)."""

    resx: int
    resy: int
    num_frames: int
    bg_center: tuple[float, float]
    bg_scale: float
    fg_scale: float
    log2_table: int | None = None  # entries per level: 2^18 at 192 px, one more doubling per doubling of the size
    atlas_levels: int = 12
    alpha_levels: int = 10
    mapping_levels: int = 4
    features: int = 2
    hidden: int = 32
    atlas_detail: float = 1.5  # atlas cells per video pixel at the finest level

    def __post_init__(self) -> None:
        if self.log2_table is None:
            self.log2_table = min(21, max(16, 18 + round(math.log2(max(self.resx, self.resy) / 192))))

    def atlas_fine(self) -> int:
        """Finest atlas cells over [-1, 1]: one video pixel spans 0.5 * scale / half uv units."""
        return round(self.atlas_detail * 4.0 * (max(self.resx, self.resy) / 2.0) / min(self.fg_scale, self.bg_scale))


@dataclass
class HashNLAModel(NetworkSet):
    """The four networks of :class:`nla.NLAModel` as grid networks (same call conventions)."""

    fg_mapping: GridNet
    bg_mapping: GridNet
    atlas: GridNet
    alpha: GridNet
    config: HashNLAConfig

    @classmethod
    def create(
        cls, config: HashNLAConfig, homographies: torch.Tensor, centroids: torch.Tensor, seed: int = 0
    ) -> HashNLAModel:
        with seeded(seed):
            return cls._create(config, homographies, centroids)

    @classmethod
    def _create(cls, config: HashNLAConfig, homographies: torch.Tensor, centroids: torch.Tensor) -> HashNLAModel:
        c = config
        side = max(c.resx, c.resy)  # x and y are both normalised by max(resx, resy) / 2
        t_fine = max(2, c.num_frames)

        def base(kind: str) -> LayoutBase:
            return LayoutBase(
                kind, c.resx, c.resy, c.num_frames, homographies, centroids, c.bg_center, c.bg_scale, c.fg_scale
            )

        def mapping(kind: str) -> GridNet:
            fine = (max(4, side // 8), max(4, side // 8), max(2, t_fine // 4))
            enc = GridEncoding((2, 2, 2), fine, c.mapping_levels, c.features, c.log2_table)
            return GridNet(enc, 2, c.hidden, base(kind))

        alpha_enc = GridEncoding((8, 8, 2), (side, side, t_fine), c.alpha_levels, c.features, c.log2_table)
        atlas_enc = GridEncoding((16, 16), (c.atlas_fine(), c.atlas_fine()), c.atlas_levels, c.features, c.log2_table)
        return cls(
            mapping("fg"), mapping("bg"), GridNet(atlas_enc, 3, c.hidden * 2), GridNet(alpha_enc, 1, c.hidden), config
        )

    @classmethod
    def from_checkpoint(cls, blob: dict) -> HashNLAModel:
        """Rebuilds the model from :meth:`to_checkpoint`'s dict (strict)."""
        cfg = dict(blob["config"])
        cfg["bg_center"] = tuple(cfg["bg_center"])
        state = blob["state"]
        model = cls.create(
            HashNLAConfig(**cfg), state["fg_mapping"]["base.homographies"], state["fg_mapping"]["base.centroids"]
        )
        model.load_state_dict(state)
        return model

    def to_checkpoint(self) -> dict:
        return {"config": asdict(self.config), "state": self.state_dict()}

    def modules(self) -> dict[str, GridNet]:
        return {"fg_mapping": self.fg_mapping, "bg_mapping": self.bg_mapping, "atlas": self.atlas, "alpha": self.alpha}

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: net.state_dict() for name, net in self.modules().items()}

    def load_state_dict(self, state: dict) -> None:
        for name, net in self.modules().items():
            net.load_state_dict(state[name], strict=True)
