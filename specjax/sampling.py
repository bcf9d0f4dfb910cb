"""Logits -> warped probabilities, and sampling from them, with settings per batch row.

The same `warp` is applied to target and drafter logits, in the order temperature, top-k, top-p,
so the rejection rule compares two distributions built the same way. Greedy (temperature 0) is the
point mass on the argmax. Axes: B batch (leading), any further axes, V vocabulary last.

Settings are runtime values (`RowSampling`: one temperature, top-k, top-p and greedy flag per row),
so a sweep over them reuses one compiled program and each row of a batch may sample differently.
Only the largest top-k a program supports is static (`RowSampling.top_k_bound`). A greedy row
divides by temperature 1, never by its 0, and takes the argmax. Functions also take one
`SamplingConfig` for every row, for convenience.

Randomness is per row: `keys` is an array of B keys, one per row, so what row b draws depends
only on its own key and its own logits (running it alone with that key draws the same).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from specjax.config import SamplingConfig
from specjax.errors import ConfigError

TOP_K_BOUND = 64  # top-k values up to this need no recompilation; larger ones raise the bound (a new program)
TOP_P_BOUND = 128  # candidates examined by the fast top-p path before falling back to a full sort


@struct.dataclass
class RowSampling:
    """Sampling settings per row, as arrays [B] (or scalars, applying to every row)."""

    temperature: jax.Array  # [B] float32, > 0 (1 for greedy rows, which never divide by it)
    top_k: jax.Array  # [B] int32, 0 = off
    top_p: jax.Array  # [B] float32, 1 = off
    greedy: jax.Array  # [B] bool
    top_k_bound: int = struct.field(pytree_node=False, default=TOP_K_BOUND)  # static: the largest top_k

    def logical_axes(self) -> "RowSampling":
        b = ("batch",)
        return self.replace(temperature=b, top_k=b, top_p=b, greedy=b)

    @classmethod
    def of(cls, configs: SamplingConfig | Sequence[SamplingConfig], batch: int | None = None, *,
           vocab_size: int | None = None, top_k_bound: int | None = None) -> "RowSampling":
        """Host-side arrays from one config for all `batch` rows or a list with one per row (rows past
        the list, e.g. batch padding, are greedy). top_k >= vocab_size is the same as off. The static
        bound is `TOP_K_BOUND`, or the next power of two above the largest top_k asked for."""
        if isinstance(configs, SamplingConfig):
            configs = [configs] * (batch if batch is not None else 1)
        configs = list(configs)
        for i, c in enumerate(configs):
            if not isinstance(c, SamplingConfig):
                raise ConfigError(f"sampling[{i}] must be a SamplingConfig, got {type(c).__name__}")
        B = len(configs) if batch is None else batch
        if len(configs) > B:
            raise ConfigError(f"{len(configs)} sampling settings for a batch of {B} rows")
        temperature = np.ones((B,), np.float32)
        top_k = np.zeros((B,), np.int32)
        top_p = np.ones((B,), np.float32)
        greedy = np.ones((B,), bool)
        for i, c in enumerate(configs):
            t = np.float32(c.temperature)
            if t == 0:  # greedy (also a positive temperature too small for float32: it would divide by 0)
                continue
            greedy[i], temperature[i] = False, t
            if c.top_k is not None and (vocab_size is None or c.top_k < vocab_size):
                top_k[i] = c.top_k
            if c.top_p is not None:
                top_p[i] = c.top_p
        largest = int(top_k.max(initial=0))
        bound = top_k_bound if top_k_bound is not None else max(TOP_K_BOUND, 1 << max(largest - 1, 0).bit_length())
        if largest > bound:
            raise ConfigError(f"top_k={largest} exceeds this program's top-k bound {bound}")
        return cls(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, top_k_bound=bound)


def rows(s: SamplingConfig | RowSampling) -> RowSampling:
    """One `SamplingConfig` as scalar `RowSampling` values (applying to every row); a RowSampling as is."""
    if isinstance(s, RowSampling):
        return s
    one = RowSampling.of(s, 1, top_k_bound=max(s.top_k or 1, 1))
    return jax.tree.map(lambda x: jnp.asarray(x[0]), one)


def _per_row(x_b: jax.Array, like: jax.Array) -> jax.Array:
    """x [B] (or a scalar) shaped to broadcast against like [B, ..., V]."""
    x_b = jnp.asarray(x_b)
    return jnp.reshape(x_b, x_b.shape + (1,) * (like.ndim - x_b.ndim))


def mask_vocab(logits_v: jax.Array, vocab_size: int | None) -> jax.Array:
    """Send ids >= vocab_size (padding rows of the embedding) to -inf."""
    if vocab_size is None or vocab_size >= logits_v.shape[-1]:
        return logits_v
    ids = jnp.arange(logits_v.shape[-1])
    return jnp.where(ids < vocab_size, logits_v, -jnp.inf)


def _top_k_mask(logits_v, s: RowSampling):
    """Keep each row's k largest logits (ties with the k-th kept); rows with k = 0 untouched."""
    V = logits_v.shape[-1]
    k = _per_row(jnp.where(s.greedy, 0, s.top_k), logits_v)
    on = (k > 0) & (k < V)
    K = min(s.top_k_bound, V)

    def apply(x):
        top = jax.lax.top_k(x, K)[0]
        at = jnp.broadcast_to(jnp.clip(k - 1, 0, K - 1), x.shape[:-1] + (1,))
        kth = jnp.take_along_axis(top, at, axis=-1)
        return jnp.where(on & (x < kth), -jnp.inf, x)

    return jax.lax.cond(jnp.any(on), apply, lambda x: x, logits_v)


def _nucleus_threshold(sorted_v, lse, p):
    """Smallest kept logit, given logits sorted in descending order (a prefix suffices)."""
    probs_v = jnp.exp(sorted_v - lse)
    mass_before_v = jnp.cumsum(probs_v, axis=-1) - probs_v
    keep_v = mass_before_v < p  # the first id is always kept
    return jnp.min(jnp.where(keep_v, sorted_v, jnp.inf), axis=-1, keepdims=True), probs_v


def _top_p_mask(logits_v, s: RowSampling):
    """Keep the smallest set of highest-probability ids whose mass reaches p (ties at the edge kept).

    Exact and cheap: the nucleus is a prefix of the descending order, so `lax.top_k` over
    TOP_P_BOUND candidates finds it whenever those candidates hold at least p of the mass; only
    otherwise (a flat distribution) does the whole batch fall back to a full sort of V. Rows with
    p = 1 are untouched."""
    V = logits_v.shape[-1]
    p = _per_row(jnp.where(s.greedy, 1.0, s.top_p), logits_v)
    on = p < 1.0

    def apply(x):
        lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)

        def full_sort(_):
            return _nucleus_threshold(-jnp.sort(-x, axis=-1), lse, p)[0]

        if V <= TOP_P_BOUND:
            threshold = full_sort(None)
        else:
            fast, probs_k = _nucleus_threshold(jax.lax.top_k(x, TOP_P_BOUND)[0], lse, p)
            fits = (jnp.sum(probs_k, axis=-1, keepdims=True) >= p) | ~on
            threshold = jax.lax.cond(jnp.all(fits), lambda _: fast, full_sort, None)
        return jnp.where(on & (x < threshold), -jnp.inf, x)

    return jax.lax.cond(jnp.any(on), apply, lambda x: x, logits_v)


def warp_logits(logits_v: jax.Array, s: SamplingConfig | RowSampling, vocab_size: int | None = None) -> jax.Array:
    """Filtered, temperature-scaled logits (float32); -inf marks excluded ids. Greedy rows are
    scaled by 1 (use `warp` or `sample` for their point mass)."""
    s = rows(s)
    logits_v = mask_vocab(logits_v.astype(jnp.float32), vocab_size)
    logits_v = logits_v / _per_row(jnp.where(s.greedy, 1.0, s.temperature), logits_v)
    return _top_p_mask(_top_k_mask(logits_v, s), s)


def warp(logits_v: jax.Array, s: SamplingConfig | RowSampling, vocab_size: int | None = None) -> jax.Array:
    """Probabilities [..., V] of the warped distribution (a one-hot argmax for greedy rows)."""
    s = rows(s)
    point_v = jax.nn.one_hot(greedy(logits_v, vocab_size), logits_v.shape[-1], dtype=jnp.float32)

    def sampled(x):
        return jnp.where(_per_row(s.greedy, x), point_v, jax.nn.softmax(warp_logits(x, s, vocab_size), axis=-1))

    return jax.lax.cond(jnp.all(s.greedy), lambda x: point_v, sampled, logits_v)


def greedy(logits_v: jax.Array, vocab_size: int | None = None) -> jax.Array:
    return jnp.argmax(mask_vocab(logits_v, vocab_size), axis=-1).astype(jnp.int32)


def categorical(keys, logits_v: jax.Array) -> jax.Array:
    """Draw ids [...] from logits: with B keys [B], row b from keys[b]; with one key, all at once."""
    keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
    if keys.ndim == 0:
        return jax.random.categorical(keys, logits_v, axis=-1).astype(jnp.int32)
    return jax.vmap(lambda k, x: jax.random.categorical(k, x, axis=-1))(keys, logits_v).astype(jnp.int32)


def uniform(keys, shape: tuple[int, ...]) -> jax.Array:
    """Uniforms [B, *shape], row b from keys[b]."""
    return jax.vmap(lambda k: jax.random.uniform(k, shape))(keys)


def split_keys(keys_b: jax.Array, n: int) -> tuple[jax.Array, ...]:
    """Each row's key split in n: -> n key arrays [B]."""
    split_bn = jax.vmap(lambda k: jax.random.split(k, n))(keys_b)
    return tuple(split_bn[:, i] for i in range(n))


def sample(keys, logits_v: jax.Array, s: SamplingConfig | RowSampling, vocab_size: int | None = None) -> jax.Array:
    """Draw ids [...] from the warped distribution of `logits_v` (the argmax for greedy rows)."""
    s = rows(s)
    ids = greedy(logits_v, vocab_size)

    def sampled(x):
        drawn = categorical(keys, warp_logits(x, s, vocab_size))
        return jnp.where(_per_row(s.greedy, drawn), ids, drawn)

    return jax.lax.cond(jnp.all(s.greedy), lambda x: ids, sampled, logits_v)


def sample_probs(keys, probs_v: jax.Array) -> jax.Array:
    """Draw ids [...] from explicit probabilities (rows need not be normalised)."""
    return categorical(keys, jnp.log(probs_v))
