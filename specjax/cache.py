"""The KV cache: one pytree holding every layer's keys and values, written at per-row slots.

Axes: L layers, B batch, S cache slots, K kv heads, H head dim, T tokens in one call.

Slot ``s`` of row ``b`` holds the key/value of the token at position ``s`` of that row. A model call writes its ``T`` new entries at the
slots given by their positions, so rows of a batch advance independently. The cache does not know
which slots are committed: the decode state's ``lengths`` does. Entries of rejected draft tokens
stay in their slots and are harmless, because attention only reads slots ``<= position`` of the
query, and the next write at those positions overwrites them.

Keys and values of a 16-bit float dtype (bfloat16, float16) are stored as their bit patterns
(uint16) and read back through `keys(layer)` / `values(layer)`. XLA:CPU computes a scatter into a
bfloat16 array in float32: it converted the whole [L,B,S,K,H] cache to float32 and back in every
block of every forward pass (a bf16 decode step at batch 4 took 2.6x as long as f32). Moving integer
bits is exact and native everywhere, so the cache costs the same bytes and does no arithmetic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


def _storage(dtype) -> jnp.dtype:
    """The array dtype that holds values of `dtype`: uint16 bit patterns for 16-bit floats."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.uint16) if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize == 2 else dtype


@struct.dataclass
class KVCache:
    k: jax.Array  # [L, B, S, K, H] in the storage dtype (see the module docstring)
    v: jax.Array  # [L, B, S, K, H]
    dtype: jnp.dtype = struct.field(pytree_node=False, default=jnp.dtype(jnp.float32))  # of keys and values

    # logical axis names of k and v, for sharding (see specjax.sharding)
    AXES = ("layers", "batch", "seq", "kv_heads", "head_dim")

    @classmethod
    def zeros(
        cls, *, layers: int, batch: int, size: int, kv_heads: int, head_dim: int, dtype=jnp.float32
    ) -> "KVCache":
        shape, dtype = (layers, batch, size, kv_heads, head_dim), jnp.dtype(dtype)
        zeros = jnp.zeros(shape, _storage(dtype))  # all-zero bits are 0.0 in every float format
        return cls(k=zeros, v=zeros, dtype=dtype)

    def logical_axes(self) -> "KVCache":
        """The same pytree with each leaf replaced by its logical axis names."""
        return KVCache(k=self.AXES, v=self.AXES, dtype=self.dtype)

    def _load(self, bits):
        return bits if bits.dtype == self.dtype else jax.lax.bitcast_convert_type(bits, self.dtype)

    def _store(self, x):
        x = x.astype(self.dtype)
        storage = _storage(self.dtype)
        return x if storage == self.dtype else jax.lax.bitcast_convert_type(x, storage)

    def keys(self, layer) -> jax.Array:
        """Keys of one layer [B,S,K,H] in `dtype`."""
        return self._load(self.k[layer])

    def values(self, layer) -> jax.Array:
        """Values of one layer [B,S,K,H] in `dtype`."""
        return self._load(self.v[layer])

    def block(self, layer, start, size: int) -> tuple[jax.Array, jax.Array]:
        """Keys and values [B,size,K,H] in `dtype` of one layer's slots [start, start + size) (`start` may
        be traced; the block must lie inside the cache)."""
        def take(bits):
            L, B, S, K, H = bits.shape
            return self._load(jax.lax.dynamic_slice(bits, (layer, 0, start, 0, 0), (1, B, size, K, H))[0])
        return take(self.k), take(self.v)

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
        k = self.k.at[layer, rows_bt, slots_bt].set(self._store(k_btkh), mode="drop")
        v = self.v.at[layer, rows_bt, slots_bt].set(self._store(v_btkh), mode="drop")
        return self.replace(k=k, v=v)
