"""The drafter interface: what the speculation loop asks of any draft strategy.

Axes: B batch, S buffer slots, G proposals per round, V vocabulary, P padded prompt length.

A drafter is a frozen dataclass (hashable: a static argument of the jitted loop). Its params
(`draft_params`, may be None) travel through the loop as a pytree, and so does its state, kept in
`SpecState.draft` (e.g. its own KV cache). All methods are pure and run inside the loop's jit:

    init(draft_params, target_params, batch, size) -> draft state
    prefill(draft_params, target_params, dstate, prompt_bp, positions_bp) -> draft state
    propose(draft_params, target_params, state, key, gamma, sampling, vocab_size)
        -> (tokens [B,G] int32, q [B,G,V] float32 or None, state)

`state` is the loop's `SpecState`: the committed token buffer `tokens[B,S]`, `lengths[B]`,
`done[B]`, the target's cache and `draft` (this drafter's state); `propose` returns it with `draft`
updated (a drafter that shares the target's cache may also write draft keys/values into it: the
verify pass overwrites those slots). `q` must be the distribution each proposal was actually drawn
from, warped exactly as the target will be; None declares point masses. A proposal of -1 means "no
proposal" (allowed only for drafters with `may_abstain = True`); everything after it in the row
must be -1 too. No separate update step is needed after acceptance: caches are indexed by
position, so a drafter re-syncs from the committed buffer at its next `propose`.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp

from specjax import sampling as sampling_lib
from specjax.config import SamplingConfig


class Drafter(Protocol):
    name: str
    may_abstain: bool

    def init(self, draft_params, target_params, batch: int, size: int) -> Any: ...

    def prefill(self, draft_params, target_params, dstate, prompt_bp, positions_bp) -> Any: ...

    def propose(self, draft_params, target_params, state, key, gamma: int, sampling: SamplingConfig,
                vocab_size: int | None) -> tuple[jax.Array, jax.Array | None, Any]: ...


def draw(key, logits_bv: jax.Array, cfg: SamplingConfig, vocab_size: int | None):
    """One draft token per row from logits, and the distribution it came from.

    Greedy: the argmax, q = None (a point mass). Otherwise: a sample from the warped distribution
    (the same warp the target gets), and that distribution q [B,V].
    """
    if cfg.greedy:
        return sampling_lib.greedy(logits_bv, vocab_size), None
    q_bv = sampling_lib.warp(logits_bv, cfg, vocab_size)
    return sampling_lib.sample_probs(key, q_bv), q_bv


def last_two(state) -> tuple[jax.Array, jax.Array]:
    """The two newest committed tokens [B,2] and their positions (-1 for finished rows).

    Feeding both re-syncs a position-indexed draft cache after any outcome of the last round: the
    older one is already cached unless every proposal was accepted (then the drafter never saw its
    own last proposal), and rewriting a cached slot with the same token is harmless."""
    idx_b2 = state.lengths[:, None] + jnp.arange(-2, 0)
    tokens_b2 = jnp.take_along_axis(state.tokens, jnp.maximum(idx_b2, 0), axis=1)
    positions_b2 = jnp.where(state.done[:, None] | (idx_b2 < 0), -1, idx_b2)
    return tokens_b2, positions_b2


def rollout(apply, cache, first_logits_bv, start_pos_b, key, gamma: int, sampling: SamplingConfig,
            vocab_size: int | None):
    """Draw G tokens: the first from `first_logits_bv`, then G - 1 single-token steps of `apply`
    under `lax.scan`. apply(tokens [B,1], positions [B,1], cache) -> (logits [B,1,V], cache).
    -> (tokens [B,G], q [B,G,V] or None, cache)."""
    keys = jax.random.split(key, gamma)
    first_b, first_q = draw(keys[0], first_logits_bv, sampling, vocab_size)

    def step(carry, key_i):
        cache, prev_b, pos_b = carry
        logits_b1v, cache = apply(prev_b[:, None], pos_b[:, None], cache)
        tok_b, q_bv = draw(key_i, logits_b1v[:, 0], sampling, vocab_size)
        return (cache, tok_b, jnp.where(pos_b < 0, -1, pos_b + 1)), (tok_b, q_bv)

    (cache, _, _), (rest_gb, rest_q) = jax.lax.scan(step, (cache, first_b, start_pos_b), keys[1:])
    tokens_bg = jnp.concatenate([first_b[:, None], rest_gb.T], axis=1)
    if first_q is None:
        return tokens_bg, None, cache
    return tokens_bg, jnp.concatenate([first_q[:, None], jnp.swapaxes(rest_q, 0, 1)], axis=1), cache
