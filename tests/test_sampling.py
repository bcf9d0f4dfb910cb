"""Warping by hand: temperature, then top-k, then top-p; greedy; vocabulary padding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax.config import SamplingConfig
from specjax.errors import ConfigError
from specjax.sampling import greedy, sample, warp

LOGITS = jnp.log(jnp.asarray([0.4, 0.3, 0.15, 0.1, 0.05]))


def test_temperature_one_is_softmax():
    np.testing.assert_allclose(warp(LOGITS, SamplingConfig(temperature=1.0)), [0.4, 0.3, 0.15, 0.1, 0.05], atol=1e-6)


def test_temperature_sharpens():
    p = np.array([0.4, 0.3, 0.15, 0.1, 0.05]) ** 2
    np.testing.assert_allclose(warp(LOGITS, SamplingConfig(temperature=0.5)), p / p.sum(), atol=1e-6)


def test_top_k():
    np.testing.assert_allclose(warp(LOGITS, SamplingConfig(temperature=1.0, top_k=2)),
                               [0.4 / 0.7, 0.3 / 0.7, 0, 0, 0], atol=1e-6)


def test_top_p_keeps_smallest_set_reaching_p():
    # cumulative: 0.4, 0.7, 0.85 -> p = 0.8 keeps the first three
    np.testing.assert_allclose(warp(LOGITS, SamplingConfig(temperature=1.0, top_p=0.8)),
                               [0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0], atol=1e-6)
    # p = 0.39 keeps only the first; p = 0.41 needs the second too
    np.testing.assert_allclose(warp(LOGITS, SamplingConfig(temperature=1.0, top_p=0.39)), [1, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(warp(LOGITS, SamplingConfig(temperature=1.0, top_p=0.41)),
                               [0.4 / 0.7, 0.3 / 0.7, 0, 0, 0], atol=1e-6)


def test_order_is_temperature_then_top_k_then_top_p():
    # T = 0.5, then top-3: [0.587, 0.330, 0.083]; top_p 0.55 keeps only the first. Top-p before the
    # temperature would see [0.47, 0.35, 0.18] and keep two.
    cfg = SamplingConfig(temperature=0.5, top_k=3, top_p=0.55)
    np.testing.assert_allclose(warp(LOGITS, cfg), [1, 0, 0, 0, 0], atol=1e-6)
    cfg = SamplingConfig(temperature=2.0, top_k=3, top_p=0.7)
    p = np.sqrt([0.4, 0.3, 0.15])
    p = p / p.sum()  # T = 2, then top-3: [0.40, 0.35, 0.25] -> top_p 0.7 keeps two
    np.testing.assert_allclose(warp(LOGITS, cfg), [p[0] / (p[0] + p[1]), p[1] / (p[0] + p[1]), 0, 0, 0], atol=1e-6)


def test_greedy_and_vocab_padding():
    logits = jnp.asarray([[0.1, 0.2, 0.3, 5.0]])
    assert int(greedy(logits)[0]) == 3
    assert int(greedy(logits, vocab_size=3)[0]) == 2  # id 3 is embedding padding
    p = warp(logits, SamplingConfig(temperature=1.0), vocab_size=3)
    assert float(p[0, 3]) == 0.0
    np.testing.assert_allclose(warp(logits, SamplingConfig()), [[0, 0, 0, 1]])


def test_sampling_frequencies_follow_warped_distribution():
    keys = jax.random.split(jax.random.key(0), 1)
    logits = jnp.broadcast_to(LOGITS, (40000, 5))
    ids = np.asarray(sample(keys[0], logits, SamplingConfig(temperature=1.0, top_k=3)))
    np.testing.assert_allclose(np.bincount(ids, minlength=5) / ids.size, [0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0],
                               atol=0.01)


@pytest.mark.parametrize("kwargs", [dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        SamplingConfig(**kwargs)


def test_fast_top_p_agrees_with_full_sort_and_falls_back_when_flat():
    from specjax import sampling as s

    rng = np.random.default_rng(0)
    peaked = jnp.asarray(rng.normal(size=(3, 1000)) * 4.0, jnp.float32)  # nucleus well inside 128
    flat = jnp.asarray(rng.normal(size=(3, 1000)) * 0.01, jnp.float32)  # nucleus ~900 ids: fallback
    for logits in (peaked, flat, jnp.concatenate([peaked, flat])):
        for p in (0.5, 0.9, 0.99):
            fast = s._top_p_mask(logits, p)
            sorted_v = -jnp.sort(-logits, axis=-1)
            lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
            thr = s._nucleus_threshold(sorted_v, lse, p)[0]
            full = jnp.where(logits >= thr, logits, -jnp.inf)
            np.testing.assert_array_equal(np.isfinite(fast), np.isfinite(full))
    kept = np.isfinite(np.asarray(s._top_p_mask(flat, 0.9))).sum(-1)
    assert (kept > s.TOP_P_BOUND).all()  # the flat case really needed the fallback
