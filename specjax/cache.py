"""The KV cache: one pytree holding every layer's keys and values, written at per-row slots.

Axes: L layers, B batch, S cache slots, K kv heads, H head dim, T tokens in one call.

Slot ``s`` of row ``b`` holds the key/value of the token at position ``s`` of that row. A model call writes its ``T`` new entries at the
slots given by their positions, so rows of a batch advance independently. The cache does not know
which slots are committed: the decode state's ``lengths`` does. Entries of rejected draft tokens
stay in their slots and are harmless, because attention only reads slots ``<= position`` of the
query, and the next write at those positions overwrites them.

Sliding-window layers may instead keep ring buffers of W slots (`ring_layers`; position p in slot
p mod W), so their memory stops growing with the context. That is exact as long as W >= window +
the most positions any call writes ahead of the committed length (a prefill chunk, G + 1 for a
speculation round): then the window of every query (its last `window` positions) lies in distinct
slots that still hold those positions, and everything else is masked by position arithmetic
(`specjax.models.transformer`). The decoder sizes W that way (`Transformer.init_cache(ring_slack=)`).

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
    k: jax.Array  # [Lg, B, S, K, H] in the storage dtype (see the module docstring): every layer not in a ring
    v: jax.Array  # [Lg, B, S, K, H]
    ring_k: jax.Array | None = None  # [Lr, B, W, K, H]: the layers of `ring_layers`, slot = position mod W
    ring_v: jax.Array | None = None
    dtype: jnp.dtype = struct.field(pytree_node=False, default=jnp.dtype(jnp.float32))  # of keys and values
    ring_layers: tuple[int, ...] = struct.field(pytree_node=False, default=())  # cache layers held in rings
    window: int = struct.field(pytree_node=False, default=0)  # the sliding window of the ring layers

    # logical axis names of k and v, for sharding (see specjax.sharding)
    AXES = ("layers", "batch", "seq", "kv_heads", "head_dim")

    @classmethod
    def zeros(
        cls, *, layers: int, batch: int, size: int, kv_heads: int, head_dim: int, dtype=jnp.float32,
        ring_layers: tuple[int, ...] = (), window: int = 0, ring_size: int = 0,
    ) -> "KVCache":
        """An empty cache of `layers` layers and `size` slots per row; the layers of `ring_layers`
        (sliding-window layers of width `window`) instead get ring buffers of `ring_size` slots."""
        dtype = jnp.dtype(dtype)
        ring_layers = tuple(int(i) for i in ring_layers)
        if ring_layers:
            if not 0 < window < ring_size or len(set(ring_layers)) != len(ring_layers) or not all(
                    0 <= i < layers for i in ring_layers):
                raise ValueError(f"ring layers {ring_layers} of {layers}, window {window}, ring size {ring_size}")

        def zeros(n, slots):  # all-zero bits are 0.0 in every float format
            return jnp.zeros((n, batch, slots, kv_heads, head_dim), _storage(dtype))

        if not ring_layers:
            return cls(k=zeros(layers, size), v=zeros(layers, size), dtype=dtype)
        return cls(k=zeros(layers - len(ring_layers), size), v=zeros(layers - len(ring_layers), size),
                   ring_k=zeros(len(ring_layers), ring_size), ring_v=zeros(len(ring_layers), ring_size), dtype=dtype,
                   ring_layers=ring_layers, window=int(window))

    def logical_axes(self) -> "KVCache":
        """The same pytree with each leaf replaced by its logical axis names."""
        ring = self.AXES if self.ring_layers else None
        return self.replace(k=self.AXES, v=self.AXES, ring_k=ring, ring_v=ring)

    def _load(self, bits):
        return bits if bits.dtype == self.dtype else jax.lax.bitcast_convert_type(bits, self.dtype)

    def _store(self, x):
        x = x.astype(self.dtype)
        storage = _storage(self.dtype)
        return x if storage == self.dtype else jax.lax.bitcast_convert_type(x, storage)

    @property
    def num_layers(self) -> int:
        return self.k.shape[0] + len(self.ring_layers)

    def _tables(self):
        """Per cache layer: its index among the full layers (Lg if it is a ring layer: out of range, so
        a write there is dropped) and among the ring layers (Lr if it is not)."""
        n = self.num_layers
        full = [i for i in range(n) if i not in self.ring_layers]
        return ([full.index(i) if i in full else len(full) for i in range(n)],
                [self.ring_layers.index(i) if i in self.ring_layers else len(self.ring_layers) for i in range(n)])

    def _full(self, layer):
        return jnp.asarray(self._tables()[0], jnp.int32)[layer] if self.ring_layers else layer

    def is_ring(self, layer) -> jax.Array:
        """Whether cache layer `layer` (traced or not) lives in a ring buffer."""
        return jnp.asarray([i in self.ring_layers for i in range(self.num_layers)])[layer]

    def keys(self, layer) -> jax.Array:
        """Keys of one (full) layer [B,S,K,H] in `dtype`."""
        return self._load(self.k[self._full(layer)])

    def values(self, layer) -> jax.Array:
        """Values of one (full) layer [B,S,K,H] in `dtype`."""
        return self._load(self.v[self._full(layer)])

    def ring_keys(self, layer) -> jax.Array:
        """Keys of one ring layer [B,W,K,H] in `dtype` (slot = position mod W)."""
        return self._load(self.ring_k[jnp.asarray(self._tables()[1], jnp.int32)[layer]])

    def ring_values(self, layer) -> jax.Array:
        return self._load(self.ring_v[jnp.asarray(self._tables()[1], jnp.int32)[layer]])

    def block(self, layer, start, size: int) -> tuple[jax.Array, jax.Array]:
        """Keys and values [B,size,K,H] in `dtype` of one full layer's slots [start, start + size)
        (`start` may be traced; the block must lie inside the cache)."""
        layer = self._full(layer)

        def take(bits):
            L, B, S, K, H = bits.shape
            return self._load(jax.lax.dynamic_slice(bits, (layer, 0, start, 0, 0), (1, B, size, K, H))[0])
        return take(self.k), take(self.v)

    @property
    def size(self) -> int:
        """S, the number of slots per row (of the full layers)."""
        return self.k.shape[2]

    @property
    def ring_size(self) -> int:
        """W, the slots of each ring buffer (0 without rings)."""
        return 0 if self.ring_k is None else self.ring_k.shape[2]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in (self.k, self.v, self.ring_k, self.ring_v) if x is not None)

    def write(self, layer, k_btkh: jax.Array, v_btkh: jax.Array, positions_bt: jax.Array) -> "KVCache":
        """Store new keys/values of ``layer`` at slot = position (ring layers: position mod W);
        positions < 0 or >= S are dropped."""
        size = self.size
        rows_bt = jnp.broadcast_to(jnp.arange(positions_bt.shape[0])[:, None], positions_bt.shape)
        k_new, v_new = self._store(k_btkh), self._store(v_btkh)
        full = self._full(layer)
        slots_bt = jnp.where((positions_bt >= 0) & (positions_bt < size), positions_bt, size)
        out = self.replace(k=self.k.at[full, rows_bt, slots_bt].set(k_new, mode="drop"),
                           v=self.v.at[full, rows_bt, slots_bt].set(v_new, mode="drop"))
        if not self.ring_layers:
            return out
        ring = jnp.asarray(self._tables()[1], jnp.int32)[layer]
        slots_bt = jnp.where((positions_bt >= 0) & (positions_bt < size), positions_bt % self.ring_size,
                             self.ring_size)
        return out.replace(ring_k=self.ring_k.at[ring, rows_bt, slots_bt].set(k_new, mode="drop"),
                           ring_v=self.ring_v.at[ring, rows_bt, slots_bt].set(v_new, mode="drop"))
