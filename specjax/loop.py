"""Decode loops as single jitted programs: prefill, then a `lax.while_loop` until every row is done.

Axes: B batch, P padded prompt length, S buffer/cache slots, G proposals per round, V vocabulary,
N tokens offered to `commit` in one step.

Invariants of `SpecState`, per row b:
  tokens[b, :lengths[b]] is the prompt followed by everything emitted so far;
  the target cache holds keys/values for the first lengths[b] - 1 tokens (all but the newest, which
  the next forward pass feeds); nothing is written for rows that are done.

`generate_spec` runs speculation rounds (draft G, verify G + 1 in one target pass, accept a prefix
per row, commit); `generate_ar` is the autoregressive baseline built from the same pieces.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from specjax import rejection, sampling
from specjax.cache import KVCache
from specjax.config import DecodeConfig, SamplingConfig
from specjax.lm import LM


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


def prompt_positions(state: SpecState, P: int) -> jax.Array:
    """Positions [B,P] of right-padded prompts; -1 marks padding and inactive rows."""
    t_p = jnp.arange(P)
    return jnp.where((t_p < state.prompt_lengths[:, None]) & ~state.done[:, None], t_p, -1)


def start(lm: LM, params, prompt_bp, prompt_lengths_b, active_b, key, *, size: int, gamma: int,
          sampling_cfg: SamplingConfig, decode: DecodeConfig, headroom: int) -> SpecState:
    """Allocate the buffers, prefill the target and commit the first token."""
    B, P = prompt_bp.shape
    state = SpecState(
        tokens=jnp.zeros((B, size), jnp.int32).at[:, :P].set(prompt_bp.astype(jnp.int32)),
        lengths=prompt_lengths_b.astype(jnp.int32),
        prompt_lengths=prompt_lengths_b.astype(jnp.int32),
        done=~active_b,
        cache=lm.init_cache(params, B, size),
        draft=None,
        key=key,
        steps=jnp.zeros((), jnp.int32),
        stats=SpecStats.zeros(B, gamma),
    )
    last_b = jnp.maximum(state.prompt_lengths - 1, 0)
    logits_bv, cache = lm.apply_at(params, prompt_bp, prompt_positions(state, P), state.cache, last_b)
    key, sub = jax.random.split(state.key)
    first_b = sampling.sample(sub, logits_bv, sampling_cfg, decode.vocab_size)
    state = state.replace(cache=cache.rollback(state.prompt_lengths), key=key)
    state, _ = commit(state, first_b[:, None], jnp.ones_like(first_b), decode, headroom)
    return state


def _not_finished(state: SpecState):
    return ~jnp.all(state.done)


def verify(lm: LM, params, state: SpecState, draft_bg: jax.Array, *, may_abstain: bool = False):
    """One target pass over [newest committed token, G proposals]: -> (logits [B,G+1,V], cache).

    Absent proposals (-1) are fed as token 0: causality keeps them from affecting any logits that
    the acceptance rule reads. When the drafter may abstain and no row proposed anything, a plain
    one-token step replaces the (G+1)-token pass (its logits padded to G+1 positions)."""
    G = draft_bg.shape[1]
    tokens_bg1 = jnp.concatenate([newest_tokens(state)[:, None], jnp.maximum(draft_bg, 0)], axis=1)
    positions_bg1 = state.lengths[:, None] - 1 + jnp.arange(G + 1)
    positions_bg1 = jnp.where(state.done[:, None], -1, positions_bg1)

    def full(_):
        return lm.apply(params, tokens_bg1, positions_bg1, state.cache)

    def single(_):
        logits_b1v, cache = lm.apply(params, tokens_bg1[:, :1], positions_bg1[:, :1], state.cache)
        return jnp.pad(logits_b1v, ((0, 0), (0, G), (0, 0))), cache

    if not may_abstain:
        return full(None)
    return jax.lax.cond(jnp.any((draft_bg[:, 0] >= 0) & ~state.done), full, single, None)


def spec_round(lm: LM, params, drafter, draft_params, state: SpecState, *, gamma: int,
               sampling_cfg: SamplingConfig, decode: DecodeConfig, accept: Callable | None = None) -> SpecState:
    """Draft G tokens, verify them in one target pass, accept a prefix per row, commit."""
    G = gamma
    key, k_draft, k_accept = jax.random.split(state.key, 3)
    draft_bg, q_bgv, state = drafter.propose(draft_params, params, state, k_draft, G, sampling_cfg,
                                             decode.vocab_size)
    logits_bgv, cache = verify(lm, params, state, draft_bg, may_abstain=drafter.may_abstain)
    if accept is not None:  # a rule injected by tests
        n_b, next_b = accept(k_accept, draft_bg, q_bgv, sampling.warp(logits_bgv, sampling_cfg, decode.vocab_size))
    elif sampling_cfg.greedy:
        n_b, next_b = rejection.accept_greedy(draft_bg, sampling.greedy(logits_bgv, decode.vocab_size))
    else:
        p_bgv = sampling.warp(logits_bgv, sampling_cfg, decode.vocab_size)
        n_b, next_b = rejection.accept_sampled(k_accept, draft_bg, q_bgv, p_bgv)

    j_g1 = jnp.arange(G + 1)
    padded_bg1 = jnp.concatenate([draft_bg, jnp.zeros_like(draft_bg[:, :1])], axis=1)
    new_bg1 = jnp.where(j_g1 < n_b[:, None], padded_bg1, next_b[:, None])

    active_b1 = ~state.done[:, None]
    j_g = jnp.arange(G)
    present_bg = (draft_bg >= 0) & active_b1
    stats = state.stats
    stats = stats.replace(
        rounds=stats.rounds + active_b1[:, 0],
        drafted=stats.drafted + present_bg.sum(axis=1),
        accepted=stats.accepted + jnp.where(active_b1[:, 0], n_b, 0),
        accepted_at=stats.accepted_at + ((j_g < n_b[:, None]) & active_b1),
        reached_at=stats.reached_at + ((j_g <= n_b[:, None]) & present_bg),
    )
    state = state.replace(key=key, steps=state.steps + 1, stats=stats)
    state, _ = commit(state, new_bg1, n_b + 1, decode, headroom=G + 1)
    # Rejected proposals are discarded by resetting lengths; their cache slots are overwritten later.
    return state.replace(cache=cache.rollback(jnp.maximum(state.lengths - 1, 0)))


def ar_step(lm: LM, params, state: SpecState, *, sampling_cfg: SamplingConfig, decode: DecodeConfig) -> SpecState:
    """One autoregressive step: feed each row's newest token, sample the next, commit it."""
    pos_b = jnp.where(state.done, -1, state.lengths - 1)
    logits_b1v, cache = lm.apply(params, newest_tokens(state)[:, None], pos_b[:, None], state.cache)
    key, sub = jax.random.split(state.key)
    next_b = sampling.sample(sub, logits_b1v[:, 0], sampling_cfg, decode.vocab_size)
    state = state.replace(cache=cache.rollback(state.lengths), key=key, steps=state.steps + 1)
    state, _ = commit(state, next_b[:, None], jnp.ones_like(next_b), decode)
    return state


def decode_start(lm: LM, params, drafter, draft_params, prompt_bp, prompt_lengths_b, active_b, key, *,
                 gamma: int, sampling_cfg: SamplingConfig, decode: DecodeConfig, size: int) -> SpecState:
    """Prefill the target (and the drafter, if any) and commit the first token: -> SpecState.

    prompt_bp [B,P] right-padded prompts, prompt_lengths_b [B], active_b [B] (False for batch
    padding rows, which stay done). `size` (S) is the token buffer and cache length; with a drafter
    it must leave G + 1 slots of headroom beyond prompt + max_new_tokens. drafter=None (and
    gamma=0) gives the autoregressive baseline's state.
    """
    headroom = 0 if drafter is None else gamma + 1
    state = start(lm, params, prompt_bp, prompt_lengths_b, active_b, key, size=size, gamma=gamma,
                  sampling_cfg=sampling_cfg, decode=decode, headroom=headroom)
    if drafter is None:
        return state
    B, P = prompt_bp.shape
    dstate = drafter.init(draft_params, params, B, size)
    active_prompt = state.replace(done=~active_b)
    dstate = drafter.prefill(draft_params, params, dstate, prompt_bp, prompt_positions(active_prompt, P))
    return state.replace(draft=dstate)


def decode_run(lm: LM, params, drafter, draft_params, state: SpecState, *, gamma: int,
               sampling_cfg: SamplingConfig, decode: DecodeConfig, accept: Callable | None = None) -> SpecState:
    """The `lax.while_loop`: speculation rounds (or autoregressive steps when drafter is None)
    until every row is done (EOS, max_new_tokens, or a full buffer)."""

    def body(state: SpecState) -> SpecState:
        if drafter is None:
            return ar_step(lm, params, state, sampling_cfg=sampling_cfg, decode=decode)
        return spec_round(lm, params, drafter, draft_params, state, gamma=gamma, sampling_cfg=sampling_cfg,
                          decode=decode, accept=accept)

    return jax.lax.while_loop(_not_finished, body, state)


@functools.partial(jax.jit, static_argnames=("lm", "drafter", "sampling_cfg", "decode", "gamma", "size", "accept"))
def generate_spec(lm: LM, params, drafter, draft_params, prompt_bp, prompt_lengths_b, active_b, key, *,
                  gamma: int, sampling_cfg: SamplingConfig, decode: DecodeConfig, size: int,
                  accept: Callable | None = None) -> SpecState:
    """Speculative decoding in one jit: `decode_start`, then `decode_run`."""
    state = decode_start(lm, params, drafter, draft_params, prompt_bp, prompt_lengths_b, active_b, key,
                         gamma=gamma, sampling_cfg=sampling_cfg, decode=decode, size=size)
    return decode_run(lm, params, drafter, draft_params, state, gamma=gamma, sampling_cfg=sampling_cfg,
                      decode=decode, accept=accept)


@functools.partial(jax.jit, static_argnames=("lm", "sampling_cfg", "decode", "size"))
def generate_ar(lm: LM, params, prompt_bp, prompt_lengths_b, active_b, key, *,
                sampling_cfg: SamplingConfig, decode: DecodeConfig, size: int) -> SpecState:
    """Autoregressive baseline in one jit: one target forward per token, with the same warping,
    cache, state and stopping as the speculative loop (so speedups compare like with like)."""
    state = decode_start(lm, params, None, None, prompt_bp, prompt_lengths_b, active_b, key,
                         gamma=0, sampling_cfg=sampling_cfg, decode=decode, size=size)
    return decode_run(lm, params, None, None, state, gamma=0, sampling_cfg=sampling_cfg, decode=decode)
