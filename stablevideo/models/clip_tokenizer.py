"""CLIP's BPE tokenizer without transformers / tokenizers: the ids of ``transformers.CLIPTokenizer`` 5.x.

transformers 5's ``CLIPTokenizer`` is the ``tokenizers``-backed one (there is no Python "slow" class any
more, and it never runs ftfy or ``html.unescape``). Its pipeline, replayed here step by step:

1. the special tokens (``<|startoftext|>``, ``<|endoftext|>``, and the unk / pad tokens) are cut out of the
   raw text first, matched literally (they are not normalized);
2. each piece between them is normalized: NFC, every whitespace run → one space, lower case (character by
   character: Rust's ``char::to_lowercase``, so a final ``Σ`` becomes ``σ``, not ``ς`` as ``str.lower`` does);
3. split with CLIP's pattern (``'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``), the rest
   (whitespace) dropped, then with byte-level's GPT-2 pattern (which splits only ``<|...|>``-shaped pieces);
4. each piece's UTF-8 bytes mapped through CLIP's byte → unicode table and BPE-merged, ``</w>`` on the
   last symbol;
5. ``bos`` + ids + ``eos`` (RobertaProcessing), truncation keeping both, padding on the right.

Known difference: the Unicode tables. ``tokenizers`` uses Oniguruma's and Rust's (Unicode 15.0-era), this
module Python's ``regex`` / ``str.lower`` / ``unicodedata``: letters, digits or case pairs assigned in
later Unicode versions (e.g. Garay, Tulu-Tigalari) may split or lower-case differently. Whitespace
matches exactly.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import regex

from sv_engine.errors import SvEngineError

from .tokenizer import BOS_TOKEN, EOS_TOKEN, MODEL_MAX_LENGTH, _packaged_vocab, bytes_to_unicode

logger = logging.getLogger(__name__)

#: CLIP's split pattern, as transformers' CLIPTokenizer hands it to ``tokenizers`` (case folding is the
#: normalizer's job there, so no IGNORECASE).
_SPLIT_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
#: The GPT-2 split that ``tokenizers``' ByteLevel step runs on each piece. It only ever splits the two
#: special-token-shaped pieces (``<|endoftext|>`` typed in another case, lowered by the normalizer): every
#: other piece is one class of characters, which GPT-2's pattern keeps whole.
_BYTE_LEVEL_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
_WHITESPACE = regex.compile(r"\s+")
_END_OF_WORD = "</w>"
_MERGES_HEADER = "#version: 0.2"
#: Lengths as transformers treats them: no limit unless one is given (its VERY_LARGE_INTEGER).
_NO_LIMIT = int(1e30)


class BatchEncoding(dict):
    """transformers' ``BatchEncoding`` as far as callers use it: a dict whose keys read as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: Any) -> BatchEncoding:
        """Move the tensors (``return_tensors="pt"``) to ``device``."""
        return BatchEncoding({k: v.to(device) if hasattr(v, "to") else v for k, v in self.items()})


class CLIPTokenizer:
    """CLIP's tokenizer with transformers' ``CLIPTokenizer`` call signature and ids.

    Args:
        vocab: token → id.
        merges: BPE merges by rank: ``(a, b)`` pairs, ``[a, b]`` lists or ``"a b"`` strings.
        unk_token, bos_token, eos_token, pad_token: the special tokens (all in ``vocab``).
        model_max_length: the length ``truncation=True`` / ``padding="max_length"`` use by default.
    """

    vocab_files_names: ClassVar[dict[str, str]] = {
        "vocab_file": "vocab.json",
        "merges_file": "merges.txt",
        "tokenizer_file": "tokenizer.json",
    }
    model_input_names: ClassVar[list[str]] = ["input_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Iterable[Sequence[str] | str],
        unk_token: str = EOS_TOKEN,
        bos_token: str = BOS_TOKEN,
        eos_token: str = EOS_TOKEN,
        pad_token: str = EOS_TOKEN,
        model_max_length: int = MODEL_MAX_LENGTH,
    ) -> None:
        self.encoder: dict[str, int] = dict(vocab)
        self.decoder: dict[int, str] = {i: t for t, i in self.encoder.items()}
        pairs = [_merge_pair(m) for m in merges]
        self.bpe_ranks: dict[tuple[str, str], int] = {p: i for i, p in reversed(list(enumerate(pairs)))}
        self.unk_token, self.bos_token, self.eos_token, self.pad_token = unk_token, bos_token, eos_token, pad_token
        self.model_max_length = int(model_max_length)
        for name, token in (("unk", unk_token), ("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
            if token not in self.encoder:
                raise SvEngineError(
                    f"The CLIP tokenizer's {name} token {token!r} is not in its vocabulary.",
                    "Use a CLIP tokenizer folder whose vocabulary has the special tokens.",
                )
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        specials = sorted({bos_token, eos_token, unk_token, pad_token}, key=len, reverse=True)
        # Longest first: a special token that contains another is matched whole, as tokenizers' matcher does.
        self._special_split = regex.compile("(" + "|".join(regex.escape(t) for t in specials) + ")")
        self._cache: dict[str, list[int]] = {}

    # -- ids -------------------------------------------------------------------------------------------

    @property
    def unk_token_id(self) -> int:
        return self.encoder[self.unk_token]

    @property
    def bos_token_id(self) -> int:
        return self.encoder[self.bos_token]

    @property
    def eos_token_id(self) -> int:
        return self.encoder[self.eos_token]

    @property
    def pad_token_id(self) -> int:
        return self.encoder[self.pad_token]

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys([self.bos_token, self.eos_token, self.unk_token, self.pad_token]))

    @property
    def all_special_ids(self) -> list[int]:
        return [self.encoder[t] for t in self.all_special_tokens]

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def __len__(self) -> int:
        return len(self.encoder)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.encoder)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self.encoder.get(tokens, self.unk_token_id)
        return [self.encoder.get(t, self.unk_token_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self.decoder[ids]
        return [self.decoder[int(i)] for i in ids]

    # -- encoding --------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` (no bos / eos added)."""
        return self.convert_ids_to_tokens(self._encode(text))  # type: ignore[return-value]

    def encode(
        self,
        text: str,
        add_special_tokens: bool = True,
        truncation: bool | str | None = None,
        max_length: int | None = None,
    ) -> list[int]:
        """The ids of one text, as ``tokenizer.encode`` gives them."""
        return self._finish(self._encode(text), add_special_tokens, *self._truncation(truncation, max_length))

    def __call__(
        self,
        text: str | Sequence[str],
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
        return_attention_mask: bool = True,
    ) -> BatchEncoding:
        """``input_ids`` (and ``attention_mask``) of one text or a list of texts.

        ``padding``: ``False`` / ``"do_not_pad"``, ``True`` / ``"longest"``, ``"max_length"`` (``max_length``,
        else ``model_max_length``). ``truncation=True`` cuts the text's tokens so that bos + tokens + eos fit
        ``max_length`` (else ``model_max_length``). ``return_tensors``: ``None`` (lists), ``"pt"`` or ``"np"``.
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise SvEngineError("The CLIP tokenizer takes a string or a list of strings.", "Pass the prompts as text.")
        truncate, limit = self._truncation(truncation, max_length)
        ids = [self._finish(self._encode(t), add_special_tokens, truncate, limit) for t in texts]
        target = self._pad_length(padding, max_length, ids)
        masks = [[1] * len(row) + [0] * max(0, target - len(row)) for row in ids]
        ids = [row + [self.pad_token_id] * max(0, target - len(row)) for row in ids]
        out = {"input_ids": ids}
        if return_attention_mask:
            out["attention_mask"] = masks
        if return_tensors is None:
            return BatchEncoding({k: v[0] if single else v for k, v in out.items()})
        if len({len(row) for row in ids}) > 1:
            raise SvEngineError(
                "The prompts tokenize to different lengths and padding is off, so they do not fit one tensor.",
                'Pass padding="max_length" (or padding=True).',
            )
        return BatchEncoding({k: _as_tensor(v, return_tensors) for k, v in out.items()})

    def _truncation(self, truncation: bool | str | None, max_length: int | None) -> tuple[bool, int]:
        if truncation in (None, False, "do_not_truncate"):
            return False, _NO_LIMIT
        if truncation not in (True, "longest_first", "only_first"):
            raise SvEngineError(
                f"Unknown truncation {truncation!r}.", "Use truncation=True, 'longest_first' or 'only_first'."
            )
        return True, self.model_max_length if max_length is None else int(max_length)

    def _pad_length(self, padding: bool | str, max_length: int | None, ids: list[list[int]]) -> int:
        if padding in (False, None, "do_not_pad"):
            return 0
        if padding in (True, "longest"):
            return max((len(row) for row in ids), default=0)
        if padding == "max_length":
            return self.model_max_length if max_length is None else int(max_length)
        raise SvEngineError(f"Unknown padding {padding!r}.", "Use padding=False, True, 'longest' or 'max_length'.")

    def _finish(self, ids: list[int], add_special_tokens: bool, truncate: bool, limit: int) -> list[int]:
        if not add_special_tokens:
            return ids[:limit] if truncate else ids
        if truncate:
            ids = ids[: max(0, limit - 2)]
        return [self.bos_token_id, *ids, self.eos_token_id]

    def _encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(self._special_split.split(text)):
            if i % 2:  # a special token, matched on the raw text
                ids.append(self.encoder[part])
            elif part:
                for piece in _SPLIT_PATTERN.findall(_normalize(part)):
                    if piece.startswith("<|"):
                        for sub in _BYTE_LEVEL_SPLIT.findall(piece):
                            ids.extend(self._bpe_ids(sub))
                    else:
                        ids.extend(self._bpe_ids(piece))
        return ids

    def _bpe_ids(self, piece: str) -> list[int]:
        cached = self._cache.get(piece)
        if cached is None:
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            unk = self.unk_token_id
            cached = [self.encoder.get(t, unk) for t in self._bpe(word)]
            if len(self._cache) < 100_000:
                self._cache[piece] = cached
        return cached

    def _bpe(self, token: str) -> list[str]:
        """BPE of one byte-mapped word, ``</w>`` on its last symbol, lowest-ranked merge first."""
        word = [*token[:-1], token[-1] + _END_OF_WORD]
        ranks = self.bpe_ranks
        while len(word) > 1:
            best, best_rank = None, None
            for pair in zip(word, word[1:], strict=False):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = pair, rank
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    # -- decoding --------------------------------------------------------------------------------------

    def decode(self, ids: Sequence[int] | Any, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` as transformers' CLIP decodes it: the tokens joined, mapped back to UTF-8 bytes,
        each ``</w>`` a space, stripped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        text = "".join(self.decoder.get(int(i), self.unk_token) for i in ids if int(i) not in skip)
        raw = b"".join(bytes([self.byte_decoder[c]]) if c in self.byte_decoder else c.encode("utf-8") for c in text)
        return raw.decode("utf-8", errors="replace").replace(_END_OF_WORD, " ").strip()

    def batch_decode(self, sequences: Iterable[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in sequences]

    # -- files -----------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **overrides: Any) -> CLIPTokenizer:
        """A Hugging Face CLIP tokenizer folder: ``tokenizer.json`` (preferred, as transformers does), else
        ``vocab.json`` + ``merges.txt``; special tokens and ``model_max_length`` from ``tokenizer_config.json``
        / ``special_tokens_map.json`` when present (``model_max_length`` 77 when neither says)."""
        path = Path(folder)
        try:
            if (path / "tokenizer.json").is_file():
                vocab, merges, added = _read_tokenizer_json(path / "tokenizer.json")
            elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
                merges, added = _read_merges_txt(path / "merges.txt"), {}
            else:
                raise SvEngineError(
                    f"Tokenizer folder {path} has neither tokenizer.json nor vocab.json + merges.txt.",
                    "Point to a CLIP tokenizer folder or omit it to use the packaged vocabulary.",
                )
            vocab = {**vocab, **added}
            settings: dict[str, Any] = {}
            for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins, as in transformers
                if (path / name).is_file():
                    settings.update(json.loads((path / name).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SvEngineError(
                f"Cannot load the tokenizer in {path}: {exc}.",
                "Repair the folder or delete it to fall back to the packaged vocabulary.",
            ) from exc
        kwargs: dict[str, Any] = {}
        for key in ("unk_token", "bos_token", "eos_token", "pad_token"):
            value = settings.get(key)
            if isinstance(value, Mapping):  # an AddedToken as older transformers serialize it
                value = value.get("content")
            if isinstance(value, str):
                kwargs[key] = value
        length = settings.get("model_max_length")
        if isinstance(length, (int, float)) and 0 < length <= 10 * MODEL_MAX_LENGTH:
            kwargs["model_max_length"] = int(length)
        kwargs.update(overrides)
        return cls(vocab, merges, **kwargs)

    @classmethod
    def packaged(cls) -> CLIPTokenizer:
        """SD 1.5's tokenizer (``openai/clip-vit-large-patch14``) from the packaged BPE file."""
        vocab, merges = _packaged_vocab()
        return cls(vocab, merges)

    def save_pretrained(self, folder: str | os.PathLike, **_: Any) -> tuple[str, ...]:
        """Write ``vocab.json``, ``merges.txt``, ``tokenizer.json``, ``tokenizer_config.json`` and
        ``special_tokens_map.json``: loadable by transformers' ``CLIPTokenizer.from_pretrained`` (4.x and 5.x)
        and by :meth:`from_pretrained`."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        merges = [f"{a} {b}" for (a, b), _ in sorted(self.bpe_ranks.items(), key=lambda kv: kv[1])]
        specials = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.unk_token,
            "pad_token": self.pad_token,
        }
        files = {
            "vocab.json": json.dumps(self.encoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
            "merges.txt": "\n".join([_MERGES_HEADER, *merges]) + "\n",
            "tokenizer.json": json.dumps(self._tokenizer_json(merges), indent=2, ensure_ascii=False),
            "tokenizer_config.json": json.dumps(
                {
                    "backend": "tokenizers",
                    **specials,
                    "model_max_length": self.model_max_length,
                    "tokenizer_class": "CLIPTokenizer",
                    "clean_up_tokenization_spaces": False,
                },
                indent=2,
                sort_keys=True,
            )
            + "\n",
            "special_tokens_map.json": json.dumps(specials, indent=2, sort_keys=True) + "\n",
        }
        for name, text in files.items():
            (out / name).write_text(text, encoding="utf-8")
        return tuple(str(out / name) for name in files)

    def _tokenizer_json(self, merges: list[str]) -> dict[str, Any]:
        """The ``tokenizers`` JSON transformers 5's CLIPTokenizer writes (same normalizer, splits, BPE)."""
        added = [
            {
                "id": self.encoder[token],
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for token in sorted(set(self.all_special_tokens), key=self.encoder.__getitem__)
        ]
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": {
                "type": "Sequence",
                "normalizers": [
                    {"type": "NFC"},
                    {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
                    {"type": "Lowercase"},
                ],
            },
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {
                        "type": "Split",
                        "pattern": {"Regex": _SPLIT_PATTERN.pattern},
                        "behavior": "Removed",
                        "invert": True,
                    },
                    byte_level,
                ],
            },
            "post_processor": {
                "type": "RobertaProcessing",
                "sep": [self.eos_token, self.eos_token_id],
                "cls": [self.bos_token, self.bos_token_id],
                "trim_offsets": False,
                "add_prefix_space": False,
            },
            "decoder": {**byte_level, "add_prefix_space": True},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": self.unk_token,
                "continuing_subword_prefix": "",
                "end_of_word_suffix": _END_OF_WORD,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": self.encoder,
                "merges": [m.split(" ") for m in merges],
            },
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, model_max_length={self.model_max_length})"


def _normalize(text: str) -> str:
    text = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text))
    # str.lower applies the final-sigma rule; tokenizers lowers each character on its own.
    return "".join(c.lower() for c in text) if "\u03a3" in text else text.lower()


def _merge_pair(merge: Sequence[str] | str) -> tuple[str, str]:
    parts = merge.split(" ") if isinstance(merge, str) else list(merge)
    if len(parts) != 2:
        raise SvEngineError(f"A BPE merge must join two symbols, got {merge!r}.", "Repair the tokenizer's merges.")
    return parts[0], parts[1]


def _read_merges_txt(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    return [_merge_pair(line) for line in lines if line.strip()]


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]], dict[str, int]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type", "BPE") != "BPE" or model.get("end_of_word_suffix") not in (None, _END_OF_WORD):
        raise SvEngineError(
            f"{path} is not a CLIP BPE tokenizer (model {model.get('type')!r}, "
            f"end_of_word_suffix {model.get('end_of_word_suffix')!r}).",
            "Use a CLIP tokenizer folder (e.g. openai/clip-vit-large-patch14's).",
        )
    vocab = {str(k): int(v) for k, v in model["vocab"].items()}
    merges = [_merge_pair(m) for m in model["merges"]]
    added = {str(t["content"]): int(t["id"]) for t in data.get("added_tokens") or []}
    return vocab, merges, added


def _as_tensor(rows: list[list[int]], kind: str) -> Any:
    if kind == "pt":
        import torch

        return torch.tensor(rows, dtype=torch.int64)
    if kind == "np":
        import numpy as np

        return np.asarray(rows, dtype=np.int64)
    raise SvEngineError(f"Unknown return_tensors {kind!r}.", "Use return_tensors='pt', 'np' or None.")


__all__ = ["BatchEncoding", "CLIPTokenizer"]
