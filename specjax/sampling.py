"""Logits -> warped probabilities, and sampling from them.

The same `warp` is applied to target and drafter logits, in the order temperature, top-k, top-p,
so the rejection rule compares two distributions built the same way. Greedy (temperature 0) is the
point mass on the argmax. Axes: any leading axes, V vocabulary last.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from specjax.config import SamplingConfig


def mask_vocab(logits_v: jax.Array, vocab_size: int | None) -> jax.Array:
    """Send ids >= vocab_size (padding rows of the embedding) to -inf."""
    if vocab_size is None or vocab_size >= logits_v.shape[-1]:
        return logits_v
    ids = jnp.arange(logits_v.shape[-1])
    return jnp.where(ids < vocab_size, logits_v, -jnp.inf)


def _top_k_mask(logits_v, k: int):
    if k >= logits_v.shape[-1]:
        return logits_v
    kth = jax.lax.top_k(logits_v, k)[0][..., -1:]
    return jnp.where(logits_v >= kth, logits_v, -jnp.inf)


TOP_P_BOUND = 128  # candidates examined by the fast top-p path before falling back to a full sort


def _nucleus_threshold(sorted_v, lse, p: float):
    """Smallest kept logit, given logits sorted in descending order (a prefix suffices)."""
    probs_v = jnp.exp(sorted_v - lse)
    mass_before_v = jnp.cumsum(probs_v, axis=-1) - probs_v
    keep_v = mass_before_v < p  # the first id is always kept
    return jnp.min(jnp.where(keep_v, sorted_v, jnp.inf), axis=-1, keepdims=True), probs_v


def _top_p_mask(logits_v, p: float):
    """Keep the smallest set of highest-probability ids whose mass reaches p (ties at the edge kept).

    Exact and cheap: the nucleus is a prefix of the descending order, so `lax.top_k` over
    TOP_P_BOUND candidates finds it whenever those candidates hold at least p of the mass; only
    otherwise (a flat distribution) does the whole batch fall back to a full sort of V.
    """
    V = logits_v.shape[-1]
    lse = jax.nn.logsumexp(logits_v, axis=-1, keepdims=True)

    def full_sort(_):
        sorted_v = -jnp.sort(-logits_v, axis=-1)
        return _nucleus_threshold(sorted_v, lse, p)[0]

    if V <= TOP_P_BOUND:
        threshold = full_sort(None)
    else:
        top_k = jax.lax.top_k(logits_v, TOP_P_BOUND)[0]
        fast, probs_k = _nucleus_threshold(top_k, lse, p)
        fits = jnp.sum(probs_k, axis=-1) >= p
        threshold = jax.lax.cond(jnp.all(fits), lambda _: fast, full_sort, None)
    return jnp.where(logits_v >= threshold, logits_v, -jnp.inf)


def warp_logits(logits_v: jax.Array, cfg: SamplingConfig, vocab_size: int | None = None) -> jax.Array:
    """Filtered, temperature-scaled logits (float32); -inf marks excluded ids. Not for greedy."""
    logits_v = mask_vocab(logits_v.astype(jnp.float32), vocab_size)
    logits_v = logits_v / cfg.temperature
    if cfg.top_k is not None:
        logits_v = _top_k_mask(logits_v, cfg.top_k)
    if cfg.top_p is not None and cfg.top_p < 1.0:
        logits_v = _top_p_mask(logits_v, cfg.top_p)
    return logits_v


def warp(logits_v: jax.Array, cfg: SamplingConfig, vocab_size: int | None = None) -> jax.Array:
    """Probabilities [..., V] of the warped distribution (a one-hot argmax when greedy)."""
    if cfg.greedy:
        ids = greedy(logits_v, vocab_size)
        return jax.nn.one_hot(ids, logits_v.shape[-1], dtype=jnp.float32)
    return jax.nn.softmax(warp_logits(logits_v, cfg, vocab_size), axis=-1)


def greedy(logits_v: jax.Array, vocab_size: int | None = None) -> jax.Array:
    return jnp.argmax(mask_vocab(logits_v, vocab_size), axis=-1).astype(jnp.int32)


def sample(key: jax.Array, logits_v: jax.Array, cfg: SamplingConfig, vocab_size: int | None = None) -> jax.Array:
    """Draw ids [...] from the warped distribution of `logits_v` (argmax when greedy)."""
    if cfg.greedy:
        return greedy(logits_v, vocab_size)
    return jax.random.categorical(key, warp_logits(logits_v, cfg, vocab_size), axis=-1).astype(jnp.int32)


def sample_probs(key: jax.Array, probs_v: jax.Array) -> jax.Array:
    """Draw ids [...] from explicit probabilities (rows need not be normalised)."""
    return jax.random.categorical(key, jnp.log(probs_v), axis=-1).astype(jnp.int32)
