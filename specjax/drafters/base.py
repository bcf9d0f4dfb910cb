"""The drafter interface: what the speculation loop asks of any draft strategy.

Axes: B batch, S buffer slots, G proposals per round, V vocabulary, P padded prompt length.

A drafter is a frozen dataclass (hashable: a static argument of the jitted loop) plus two pytrees
that travel through the loop: its params (`draft_params`; may be None) and its state (`dstate`,
e.g. its own KV cache). All methods are pure and run inside the loop's jit:

    init(draft_params, batch, size) -> dstate
    prefill(draft_params, target_params, dstate, prompt_bp, positions_bp) -> dstate
    propose(draft_params, target_params, dstate, state, key, gamma, sampling, vocab_size)
        -> (tokens [B,G] int32, q [B,G,V] float32 or None, dstate)

`state` is the loop's `SpecState` (committed token buffer `tokens[B,S]`, `lengths[B]`, `done[B]`).
`q` must be the distribution each proposal was actually drawn from, warped exactly as the target
will be; None declares point masses (deterministic proposals). The loop verifies the proposals and
commits; a drafter whose state depends on committed tokens must re-sync from `state` at the start
of the next `propose` (no separate update step is needed because caches are position-indexed).
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp

from specjax import sampling as sampling_lib
from specjax.config import SamplingConfig


class Drafter(Protocol):
    name: str

    def init(self, draft_params, batch: int, size: int) -> Any: ...

    def prefill(self, draft_params, target_params, dstate, prompt_bp, positions_bp) -> Any: ...

    def propose(self, draft_params, target_params, dstate, state, key, gamma: int, sampling: SamplingConfig,
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
