"""The KV cache pytree: writes at per-row slots, dropped padding, declared logical axes."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from specjax.cache import KVCache


def test_write_puts_each_row_at_its_own_positions_and_drops_padding():
    cache = KVCache.zeros(layers=2, batch=2, size=5, kv_heads=1, head_dim=1)
    k_btkh = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])[..., None, None]  # [B=2, T=2, K=1, H=1]
    positions_bt = jnp.asarray([[0, 1], [3, -1]])  # row 1's second token is padding
    cache = cache.write(1, k_btkh, -k_btkh, positions_bt)
    k = np.asarray(cache.k)[..., 0, 0]  # [L, B, S]
    np.testing.assert_array_equal(k[1], [[1, 2, 0, 0, 0], [0, 0, 0, 3, 0]])
    np.testing.assert_array_equal(k[0], np.zeros((2, 5)))  # other layers untouched
    np.testing.assert_array_equal(np.asarray(cache.v)[1, ..., 0, 0], -k[1])


def test_positions_past_the_end_are_dropped_not_clamped():
    cache = KVCache.zeros(layers=1, batch=1, size=3, kv_heads=1, head_dim=1)
    k_btkh = jnp.asarray([[1.0, 2.0]])[..., None, None]  # distinct values: a clamped write would show
    cache = cache.write(0, k_btkh, k_btkh, jnp.asarray([[2, 3]]))
    np.testing.assert_array_equal(np.asarray(cache.keys(0))[0, :, 0, 0], [0, 0, 1])


def test_shape_properties_and_axes():
    cache = KVCache.zeros(layers=3, batch=2, size=7, kv_heads=4, head_dim=8, dtype=jnp.bfloat16)
    assert (cache.size, cache.batch) == (7, 2)
    assert cache.nbytes == 2 * 3 * 2 * 7 * 4 * 8 * 2
    axes = cache.logical_axes()
    assert axes.k == axes.v == ("layers", "batch", "seq", "kv_heads", "head_dim")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16_bit_caches_store_bit_patterns_and_read_back_the_values(dtype):
    cache = KVCache.zeros(layers=2, batch=1, size=4, kv_heads=1, head_dim=3, dtype=dtype)
    assert cache.k.dtype == jnp.uint16 and cache.dtype == jnp.dtype(dtype)
    k_btkh = jnp.asarray([[[[1.5, -2.25, 3e-3]], [[-0.0, 7.0, 1e4]]]], jnp.float32)  # [1, 2, 1, 3]
    cache = cache.write(1, k_btkh, -k_btkh, jnp.asarray([[1, 3]]))
    keys, values = cache.keys(1), cache.values(1)
    assert keys.dtype == values.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(keys[0, [1, 3]], np.float32), np.asarray(k_btkh[0].astype(dtype), np.float32))
    np.testing.assert_array_equal(np.asarray(values[0, [1, 3]], np.float32), -np.asarray(k_btkh[0].astype(dtype), np.float32))
    assert not np.asarray(cache.keys(0)).any() and not np.asarray(keys[0, [0, 2]]).any()
