"""The KV cache: one pytree holding every layer's keys and values, written at per-row slots.

Axes: L layers, B batch, S cache slots, K kv heads, H head dim, T tokens in one call.

Slot ``s`` of row ``b`` holds the key/value of the token at position ``s`` of that row. A model call writes its ``T`` new entries at the
slots given by their positions, so rows of a batch advance independently. The cache does not know
which slots are committed: the decode state's ``lengths`` does. Entries of rejected draft tokens
stay in their slots and are harmless, because attention only reads slots ``<= position`` of the
query, and the next write at those positions overwrites them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    k: jax.Array  # [L, B, S, K, H]
    v: jax.Array  # [L, B, S, K, H]

    # logical axis names of k and v, for sharding (see specjax.sharding)
    AXES = ("layers", "batch", "seq", "kv_heads", "head_dim")

    @classmethod
    def zeros(
        cls, *, layers: int, batch: int, size: int, kv_heads: int, head_dim: int, dtype=jnp.float32
    ) -> "KVCache":
        shape = (layers, batch, size, kv_heads, head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))

    def logical_axes(self) -> "KVCache":
        """The same pytree with each leaf replaced by its logical axis names."""
        return KVCache(k=self.AXES, v=self.AXES)

    @property
    def size(self) -> int:
        """S, the number of slots per row."""
        return self.k.shape[2]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def write(self, layer, k_btkh: jax.Array, v_btkh: jax.Array, positions_bt: jax.Array) -> "KVCache":
        """Store new keys/values of ``layer`` at slot = position; positions < 0 or >= S are dropped."""
        size = self.size
        slots_bt = jnp.where((positions_bt >= 0) & (positions_bt < size), positions_bt, size)
        rows_bt = jnp.broadcast_to(jnp.arange(positions_bt.shape[0])[:, None], positions_bt.shape)
        k = self.k.at[layer, rows_bt, slots_bt].set(k_btkh.astype(self.k.dtype), mode="drop")
        v = self.v.at[layer, rows_bt, slots_bt].set(v_btkh.astype(self.v.dtype), mode="drop")
        return self.replace(k=k, v=v)
