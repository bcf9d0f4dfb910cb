"""GGUF: dequantization against a reference written from the block layouts, tiny GGUF models
against transformers reading the same file, llama.cpp's permutation, and typed errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ggml_reference import dequant_reference, write_gguf
from gguf import GGMLQuantizationType as Q

from specjax.errors import CorruptFileError, UnsupportedGGUFTypeError
from specjax.models import load
from specjax.models.sources.gguf import GGUFCheckpoint, unpermute_qk

QUANTIZED = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]
ALL_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def _tiny_hf(arch: str):
    import transformers as tf

    torch.manual_seed(0)
    if arch == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=300, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=False, rope_theta=10000.0))
    else:
        # head_dim 256: GGUF does not store query_pre_attn_scalar; both readers then agree on 256
        model = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
            vocab_size=300, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=4,
            layer_types=["sliding_attention", "sliding_attention"], rope_theta=1_000_000.0))
    model = model.float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _write(tmp_path, arch, qtype, overrides=None):
    hf = _tiny_hf(arch)
    state = {k: v.numpy() for k, v in hf.state_dict().items() if "rotary" not in k}
    path = tmp_path / f"tiny-{arch}-{qtype.name}.gguf"
    written = write_gguf(path, arch, dict(hf.config.to_dict(), rope_theta=hf.config.rope_parameters["rope_theta"]
                                          if arch == "llama" else 1_000_000.0),
                         state, qtype=qtype, vocab=300, rng=np.random.default_rng(1), overrides=overrides)
    return path, written, hf


def _reference_values(raw, qtype):
    if qtype == Q.F32:
        return raw
    if qtype == Q.F16:
        return raw.astype(np.float32)
    if qtype == Q.BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return dequant_reference(qtype, raw)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, *QUANTIZED], ids=lambda q: q.name)
def test_dequantization_matches_block_layout_reference(tmp_path, qtype):
    path, written, _ = _write(tmp_path, "llama", qtype)
    ckpt = GGUFCheckpoint(path)
    raw, _ = written["blk.0.ffn_up.weight"]
    np.testing.assert_array_equal(ckpt.tensor("model.layers.0.mlp.up_proj.weight"), _reference_values(raw, qtype))
    raw_q, _ = written["blk.1.attn_q.weight"]
    want_q = unpermute_qk(_reference_values(raw_q, qtype), 4)
    np.testing.assert_array_equal(ckpt.tensor("model.layers.1.self_attn.q_proj.weight"), want_q)


def test_unpermute_inverts_llama_cpp_permutation():
    heads, head_dim, width = 3, 8, 5
    w = np.arange(heads * head_dim * width, dtype=np.float32).reshape(heads * head_dim, width)
    # llama.cpp: per head, rows (x0..x3, y0..y3) become (x0, y0, x1, y1, ...)
    permuted = w.reshape(heads, 2, head_dim // 2, width).swapaxes(1, 2).reshape(w.shape)
    assert permuted[1, 0] == w[head_dim // 2, 0]
    np.testing.assert_array_equal(unpermute_qk(permuted, heads), w)


@pytest.mark.parametrize("arch,qtype", [("llama", t) for t in ALL_TYPES] + [("gemma3", Q.F32), ("gemma3", Q.Q4_K),
                                                                           ("gemma3", Q.Q6_K)],
                         ids=lambda x: getattr(x, "name", x))
def test_tiny_gguf_matches_transformers(tmp_path, arch, qtype):
    from transformers import AutoModelForCausalLM

    path, _, _ = _write(tmp_path, arch, qtype)
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ours = load(path, progress=False)
    tokens = np.random.default_rng(2).integers(0, 300, size=(1, 11))
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).logits.numpy()
    import jax.numpy as jnp

    got, _ = ours.module(jnp.asarray(tokens), jnp.arange(11)[None], ours.module.init_cache(1, 16))
    err = np.abs(np.asarray(got) - want).max()
    assert err <= 1e-4 * max(1.0, np.abs(want).max()), f"{arch} {qtype.name}: max |diff| {err:.2e}"


def test_unsupported_gguf_type_names_tensor_and_type(tmp_path):
    path, _, _ = _write(tmp_path, "llama", Q.F32, overrides={"blk.1.ffn_up.weight": Q.IQ2_XXS})
    with pytest.raises(UnsupportedGGUFTypeError, match=r"blk\.1\.ffn_up\.weight.*IQ2_XXS") as err:
        load(path, progress=False)
    assert err.value.tensor == "blk.1.ffn_up.weight" and str(path) in str(err.value)


def test_truncated_gguf_names_the_file(tmp_path):
    path, _, _ = _write(tmp_path, "llama", Q.Q8_0)
    data = path.read_bytes()
    for cut in (len(data) - 5000, 1000, 12):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError, match=f"cut{cut}.gguf"):
            load(bad, progress=False)
