"""Gemma 3 text decoder.

What sets it apart from Llama: RMSNorm scales by (1 + w); four norms per block (before and after
attention, before and after the MLP); RMSNorm on q and k per head; embeddings multiplied by
sqrt(D); attention scaled by query_pre_attn_scalar ** -0.5; a gated tanh-GELU MLP; and layers that
alternate between sliding-window attention (local RoPE base, 10k) and global attention (global RoPE
base, 1M, possibly linearly scaled), one global layer in every `sliding_window_pattern`.
The head is tied to the embedding.
"""

from __future__ import annotations

import math

from specjax.errors import ConversionError

from .family import ROTARY_BUFFERS, Family, decoder_specs, require, rope_from_hf
from .transformer import TransformerConfig


def _layer_kinds(hf: dict) -> tuple[str, ...]:
    L = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if types:
        return tuple("local" if t == "sliding_attention" else "global" for t in types)
    pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
    return tuple("global" if (i + 1) % pattern == 0 else "local" for i in range(L))


def config_from_hf(hf: dict) -> TransformerConfig:
    if "text_config" in hf:  # a multimodal Gemma3Config: the decoder is its text part
        hf = dict(hf["text_config"], tie_word_embeddings=hf.get("tie_word_embeddings", True))
    D = require(hf, "hidden_size", "gemma3")
    N = require(hf, "num_attention_heads", "gemma3")
    H = hf.get("head_dim") or 256
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ConversionError(f"gemma3: hidden_activation {act!r} is not supported (expected 'gelu_pytorch_tanh')")
    rope_params = hf.get("rope_parameters") or {}
    if "full_attention" in rope_params:  # transformers v5: one entry per layer kind
        rope = rope_from_hf(hf, params=rope_params["full_attention"])
        rope_local = rope_from_hf(hf, params=rope_params.get("sliding_attention", {"rope_theta": 10000.0}))
    else:
        rope = rope_from_hf(hf, theta_default=1_000_000.0)
        rope_local = rope_from_hf(hf, params={"rope_theta": hf.get("rope_local_base_freq", 10000.0)})
    return TransformerConfig(
        max_context=hf.get("max_position_embeddings"),
        family="gemma3",
        vocab_size=require(hf, "vocab_size", "gemma3"),
        dim=D,
        mlp_dim=require(hf, "intermediate_size", "gemma3"),
        num_layers=require(hf, "num_hidden_layers", "gemma3"),
        num_heads=N,
        num_kv_heads=hf.get("num_key_value_heads") or N,
        head_dim=H,
        norm="rms_offset",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        activation="gelu_tanh",
        qkv_bias=bool(hf.get("attention_bias", False)),
        out_bias=bool(hf.get("attention_bias", False)),
        qk_norm=True,
        sandwich_norm=True,
        rope=rope,
        rope_local=rope_local,
        sliding_window=hf.get("sliding_window"),
        layer_kinds=_layer_kinds(hf),
        embed_scale=math.sqrt(D),
        attn_scale=float(hf.get("query_pre_attn_scalar") or H) ** -0.5,
        attn_softcap=hf.get("attn_logit_softcapping"),
        final_softcap=hf.get("final_logit_softcapping"),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def weight_specs(cfg: TransformerConfig):
    return decoder_specs(cfg, gemma_norms=True)


FAMILY = Family(
    name="gemma3",
    model_types=("gemma3_text", "gemma3"),
    config_from_hf=config_from_hf,
    weight_specs=weight_specs,
    ignored=ROTARY_BUFFERS,
)
