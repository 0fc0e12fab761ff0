"""The CLIP tokenizer of SD 1.5, built offline from the packaged BPE vocabulary.

``bpe_simple_vocab_16e6.txt.gz`` (MIT, from openai/CLIP via the open_clip wheel; see
``stablevideo/assets/README.md``) is turned into ``vocab.json`` + ``merges.txt`` exactly as CLIP's
``SimpleTokenizer`` builds its encoder, and handed to :class:`~.clip_tokenizer.CLIPTokenizer`.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from sv_engine.errors import SvEngineError

if TYPE_CHECKING:
    from .clip_tokenizer import CLIPTokenizer

logger = logging.getLogger(__name__)

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
#: Number of merges CLIP uses: 49152 - 256 - 2 (+1 for the header line skipped below).
NUM_MERGES = 49152 - 256 - 2


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=False))


def bpe_vocab_path() -> Path:
    """Path of the packaged ``bpe_simple_vocab_16e6.txt.gz``."""
    path = Path(str(resources.files("sv_engine.stablevideo.assets").joinpath(BPE_FILE)))
    if not path.is_file():
        raise SvEngineError(
            f"The CLIP BPE vocabulary {path} is missing.",
            "Reinstall sv-engine so stablevideo/assets/bpe_simple_vocab_16e6.txt.gz is present.",
        )
    return path


def read_merges(bpe_path: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """The first ``49152 - 256 - 2`` merges of the BPE file (header line skipped), as CLIP reads them."""
    path = Path(bpe_path) if bpe_path is not None else bpe_vocab_path()
    try:
        lines = gzip.open(path).read().decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise SvEngineError(
            f"Cannot read the CLIP BPE vocabulary {path}: {exc}.", "Reinstall sv-engine to restore the packaged file."
        ) from exc
    merges = lines[1 : NUM_MERGES + 1]
    return [tuple(m.split()) for m in merges]  # type: ignore[misc]


def build_clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's encoder: bytes, bytes + ``</w>``, joined merges, then the two special tokens."""
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges)
    vocab.extend([BOS_TOKEN, EOS_TOKEN])
    return {token: i for i, token in enumerate(vocab)}


def write_vocab_files(out_dir: str | os.PathLike, bpe_path: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` (the Hugging Face CLIP tokenizer files) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merges = read_merges(bpe_path)
    vocab = build_clip_vocab(merges)
    if len(vocab) != VOCAB_SIZE:
        raise SvEngineError(
            f"The CLIP vocabulary has {len(vocab)} tokens, expected {VOCAB_SIZE}.",
            "The BPE file is damaged: reinstall sv-engine.",
        )
    vocab_file, merges_file = out / "vocab.json", out / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


@functools.lru_cache(maxsize=1)
def _packaged_vocab() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    merges = read_merges()
    vocab = build_clip_vocab(merges)
    if len(vocab) != VOCAB_SIZE:
        raise SvEngineError(
            f"The CLIP vocabulary has {len(vocab)} tokens, expected {VOCAB_SIZE}.",
            "The BPE file is damaged: reinstall sv-engine.",
        )
    return vocab, tuple(merges)


def load_clip_tokenizer(tokenizer_dir: str | os.PathLike | None = None) -> CLIPTokenizer:
    """A CLIP tokenizer equal to SD 1.5's (``openai/clip-vit-large-patch14``; :mod:`.clip_tokenizer`, ids
    equal to transformers' ``CLIPTokenizer``, without importing transformers).

    Args:
        tokenizer_dir: an existing Hugging Face CLIP tokenizer folder (``tokenizer.json`` or
            ``vocab.json`` + ``merges.txt``) to load instead of the packaged vocabulary.

    The vocabulary and merges are derived in memory from the packaged BPE file (nothing is
    downloaded); :func:`write_vocab_files` writes them as ``vocab.json`` / ``merges.txt``.
    """
    from .clip_tokenizer import CLIPTokenizer  # here: clip_tokenizer imports this module

    if tokenizer_dir is not None:
        folder = Path(tokenizer_dir)
        has_files = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
        if not (has_files or (folder / "tokenizer.json").is_file()):
            raise SvEngineError(
                f"Tokenizer folder {folder} has neither tokenizer.json nor vocab.json + merges.txt.",
                "Point to a CLIP tokenizer folder or omit it to use the packaged vocabulary.",
            )
        return CLIPTokenizer.from_pretrained(folder)
    vocab, merges = _packaged_vocab()
    return CLIPTokenizer(vocab, merges)
