"""GPT-2: learned absolute positions, LayerNorm with bias, fused qkv, biases everywhere, tied head.

HF stores GPT-2's projections as `Conv1D`, whose weight is [in, out] (the transpose of nn.Linear),
and q, k, v fused in one [D, 3D] matrix.
"""

from __future__ import annotations

import numpy as np

from specjax.errors import ConversionError

from .family import Family, WeightSpec, require, same
from .transformer import TransformerConfig


def config_from_hf(hf: dict) -> TransformerConfig:
    D = require(hf, "n_embd", "gpt2")
    N = require(hf, "n_head", "gpt2")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
        raise ConversionError(f"gpt2: activation_function {act!r} is not supported")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise ConversionError("gpt2: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
    scale = (D // N) ** -0.5 if hf.get("scale_attn_weights", True) else 1.0
    return TransformerConfig(
        family="gpt2",
        vocab_size=require(hf, "vocab_size", "gpt2"),
        dim=D,
        mlp_dim=hf.get("n_inner") or 4 * D,
        num_layers=require(hf, "n_layer", "gpt2"),
        num_heads=N,
        num_kv_heads=N,
        head_dim=D // N,
        norm="layer",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        mlp="plain",
        activation="gelu" if act == "gelu" else "gelu_tanh",
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        position="learned",
        max_positions=require(hf, "n_positions", "gpt2"),
        attn_scale=scale,
        tie_embeddings=True,
    )


def weight_specs(cfg: TransformerConfig) -> list[WeightSpec]:
    D, F, N, H = cfg.dim, cfg.mlp_dim, cfg.num_heads, cfg.head_dim
    h = "transformer.h.{i}"

    def qkv_weight(a: np.ndarray):  # [D, 3D] -> three [D, N, H]
        return tuple(part.reshape(D, N, H) for part in np.split(a, 3, axis=1))

    def qkv_bias(a: np.ndarray):
        return tuple(part.reshape(N, H) for part in np.split(a, 3))

    def norm(name, target):
        return [
            WeightSpec(f"{name}.weight", (D,), ((*target, "scale"),), same, per_layer="{i}" in name),
            WeightSpec(f"{name}.bias", (D,), ((*target, "bias"),), same, per_layer="{i}" in name),
        ]

    blocks = ("blocks",)
    return [
        WeightSpec("transformer.wte.weight", (cfg.vocab_size, D), (("embed",),), same, per_layer=False),
        WeightSpec("transformer.wpe.weight", (cfg.max_positions, D), (("pos_embed",),), same, per_layer=False),
        *norm("transformer.ln_f", ("final_norm",)),
        *norm(f"{h}.ln_1", (*blocks, "attn_norm")),
        *norm(f"{h}.ln_2", (*blocks, "mlp_norm")),
        WeightSpec(f"{h}.attn.c_attn.weight", (D, 3 * D),
                   ((*blocks, "q"), (*blocks, "k"), (*blocks, "v")), qkv_weight),
        WeightSpec(f"{h}.attn.c_attn.bias", (3 * D,),
                   ((*blocks, "q_bias"), (*blocks, "k_bias"), (*blocks, "v_bias")), qkv_bias),
        WeightSpec(f"{h}.attn.c_proj.weight", (D, D), ((*blocks, "o"),), lambda a: (a.reshape(N, H, D),)),
        WeightSpec(f"{h}.attn.c_proj.bias", (D,), ((*blocks, "o_bias"),), same),
        WeightSpec(f"{h}.mlp.c_fc.weight", (D, F), ((*blocks, "up"),), same),
        WeightSpec(f"{h}.mlp.c_fc.bias", (F,), ((*blocks, "up_bias"),), same),
        WeightSpec(f"{h}.mlp.c_proj.weight", (F, D), ((*blocks, "down"),), same),
        WeightSpec(f"{h}.mlp.c_proj.bias", (D,), ((*blocks, "down_bias"),), same),
    ]


FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    config_from_hf=config_from_hf,
    weight_specs=weight_specs,
    # causal-mask buffers of old checkpoints
    ignored=(r"transformer\.h\.\d+\.attn\.(masked_)?bias",),
)
