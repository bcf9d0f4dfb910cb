"""Speculative decoding on the real SmolLM2-135M-Instruct: greedy speculative == greedy autoregressive."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from specjax import api
from specjax.bench import divergence
from specjax.errors import IncompatibleDraftError
from specjax.models import head_config_for, load, load_eagle, random_head, save_eagle, truncate

pytestmark = pytest.mark.real

PROMPTS = [
    "The history of the Roman Empire",
    "def quicksort(arr):\n",
    "Explain how photosynthesis works in simple terms.",
    "Once upon a time, a little robot",
    "The three most important ideas in machine learning are",
]
NEAR_TIE = 1e-5


def _is_near_tie(module, prompt, common) -> float:
    ids = list(prompt) + list(common)
    logits, _ = module(jnp.asarray([ids]), jnp.arange(len(ids))[None], module.init_cache(1, len(ids) + 1))
    top2 = np.sort(np.asarray(logits[0, -1]))[-2:]
    return float(top2[1] - top2[0])


@pytest.fixture(scope="module")
def smollm2():
    return load("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="module")
def smollm2_ar(smollm2):
    return api.generate(smollm2, PROMPTS, max_new_tokens=64, eos_ids=())


def assert_equal_or_near_tie(module, prompts, ar_tokens, sp_tokens, n):
    """Greedy speculative tokens equal plain greedy tokens, except after a proven near-tie (float32
    rounds a (G+1)-token pass and a one-token pass differently)."""
    for prompt, a, s in zip(prompts, ar_tokens, sp_tokens):
        a, s = a[:n], s[:n]
        assert len(a) == len(s) == n
        if a != s:
            k = next(i for i in range(n) if a[i] != s[i])
            gap = _is_near_tie(module, prompt, a[:k])
            assert gap < NEAR_TIE, f"divergence at token {k} is not a near-tie (top-2 logit gap {gap:.2e})"
            print(f"accepted divergence at token {k}: proven near-tie, top-2 gap {gap:.2e}")


@pytest.mark.slow  # make test-all; in make test, the EAGLE-3 test below checks real-model exactness with a drafter
def test_smollm2_speculative_equals_autoregressive(smollm2):
    draft = truncate(smollm2, 24)
    ar = api.generate(smollm2, PROMPTS, max_new_tokens=128, eos_ids=())
    sp = api.generate(smollm2, PROMPTS, draft=draft, gamma=4, max_new_tokens=128, eos_ids=())
    print(f"\nacceptance rate {sp.stats['acceptance_rate']:.3f}, "
          f"tokens per round {sp.stats['mean_tokens_per_round']:.2f}")
    assert_equal_or_near_tie(smollm2.module, sp.prompt_tokens, ar.tokens, sp.tokens, 128)
    assert 0.0 < sp.stats["acceptance_rate"] < 1.0


def smollm2_head(smollm2, ar_tokens, draft_vocab=16):
    """A random EAGLE-3 head for SmolLM2 (taps 2, 15, 27) whose draft vocabulary is the tokens plain
    decoding emits most often, so that some random proposals are accepted."""
    from collections import Counter

    counts = Counter(t for row in ar_tokens for t in row)
    ids = sorted(t for t, _ in counts.most_common(draft_vocab))
    cfg = head_config_for(smollm2.module.config, draft_vocab_size=len(ids))
    return random_head(cfg, seed=0, target_ids=ids, scale=5.0)


def test_smollm2_greedy_with_the_shipped_eagle_head_equals_autoregressive(smollm2):
    """The built-in trained head (models/heads/smollm2-135m-instruct-eagle3), loaded by name, in its
    domain: the instruct model's chat turns (the prompts as user messages), what it was trained on.
    The head of the second GPU slot: a = 0.495 here (the first slot's 0.503; a random head 0.057). On
    the same prompts as raw text it reaches 0.218 (the first slot's 0.260; BENCHMARKS.md); the CLI
    test below checks a raw-text prompt."""
    head = load_eagle("smollm2-135m-instruct-eagle3")
    prompts = PROMPTS[2:]  # three of the five (test budget): a = 0.484 on these, 0.495 on all five
    ar = api.generate(smollm2, prompts, max_new_tokens=64, eos_ids=(), chat=True)
    sp = api.generate(smollm2, prompts, draft=head, gamma=4, max_new_tokens=64, eos_ids=(), chat=True)
    print(f"\neagle (shipped head), chat turns: acceptance rate {sp.stats['acceptance_rate']:.3f}")
    assert_equal_or_near_tie(smollm2.module, sp.prompt_tokens, ar.tokens, sp.tokens, 64)
    assert sp.stats["acceptance_rate"] > 0.45


@pytest.mark.slow  # make test-all: a random head is rejected far more often (other paths of the rule)
def test_smollm2_greedy_with_a_random_eagle_head_equals_autoregressive(smollm2, smollm2_ar):
    head = smollm2_head(smollm2, [t[:64] for t in smollm2_ar.tokens])
    sp = api.generate(smollm2, PROMPTS, draft=head, gamma=4, max_new_tokens=64, eos_ids=())
    print(f"\neagle (random head): acceptance rate {sp.stats['acceptance_rate']:.3f}")
    assert_equal_or_near_tie(smollm2.module, sp.prompt_tokens, smollm2_ar.tokens, sp.tokens, 64)
    assert sp.stats["acceptance_rate"] > 0.0


def test_the_shipped_head_runs_from_the_cli_by_name(smollm2, smollm2_ar, tmp_path, capsys):
    import dataclasses
    import json

    from specjax.cli import main

    # the shipped head by its name: the community layout read from the package
    args = ["generate", "--target", "smollm2-135m-instruct", "--prompt", PROMPTS[0], "--max-new-tokens", "12",
            "--json", "--gamma", "3"]
    assert main(args + ["--drafter", "eagle:smollm2-135m-instruct-eagle3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"][0] == smollm2_ar.tokens[0][:12]
    assert sum(out["stats"]["accepted"]) > 0
    head = smollm2_head(smollm2, smollm2_ar.tokens, draft_vocab=64)
    wide = random_head(dataclasses.replace(head.config, dim=64, target_dim=64, num_heads=4, num_kv_heads=4,
                                           head_dim=16, mlp_dim=128))
    save_eagle(wide, tmp_path / "wide")
    with pytest.raises(IncompatibleDraftError, match="width 64 .*the target's hidden size is 576"):
        api.generate(smollm2, PROMPTS[:1], draft=f"eagle:{tmp_path / 'wide'}", load_head=load_eagle, max_new_tokens=4)


@pytest.fixture(scope="module")
def smollm2_bf16():
    return load("smollm2-135m-instruct", dtype="bfloat16", progress=False)


LAYERSKIP = "layerskip:0-11,18-29"
# A chat prompt where, in bfloat16 on the CI CPU, the batched verify pass with this layer skip parts
# from plain greedy decoding at token 13, at a near-tie (reference gap 0.017).
WATER = "Describe the water cycle step by step."
POEM = "Write a short poem about the sea at night."  # bf16 plain parts from f32 plain here at token 8


@pytest.mark.slow  # make test-all (the test budget); make test keeps the bit-for-bit stepwise check below
def test_bfloat16_greedy_parts_from_plain_only_at_near_ties(smollm2, smollm2_bf16):
    """A small version of the bf16 exactness check (BENCHMARKS.md runs 50 prompts x 128 tokens): with
    the default batched verify, every prompt where greedy speculative output differs from bf16 plain
    greedy output parts at a near-tie under the float32 reference, and there are no more such
    prompts than where bf16 plain decoding parts from float32 plain decoding."""
    report = divergence.run(prompts=([POEM, WATER], True), max_new_tokens=16, drafters=(LAYERSKIP,),
                            models=(smollm2, smollm2_bf16), progress=False)
    print("\n" + divergence.summary(report))
    for d in report["drafters"][LAYERSKIP]["divergences"]:
        assert d["gap"] is not None and abs(d["gap"]) <= report["bound"], d
    assert report["holds"], divergence.summary(report)
    assert report["pass_difference"]["max"] is not None


def test_bfloat16_stepwise_verify_is_bit_for_bit_plain_greedy(smollm2_bf16):
    plain = api.generate(smollm2_bf16, [WATER], chat=True, max_new_tokens=16)
    stepwise = api.generate(smollm2_bf16, [WATER], chat=True, draft=LAYERSKIP, gamma=4, max_new_tokens=16,
                            verify="stepwise")
    assert stepwise.tokens == plain.tokens
    assert stepwise.stats["acceptance_rate"] > 0.3  # the drafter did take part


# -- a draft with another tokenizer: SmolLM2 (49k byte-level BPE) drafting for Gemma 3 (262k SentencePiece) --

@pytest.fixture(scope="module")
def tokenizer_pair():
    from specjax.models.hub import resolve
    from specjax.models.sources.gguf import GGUFCheckpoint

    return (GGUFCheckpoint(resolve("gemma3-270m", progress=False)).tokenizer(),
            GGUFCheckpoint(resolve("smollm2-135m-instruct", progress=False)).tokenizer())


@pytest.mark.slow  # make test-all: reading Gemma 3's 262k-token vocabulary from its GGUF takes ~40 s
def test_the_smollm2_and_gemma3_vocabularies_match_by_bytes(tokenizer_pair):
    from specjax.drafters.crossvocab import check_shared, tokenizer_vocab_map

    gemma, smol = tokenizer_pair
    m = tokenizer_vocab_map(gemma, smol, target_rows=262144, draft_rows=49152)
    check_shared(m)
    assert 45_000 < m.shared <= 49_135 and m.draft_text == 49_135
    g_bytes, s_bytes = gemma.token_bytes(), smol.token_bytes()
    assert g_bytes[gemma.encode(" the", add_bos=False)[0]] == b" the"
    assert s_bytes[smol.encode(" the", add_bos=False)[0]] == b" the"
    for d, t in enumerate(m.d2t):  # matched ids spell the same bytes, and the maps are inverse
        if t >= 0:
            assert g_bytes[t] == s_bytes[d] and m.t2d[t] == d
    # every Gemma token's draft encoding spells its bytes (SmolLM2 has no token for 24 control bytes)
    spellable = set(b"".join(b for b in s_bytes if b))
    text = "Gemma 3 writes ünïcödé, 数学 and emoji 🙂 with\ttabs  and   spaces.\n"
    ids = gemma.encode(text, add_bos=False)
    assert b"".join(s_bytes[i] for i in m.encode(ids)) == text.encode("utf-8")
    for t in range(0, 262144, 7):
        if g_bytes[t] and set(g_bytes[t]) <= spellable:
            assert b"".join(s_bytes[i] for i in m.encode([t])) == g_bytes[t], t


@pytest.mark.slow  # make test-all: loads Gemma 3 (its 262k-row embedding) and compiles both programs
def test_gemma3_greedy_with_a_smollm2_draft_equals_plain_greedy(smollm2):
    """Done-when 1 of the cross-tokenizer issue: 5 prompts x 64 tokens (a = 0.64, 2.40 tokens per round
    when written)."""
    gemma = load("gemma3-270m", progress=False)
    ar = api.generate(gemma, PROMPTS, max_new_tokens=64, eos_ids=())
    sp = api.generate(gemma, PROMPTS, draft=smollm2, gamma=4, max_new_tokens=64, eos_ids=())
    print(f"\nsmollm2 for gemma3: acceptance rate {sp.stats['acceptance_rate']:.3f}, "
          f"{sp.stats['mean_tokens_per_round']:.2f} tokens per round, {sp.stats['draft_vocabulary']}")
    assert_equal_or_near_tie(gemma.module, sp.prompt_tokens, ar.tokens, sp.tokens, 64)
    assert sp.stats["acceptance_rate"] > 0.4
