"""MiDaS DPT-hybrid depth: transformers' ``DPTForDepthEstimation`` with ``is_hybrid=True`` as plain torch.

A BiT ResNet (weight-standardized convs, TF "same" padding) turns the image into a stride-16 feature map;
ViT-hybrid embeddings project it to tokens; a ViT encoder runs on them; the DPT neck reassembles two BiT
maps and two encoder layers into a feature pyramid and fuses it; the head predicts relative inverse depth.

Parameter names, construction order and random init follow transformers 5.24 (``modeling_dpt.py``,
``modeling_bit.py``), so its checkpoints (and the MiDaS mapping in ``loaders.py``) load unchanged, and a
model built under a seed holds the same values. Unlike transformers, :meth:`DPTForDepthEstimation.predict_depth`
runs any H, W divisible by the patch size (position embeddings resized bilinearly, as MiDaS does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sv_engine.errors import SvEngineError

from .base import TRANSFORMERS_METADATA, ConfiguredModel, ModelConfig

_FIX = (
    "Use the MiDaS dpt_hybrid config (sv_engine/stablevideo/assets/configs/dpt_hybrid.json, as Intel/dpt-hybrid-midas)."
)

#: Keys a transformers ``config.json`` carries that describe neither architecture nor inference: the
#: shared metadata and the output / token options (v4 wrote the generation ones into every nested config).
_METADATA = (
    *TRANSFORMERS_METADATA,
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "name_or_path",
    "pruned_heads",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)

#: ``BitConfig``'s fields and defaults (transformers 5.24, ``configuration_bit.py``).
BIT_DEFAULTS: dict[str, Any] = {
    "num_channels": 3,
    "embedding_size": 64,
    "hidden_sizes": (256, 512, 1024, 2048),
    "depths": (3, 4, 6, 3),
    "layer_type": "preactivation",
    "hidden_act": "relu",
    "global_padding": None,
    "num_groups": 32,
    "drop_path_rate": 0.0,
    "embedding_dynamic_padding": False,
    "output_stride": 32,
    "width_factor": 1,
    "out_features": None,
    "out_indices": None,
}
#: What ``DPTConfig`` fills in for a hybrid without a ``backbone_config`` (its ``sub_configs_defaults``).
BIT_HYBRID_DEFAULTS: dict[str, Any] = {
    "global_padding": "same",
    "layer_type": "bottleneck",
    "depths": (3, 4, 9),
    "out_features": ("stage1", "stage2", "stage3"),
    "embedding_dynamic_padding": True,
}

#: BitConfig has no initializer_range: transformers falls back to 0.02 (its draw is overwritten anyway).
_BIT_INIT_STD = 0.02

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU}


def _activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


def _refuse(message: str) -> SvEngineError:
    return SvEngineError(message, _FIX)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _resolve_bit_config(backbone_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The nested BiT config as ``BitConfig`` resolves it, limited to what this module implements.

    A dict is read over ``BitConfig``'s own defaults (transformers' ``BitConfig.from_dict``), ``None`` over
    DPT's hybrid defaults."""
    if backbone_config is None:
        return _resolve_bit_config({**BIT_HYBRID_DEFAULTS, "model_type": "bit"})
    raw = dict(backbone_config)
    if raw.get("model_type", "bit") != "bit":
        raise _refuse(
            f"DPT-hybrid implements a BiT backbone only, not backbone_config.model_type={raw['model_type']!r}."
        )
    given = {k: v for k, v in raw.items() if not k.startswith("_") and k not in _METADATA and k != "stage_names"}
    unknown = sorted(set(given) - set(BIT_DEFAULTS))
    if unknown:
        raise _refuse(
            f"DPTForDepthEstimation backbone_config has options it does not implement: "
            f"{', '.join('backbone_config.' + k for k in unknown)}."
        )
    cfg = {**BIT_DEFAULTS, **given}
    if str(cfg["global_padding"]).upper() != "SAME":
        raise _refuse(
            f"DPT-hybrid implements backbone_config.global_padding='SAME' only, not {cfg['global_padding']!r}."
        )
    cfg["global_padding"] = "SAME"
    if cfg["layer_type"] != "bottleneck":
        raise _refuse(
            f"DPTForDepthEstimation implements backbone_config.layer_type='bottleneck' only, not {cfg['layer_type']!r}."
        )
    if cfg["drop_path_rate"] != 0:
        raise _refuse(
            f"DPT-hybrid does not implement backbone_config.drop_path_rate={cfg['drop_path_rate']!r} (only 0.0)."
        )
    if cfg["hidden_act"] not in _ACTIVATIONS:
        raise _refuse(f"DPTForDepthEstimation does not implement backbone_config.hidden_act={cfg['hidden_act']!r}.")
    stage_names = ["stem"] + [f"stage{i}" for i in range(1, len(cfg["depths"]) + 1)]
    if "stage_names" in raw and list(raw["stage_names"]) != stage_names:
        raise _refuse(f"backbone_config.stage_names={raw['stage_names']!r} does not match its depths ({stage_names}).")
    features, indices = cfg["out_features"], cfg["out_indices"]
    if features is None and indices is None:
        features = [stage_names[-1]]
    elif features is None:
        features = [stage_names[i] for i in indices]
    features = list(features)
    if any(f not in stage_names for f in features):
        raise _refuse(f"backbone_config.out_features={features!r} names stages outside {stage_names}.")
    if indices is not None and [stage_names[i] for i in indices] != features:
        raise _refuse(f"backbone_config.out_indices={list(indices)!r} contradicts out_features={features!r}.")
    if len(features) != 3:
        raise _refuse(f"DPT-hybrid needs 3 backbone output features, backbone_config gives {features!r}.")
    cfg["out_features"] = features
    cfg["out_indices"] = [stage_names.index(f) for f in features]
    cfg["hidden_sizes"] = list(cfg["hidden_sizes"])
    cfg["depths"] = list(cfg["depths"])
    return cfg


# --------------------------------------------------------------------------------------------------
# BiT backbone (transformers' BitBackbone, layer_type="bottleneck", global_padding="SAME")
# --------------------------------------------------------------------------------------------------


def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> int:
    """TF "SAME" total padding of one side length (transformers' ``DynamicPad2d.compute_padding``)."""
    return max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def _dynamic_pad(
    x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph = _same_pad(h, kernel[0], stride[0], dilation[0])
    pw = _same_pad(w, kernel[1], stride[1], dilation[1])
    if ph > 0 or pw > 0:  # shape-dependent only: fixed per input size
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=0.0)
    return x


class WeightStandardizedConv2d(nn.Conv2d):
    """Conv2d whose kernel is standardized per output channel (zero mean, unit biased variance) each call."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        eps: float = 1e-6,
    ) -> None:
        # "SAME": static symmetric padding where it equals TF's, padding at call time otherwise.
        dynamic = not (stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0)
        padding = 0 if dynamic else ((stride - 1) + dilation * (kernel_size - 1)) // 2
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.dynamic_pad = dynamic
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_pad:
            x = _dynamic_pad(x, self.kernel_size, self.stride, self.dilation)
        # The same batch_norm call as transformers (biased variance, this eps), so the standardized kernel
        # matches it bit for bit. It depends on the weights only: a candidate for precomputing once at load.
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=self.eps
        ).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BitGroupNormActivation(nn.GroupNorm):
    """GroupNorm (``num_groups`` of the BiT config), then the activation or nothing."""

    def __init__(self, cfg: Mapping[str, Any], num_channels: int, apply_activation: bool = True) -> None:
        super().__init__(cfg["num_groups"], num_channels, eps=1e-5, affine=True)
        self.activation = _activation(cfg["hidden_act"]) if apply_activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


class BitEmbeddings(nn.Module):
    """The stem: 7×7/2 weight-standardized conv, GroupNorm+act, 3×3/2 max pool."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.convolution = WeightStandardizedConv2d(cfg["num_channels"], cfg["embedding_size"], 7, stride=2, eps=1e-8)
        self.pool_dynamic_padding = bool(cfg["embedding_dynamic_padding"])
        self.norm = BitGroupNormActivation(cfg, cfg["embedding_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.convolution(x))
        if self.pool_dynamic_padding:
            x = _dynamic_pad(x, (3, 3), (2, 2), (1, 1))  # zero padding, as transformers' BitMaxPool2d
        return F.max_pool2d(x, 3, 2)


class BitDownsampleConv(nn.Module):
    def __init__(self, cfg: Mapping[str, Any], in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = WeightStandardizedConv2d(in_channels, out_channels, 1, stride=stride, eps=1e-8)
        self.norm = BitGroupNormActivation(cfg, out_channels, apply_activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def _make_div(value: float, divisor: int = 8) -> int:
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class BitBottleneckLayer(nn.Module):
    """Non-pre-activation bottleneck (ResNet v1.5): 1×1, 3×3 (strided), 1×1, residual, activation."""

    def __init__(
        self,
        cfg: Mapping[str, Any],
        in_channels: int,
        out_channels: int,
        stride: int,
        first_dilation: int,
        is_first_layer: bool,
    ) -> None:
        super().__init__()
        mid = _make_div(out_channels * 0.25)
        self.downsample = BitDownsampleConv(cfg, in_channels, out_channels, stride) if is_first_layer else None
        self.conv1 = WeightStandardizedConv2d(in_channels, mid, 1, eps=1e-8)
        self.norm1 = BitGroupNormActivation(cfg, mid)
        self.conv2 = WeightStandardizedConv2d(mid, mid, 3, stride=stride, dilation=first_dilation, eps=1e-8)
        self.norm2 = BitGroupNormActivation(cfg, mid)
        self.conv3 = WeightStandardizedConv2d(mid, out_channels, 1, eps=1e-8)
        self.norm3 = BitGroupNormActivation(cfg, out_channels, apply_activation=False)
        self.activation = _activation(cfg["hidden_act"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return self.activation(x + shortcut)


class BitStage(nn.Module):
    def __init__(
        self, cfg: Mapping[str, Any], in_channels: int, out_channels: int, stride: int, dilation: int, depth: int
    ) -> None:
        super().__init__()
        first_dilation = 1 if dilation in (1, 2) else 2
        self.layers = nn.Sequential()
        for i in range(depth):
            self.layers.add_module(
                str(i),
                BitBottleneckLayer(
                    cfg,
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    stride=stride if i == 0 else 1,
                    first_dilation=first_dilation,
                    is_first_layer=i == 0,
                ),
            )
            first_dilation = dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class BitEncoder(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        prev, current_stride, dilation = cfg["embedding_size"], 4, 1
        for i, (depth, hidden) in enumerate(zip(cfg["depths"], cfg["hidden_sizes"], strict=False)):
            out_channels = _make_div(hidden * cfg["width_factor"])
            stride = 1 if i == 0 else 2
            if current_stride >= cfg["output_stride"]:
                dilation *= stride
                stride = 1
            self.stages.append(BitStage(cfg, prev, out_channels, stride, dilation, depth))
            prev = out_channels
            current_stride *= stride


class BitModel(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.embedder = BitEmbeddings(cfg)
        self.encoder = BitEncoder(cfg)


class BitBackbone(nn.Module):
    """The BiT feature maps named by ``out_features`` (DPT-hybrid: the outputs of its 3 stages)."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.bit = BitModel(cfg)
        self.out_indices = list(cfg["out_indices"])  # 0 = stem, i = stage i
        self.last_stage = max(self.out_indices)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        x = self.bit.embedder(pixel_values)
        states = [x]
        for stage in self.bit.encoder.stages[: self.last_stage]:
            x = stage(x)
            states.append(x)
        return [states[i] for i in self.out_indices]


# --------------------------------------------------------------------------------------------------
# ViT-hybrid embeddings and encoder
# --------------------------------------------------------------------------------------------------


class DPTViTHybridEmbeddings(nn.Module):
    """BiT features → 1×1 projection to tokens, class token, position embeddings resized to the input grid."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        image_size, patch_size = _pair(config.image_size), _pair(config.patch_size)
        num_patches = (image_size[1] // patch_size[1]) * (image_size[0] // patch_size[0])
        self.backbone = BitBackbone(config.backbone_config)
        _init_bit(self.backbone, _BIT_INIT_STD)  # BitBackbone's post_init: before the projection below is built
        self.image_size = image_size
        self.patch_size = patch_size[0]
        self.projection = nn.Conv2d(config.backbone_featmap_shape[1], config.hidden_size, kernel_size=1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_patches + 1, config.hidden_size))

    def resized_position_embeddings(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """transformers' ``_resize_pos_embed``: the square grid bilinearly resized, the class token kept."""
        posemb = self.position_embeddings
        tok, grid = posemb[:, :1], posemb[0, 1:]
        old = int(math.sqrt(grid.shape[0]))
        grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_height, grid_width), mode="bilinear")
        grid = grid.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, -1)
        return torch.cat([tok, grid], dim=1)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens (B, 1 + h·w, D) and the first two BiT feature maps (the neck's residual inputs)."""
        b, _, height, width = pixel_values.shape
        pos = self.resized_position_embeddings(height // self.patch_size, width // self.patch_size)
        features = self.backbone(pixel_values)
        tokens = self.projection(features[-1]).flatten(2).transpose(1, 2)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        return tokens + pos, features[:2]


class DPTSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.dropout_prob = float(config.attention_probs_dropout_prob or 0.0)
        self.scaling = self.attention_head_size**-0.5
        self.query = nn.Linear(config.hidden_size, self.all_head_size, bias=config.qkv_bias)
        self.key = nn.Linear(config.hidden_size, self.all_head_size, bias=config.qkv_bias)
        self.value = nn.Linear(config.hidden_size, self.all_head_size, bias=config.qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        shape = (b, -1, self.num_attention_heads, self.attention_head_size)
        q = self.query(x).view(shape).transpose(1, 2)
        k = self.key(x).view(shape).transpose(1, 2)
        v = self.value(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout_prob if self.training else 0.0, scale=self.scaling
        )
        return out.transpose(1, 2).reshape(b, -1, self.all_head_size)


class DPTViTSelfOutput(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob or 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(x))


class DPTViTAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention = DPTSelfAttention(config)
        self.output = DPTViTSelfOutput(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x))


class DPTViTIntermediate(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = _activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


class DPTViTOutput(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob or 0.0)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(x)) + residual


class DPTViTLayer(nn.Module):
    """Pre-norm ViT block (timm's ``Block``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention = DPTViTAttention(config)
        self.intermediate = DPTViTIntermediate(config)
        self.output = DPTViTOutput(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.layernorm_before(x)) + x
        return self.output(self.intermediate(self.layernorm_after(x)), x)


class DPTViTEncoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([DPTViTLayer(config) for _ in range(config.num_hidden_layers)])


class DPTModel(nn.Module):
    """Embeddings + ViT encoder (+ the final LayerNorm, which the depth path does not use: the neck reads
    the blocks' outputs before it)."""

    def __init__(self, config: ModelConfig, out_layers: Sequence[int]) -> None:
        super().__init__()
        self.embeddings = DPTViTHybridEmbeddings(config)
        self.encoder = DPTViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.out_layers = list(out_layers)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The neck's inputs: the two BiT maps, then the outputs of the blocks in ``out_layers``
        (the layers after the last of them are skipped: nothing reads them)."""
        x, hidden = self.embeddings(pixel_values)
        hidden = list(hidden)
        for i, layer in enumerate(self.encoder.layer[: max(self.out_layers) + 1]):
            x = layer(x)
            if i in self.out_layers:
                hidden.append(x)
        return hidden


# --------------------------------------------------------------------------------------------------
# Neck and head
# --------------------------------------------------------------------------------------------------


class DPTReassembleLayer(nn.Module):
    def __init__(self, config: ModelConfig, channels: int, factor: float) -> None:
        super().__init__()
        self.projection = nn.Conv2d(config.hidden_size, channels, kernel_size=1)
        if factor > 1:
            self.resize = nn.ConvTranspose2d(channels, channels, kernel_size=int(factor), stride=int(factor), padding=0)
        elif factor == 1:
            self.resize = nn.Identity()
        else:
            self.resize = nn.Conv2d(channels, channels, kernel_size=3, stride=int(1 / factor), padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resize(self.projection(x))


class DPTReassembleStage(nn.Module):
    """Tokens → feature maps for the ViT stages (readout "project": the class token concatenated to every
    token, Linear + act); the hybrid's first two stages are BiT maps and pass through unchanged."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for i, factor in zip(range(len(config.neck_hidden_sizes)), config.reassemble_factors, strict=False):
            self.layers.append(
                nn.Identity() if i <= 1 else DPTReassembleLayer(config, config.neck_hidden_sizes[i], factor)
            )
        self.readout_projects = nn.ModuleList()
        for i in range(len(config.neck_hidden_sizes)):
            if i <= 1:
                self.readout_projects.append(nn.Sequential(nn.Identity()))
            else:
                self.readout_projects.append(
                    nn.Sequential(nn.Linear(2 * config.hidden_size, config.hidden_size), _activation(config.hidden_act))
                )
        self.neck_ignore_stages = list(config.neck_ignore_stages)

    def forward(
        self, hidden_states: list[torch.Tensor], patch_height: int | None = None, patch_width: int | None = None
    ) -> list[torch.Tensor]:
        out = []
        for i, x in enumerate(hidden_states):
            if i not in self.neck_ignore_stages:
                cls_token, x = x[:, 0], x[:, 1:]
                b, n, c = x.shape
                if patch_height is None or patch_width is None:
                    patch_height = patch_width = int(math.sqrt(n))
                readout = cls_token.unsqueeze(1).expand_as(x)
                x = self.readout_projects[i](torch.cat((x, readout), -1))
                x = x.permute(0, 2, 1).reshape(b, c, patch_height, patch_width)
                x = self.layers[i](x)
            out.append(x)
        return out


class DPTPreActResidualLayer(nn.Module):
    """ReLU → 3×3 conv → ReLU → 3×3 conv, plus the input."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        bias = True if config.use_bias_in_fusion_residual is None else bool(config.use_bias_in_fusion_residual)
        size = config.fusion_hidden_size
        self.activation1 = nn.ReLU()
        self.convolution1 = nn.Conv2d(size, size, kernel_size=3, stride=1, padding=1, bias=bias)
        self.activation2 = nn.ReLU()
        self.convolution2 = nn.Conv2d(size, size, kernel_size=3, stride=1, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolution2(self.activation2(self.convolution1(self.activation1(x)))) + x


class DPTFeatureFusionLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(config.fusion_hidden_size, config.fusion_hidden_size, kernel_size=1, bias=True)
        self.residual_layer1 = DPTPreActResidualLayer(config)
        self.residual_layer2 = DPTPreActResidualLayer(config)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if residual is not None:
            if x.shape != residual.shape:  # odd grids: the upsampled path is one pixel larger
                residual = F.interpolate(residual, size=(x.shape[2], x.shape[3]), mode="bilinear", align_corners=False)
            x = x + self.residual_layer1(residual)
        x = self.residual_layer2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.projection(x)


class DPTFeatureFusionStage(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([DPTFeatureFusionLayer(config) for _ in range(len(config.neck_hidden_sizes))])

    def forward(self, hidden_states: list[torch.Tensor]) -> list[torch.Tensor]:
        fused: list[torch.Tensor] = []
        x: torch.Tensor | None = None
        for feature, layer in zip(hidden_states[::-1], self.layers, strict=False):
            x = layer(feature) if x is None else layer(x, feature)
            fused.append(x)
        return fused


class DPTNeck(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.reassemble_stage = DPTReassembleStage(config)
        self.convs = nn.ModuleList(
            nn.Conv2d(c, config.fusion_hidden_size, kernel_size=3, padding=1, bias=False)
            for c in config.neck_hidden_sizes
        )
        self.fusion_stage = DPTFeatureFusionStage(config)

    def forward(
        self, hidden_states: list[torch.Tensor], patch_height: int | None = None, patch_width: int | None = None
    ) -> list[torch.Tensor]:
        hidden_states = self.reassemble_stage(hidden_states, patch_height, patch_width)
        return self.fusion_stage([conv(x) for conv, x in zip(self.convs, hidden_states, strict=True)])


class DPTDepthEstimationHead(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.head_in_index = config.head_in_index
        features = config.fusion_hidden_size
        self.head = nn.Sequential(
            nn.Conv2d(features, features // 2, kernel_size=3, stride=1, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(features // 2, 32, kernel_size=3, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, kernel_size=1, stride=1, padding=0),
            nn.ReLU(),
        )

    def forward(self, hidden_states: list[torch.Tensor]) -> torch.Tensor:
        return self.head(hidden_states[self.head_in_index]).squeeze(dim=1)


# --------------------------------------------------------------------------------------------------
# Random init (transformers' _init_weights, in its order)
# --------------------------------------------------------------------------------------------------


def _post_order(module: nn.Module) -> list[nn.Module]:
    """Children before parents, as transformers' ``smart_apply`` visits modules."""
    return _post_order_skipping(module, ())


def _post_order_skipping(root: nn.Module, skip: type[nn.Module] | tuple[type[nn.Module], ...]) -> list[nn.Module]:
    """:func:`_post_order` without the subtrees of ``skip`` modules (sub-models initialized on their own)."""
    out: list[nn.Module] = []
    for child in root.children():
        if not isinstance(child, skip):
            out.extend(_post_order_skipping(child, skip))
    out.append(root)
    return out


_WEIGHTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)


@torch.no_grad()
def _init_base(module: nn.Module, std: float) -> None:
    """``PreTrainedModel._init_weights``: N(0, std) weights, zero biases, unit norms."""
    if isinstance(module, _WEIGHTED):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, _NORMS):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@torch.no_grad()
def _init_bit(backbone: BitBackbone, std: float) -> None:
    """``BitPreTrainedModel._init_weights`` over the BiT model: the base init (its normal draw is then
    overwritten but still consumes the generator), then Kaiming-normal (fan_out, relu) convs."""
    if any(p.is_meta for p in backbone.parameters()):
        return
    for module in _post_order(backbone.bit):
        _init_base(module, std)
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


@torch.no_grad()
def _init_dpt(modules: Sequence[nn.Module], std: float) -> None:
    """``DPTPreTrainedModel._init_weights`` over ``modules`` (BiT excluded: initialized already)."""
    for root in modules:
        for module in _post_order_skipping(root, BitBackbone):
            if any(p.is_meta for p in module.parameters(recurse=False)):
                continue
            _init_base(module, std)
            if isinstance(module, DPTViTHybridEmbeddings):
                nn.init.zeros_(module.cls_token)
                nn.init.zeros_(module.position_embeddings)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


@dataclass
class DepthEstimatorOutput:
    predicted_depth: torch.Tensor


class DPTForDepthEstimation(ConfiguredModel):
    """transformers' hybrid ``DPTForDepthEstimation`` (MiDaS v3 dpt_hybrid): same parameter names, config
    and random init; :meth:`predict_depth` for any input size divisible by the patch size."""

    WEIGHTS_NAME: ClassVar[str] = "model.safetensors"
    #: ``DPTConfig``'s fields with transformers' defaults, except ``is_hybrid`` (transformers: False), which
    #: must be given explicitly (see :meth:`resolve_config`); ``backbone_config`` None = DPT's hybrid BiT.
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "image_size": 384,
        "patch_size": 16,
        "num_channels": 3,
        "is_hybrid": True,
        "qkv_bias": True,
        "backbone_out_indices": (2, 5, 8, 11),
        "readout_type": "project",
        "reassemble_factors": (4, 2, 1, 0.5),
        "neck_hidden_sizes": (96, 192, 384, 768),
        "fusion_hidden_size": 256,
        "head_in_index": -1,
        "use_batch_norm_in_fusion_residual": False,
        "use_bias_in_fusion_residual": None,
        "add_projection": False,
        "use_auxiliary_head": True,
        "auxiliary_loss_weight": 0.4,
        "semantic_loss_ignore_index": 255,
        "semantic_classifier_dropout": 0.1,
        "backbone_featmap_shape": (1, 1024, 24, 24),
        "neck_ignore_stages": (0, 1),
        "backbone_config": None,
        "pooler_output_size": None,
        "pooler_act": "tanh",
        "backbone": None,
        "backbone_kwargs": None,
    }
    #: Not implemented: plain-ViT DPT, the readout types other than "project" (transformers refuses them for
    #: the hybrid too), BatchNorm in the fusion units, the head's extra projection, other hybrid reassemble
    #: layouts, and backbones named instead of configured (timm / hub).
    FIXED: ClassVar[tuple[str, ...]] = (
        "is_hybrid",
        "readout_type",
        "use_batch_norm_in_fusion_residual",
        "add_projection",
        "neck_ignore_stages",
        "backbone",
        "backbone_kwargs",
    )
    #: Metadata, plus the backbone-loading switches that do nothing once ``backbone`` is None.
    IGNORED: ClassVar[tuple[str, ...]] = (*_METADATA, "use_timm_backbone", "use_pretrained_backbone")

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        cfg = self.config
        out_layers = [i for i in range(cfg.num_hidden_layers) if i in list(cfg.backbone_out_indices)[2:]]
        # Construction order = transformers' (the default inits draw from the generator in this order).
        self.dpt = DPTModel(cfg, out_layers)
        _init_dpt([self.dpt], cfg.initializer_range)  # DPTModel.post_init
        self.neck = DPTNeck(cfg)
        self.head = DPTDepthEstimationHead(cfg)
        _init_dpt([self.neck, self.head], cfg.initializer_range)  # DPTForDepthEstimation.post_init
        self.patch_size = _pair(cfg.patch_size)[0]

    @classmethod
    def resolve_config(cls, config: Mapping[str, Any]) -> ModelConfig:
        given = dict(config)
        if "is_hybrid" not in given:  # transformers' default is a plain ViT DPT, which this does not implement
            raise _refuse("DPTForDepthEstimation implements the hybrid DPT only: the config must set is_hybrid=true.")
        if given.get("backbone_kwargs") == {}:
            given["backbone_kwargs"] = None
        resolved = super().resolve_config(given)
        resolved["backbone_config"] = _resolve_bit_config(resolved["backbone_config"])
        for key in ("hidden_act",):
            if resolved[key] not in _ACTIVATIONS:
                raise _refuse(f"DPTForDepthEstimation does not implement {key}={resolved[key]!r}.")
        if resolved.hidden_size % resolved.num_attention_heads:
            raise _refuse(
                f"hidden_size={resolved.hidden_size} is not a multiple of "
                f"num_attention_heads={resolved.num_attention_heads}."
            )
        stages = len(resolved.neck_hidden_sizes)
        layers = {i for i in list(resolved.backbone_out_indices)[2:] if 0 <= i < resolved.num_hidden_layers}
        if stages < 3 or len(layers) + 2 != stages or len(resolved.reassemble_factors) != stages:
            raise _refuse(
                f"DPT-hybrid needs 2 BiT maps + one encoder layer per further neck stage: backbone_out_indices="
                f"{list(resolved.backbone_out_indices)}, neck_hidden_sizes={list(resolved.neck_hidden_sizes)}, "
                f"reassemble_factors={list(resolved.reassemble_factors)} do not fit."
            )
        return resolved

    def predict_depth(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Relative inverse depth (B, H, W) for any H, W divisible by the patch size."""
        _, _, h, w = pixel_values.shape
        if h % self.patch_size or w % self.patch_size:
            raise SvEngineError(
                f"Depth input {h}×{w} is not a multiple of the DPT patch size {self.patch_size}.",
                "Resize the image to multiples of 64 first (resize_image).",
            )
        hidden = self.dpt(pixel_values)
        return self.head(self.neck(hidden, h // self.patch_size, w // self.patch_size))

    def forward(self, pixel_values: torch.Tensor) -> DepthEstimatorOutput:
        """transformers' ``forward`` (inference): the configured image size only."""
        h, w = pixel_values.shape[-2:]
        if (h, w) != self.dpt.embeddings.image_size:
            raise SvEngineError(
                f"Input image size ({h}*{w}) doesn't match model {self.dpt.embeddings.image_size}.",
                "Use predict_depth for other sizes.",
            )
        return DepthEstimatorOutput(predicted_depth=self.predict_depth(pixel_values))
