"""Decode loops as single jitted programs: prefill, then a `lax.while_loop` until every row is done.

Axes: B batch, P padded prompt length, S buffer/cache slots, V vocabulary, N tokens offered to
`commit` in one step.

Invariants of `DecodeState`, per row b:
  tokens[b, :lengths[b]] is the prompt followed by everything emitted so far;
  the target cache holds keys/values for the first lengths[b] - 1 tokens (all but the newest, which
  the next forward pass feeds); nothing is written for rows that are done.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from specjax import sampling
from specjax.cache import KVCache
from specjax.config import DecodeConfig, SamplingConfig
from specjax.lm import LM


@struct.dataclass
class DecodeState:
    tokens: jax.Array  # [B, S] int32
    lengths: jax.Array  # [B] int32, tokens in the buffer
    prompt_lengths: jax.Array  # [B] int32
    done: jax.Array  # [B] bool
    cache: KVCache  # the target's
    key: jax.Array
    steps: jax.Array  # [] int32, target forward passes after prefill

    @property
    def size(self) -> int:
        return self.tokens.shape[1]


def commit(state: DecodeState, new_bn: jax.Array, count_b: jax.Array, decode: DecodeConfig, headroom: int = 0):
    """Append new_bn[b, :count_b[b]] to every row that is not done; -> (state, emitted_b).

    A row's block is cut after its first EOS and at max_new_tokens; the row is then done. A row is
    also done when fewer than `headroom` + 1 free slots remain (the next step could not fit).
    """
    B, N = new_bn.shape
    j_n = jnp.arange(N)
    offered_bn = j_n < count_b[:, None]
    eos_ids = jnp.asarray(decode.eos_ids or (-1,), jnp.int32)
    eos_bn = jnp.isin(new_bn, eos_ids) & offered_bn
    upto_eos_b = jnp.where(eos_bn.any(axis=1), jnp.argmax(eos_bn, axis=1) + 1, N)
    budget_b = decode.max_new_tokens - (state.lengths - state.prompt_lengths)
    emitted_b = jnp.minimum(jnp.minimum(count_b, upto_eos_b), jnp.maximum(budget_b, 0))
    emitted_b = jnp.where(state.done, 0, emitted_b)

    size = state.size
    slot_bn = state.lengths[:, None] + j_n
    slot_bn = jnp.where(j_n < emitted_b[:, None], slot_bn, size)  # out of range: dropped
    rows_bn = jnp.broadcast_to(jnp.arange(B)[:, None], (B, N))
    tokens = state.tokens.at[rows_bn, slot_bn].set(new_bn, mode="drop")
    lengths = state.lengths + emitted_b

    hit_eos_b = (eos_bn & (j_n < emitted_b[:, None])).any(axis=1)
    out_of_budget_b = lengths - state.prompt_lengths >= decode.max_new_tokens
    full_b = lengths + headroom >= size
    done = state.done | hit_eos_b | out_of_budget_b | full_b
    return state.replace(tokens=tokens, lengths=lengths, done=done), emitted_b


def prefill(lm: LM, params, state: DecodeState, prompt_bp: jax.Array):
    """Run the prompt through the target: -> (logits at each row's last prompt token [B,V], state)."""
    B, P = prompt_bp.shape
    t_p = jnp.arange(P)
    positions_bp = jnp.where((t_p < state.prompt_lengths[:, None]) & ~state.done[:, None], t_p, -1)
    last_b = jnp.maximum(state.prompt_lengths - 1, 0)
    logits_bv, cache = lm.apply_at(params, prompt_bp, positions_bp, state.cache, last_b)
    return logits_bv, state.replace(cache=cache.rollback(state.prompt_lengths))


def init_state(lm: LM, params, prompt_bp, prompt_lengths_b, active_b, key, size: int) -> DecodeState:
    B, P = prompt_bp.shape
    tokens = jnp.zeros((B, size), jnp.int32).at[:, :P].set(prompt_bp.astype(jnp.int32))
    return DecodeState(
        tokens=tokens,
        lengths=prompt_lengths_b.astype(jnp.int32),
        prompt_lengths=prompt_lengths_b.astype(jnp.int32),
        done=~active_b,
        cache=lm.init_cache(params, B, size),
        key=key,
        steps=jnp.zeros((), jnp.int32),
    )


def newest_tokens(state: DecodeState) -> jax.Array:
    """The last token of every row [B] (the one the cache has not seen yet)."""
    idx_b = jnp.maximum(state.lengths - 1, 0)
    return jnp.take_along_axis(state.tokens, idx_b[:, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=("lm", "sampling_cfg", "decode", "size"))
def generate_ar(lm: LM, params, prompt_bp, prompt_lengths_b, active_b, key, *,
                sampling_cfg: SamplingConfig, decode: DecodeConfig, size: int) -> DecodeState:
    """Autoregressive baseline: one target forward per token, same warping, cache and stopping.

    prompt_bp [B,P] right-padded prompts, prompt_lengths_b [B], active_b [B] (False for batch
    padding rows, which stay done). `size` (S) is the token buffer and cache length.
    """
    state = init_state(lm, params, prompt_bp, prompt_lengths_b, active_b, key, size)
    logits_bv, state = prefill(lm, params, state, prompt_bp)
    key, sub = jax.random.split(state.key)
    first_b = sampling.sample(sub, logits_bv, sampling_cfg, decode.vocab_size)
    state, _ = commit(state.replace(key=key), first_b[:, None], jnp.ones_like(first_b), decode)

    def not_finished(state: DecodeState):
        return ~jnp.all(state.done)

    def step(state: DecodeState):
        last_b = newest_tokens(state)
        pos_b = jnp.where(state.done, -1, state.lengths - 1)
        logits_b1v, cache = lm.apply(params, last_b[:, None], pos_b[:, None], state.cache)
        key, sub = jax.random.split(state.key)
        next_b = sampling.sample(sub, logits_b1v[:, 0], sampling_cfg, decode.vocab_size)
        cache = cache.rollback(jnp.where(state.done, cache.lengths, state.lengths))
        state = state.replace(cache=cache, key=key, steps=state.steps + 1)
        state, _ = commit(state, next_b[:, None], jnp.ones_like(next_b), decode)
        return state

    return jax.lax.while_loop(not_finished, step, state)
