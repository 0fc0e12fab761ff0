"""Tokenizer ids (vs CLIP's own SimpleTokenizer algorithm) and tiny component shapes."""

from __future__ import annotations

import gzip
import html

import pytest
import regex as re
import torch
from sv_engine.stablevideo.models.components import SDComponents
from sv_engine.stablevideo.models.tiny import build_tiny_components
from sv_engine.stablevideo.models.tokenizer import bpe_vocab_path, bytes_to_unicode, load_clip_tokenizer


class ClipSimpleTokenizer:
    """CLIP's ``SimpleTokenizer`` (openai/CLIP clip/simple_tokenizer.py), re-typed as the test oracle."""

    def __init__(self, bpe_path: str) -> None:
        self.byte_encoder = bytes_to_unicode()
        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1 : 49152 - 256 - 2 + 1]]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = dict(zip(vocab, range(len(vocab)), strict=False))
        self.bpe_ranks = dict(zip(merges, range(len(merges)), strict=False))
        self.pat = re.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            re.IGNORECASE,
        )

    def bpe(self, token: str) -> str:
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = {(a, b) for a, b in zip(word, word[1:], strict=False)}
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                    new_word.extend(word[i:j])
                    i = j
                except ValueError:
                    new_word.extend(word[i:])
                    break
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = {(a, b) for a, b in zip(word, word[1:], strict=False)}
        return " ".join(word)

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(text)).strip()
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for token in re.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return [49406, *ids, 49407]


SENTENCES = [
    "a photo of a cat",
    "a picture of a white swan, best quality, extremely detailed, no background",
    "lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, worst quality, low quality",
    "Van Gogh's starry night style, 4k  HDR!!",
    "longbody, oil painting of a desert at sunset",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


def test_known_ids(tokenizer):
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 49407


@pytest.mark.parametrize("text", SENTENCES)
def test_matches_clip_simple_tokenizer(tokenizer, text):
    oracle = ClipSimpleTokenizer(str(bpe_vocab_path()))
    assert tokenizer(text).input_ids == oracle.encode(text)


def test_padding_to_77(tokenizer):
    ids = tokenizer(["a cat"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    assert ids[0, :4].tolist() == [49406, 320, 2368, 49407] and (ids[0, 4:] == 49407).all()


def test_folder_round_trip(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    again = load_clip_tokenizer(tmp_path)
    assert again(SENTENCES[1]).input_ids == tokenizer(SENTENCES[1]).input_ids
    assert again.model_max_length == 77


@pytest.fixture(scope="module")
def tiny() -> SDComponents:
    return build_tiny_components(seed=0)


def test_tiny_is_deterministic(tiny):
    again = build_tiny_components(seed=0)
    for name, module in tiny.modules().items():
        other = again.modules()[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value, other[key]), (name, key)
    assert tiny.is_random and tiny.latent_factor == 8 and tiny.vae_scale == 0.18215


@torch.no_grad()
def test_tiny_forward_shapes(tiny):
    ids = tiny.tokenizer(["a cat", ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    emb = tiny.text_encoder(ids)[0]
    assert emb.shape == (2, 77, tiny.text_encoder.config.hidden_size)
    latents = torch.randn(2, 4, 8, 8)
    control = torch.rand(2, 3, 64, 64)
    t = torch.tensor([501, 501])
    eps_plain = tiny.unet(latents, t, encoder_hidden_states=emb, return_dict=False)[0]
    for cn in (tiny.controlnet_canny, tiny.controlnet_depth):
        down, mid = cn(
            latents, t, encoder_hidden_states=emb, controlnet_cond=control, conditioning_scale=1.0, return_dict=False
        )
        eps = tiny.unet(
            latents,
            t,
            encoder_hidden_states=emb,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
        assert eps.shape == latents.shape
        assert (eps - eps_plain).abs().max() > 1e-3  # the zero convs were randomised
    # the two ControlNets are independent random models, not copies of the UNet
    a = tiny.controlnet_canny.state_dict()["conv_in.weight"]
    assert not torch.equal(a, tiny.controlnet_depth.state_dict()["conv_in.weight"])
    assert not torch.equal(a, tiny.unet.state_dict()["conv_in.weight"])
    posterior = tiny.vae.encode(torch.rand(1, 3, 64, 96) * 2 - 1).latent_dist
    assert posterior.mean.shape == (1, 4, 8, 12)
    assert tiny.vae.decode(posterior.mean).sample.shape == (1, 3, 64, 96)
    depth = tiny.depth_model(pixel_values=torch.rand(1, 3, 64, 64)).predicted_depth
    assert depth.shape == (1, 64, 64)


def test_to_dtype(tiny):
    comps = build_tiny_components(seed=1)
    comps.to("cpu", torch.float64)
    assert comps.dtype == torch.float64 and comps.device.type == "cpu"
    assert next(comps.depth_model.parameters()).dtype == torch.float64


def test_full_size_configs_on_meta():
    from sv_engine.stablevideo.models.tiny import build_random_components

    comps = build_random_components(seed=0, size="full", device="meta")
    counts = {k: round(v / 1e6, 1) for k, v in comps.num_parameters().items()}
    assert counts == {
        "text_encoder": 123.1,
        "unet": 859.5,
        "controlnet_canny": 361.3,
        "controlnet_depth": 361.3,
        "vae": 83.7,
        "depth_model": 122.4,
    }
    assert comps.unet.config.cross_attention_dim == 768 and comps.vae.config.scaling_factor == 0.18215
