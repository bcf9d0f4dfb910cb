"""Sampled speculative decoding follows the target's (warped) distribution exactly.

A tiny model with V = 8, a short prompt that repeats itself (so prompt lookup finds matches),
3-token continuations: the exact target distribution over all 8^3 continuations is computed by
enumeration; 20,000 speculative samples (G = 2, so rounds end at every position and drafters
re-sync) are compared with a chi-square test at a fixed seed, for every drafter. The negative
control: the same test with a deliberately wrong rule (accept every proposal), once per warping
(the test's power depends on the warping, not on the drafter), must fail.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import as_dtype, tiny_lm

from specjax import loop, rejection, sampling
from specjax.config import GREEDY, SamplingConfig
from specjax.drafters import crossvocab, registry
from specjax.lm import LM

# 20,000-row batches: running them outweighs compiling, so XLA optimises these programs (conftest.py)
pytestmark = pytest.mark.optimized

V, K, N, GAMMA = 8, 3, 20_000, 2
PROMPT = [1, 2, 3, 1, 2]
CONFIGS = {
    "temperature-1": SamplingConfig(temperature=1.0),
    "temperature-0.6": SamplingConfig(temperature=0.6),
    "top-k-3": SamplingConfig(temperature=1.0, top_k=3),
    "top-p-0.8": SamplingConfig(temperature=1.0, top_p=0.8),
    "min-p-0.1": SamplingConfig(temperature=1.0, min_p=0.1),
}


@pytest.fixture(scope="module")
def models():
    return tiny_lm(0, vocab=V, scale=0.6), tiny_lm(5, vocab=V, scale=0.6)


@pytest.fixture(scope="module")
def head(models):
    return fitted_head(models[0])


def fitted_head(target):
    """An EAGLE-3 head over a reduced draft vocabulary (6 of the 8 ids: target tokens 0 and 5 can only
    come from the residual) reading the target's layers 0, 1 and 2: a random layer whose LM head is
    fitted by least squares to the target's next-next-token logits, so that many proposals are
    accepted and a q that is not the proposals' distribution shows in the samples."""
    from flax import nnx

    from specjax.models import head_config_for, random_head

    ids = np.array([1, 2, 3, 4, 6, 7])
    head = random_head(head_config_for(target.module.config, draft_vocab_size=6, taps=(0, 1, 2)), seed=1,
                       target_ids=ids, scale=3.0)
    lm, params = LM.split(target.module)
    B, T = 256, 12
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (B, T)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    logits, _, taps = jax.jit(lambda p: lm.forward(p, tokens, positions, lm.init_cache(p, B, T), taps=(0, 1, 2)))(params)
    # entry t: the features at t with token t + 1 predict token t + 2, whose logits sit at t + 1
    x = jax.jit(lambda taps: head.final_norm(head.step(target.module.embed_tokens(tokens[:, 1:]),
                                                       head.fuse(taps[:, :, :-1]), positions[:, :-1],
                                                       head.init_cache(B, T))[0]))(taps)
    x = np.asarray(x).reshape(-1, head.config.dim)
    y = np.asarray(logits[:, 1:][..., ids]).reshape(-1, len(ids))
    head.lm_head = nnx.Param(jnp.asarray(np.linalg.lstsq(x, y, rcond=None)[0]), axes=("embed", "vocab"))
    return head


def pick(drafter, models, head):
    return {"model": models[1], "eagle": head}.get(drafter, drafter)


def exact_distribution(target, cfg: SamplingConfig) -> np.ndarray:
    """P(x1, x2, x3 | prompt) for all V^K continuations, under the warped target."""
    seqs = np.array(list(itertools.product(range(V), repeat=K)))
    full = np.concatenate([np.tile(PROMPT, (len(seqs), 1)), seqs], axis=1)
    T = full.shape[1]
    module = target.module
    logits, _ = module(jnp.asarray(full), jnp.broadcast_to(jnp.arange(T), full.shape), module.init_cache(len(seqs), T))
    P = len(PROMPT)
    probs = np.asarray(sampling.warp(logits[:, P - 1:P - 1 + K], cfg))  # [V^K, K, V]
    step = probs[np.arange(len(seqs))[:, None], np.arange(K)[None], seqs]  # [V^K, K]
    dist = step.prod(axis=1)
    assert abs(dist.sum() - 1.0) < 1e-4
    return dist


# layerskip:1:own samples through the draft model's code path ("model"), so it is left out here
# (the test budget); the greedy tests run it.
DRAFTERS = ["model", "layerskip:1", "ngram:2", "eagle"]


def accept_always(keys_b, proposal, target_logits_bg1v, cfg, vocab_size=None):
    """A deliberately wrong rule: accept every proposal made, then draw the next token from p."""
    n_b = jnp.sum(jnp.cumprod(proposal.tokens >= 0, axis=1), axis=1)
    p_bg1v = sampling.warp(target_logits_bg1v, cfg, vocab_size)
    p_n_bv = jnp.take_along_axis(p_bg1v, n_b[:, None, None], axis=1)[:, 0]
    return rejection.verdict(proposal, n_b, sampling.sample_probs(keys_b, p_n_bv))


def sample_rows(target, draft, configs: list, rule=rejection.accept, seed: int = 0, policy=None,
                with_state: bool = False):
    """One batched decode of len(configs) copies of PROMPT, row b sampled with configs[b] -> its K
    tokens as an index into the V^K continuations [rows] (and the final state, with_state).
    policy: a gamma="auto" window policy."""
    lm, params = LM.split(target.module)
    resolved = registry.resolve(draft, target)
    rows = len(configs)
    prompt = jnp.tile(jnp.asarray(PROMPT, jnp.int32), (rows, 1))
    dec = loop.Decoder(lm=lm, drafter=resolved.drafter, gamma=GAMMA, size=len(PROMPT) + K + GAMMA + 2, rule=rule,
                       policy=policy)
    batch = loop.Batch.make(prompt, jnp.full((rows,), len(PROMPT)), max_new_tokens=K, sampling=configs,
                            key=jax.random.key(seed))
    if getattr(resolved.drafter, "own_prompt", False):  # a draft with another vocabulary: its own prompt tokens
        from test_crossvocab import with_draft_prompt

        batch = with_draft_prompt(batch, resolved.drafter.vocab, [PROMPT] * rows)
    state = loop.generate(dec, params, resolved.params, batch)
    out = np.asarray(state.tokens)[:, len(PROMPT):len(PROMPT) + K]
    assert np.all(np.asarray(state.lengths) == len(PROMPT) + K)
    index = sum(out[:, i] * V ** (K - 1 - i) for i in range(K))
    return (index, state) if with_state else index


def sample_continuations(target, draft, cfg: SamplingConfig, rule=rejection.accept, seed: int = 0,
                         policy=None) -> np.ndarray:
    index = sample_rows(target, draft, [cfg] * N, rule=rule, seed=seed, policy=policy)
    return np.bincount(index, minlength=V ** K)


def chi_square_p_value(observed: np.ndarray, dist: np.ndarray) -> float:
    """Pearson chi-square; cells with expected count < 5 are pooled. An observation in a cell of
    exact probability 0 is an immediate failure (p-value 0)."""
    expected = dist * observed.sum()
    if observed[dist == 0].sum() > 0:
        return 0.0
    big = expected >= 5
    obs = np.append(observed[big], observed[~big & (dist > 0)].sum())
    exp = np.append(expected[big], expected[~big & (dist > 0)].sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = len(obs) - 1
    # Wilson-Hilferty: (X/k)^(1/3) is close to normal with mean 1 - 2/(9k), variance 2/(9k)
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.parametrize("drafter", DRAFTERS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_speculative_samples_follow_target_distribution(models, head, name, drafter):
    target = models[0]
    cfg = CONFIGS[name]
    dist = exact_distribution(target, cfg)
    counts = sample_continuations(target, pick(drafter, models, head), cfg)
    p_value = chi_square_p_value(counts, dist)
    tv = 0.5 * np.abs(counts / N - dist).sum()
    print(f"\n{drafter} {name}: chi-square p = {p_value:.3g}, total variation = {tv:.4f}")
    assert p_value > 1e-3, f"{drafter} {name}: samples do not follow the target (p = {p_value:.2e}, TV = {tv:.3f})"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_wrong_acceptance_rule_is_detected(models, name):
    target, draft = models
    cfg = CONFIGS[name]
    dist = exact_distribution(target, cfg)
    counts = sample_continuations(target, draft, cfg, rule=accept_always)
    p_value = chi_square_p_value(counts, dist)
    assert p_value < 1e-6, f"{name}: the always-accept rule was not detected (p = {p_value:.2e})"


def test_wrong_acceptance_rule_is_detected_with_an_eagle_head(models, head):
    cfg = CONFIGS["temperature-1"]
    counts = sample_continuations(models[0], head, cfg, rule=accept_always)
    p_value = chi_square_p_value(counts, exact_distribution(models[0], cfg))
    assert p_value < 1e-6, f"eagle: the always-accept rule was not detected (p = {p_value:.2e})"


def every_width(draft, target):
    """A policy visiting widths 2, 0, 1 in turn (test_policy.CyclingPolicy): with K = 3 tokens every
    sample starts with a two-proposal round, and those that emit fewer than 2 tokens there go on
    through a plain step (width 0 left out for drafters that must see every round: 2, 1)."""
    from test_policy import cycling

    must = getattr(registry.resolve(draft, target).drafter, "must_observe", False)
    return cycling(GAMMA, 1 if must else 0, widest_first=True)


@pytest.mark.parametrize("drafter,name", [  # layer skip and the draft model: make test-all (the test budget)
    pytest.param(d, "temperature-1", marks=pytest.mark.slow) if d in ("layerskip:1", "model") else (d, "temperature-1")
    for d in DRAFTERS] + [pytest.param(d, "top-p-0.8", marks=pytest.mark.slow) for d in ("ngram:2", "eagle")])
def test_samples_follow_the_target_through_every_width_of_gamma_auto(models, head, name, drafter):
    target, cfg = models[0], CONFIGS[name]
    draft = pick(drafter, models, head)
    counts = sample_continuations(target, draft, cfg, policy=every_width(draft, target))
    p_value = chi_square_p_value(counts, exact_distribution(target, cfg))
    assert p_value > 1e-3, f"auto {drafter} {name}: samples do not follow the target (p = {p_value:.2e})"


def test_samples_follow_the_target_under_the_auto_policy(models):
    """The real policy (default costs) choosing windows from its estimates, with prompt lookup. Objective
    "rate": under "slowest" one of 20,000 rows without a match keeps every round plain."""
    from specjax.policy import Costs, Policy

    target, cfg = models[0], CONFIGS["temperature-1"]
    policy = Policy.make(Costs.default(GAMMA, 1, 0.0), gamma_max=GAMMA, objective="rate")  # batch-1 costs: it pays
    index, state = sample_rows(target, "ngram:2", [cfg] * N, policy=policy, with_state=True)
    p_value = chi_square_p_value(np.bincount(index, minlength=V ** K), exact_distribution(target, cfg))
    assert p_value > 1e-3, f"auto ngram: samples do not follow the target (p = {p_value:.2e})"
    assert np.asarray(state.adapt.width).sum() > 0 and np.asarray(state.stats.drafted).sum() > 0


def test_wrong_acceptance_rule_is_detected_under_gamma_auto(models):
    target, draft = models
    cfg = CONFIGS["temperature-1"]
    counts = sample_continuations(target, draft, cfg, rule=accept_always, policy=every_width(draft, target))
    p_value = chi_square_p_value(counts, exact_distribution(target, cfg))
    assert p_value < 1e-6, f"auto: the always-accept rule was not detected (p = {p_value:.2e})"


def test_draft_disagrees_with_target(models):
    """The test is only meaningful if the draft's distribution is far from the target's."""
    target, draft = models
    cfg = CONFIGS["temperature-1"]
    tv = 0.5 * np.abs(exact_distribution(target, cfg) - exact_distribution(draft, cfg)).sum()
    assert tv > 0.3


@pytest.fixture(scope="module")
def models_bf16(models):
    return tuple(as_dtype(m, jnp.bfloat16) for m in models)


@pytest.mark.parametrize("drafter,name", [("model", "temperature-1"), ("ngram:2", "top-p-0.8")])
def test_samples_follow_the_target_with_bfloat16_params(models_bf16, drafter, name):
    """bf16 weights, float32 logits, warping and acceptance: still the target's distribution (the
    exact one enumerated from the same bf16 model)."""
    target, draft = models_bf16
    assert jax.tree.leaves(nnx_params(target))[0].dtype == jnp.bfloat16
    cfg = CONFIGS[name]
    dist = exact_distribution(target, cfg)
    counts = sample_continuations(target, draft if drafter == "model" else drafter, cfg)
    p_value = chi_square_p_value(counts, dist)
    print(f"\nbf16 {drafter} {name}: chi-square p = {p_value:.3g}")
    assert p_value > 1e-3, f"bf16 {drafter} {name}: samples do not follow the target (p = {p_value:.2e})"


def test_wrong_acceptance_rule_is_detected_with_bfloat16_params(models_bf16):
    target, draft = models_bf16
    cfg = CONFIGS["temperature-1"]
    p_value = chi_square_p_value(sample_continuations(target, draft, cfg, rule=accept_always),
                                 exact_distribution(target, cfg))
    assert p_value < 1e-6, f"bf16: the always-accept rule was not detected (p = {p_value:.2e})"


def nnx_params(model):
    return LM.split(model.module)[1]


# one batch, a different setting per row (interleaved, so every round mixes greedy and sampled rows)
MIXED = [GREEDY, SamplingConfig(temperature=0.7), SamplingConfig(temperature=1.0, top_k=5),
         SamplingConfig(temperature=0.9, top_p=0.8)]
PER_SETTING = 12_000


@pytest.mark.parametrize("drafter", ["model", pytest.param("ngram:2", marks=pytest.mark.slow)])  # ngram: test-all
def test_each_row_follows_its_own_setting_in_a_mixed_batch(models, drafter):
    target, draft = models
    index = sample_rows(target, draft if drafter == "model" else drafter, MIXED * PER_SETTING, seed=3)
    for i, cfg in enumerate(MIXED):
        counts = np.bincount(index[i::len(MIXED)], minlength=V ** K)
        dist = exact_distribution(target, cfg)
        if cfg.greedy:  # a point mass: every greedy row is the greedy continuation
            assert counts[np.argmax(dist)] == PER_SETTING and dist.max() == pytest.approx(1.0)
            continue
        p_value = chi_square_p_value(counts, dist)
        assert p_value > 1e-3, f"{drafter} row setting {cfg}: p = {p_value:.2e}"


def test_wrong_acceptance_rule_is_detected_in_a_mixed_batch(models):
    target, draft = models
    index = sample_rows(target, draft, MIXED * PER_SETTING, rule=accept_always, seed=3)
    for i, cfg in enumerate(MIXED[1:], start=1):
        p_value = chi_square_p_value(np.bincount(index[i::len(MIXED)], minlength=V ** K), exact_distribution(target, cfg))
        assert p_value < 1e-6, f"{cfg}: the always-accept rule was not detected (p = {p_value:.2e})"


# -- a draft with another vocabulary (token-level intersection) -----------------------------------

class IgnoresTheIntersection(crossvocab.CrossVocabDrafter):
    """A deliberately wrong drafter: it proposes from the intersection like the real one, but hands the
    rule the draft's distributions indexed by draft ids, as if the two vocabularies were one."""

    def _target_q(self, q_bgv, t2d):
        return q_bgv[..., :t2d.shape[0]]


def cross_draft(models, cls=crossvocab.CrossVocabDrafter):
    from test_crossvocab import cross_pair

    return cross_pair(models[0], models[1], cls=cls)


@pytest.mark.parametrize("name", ["temperature-1", pytest.param("top-p-0.8", marks=pytest.mark.slow)])
def test_samples_follow_the_target_with_a_draft_of_another_vocabulary(models, name):
    target, cfg = models[0], CONFIGS[name]
    index, state = sample_rows(target, cross_draft(models), [cfg] * N, with_state=True)
    p_value = chi_square_p_value(np.bincount(index, minlength=V ** K), exact_distribution(target, cfg))
    assert p_value > 1e-3, f"another vocabulary, {name}: samples do not follow the target (p = {p_value:.2e})"
    assert np.asarray(state.stats.accepted).sum() > 0.1 * np.asarray(state.stats.drafted).sum()


@pytest.mark.parametrize("name", ["temperature-1", pytest.param("top-p-0.8", marks=pytest.mark.slow)])
def test_a_rule_that_ignores_the_intersection_is_detected(models, name):
    target, cfg = models[0], CONFIGS[name]
    counts = sample_continuations(target, cross_draft(models, IgnoresTheIntersection), cfg)
    p_value = chi_square_p_value(counts, exact_distribution(target, cfg))
    assert p_value < 1e-6, f"{name}: a q that ignores the intersection was not detected (p = {p_value:.2e})"
