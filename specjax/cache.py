"""The KV cache: one pytree holding every layer's keys and values, written at per-row slots.

Axes: L layers, B batch, S cache slots, K kv heads, H head dim, T tokens in one call.

Slot ``s`` of row ``b`` holds the key/value of the token at position ``s`` of that row. A model call
writes its ``T`` new entries at the slots given by their positions, so rows of a batch advance
independently. ``lengths[b]`` counts the slots of row ``b`` that hold committed tokens; rejecting
draft tokens only lowers ``lengths``. The stale slots above it are never read, because attention
only looks at slots ``<= position`` of the query, and they are overwritten by the next write.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    k: jax.Array  # [L, B, S, K, H]
    v: jax.Array  # [L, B, S, K, H]
    lengths: jax.Array  # [B] int32, committed slots per row

    @classmethod
    def zeros(
        cls, *, layers: int, batch: int, size: int, kv_heads: int, head_dim: int, dtype=jnp.float32
    ) -> "KVCache":
        shape = (layers, batch, size, kv_heads, head_dim)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            lengths=jnp.zeros((batch,), jnp.int32),
        )

    @property
    def size(self) -> int:
        """S, the number of slots per row."""
        return self.k.shape[2]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.lengths.nbytes

    def write(self, layer, k_btkh: jax.Array, v_btkh: jax.Array, positions_bt: jax.Array) -> "KVCache":
        """Store new keys/values of ``layer`` at slot = position; positions < 0 or >= S are dropped."""
        size = self.size
        slots_bt = jnp.where((positions_bt >= 0) & (positions_bt < size), positions_bt, size)
        rows_bt = jnp.broadcast_to(jnp.arange(positions_bt.shape[0])[:, None], positions_bt.shape)
        k = self.k.at[layer, rows_bt, slots_bt].set(k_btkh.astype(self.k.dtype), mode="drop")
        v = self.v.at[layer, rows_bt, slots_bt].set(v_btkh.astype(self.v.dtype), mode="drop")
        return self.replace(k=k, v=v)

    def rollback(self, lengths_b: jax.Array) -> "KVCache":
        """Keep only the first ``lengths_b[b]`` slots of each row; nothing is copied."""
        return self.replace(lengths=lengths_b.astype(jnp.int32))
