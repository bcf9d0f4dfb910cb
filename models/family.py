"""What a model family tells the converter: how to read an HF config, and where each HF weight goes.

A family maps every HF weight name to a place in the stacked NNX state of `Transformer` and to a
numpy transform from the HF layout (`nn.Linear` is [out, in]) to ours (einsum-ready, e.g. q as
[D, N, H]). The converter uses the specs to find missing, unexpected and mis-shaped weights.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np

from specjax.errors import ConversionError

from .transformer import RopeConfig, TransformerConfig

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One HF tensor: its key (with "{i}" for the layer index), HF shape, and where it goes.

    `split` turns the HF array into one array per target path (several for GPT-2's fused qkv).
    Per-layer specs are stacked over layers into the leading L axis of their targets.
    """

    key: str
    shape: tuple[int, ...]
    targets: tuple[Path, ...]
    split: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    per_layer: bool = True


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # HF config "model_type" values this family reads
    config_from_hf: Callable[[dict], TransformerConfig]
    weight_specs: Callable[[TransformerConfig], list[WeightSpec]]
    ignored: tuple[str, ...] = ()  # regexes of HF keys that carry nothing (buffers, tied duplicates)

    def is_ignored(self, key: str, cfg: TransformerConfig) -> bool:
        if cfg.tie_embeddings and key == "lm_head.weight":
            return True  # in-memory state dicts of tied models repeat the embedding here
        return any(re.fullmatch(p, key) for p in self.ignored)


def same(a: np.ndarray) -> tuple[np.ndarray]:
    return (a,)


def transpose(a: np.ndarray) -> tuple[np.ndarray]:
    return (a.T,)


def linear_to_heads(heads: int, head_dim: int):
    """nn.Linear weight [heads*H, D] -> [D, heads, H]."""
    return lambda a: (a.reshape(heads, head_dim, -1).transpose(2, 0, 1),)


def bias_to_heads(heads: int, head_dim: int):
    return lambda a: (a.reshape(heads, head_dim),)


def linear_from_heads(heads: int, head_dim: int):
    """nn.Linear weight [D, heads*H] -> [heads, H, D]."""
    return lambda a: (a.reshape(-1, heads, head_dim).transpose(1, 2, 0),)


def require(hf: dict, key: str, family: str):
    if key not in hf or hf[key] is None:
        raise ConversionError(f"{family} config is missing {key!r}")
    return hf[key]


def rope_from_hf(hf: dict, theta_default: float = 10000.0, params: dict | None = None) -> RopeConfig:
    """RopeConfig from transformers' `rope_parameters` (v5) or the older `rope_theta`/`rope_scaling`."""
    params = dict(params if params is not None else (hf.get("rope_parameters") or hf.get("rope_scaling") or {}))
    theta = params.get("rope_theta", hf.get("rope_theta", theta_default))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind == "default":
        return RopeConfig(theta=float(theta))
    if kind == "linear":
        return RopeConfig(theta=float(theta), kind="linear", factor=float(params["factor"]))
    if kind == "llama3":
        return RopeConfig(
            theta=float(theta), kind="llama3", factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]), high_freq_factor=float(params["high_freq_factor"]),
            original_max_positions=int(params["original_max_position_embeddings"]),
        )
    if kind == "factors":
        return RopeConfig(theta=float(theta), kind="factors", freq_factors=tuple(params["freq_factors"]))
    raise ConversionError(f"RoPE scaling type {kind!r} is not supported (supported: default, linear, llama3)")


def rope_to_hf(rope: RopeConfig | None, what: str = "export") -> dict:
    """The config.json keys (rope_theta, rope_scaling) of a RopeConfig (the inverse of rope_from_hf)."""
    rope = rope or RopeConfig(theta=10000.0)
    hf: dict = {"rope_theta": rope.theta}
    if rope.kind == "linear":
        hf["rope_scaling"] = {"rope_type": "linear", "factor": rope.factor}
    elif rope.kind == "llama3":
        hf["rope_scaling"] = {"rope_type": "llama3", "factor": rope.factor, "low_freq_factor": rope.low_freq_factor,
                              "high_freq_factor": rope.high_freq_factor,
                              "original_max_position_embeddings": rope.original_max_positions}
    elif rope.kind != "default":
        raise ConversionError(f"{what}: RoPE kind {rope.kind!r} has no config.json form")
    return hf


def decoder_specs(cfg: TransformerConfig, *, gemma_norms: bool = False) -> list[WeightSpec]:
    """Specs for the Llama-style HF naming shared by llama, mistral, qwen2/3 and gemma3."""
    D, F, N, K, H = cfg.dim, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    attn = "model.layers.{i}.self_attn"
    mlp = "model.layers.{i}.mlp"
    specs = [
        WeightSpec("model.embed_tokens.weight", (cfg.vocab_size, D), (("embed",),), same, per_layer=False),
        WeightSpec("model.norm.weight", (D,), (("final_norm", "scale"),), same, per_layer=False),
        WeightSpec(f"{attn}.q_proj.weight", (N * H, D), (("blocks", "q"),), linear_to_heads(N, H)),
        WeightSpec(f"{attn}.k_proj.weight", (K * H, D), (("blocks", "k"),), linear_to_heads(K, H)),
        WeightSpec(f"{attn}.v_proj.weight", (K * H, D), (("blocks", "v"),), linear_to_heads(K, H)),
        WeightSpec(f"{attn}.o_proj.weight", (D, N * H), (("blocks", "o"),), linear_from_heads(N, H)),
        WeightSpec(f"{mlp}.gate_proj.weight", (F, D), (("blocks", "gate"),), transpose),
        WeightSpec(f"{mlp}.up_proj.weight", (F, D), (("blocks", "up"),), transpose),
        WeightSpec(f"{mlp}.down_proj.weight", (D, F), (("blocks", "down"),), transpose),
        WeightSpec("model.layers.{i}.input_layernorm.weight", (D,), (("blocks", "attn_norm", "scale"),), same),
    ]
    if gemma_norms:
        specs += [
            WeightSpec("model.layers.{i}.post_attention_layernorm.weight", (D,),
                       (("blocks", "post_attn_norm", "scale"),), same),
            WeightSpec("model.layers.{i}.pre_feedforward_layernorm.weight", (D,),
                       (("blocks", "mlp_norm", "scale"),), same),
            WeightSpec("model.layers.{i}.post_feedforward_layernorm.weight", (D,),
                       (("blocks", "post_mlp_norm", "scale"),), same),
        ]
    else:
        specs.append(WeightSpec("model.layers.{i}.post_attention_layernorm.weight", (D,),
                                (("blocks", "mlp_norm", "scale"),), same))
    if cfg.qkv_bias:
        specs += [
            WeightSpec(f"{attn}.q_proj.bias", (N * H,), (("blocks", "q_bias"),), bias_to_heads(N, H)),
            WeightSpec(f"{attn}.k_proj.bias", (K * H,), (("blocks", "k_bias"),), bias_to_heads(K, H)),
            WeightSpec(f"{attn}.v_proj.bias", (K * H,), (("blocks", "v_bias"),), bias_to_heads(K, H)),
        ]
    if cfg.out_bias:
        specs.append(WeightSpec(f"{attn}.o_proj.bias", (D,), (("blocks", "o_bias"),), same))
    if cfg.qk_norm:
        specs += [
            WeightSpec(f"{attn}.q_norm.weight", (H,), (("blocks", "q_norm", "scale"),), same),
            WeightSpec(f"{attn}.k_norm.weight", (H,), (("blocks", "k_norm", "scale"),), same),
        ]
    if not cfg.tie_embeddings:
        specs.append(WeightSpec("lm_head.weight", (cfg.vocab_size, D), (("lm_head",),), transpose, per_layer=False))
    return specs


ROTARY_BUFFERS = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"model\.rotary_emb\.inv_freq")
