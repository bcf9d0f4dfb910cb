"""The drafter contract: what the speculation loop asks of any draft strategy, and what it gives back.

Axes: B batch, S buffer slots, G proposals per round, V vocabulary, P padded prompt length,
n tapped layers, D the target's model width.

A drafter is a frozen dataclass (hashable: part of the loop's static `Decoder`). Its params
(`draft_params`, may be None) travel through the loop as a pytree, and so does its state, kept in
`SpecState.draft` (e.g. its own KV cache). All methods are pure and run inside the loop's jit.

Attributes:
    name: str              shown in statistics and reports
    may_abstain: bool      True if `propose` may return -1 ("no proposal"); the loop then replaces the
                           (G+1)-token verify pass by a one-token step when no row proposes anything
    taps: tuple[int, ...]  target layers whose input hidden states the drafter wants to see (see
                           `specjax.lm`); () for none, and then the target computes nothing extra

Attributes read by the gamma="auto" policy (`specjax.policy`), with defaults in `Stateless`:
    proposes_once: bool    proposals cost next to nothing (prompt lookup): draft G_max every round,
                           before the window is chosen, and truncate (only for point-mass proposals:
                           a window chosen after seeing sampled proposals would bias them)
    must_observe: bool     the drafter's own state must see every committed token through its own
                           rounds (a draft model re-syncing on the two newest tokens): the policy then
                           never picks a plain (width 0) round, except as the batch fallback
    default_cost: float    cost of one proposal in target steps, assumed until `specjax calibrate` ran

Optional, for a draft with its own tokenizer (`specjax.drafters.crossvocab`):
    own_prompt: bool       the loop's `Batch` carries the prompts in the drafter's own tokens
                           (`draft_prompt`, `draft_lengths`); its `prefill` reads them from
                           `TargetPrefill.draft_tokens` / `draft_lengths`

Methods, in the order the loop calls them:
    init(draft_params, target_params, batch, size) -> dstate
        allocate the drafter's state for `batch` rows and `size` buffer slots.
    prefill(draft_params, target_params, dstate, prefill: TargetPrefill) -> dstate
        after the target's prefill: the prompts, their positions, the target's taps over them and
        the first committed token.
    propose(draft_params, target_params, state, keys, gamma, sampling, vocab_size) -> (Proposal, state)
        every round: G proposals per row. `state` is the loop's `SpecState` (committed token buffer
        `tokens[B,S]`, `lengths[B]`, `done[B]`, each row's `eos_ids[B,E]`, the target's cache and
        `draft`); it comes back with `draft` updated (a drafter that shares the target's cache may
        also write draft keys/values into it: the verify pass overwrites those slots). keys [B] is
        one PRNG key per row; sampling is the per-row `RowSampling` (greedy rows and sampled rows
        may share a batch: `draw` handles both).
    observe(draft_params, target_params, dstate, observation: Observation) -> dstate
        after every round: what the target verified (its input tokens and positions, its taps at
        those positions), how many proposals each row accepted and how many tokens it committed.

A drafter's state is any pytree. To be sharded over a mesh, its arrays must be declared: a node
with a `logical_axes()` method (like `KVCache`) names the logical axes of its arrays; undeclared
arrays are replicated (see `specjax.sharding.logical_axes`).

The proposal's `q` must be the distribution each proposal was actually drawn from, warped exactly as
the target will be (`draw` does both); None declares point masses (greedy drafters, lookup). A
proposal of -1 means "no proposal" (only when `may_abstain`); everything after it in the row must be
-1 too. Invariants the loop keeps, per row b: `state.tokens[b, :state.lengths[b]]` is the prompt and
every committed token; the target's cache holds all of them but the newest. Caches are indexed by
position, so a drafter that ignores `observe` can re-sync from the committed buffer in `propose`.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import struct

from specjax import sampling as sampling_lib
from specjax.rejection import Proposal
from specjax.sampling import RowSampling


@struct.dataclass
class TargetPrefill:
    """What the target computed over the prompts, handed to `Drafter.prefill`."""

    tokens: jax.Array  # [B,P] int32, right-padded prompts
    positions: jax.Array  # [B,P] int32, -1 for padding and inactive rows
    taps: jax.Array  # [n,B,P,D] the target's tapped hidden states (n = len(drafter.taps))
    first: jax.Array  # [B] int32, the first committed token (sampled from the last prompt position)
    chunk: int = struct.field(pytree_node=False, default=0)  # the target's prefill chunk (Decoder.prefill_chunk)
    draft_tokens: Any = None  # [B,Pd] int32: the prompts in the draft's own tokens (a drafter with `own_prompt`)
    draft_lengths: Any = None  # [B] int32


@struct.dataclass
class Observation:
    """What one round verified and decided, handed to `Drafter.observe`.

    Per row b, entries 0 .. committed[b] - 1 of `tokens`, `positions` and `taps` belong to tokens
    that are now in the buffer (the newest token of the last round, then the accepted proposals);
    the rest are rejected or cut proposals. When the drafter may abstain and no row proposed
    anything, the target ran a one-token step: then only entry 0 of `taps` holds features (the rest
    is zero padding), and only entry 0 can be committed anyway.
    """

    tokens: jax.Array  # [B,G+1] the verify pass's input: the newest committed token, then the G proposals
    proposed: jax.Array  # [B,G] which proposals existed (absent ones are fed to the target as token 0)
    positions: jax.Array  # [B,G+1] their positions (-1 for rows that were already done)
    taps: jax.Array  # [n,B,G+1,D] the target's tapped hidden states at those positions
    accepted: jax.Array  # [B] proposals accepted by the rule (0 for rows that were already done)
    committed: jax.Array  # [B] tokens appended to the buffer (accepted + 1, fewer when EOS or the budget cut
    #                       the block, 0 for rows that were already done)
    next_tokens: jax.Array  # [B] the token the rule drew after the accepted proposals (-1 for done rows); it
    #                         is in the buffer when committed == accepted + 1


class Drafter(Protocol):
    name: str
    may_abstain: bool
    taps: tuple[int, ...]

    def init(self, draft_params, target_params, batch: int, size: int) -> Any: ...

    def prefill(self, draft_params, target_params, dstate, prefill: TargetPrefill) -> Any: ...

    def propose(self, draft_params, target_params, state, keys, gamma: int, sampling: RowSampling,
                vocab_size: int | None) -> tuple[Proposal, Any]: ...

    def observe(self, draft_params, target_params, dstate, observation: Observation) -> Any: ...


class Stateless:
    """Defaults for drafters that keep no state and need nothing from the target."""

    may_abstain = False
    taps: tuple[int, ...] = ()
    proposes_once = False
    must_observe = False
    default_cost = 0.3

    def init(self, draft_params, target_params, batch, size):
        return None

    def prefill(self, draft_params, target_params, dstate, prefill):
        return dstate

    def observe(self, draft_params, target_params, dstate, observation):
        return dstate


def draw(u_b, logits_bv: jax.Array, sampling: RowSampling, vocab_size: int | None):
    """One draft token per row from logits, and the distribution q [B,V] it came from.

    A sampled row draws from its warped distribution (the same warp the target gets) with its own
    uniform u_b[b] (inverse CDF); a greedy row takes the argmax, and its q is that point mass. When
    every row is greedy no softmax is computed."""
    ids_b = sampling_lib.greedy(logits_bv, vocab_size)
    point_bv = jax.nn.one_hot(ids_b, logits_bv.shape[-1], dtype=jnp.float32)

    def sampled(x):
        q_bv = sampling_lib.warp(x, sampling, vocab_size)
        drawn_b = sampling_lib.inverse_cdf(u_b, q_bv)
        return jnp.where(sampling.greedy, ids_b, drawn_b), q_bv

    return jax.lax.cond(jnp.all(sampling.greedy), lambda x: (ids_b, point_bv), sampled, logits_bv)


def last_two(state) -> tuple[jax.Array, jax.Array]:
    """The two newest committed tokens [B,2] and their positions (-1 for finished rows).

    Feeding both re-syncs a position-indexed draft cache after any outcome of the last round: the
    older one is already cached unless every proposal was accepted (then the drafter never saw its
    own last proposal), and rewriting a cached slot with the same token is harmless."""
    idx_b2 = state.lengths[:, None] + jnp.arange(-2, 0)
    tokens_b2 = jnp.take_along_axis(state.tokens, jnp.maximum(idx_b2, 0), axis=1)
    positions_b2 = jnp.where(state.done[:, None] | (idx_b2 < 0), -1, idx_b2)
    return tokens_b2, positions_b2


def rollout(apply, cache, first_logits_bv, start_pos_b, keys_b, gamma: int, sampling: RowSampling,
            vocab_size: int | None):
    """Draw G tokens: the first from `first_logits_bv`, then G - 1 single-token steps of `apply`
    under `lax.scan`. apply(tokens [B,1], positions [B,1], cache) -> (logits [B,1,V], cache).
    keys_b [B]: one key per row, from which each row draws its G uniforms.
    -> (Proposal with q [B,G,V], cache)."""
    u_gb = sampling_lib.uniform(keys_b, (gamma,)).T
    first_b, first_q = draw(u_gb[0], first_logits_bv, sampling, vocab_size)

    def step(carry, u_b):
        cache, prev_b, pos_b = carry
        logits_b1v, cache = apply(prev_b[:, None], pos_b[:, None], cache)
        tok_b, q_bv = draw(u_b, logits_b1v[:, 0], sampling, vocab_size)
        return (cache, tok_b, jnp.where(pos_b < 0, -1, pos_b + 1)), (tok_b, q_bv)

    (cache, _, _), (rest_gb, rest_q) = jax.lax.scan(step, (cache, first_b, start_pos_b), u_gb[1:])
    tokens_bg = jnp.concatenate([first_b[:, None], rest_gb.T], axis=1)
    return Proposal(tokens_bg, jnp.concatenate([first_q[:, None], jnp.swapaxes(rest_q, 0, 1)], axis=1)), cache
