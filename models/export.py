"""Write a Llama-family model back as a Hugging Face directory (config.json, model.safetensors and the
tokenizer), loadable by transformers' `AutoModelForCausalLM.from_pretrained` and by `specjax.models.load`.

Used for distilled draft models (`specjax distill` with `kind: draft_model`), so that they can run
side by side in transformers' assisted generation. The weight layout is the inverse of the family's
`WeightSpec`s: every spec's `split` is a pure rearrangement (reshape / transpose) of the HF array, so
applying it to an array of flat indices tells, for each of our entries, which HF entry it came from;
scattering our values through those indices rebuilds the HF tensor exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from specjax.errors import ConversionError

from .convert import LoadedModel, storage_dtype
from .family import rope_to_hf
from .llama import FAMILY as LLAMA


def config_to_hf(cfg, tokenizer=None) -> dict:
    """TransformerConfig of a Llama-family model -> transformers' LlamaConfig dict."""
    if cfg.family != "llama":
        raise ConversionError(f"HF export supports the llama family only, not {cfg.family!r}")
    if cfg.sliding_window is not None:
        raise ConversionError("HF export: sliding-window Llama models (Mistral) are not supported")
    hf = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": cfg.dim, "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.norm_eps, "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.qkv_bias, "mlp_bias": False, **rope_to_hf(cfg.rope, "HF export"),
    }
    if cfg.max_context is not None:
        hf["max_position_embeddings"] = cfg.max_context
    if tokenizer is not None:
        if tokenizer.bos_id is not None:
            hf["bos_token_id"] = tokenizer.bos_id
        if tokenizer.eos_ids:
            hf["eos_token_id"] = list(tokenizer.eos_ids) if len(tokenizer.eos_ids) > 1 else tokenizer.eos_ids[0]
        if tokenizer.pad_id is not None:
            hf["pad_token_id"] = tokenizer.pad_id
    return hf


def hf_state(model: LoadedModel) -> dict[str, np.ndarray]:
    """Every HF tensor of `model` (float32), keyed by its HF name."""
    from flax import nnx

    cfg = model.config
    pure = nnx.to_pure_dict(nnx.state(model.module, nnx.Param))
    out: dict[str, np.ndarray] = {}
    for spec in LLAMA.weight_specs(cfg):
        size = int(np.prod(spec.shape))
        index_parts = spec.split(np.arange(size).reshape(spec.shape))
        layers = range(cfg.num_layers) if spec.per_layer else [None]
        for i in layers:
            flat = np.zeros((size,), np.float32)
            for path, index in zip(spec.targets, index_parts):
                node = pure
                for name in path:
                    node = node[name]
                ours = np.asarray(node, np.float32)
                ours = ours[i] if i is not None else ours
                flat[np.asarray(index).reshape(-1)] = ours.reshape(-1)
            out[spec.key.format(i=i) if i is not None else spec.key] = flat.reshape(spec.shape)
    return out


def save_hf(model: LoadedModel, path, *, dtype="float32") -> Path:
    """Write `model` as an HF directory under `path` (weights in `dtype`: float32, float16, bfloat16)."""
    from safetensors.numpy import save_file

    store = storage_dtype(dtype, "save_hf")
    config = config_to_hf(model.config, model.tokenizer)
    config["torch_dtype"] = str(jnp.dtype(dtype))
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v.astype(store)) for k, v in hf_state(model).items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tok = model.tokenizer
    if tok is not None and hasattr(tok.backend, "save"):
        tok.backend.save(str(directory / "tokenizer.json"))
        name = tok.token
        tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
        if tok.bos_id is not None:
            tcfg["bos_token"] = name(tok.bos_id)
        if tok.eos_ids:
            tcfg["eos_token"] = name(tok.eos_ids[0])
        if tok.pad_id is not None:
            tcfg["pad_token"] = name(tok.pad_id)
        if tok.chat_template:
            tcfg["chat_template"] = tok.chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2) + "\n")
    return directory
