"""Llama family: SmolLM2, Llama 2 / 3.x (with Llama 3 RoPE scaling), TinyLlama, Mistral-style GQA.

Pre-norm RMSNorm blocks, gated SiLU MLP, rotary positions, grouped-query attention without biases
(Llama's `attention_bias` and `mlp_bias` flags are honoured). Mistral's `sliding_window`, when set,
applies to every layer.
"""

from __future__ import annotations

from specjax.errors import ConversionError

from .family import ROTARY_BUFFERS, Family, decoder_specs, require, rope_from_hf
from .transformer import TransformerConfig


def config_from_hf(hf: dict) -> TransformerConfig:
    D = require(hf, "hidden_size", "llama")
    N = require(hf, "num_attention_heads", "llama")
    K = hf.get("num_key_value_heads") or N
    H = hf.get("head_dim") or D // N
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConversionError(f"llama: hidden_act {act!r} is not supported (expected 'silu')")
    window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
    return TransformerConfig(
        max_context=hf.get("max_position_embeddings"),
        family="llama",
        vocab_size=require(hf, "vocab_size", "llama"),
        dim=D,
        mlp_dim=require(hf, "intermediate_size", "llama"),
        num_layers=require(hf, "num_hidden_layers", "llama"),
        num_heads=N,
        num_kv_heads=K,
        head_dim=H,
        norm="rms",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        activation="silu",
        qkv_bias=bool(hf.get("attention_bias", False)),
        out_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=False,
        rope=rope_from_hf(hf),
        sliding_window=window,
        layer_kinds=("local",) * hf["num_hidden_layers"] if window else (),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def weight_specs(cfg: TransformerConfig):
    return decoder_specs(cfg)


FAMILY = Family(
    name="llama",
    model_types=("llama", "mistral"),
    config_from_hf=config_from_hf,
    weight_specs=weight_specs,
    ignored=ROTARY_BUFFERS,
)
