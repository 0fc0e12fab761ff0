"""What every network here shares: a config read from a diffusers / transformers ``config.json``,
checked against the options the module implements, and the folder format (config + safetensors)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from sv_engine.errors import SvEngineError

M = TypeVar("M", bound="ConfiguredModel")

_SD15_FIX = "Use a Stable Diffusion 1.5-family checkpoint (the configs in sv_engine/stablevideo/assets/configs)."


#: The fields every transformers config carries (metadata, loading options, the heads' and generation's
#: options of its base class, in v4 and v5 files) that a network here neither needs nor refuses.
TRANSFORMERS_METADATA: tuple[str, ...] = (
    "architectures",
    "model_type",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "is_decoder",
    "add_cross_attention",
    "cross_attention_hidden_size",
    "tie_encoder_decoder",
    "tie_word_embeddings",
    "id2label",
    "label2id",
    "num_labels",
    "problem_type",
    "finetuning_task",
    "task_specific_params",
    "tokenizer_class",
    "prefix",
    "sep_token_id",
    "decoder_start_token_id",
    "output_scores",
    "return_dict_in_generate",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
)


class ModelConfig(dict):
    """A model's config: a dict (it is written back as ``config.json``) whose keys read as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class ConfiguredModel(nn.Module):
    """A network built from a config dict in its library's format.

    Subclasses declare ``DEFAULTS`` (every key the library's config may carry, with the library's default),
    ``FIXED`` (keys whose value must stay the default because the module does not implement the
    alternative: a config asking for another is refused with the key's name, never silently ignored) and
    ``IGNORED`` (the library's metadata keys, e.g. ``architectures``, accepted and dropped).
    ``WEIGHTS_NAME`` is the library's weight file name inside a model folder.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = {}
    FIXED: ClassVar[tuple[str, ...]] = ()
    IGNORED: ClassVar[tuple[str, ...]] = ()
    WEIGHTS_NAME: ClassVar[str] = "model.safetensors"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.config = self.resolve_config(config)

    @classmethod
    def resolve_config(cls, config: Mapping[str, Any]) -> ModelConfig:
        """``config`` (metadata keys starting with ``_`` dropped) over ``DEFAULTS``; raises for unknown
        keys and for a value of a ``FIXED`` key this module does not implement."""
        given = {k: v for k, v in dict(config).items() if not k.startswith("_") and k not in cls.IGNORED}
        unknown = sorted(set(given) - set(cls.DEFAULTS))
        if unknown:
            raise SvEngineError(
                f"{cls.__name__} config has options it does not implement: {', '.join(unknown)}.",
                _SD15_FIX,
            )
        resolved = ModelConfig({**cls.DEFAULTS, **given})
        for key in cls.FIXED:
            if _normalized(resolved[key]) != _normalized(cls.DEFAULTS[key]):
                raise SvEngineError(
                    f"{cls.__name__} does not implement {key}={resolved[key]!r} (only {cls.DEFAULTS[key]!r}).",
                    _SD15_FIX,
                )
        return resolved

    @classmethod
    def from_config(cls: type[M], config: Mapping[str, Any], **overrides: Any) -> M:
        return cls({**dict(config), **overrides})

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def save_pretrained(self, folder: str | os.PathLike, safe_serialization: bool = True) -> None:
        """``config.json`` + the weights as ``WEIGHTS_NAME`` (safetensors), the library's own layout
        (``safe_serialization=False``: a pickled ``.bin`` under the library's name for it)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(
            json.dumps({"_class_name": type(self).__name__, **self.config}, indent=2, sort_keys=True)
        )
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(tensors, str(out / self.WEIGHTS_NAME))
        else:
            torch.save(tensors, out / _BIN_NAMES[self.WEIGHTS_NAME])


#: The pickled weight file of each library's safetensors name.
_BIN_NAMES = {
    "model.safetensors": "pytorch_model.bin",
    "diffusion_pytorch_model.safetensors": "diffusion_pytorch_model.bin",
}


def _normalized(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
