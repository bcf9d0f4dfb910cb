"""The language-model contract the engine programs against, and its pure-function form.

A model is any Flax NNX module with
    hidden(tokens[B,T], positions[B,T], cache, *, layers=None) -> (hidden[B,T,D], cache)
    logits(hidden[B,T,D]) -> logits[B,T,V]  (float32)
    init_cache(batch, size) -> KVCache
    config.vocab_size, config.num_layers
(`specjax.models.Transformer` is one). The engine never imports model code: it splits the module
once into a static graph definition and a params pytree, and merges them inside its jit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from specjax.cache import KVCache


@dataclasses.dataclass(frozen=True)
class LM:
    """The static half of a model (hashable: a jit static argument); params travel separately."""

    graphdef: Any
    config: Any  # the module's static config (vocab_size, num_layers, ...)

    @classmethod
    def split(cls, module) -> tuple["LM", Any]:
        graphdef, params = nnx.split(module)
        return cls(graphdef, module.config), params

    def module(self, params):
        return nnx.merge(self.graphdef, params)

    def apply(self, params, tokens_bt, positions_bt, cache: KVCache, *, layers: int | None = None):
        """The pure forward of DESIGN.md: -> (logits [B,T,V] float32, cache)."""
        return self.module(params)(tokens_bt, positions_bt, cache, layers=layers)

    def apply_at(self, params, tokens_bt, positions_bt, cache: KVCache, index_b, *, layers: int | None = None):
        """Forward, but project only position `index_b[b]` of each row: -> (logits [B,V], cache).

        Saves the [B,T,V] logits of a long prefill (V is 262,144 for Gemma 3)."""
        module = self.module(params)
        hidden_btd, cache = module.hidden(tokens_bt, positions_bt, cache, layers=layers)
        picked_bd = jnp.take_along_axis(hidden_btd, index_b[:, None, None], axis=1)
        return module.logits(picked_bd)[:, 0], cache

    def init_cache(self, params, batch: int, size: int) -> KVCache:
        return self.module(params).init_cache(batch, size)


def param_bytes(params) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(params))
