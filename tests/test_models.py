"""Every family against transformers on tiny random configs, and incremental decoding."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_VOCAB, make_tiny_hf, torch_logits

from specjax.models import load

TOL = 1e-4


def _positions(lengths, T):
    return np.array([[t if t < n else -1 for t in range(T)] for n in lengths], np.int32)


def test_family_matches_transformers(tiny_hf):
    """Batch of two prompts of different lengths (right padding masked by position), f32."""
    name, hf = tiny_hf
    model = load(hf, progress=False)
    rng = np.random.default_rng(1)
    T, lengths = 13, [13, 8]
    tokens = rng.integers(0, TINY_VOCAB, size=(2, T))
    ref = torch_logits(hf, tokens, lengths)
    logits, cache = model.module(jnp.asarray(tokens), jnp.asarray(_positions(lengths, T)), model.module.init_cache(2, 32))
    logits = np.asarray(logits)
    for b, n in enumerate(lengths):
        err = np.abs(logits[b, :n] - ref[b, :n]).max()
        assert err <= TOL, f"{name}: row {b} max |diff| {err:.2e} > {TOL}"
    # padding writes nothing to the cache
    assert np.all(np.asarray(cache.k)[:, 1, 8:] == 0)


def test_incremental_decoding_matches_full_forward(tiny_hf):
    """Prefill, then single tokens, then a 5-token chunk == one full forward (rows of different lengths)."""
    name, hf = tiny_hf
    module = load(hf, progress=False).module
    rng = np.random.default_rng(2)
    T = 16
    tokens = rng.integers(0, TINY_VOCAB, size=(2, T))
    full, _ = module(jnp.asarray(tokens), jnp.asarray(_positions([T, T], T)), module.init_cache(2, 32))
    full = np.asarray(full)

    # row 0 prefills 7 tokens, row 1 prefills 4: rows advance at different offsets
    prefill = [7, 4]
    cache = module.init_cache(2, 32)
    width = max(prefill)
    chunk_tokens = np.zeros((2, width), np.int64)
    for b, n in enumerate(prefill):
        chunk_tokens[b, :n] = tokens[b, :n]
    out, cache = module(jnp.asarray(chunk_tokens), jnp.asarray(_positions(prefill, width)), cache)
    got = {b: [np.asarray(out)[b, :n]] for b, n in enumerate(prefill)}
    pos = list(prefill)
    # four single-token steps
    for _ in range(4):
        step_tok = np.array([[tokens[b, pos[b]]] for b in range(2)])
        out, cache = module(jnp.asarray(step_tok), jnp.asarray([[pos[0]], [pos[1]]]), cache)
        for b in range(2):
            got[b].append(np.asarray(out)[b])
            pos[b] += 1
    # one 5-token chunk
    chunk = np.array([tokens[b, pos[b]:pos[b] + 5] for b in range(2)])
    chunk_pos = np.array([np.arange(pos[b], pos[b] + 5) for b in range(2)])
    out, cache = module(jnp.asarray(chunk), jnp.asarray(chunk_pos), cache)
    for b in range(2):
        got[b].append(np.asarray(out)[b])
        pos[b] += 5
        seq = np.concatenate(got[b])
        err = np.abs(seq - full[b, :pos[b]]).max()
        assert err <= TOL, f"{name}: row {b} incremental vs full max |diff| {err:.2e}"


def test_gemma_sliding_window_is_really_applied():
    """A local layer must not see past its window: a far-away token change must not move the
    logits of a local-only model, and must move them when the layer is global."""
    import dataclasses

    from specjax.models.convert import build_model, convert_state, family_for
    from specjax.models.sources import open_checkpoint

    hf = make_tiny_hf("gemma3")
    ckpt = open_checkpoint(hf)
    family = family_for(ckpt.config)
    cfg = family.config_from_hf(ckpt.config)
    pure = convert_state(ckpt, family, cfg, progress=False)
    local_cfg = dataclasses.replace(cfg, layer_kinds=("local",) * cfg.num_layers)
    local = build_model(local_cfg, pure)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, TINY_VOCAB, size=(1, 12))
    changed = tokens.copy()
    changed[0, 0] = (changed[0, 0] + 1) % TINY_VOCAB
    pos = jnp.arange(12)[None]
    # one layer with window 4: position 11 sees positions 8..11 only
    a, _ = local(jnp.asarray(tokens), pos, local.init_cache(1, 16), layers=1)
    b, _ = local(jnp.asarray(changed), pos, local.init_cache(1, 16), layers=1)
    assert np.abs(np.asarray(a)[0, 11] - np.asarray(b)[0, 11]).max() == 0.0
    glob = build_model(dataclasses.replace(cfg, layer_kinds=("global",) * cfg.num_layers), pure)
    a, _ = glob(jnp.asarray(tokens), pos, glob.init_cache(1, 16), layers=1)
    b, _ = glob(jnp.asarray(changed), pos, glob.init_cache(1, 16), layers=1)
    assert np.abs(np.asarray(a)[0, 11] - np.asarray(b)[0, 11]).max() > 1e-6


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_bf16_conversion_runs_close(dtype):
    hf = make_tiny_hf("llama")
    model = load(hf, dtype=dtype, progress=False)
    tokens = np.arange(10)[None] % TINY_VOCAB
    ref = torch_logits(hf, tokens, [10])
    out, _ = model.module(jnp.asarray(tokens), jnp.arange(10)[None], model.module.init_cache(1, 16))
    assert model.module.embed.value.dtype == jnp.bfloat16
    assert np.abs(np.asarray(out) - ref).max() < 0.1
