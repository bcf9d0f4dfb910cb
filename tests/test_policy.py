"""gamma="auto": the window policy's arithmetic, its calibration file, and exactness of adaptive rounds
for every drafter (greedy equality here; the distribution test is in test_distribution.py)."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturbed, tiny_lm

from specjax import api, loop, metrics, policy as P
from specjax.config import SamplingConfig
from specjax.drafters import registry
from specjax.errors import ConfigError
from specjax.lm import LM

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], list(range(10, 30)), [42], [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class CyclingPolicy(P.Policy):
    """Visits the compiled widths in a fixed cycle (round r verifies widths[order[r mod n]]), whatever
    the estimates: so the tests run every branch of the adaptive round, width 0 included."""

    order: tuple[int, ...] = ()

    def choose(self, adapt, available_b, active_b, steps, remaining_b=None):
        order = jnp.asarray(self.order or tuple(range(len(self.widths))), jnp.int32)
        return order[steps % len(order)]


def cycling(gamma_max: int, min_width: int = 0, widest_first: bool = False) -> CyclingPolicy:
    """widest_first: G_max, then the others in ascending order (short samples still reach G_max)."""
    widths = tuple(w for w in P.widths_for(gamma_max) if w >= min_width)
    n = len(widths)
    order = ((n - 1,) + tuple(range(n - 1))) if widest_first else ()
    return CyclingPolicy(widths=widths, round_cost=(1.0,) * n, order=order)


@pytest.fixture(autouse=True)
def calibration_file(tmp_path, monkeypatch):
    """Every test reads and writes a calibration file of its own, never the user's."""
    path = str(tmp_path / "calibration.json")
    monkeypatch.setattr(P, "calibration_path", lambda: path)
    return path


# -- the arithmetic --------------------------------------------------------------------------------

def test_widths_and_parse_gamma():
    assert P.widths_for(8) == (0, 1, 2, 4, 8)
    assert P.widths_for(6) == (0, 1, 2, 4, 6)
    assert P.widths_for(1) == (0, 1)
    assert P.parse_gamma("auto") == "auto" and P.parse_gamma(" AUTO ") == "auto"
    assert P.parse_gamma(3) == 3 and P.parse_gamma("5") == 5
    for bad in (0, -1, "fast", 2.5, True, None):
        with pytest.raises(ConfigError, match="gamma must be"):
            P.parse_gamma(bad)


def test_estimates_shrink_positions_to_the_row_and_the_row_to_the_prior():
    pol = P.Policy(widths=(0, 1, 2), round_cost=(1.0, 1.1, 1.2), prior=0.5, strength=2.0, pooled_strength=4.0)
    adapt = P.Adapt.zeros(2, 2)
    adapt = adapt.replace(reached=jnp.array([[0.0, 0.0], [10.0, 2.0]]), accepted=jnp.array([[0.0, 0.0], [8.0, 0.0]]))
    a = np.asarray(pol.estimates(adapt))
    np.testing.assert_allclose(a[0], [0.5, 0.5], rtol=1e-6)  # no evidence: the prior
    pooled = (0 + 4 * 0.5) / (2 + 4)  # positions >= 1 only
    np.testing.assert_allclose(a[1], [(8 + 2 * 0.5) / 12, (0 + 2 * pooled) / 4], rtol=1e-6)
    # a row whose first proposals mostly fail but whose later ones succeed: position 0 stays low
    streaky = adapt.replace(reached=jnp.array([[20.0, 4.0], [0, 0]]), accepted=jnp.array([[4.0, 4.0], [0, 0]]))
    assert float(pol.estimates(streaky)[0, 0]) == pytest.approx((4 + 2 * 0.5) / 22)


def test_expected_tokens_follow_the_acceptance_chain_and_the_available_proposals():
    pol = P.Policy(widths=(0, 1, 2, 4), round_cost=(1.0,) * 4)
    a = jnp.array([[0.5, 0.5, 0.5, 0.5], [0.9, 0.8, 0.7, 0.6]])
    E = np.asarray(pol.expected_tokens(a, jnp.array([4, 2])))
    assert np.allclose(E[0], [1, 1.5, 1.75, metrics.expected_tokens_per_round(0.5, 4)])
    # row 1 has only 2 proposals: widths past 2 add nothing
    assert np.allclose(E[1], [1, 1.9, 1.9 + 0.72, 1.9 + 0.72])


def test_choose_maximises_the_batch_rate_and_picks_plain_when_nothing_pays():
    adapt = P.Adapt.zeros(2, 4).replace(reached=jnp.full((2, 4), 100.0), accepted=jnp.full((2, 4), 80.0))
    active, avail = jnp.array([True, True]), jnp.array([4, 4])
    cheap = P.Policy(widths=(0, 1, 2, 4), round_cost=(1.0, 1.05, 1.1, 1.2), strength=1e-6, pooled_strength=1e-6)
    E = [metrics.expected_tokens_per_round(0.8, w) for w in (0, 1, 2, 4)]
    best = int(np.argmax(np.array(E) / np.array(cheap.round_cost)))
    assert int(cheap.choose(adapt, avail, active, jnp.int32(0))) == best == 3
    dear = dataclasses.replace(cheap, round_cost=(1.0, 2.0, 3.0, 5.0))  # speculation cannot pay at a = 0.8
    assert int(dear.choose(adapt, avail, active, jnp.int32(0))) == 0
    # no proposals available (prompt lookup without a match): plain, however cheap the widths
    assert int(cheap.choose(adapt, jnp.array([0, 0]), active, jnp.int32(0))) == 0
    # finished rows do not vote: row 0 accepts everything, row 1 nothing; only row 1 is active
    mixed = adapt.replace(accepted=jnp.array([[100.0] * 4, [0.0] * 4]))
    assert int(cheap.choose(mixed, avail, jnp.array([False, True]), jnp.int32(0))) == 0
    assert int(cheap.choose(mixed, avail, jnp.array([True, False]), jnp.int32(0))) == 3


def test_the_chain_of_width_loops_runs_the_same_rounds_as_one_switch_per_round():
    """`adaptive_run` (a chain of while loops, one per width, each running while the policy chooses it)
    emits exactly what a loop of `adaptive_round`s (one `lax.switch` per round) emits: tokens, statistics
    and estimates, with the real policy (probe rounds included) on a sampled batch."""
    target = tiny_lm(0)
    lm, params = LM.split(target.module)
    resolved = registry.resolve("ngram:2", target)
    pol = P.Policy.make(P.Costs.default(4, 1, 0.0), gamma_max=4, probe_every=3)
    prompt_bp, lengths_b, active_b = _pad(PROMPTS)
    dec = loop.Decoder(lm=lm, size=prompt_bp.shape[1] + 30 + 6, drafter=resolved.drafter, gamma=4, policy=pol)
    batch = loop.Batch.make(prompt_bp, lengths_b, active=active_b, max_new_tokens=30, key=jax.random.key(3),
                            sampling=SamplingConfig(temperature=1.0))

    @jax.jit
    def per_round(params, dparams, batch):
        state = dec.start(params, dparams, batch)
        return jax.lax.while_loop(loop.not_finished, lambda s: loop.adaptive_round(dec, params, dparams, s), state)

    a = loop.generate(dec, params, resolved.params, batch)
    b = per_round(params, resolved.params, batch)
    for x, y in zip(jax.tree.leaves((a.tokens, a.lengths, a.stats, a.adapt)), jax.tree.leaves((b.tokens, b.lengths, b.stats, b.adapt))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert 0 < int(np.asarray(a.adapt.plain).sum()) < int(np.asarray(a.stats.rounds).sum()), "both kinds of round ran"


def test_with_remaining_tokens_the_slowest_row_decides():
    """A call returns when its last row does. Row 0 accepts 90% of proposals, row 1 nothing: with the
    same tokens left, speculating only slows row 1 (and the call) down, so the width is 0, although the
    batch's total tokens per unit of cost would be higher at width 4; when row 0 has far more left,
    it is the slowest row and the widest width pays."""
    reached = jnp.full((2, 4), 100.0)
    adapt = P.Adapt.zeros(2, 4).replace(reached=reached, accepted=jnp.array([[90.0] * 4, [0.0] * 4]))
    pol = P.Policy(widths=(0, 1, 2, 4), round_cost=(1.0, 1.05, 1.1, 1.2), strength=1e-6, pooled_strength=1e-6)
    active, avail, step = jnp.array([True, True]), jnp.array([4, 4]), jnp.int32(0)
    assert int(pol.choose(adapt, avail, active, step)) == 3  # total tokens per unit of cost
    assert int(pol.choose(adapt, avail, active, step, jnp.array([40, 40]))) == 0
    assert int(pol.choose(adapt, avail, active, step, jnp.array([200, 40]))) == 3
    assert int(pol.choose(adapt, avail, jnp.array([True, False]), step, jnp.array([40, 40]))) == 3  # row 1 is done
    rate = dataclasses.replace(pol, objective="rate")
    assert int(rate.choose(adapt, avail, active, step, jnp.array([40, 40]))) == 3
    with pytest.raises(ConfigError, match="objective"):
        dataclasses.replace(pol, objective="fastest")


def test_update_counts_reached_and_accepted_proposals_with_decay():
    pol = P.Policy(widths=(0, 2), round_cost=(1.0, 1.1), decay=0.5)
    adapt = P.Adapt.zeros(3, 3).replace(reached=jnp.ones((3, 3)), accepted=jnp.ones((3, 3)))
    proposed = jnp.array([[True, True, False], [True, True, True], [True, True, True]])
    new = pol.update(adapt, jnp.array([1, 3, 2]), proposed, jnp.array([True, True, False]), jnp.int32(2))
    np.testing.assert_allclose(np.asarray(new.reached), [[1.5, 1.5, 0.5], [1.5, 1.5, 1.5], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(np.asarray(new.accepted), [[1.5, 0.5, 0.5], [1.5, 1.5, 1.5], [1.0, 1.0, 1.0]])
    # a row without a proposal in the round (a plain step, or prompt lookup without a match) keeps its counts
    none = pol.update(adapt, jnp.zeros(3, jnp.int32), jnp.array([[False] * 3, [True] * 3, [False] * 3]),
                      jnp.array([True] * 3), jnp.int32(2))
    np.testing.assert_allclose(np.asarray(none.reached), [[1.0] * 3, [1.5, 0.5, 0.5], [1.0] * 3])
    assert np.asarray(new.width).tolist() == [2, 2, 0]
    assert np.asarray(pol.update(adapt, jnp.zeros(3, jnp.int32), proposed, jnp.array([True] * 3),
                                 jnp.int32(0)).plain).tolist() == [1, 1, 1]


def test_probe_rounds_verify_the_narrowest_width_when_nothing_else_would():
    pol = P.Policy(widths=(0, 1, 2), round_cost=(1.0, 1.2, 1.4), prior=0.1, probe_every=4)
    adapt, active, avail = P.Adapt.zeros(2, 2), jnp.array([True, True]), jnp.array([2, 2])
    chosen = [int(pol.choose(adapt, avail, active, jnp.int32(s))) for s in range(8)]
    assert chosen == [0, 0, 0, 1, 0, 0, 0, 1]
    assert int(pol.choose(adapt, jnp.array([0, 0]), active, jnp.int32(3))) == 0  # nothing to verify
    assert dataclasses.replace(pol, probe_every=0).probe_index() is None
    # a width that cannot pay even at acceptance 0.9 is not probed
    assert dataclasses.replace(pol, round_cost=(1.0, 2.0, 3.0)).probe_index() is None


def test_drafter_labels_are_canonical():
    from specjax.sampler import drafter_label

    assert drafter_label("ngram:3", None, None) == drafter_label("ngram:3:1", None, None) == "ngram:3:1"
    ls = registry.resolve("layerskip:0-2,5", tiny_lm(0, layers=6)).drafter
    assert drafter_label("layerskip:0-2,5", ls, None) == "layerskip:0-2,5:shared"
    assert drafter_label("eagle:some-head", None, None) == "eagle:some-head"


def test_policy_settings_are_checked(calibration_file):
    with pytest.raises(ConfigError, match="widths"):
        P.Policy(widths=(2, 1), round_cost=(1.0, 1.0))
    with pytest.raises(ConfigError, match="round_cost"):
        P.Policy(widths=(0, 1), round_cost=(1.0,))
    with pytest.raises(ConfigError, match="prior"):
        P.Policy(widths=(0, 1), round_cost=(1.0, 1.0), prior=1.0)
    with pytest.raises(ConfigError, match="gamma_max"):
        api.generate(tiny_lm(0), [[1, 2]], draft="ngram:2", gamma=4, gamma_max=8)
    with pytest.raises(ConfigError, match="needs a drafter"):
        api.generate(tiny_lm(0), [[1, 2]], gamma="auto")
    with pytest.raises(ConfigError, match="strength"):
        P.Policy(widths=(0, 1), round_cost=(1.0, 1.0), strength=0.0)
    with pytest.raises(ConfigError, match="policy options"):
        api.generate(tiny_lm(0), [[1, 2]], draft="ngram:2", gamma="auto", policy={"priors": 0.5})
    with pytest.raises(ConfigError, match="does not exist"):
        api.generate(tiny_lm(0), [[1, 2]], draft="ngram:2", gamma="auto", calibration="/no/such/file.json")
    lm, _ = LM.split(tiny_lm(0).module)
    with pytest.raises(ConfigError, match="needs a drafter"):
        loop.Decoder(lm=lm, size=16, policy=cycling(2))
    own = registry.resolve("layerskip:1:own", tiny_lm(0)).drafter
    with pytest.raises(ConfigError, match="cannot include width 0"):
        loop.Decoder(lm=lm, size=16, drafter=own, gamma=2, policy=cycling(2))
    loop.Decoder(lm=lm, size=16, drafter=own, gamma=2, policy=cycling(2, min_width=1))  # fine without it


# -- calibration -----------------------------------------------------------------------------------

def entry(rounds_by_batch: dict) -> dict:
    return {"batches": {str(b): {"round": r} for b, r in rounds_by_batch.items()}}


def test_calibration_round_trip_nearest_batch_and_fallback(tmp_path):
    path = str(tmp_path / "cal.json")
    cheap = [1.0, 1.05, 1.1, 1.15, 1.2]
    dear = [1.0, 2.1, 3.2, 4.3, 5.4]  # even a = 0.9 loses at every window
    e = entry({1: cheap, 4: cheap, 16: dear})
    key = P.calibration_key(backend="cpu", device_kind="cpu", model="m", drafter="d")
    assert P.save_calibration(key, e, path) == path
    assert P.load_calibration(path)[key] == e
    assert P.costs_from_entry(e, 3, 4).round == tuple(cheap)  # the nearest measured batch at or above
    assert P.costs_from_entry(e, 64, 4).round == tuple(dear)  # past the largest: the largest
    assert P.costs_from_entry(e, 1, 8) is None  # does not cover G_max = 8
    assert P.fallback_batch(e, 0.9) == 16
    assert P.fallback_batch(entry({1: cheap}), 0.9) is None


def test_auto_policy_reads_the_calibration_and_falls_back_to_plain_above_its_batch(tmp_path, monkeypatch):
    path = str(tmp_path / "cal.json")
    monkeypatch.setattr(P, "device_identity", lambda: ("cpu", "test-cpu"))
    key = P.calibration_key(backend="cpu", device_kind="test-cpu", model="m", drafter="d")
    P.save_calibration(key, entry({1: [1.0, 1.1, 1.2, 1.3, 1.4], 8: [1.0, 2.1, 3.2, 4.3, 5.4]}), path)
    small = P.auto_policy(model="m", drafter="d", batch=1, gamma_max=4, draft_cost=0.5, path=path)
    assert small.widths == (0, 1, 2, 4) and small.round_cost == (1.0, 1.1, 1.2, 1.4)
    assert "calibrated" in small.source
    assert P.auto_policy(model="m", drafter="d", batch=8, gamma_max=4, draft_cost=0.5, path=path).widths == (0,)
    other = P.auto_policy(model="m", drafter="other", batch=1, gamma_max=4, draft_cost=0.5, path=path)
    assert other.source.startswith("default") and other.round_cost[1] == pytest.approx(1.0 + 0.5 + P.VERIFY_SLOPE)
    no_plain = P.auto_policy(model="m", drafter="d", batch=1, gamma_max=4, draft_cost=0.5, path=path,
                             must_observe=True)
    assert no_plain.widths == (1, 2, 4)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="calibration"):
        P.load_calibration(str(tmp_path / "bad.json"))
    P.save_calibration(key, {"batches": {"1": {"round": "cheap"}}}, path)
    with pytest.raises(ConfigError, match="'round' must be a list of positive numbers"):
        P.auto_policy(model="m", drafter="d", batch=1, gamma_max=4, draft_cost=0.5, path=path)


# -- exactness of adaptive rounds ------------------------------------------------------------------

@pytest.fixture(scope="module")
def target():
    return tiny_lm(0)


@pytest.fixture(scope="module")
def ar_tokens(target):
    return api.generate(target, PROMPTS, max_new_tokens=40).tokens


DRAFTERS = ["ngram:3", "layerskip:1", "layerskip:1:own", "model"]


def drafter_for(name, target):
    return perturbed(target, 1, 0.005) if name == "model" else name


@pytest.mark.slow  # make test-all: make test runs every width (below) and the real policy in test_distribution
@pytest.mark.parametrize("drafter", ["ngram:3", "layerskip:1"])  # the others: every width, below
def test_greedy_auto_equals_plain_greedy(target, ar_tokens, drafter):
    # probe_every=4: layer skip (half the target here) would otherwise never be tried at the default costs
    result = api.generate(target, PROMPTS, draft=drafter_for(drafter, target), gamma="auto", max_new_tokens=40,
                          policy={"probe_every": 4})
    assert result.tokens == ar_tokens
    assert result.stats["mean_window"] > 0 and result.stats["plain_rounds"] > 0, result.stats


@pytest.mark.parametrize("drafter", [pytest.param(d, marks=pytest.mark.slow) if d == "layerskip:1:own" else d
                                     for d in DRAFTERS])  # :own runs the draft model's code path: make test-all
def test_greedy_equals_plain_greedy_through_every_width(target, ar_tokens, drafter):
    """The loop run with a policy that cycles through every compiled width (0 included, where the
    drafter allows it): every branch of the adaptive round keeps greedy output exact."""
    lm, params = LM.split(target.module)
    resolved = registry.resolve(drafter_for(drafter, target), target)
    gmax = 3  # widths 0, 1, 2, 3: G_max not a power of two
    pol = cycling(gmax, 1 if resolved.drafter.must_observe else 0)
    prompt_bp, lengths_b, active_b = _pad(PROMPTS)
    dec = loop.Decoder(lm=lm, size=prompt_bp.shape[1] + 40 + gmax + 2, drafter=resolved.drafter, gamma=gmax,
                       policy=pol)
    batch = loop.Batch.make(prompt_bp, lengths_b, active=active_b, max_new_tokens=40, key=jax.random.key(0))
    state = loop.generate(dec, params, resolved.params, batch)
    out = [np.asarray(state.tokens)[b, len(p):int(state.lengths[b])].tolist() for b, p in enumerate(PROMPTS)]
    assert out == ar_tokens
    widths = np.asarray(state.adapt.width)[:len(PROMPTS)]
    rounds = np.asarray(state.stats.rounds)[:len(PROMPTS)]
    assert widths.sum() > 0 and (np.asarray(state.adapt.plain).sum() > 0) != resolved.drafter.must_observe
    assert np.all(rounds > len(pol.widths)), "every row went through every width"


def _pad(prompts):
    from specjax import sampler

    return sampler.pad_batch(prompts)


def test_auto_greedy_with_an_eagle_head_and_its_cache_after_adaptive_rounds():
    """EAGLE-3 under gamma="auto" with every width visited: output equals plain greedy output."""
    from test_eagle import frequent_head

    target = tiny_lm(0, vocab=12, layers=3, scale=0.6)
    ar = api.generate(target, PROMPTS[:2], max_new_tokens=24, eos_ids=())
    head = frequent_head(target.module, ar.tokens, 0, draft_vocab=9, seed=2, scale=3.0)
    lm, params = LM.split(target.module)
    resolved = registry.resolve(head, target)
    dec = loop.Decoder(lm=lm, size=48, drafter=resolved.drafter, gamma=4, policy=cycling(4))
    prompt_bp, lengths_b, active_b = _pad(PROMPTS[:2])
    batch = loop.Batch.make(prompt_bp, lengths_b, active=active_b, max_new_tokens=24, key=jax.random.key(0))
    state = loop.generate(dec, params, resolved.params, batch)
    out = [np.asarray(state.tokens)[b, len(p):int(state.lengths[b])].tolist() for b, p in enumerate(PROMPTS[:2])]
    assert out == ar.tokens
    assert int(np.asarray(state.stats.accepted).sum()) > 0


@pytest.mark.slow  # make test-all (the test budget)
@pytest.mark.parametrize("drafter", ["ngram:3", "layerskip:1:own"])
def test_the_batch_fallback_program_decodes_plainly(target, ar_tokens, drafter):
    """A policy with width 0 only (what auto_policy returns from the calibrated fallback batch size on):
    every round is a plain step, nothing is drafted, the output is plain greedy output."""
    lm, params = LM.split(target.module)
    resolved = registry.resolve(drafter, target)
    prompt_bp, lengths_b, active_b = _pad(PROMPTS)
    dec = loop.Decoder(lm=lm, size=prompt_bp.shape[1] + 40 + 6, drafter=resolved.drafter, gamma=4,
                       policy=P.Policy(widths=(0,), round_cost=(1.0,)))
    batch = loop.Batch.make(prompt_bp, lengths_b, active=active_b, max_new_tokens=40, key=jax.random.key(0))
    state = loop.generate(dec, params, resolved.params, batch)
    out = [np.asarray(state.tokens)[b, len(p):int(state.lengths[b])].tolist() for b, p in enumerate(PROMPTS)]
    assert out == ar_tokens
    n = len(PROMPTS)
    assert np.asarray(state.stats.drafted)[:n].sum() == 0
    assert np.array_equal(np.asarray(state.adapt.plain)[:n], np.asarray(state.stats.rounds)[:n])
