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
            fast = s._top_p_mask(logits, s.rows(SamplingConfig(temperature=1.0, top_p=p)))
            sorted_v = -jnp.sort(-logits, axis=-1)
            lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
            thr = s._nucleus_threshold(sorted_v, lse, p)[0]
            full = jnp.where(logits >= thr, logits, -jnp.inf)
            np.testing.assert_array_equal(np.isfinite(fast), np.isfinite(full))
    kept = np.isfinite(np.asarray(s._top_p_mask(flat, s.rows(SamplingConfig(temperature=1.0, top_p=0.9))))).sum(-1)
    assert (kept > s.TOP_P_BOUND).all()  # the flat case really needed the fallback


MIXED = [SamplingConfig(), SamplingConfig(temperature=0.7), SamplingConfig(temperature=1.0, top_k=2),
         SamplingConfig(temperature=0.9, top_p=0.6), SamplingConfig(temperature=1.3, top_k=4, top_p=0.8)]


def test_per_row_settings_warp_each_row_as_its_own_config_would():
    from specjax.sampling import RowSampling

    logits = jnp.asarray(np.random.default_rng(1).normal(size=(len(MIXED), 3, 16)) * 2.0, jnp.float32)
    rows = jax.tree.map(jnp.asarray, RowSampling.of(MIXED))
    mixed = np.asarray(warp(logits, rows))
    for b, cfg in enumerate(MIXED):
        np.testing.assert_allclose(mixed[b], np.asarray(warp(logits[b], cfg)), atol=1e-6, err_msg=str(cfg))
    assert np.isfinite(mixed).all()
    # sampling under jit, with the settings as traced values
    ids = np.asarray(jax.jit(sample)(jax.random.split(jax.random.key(0), len(MIXED)), logits, rows))
    assert ids[0].tolist() == np.argmax(np.asarray(logits[0]), -1).tolist()  # the greedy row
    assert all(mixed[b, np.arange(3), ids[b]].min() > 0 for b in range(len(MIXED)))  # only kept ids are drawn


def test_a_greedy_row_never_divides_by_its_zero_temperature():
    from specjax.sampling import RowSampling

    rows = RowSampling.of([SamplingConfig(), SamplingConfig(temperature=1e-46), SamplingConfig(temperature=0.5)])
    assert rows.greedy.tolist() == [True, True, False]  # 1e-46 is 0 in float32: greedy, not a division by 0
    assert rows.temperature.tolist() == [1.0, 1.0, 0.5]
    p = np.asarray(warp(jnp.tile(LOGITS, (3, 1)), jax.tree.map(jnp.asarray, rows)))
    assert np.isfinite(p).all() and p[0].tolist() == p[1].tolist() == [1, 0, 0, 0, 0]


def test_row_settings_check_their_inputs():
    from specjax.sampling import TOP_K_BOUND, RowSampling

    assert RowSampling.of(SamplingConfig(temperature=1.0, top_k=TOP_K_BOUND + 1), 2).top_k_bound == 2 * TOP_K_BOUND
    assert RowSampling.of(SamplingConfig(temperature=1.0, top_k=500), 2, vocab_size=100).top_k.tolist() == [0, 0]
    with pytest.raises(ConfigError, match="exceeds this program's top-k bound 8"):
        RowSampling.of(SamplingConfig(temperature=1.0, top_k=9), 1, top_k_bound=8)
    with pytest.raises(ConfigError, match="3 sampling settings for a batch of 2"):
        RowSampling.of([SamplingConfig()] * 3, 2)
    with pytest.raises(ConfigError, match=r"sampling\[1\] must be a SamplingConfig, got dict"):
        RowSampling.of([SamplingConfig(), {"temperature": 1.0}])
