"""Warping by hand: temperature, then top-k, then top-p, then min-p; greedy; vocabulary padding; the
sort-free thresholds against a float64 sorting reference on adversarial logits up to V = 262,144."""

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


@pytest.mark.parametrize("kwargs", [dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5),
                                    dict(min_p=-0.1), dict(min_p=1.5)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        SamplingConfig(**kwargs)


def _sorted_reference(logits, k=None, p=None):
    """Today's definition by sorting: the k-th largest logit, then the nucleus threshold from a
    cumulative sum in descending order (the kept set is every logit >= each threshold)."""
    x = np.asarray(logits, np.float64)
    if k is not None:
        kth = -np.sort(-x, axis=-1)[..., k - 1:k]
        x = np.where(x >= kth, x, -np.inf)
    if p is not None:
        desc = -np.sort(-x, axis=-1)
        probs = np.exp(desc - desc[..., :1])
        probs /= probs.sum(-1, keepdims=True)
        before = np.cumsum(probs, -1) - probs
        thr = np.min(np.where(before < p, desc, np.inf), axis=-1, keepdims=True)
        x = np.where(x >= thr, x, -np.inf)
    return np.isfinite(x)


@pytest.mark.parametrize("shape", ["peaked", "flat", "ties", "wide"])
def test_top_k_and_top_p_without_sorting_keep_what_sorting_keeps(shape):
    from specjax import sampling as s

    rng = np.random.default_rng(0)
    V = 5000 if shape == "wide" else 1000
    if shape == "ties":  # few distinct values: ties at every boundary
        logits = rng.integers(-3, 4, size=(4, 3, V)).astype(np.float32)
    else:
        logits = (rng.normal(size=(4, 3, V)) * {"peaked": 4.0, "flat": 0.01, "wide": 2.0}[shape]).astype(np.float32)
    logits[0, 0, :V // 2] = -np.inf  # masked ids (padding, an earlier filter) take no part
    for k, p in [(1, None), (7, None), (300, None), (None, 0.5), (None, 0.9), (None, 0.99), (40, 0.8), (V, 0.3)]:
        cfg = SamplingConfig(temperature=1.0, top_k=k, top_p=p)
        got = np.isfinite(np.asarray(s.warp_logits(jnp.asarray(logits), cfg)))
        want = _sorted_reference(logits, k, p)
        np.testing.assert_array_equal(got, want, err_msg=f"{shape} k={k} p={p}")


def test_the_threshold_search_orders_floats_like_floats():
    from specjax.sampling import _ordered

    values = np.array([-np.inf, -3e38, -1.5, -1e-30, -0.0, 0.0, 1e-30, 0.25, 7.0, 3e38, np.inf], np.float32)
    keys = np.asarray(_ordered(jnp.asarray(values))).astype(np.int64)
    assert (np.diff(keys) >= 0).all() and (np.diff(keys)[[i for i in range(10) if i != 4]] > 0).all()


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
    from specjax.sampling import RowSampling

    assert RowSampling.of(SamplingConfig(temperature=1.0, top_k=500), 2, vocab_size=100).top_k.tolist() == [0, 0]
    with pytest.raises(ConfigError, match="3 sampling settings for a batch of 2"):
        RowSampling.of([SamplingConfig()] * 3, 2)
    with pytest.raises(ConfigError, match=r"sampling\[1\] must be a SamplingConfig, got dict"):
        RowSampling.of([SamplingConfig(), {"temperature": 1.0}])


def test_min_p_keeps_ids_at_least_min_p_times_the_top_one():
    # probabilities 0.4, 0.3, 0.15, 0.1, 0.05: min_p 0.3 keeps >= 0.12 (three ids), 0.25 keeps >= 0.1 (ties kept)
    np.testing.assert_allclose(warp(LOGITS, SamplingConfig(temperature=1.0, min_p=0.3)),
                               [0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0], atol=1e-6)
    np.testing.assert_allclose(warp(LOGITS, SamplingConfig(temperature=1.0, min_p=0.25)),
                               [0.4 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.1 / 0.95, 0], atol=1e-6)
    assert SamplingConfig(temperature=1.0, min_p=0.0).min_p is None  # 0 = off
    # after the temperature: T = 0.5 squares the ratios (0.75 -> 0.5625, 0.375 -> 0.14): min_p 0.5 keeps two
    p = np.array([0.4, 0.3]) ** 2
    np.testing.assert_allclose(warp(LOGITS, SamplingConfig(temperature=0.5, min_p=0.5)), [*(p / p.sum()), 0, 0, 0],
                               atol=1e-6)
    # after top-p: top_p 0.5 keeps two, then min_p 0.8 of the renormalised pair keeps one... the ratio
    # 0.3 / 0.4 = 0.75 is the same before and after renormalising, so only the top id remains
    np.testing.assert_allclose(warp(LOGITS, SamplingConfig(temperature=1.0, top_p=0.5, min_p=0.8)), [1, 0, 0, 0, 0],
                               atol=1e-6)


def _reference_probs(logits_v, k=None, p=None, min_p=None):
    """Float64, by sorting: temperature 1, then top-k (ties with the k-th kept), then top-p (an id is
    kept iff the mass strictly before it in descending order is < p; ties at the edge kept), then
    min-p (probability >= min_p * the largest) -> (kept mask, renormalised probabilities)."""
    x = np.asarray(logits_v, np.float64)
    V = x.shape[-1]
    if k is not None and k < V:
        kth = -np.sort(-x)[k - 1]
        x = np.where(x >= kth, x, -np.inf)
    if p is not None and p < 1.0:
        desc = -np.sort(-x)
        probs = np.exp(desc - desc[0])
        probs /= probs.sum()
        before = np.cumsum(probs) - probs
        # every id tied with the last one kept is kept
        thr = desc[np.flatnonzero(before < p).max()]
        x = np.where(x >= thr, x, -np.inf)
    if min_p is not None and min_p > 0:
        x = np.where(np.exp(x - x.max()) >= min_p, x, -np.inf)
    kept = np.isfinite(x)
    probs = np.where(kept, np.exp(x - x.max()), 0.0)
    return kept, probs / probs.sum()


def _adversarial(kind: str, V: int, rng) -> np.ndarray:
    if kind == "random":
        return (rng.normal(size=V) * 3.0).astype(np.float32)
    if kind == "ties":  # a handful of distinct values: ties at every boundary
        return rng.integers(-2, 3, size=V).astype(np.float32)
    if kind == "masked":  # -inf for most ids (padding, an earlier filter)
        x = (rng.normal(size=V) * 2.0).astype(np.float32)
        x[rng.permutation(V)[: (3 * V) // 4]] = -np.inf
        return x
    if kind == "dominant":  # one token holds nearly all the mass
        x = rng.normal(size=V).astype(np.float32)
        x[rng.integers(V)] = 40.0
        return x
    if kind == "flat":
        return (rng.normal(size=V) * 1e-3).astype(np.float32)
    if kind == "nucleus":  # 100 likely ids with graded logits over a long tail (~5e-4 of the mass at V = 262,144)
        x = rng.normal(size=V).astype(np.float32)
        x[rng.permutation(V)[:min(100, V)]] = 18.0 + np.linspace(0.0, -8.0, min(100, V))
        return x
    raise ValueError(kind)


@pytest.mark.parametrize("V", [10, 1000, 262144])
@pytest.mark.parametrize("kind", ["random", "ties", "masked", "dominant", "flat", "nucleus"])
def test_sort_free_warping_equals_a_float64_sorting_reference(kind, V):
    """Every k in {1, 2, 50, V-1, V}, every p in {1e-6, 0.1, 0.9, 0.999, 1.0}, min-p, and mixes, one row
    each in one batch (the settings are runtime values): identical kept sets, probabilities within 1e-6.
    k around CAND_BLOCKS and 1000 cover both sides of the candidate-block fast path's bound."""
    from specjax.sampling import CAND_BLOCKS, RowSampling

    rng = np.random.default_rng(V + len(kind))
    logits = _adversarial(kind, V, rng)
    settings = ([dict(k=k) for k in (1, 2, 50, V - 1, V) + (CAND_BLOCKS, CAND_BLOCKS + 1, 1000) if k < V] + [dict(p=p) for p in (1e-6, 0.1, 0.9, 0.999, 1.0)]
                + [dict(min_p=m) for m in (0.01, 0.5, 1.0)]
                + [dict(k=50, p=0.9), dict(k=2, p=0.999), dict(k=V - 1, p=0.1), dict(p=0.9, min_p=0.05),
                   dict(k=50, p=0.999, min_p=0.2)])
    configs = [SamplingConfig(temperature=1.0, top_k=min(st.get("k") or 0, 2 ** 31 - 1) or None, top_p=st.get("p"),
                              min_p=st.get("min_p")) for st in settings]
    rows = jax.tree.map(jnp.asarray, RowSampling.of(configs, vocab_size=V))
    batch = jnp.broadcast_to(jnp.asarray(logits), (len(configs), V))
    got = np.asarray(jax.jit(warp)(batch, rows), np.float64)
    for i, st in enumerate(settings):
        kept, want = _reference_probs(logits, st.get("k"), st.get("p"), st.get("min_p"))
        np.testing.assert_array_equal(got[i] > 0, kept, err_msg=f"{kind} V={V} {st}: kept sets differ")
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-6, err_msg=f"{kind} V={V} {st}")


def test_argmax_by_two_reductions_is_jnp_argmax():
    """`sampling.argmax` (a max, then the first index holding it) against jnp.argmax: ties take the
    first index, a NaN counts as the largest, all -inf gives 0, integers too; `last_index` against numpy."""
    from specjax.sampling import argmax, last_index

    rng = np.random.default_rng(0)
    cases = [rng.normal(size=(3, 7, 50)).astype(np.float32), rng.integers(0, 3, size=(4, 100)).astype(np.float32),
             np.full((2, 9), -np.inf, np.float32), np.array([[1.0, np.nan, 3.0, np.nan], [2.0, 5.0, 5.0, 1.0]], np.float32),
             rng.integers(-5, 5, size=(3, 11)).astype(np.int32)]
    for x in cases:
        np.testing.assert_array_equal(np.asarray(argmax(jnp.asarray(x))), np.asarray(jnp.argmax(jnp.asarray(x), -1)))
    mask = rng.random((5, 40)) > 0.8
    mask[0] = False
    want = [np.flatnonzero(r).max() if r.any() else -1 for r in mask]
    np.testing.assert_array_equal(np.asarray(last_index(jnp.asarray(mask))), want)


def test_flat_and_broad_rows_take_the_histogram_path_and_crowded_bins_fall_back():
    """The top-p search over one histogram bin (`_edge_bin`) must serve the rows it is for (flat and
    broad logits over 262,144 ids, whose nucleus is thousands of ids), or the reference test above
    only checks the all-ids fallback; exactly tied logits crowd a bin past the candidate groups and
    must report that they cannot use it."""
    from specjax.sampling import _edge_bin

    rng = np.random.default_rng(3)
    V = 262144
    shapes = {"flat": rng.normal(size=(4, V)) * 1e-3, "broad": rng.normal(size=(4, V)) * 3.0,
              "ties": rng.integers(-2, 3, size=(4, V)).astype(np.float64)}
    for name, values in shapes.items():
        x = jnp.asarray(values, jnp.float32)
        top = jnp.max(x, axis=-1, keepdims=True)
        e = jnp.exp(x - top)
        p = jnp.asarray([[0.1], [0.5], [0.9], [0.999]], jnp.float32)
        q = jnp.asarray(1.0 - np.array([[0.1], [0.5], [0.9], [0.999]]), jnp.float32)
        *_, ok = jax.jit(_edge_bin)(x, top, e, jnp.sum(e, axis=-1, keepdims=True), p, q, p > 0.5)
        assert np.asarray(ok).all() == (name != "ties"), f"{name}: histogram path used by rows {np.asarray(ok).ravel()}"


def test_an_edge_bin_spilling_past_the_groups_falls_back_exactly():
    """An edge bin whose ids lie in more groups than EDGE_GROUPS: only the first groups (in id order)
    are gathered, and here they hold the bin's lower ids while its higher ids (the ones top-p 0.01
    keeps) lie in later groups, so a bisection over the gathered ids alone would keep the whole bin.
    The row must report the bin unusable and search all ids: kept set equal to the reference."""
    from specjax.sampling import CAND_WIDTH, EDGE_GROUPS, RowSampling, _edge_bin

    V = 262144
    nb = V // CAND_WIDTH  # group g holds ids g, g + nb, ...
    x = np.zeros(V, np.float32)
    x[:EDGE_GROUPS + 8] = 10.0  # the first groups: the bin's lower value
    x[nb // 2: nb // 2 + 200] = 10.00005  # later groups: the same bin (width 10.5 / 32767), a higher value
    x[nb - 1] = 10.5  # the top of the range, a bin of its own with ~0.0035 of the mass
    top = jnp.asarray(x.max())[None, None]
    e = jnp.exp(jnp.asarray(x)[None] - top)
    p = jnp.asarray([[0.01]], jnp.float32)
    *_, ok = jax.jit(_edge_bin)(jnp.asarray(x)[None], top, e, jnp.sum(e, axis=-1, keepdims=True), p, 1.0 - p, p > 0.5)
    assert not bool(np.asarray(ok).all())
    rows = jax.tree.map(jnp.asarray, RowSampling.of(SamplingConfig(temperature=1.0, top_p=0.01), 1, vocab_size=V))
    got = np.asarray(jax.jit(warp)(jnp.asarray(x)[None], rows))[0]
    kept, want = _reference_probs(x, p=0.01)
    assert kept.sum() == 201
    np.testing.assert_array_equal(got > 0, kept)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("V", [200003, 262144])
def test_top_p_after_a_small_top_k_equals_the_reference(V):
    """When every top-p row ran top-k with k <= CAND_BLOCKS first (Gemma 3's defaults are top-k 64,
    top-p 0.95), top-p searches only the groups holding the top-k survivors; rows whose survivors
    spill past those groups (thousands tied at the k-th value: the "ties" logits) must search all ids.
    Kept sets identical to the float64 reference, probabilities within 1e-6."""
    from specjax.sampling import CAND_BLOCKS, RowSampling

    settings = [dict(k=k, p=p) for k, p in ((1, 0.5), (2, 0.999), (50, 1e-6), (50, 0.02), (50, 0.1), (50, 0.9), (64, 0.95),
                                             (CAND_BLOCKS, 0.999))] + [dict(k=50, p=0.95, min_p=0.05)]
    configs = [SamplingConfig(temperature=1.0, top_k=st["k"], top_p=st["p"], min_p=st.get("min_p")) for st in settings]
    rows = jax.tree.map(jnp.asarray, RowSampling.of(configs, vocab_size=V))
    spill = np.zeros(V, np.float32)  # 10 ids above 1,000 tied at the 50th value, spread over all groups
    spill[::V // 10][:10] = 5.0
    spill[1 + np.arange(1000) * (V // 1000)] = 4.0
    for kind in ("random", "flat", "nucleus", "ties", "masked", "spill"):
        logits = spill if kind == "spill" else _adversarial(kind, V, np.random.default_rng(V + 7 * len(kind)))
        got = np.asarray(jax.jit(warp)(jnp.broadcast_to(jnp.asarray(logits), (len(configs), V)), rows), np.float64)
        for i, st in enumerate(settings):
            kept, want = _reference_probs(logits, st["k"], st["p"], st.get("min_p"))
            np.testing.assert_array_equal(got[i] > 0, kept, err_msg=f"{kind} V={V} {st}: kept sets differ")
            np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-6, err_msg=f"{kind} V={V} {st}")


def test_survivor_groups_hold_every_top_k_survivor_or_say_not():
    """`_survivor_groups` after a top-k 50: the gathered logits hold every finite logit (same multiset)
    when it reports held; 1,000 ids tied at the 50th value over 1,000 groups cannot be held."""
    from specjax.sampling import RowSampling, _survivor_groups, warp_logits

    V = 262144
    rng = np.random.default_rng(5)
    spill = np.zeros(V, np.float32)
    spill[1 + np.arange(1000) * (V // 1000)] = 4.0
    for logits, want_held in ((rng.normal(size=V).astype(np.float32), True), (spill, False)):
        rows = jax.tree.map(jnp.asarray, RowSampling.of(SamplingConfig(temperature=1.0, top_k=50), 1, vocab_size=V))
        x = jax.jit(warp_logits)(jnp.asarray(logits)[None], rows)
        xg, eg, held = jax.jit(_survivor_groups)(x, jnp.exp(x - jnp.max(x)))
        assert bool(held[0, 0]) == want_held
        if want_held:
            np.testing.assert_array_equal(np.sort(np.asarray(xg)[np.isfinite(xg)]), np.sort(np.asarray(x)[np.isfinite(x)]))


def test_an_edge_bin_with_ids_in_group_zero_counts_them_once():
    """Fewer than EDGE_GROUPS groups hold the edge bin, one of them group 0 (ids 0, nb, 2 nb, ...):
    the unused group slots must not gather group 0 again (its ids would weigh many times their mass
    and the bisection would drop id 1 here). Reference: top-p 0.2 keeps ids 5, 0 and 1."""
    from specjax.sampling import RowSampling

    V = 262144
    x = np.zeros(V, np.float32)
    x[5], x[0], x[1] = 10.5, 10.00005, 10.0  # ids 0 and 1: one bin, groups 0 and 1
    for p in (0.2, 0.6, 0.9):
        rows = jax.tree.map(jnp.asarray, RowSampling.of(SamplingConfig(temperature=1.0, top_p=p), 1, vocab_size=V))
        got = np.asarray(jax.jit(warp)(jnp.asarray(x)[None], rows))[0]
        kept, want = _reference_probs(x, p=p)
        np.testing.assert_array_equal(got > 0, kept, err_msg=f"p={p}")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"p={p}")


def test_a_top_p_below_float32_and_a_nan_logit():
    """top_p = 1e-46 (0 in float32) keeps the top id, as any p below its probability does, at a small
    and a large vocabulary; a NaN logit makes the warped probabilities NaN rather than a quiet answer."""
    for V in (10, 262144):
        x = np.random.default_rng(V).normal(size=V).astype(np.float32)
        probs = np.asarray(warp(jnp.asarray(x)[None], SamplingConfig(temperature=1.0, top_p=1e-46)))[0]
        np.testing.assert_array_equal(probs > 0, np.arange(V) == x.argmax())
        bad = x.copy()
        bad[3] = np.nan
        for cfg in (SamplingConfig(temperature=1.0), SamplingConfig(temperature=1.0, top_p=0.9, min_p=0.05)):
            assert np.isnan(np.asarray(warp(jnp.asarray(bad)[None], cfg))).any(), (V, cfg)
