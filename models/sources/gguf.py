"""A GGUF file (llama.cpp's format): its metadata becomes an HF config dict, its tensors HF-named
float32 arrays, and its vocabulary a tokenizer.

The `gguf` package parses the file and dequantizes blocks with numpy. On top of it this module
 - builds an HF-style config dict from the GGUF metadata,
 - renames llama.cpp tensors (`blk.3.attn_q.weight`) to HF keys (`model.layers.3.self_attn.q_proj.weight`),
 - undoes the row permutation llama.cpp applies to q and k of Llama-architecture models (it
   reorders each head from HF's rotate-half layout to interleaved pairs),
 - undoes the +1 llama.cpp adds to Gemma's (1 + w) RMSNorm weights,
 - transposes GPT-2's projections back to HF's Conv1D [in, out] layout,
 - builds the tokenizer from the `tokenizer.ggml.*` metadata.
"""

from __future__ import annotations

import os
import re

import numpy as np

from specjax.errors import (
    ConversionError,
    CorruptFileError,
    UnknownArchitectureError,
    UnsupportedGGUFTypeError,
)

from ..tokenizer import Tokenizer

try:  # the runtime dependency; imported lazily by callers that never touch GGUF
    import gguf
except ImportError:  # pragma: no cover - gguf is a declared dependency
    gguf = None

SUPPORTED_TYPES = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)

# llama.cpp tensor name -> HF key, for the Llama-style naming (llama, qwen2, qwen3, gemma3).
_DECODER_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_output.bias": "self_attn.o_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_FFN_NORM = {"default": "post_attention_layernorm.weight", "gemma3": "pre_feedforward_layernorm.weight"}
_GEMMA_EXTRA = {
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}
_GPT2_NAMES = {  # value: (HF key, transpose?)
    "token_embd.weight": ("transformer.wte.weight", False),
    "position_embd.weight": ("transformer.wpe.weight", False),
    "output_norm.weight": ("transformer.ln_f.weight", False),
    "output_norm.bias": ("transformer.ln_f.bias", False),
    "output.weight": ("lm_head.weight", False),
    "attn_norm.weight": ("ln_1.weight", False),
    "attn_norm.bias": ("ln_1.bias", False),
    "attn_qkv.weight": ("attn.c_attn.weight", True),
    "attn_qkv.bias": ("attn.c_attn.bias", False),
    "attn_output.weight": ("attn.c_proj.weight", True),
    "attn_output.bias": ("attn.c_proj.bias", False),
    "ffn_norm.weight": ("ln_2.weight", False),
    "ffn_norm.bias": ("ln_2.bias", False),
    "ffn_up.weight": ("mlp.c_fc.weight", True),
    "ffn_up.bias": ("mlp.c_fc.bias", False),
    "ffn_down.weight": ("mlp.c_proj.weight", True),
    "ffn_down.bias": ("mlp.c_proj.bias", False),
}
_ARCHES = ("llama", "qwen2", "qwen3", "gemma3", "gpt2")
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def unpermute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """Invert llama.cpp's q/k permutation: per head, interleaved (x0, y0, x1, y1, ...) rows back to
    HF's rotate-half order (x0, x1, ..., y0, y1, ...)."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFCheckpoint:
    """A GGUF file seen as HF-named float32 tensors plus an HF-style config dict."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.origin = self.path
        if not os.path.isfile(self.path):
            raise CorruptFileError(self.path, "no such file")
        try:
            self.reader = gguf.GGUFReader(self.path)
        except Exception as err:  # the reader raises ValueError/IndexError/struct errors on bad files
            raise CorruptFileError(self.path, f"not a readable GGUF file ({type(err).__name__}: {err})") from err
        self.arch = self.field("general.architecture")
        if self.arch not in _ARCHES:
            raise UnknownArchitectureError(
                f"GGUF architecture {self.arch!r} in {self.path} is not supported (supported: {', '.join(_ARCHES)})"
            )
        self._tensors = {}
        for tensor in self.reader.tensors:
            self._tensors[self._hf_name(tensor.name)] = tensor
        self.config = self._hf_config()

    # -- metadata -----------------------------------------------------------------------------
    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    def _arch_field(self, key: str, default=None):
        return self.field(f"{self.arch}.{key}", default)

    def _hf_config(self) -> dict:
        a = self._arch_field
        embed = self._tensors.get("model.embed_tokens.weight") or self._tensors.get("transformer.wte.weight")
        if embed is None:
            raise ConversionError(f"GGUF file {self.path} has no token_embd.weight")
        vocab = int(embed.shape[-1])
        heads = a("attention.head_count")
        if self.arch == "gpt2":
            return {
                "model_type": "gpt2", "vocab_size": vocab, "n_embd": a("embedding_length"), "n_head": heads,
                "n_layer": a("block_count"), "n_positions": a("context_length"), "n_inner": a("feed_forward_length"),
                "layer_norm_epsilon": a("attention.layer_norm_epsilon", 1e-5),
                "activation_function": "gelu_new",
            }
        hidden = a("embedding_length")
        hf = {
            "model_type": {"gemma3": "gemma3_text"}.get(self.arch, self.arch),
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": a("feed_forward_length"),
            "num_hidden_layers": a("block_count"),
            "num_attention_heads": heads,
            "num_key_value_heads": a("attention.head_count_kv", heads),
            "head_dim": a("attention.key_length", hidden // heads),
            "rms_norm_eps": a("attention.layer_norm_rms_epsilon", 1e-6),
            "max_position_embeddings": a("context_length"),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
        }
        rope = {"rope_type": "default", "rope_theta": float(a("rope.freq_base", 10000.0))}
        scaling = a("rope.scaling.type")
        if scaling == "linear":
            rope = dict(rope, rope_type="linear", factor=float(a("rope.scaling.factor")))
        elif scaling not in (None, "none"):
            raise ConversionError(f"GGUF {self.path}: RoPE scaling {scaling!r} is not supported")
        if self.arch == "gemma3":
            hf["sliding_window"] = a("attention.sliding_window")
            # llama.cpp hard-codes one global layer in six for Gemma 3; the file does not say.
            hf["sliding_window_pattern"] = 6
            hf["query_pre_attn_scalar"] = hf["head_dim"]
            rope = dict(rope, rope_theta=float(a("rope.freq_base", 1_000_000.0)))
            hf["rope_parameters"] = {"full_attention": rope, "sliding_attention": {"rope_theta": 10000.0}}
        else:
            hf["rope_parameters"] = rope
        if "rope_freqs.weight" in self._tensors:
            # Llama 3.1-style scaling, stored by llama.cpp as one divisor per frequency.
            factors = self.tensor("rope_freqs.weight").astype(np.float32)
            hf["rope_parameters"] = dict(rope, rope_type="factors", freq_factors=tuple(float(x) for x in factors))
        if self.arch == "qwen2":
            hf["use_sliding_window"] = False
        return hf

    # -- tensors --------------------------------------------------------------------------------
    def _hf_name(self, name: str) -> str:
        if self.arch == "gpt2":
            m = _BLOCK.fullmatch(name)
            if m and m.group(2) in _GPT2_NAMES:
                return f"transformer.h.{m.group(1)}.{_GPT2_NAMES[m.group(2)][0]}"
            if name in _GPT2_NAMES:
                return _GPT2_NAMES[name][0]
            return name
        if name in _DECODER_NAMES:
            return _DECODER_NAMES[name]
        m = _BLOCK.fullmatch(name)
        if m:
            layer, rest = m.groups()
            if rest == "ffn_norm.weight":
                return f"model.layers.{layer}.{_FFN_NORM['gemma3' if self.arch == 'gemma3' else 'default']}"
            if rest in _DECODER_NAMES:
                return f"model.layers.{layer}.{_DECODER_NAMES[rest]}"
            if self.arch == "gemma3" and rest in _GEMMA_EXTRA:
                return f"model.layers.{layer}.{_GEMMA_EXTRA[rest]}"
        return name  # unknown: reported by the converter as an unexpected weight

    def keys(self) -> list[str]:
        return [k for k in self._tensors if k != "rope_freqs.weight"]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(int(d) for d in reversed(self._tensors[key].shape))

    def tensor(self, key: str) -> np.ndarray:
        t = self._tensors[key]
        qtype = t.tensor_type
        if qtype.name not in SUPPORTED_TYPES:
            raise UnsupportedGGUFTypeError(t.name, qtype.name, self.path, list(SUPPORTED_TYPES))
        try:
            data = gguf.quants.dequantize(t.data, qtype)
        except Exception as err:
            raise CorruptFileError(self.path, f"tensor {t.name!r} could not be read ({err})") from err
        shape = tuple(int(d) for d in reversed(t.shape))
        if data.size != int(np.prod(shape)):
            raise CorruptFileError(self.path, f"tensor {t.name!r} holds {data.size} values, expected {shape}")
        w = np.asarray(data, np.float32).reshape(shape)
        return self._undo_llama_cpp(key, w)

    def _undo_llama_cpp(self, key: str, w: np.ndarray) -> np.ndarray:
        hf = self.config
        if self.arch == "llama":
            if key.endswith("self_attn.q_proj.weight"):
                return unpermute_qk(w, hf["num_attention_heads"])
            if key.endswith("self_attn.k_proj.weight"):
                return unpermute_qk(w, hf["num_key_value_heads"])
        if self.arch == "gemma3" and key.endswith("norm.weight"):
            return w - 1.0
        if self.arch == "gpt2":
            m = _BLOCK.fullmatch(self._tensors[key].name)
            if m and _GPT2_NAMES.get(m.group(2), ("", False))[1]:
                return np.ascontiguousarray(w.T)
        return w

    # -- tokenizer ------------------------------------------------------------------------------
    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_gguf(self.field)
