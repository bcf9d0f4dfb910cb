"""EAGLE-3 heads: the head against a torch reference written here from the published description,
the community checkpoint layout, exact greedy decoding on every family, and the head's cache."""

from __future__ import annotations

import json
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_hf, tiny_lm

from specjax import api, loop, sampling
from specjax.config import SamplingConfig
from specjax.drafters import registry
from specjax.drafters.eagle import draw_reduced, eagle_drafter
from specjax.errors import ConfigError, ConversionError, IncompatibleDraftError, MissingWeightError, WeightShapeError
from specjax.lm import LM
from specjax.models import Eagle3Config, RopeConfig, head_config_for, load, load_eagle, random_head, save_eagle

# -- a torch reference of the head, from the published description -------------------------------
# EAGLE-3: fc over the concatenated target features; one Llama decoder layer whose attention input is
# [input_layernorm(embedding of the next token), hidden_norm(features)] (2D wide), residual around the
# un-normed features, post-attention norm, gated SiLU MLP with its residual; final norm; LM head over
# the draft vocabulary. RoPE at the feature's position; the layer's output (before the final norm)
# replaces the features at the next draft step.

D, E, F, NH, KH, HD, V, VD = 32, 48, 64, 4, 2, 8, 64, 24


def _rms(x, w, eps=1e-6):
    import torch

    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, pos, theta=10000.0):
    import torch

    inv = 1.0 / theta ** (torch.arange(0, HD, 2).float() / HD)
    ang = pos.float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]
    rotated = torch.cat([-x[..., HD // 2:], x[..., :HD // 2]], -1)
    return x * cos + rotated * sin


def torch_layer(sd, emb, hid, pos, past):
    """One head step over entries [B,T] at positions pos [T]; past = (keys, values, positions) of
    earlier entries. -> (out [B,T,D], (keys, values, positions))."""
    import torch

    B, T, _ = hid.shape
    x = torch.cat([_rms(emb, sd["midlayer.input_layernorm.weight"]), _rms(hid, sd["midlayer.hidden_norm.weight"])], -1)
    q = (x @ sd["midlayer.self_attn.q_proj.weight"].T).view(B, T, NH, HD)
    k = (x @ sd["midlayer.self_attn.k_proj.weight"].T).view(B, T, KH, HD)
    v = (x @ sd["midlayer.self_attn.v_proj.weight"].T).view(B, T, KH, HD)
    q, k = _rope(q, pos), _rope(k, pos)
    keys, values, kpos = (torch.cat([past[0], k], 1), torch.cat([past[1], v], 1), torch.cat([past[2], pos]))
    kr, vr = keys.repeat_interleave(NH // KH, dim=2), values.repeat_interleave(NH // KH, dim=2)
    scores = torch.einsum("bqnh,bknh->bnqk", q, kr) / HD ** 0.5
    scores = scores.masked_fill(~(kpos[None, :] <= pos[:, None])[None, None], float("-inf"))
    attn = torch.einsum("bnqk,bknh->bqnh", scores.softmax(-1), vr).reshape(B, T, NH * HD)
    a = hid + attn @ sd["midlayer.self_attn.o_proj.weight"].T
    m = _rms(a, sd["midlayer.post_attention_layernorm.weight"])
    mlp = (torch.nn.functional.silu(m @ sd["midlayer.mlp.gate_proj.weight"].T) * (m @ sd["midlayer.mlp.up_proj.weight"].T))
    return a + mlp @ sd["midlayer.mlp.down_proj.weight"].T, (keys, values, kpos)


def torch_logits(sd, out):
    return _rms(out, sd["norm.weight"]) @ sd["lm_head.weight"].T


def community_head_dir(tmp_path, target_ids, seed=0):
    """A head directory written the way the community layout has it, from torch tensors."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "fc.weight": w(D, 3 * E), "norm.weight": 1 + w(D), "lm_head.weight": w(VD, D),
        "midlayer.hidden_norm.weight": 1 + w(D), "midlayer.input_layernorm.weight": 1 + w(D),
        "midlayer.post_attention_layernorm.weight": 1 + w(D),
        "midlayer.self_attn.q_proj.weight": w(NH * HD, 2 * D), "midlayer.self_attn.k_proj.weight": w(KH * HD, 2 * D),
        "midlayer.self_attn.v_proj.weight": w(KH * HD, 2 * D), "midlayer.self_attn.o_proj.weight": w(D, NH * HD),
        "midlayer.mlp.gate_proj.weight": w(F, D), "midlayer.mlp.up_proj.weight": w(F, D),
        "midlayer.mlp.down_proj.weight": w(D, F),
    }
    ids = torch.as_tensor(np.asarray(target_ids), dtype=torch.long)
    t2d = torch.zeros(V, dtype=torch.bool)
    t2d[ids] = True
    save_file({**sd, "d2t": ids - torch.arange(VD), "t2d": t2d}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_size": D, "target_hidden_size": E,
        "intermediate_size": F, "num_attention_heads": NH, "num_key_value_heads": KH, "num_hidden_layers": 1,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "vocab_size": V, "draft_vocab_size": VD, "hidden_act": "silu",
        "max_position_embeddings": 2048, "tie_word_embeddings": False}))
    return sd


def test_head_matches_a_torch_reference_at_the_first_and_a_later_step(tmp_path):
    import torch

    rng = np.random.default_rng(0)
    target_ids = np.sort(rng.choice(V, VD, replace=False))
    sd = community_head_dir(tmp_path, target_ids)
    head = load_eagle(tmp_path)
    assert head.config.target_dim == E and head.config.draft_vocab_size == VD
    B, T = 2, 6
    feats = rng.normal(size=(3, B, T, E)).astype(np.float32)
    embed = rng.normal(size=(V, D)).astype(np.float32)  # stands in for the target's embedding
    nxt = rng.integers(0, V, (B, T))  # entry t: features at t, token t + 1
    later = rng.integers(0, V, (B, 1))  # a drafted token fed at position T with the head's own output

    # torch: the first step from target features, then a later step from the head's own output
    pos = torch.arange(T)
    fused = torch.cat([torch.as_tensor(f) for f in feats], -1) @ sd["fc.weight"].T
    empty = (torch.zeros(B, 0, KH, HD), torch.zeros(B, 0, KH, HD), torch.zeros(0, dtype=torch.long))
    out0, past = torch_layer(sd, torch.as_tensor(embed[nxt]), fused, pos, empty)
    out1, _ = torch_layer(sd, torch.as_tensor(embed[later]), out0[:, -1:], torch.tensor([T]), past)
    ref0, ref1 = torch_logits(sd, out0).numpy(), torch_logits(sd, out1).numpy()

    cache = head.init_cache(B, 16)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    step = jax.jit(head.step)
    ours0, cache = step(jnp.asarray(embed[nxt]), jax.jit(head.fuse)(jnp.asarray(feats)), positions, cache)
    ours1, _ = step(jnp.asarray(embed[later]), ours0[:, -1:], jnp.full((B, 1), T), cache)
    np.testing.assert_allclose(np.asarray(head.logits(ours0)), ref0, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(head.logits(ours1)), ref1, atol=1e-4, rtol=1e-4)
    assert np.abs(ref1).max() > 0.5  # the comparison is not between near-zero logits

    # the draft vocabulary maps to target ids as d2t says: q is the softmax placed at those ids
    logits_bd = head.logits(ours0)[:, -1]
    q_ids, q_bv = draw_reduced(jnp.full((B,), 0.3), logits_bd, head.target_ids.value,
                               sampling.RowSampling.of(SamplingConfig(temperature=1.0), B), None, V)
    full = np.full((B, V), -np.inf, np.float32)
    full[:, target_ids] = ref0[:, -1]
    np.testing.assert_allclose(np.asarray(q_bv), np.asarray(jax.nn.softmax(full, -1)), atol=1e-5)
    assert set(np.asarray(q_ids)) <= set(target_ids)
    g_ids, g_q = draw_reduced(jnp.zeros((B,)), logits_bd, head.target_ids.value,
                              sampling.RowSampling.of(SamplingConfig(), B), None, V)
    np.testing.assert_array_equal(np.asarray(g_ids), full.argmax(-1))
    np.testing.assert_array_equal(np.asarray(g_q), np.eye(V)[full.argmax(-1)])


def test_checkpoint_round_trip_and_bad_checkpoints(tmp_path):
    rng = np.random.default_rng(1)
    target_ids = np.sort(rng.choice(V, VD, replace=False))
    (tmp_path / "a").mkdir()
    community_head_dir(tmp_path / "a", target_ids)
    head = load_eagle(tmp_path / "a")
    save_eagle(head, tmp_path / "b")
    again = load_eagle(tmp_path / "b")
    for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, nnx_state(head))),
                    jax.tree.leaves(jax.tree.map(np.asarray, nnx_state(again)))):
        np.testing.assert_array_equal(a, b)
    assert again.config == head.config
    written = json.loads((tmp_path / "b" / "config.json").read_text())
    assert written["architectures"] == ["LlamaForCausalLMEagle3"] and written["target_hidden_size"] == E

    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(tmp_path / "b" / "model.safetensors"))
    np.testing.assert_array_equal(tensors["d2t"] + np.arange(VD), target_ids)
    assert tensors["t2d"].sum() == VD and tensors["t2d"][target_ids].all()

    def broken(name, change):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text((tmp_path / "b" / "config.json").read_text())
        save_file(change(dict(tensors)), str(d / "model.safetensors"))
        return d

    with pytest.raises(MissingWeightError, match="midlayer.mlp.up_proj.weight"):
        load_eagle(broken("missing", lambda t: {k: v for k, v in t.items() if k != "midlayer.mlp.up_proj.weight"}))
    with pytest.raises(WeightShapeError, match="fc.weight"):
        load_eagle(broken("shape", lambda t: {**t, "fc.weight": t["fc.weight"][:, :E]}))
    with pytest.raises(ConversionError, match="distinct target ids"):
        load_eagle(broken("d2t", lambda t: {**t, "d2t": -np.arange(VD, dtype=np.int64)}))
    with pytest.raises(ConversionError, match="t2d"):
        load_eagle(broken("t2d", lambda t: {**t, "t2d": np.ones(V, bool)}))
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForCausalLM"]}))
    save_file(tensors, str(tmp_path / "arch" / "model.safetensors"))
    with pytest.raises(ConversionError, match="not an EAGLE-3 head"):
        load_eagle(tmp_path / "arch")


def nnx_state(module):
    from flax import nnx

    return nnx.state(module)


# -- exact decoding -------------------------------------------------------------------------------

def frequent_head(module, ar_tokens, prompt_len, *, draft_vocab, seed=0, taps=None, scale=1.0):
    """A random head whose draft vocabulary is the `draft_vocab` tokens the target emits most often
    (so that random proposals are sometimes right and the accept paths run)."""
    counts = Counter(t for row in ar_tokens for t in row[prompt_len:])
    ids = [t for t, _ in counts.most_common(draft_vocab)]
    ids += [i for i in range(module.config.vocab_size) if i not in ids][:draft_vocab - len(ids)]
    L = module.config.num_layers
    cfg = head_config_for(module.config, draft_vocab_size=draft_vocab, taps=taps or (0, L // 2, L))
    return random_head(cfg, seed=seed, target_ids=np.sort(ids), scale=scale)


PROMPTS = [[5, 9, 13, 2, 7, 30, 11], [3, 4], [20, 21, 22, 23, 24]]


# One configuration per family, the ones with the most to get wrong: Llama-family GQA with a sliding
# window, Qwen3 (q/k norms, head_dim != D / N), Gemma 3 (scaled embeddings, local and global layers,
# sandwich norms) and GPT-2 (learned positions, LayerNorm).
# (Qwen3 runs in make test-all only: the test budget.)
FAMILIES = ["mistral-gqa-window", pytest.param("qwen3", marks=pytest.mark.slow), "gemma3", "gpt2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_with_a_random_head_equals_plain_greedy_on_every_family(family):
    model = load(make_tiny_hf(family), progress=False)
    ar = api.generate(model, PROMPTS, max_new_tokens=16, eos_ids=())
    head = frequent_head(model.module, ar.tokens, 0, draft_vocab=6)
    sp = api.generate(model, PROMPTS, draft=head, gamma=3, max_new_tokens=16, eos_ids=())
    assert sp.tokens == ar.tokens
    assert sum(sp.stats["accepted"]) > 0, "no proposal was ever accepted: the accept paths did not run"


def test_the_heads_cache_holds_exactly_the_committed_positions_after_every_round():
    """After each round, rebuild the head's cache from scratch over the committed sequence (a target
    prefill with taps, then one head pass) and compare it with the cache the loop maintained."""
    target = tiny_lm(0, vocab=12, layers=3, scale=0.6)
    lm, params = LM.split(target.module)
    head = frequent_head(target.module, [list(range(12))], 0, draft_vocab=9, seed=2, scale=3.0)
    drafter, dparams = eagle_drafter(head, target.module)
    prompts = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 0, 0, 0]])
    size = 48
    dec = loop.Decoder(lm=lm, size=size, drafter=drafter, gamma=3)
    batch = loop.Batch.make(prompts, [6, 3], max_new_tokens=30, sampling=SamplingConfig(temperature=1.0),
                            key=jax.random.key(3))
    state = jax.jit(dec.start)(params, dparams, batch)
    one_round = jax.jit(lambda s: loop.spec_round(dec, params, dparams, s))
    hmod = drafter.head.module(dparams)

    @jax.jit
    def rebuild(tokens_s, n):  # the head's cache and newest output from scratch, for n committed tokens
        t_s = jnp.arange(size)
        positions = jnp.where(t_s < n - 1, t_s, -1)[None]  # entries 0 .. n-2: token t's features, token t + 1
        _, _, taps = lm.forward(params, tokens_s[None], positions, lm.init_cache(params, 1, size), taps=drafter.taps)
        nxt = jnp.concatenate([tokens_s[1:], tokens_s[:1]])[None]
        out, fresh = hmod.step(target.module.embed_tokens(nxt), hmod.fuse(taps), positions, hmod.init_cache(1, size))
        return fresh, out[0, n - 2]

    accepted_counts = set()
    rounds = 0
    while not bool(np.all(state.done)):
        before = np.asarray(state.stats.accepted)
        state = one_round(state)
        accepted_counts |= set((np.asarray(state.stats.accepted) - before).tolist())
        rounds += 1
        for b in range(2):
            n = int(state.lengths[b])
            fresh, out = rebuild(state.tokens[b], n)
            kept = state.draft.cache
            for got, want, what in ((kept.keys(0)[b], fresh.keys(0)[0], "keys"), (kept.values(0)[b], fresh.values(0)[0],
                                                                               "values")):
                np.testing.assert_allclose(np.asarray(got[:n - 1]), np.asarray(want[:n - 1]), rtol=1e-4, atol=1e-4,
                                           err_msg=f"row {b}, round {rounds}: {what}")
            np.testing.assert_allclose(np.asarray(state.draft.out[b]), np.asarray(out), rtol=1e-4, atol=1e-3,
                                       err_msg=f"row {b}, round {rounds}: the newest output")
    assert rounds >= 5 and {0, 1} <= accepted_counts, accepted_counts  # rejections and acceptances both ran


# -- interfaces ------------------------------------------------------------------------------------

def test_heads_built_for_another_target_are_refused():
    target = tiny_lm(0, vocab=64, layers=3)
    cfg = head_config_for(target.module.config, draft_vocab_size=16, taps=(0, 1, 3))
    import dataclasses

    with pytest.raises(IncompatibleDraftError, match="width 48.*hidden size is 32"):
        eagle_drafter(random_head(dataclasses.replace(cfg, target_dim=48)), target.module)
    with pytest.raises(IncompatibleDraftError, match="hidden size 40 has no embedding"):
        eagle_drafter(random_head(dataclasses.replace(cfg, dim=40)), target.module)
    with pytest.raises(IncompatibleDraftError, match=r"taps \(0, 1, 7\)"):
        eagle_drafter(random_head(dataclasses.replace(cfg, taps=(0, 1, 7))), target.module)
    with pytest.raises(IncompatibleDraftError, match="default"):  # (2, 1, 0) for L = 3 is fine; L = 2 is not
        eagle_drafter(random_head(dataclasses.replace(cfg, taps=())), tiny_lm(0, vocab=64, layers=2).module)
    with pytest.raises(IncompatibleDraftError, match="vocabulary 80 exceeds"):
        eagle_drafter(random_head(dataclasses.replace(cfg, vocab_size=80)), target.module)


def test_eagle_drafter_strings_and_memory_report(tmp_path):
    assert registry.parse("eagle:/some/dir").name == "/some/dir"
    target = tiny_lm(0, vocab=64, layers=3)
    head = random_head(head_config_for(target.module.config, draft_vocab_size=16, taps=(0, 1, 3)))
    save_eagle(head, tmp_path / "h")
    with pytest.raises(ConfigError, match="needs a head loader"):
        registry.resolve("eagle:" + str(tmp_path / "h"), target)
    resolved = registry.resolve("eagle:" + str(tmp_path / "h"), target, load_head=load_eagle)
    assert resolved.drafter.taps == (0, 1, 3)
    from specjax import report

    mem = report.memory_report(target, head, batch=2, length=64)
    assert mem["draft_param_bytes"] == sum(x.nbytes for x in jax.tree.leaves(nnx_state(head)))
    assert mem["draft_cache_bytes"] == 2 * 2 * 64 * 2 * 8 * 4 + 2 * 32 * 4  # k and v [1,B,S,K,H] + out [B,D]


def test_config_validation():
    with pytest.raises(ConversionError, match="draft_vocab_size"):
        Eagle3Config(dim=8, target_dim=8, mlp_dim=8, num_heads=2, num_kv_heads=1, head_dim=4, vocab_size=10,
                     draft_vocab_size=11, rope=RopeConfig(theta=1e4))


def test_the_built_in_head_is_in_the_package_small_and_fits_smollm2():
    """models/heads/smollm2-135m-instruct-eagle3: at most 25 MB, loadable by name, shaped for SmolLM2
    (width 576, vocabulary 49152, taps inside its 30 layers), with an injective draft vocabulary."""
    from specjax.models import BUILTIN_HEADS, head_path

    name = "smollm2-135m-instruct-eagle3"
    assert BUILTIN_HEADS[name] == "smollm2-135m-instruct"
    directory = head_path(name)
    size = sum(f.stat().st_size for f in directory.iterdir())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MB"
    head = load_eagle(name)
    cfg = head.config
    assert (cfg.dim, cfg.target_dim, cfg.vocab_size) == (576, 576, 49152)
    assert all(0 <= t <= 30 for t in cfg.taps_for(30))
    ids = np.asarray(head.target_ids.value)
    assert len(np.unique(ids)) == cfg.draft_vocab_size and ids.max() < 49152
    assert head_path("some/dir") == __import__("pathlib").Path("some/dir")


def test_a_chunked_prefill_decodes_what_one_prefill_pass_decodes():
    """The loop's prefill in chunks (`Decoder.prefill_chunk`, here 4 tokens for prompts of 10 and 7
    tokens: a partial last chunk, rows of different lengths) gives the target's cache and the taps
    the EAGLE-3 head prefills from: greedy and sampled rows decode the same tokens, with the same
    acceptance, as with one prefill pass."""
    target = tiny_lm(0, vocab=12, layers=3, scale=0.6)
    lm, params = LM.split(target.module)
    head = frequent_head(target.module, [list(range(12))], 0, draft_vocab=9, seed=2, scale=3.0)
    drafter, dparams = eagle_drafter(head, target.module)
    prompts = np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [7, 8, 9, 0, 1, 2, 3, 0, 0, 0]])
    batch = loop.Batch.make(prompts, [10, 7], max_new_tokens=20,
                            sampling=[SamplingConfig(temperature=0.0), SamplingConfig(temperature=1.0)],
                            key=jax.random.key(4))
    decs = [loop.Decoder(lm=lm, size=40, drafter=drafter, gamma=3, prefill_chunk=chunk) for chunk in (0, 4)]
    starts = [jax.jit(dec.start)(params, dparams, batch) for dec in decs]
    # the target's cache, and the head's, filled from the prefill's taps: equal up to float32 rounding
    # (a 4-row and a 10-row matrix product round apart by ~2e-5 relative on activations of this scale;
    # a misplaced chunk or tap is off by O(1))
    for name in ("cache", "draft"):
        for a, b in zip(jax.tree.leaves(getattr(starts[1], name)), jax.tree.leaves(getattr(starts[0], name))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4, err_msg=name)
    runs = [jax.jit(loop.generate, static_argnums=0)(dec, params, dparams, batch) for dec in decs]
    np.testing.assert_array_equal(np.asarray(runs[1].tokens), np.asarray(runs[0].tokens))
    np.testing.assert_array_equal(np.asarray(runs[1].stats.accepted), np.asarray(runs[0].stats.accepted))
    assert int(np.asarray(runs[0].stats.accepted).sum()) > 0
    with pytest.raises(Exception, match="prefill_chunk must be an integer >= 0"):
        loop.Decoder(lm=lm, size=40, prefill_chunk=-1)
