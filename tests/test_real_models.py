"""End to end on the real models shipped as pip packages, against transformers loading the same GGUF."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import REAL_MODELS, load_real

from specjax.api import generate

pytestmark = pytest.mark.real

PROMPTS = [
    "The capital of France is",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Once upon a time, in a small village by the sea, there lived",
    "Q: What is 17 * 23?\nA:",
]


@pytest.mark.parametrize("name", REAL_MODELS)
def test_logits_match_transformers(real_model_cache, name):
    ours, ref, tok = load_real(real_model_cache, name)
    worst = 0.0
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        assert ours.tokenizer.encode(prompt) == ids, "tokenizers disagree"
        with torch.no_grad():
            want = ref(torch.tensor([ids])).logits[0].numpy()
        got, _ = ours.module(jnp.asarray([ids]), jnp.arange(len(ids))[None], ours.module.init_cache(1, 64))
        got = np.asarray(got[0])
        np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1), err_msg=f"argmax differs on {prompt!r}")
        worst = max(worst, float(np.abs(got - want).max()))
    print(f"\n{name}: largest |logit difference| vs transformers over {len(PROMPTS)} prompts = {worst:.2e}")
    assert worst <= 1e-3


@pytest.mark.slow  # make test-all; test_logits_match_transformers keeps the reference check in make test
@pytest.mark.parametrize("name", REAL_MODELS)
def test_64_greedy_tokens_match_transformers(real_model_cache, name):
    ours, ref, tok = load_real(real_model_cache, name)
    result = generate(ours, PROMPTS[:3], max_new_tokens=64, eos_ids=())  # batch of three prompt lengths
    for ids, got in zip(result.prompt_tokens, result.tokens):
        with torch.no_grad():
            out = ref.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0)
        want = out[0, len(ids):].tolist()
        assert len(got) == 64
        assert got == want, f"first difference at token {next(i for i in range(64) if got[i] != want[i])}"
