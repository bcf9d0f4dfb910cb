"""The speculative loop: greedy equivalence, stopping, per-row lengths, compiling once per bucket."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturbed, tiny_lm

from specjax import api, loop
from specjax.config import DecodeConfig, SamplingConfig
from specjax.drafters import ModelDrafter
from specjax.lm import LM

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], list(range(10, 30)), [42], [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]]


@pytest.fixture(scope="module")
def target():
    return tiny_lm(0)


@pytest.fixture(scope="module")
def drafts(target):
    return {"random": tiny_lm(1), "good": perturbed(target, 1, 0.005), "self": target}


@pytest.fixture(scope="module")
def ar_tokens(target):
    return api.generate(target, PROMPTS, max_new_tokens=40).tokens


@pytest.mark.parametrize("gamma", [1, 2, 4, 7])
@pytest.mark.parametrize("kind", ["random", "good", "self"])
def test_greedy_speculative_equals_autoregressive(target, drafts, ar_tokens, gamma, kind):
    result = api.generate(target, PROMPTS, draft=drafts[kind], gamma=gamma, max_new_tokens=40)
    assert result.tokens == ar_tokens
    rate = result.stats["acceptance_rate"]
    if kind == "self":
        assert rate == 1.0, "the target drafting for itself must have every proposal accepted"
        assert all(a == d for a, d in zip(result.stats["accepted"], result.stats["drafted"]))
    elif kind == "good":
        assert rate > 0.6
    else:
        assert rate < 0.5
    # fewer target passes than tokens whenever anything is accepted
    if kind != "random":
        assert result.stats["target_forward_passes"] < 40


@pytest.mark.parametrize("gamma", [1, 2, 4, 7])
@pytest.mark.parametrize("drafter", ["layerskip:1", "layerskip:1:own", "layerskip:2", "ngram:3", "ngram:2:2"])
def test_greedy_speculative_equals_autoregressive_for_every_drafter(target, ar_tokens, gamma, drafter):
    result = api.generate(target, PROMPTS, draft=drafter, gamma=gamma, max_new_tokens=40)
    assert result.tokens == ar_tokens
    if drafter == "layerskip:2":  # every layer of the target: every proposal accepted
        assert result.stats["acceptance_rate"] == 1.0
    if drafter.startswith("ngram"):
        assert sum(result.stats["drafted"]) > 0, "the repetitive prompt must yield lookup proposals"


def _run_spec(target, draft, prompts, *, gamma, max_new, eos=(), sampling=SamplingConfig(), seed=0):
    lm, params = LM.split(target.module)
    dlm, dparams = LM.split(draft.module)
    prompt_bp, lengths_b, active_b = api.pad_batch(prompts)
    size = prompt_bp.shape[1] + max_new + gamma + 2
    decode = DecodeConfig(max_new_tokens=max_new, eos_ids=tuple(eos))
    return loop.generate_spec(lm, params, ModelDrafter(dlm), dparams, jnp.asarray(prompt_bp), jnp.asarray(lengths_b),
                              jnp.asarray(active_b), jax.random.key(seed), gamma=gamma, sampling_cfg=sampling,
                              decode=decode, size=size)


def test_eos_inside_an_accepted_block_truncates_the_row(target, ar_tokens):
    # the target drafting for itself accepts whole blocks; pick as EOS a token the first row emits
    # in the middle of its output, so it arrives inside an accepted block of G = 4
    row = ar_tokens[0]
    eos = row[9]
    cut = row.index(eos) + 1
    state = _run_spec(target, target, PROMPTS, gamma=4, max_new=40, eos=[eos])
    lengths, plen, tokens = (np.asarray(x) for x in (state.lengths, state.prompt_lengths, state.tokens))
    assert tokens[0, plen[0]:lengths[0]].tolist() == row[:cut]
    for b, ref in enumerate(ar_tokens):  # every row stops at its own first EOS, or at 40 tokens
        want = ref[:ref.index(eos) + 1] if eos in ref else ref
        assert tokens[b, plen[b]:lengths[b]].tolist() == want
        assert np.all(tokens[b, lengths[b]:] == 0), "nothing may be written after a row's end"
    assert np.asarray(state.done).all()


@pytest.mark.parametrize("max_new", [1, 2, 5, 13])
def test_max_new_tokens_is_exact(target, max_new):
    state = _run_spec(target, target, PROMPTS, gamma=4, max_new=max_new)
    new = np.asarray(state.lengths - state.prompt_lengths)
    assert new[: len(PROMPTS)].tolist() == [max_new] * len(PROMPTS)


def test_finished_rows_stay_finished(target, ar_tokens):
    # row 3 stops early at its EOS; the others keep going; row 3's counters must freeze
    eos = ar_tokens[3][2]
    state = _run_spec(target, target, PROMPTS, gamma=2, max_new=40, eos=[eos])
    rounds = np.asarray(state.stats.rounds)
    lengths = np.asarray(state.lengths - state.prompt_lengths)
    assert lengths[3] == ar_tokens[3].index(eos) + 1
    assert rounds[3] < rounds.max()
    assert np.asarray(state.done).all()


def test_rows_keep_their_own_lengths(target, drafts):
    state = _run_spec(target, drafts["good"], PROMPTS, gamma=4, max_new=40)
    accepted = np.asarray(state.stats.accepted)[: len(PROMPTS)]
    rounds = np.asarray(state.stats.rounds)[: len(PROMPTS)]
    assert len(set(zip(accepted.tolist(), rounds.tolist()))) > 1, "rows should not move in lockstep"


class _CompileCounter(logging.Handler):
    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record):
        if "Compiling" in record.getMessage() or "compil" in record.getMessage().lower():
            self.count += 1


def test_second_prompt_in_the_same_bucket_does_not_recompile(target, drafts):
    api.generate(target, [[3, 4, 5, 6]], draft=drafts["good"], gamma=3, max_new_tokens=8)
    before = api.COMPILED.compilations
    handler = _CompileCounter()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with jax.log_compiles(True):
            result = api.generate(target, [[9, 8, 7, 6, 5, 4, 3]], draft=drafts["good"], gamma=3, max_new_tokens=8,
                                  seed=7)
            same_bucket = handler.count
            # a longer prompt lands in the next bucket: that must compile (and be seen compiling)
            api.generate(target, [list(range(1, 20))], draft=drafts["good"], gamma=3, max_new_tokens=8)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert same_bucket == 0, "JAX compiled something for a prompt in an already compiled bucket"
    assert result.timing["compile_s"] == 0.0
    assert api.COMPILED.compilations == before + 1
    assert handler.count > 0, "the compile counter must see the new bucket compile"
