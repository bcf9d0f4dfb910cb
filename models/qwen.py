"""Qwen family: Qwen2 / Qwen2.5 (biases on q, k, v) and Qwen3 (RMSNorm on q and k per head).

Otherwise Llama-shaped: pre-norm RMSNorm, gated SiLU MLP, rotary positions, grouped-query attention.
Qwen2's optional sliding window is off in every released checkpoint (`use_sliding_window: false`);
a config that turns it on is refused rather than run subtly wrong.
"""

from __future__ import annotations

from specjax.errors import ConversionError

from .family import ROTARY_BUFFERS, Family, decoder_specs, require, rope_from_hf
from .transformer import TransformerConfig


def config_from_hf(hf: dict) -> TransformerConfig:
    model_type = hf.get("model_type", "qwen2")
    D = require(hf, "hidden_size", model_type)
    N = require(hf, "num_attention_heads", model_type)
    K = hf.get("num_key_value_heads") or N
    qwen3 = model_type == "qwen3"
    H = (hf.get("head_dim") or D // N) if qwen3 else D // N
    if hf.get("use_sliding_window"):
        raise ConversionError(f"{model_type}: use_sliding_window=True is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{model_type}: hidden_act {hf['hidden_act']!r} is not supported (expected 'silu')")
    return TransformerConfig(
        max_context=hf.get("max_position_embeddings"),
        family=model_type,
        vocab_size=require(hf, "vocab_size", model_type),
        dim=D,
        mlp_dim=require(hf, "intermediate_size", model_type),
        num_layers=require(hf, "num_hidden_layers", model_type),
        num_heads=N,
        num_kv_heads=K,
        head_dim=H,
        norm="rms",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        activation="silu",
        qkv_bias=bool(hf.get("attention_bias", False)) if qwen3 else True,
        out_bias=bool(hf.get("attention_bias", False)) if qwen3 else False,
        qk_norm=qwen3,
        rope=rope_from_hf(hf),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def weight_specs(cfg: TransformerConfig):
    return decoder_specs(cfg)


FAMILY = Family(
    name="qwen",
    model_types=("qwen2", "qwen3"),
    config_from_hf=config_from_hf,
    weight_specs=weight_specs,
    ignored=ROTARY_BUFFERS,
)
