"""The acceptance rule of speculative decoding (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023),
and only it: every acceptance decision of specjax is made here, through `accept`.

Axes: B batch, G proposals per round, V vocabulary.

Sampled rule, per row: proposal d_i (drawn from q_i) is accepted with probability min(1, p_i(d_i) /
q_i(d_i)), implemented as u * q_i(d_i) < p_i(d_i) with u ~ U[0, 1) (no division, so no NaN when
q == 0 or p == q; strict, so a proposal the warped target gives probability 0 is never accepted,
even when u is exactly 0, which a float32 uniform draw is about once in 2^23 draws). At the first rejection n the next token is drawn from the residual
normalize(max(0, p_n - q_n)); if all G pass, a bonus token is drawn from p_G. Every row then emits
n accepted proposals plus that one token, and the result is distributed exactly as p.

`q_bgv=None` means the proposals are point masses (greedy drafters, n-gram lookup): q_i(d_i) = 1,
so acceptance is u < p_i(d_i), and the residual is p_n with d_n removed.

A proposal id of -1 means "no proposal" (a drafter that found nothing to say, e.g. prompt lookup
without a match): it is never accepted, and the next token is drawn from p itself (q is zero there).

Greedy rule: p is the point mass on the target's argmax, so a proposal is accepted while it equals
the argmax, and the next token is the argmax at the first mismatch (or after the last proposal).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from specjax import sampling as sampling_lib
from specjax.config import SamplingConfig
from specjax.sampling import RowSampling


@struct.dataclass
class Proposal:
    """What a drafter proposes in one round."""

    tokens: jax.Array  # [B,G] int32; -1 = no proposal (then -1 for the rest of the row)
    q: jax.Array | None = None  # [B,G,V] the distributions they were drawn from; None = point masses


@struct.dataclass
class Verdict:
    """What the rule decided for one round."""

    accepted: jax.Array  # [B] int32, n: proposals accepted (a prefix)
    tokens: jax.Array  # [B,G+1] the emitted block: proposals 0..n-1, then the next token at n (and after)
    proposed: jax.Array  # [B,G] bool, which proposals existed

    @property
    def count(self) -> jax.Array:
        """Tokens offered to the buffer per row [B]: the n accepted proposals and the next token."""
        return self.accepted + 1


def verdict(proposal: Proposal, n_b: jax.Array, next_b: jax.Array) -> Verdict:
    """The block [B,G+1] that a rule emits: the accepted prefix of the proposals, then `next_b`."""
    draft_bg = proposal.tokens
    G = draft_bg.shape[1]
    padded_bg1 = jnp.concatenate([draft_bg, jnp.zeros((draft_bg.shape[0], 1), draft_bg.dtype)], axis=1)
    block_bg1 = jnp.where(jnp.arange(G + 1) < n_b[:, None], padded_bg1, next_b[:, None])
    return Verdict(accepted=n_b.astype(jnp.int32), tokens=block_bg1.astype(jnp.int32), proposed=draft_bg >= 0)


def accept(keys_b: jax.Array, proposal: Proposal, target_logits_bg1v: jax.Array,
           sampling: SamplingConfig | RowSampling, vocab_size: int | None = None) -> Verdict:
    """Decide one round: the target's logits at the G+1 verified positions [B,G+1,V] are warped here,
    exactly as the drafter warped its own (temperature, top-k, top-p; ids >= vocab_size masked), and
    each row gets the greedy or the sampled rule by its own setting. keys_b [B]: one key per row.
    The guarantee is for that warped target, row by row."""
    s = sampling_lib.rows(sampling)
    greedy_b = jnp.broadcast_to(s.greedy, proposal.tokens.shape[:1])
    n_b, next_b = accept_greedy(proposal.tokens, sampling_lib.greedy(target_logits_bg1v, vocab_size))

    def sampled(_):
        p_bg1v = sampling_lib.warp(target_logits_bg1v, s, vocab_size)
        n_s, next_s = accept_sampled(keys_b, proposal.tokens, proposal.q, p_bg1v)
        return jnp.where(greedy_b, n_b, n_s), jnp.where(greedy_b, next_b, next_s)

    n_b, next_b = jax.lax.cond(jnp.all(greedy_b), lambda _: (n_b, next_b), sampled, None)
    return verdict(proposal, n_b, next_b)


def _leading_true(ok_bg: jax.Array) -> jax.Array:
    """Number of leading True values per row [B]."""
    return jnp.sum(jnp.cumprod(ok_bg.astype(jnp.int32), axis=1), axis=1)


def accept_greedy(draft_bg: jax.Array, target_ids_bg1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """draft [B,G], target argmax at the G+1 verified positions [B,G+1] -> (n accepted [B], next id [B]).

    An absent proposal (-1) never equals an argmax, so it ends the accepted prefix."""
    G = draft_bg.shape[1]
    n_b = _leading_true(draft_bg == target_ids_bg1[:, :G])
    next_b = jnp.take_along_axis(target_ids_bg1, n_b[:, None], axis=1)[:, 0]
    return n_b, next_b


def residual(p_bv: jax.Array, q_bv: jax.Array) -> jax.Array:
    """normalize(max(0, p - q)) without normalising (sampling only needs proportions).

    When p == q up to rounding the difference can vanish; a rejection is then (almost) impossible,
    but to stay well-defined the residual falls back to p.
    """
    r_bv = jnp.maximum(p_bv - q_bv, 0.0)
    empty_b1 = jnp.sum(r_bv, axis=-1, keepdims=True) <= 0.0
    return jnp.where(empty_b1, p_bv, r_bv)


def accept_sampled(keys_b: jax.Array, draft_bg: jax.Array, q_bgv: jax.Array | None,
                   p_bg1v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Exact rejection sampling: -> (n accepted [B], next token [B]). keys_b [B]: one key per row.

    draft_bg [B,G] proposals; q_bgv [B,G,V] the distributions they were drawn from, or None for
    point masses; p_bg1v [B,G+1,V] the target's warped distributions at the G+1 verified positions.
    """
    G = draft_bg.shape[1]
    u_bg1 = sampling_lib.uniform(keys_b, (G + 1,))  # G acceptance tests, then the next token's draw
    return accept_given_uniforms(u_bg1[:, :G], u_bg1[:, G], draft_bg, q_bgv, p_bg1v)


def accept_given_uniforms(u_bg: jax.Array, u_next_b: jax.Array, draft_bg: jax.Array, q_bgv: jax.Array | None,
                          p_bg1v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`accept_sampled` with its uniforms given: u [B,G] for the acceptance tests, u_next [B] for the
    draw of the next token (by inverse CDF, `sampling.inverse_cdf`). With no proposals (G = 0: a plain
    step) the next token is drawn from p itself."""
    G = draft_bg.shape[1]
    if G == 0:
        return jnp.zeros(draft_bg.shape[:1], jnp.int32), sampling_lib.inverse_cdf(u_next_b, p_bg1v[:, 0])
    present_bg = draft_bg >= 0
    ids_bg = jnp.maximum(draft_bg, 0)
    p_d_bg = jnp.take_along_axis(p_bg1v[:, :G], ids_bg[..., None], axis=-1)[..., 0]
    q_d_bg = 1.0 if q_bgv is None else jnp.take_along_axis(q_bgv, ids_bg[..., None], axis=-1)[..., 0]
    n_b = _leading_true(present_bg & (u_bg * q_d_bg < p_d_bg))

    p_n_bv = jnp.take_along_axis(p_bg1v, n_b[:, None, None], axis=1)[:, 0]
    at_b = jnp.minimum(n_b, G - 1)  # the rejected position (unused when n == G)
    draft_at_b = jnp.take_along_axis(draft_bg, at_b[:, None], axis=1)[:, 0]
    if q_bgv is None:  # one_hot(-1) is all zeros: an absent proposal leaves p untouched
        q_n_bv = jax.nn.one_hot(draft_at_b, p_bg1v.shape[-1])
    else:  # whatever q a drafter left at an absent slot, nothing was drawn from it: q is zero there
        q_n_bv = jnp.where((draft_at_b >= 0)[:, None], jnp.take_along_axis(q_bgv, at_b[:, None, None], axis=1)[:, 0],
                           0.0)
    dist_bv = jnp.where((n_b == G)[:, None], p_n_bv, residual(p_n_bv, q_n_bv))
    next_b = sampling_lib.inverse_cdf(u_next_b, dist_bv)
    return n_b, next_b
