"""The decode loop as pure functions: prefill, then a `lax.while_loop` of rounds until every row is done.

Axes: B batch, P padded prompt length, S buffer/cache slots, G proposals per round, V vocabulary,
N tokens offered to `commit` in one step, n tapped layers, D the target's model width.

Invariants of `SpecState`, per row b:
  tokens[b, :lengths[b]] is the prompt followed by everything emitted so far;
  the target cache holds keys/values for the first lengths[b] - 1 tokens (all but the newest, which
  the next forward pass feeds); nothing is written for rows that are done.

A speculation round (`spec_round`) is four named steps: `draft` (the drafter proposes G tokens),
`verify` (one target pass over the newest token and the G proposals), `accept` (the rule of
`specjax.rejection` decides a prefix per row) and `commit` (append, update statistics, let the
drafter observe what was verified). Without a drafter, `ar_step` is the autoregressive baseline
built from the same pieces. `Decoder` holds every static setting in one frozen, hashable object.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from specjax import rejection, sampling
from specjax.cache import KVCache
from specjax.config import DecodeConfig, SamplingConfig
from specjax.drafters.base import Observation, TargetPrefill
from specjax.errors import ConfigError
from specjax.lm import LM
from specjax.rejection import Proposal, Verdict


@struct.dataclass
class SpecStats:
    rounds: jax.Array  # [B] rounds (target verify passes) while the row was active
    drafted: jax.Array  # [B] proposals made (absent proposals of an abstaining drafter excluded)
    accepted: jax.Array  # [B] proposals accepted
    accepted_at: jax.Array  # [B, G] rounds in which proposal i was accepted
    reached_at: jax.Array  # [B, G] rounds in which proposal i existed and 0..i-1 were accepted

    @classmethod
    def zeros(cls, batch: int, gamma: int) -> "SpecStats":
        z = jnp.zeros((batch,), jnp.int32)
        zg = jnp.zeros((batch, gamma), jnp.int32)
        return cls(rounds=z, drafted=z, accepted=z, accepted_at=zg, reached_at=zg)

    def logical_axes(self) -> "SpecStats":
        b, bg = ("batch",), ("batch", None)
        return SpecStats(rounds=b, drafted=b, accepted=b, accepted_at=bg, reached_at=bg)


@struct.dataclass
class SpecState:
    tokens: jax.Array  # [B, S] int32
    lengths: jax.Array  # [B] int32, tokens in the buffer
    prompt_lengths: jax.Array  # [B] int32
    done: jax.Array  # [B] bool
    cache: KVCache  # the target's
    draft: Any  # the drafter's state (None for autoregressive decoding)
    key: jax.Array
    steps: jax.Array  # [] int32, target forward passes after prefill
    stats: SpecStats

    @property
    def size(self) -> int:
        return self.tokens.shape[1]

    def logical_axes(self) -> "SpecState":
        """Logical axis names of this type's own arrays; `cache`, `draft` and `stats` declare theirs."""
        b = ("batch",)
        return self.replace(tokens=("batch", "seq"), lengths=b, prompt_lengths=b, done=b, key=(), steps=())


@dataclasses.dataclass(frozen=True, kw_only=True)
class Decoder:
    """Everything static about one compiled decode program (hashable: the jit's static argument).

    drafter=None (and gamma=0) is plain autoregressive decoding. `size` (S) is the token buffer and
    cache length; with a drafter it must leave G + 1 slots of headroom beyond prompt +
    max_new_tokens. `rule` is `rejection.accept` (tests substitute a deliberately wrong one).
    """

    lm: LM
    sampling: SamplingConfig
    decode: DecodeConfig
    size: int
    drafter: Any = None
    gamma: int = 0
    rule: Callable = rejection.accept

    def __post_init__(self):
        if self.drafter is None:
            if self.gamma != 0:
                raise ConfigError(f"gamma must be 0 without a drafter, got {self.gamma}")
            return
        if not isinstance(self.gamma, int) or self.gamma < 1:
            raise ConfigError(f"gamma must be an integer >= 1, got {self.gamma!r}")
        taps, L = tuple(self.drafter.taps), self.lm.config.num_layers
        if len(set(taps)) != len(taps) or not all(isinstance(t, int) and 0 <= t <= L for t in taps):
            raise ConfigError(f"drafter {self.drafter.name!r} asks for taps {taps}: they must be distinct layer "
                              f"indices in [0, {L}] (the input of block i; {L} = the last block's output)")
        if self.size < self.gamma + 2:
            raise ConfigError(f"buffer size {self.size} leaves no room for a round of G = {self.gamma}")

    @property
    def headroom(self) -> int:
        return 0 if self.drafter is None else self.gamma + 1

    @property
    def taps(self) -> tuple[int, ...]:
        return () if self.drafter is None else tuple(self.drafter.taps)

    def start(self, params, draft_params, prompt_bp, prompt_lengths_b, active_b, key) -> SpecState:
        """Prefill the target (and the drafter) and commit the first token.

        prompt_bp [B,P] right-padded prompts, prompt_lengths_b [B], active_b [B] (False for batch
        padding rows, which stay done)."""
        return start(self, params, draft_params, prompt_bp, prompt_lengths_b, active_b, key)

    def run(self, params, draft_params, state: SpecState) -> SpecState:
        """The `lax.while_loop`: rounds until every row is done (EOS, max_new_tokens, a full buffer)."""

        def body(state: SpecState) -> SpecState:
            if self.drafter is None:
                return ar_step(self, params, state)
            return spec_round(self, params, draft_params, state)

        return jax.lax.while_loop(not_finished, body, state)

    def generate(self, params, draft_params, prompt_bp, prompt_lengths_b, active_b, key) -> SpecState:
        """`start`, then `run`: the whole decode as one pure function (jit it, or call it in a jit)."""
        state = self.start(params, draft_params, prompt_bp, prompt_lengths_b, active_b, key)
        return self.run(params, draft_params, state)


def commit(state: SpecState, new_bn: jax.Array, count_b: jax.Array, decode: DecodeConfig, headroom: int = 0):
    """Append new_bn[b, :count_b[b]] to every row that is not done; -> (state, emitted_b).

    A row's block is cut after its first EOS and at max_new_tokens; the row is then done. A row is
    also done when fewer than `headroom` + 1 free slots remain (its next step would not fit).
    """
    B, N = new_bn.shape
    j_n = jnp.arange(N)
    offered_bn = j_n < count_b[:, None]
    if decode.eos_ids:
        eos_bn = jnp.isin(new_bn, jnp.asarray(decode.eos_ids, jnp.int32)) & offered_bn
    else:
        eos_bn = jnp.zeros_like(offered_bn)
    upto_eos_b = jnp.where(eos_bn.any(axis=1), jnp.argmax(eos_bn, axis=1) + 1, N)
    budget_b = decode.max_new_tokens - (state.lengths - state.prompt_lengths)
    emitted_b = jnp.minimum(jnp.minimum(count_b, upto_eos_b), jnp.maximum(budget_b, 0))
    emitted_b = jnp.where(state.done, 0, emitted_b)

    size = state.size
    slot_bn = jnp.where(j_n < emitted_b[:, None], state.lengths[:, None] + j_n, size)  # size: dropped
    rows_bn = jnp.broadcast_to(jnp.arange(B)[:, None], (B, N))
    tokens = state.tokens.at[rows_bn, slot_bn].set(new_bn.astype(jnp.int32), mode="drop")
    lengths = state.lengths + emitted_b

    hit_eos_b = (eos_bn & (j_n < emitted_b[:, None])).any(axis=1)
    out_of_budget_b = lengths - state.prompt_lengths >= decode.max_new_tokens
    full_b = lengths + headroom >= size
    done = state.done | hit_eos_b | out_of_budget_b | full_b
    return state.replace(tokens=tokens, lengths=lengths, done=done), emitted_b


def newest_tokens(state: SpecState) -> jax.Array:
    """The last token of every row [B] (the one the target cache has not seen yet)."""
    idx_b = jnp.maximum(state.lengths - 1, 0)
    return jnp.take_along_axis(state.tokens, idx_b[:, None], axis=1)[:, 0]


def prompt_positions(prompt_lengths_b, active_b, P: int) -> jax.Array:
    """Positions [B,P] of right-padded prompts; -1 marks padding and inactive rows."""
    t_p = jnp.arange(P)
    return jnp.where((t_p < prompt_lengths_b[:, None]) & active_b[:, None], t_p, -1)


def not_finished(state: SpecState):
    return ~jnp.all(state.done)


def start(dec: Decoder, params, draft_params, prompt_bp, prompt_lengths_b, active_b, key) -> SpecState:
    """Allocate the buffers, prefill the target (and the drafter) and commit the first token."""
    B, P = prompt_bp.shape
    lm = dec.lm
    state = SpecState(
        tokens=jnp.zeros((B, dec.size), jnp.int32).at[:, :P].set(prompt_bp.astype(jnp.int32)),
        lengths=prompt_lengths_b.astype(jnp.int32),
        prompt_lengths=prompt_lengths_b.astype(jnp.int32),
        done=~active_b,
        cache=lm.init_cache(params, B, dec.size),
        draft=None,
        key=key,
        steps=jnp.zeros((), jnp.int32),
        stats=SpecStats.zeros(B, dec.gamma),
    )
    positions_bp = prompt_positions(state.prompt_lengths, active_b, P)
    last_b = jnp.maximum(state.prompt_lengths - 1, 0)
    logits_bv, cache, taps_nbpd = lm.forward_at(params, prompt_bp, positions_bp, state.cache, last_b, taps=dec.taps)
    key, sub = jax.random.split(state.key)
    first_b = sampling.sample(sub, logits_bv, dec.sampling, dec.decode.vocab_size)
    state = state.replace(cache=cache, key=key)
    state, _ = commit(state, first_b[:, None], jnp.ones_like(first_b), dec.decode, dec.headroom)
    if dec.drafter is None:
        return state
    dstate = dec.drafter.init(draft_params, params, B, dec.size)
    prefill = TargetPrefill(tokens=prompt_bp.astype(jnp.int32), positions=positions_bp, taps=taps_nbpd, first=first_b)
    return state.replace(draft=dec.drafter.prefill(draft_params, params, dstate, prefill))


@struct.dataclass
class Verified:
    """The target's verify pass over one round."""

    tokens: jax.Array  # [B,G+1] the newest committed token, then the G proposals (absent ones as 0)
    positions: jax.Array  # [B,G+1] (-1 for rows that are done)
    logits: jax.Array  # [B,G+1,V] float32
    taps: jax.Array  # [n,B,G+1,D]


def draft(dec: Decoder, params, draft_params, state: SpecState, key) -> tuple[Proposal, SpecState]:
    """Step 1: the drafter proposes G tokens per row."""
    return dec.drafter.propose(draft_params, params, state, key, dec.gamma, dec.sampling, dec.decode.vocab_size)


def verify(dec: Decoder, params, state: SpecState, proposal: Proposal) -> tuple[Verified, KVCache]:
    """Step 2: one target pass over [newest committed token, G proposals] -> (Verified, cache).

    Absent proposals (-1) are fed as token 0: causality keeps them from affecting any logits that
    the acceptance rule reads. When the drafter may abstain and no row proposed anything, a plain
    one-token step replaces the (G+1)-token pass (its outputs padded to G+1 positions)."""
    draft_bg = proposal.tokens
    G = draft_bg.shape[1]
    tokens_bg1 = jnp.concatenate([newest_tokens(state)[:, None], jnp.maximum(draft_bg, 0)], axis=1)
    positions_bg1 = state.lengths[:, None] - 1 + jnp.arange(G + 1)
    positions_bg1 = jnp.where(state.done[:, None], -1, positions_bg1)

    def full(_):
        return dec.lm.forward(params, tokens_bg1, positions_bg1, state.cache, taps=dec.taps)

    def single(_):
        logits_b1v, cache, taps_nb1d = dec.lm.forward(params, tokens_bg1[:, :1], positions_bg1[:, :1], state.cache,
                                                       taps=dec.taps)
        pad_g = ((0, 0), (0, G), (0, 0))
        return jnp.pad(logits_b1v, pad_g), cache, jnp.pad(taps_nb1d, ((0, 0),) + pad_g)

    if dec.drafter is not None and dec.drafter.may_abstain:
        logits_bgv, cache, taps_nbgd = jax.lax.cond(jnp.any((draft_bg[:, 0] >= 0) & ~state.done), full, single, None)
    else:
        logits_bgv, cache, taps_nbgd = full(None)
    return Verified(tokens=tokens_bg1, positions=positions_bg1, logits=logits_bgv, taps=taps_nbgd), cache


def accept(dec: Decoder, key, proposal: Proposal, verified: Verified) -> Verdict:
    """Step 3: the acceptance rule decides, per row, how many proposals to keep and the next token."""
    return dec.rule(key, proposal, verified.logits, dec.sampling, dec.decode.vocab_size)


def commit_round(dec: Decoder, params, draft_params, state: SpecState, verified: Verified, verdict: Verdict,
                 cache: KVCache) -> SpecState:
    """Step 4: append each row's block, update the statistics, let the drafter observe the round."""
    G = dec.gamma
    active_b1 = ~state.done[:, None]
    n_b = jnp.where(active_b1[:, 0], verdict.accepted, 0)
    j_g = jnp.arange(G)
    present_bg = verdict.proposed & active_b1
    stats = state.stats
    stats = stats.replace(
        rounds=stats.rounds + active_b1[:, 0],
        drafted=stats.drafted + present_bg.sum(axis=1),
        accepted=stats.accepted + n_b,
        accepted_at=stats.accepted_at + ((j_g < n_b[:, None]) & active_b1),
        reached_at=stats.reached_at + ((j_g <= n_b[:, None]) & present_bg),
    )
    state = state.replace(cache=cache, steps=state.steps + 1, stats=stats)
    state, emitted_b = commit(state, verdict.tokens, verdict.count, dec.decode, headroom=dec.headroom)
    next_b = jnp.take_along_axis(verdict.tokens, verdict.accepted[:, None], axis=1)[:, 0]
    observation = Observation(tokens=verified.tokens, proposed=present_bg, positions=verified.positions,
                              taps=verified.taps, accepted=n_b, committed=emitted_b,
                              next_tokens=jnp.where(active_b1[:, 0], next_b, -1))
    return state.replace(draft=dec.drafter.observe(draft_params, params, state.draft, observation))


def spec_round(dec: Decoder, params, draft_params, state: SpecState) -> SpecState:
    """One speculation round: draft -> verify -> accept -> commit."""
    key, k_draft, k_accept = jax.random.split(state.key, 3)
    proposal, state = draft(dec, params, draft_params, state.replace(key=key), k_draft)
    verified, cache = verify(dec, params, state, proposal)
    verdict = accept(dec, k_accept, proposal, verified)
    return commit_round(dec, params, draft_params, state, verified, verdict, cache)


def ar_step(dec: Decoder, params, state: SpecState) -> SpecState:
    """One autoregressive step: feed each row's newest token, sample the next, commit it."""
    pos_b = jnp.where(state.done, -1, state.lengths - 1)
    logits_b1v, cache, _ = dec.lm.forward(params, newest_tokens(state)[:, None], pos_b[:, None], state.cache)
    key, sub = jax.random.split(state.key)
    next_b = sampling.sample(sub, logits_b1v[:, 0], dec.sampling, dec.decode.vocab_size)
    state = state.replace(cache=cache, key=key, steps=state.steps + 1)
    state, _ = commit(state, next_b[:, None], jnp.ones_like(next_b), dec.decode)
    return state


@functools.partial(jax.jit, static_argnums=0)
def generate(dec: Decoder, params, draft_params, prompt_bp, prompt_lengths_b, active_b, key) -> SpecState:
    """`Decoder.generate` jitted with the decoder as its static argument (no mesh, nothing donated;
    `specjax.sampler` compiles the same functions with shardings and a donated state)."""
    return dec.generate(params, draft_params, prompt_bp, prompt_lengths_b, active_b, key)
