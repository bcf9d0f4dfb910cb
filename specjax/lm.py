"""The language-model contract the engine programs against, and its pure-function form.

Axes: B batch, T tokens in this call, S cache slots, D model width, V vocabulary, n taps.

What the engine relies on: a Flax NNX module (`specjax.models.Transformer` is one) with

    hidden(tokens[B,T] int32, positions[B,T] int32, cache, *, layers=None, taps=())
        -> (hidden[B,T,D] after the final norm, cache, taps[n,B,T,D])
    logits(hidden[B,T,D]) -> logits[B,T,V] float32
    init_cache(batch, size, *, layers=None[, ring_slack=None]) -> KVCache   (every layer, or a cache for
        `layers` blocks; with ring_slack, sliding-window layers may keep ring buffers)
    config.vocab_size (V, embedding rows; may exceed the tokenizer's vocabulary)
    config.num_layers (L)
    config.dim (D)
    embed_tokens(tokens[B,T]) -> [B,T,D], the raw token embedding (only drafters that share the
        target's embedding, such as EAGLE-3 heads, call it)

and these behaviours:
  - positions[b, t] < 0 marks padding: nothing is written to the cache for it and its outputs are
    unspecified; a position p >= 0 writes the cache slot p of row b and attends to slots <= p;
  - `layers` (None, an int k for the first k blocks, or a tuple of block indices) runs only those
    blocks, then the final norm (layer-skip drafts run on the target's weights this way);
  - `taps` (block indices in [0, L]) asks for the input of those blocks (index L: the last block's
    output before the final norm), in the order given; with no taps nothing extra is computed. A
    tap must be the input of a block that runs, or the index after the last block that runs.

`LM` splits the module once into a static graph definition (hashable, a jit static argument) and
a params pytree, and merges them inside the jit. Its `forward` is the pure function every pass of
the decode loop uses: prefill, one-token decode and the (G+1)-token verification.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from specjax.cache import KVCache


# Prompts longer than this go through prefill in chunks of this many tokens (`LM.prefill_at`).
PREFILL_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class LM:
    """The static half of a model (hashable: a jit static argument); params travel separately."""

    graphdef: Any
    config: Any  # the module's static config (vocab_size, num_layers, dim, ...)

    @classmethod
    def split(cls, module) -> tuple["LM", Any]:
        graphdef, params = nnx.split(module)
        return cls(graphdef, module.config), params

    def module(self, params):
        return nnx.merge(self.graphdef, params)

    def forward(self, params, tokens_bt, positions_bt, cache: KVCache, *, taps: tuple[int, ...] = (),
                layers=None):
        """-> (logits [B,T,V] float32, cache, taps [n,B,T,D])."""
        module = self.module(params)
        hidden_btd, cache, taps_nbtd = module.hidden(tokens_bt, positions_bt, cache, layers=layers, taps=taps)
        return module.logits(hidden_btd), cache, taps_nbtd

    def forward_at(self, params, tokens_bt, positions_bt, cache: KVCache, index_b, *, taps: tuple[int, ...] = (),
                   layers=None):
        """`forward`, but project only position `index_b[b]` of each row to logits:
        -> (logits [B,V], cache, taps [n,B,T,D]). Saves the [B,T,V] logits of a long prefill."""
        module = self.module(params)
        hidden_btd, cache, taps_nbtd = module.hidden(tokens_bt, positions_bt, cache, layers=layers, taps=taps)
        picked_b1d = jnp.take_along_axis(hidden_btd, index_b[:, None, None], axis=1)
        return module.logits(picked_b1d)[:, 0], cache, taps_nbtd

    def prefill_at(self, params, tokens_bt, positions_bt, cache: KVCache, index_b, *, chunk: int = 0,
                   taps: tuple[int, ...] = (), layers=None):
        """`forward_at` over a prompt in chunks of `chunk` tokens (0, or a prompt no longer than one
        chunk: one pass): a `lax.scan` whose every step writes its chunk to the cache and attends to
        what is already there (the cache is addressed by position, so a chunk sees exactly the slots
        an unchunked pass would). Peak activation memory and the attention scores are bounded by the
        chunk ([B, heads, chunk, S] instead of [B, heads, T, S]); the step is one compiled body
        whatever the prompt's length. -> (logits [B,V] at `index_b`, cache, taps [n,B,T,D])."""
        B, T = tokens_bt.shape
        if not chunk or T <= chunk:
            return self.forward_at(params, tokens_bt, positions_bt, cache, index_b, taps=taps, layers=layers)
        n = -(-T // chunk)
        pad = n * chunk - T
        tokens_bt = jnp.pad(tokens_bt, ((0, 0), (0, pad)))
        positions_bt = jnp.pad(positions_bt, ((0, 0), (0, pad)), constant_values=-1)  # padding writes nothing
        tokens_cbk = tokens_bt.reshape(B, n, chunk).transpose(1, 0, 2)
        positions_cbk = positions_bt.reshape(B, n, chunk).transpose(1, 0, 2)
        module = self.module(params)
        shapes = jax.eval_shape(lambda: module.hidden(tokens_cbk[0], positions_cbk[0], cache, layers=layers, taps=taps))
        hidden = shapes[0]

        def step(carry, xs):
            cache, picked_bd = carry
            tok_bk, pos_bk, c = xs
            hidden_bkd, cache, taps_nbkd = module.hidden(tok_bk, pos_bk, cache, layers=layers, taps=taps)
            local_b = index_b - c * chunk
            here_b = (local_b >= 0) & (local_b < chunk)
            h_bd = jnp.take_along_axis(hidden_bkd, jnp.clip(local_b, 0, chunk - 1)[:, None, None], axis=1)[:, 0]
            return (cache, jnp.where(here_b[:, None], h_bd, picked_bd)), taps_nbkd

        init = (cache, jnp.zeros((B, hidden.shape[-1]), hidden.dtype))
        (cache, picked_bd), taps_cnbkd = jax.lax.scan(step, init, (tokens_cbk, positions_cbk, jnp.arange(n)))
        n_taps = taps_cnbkd.shape[1]
        taps_nbtd = taps_cnbkd.transpose(1, 2, 0, 3, 4).reshape(n_taps, B, n * chunk, taps_cnbkd.shape[-1])[:, :, :T]
        return module.logits(picked_bd[:, None])[:, 0], cache, taps_nbtd

    def init_cache(self, params, batch: int, size: int, *, layers: int | None = None,
                   ring_slack: int | None = None) -> KVCache:
        """An empty cache; `ring_slack` (the most positions a call writes ahead) lets a model keep its
        sliding-window layers in ring buffers (a module whose `init_cache` takes no such argument
        keeps full-size layers)."""
        module = self.module(params)
        if ring_slack is None:
            return module.init_cache(batch, size, layers=layers)
        return module.init_cache(batch, size, layers=layers, ring_slack=ring_slack)


def param_bytes(params) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(params))
