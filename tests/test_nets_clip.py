"""CLIP's text tower and tokenizer without transformers, checked against transformers itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from requires import import_or_skip
from sv_engine.stablevideo.models.clip_tokenizer import CLIPTokenizer
from sv_engine.stablevideo.models.nets.clip_text import CLIPTextModel
from sv_engine.stablevideo.models.tiny import TINY_TEXT_CONFIG, load_config
from sv_engine.stablevideo.models.tokenizer import _packaged_vocab, load_clip_tokenizer

from sv_engine.errors import SvEngineError

transformers = import_or_skip("transformers")

BOS, EOS = 49406, 49407


def reference_model(config: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return transformers.CLIPTextModel(transformers.CLIPTextConfig(**config))


def ours_key(key: str) -> str:
    """transformers 5 keys the tower without ``text_model.``; SD 1.5's checkpoints (and this module) with it."""
    return f"text_model.{key}"


# -- the model --------------------------------------------------------------------------------------------


def test_random_init_equals_transformers_bit_for_bit() -> None:
    ref = reference_model(TINY_TEXT_CONFIG, seed=123)
    after_ref = torch.rand(4)
    torch.manual_seed(123)
    ours = CLIPTextModel(TINY_TEXT_CONFIG)
    after_ours = torch.rand(4)
    ref_sd, ours_sd = ref.state_dict(), ours.state_dict()
    assert list(ours_sd) == [ours_key(k) for k in ref_sd]
    for key, value in ref_sd.items():
        assert ours_sd[ours_key(key)].shape == value.shape, key
        assert torch.equal(ours_sd[ours_key(key)], value), key
    assert torch.equal(after_ours, after_ref)  # the same number of draws: later models' values do not shift


def _ids(batch: int = 3, seq: int = 77) -> torch.Tensor:
    ids = torch.randint(0, BOS, (batch, seq), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = BOS
    ids[0, 9:] = EOS  # a short prompt, padded with EOS: the first EOS pools
    ids[1, seq - 1] = EOS  # a full-length prompt
    ids[2, 30] = EOS  # EOS inside, other tokens after it
    ids[2, 50] = EOS
    return ids


@pytest.mark.parametrize("eos_token_id", [EOS, 2])  # 2: transformers' legacy argmax pooling
def test_outputs_equal_transformers(eos_token_id: int) -> None:
    config = {**TINY_TEXT_CONFIG, "eos_token_id": eos_token_id}
    ref = reference_model(config).eval()
    ours = CLIPTextModel(config).eval()
    ours.load_state_dict({ours_key(k): v for k, v in ref.state_dict().items()}, strict=True)
    ids = _ids()
    with torch.no_grad():
        expected, got = ref(input_ids=ids), ours(input_ids=ids)
    # Same maths in fp32 (both run SDPA with a causal mask on CPU): only summation order may differ.
    torch.testing.assert_close(got[0], expected.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, rtol=1e-5, atol=1e-5)
    assert got[0].shape == (3, 77, TINY_TEXT_CONFIG["hidden_size"])
    plain = ours(input_ids=ids, return_dict=False)
    assert type(plain) is tuple and len(plain) == 2


def test_hidden_states_and_padding_mask_equal_transformers() -> None:
    ref = reference_model(TINY_TEXT_CONFIG).eval()
    ours = CLIPTextModel(TINY_TEXT_CONFIG).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # transformers 5's own layout loads too
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, 12:] = 0
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        got = ours(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, rtol=1e-5, atol=1e-5)
    assert len(got.hidden_states) == len(expected.hidden_states)
    for a, b in zip(got.hidden_states, expected.hidden_states, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_checkpoints_with_or_without_position_ids_load_strictly(tmp_path: Path) -> None:
    ours = CLIPTextModel(TINY_TEXT_CONFIG)
    sd = ours.state_dict()
    assert not any(k.endswith("position_ids") for k in sd)  # non-persistent in transformers too
    old = {**sd, "text_model.embeddings.position_ids": torch.arange(77)[None]}  # transformers < 4.31 files
    with torch.device("meta"):
        fresh = CLIPTextModel(TINY_TEXT_CONFIG)
    fresh.load_state_dict(old, strict=True, assign=True)
    assert not any(t.is_meta for t in [*fresh.parameters(), *fresh.buffers()])  # nothing left to build
    ours.save_pretrained(tmp_path)
    loaded = transformers.CLIPTextModel.from_pretrained(tmp_path).eval()  # our folder, transformers' loader
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).last_hidden_state, ours.eval()(input_ids=ids)[0])


def test_exports_with_a_dynamic_batch() -> None:
    model = CLIPTextModel(TINY_TEXT_CONFIG).eval()
    batch = torch.export.Dim("B", min=1, max=8)
    program = torch.export.export(model, (), {"input_ids": _ids(batch=3)}, dynamic_shapes={"input_ids": {0: batch}})
    ids = _ids(batch=5)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(input_ids=ids)[0], model(input_ids=ids)[0])


def test_full_size_config_builds_on_meta_like_transformers() -> None:
    config = load_config("text_encoder")
    with torch.device("meta"):
        ref = transformers.CLIPTextModel(transformers.CLIPTextConfig(**config))
        ours = CLIPTextModel(config)
    ref_sd, ours_sd = ref.state_dict(), ours.state_dict()
    assert list(ours_sd) == [ours_key(k) for k in ref_sd]
    assert all(ours_sd[ours_key(k)].shape == v.shape for k, v in ref_sd.items())
    assert ours_sd["text_model.embeddings.token_embedding.weight"].shape == (49408, 768)


def test_real_config_json_keys_are_accepted() -> None:
    sd15 = {
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 768,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "projection_dim": 768,
        "torch_dtype": "float32",
        "transformers_version": "4.22.0.dev0",
        "vocab_size": 49408,
    }
    resolved = CLIPTextModel.resolve_config(sd15)
    assert resolved.eos_token_id == 2 and "architectures" not in resolved
    v5 = transformers.CLIPTextConfig(**TINY_TEXT_CONFIG).to_dict()
    assert CLIPTextModel.resolve_config(v5).hidden_size == TINY_TEXT_CONFIG["hidden_size"]


@pytest.mark.parametrize(
    ("key", "value"),
    [("hidden_act", "tanh"), ("output_attentions", True), ("eos_token_id", [2, 49407]), ("num_attention_heads", 5)],
)
def test_unsupported_config_value_is_refused_by_name(key: str, value: object) -> None:
    with pytest.raises(SvEngineError, match=key):
        CLIPTextModel({**TINY_TEXT_CONFIG, key: value})


def test_unknown_config_key_is_refused_by_name() -> None:
    with pytest.raises(SvEngineError, match="use_rotary"):
        CLIPTextModel({**TINY_TEXT_CONFIG, "use_rotary": True})


# -- the tokenizer ----------------------------------------------------------------------------------------

PROMPTS = [
    "",
    " ",
    "a photo of a cat",
    "A Photo Of A CAT",
    "Hello, World!",
    "hello,world!!!",
    "it's we're they've I'm you'll he'd",
    "IT'S WE'RE",
    "'''quoted''' \"double\" `back`",
    "1234567890",
    "3.14159 and 2,000,000 and 1e-5",
    "x² ³ ½ Ⅻ ٣",
    "café crème brûlée naïve façade",
    "CAFÉ e\u0301 (combining accent)",
    "Ångström ß Æsir œuvre",
    "ΟΔΟΣ Σ σοφία",
    "Привет, мир",
    "東京の夜景、ネオン",
    "北京欢迎你",
    "한국어 문장입니다",
    "مرحبا بالعالم",
    "हिन्दी पाठ",
    "a cat 🐱🐶 👍🏽 👨‍👩‍👧",
    "🔥🔥🔥",
    "multiple     spaces   here",
    "tab\tnew\nline\r\n  and\u00a0nbsp\u2028sep",
    "zero\u200bwidth",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
    "İstanbul",
    "Tom &amp; Jerry &lt;3 &quot;x&quot; &#39;y&#39;",
    "<b>html</b> <br/>",
    "https://example.com/path?q=1&x=y#frag",
    "user@example.com #hashtag @mention",
    "a--b__c..d!!?~~",
    "(((masterpiece))), [best quality], {detailed}",
    "Ω≈ç√∫˜µ≤≥÷",
    "<|startoftext|>x<|endoftext|><|endoftext|>",
    "<|ENDOFTEXT|> shouting special",
    "a " * 100,
    " ".join(f"word{i}" for i in range(60)),
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a beautiful oil painting of a castle on a hill at sunset, trending on artstation, 4k, highly detailed, by "
    "greg rutkowski and alphonse mucha, volumetric lighting, octane render, unreal engine",
    "x" * 300,
    "\x00\x01 control \x1c\x1f chars",
]


@pytest.fixture(scope="module")
def reference_tokenizer():
    """transformers' CLIPTokenizer on the packaged vocabulary, built as ``load_clip_tokenizer`` built it
    before it returned :class:`CLIPTokenizer` (so this stays the reference after the switch)."""
    reference = load_clip_tokenizer()
    if isinstance(reference, transformers.CLIPTokenizer):
        return reference
    vocab, merges = _packaged_vocab()
    return transformers.CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=77,
    )


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    vocab, merges = _packaged_vocab()
    return CLIPTokenizer(vocab, merges)


def _pipeline_ids(tok, prompts: list[str]) -> list[list[int]]:
    return tok(prompts, truncation=True, max_length=77, padding="max_length", return_tensors="pt").input_ids.tolist()


def test_prompt_ids_equal_transformers(reference_tokenizer, tokenizer: CLIPTokenizer) -> None:
    assert len(PROMPTS) >= 40
    got = tokenizer(PROMPTS, truncation=True, max_length=77, padding="max_length", return_tensors="pt")
    expected = reference_tokenizer(PROMPTS, truncation=True, max_length=77, padding="max_length", return_tensors="pt")
    assert got.input_ids.dtype == torch.int64 and got.input_ids.shape == (len(PROMPTS), 77)
    for prompt, a, b in zip(PROMPTS, got.input_ids.tolist(), expected.input_ids.tolist(), strict=True):
        assert a == b, prompt
    assert torch.equal(got.attention_mask, expected.attention_mask)
    long = got.input_ids[PROMPTS.index("x" * 300)]
    assert long[0] == BOS and long[-1] == EOS  # truncation keeps bos ... eos


def test_lists_longest_padding_and_decode_equal_transformers(reference_tokenizer, tokenizer: CLIPTokenizer) -> None:
    for kwargs in ({}, {"padding": "longest"}, {"padding": True, "truncation": True}):
        assert tokenizer(PROMPTS, **kwargs).input_ids == reference_tokenizer(PROMPTS, **kwargs).input_ids, kwargs
    assert tokenizer("a cat").input_ids == reference_tokenizer("a cat").input_ids
    for prompt in PROMPTS[:20]:
        ids = reference_tokenizer(prompt).input_ids
        assert tokenizer.decode(ids) == reference_tokenizer.decode(ids), prompt
        assert tokenizer.decode(ids, skip_special_tokens=True) == reference_tokenizer.decode(
            ids, skip_special_tokens=True
        )
    assert tokenizer.model_max_length == reference_tokenizer.model_max_length == 77
    assert tokenizer.pad_token_id == reference_tokenizer.pad_token_id == EOS


def test_save_pretrained_round_trips(tmp_path: Path, reference_tokenizer, tokenizer: CLIPTokenizer) -> None:
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    expected = _pipeline_ids(reference_tokenizer, PROMPTS)
    assert _pipeline_ids(transformers.CLIPTokenizer.from_pretrained(tmp_path), PROMPTS) == expected
    assert _pipeline_ids(CLIPTokenizer.from_pretrained(tmp_path), PROMPTS) == expected
    (tmp_path / "tokenizer.json").unlink()  # vocab.json + merges.txt only, as older folders have
    assert _pipeline_ids(transformers.CLIPTokenizer.from_pretrained(tmp_path), PROMPTS) == expected
    assert _pipeline_ids(CLIPTokenizer.from_pretrained(tmp_path), PROMPTS) == expected


@pytest.mark.parametrize("merge_format", ["strings", "pairs"])
def test_hand_written_tokenizer_json_loads(tmp_path: Path, reference_tokenizer, merge_format: str) -> None:
    vocab, merges = _packaged_vocab()
    hf_json = {
        "version": "1.0",
        "added_tokens": [
            {"id": BOS, "content": "<|startoftext|>", "special": True, "normalized": False},
            {"id": EOS, "content": "<|endoftext|>", "special": True, "normalized": False},
        ],
        "model": {
            "type": "BPE",
            "end_of_word_suffix": "</w>",
            "unk_token": "<|endoftext|>",
            "vocab": vocab,
            "merges": [f"{a} {b}" for a, b in merges] if merge_format == "strings" else [list(m) for m in merges],
        },
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(hf_json, ensure_ascii=False), encoding="utf-8")
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert loaded.model_max_length == 77  # no tokenizer_config.json: SD's length, as load_clip_tokenizer sets it
    assert _pipeline_ids(loaded, PROMPTS) == _pipeline_ids(reference_tokenizer, PROMPTS)


def test_folder_without_vocabulary_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SvEngineError, match="neither tokenizer.json"):
        CLIPTokenizer.from_pretrained(tmp_path)


# -- imports ----------------------------------------------------------------------------------------------


def test_modules_import_neither_transformers_nor_diffusers_nor_dynamo() -> None:
    code = (
        "import sys\n"
        "from sv_engine.stablevideo.models.nets.clip_text import CLIPTextModel\n"
        "from sv_engine.stablevideo.models.clip_tokenizer import CLIPTokenizer\n"
        "ids = CLIPTokenizer.packaged()(['a cat'], truncation=True, max_length=77, padding='max_length',"
        " return_tensors='pt').input_ids\n"
        "assert ids.shape == (1, 77)\n"
        "print(sorted(m for m in ('transformers', 'diffusers', 'torch._dynamo', 'tokenizers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
