"""The speculative loop: greedy equivalence, stopping, per-row lengths, what drafters observe."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturbed, tiny_lm

from specjax import api, loop, sampler
from specjax.config import SamplingConfig
from specjax.drafters import ModelDrafter, Stateless, registry
from specjax.errors import ConfigError
from specjax.rejection import Proposal
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


@pytest.mark.parametrize("gamma", [1, 7])
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


# make test runs each drafter at one or two windows (the test budget); make test-all at every one.
FAST_WINDOWS = {"layerskip:1": (1, 7), "layerskip:1:own": (4,), "layerskip:2": (4,), "ngram:3": (1, 7)}


@pytest.mark.parametrize("drafter,gamma", [
    pytest.param(d, g, marks=() if g in FAST_WINDOWS[d] else pytest.mark.slow) for d in FAST_WINDOWS for g in (1, 4, 7)])
def test_greedy_speculative_equals_autoregressive_for_every_drafter(target, ar_tokens, gamma, drafter):
    result = api.generate(target, PROMPTS, draft=drafter, gamma=gamma, max_new_tokens=40)
    assert result.tokens == ar_tokens
    if drafter == "layerskip:2":  # every layer of the target: every proposal accepted
        assert result.stats["acceptance_rate"] == 1.0
    if drafter.startswith("ngram"):
        assert sum(result.stats["drafted"]) > 0, "the repetitive prompt must yield lookup proposals"


def _run_spec(target, draft, prompts, *, gamma, max_new, eos=(), sampling=SamplingConfig(), seed=0, size=None):
    lm, params = LM.split(target.module)
    dlm, dparams = LM.split(draft.module)
    prompt_bp, lengths_b, active_b = sampler.pad_batch(prompts)
    size = size or prompt_bp.shape[1] + max_new + gamma + 2
    dec = loop.Decoder(lm=lm, drafter=ModelDrafter(dlm), gamma=gamma, size=size)
    batch = loop.Batch.make(prompt_bp, lengths_b, active=active_b, max_new_tokens=max_new, eos_ids=tuple(eos),
                            sampling=sampling, key=jax.random.key(seed))
    return loop.generate(dec, params, dparams, batch)


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


def test_max_new_tokens_is_exact():
    # one program (max_new_tokens is a runtime value), the buffer sized for the largest
    for max_new in (1, 2, 5, 13):
        state = _run_spec(target_lm := tiny_lm(0), target_lm, PROMPTS, gamma=4, max_new=max_new, size=64)
        new = np.asarray(state.lengths - state.prompt_lengths)
        assert new[: len(PROMPTS)].tolist() == [max_new] * len(PROMPTS)
    # and per row: each row stops at its own budget
    lm, params = LM.split(target_lm.module)
    prompt_bp, lengths_b, active_b = sampler.pad_batch(PROMPTS)
    budgets = [1, 2, 5, 13, 7, 1, 1, 1][:prompt_bp.shape[0]]
    batch = loop.Batch.make(prompt_bp, lengths_b, active=active_b, max_new_tokens=budgets)
    state = loop.generate(loop.Decoder(lm=lm, drafter=ModelDrafter(lm), gamma=4, size=64), params, params, batch)
    new = np.asarray(state.lengths - state.prompt_lengths)
    assert new[: len(PROMPTS)].tolist() == budgets[: len(PROMPTS)]


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


# -- the verify/observe seam -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recorder(Stateless):
    """Wraps a drafter, asks the target for `taps`, and records everything `prefill` and `observe`
    receive (one slot per round) in its state, next to the inner drafter's own state."""

    inner: Any
    taps: tuple[int, ...]
    gamma: int
    dim: int
    rounds: int = 64
    name: str = "recorder"

    @property
    def may_abstain(self):
        return self.inner.may_abstain

    def init(self, draft_params, target_params, batch, size):
        R, n, G1 = self.rounds, len(self.taps), self.gamma + 1
        return {
            "inner": self.inner.init(draft_params, target_params, batch, size),
            "round": jnp.zeros((), jnp.int32),
            "prefill_taps": jnp.zeros((n, batch, size, self.dim)),
            "tokens": jnp.full((R, batch, G1), -1, jnp.int32),
            "positions": jnp.full((R, batch, G1), -1, jnp.int32),
            "accepted": jnp.full((R, batch), -1, jnp.int32),
            "committed": jnp.full((R, batch), -1, jnp.int32),
            "next": jnp.full((R, batch), -1, jnp.int32),
            "taps": jnp.zeros((R, n, batch, G1, self.dim)),
        }

    def prefill(self, draft_params, target_params, dstate, prefill):
        P = prefill.tokens.shape[1]
        dstate = dict(dstate, prefill_taps=dstate["prefill_taps"].at[:, :, :P].set(prefill.taps))
        return dict(dstate, inner=self.inner.prefill(draft_params, target_params, dstate["inner"], prefill))

    def propose(self, draft_params, target_params, state, key, gamma, sampling, vocab_size):
        mine = state.draft
        proposal, state = self.inner.propose(draft_params, target_params, state.replace(draft=mine["inner"]), key,
                                             gamma, sampling, vocab_size)
        return proposal, state.replace(draft=dict(mine, inner=state.draft))

    def observe(self, draft_params, target_params, dstate, obs):
        r = dstate["round"]
        out = dict(dstate, round=r + 1)
        for field, value in (("tokens", obs.tokens), ("positions", obs.positions), ("accepted", obs.accepted),
                             ("committed", obs.committed), ("next", obs.next_tokens), ("taps", obs.taps)):
            out[field] = dstate[field].at[r].set(value)
        out["inner"] = self.inner.observe(draft_params, target_params, dstate["inner"], obs)
        return out


TAPS = (0, 1, 3)  # the embedding output, the input of block 1, and the last block's output (L = 3)


def _decode(target, drafter, sampling, *, gamma=3, max_new=24, seed=0, eos=(), verify="batched", prompts=PROMPTS):
    lm, params = LM.split(target.module)
    prompt_bp, lengths_b, active_b = sampler.pad_batch(prompts)
    size = prompt_bp.shape[1] + max_new + gamma + 2
    dec = loop.Decoder(lm=lm, drafter=drafter, gamma=gamma, size=size, verify=verify)
    batch = loop.Batch.make(prompt_bp, lengths_b, active=active_b, max_new_tokens=max_new, eos_ids=tuple(eos),
                            sampling=sampling, key=jax.random.key(seed))
    return loop.generate(dec, params, None, batch)


# Every prompt twice in one batch: greedy rows, then sampled rows (one compiled program for both).
MIXED_PROMPTS = PROMPTS + PROMPTS
MIXED_SAMPLING = [SamplingConfig()] * len(PROMPTS) + [SamplingConfig(temperature=1.0, top_k=20)] * len(PROMPTS)


@pytest.mark.parametrize("inner,verify", [("layerskip:1", "batched"),
                                          pytest.param("ngram:2", "batched", marks=pytest.mark.slow),  # test-all
                                          ("layerskip:1", "stepwise")], ids=["layerskip", "ngram", "stepwise"])
def test_observe_receives_the_verified_round_and_the_targets_features(inner, verify):
    """Greedy and sampled rows in one batch; also for the stepwise verify pass, whose logits and taps
    come from G+1 one-token passes."""
    target = tiny_lm(0, layers=3, scale=0.04)  # unscaled init: features of order 0.1, where 1e-5 is float32 noise
    lm, params = LM.split(target.module)
    cfg = lm.config
    inner_drafter = registry.resolve(inner, target).drafter
    recorder = Recorder(inner=inner_drafter, taps=TAPS, gamma=3, dim=cfg.dim)
    state = _decode(target, recorder, MIXED_SAMPLING, verify=verify, prompts=MIXED_PROMPTS)
    plain = _decode(target, inner_drafter, MIXED_SAMPLING, verify=verify, prompts=MIXED_PROMPTS)
    np.testing.assert_array_equal(np.asarray(state.tokens), np.asarray(plain.tokens),
                                  err_msg="asking for taps changed the output")

    # a separate full forward of the target over every committed token
    tokens_bs, lengths_b = np.asarray(state.tokens), np.asarray(state.lengths)
    B, S = tokens_bs.shape
    positions_bs = np.where(np.arange(S) < lengths_b[:, None], np.arange(S), -1)
    logits_bsv, _, taps_nbsd = lm.forward(params, jnp.asarray(tokens_bs), jnp.asarray(positions_bs),
                                          lm.init_cache(params, B, S), taps=TAPS)
    taps_nbsd, greedy_bs = np.asarray(taps_nbsd), np.asarray(jnp.argmax(logits_bsv, -1))
    rec = jax.tree.map(np.asarray, state.draft)
    plen = np.asarray(state.prompt_lengths)
    for b in range(len(MIXED_PROMPTS)):
        np.testing.assert_allclose(rec["prefill_taps"][:, b, :plen[b]], taps_nbsd[:, b, :plen[b]], rtol=1e-5, atol=1e-5)
    rounds = int(rec["round"])
    assert rounds == int(state.steps) and rounds > 3
    checked = 0
    for r in range(rounds):
        for b in range(len(MIXED_PROMPTS)):
            p0 = rec["positions"][r, b, 0]
            if p0 < 0:  # the row was already done
                assert rec["accepted"][r, b] == 0 and rec["committed"][r, b] == 0
                continue
            n, c = rec["accepted"][r, b], rec["committed"][r, b]
            assert 1 <= c <= n + 1
            # the newest committed token, then the accepted proposals, sit in the buffer at their positions
            np.testing.assert_array_equal(rec["tokens"][r, b, :c], tokens_bs[b, p0:p0 + c])
            assert rec["positions"][r, b].tolist() == list(range(p0, p0 + 4))
            if c == n + 1:  # the rule's next token is the last one committed
                assert rec["next"][r, b] == tokens_bs[b, p0 + c]
            np.testing.assert_allclose(rec["taps"][r, :, b, :c], taps_nbsd[:, b, p0:p0 + c], rtol=1e-5, atol=1e-5)
            checked += c
            if MIXED_SAMPLING[b].greedy:  # the accepted count is the run of proposals equal to the target's argmax
                proposals = rec["tokens"][r, b, 1:]
                agree = proposals == greedy_bs[b, p0:p0 + 3]
                if c == n + 1:
                    want = int(np.argmin(np.append(agree, False)))
                    assert n == want, f"round {r} row {b}: accepted {n}, the target agrees with {want}"
                else:  # cut by the budget: only the committed part is the target's
                    assert agree[:c - 1].all()
    assert checked > 80


@dataclasses.dataclass(frozen=True)
class Abstainer(Stateless):
    """Never proposes anything: every round is the verify pass's one-token branch."""

    name: str = "abstainer"
    may_abstain: bool = True

    def propose(self, draft_params, target_params, state, keys, gamma, sampling, vocab_size):
        return Proposal(jnp.full((state.tokens.shape[0], gamma), -1, jnp.int32)), state


def test_abstaining_rounds_still_show_the_drafter_the_newest_tokens_features():
    """Greedy and sampled rows in one batch."""
    target = tiny_lm(0, layers=3, scale=0.04)
    lm, params = LM.split(target.module)
    state = _decode(target, Recorder(inner=Abstainer(), taps=TAPS, gamma=3, dim=lm.config.dim), MIXED_SAMPLING,
                    max_new=12, prompts=MIXED_PROMPTS)
    ar = api.generate(target, PROMPTS, max_new_tokens=12)
    plen, lengths = np.asarray(state.prompt_lengths), np.asarray(state.lengths)
    assert [np.asarray(state.tokens)[b, plen[b]:lengths[b]].tolist() for b in range(len(PROMPTS))] == ar.tokens
    tokens_bs, lengths_b = np.asarray(state.tokens), np.asarray(state.lengths)
    B, S = tokens_bs.shape
    positions_bs = np.where(np.arange(S) < lengths_b[:, None], np.arange(S), -1)
    _, _, taps_nbsd = lm.forward(params, jnp.asarray(tokens_bs), jnp.asarray(positions_bs), lm.init_cache(params, B, S),
                                 taps=TAPS)
    rec = jax.tree.map(np.asarray, state.draft)
    assert int(rec["round"]) == 11  # one token per round after the prefill's
    for r in range(11):
        for b in range(len(MIXED_PROMPTS)):
            p0 = rec["positions"][r, b, 0]
            assert rec["accepted"][r, b] == 0 and rec["committed"][r, b] == 1
            np.testing.assert_allclose(rec["taps"][r, :, b, 0], np.asarray(taps_nbsd)[:, b, p0], rtol=1e-5, atol=1e-5)
            assert rec["next"][r, b] == tokens_bs[b, p0 + 1]


def test_decoder_settings_are_checked():
    lm, _ = LM.split(tiny_lm(0, layers=3).module)
    common = dict(lm=lm, size=32)
    with pytest.raises(ConfigError, match=r"taps \(0, 4\).*\[0, 3\]"):
        loop.Decoder(drafter=Recorder(inner=Abstainer(), taps=(0, 4), gamma=2, dim=32), gamma=2, **common)
    with pytest.raises(ConfigError, match="distinct"):
        loop.Decoder(drafter=Recorder(inner=Abstainer(), taps=(1, 1), gamma=2, dim=32), gamma=2, **common)
    with pytest.raises(ConfigError, match="gamma must be an integer >= 1"):
        loop.Decoder(drafter=Abstainer(), gamma=0, **common)
    with pytest.raises(ConfigError, match="gamma must be 0 without a drafter"):
        loop.Decoder(gamma=3, **common)
    with pytest.raises(ConfigError, match="verify must be one of batched, stepwise, got 'serial'"):
        loop.Decoder(verify="serial", **common)


@pytest.mark.parametrize("verify", ["batched", "stepwise"])
def test_prompt_lookups_chain_of_loops_runs_the_same_rounds_as_one_cond_per_round(target, verify):
    """`abstain_run` (plain steps while no row proposes, full rounds while one does, as two while loops)
    emits exactly what a loop of `spec_round`s (a `lax.cond` per round) emits, on sampled batches:
    one where some row nearly always proposes, one of rows that rarely find a match."""
    lm, params = LM.split(target.module)
    resolved = registry.resolve("ngram:2", target)
    for prompts in (PROMPTS, [[42], [7, 8, 9]]):
        prompt_bp, lengths_b, active_b = sampler.pad_batch(prompts)
        dec = loop.Decoder(lm=lm, size=prompt_bp.shape[1] + 30 + 6, drafter=resolved.drafter, gamma=4, verify=verify)
        batch = loop.Batch.make(prompt_bp, lengths_b, active=active_b, max_new_tokens=30, key=jax.random.key(5),
                                sampling=SamplingConfig(temperature=1.0))

        def per_round(params, dparams, batch, dec=dec):
            state = dec.start(params, dparams, batch)
            return jax.lax.while_loop(loop.not_finished, lambda s: loop.spec_round(dec, params, dparams, s), state)

        a = loop.generate(dec, params, resolved.params, batch)
        b = jax.jit(per_round)(params, resolved.params, batch)
        for x, y in zip(jax.tree.leaves((a.tokens, a.lengths, a.stats)), jax.tree.leaves((b.tokens, b.lengths, b.stats))):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        n = len(prompts)
        drafted, rounds = np.asarray(a.stats.drafted)[:n].sum(), np.asarray(a.stats.rounds)[:n].sum()
        assert 0 < drafted < 4 * rounds, (drafted, rounds)
