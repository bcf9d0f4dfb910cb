"""Test-side helpers for GGUF: a reference dequantizer written from the GGML block layouts, random
valid quantized blocks, and a writer that turns a small HF model into a GGUF file the way
llama.cpp's converter does (its own naming table, q/k row permutation, Gemma's +1 on norms).

Everything here is independent of specjax's GGUF code path, so comparing the two can fail.
"""

from __future__ import annotations

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q


def _f16(block: np.ndarray, at: int) -> np.float32:
    return np.float32(block[at:at + 2].copy().view(np.float16)[0])


def _scale_min_k4(j: int, s: np.ndarray) -> tuple[int, int]:
    """6-bit scale and min of sub-block j from the 12 packed bytes of a Q4_K/Q5_K block."""
    if j < 4:
        return int(s[j] & 63), int(s[j + 4] & 63)
    sc = (int(s[j + 4]) & 0xF) | ((int(s[j - 4]) >> 6) << 4)
    m = (int(s[j + 4]) >> 4) | ((int(s[j]) >> 6) << 4)
    return sc, m


def dequant_block(qtype: Q, b: np.ndarray) -> np.ndarray:
    """One block of raw bytes -> its float32 values, element by element from the format spec."""
    out = []
    if qtype == Q.Q8_0:
        d = _f16(b, 0)
        return d * b[2:34].view(np.int8).astype(np.float32)
    if qtype == Q.Q4_0:
        d = _f16(b, 0)
        qs = b[2:18]
        return np.array([d * ((int(qs[i]) & 0xF) - 8) for i in range(16)]
                        + [d * ((int(qs[i]) >> 4) - 8) for i in range(16)], np.float32)
    if qtype == Q.Q4_1:
        d, m = _f16(b, 0), _f16(b, 2)
        qs = b[4:20]
        return np.array([d * (int(qs[i]) & 0xF) + m for i in range(16)]
                        + [d * (int(qs[i]) >> 4) + m for i in range(16)], np.float32)
    if qtype in (Q.Q4_K, Q.Q5_K):
        d, dmin = _f16(b, 0), _f16(b, 2)
        scales = b[4:16]
        if qtype == Q.Q4_K:
            qh, qs = None, b[16:144]
        else:
            qh, qs = b[16:48], b[48:176]
        for chunk in range(4):  # 64 values: low nibbles (sub-block 2c), then high nibbles (2c+1)
            for half in range(2):
                j = 2 * chunk + half
                sc, m = _scale_min_k4(j, scales)
                for l in range(32):
                    byte = int(qs[32 * chunk + l])
                    q = (byte & 0xF) if half == 0 else (byte >> 4)
                    if qh is not None:
                        q += 16 * ((int(qh[l]) >> j) & 1)
                    out.append(d * sc * q - dmin * m)
        return np.array(out, np.float32)
    if qtype == Q.Q6_K:
        ql, qh, sc, d = b[0:128], b[128:192], b[192:208].view(np.int8), _f16(b, 208)
        y = np.zeros(256, np.float32)
        for n in range(2):
            L, H, S = ql[64 * n:64 * n + 64], qh[32 * n:32 * n + 32], sc[8 * n:8 * n + 8]
            for l in range(32):
                i = l // 16
                q1 = (int(L[l]) & 0xF) | (((int(H[l]) >> 0) & 3) << 4)
                q2 = (int(L[l + 32]) & 0xF) | (((int(H[l]) >> 2) & 3) << 4)
                q3 = (int(L[l]) >> 4) | (((int(H[l]) >> 4) & 3) << 4)
                q4 = (int(L[l + 32]) >> 4) | (((int(H[l]) >> 6) & 3) << 4)
                y[128 * n + l] = d * S[i] * (q1 - 32)
                y[128 * n + l + 32] = d * S[i + 2] * (q2 - 32)
                y[128 * n + l + 64] = d * S[i + 4] * (q3 - 32)
                y[128 * n + l + 96] = d * S[i + 6] * (q4 - 32)
        return y
    raise NotImplementedError(qtype)


def dequant_reference(qtype: Q, raw: np.ndarray) -> np.ndarray:
    """raw [rows, bytes] -> [rows, values]."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows = []
    for row in raw:
        rows.append(np.concatenate([dequant_block(qtype, row[i:i + size]) for i in range(0, row.size, size)]))
    return np.stack(rows)


def random_blocks(qtype: Q, rows: int, cols: int, rng: np.random.Generator, scale: float = 0.02) -> np.ndarray:
    """Random but valid raw blocks: random quants, with the f16 scale fields set to small values."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    nblocks = cols // block
    raw = rng.integers(0, 256, size=(rows, nblocks, size), dtype=np.uint8)

    def put_f16(offset, values):
        raw[:, :, offset:offset + 2] = values.astype(np.float16).view(np.uint8).reshape(rows, nblocks, 2)

    def small(lo, hi):
        return rng.uniform(lo, hi, size=(rows, nblocks))

    if qtype in (Q.Q8_0, Q.Q4_0):
        put_f16(0, small(0.2, 1.0) * scale * (8 if qtype == Q.Q4_0 else 1) / 8)
    elif qtype == Q.Q4_1:
        put_f16(0, small(0.2, 1.0) * scale / 4)
        put_f16(2, -small(0.2, 1.0) * scale)
    elif qtype in (Q.Q4_K, Q.Q5_K):
        put_f16(0, small(0.2, 1.0) * scale / (63 * 31))
        put_f16(2, small(0.2, 1.0) * scale / (63 * 2))
    elif qtype == Q.Q6_K:
        raw[:, :, 192:208] = rng.integers(-32, 32, size=(rows, nblocks, 16)).astype(np.int8).view(np.uint8)
        put_f16(208, small(0.2, 1.0) * scale / (32 * 32))
    return raw.reshape(rows, nblocks * size)


# -- writing a GGUF from a small HF model ---------------------------------------------------------

_LAYER_NAMES = {  # HF suffix -> llama.cpp name, Llama-style models
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's permutation of q/k rows (rotate-half -> interleaved pairs), per head."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, arch: str, hf_config: dict, state: dict, *, qtype: Q = Q.F32, vocab: int,
               rng: np.random.Generator | None = None, overrides: dict | None = None) -> dict:
    """Write `state` (HF names -> float32 arrays) as a GGUF of `arch` ("llama", "gemma3", "qwen2").

    2-D weights are stored as `qtype`: F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0 are quantized from the
    values; K-quants (Q4_K, Q5_K, Q6_K) and any other type get random valid blocks instead, since
    gguf cannot quantize them. `overrides` gives single tensors (GGUF name) another type.
    Returns the dict of raw tensors written (GGUF name -> (array, qtype)).
    """
    c = hf_config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.block_count", c["num_hidden_layers"])
    w.add_uint32(f"{arch}.context_length", 256)
    w.add_uint32(f"{arch}.embedding_length", c["hidden_size"])
    w.add_uint32(f"{arch}.feed_forward_length", c["intermediate_size"])
    w.add_uint32(f"{arch}.attention.head_count", c["num_attention_heads"])
    w.add_uint32(f"{arch}.attention.head_count_kv", c["num_key_value_heads"])
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c["rms_norm_eps"])
    w.add_float32(f"{arch}.rope.freq_base", c.get("rope_theta", 10000.0))
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    w.add_uint32(f"{arch}.attention.key_length", head_dim)
    w.add_uint32(f"{arch}.attention.value_length", head_dim)
    if arch == "gemma3":
        w.add_uint32(f"{arch}.attention.sliding_window", c["sliding_window"])
    tokens = [f"<t{i}>" for i in range(vocab)]
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", [1] * vocab)
    w.add_array("tokenizer.ggml.merges", [])
    w.add_uint32("tokenizer.ggml.bos_token_id", 0)
    w.add_uint32("tokenizer.ggml.eos_token_id", 1)

    written = {}
    for key, value in state.items():
        value = np.asarray(value, np.float32)
        if key == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif key == "model.norm.weight":
            name = "output_norm.weight"
        elif key == "lm_head.weight":
            name = "output.weight"
        else:
            parts = key.split(".")
            layer, suffix = parts[2], ".".join(parts[3:])
            if arch == "gemma3":
                table = dict(_LAYER_NAMES, **{
                    "post_attention_layernorm.weight": "post_attention_norm.weight",
                    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
                    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
                })
            else:
                table = dict(_LAYER_NAMES, **{"post_attention_layernorm.weight": "ffn_norm.weight"})
            name = f"blk.{layer}.{table[suffix]}"
        if arch == "llama" and name.endswith("attn_q.weight"):
            value = _permute(value, c["num_attention_heads"])
        if arch == "llama" and name.endswith("attn_k.weight"):
            value = _permute(value, c["num_key_value_heads"])
        if arch == "gemma3" and name.endswith("norm.weight"):
            value = value + 1.0
        tensor_type = (overrides or {}).get(name, qtype)
        if value.ndim == 2 and tensor_type != Q.F32:
            if tensor_type == Q.F16:
                raw = value.astype(np.float16)
            elif tensor_type in (Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1):
                raw = gguf.quants.quantize(value, tensor_type)
            else:
                raw = random_blocks(tensor_type, value.shape[0], value.shape[1], rng)
            w.add_tensor(name, raw, raw_dtype=tensor_type)
            written[name] = (raw, tensor_type)
        else:
            w.add_tensor(name, value)
            written[name] = (value, Q.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written
