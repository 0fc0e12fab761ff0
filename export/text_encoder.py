"""CLIP text encoder: token ids (int32, 77) -> last hidden state (the UNet's cross-attention context)."""

from __future__ import annotations

import torch
from sv_engine.export.spec import DEFAULT_SHAPES, ExportSpec, ShapeRange
from torch import nn


class _TextEncoderWrapper(nn.Module):
    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor]:
        # int32 in the graph (TensorRT prefers it), int64 for the embedding gather.
        out = self.text_encoder(input_ids=input_ids.long(), return_dict=False)
        return (out[0],)


class TextEncoderSpec(ExportSpec):
    """``input_ids`` (B, 77) int32 -> ``text_embeddings`` (B, 77, D)."""

    name = "text_encoder"

    def __init__(
        self, text_encoder: nn.Module, precision: str = "fp32", shapes: ShapeRange = DEFAULT_SHAPES, device="cpu"
    ) -> None:
        super().__init__(precision, shapes, device)
        self.text_encoder = text_encoder
        cfg = text_encoder.config
        self.seq_len = int(cfg.max_position_embeddings)
        self.hidden = int(cfg.hidden_size)
        self.vocab = int(cfg.vocab_size)

    def build_module(self) -> nn.Module:
        return _TextEncoderWrapper(self.text_encoder)

    def input_names(self):
        return ["input_ids"]

    def output_names(self):
        return ["text_embeddings"]

    def input_shapes(self):
        return {"input_ids": ["B", self.seq_len]}

    def output_shapes(self):
        return {"text_embeddings": ["B", self.seq_len, self.hidden]}

    def symbol_ranges(self):
        return {"B": self.shapes.batch}

    def input_dtypes(self):
        return {"input_ids": torch.int32}

    def sample_input(self, name, shape, dtype, gen):
        ids = torch.randint(0, self.vocab - 2, shape, generator=gen)
        ids[:, 0] = self.vocab - 2  # BOS
        ids[:, -1] = self.vocab - 1  # EOS (pooled output reads the argmax position)
        return ids.to(dtype)
