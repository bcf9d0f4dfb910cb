"""The language-model contract: forward with taps, forward_at, layer subsets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_lm

from specjax.lm import LM

TOKENS = jnp.asarray([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 0, 0]])
POSITIONS = jnp.asarray([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, -1, -1]])


@pytest.fixture(scope="module")
def model():
    return LM.split(tiny_lm(0, layers=3, scale=0.04).module)


def _blocks_by_hand(lm, params, taps):
    """The residual stream before each block, computed one block at a time with layer subsets:
    the input of block j is the output of blocks 0..j-1 (before the final norm)."""
    module = lm.module(params)
    out = []
    for t in taps:
        if t == 0:
            out.append(np.asarray(module.embed.value)[np.asarray(TOKENS)])
            continue
        cache = lm.init_cache(params, 2, 6, layers=t)
        _, _, (x,) = module.hidden(TOKENS, POSITIONS, cache, layers=t, taps=(t,))
        out.append(np.asarray(x))
    return np.stack(out)


def test_taps_are_the_inputs_of_the_named_blocks(model):
    lm, params = model
    taps = (3, 0, 2)  # any order; 3 = L is the last block's output before the final norm
    logits, _, taps_nbtd = lm.forward(params, TOKENS, POSITIONS, lm.init_cache(params, 2, 6), taps=taps)
    assert taps_nbtd.shape == (3, 2, 6, 32)
    want = _blocks_by_hand(lm, params, taps)
    valid = np.asarray(POSITIONS) >= 0
    np.testing.assert_allclose(np.asarray(taps_nbtd)[:, valid], want[:, valid], rtol=1e-5, atol=1e-6)
    # the final norm of the last tap, through the head, gives the logits
    module = lm.module(params)
    np.testing.assert_allclose(np.asarray(module.logits(module.final_norm(taps_nbtd[0]))), np.asarray(logits),
                               rtol=1e-5, atol=1e-5)


def test_taps_change_nothing_else_and_cost_nothing_when_absent(model):
    lm, params = model
    cache = lm.init_cache(params, 2, 6)

    def cost(fn):
        analysis = jax.jit(fn).lower(params, cache).compile().cost_analysis()
        return analysis["flops"], analysis["bytes accessed"]

    plain_flops, plain_bytes = cost(lambda p, c: lm.module(p)(TOKENS, POSITIONS, c))
    flops, nbytes = cost(lambda p, c: lm.forward(p, TOKENS, POSITIONS, c))
    tap_bytes = 2 * 2 * 6 * 32 * 4  # what two [B=2, T=6, D=32] float32 taps weigh
    assert flops == plain_flops and abs(nbytes - plain_bytes) < tap_bytes / 16
    _, tapped_bytes = cost(lambda p, c: lm.forward(p, TOKENS, POSITIONS, c, taps=(1, 2)))
    assert tapped_bytes >= plain_bytes + tap_bytes  # the measure does see taps when there are some
    a_logits, a_cache, none = lm.forward(params, TOKENS, POSITIONS, cache)
    b_logits, b_cache, _ = lm.forward(params, TOKENS, POSITIONS, cache, taps=(1, 2))
    assert none.shape == (0, 2, 6, 32)
    np.testing.assert_array_equal(np.asarray(a_logits), np.asarray(b_logits))
    np.testing.assert_array_equal(np.asarray(a_cache.k), np.asarray(b_cache.k))


def test_forward_at_projects_one_position_per_row(model):
    lm, params = model
    cache = lm.init_cache(params, 2, 6)
    full, _, _ = lm.forward(params, TOKENS, POSITIONS, cache)
    index_b = jnp.asarray([5, 3])
    picked, _, taps = lm.forward_at(params, TOKENS, POSITIONS, cache, index_b, taps=(1,))
    np.testing.assert_allclose(np.asarray(picked), np.asarray(full)[[0, 1], [5, 3]], rtol=1e-5, atol=1e-6)
    assert taps.shape == (1, 2, 6, 32)


def test_taps_outside_the_blocks_that_run_are_refused(model):
    lm, params = model
    with pytest.raises(ValueError, match=r"not \[3\]"):
        lm.forward(params, TOKENS, POSITIONS, lm.init_cache(params, 2, 6), taps=(3,), layers=(0, 1))


@pytest.mark.parametrize("tie", [False, True])
def test_bfloat16_params_give_float32_logits_that_are_not_rounded_to_bfloat16(tie):
    """The LM head accumulates in float32 and returns it: logits of a bf16 model are not on bf16's grid."""
    from flax import nnx

    from specjax.models import RopeConfig, Transformer, TransformerConfig

    cfg = TransformerConfig(family="llama", vocab_size=64, dim=32, mlp_dim=64, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8, rope=RopeConfig(theta=10000.0), tie_embeddings=tie)
    module = Transformer(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    tokens = jnp.asarray([[1, 2, 3, 4]])
    logits, _ = module(tokens, jnp.arange(4)[None], module.init_cache(1, 8))
    assert logits.dtype == jnp.float32
    on_grid = logits == logits.astype(jnp.bfloat16).astype(jnp.float32)
    assert not bool(jnp.all(on_grid)), "the logits were computed in bfloat16 and only then cast"


@pytest.mark.parametrize("family", ["llama", "mistral-gqa-window", "gemma3", "gpt2", "qwen3"])
def test_chunked_prefill_equals_one_pass(family):
    """`prefill_at` in chunks == one `forward_at` pass: the logits at each row's last prompt token,
    the cache and the taps, for prompts that are and are not multiples of the chunk (rows of
    different lengths, padding by position), including sliding-window layers (windows 5 and 4,
    shorter than the chunk of 8, so chunks attend across their boundary)."""
    from conftest import TINY_VOCAB, make_tiny_hf

    from specjax.models import load

    lm, params = LM.split(load(make_tiny_hf(family), progress=False).module)
    L = lm.config.num_layers
    rng = np.random.default_rng(5)
    for T, lengths in ((24, [24, 17]), (21, [21, 9]), (8, [8, 3])):
        tokens = jnp.asarray(rng.integers(0, TINY_VOCAB, size=(2, T)))
        positions = jnp.asarray([[t if t < n else -1 for t in range(T)] for n in lengths])
        last = jnp.asarray([n - 1 for n in lengths])
        taps = (0, 1, L)
        one = lm.forward_at(params, tokens, positions, lm.init_cache(params, 2, 40), last, taps=taps)
        chunked = lm.prefill_at(params, tokens, positions, lm.init_cache(params, 2, 40), last, chunk=8, taps=taps)
        np.testing.assert_allclose(np.asarray(chunked[0]), np.asarray(one[0]), rtol=1e-5, atol=1e-5,
                                   err_msg=f"logits T={T}")
        for a, b in zip(jax.tree.leaves(chunked[1]), jax.tree.leaves(one[1])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=f"cache T={T}")
        bare = lm.prefill_at(params, tokens, positions, lm.init_cache(params, 2, 40), last, chunk=8)  # no taps
        np.testing.assert_allclose(np.asarray(bare[0]), np.asarray(one[0]), rtol=1e-5, atol=1e-5)
        assert bare[2].shape == (0, 2, T, lm.config.dim)
        for r, n in enumerate(lengths):  # taps at padding are unspecified
            np.testing.assert_allclose(np.asarray(chunked[2])[:, r, :n], np.asarray(one[2])[:, r, :n], rtol=1e-5,
                                       atol=1e-5, err_msg=f"taps T={T}")


# Llama (here as Mistral-style GQA with a window), GPT-2 and Qwen3 differ from these two in nothing the
# attention sees but the window, so plain Llama, GPT-2 and Qwen3 run in make test-all (the test budget).
@pytest.mark.parametrize("family", ["mistral-gqa-window", "gemma3", pytest.param("llama", marks=pytest.mark.slow),
                                    pytest.param("gpt2", marks=pytest.mark.slow),
                                    pytest.param("qwen3", marks=pytest.mark.slow)])
def test_blocked_attention_equals_dense_attention(family, monkeypatch):
    """Blocked attention (key blocks up to the highest query position, from the lowest slot a window
    reaches, online softmax) gives the logits and cache of dense masked attention within float32
    rounding: a chunked prefill of rows of different lengths across block boundaries, then a one-token
    decode and a five-token verify pass, padding by position, sliding windows (4 and 5) that straddle a
    block boundary, for every family. Dense is forced by offering no block size."""
    from conftest import TINY_VOCAB, make_tiny_hf

    from specjax.models import load
    from specjax.models import transformer

    lm, params = LM.split(load(make_tiny_hf(family), progress=False).module)
    S = 384
    assert transformer.attention_block(S, 64) == 128 and transformer.attention_block(S, S) == 0
    rng = np.random.default_rng(7)
    lengths = [300, 254]  # row 1 decodes at 254: the last fully visible block ends at 127
    tokens = jnp.asarray(rng.integers(0, TINY_VOCAB, size=(2, 300)))
    positions = jnp.asarray([[t if t < n else -1 for t in range(300)] for n in lengths])
    last = jnp.asarray([n - 1 for n in lengths])
    step_tokens = jnp.asarray(rng.integers(0, TINY_VOCAB, size=(2, 5)))

    def run():
        logits0, cache, _ = jax.jit(lambda p, c: lm.prefill_at(p, tokens, positions, c, last, chunk=64))(
            params, lm.init_cache(params, 2, S))
        decode_pos = jnp.asarray([[300], [254]])
        forward = jax.jit(lambda p, t, q, c: lm.forward(p, t, q, c))  # a new function: traced again
        logits1, cache, _ = forward(params, step_tokens[:, :1], decode_pos, cache)
        verify_pos = jnp.asarray([[301, 302, 303, 304, 305], [255, 256, 257, -1, -1]])
        logits2, cache, _ = forward(params, step_tokens, verify_pos, cache)
        return logits0, logits1, logits2[:, :3], cache

    blocked = run()
    monkeypatch.setattr(transformer, "ATTN_BLOCKS", ())
    dense = run()
    for name, a, b in zip(("prefill", "decode", "verify"), blocked[:3], dense[:3]):
        assert np.abs(np.asarray(b)).max() > 0.1
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=name)
    for a, b in zip(jax.tree.leaves(blocked[3]), jax.tree.leaves(dense[3])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg="cache")


@pytest.mark.parametrize("family", ["mistral-gqa-window", "gemma3"])
def test_ring_buffers_of_sliding_window_layers_give_the_full_caches_logits(family):
    """Sliding-window layers in ring buffers of window + slack slots (slack 8: the prefill chunk and a
    five-token verify pass) give the logits of the full-size cache, through a chunked prefill and
    speculation-like rounds that write five positions and keep only some (the rejected ones stay in
    the ring until overwritten), with rows at different lengths, until the rings have wrapped many
    times; the ring layers hold window + slack slots, the global layers the full buffer."""
    from conftest import TINY_VOCAB, make_tiny_hf

    from specjax.models import load

    lm, params = LM.split(load(make_tiny_hf(family), progress=False).module)
    cfg = lm.config
    S = 96
    full = lm.init_cache(params, 2, S)
    ring = lm.init_cache(params, 2, S, ring_slack=8)
    local = [i for i, kind in enumerate(cfg.kinds) if kind == "local"]
    assert ring.ring_layers == tuple(local) and ring.ring_size == cfg.sliding_window + 8
    assert ring.k.shape[0] == cfg.num_layers - len(local) and ring.ring_k.shape[:3] == (len(local), 2, ring.ring_size)
    assert ring.nbytes < full.nbytes
    rng = np.random.default_rng(3)
    lengths = [29, 20]
    tokens = jnp.asarray(rng.integers(0, TINY_VOCAB, size=(2, 32)))
    positions = jnp.asarray([[t if t < n else -1 for t in range(32)] for n in lengths])
    prefill = jax.jit(lambda p, c: lm.prefill_at(p, tokens, positions, c, jnp.asarray(lengths) - 1, chunk=8))
    forward = jax.jit(lambda p, t, q, c: lm.forward(p, t, q, c))
    (a, full, _), (b, ring, _) = prefill(params, full), prefill(params, ring)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5, err_msg="prefill")
    length = np.asarray(lengths)
    for r in range(12):
        step_tokens = jnp.asarray(rng.integers(0, TINY_VOCAB, size=(2, 5)))
        pos = jnp.asarray(length[:, None] + np.arange(5))
        (a, full, _), (b, ring, _) = forward(params, step_tokens, pos, full), forward(params, step_tokens, pos, ring)
        assert np.abs(np.asarray(a)).max() > 0.1
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5, err_msg=f"round {r}")
        length = length + rng.integers(1, 6, size=2)  # keep 1..5 of the five: the rest were rejected
    assert length.min() > 2 * ring.ring_size  # the rings wrapped
