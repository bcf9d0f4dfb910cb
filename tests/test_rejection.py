"""The acceptance rule on hand-computed cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from specjax.rejection import accept_given_uniforms, accept_greedy, accept_sampled, residual

KEY = jax.random.key(0)
KEYS = jax.random.split(KEY, 1)  # one key per row
U_NEXT = jnp.asarray([0.3])  # the uniform that draws the next token (one row)


def _p(*rows):
    return jnp.asarray([rows], jnp.float32)  # [1, G+1, V]


def test_p_equals_q_accepts_everything_and_samples_bonus_from_p():
    p = _p([0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0])
    q = p[:, :2]
    draft = jnp.asarray([[1, 2]])
    n, nxt = accept_given_uniforms(jnp.asarray([[0.999, 0.999]]), U_NEXT, draft, q, p)
    assert int(n[0]) == 2 and int(nxt[0]) == 2  # bonus from p at position G, a point mass on 2
    assert not np.isnan(np.asarray(residual(p[:, 0], q[:, 0]))).any()


def test_proposal_with_zero_target_probability_is_rejected():
    p = _p([0.0, 0.6, 0.4], [1.0, 0.0, 0.0])
    q = jnp.asarray([[[0.7, 0.2, 0.1]]])
    n, nxt = accept_given_uniforms(jnp.asarray([[0.0001]]), U_NEXT, jnp.asarray([[0]]), q, p)
    assert int(n[0]) == 0
    # residual max(0, p - q) = [0, 0.4, 0.3] / 0.7
    np.testing.assert_allclose(np.asarray(residual(p[0, :1], q[0])), [[0.0, 0.4, 0.3]], atol=1e-7)
    assert int(nxt[0]) in (1, 2)


def test_a_zero_probability_proposal_is_rejected_even_when_u_is_exactly_zero():
    """u = 0.0 is a possible float32 uniform draw; 0 * q <= 0 would accept a token the warped target
    can never emit (outside top-k/top-p, or an impossible token)."""
    p = _p([0.0, 0.6, 0.4], [0.5, 0.5, 0.0])
    u0 = jnp.asarray([[0.0]])
    for q in (jnp.asarray([[[0.7, 0.2, 0.1]]]), None):  # an explicit q, and a point mass (q = None)
        n, nxt = accept_given_uniforms(u0, U_NEXT, jnp.asarray([[0]]), q, p)
        assert int(n[0]) == 0 and int(nxt[0]) != 0, f"q={q}"
    # with u = 0 a proposal of positive probability is still accepted
    n, _ = accept_given_uniforms(u0, U_NEXT, jnp.asarray([[1]]), None, p)
    assert int(n[0]) == 1


def test_accept_probability_is_min_one_p_over_q():
    # p(d) / q(d) = 0.3 / 0.6 = 0.5: accepted iff u < 0.5
    p = _p([0.3, 0.7], [1.0, 0.0])
    q = jnp.asarray([[[0.6, 0.4]]])
    draft = jnp.asarray([[0]])
    assert int(accept_given_uniforms(jnp.asarray([[0.49]]), U_NEXT, draft, q, p)[0][0]) == 1
    assert int(accept_given_uniforms(jnp.asarray([[0.51]]), U_NEXT, draft, q, p)[0][0]) == 0
    # on rejection the residual is max(0, p - q) = [0, 0.3]: the next token must be 1
    n, nxt = accept_given_uniforms(jnp.asarray([[0.51]]), U_NEXT, draft, q, p)
    assert int(nxt[0]) == 1
    # p > q: always accepted
    q2 = jnp.asarray([[[0.2, 0.8]]])
    assert int(accept_given_uniforms(jnp.asarray([[0.9999]]), U_NEXT, draft, q2, p)[0][0]) == 1


def test_point_mass_proposals():
    # q = delta(d): accepted iff u <= p(d); the residual is p with d removed
    p = _p([0.25, 0.75, 0.0], [0.0, 0.0, 1.0])
    draft = jnp.asarray([[1]])
    assert int(accept_given_uniforms(jnp.asarray([[0.74]]), U_NEXT, draft, None, p)[0][0]) == 1
    n, nxt = accept_given_uniforms(jnp.asarray([[0.76]]), U_NEXT, draft, None, p)
    assert int(n[0]) == 0 and int(nxt[0]) == 0  # p without token 1 leaves only token 0
    np.testing.assert_allclose(np.asarray(residual(p[:, 0], jax.nn.one_hot(jnp.asarray([1]), 3))),
                               [[0.25, 0.0, 0.0]])


def test_rejection_at_first_and_at_last_position():
    V = 4
    p_row = [0.1, 0.2, 0.3, 0.4]
    p = _p(p_row, p_row, p_row, [0.0, 0.0, 0.0, 1.0])
    draft = jnp.asarray([[3, 3, 0]])  # p(3) = 0.4, p(0) = 0.1 under point-mass proposals
    # first position rejected (u = 0.5 > 0.4): n = 0, residual = p without token 3
    n, nxt = accept_given_uniforms(jnp.asarray([[0.5, 0.0, 0.0]]), U_NEXT, draft, None, p)
    assert int(n[0]) == 0 and int(nxt[0]) != 3
    # last position rejected (u = 0.2 > 0.1): n = 2, next drawn from p without token 0
    n, nxt = accept_given_uniforms(jnp.asarray([[0.1, 0.1, 0.2]]), U_NEXT, draft, None, p)
    assert int(n[0]) == 2 and int(nxt[0]) != 0
    # nothing rejected: n = G and the bonus comes from p at G + 1 (a point mass on 3)
    n, nxt = accept_given_uniforms(jnp.asarray([[0.1, 0.1, 0.05]]), U_NEXT, draft, None, p)
    assert int(n[0]) == 3 and int(nxt[0]) == 3
    assert V == p.shape[-1]


def test_rows_accept_independently():
    p = jnp.asarray([[[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]], [[0.5, 0.5], [0.5, 0.5], [0.0, 1.0]]])
    draft = jnp.asarray([[0, 0], [1, 1]])
    n, nxt = accept_given_uniforms(jnp.asarray([[0.1, 0.9], [0.1, 0.1]]), jnp.asarray([0.3, 0.3]), draft, None, p)
    assert n.tolist() == [1, 2]
    assert int(nxt[1]) == 1


def test_greedy_rule():
    target = jnp.asarray([[5, 6, 7, 8], [5, 6, 7, 8], [1, 2, 3, 4]])  # argmax at G + 1 = 4 positions
    draft = jnp.asarray([[5, 6, 7], [5, 9, 7], [0, 2, 3]])
    n, nxt = accept_greedy(draft, target)
    assert n.tolist() == [3, 1, 0]
    assert nxt.tolist() == [8, 6, 1]


def test_no_nan_and_residual_sampling_frequencies():
    """Residual sampling by frequency: q over-proposes token 0, so rejected rounds must continue
    with tokens 1 and 2 in proportion max(0, p - q) = [0, 0.2, 0.1]."""
    B = 20000
    p = jnp.broadcast_to(jnp.asarray([[0.3, 0.4, 0.3], [1.0, 0.0, 0.0]]), (B, 2, 3))
    q = jnp.broadcast_to(jnp.asarray([[[0.6, 0.2, 0.2]]]), (B, 1, 3))
    draft = jax.random.categorical(jax.random.key(1), jnp.log(q[:, 0]), axis=-1)[:, None]
    n, nxt = accept_sampled(jax.random.split(jax.random.key(2), B), draft, q, p)
    first = np.where(np.asarray(n) == 1, np.asarray(draft[:, 0]), np.asarray(nxt))
    freq = np.bincount(first, minlength=3) / B
    np.testing.assert_allclose(freq, [0.3, 0.4, 0.3], atol=0.015)
    rejected = np.asarray(nxt)[np.asarray(n) == 0]
    assert set(np.unique(rejected)) <= {1, 2}
    assert abs((rejected == 1).mean() - 2 / 3) < 0.03


def test_an_absent_proposal_leaves_p_untouched_whatever_q_the_drafter_left_there():
    # row proposes nothing (-1) but its q slot holds leftovers: the next token must come from p itself
    p = _p([0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25])
    q = jnp.asarray([[[0.9, 0.1, 0.0, 0.0]]])
    u_next = jax.random.uniform(KEY, (4000, 1))
    nxt = jax.vmap(lambda u: accept_given_uniforms(jnp.asarray([[0.5]]), u, jnp.asarray([[-1]]), q, p)[1][0])(u_next)
    share_of_1 = float(np.mean(np.asarray(nxt) == 1))
    assert 0.45 < share_of_1 < 0.55, f"the next token follows the leftover q, not p (P(1) = {share_of_1:.3f})"


def test_accept_warps_the_target_and_returns_the_emitted_block():
    from specjax.config import SamplingConfig
    from specjax.rejection import Proposal, accept, verdict

    logits = jnp.log(jnp.asarray([[[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]]))  # [1, G+1=3, V=3]
    # greedy: proposals [1, 2] against argmaxes [1, 0, 2] -> the first is accepted, then argmax 0
    v = accept(KEYS, Proposal(jnp.asarray([[1, 2]])), logits, SamplingConfig())
    assert int(v.accepted[0]) == 1 and v.tokens.tolist() == [[1, 0, 0]] and int(v.count[0]) == 2
    assert v.proposed.tolist() == [[True, True]]
    # ids >= vocab_size are masked before the argmax: with V = 2, position 2's argmax is 0 or 1
    v = accept(KEYS, Proposal(jnp.asarray([[1, 0]])), logits, SamplingConfig(), vocab_size=2)
    assert int(v.accepted[0]) == 2 and v.tokens[0, 2] in (0, 1)
    # sampled with top-k 1 is the argmax again, through the warped target
    v = accept(KEYS, Proposal(jnp.asarray([[1, 2]]), None), logits, SamplingConfig(temperature=1.0, top_k=1))
    assert int(v.accepted[0]) == 1 and v.tokens.tolist() == [[1, 0, 0]]
    # the block for a hand-made decision
    b = verdict(Proposal(jnp.asarray([[4, 5, -1]])), jnp.asarray([2]), jnp.asarray([7]))
    assert b.tokens.tolist() == [[4, 5, 7, 7]] and b.proposed.tolist() == [[True, True, False]]


def test_inverse_cdf_draws_by_cumulative_mass_and_never_a_zero_mass_id():
    from specjax.sampling import inverse_cdf

    probs = jnp.asarray([[0.0, 0.25, 0.0, 0.5, 0.25, 0.0]])
    for u, want in ((0.0, 1), (0.2499, 1), (0.25, 3), (0.7499, 3), (0.75, 4), (0.999999, 4)):
        assert int(inverse_cdf(jnp.asarray([u]), probs)[0]) == want, u
    assert int(inverse_cdf(jnp.asarray([0.5]), probs * 7.0)[0]) == 3  # unnormalised rows
    # rounding past the total still lands on the last id with mass
    assert int(inverse_cdf(jnp.asarray([1.0]), probs)[0]) == 4
    ids = np.asarray(inverse_cdf(jax.random.uniform(KEY, (60000,)), jnp.broadcast_to(probs[0], (60000, 6))))
    np.testing.assert_allclose(np.bincount(ids, minlength=6) / ids.size, probs[0], atol=0.01)


def test_inverse_cdf_across_blocks_matches_a_direct_cumulative_sum():
    from specjax import sampling

    rng = np.random.default_rng(3)
    V = 3 * sampling.CDF_BLOCK + 17  # several blocks and a ragged last one
    probs = rng.random((64, V)) * (rng.random((64, V)) < 0.3)  # many zero-mass ids
    probs[0, :] = 0.0
    probs[0, V - 5] = 1.0  # all mass at the end
    u = rng.random(64)
    got = np.asarray(sampling.inverse_cdf(jnp.asarray(u, jnp.float32), jnp.asarray(probs, jnp.float32)))
    cum = np.cumsum(probs, axis=-1)
    want = (cum <= (u * cum[:, -1])[:, None]).sum(-1)
    assert (got == want).mean() > 0.95  # float32 against float64: only boundary cases may differ
    assert (probs[np.arange(64), got] > 0).all()
    assert got[0] == V - 5
