"""The EAGLE-3 draft head (Li et al. 2025) as a Flax NNX module, and its community checkpoint layout.

Axes: B batch, T tokens in this call, S cache slots, n tapped target layers, E the target's width
(D_target), D the head's width, N query heads, K kv heads, H head dim, F MLP width, V the target's
vocabulary, Vd the draft vocabulary.

The head reads the target's hidden states at n = 3 layers (the inputs of layers 2, L // 2 and L - 3 by
default, low to high), concatenates them and projects 3E -> D (`fc`). Its one decoder layer takes,
at position t, the fused features f_t of the target at t and the embedding of the token *after* t
(x_{t+1}, the target's own token embedding); it predicts x_{t+2}:

    e = embed_norm(embedding(x_{t+1}))                      # input_layernorm
    h = hidden_norm(f_t)
    r = f_t  (or h when norm_before_residual)
    a = r + o_proj(attention(q, k, v of concat[e, h]))     # 2D wide q/k/v projections, RoPE at t
    out = a + mlp(post_attention_norm(a))                   # gated SiLU MLP
    logits over Vd = lm_head(final_norm(out))

`out` (before the final norm) is what the head feeds itself at the next draft step, in place of the
target features it does not have yet: position t + 1 gets (out_t, x_{t+2}). Draft id i is target id
i + d2t[i]; `t2d` marks the target ids in the draft vocabulary.

This follows SafeAILab/EAGLE's training code (`eagle/traineagle3/cnets.py`: residual around the
un-normed features, `hidden_norm` and `input_layernorm` before the concatenation, embeddings first)
and vLLM's `llama_eagle3.py` (the same layer, `norm_before_residual` as an option, logits scattered
into the target vocabulary through d2t, taps are the *inputs* of layers (2, L // 2, L - 3)). Where
they differ, the head dim: EAGLE's training code always uses hidden_size / heads, vLLM honours
`head_dim`; this follows vLLM (the same whenever `head_dim` is absent).

Checkpoint layout (read and written unchanged): `config.json` (architectures
`LlamaForCausalLMEagle3`, `hidden_size`, `intermediate_size`, heads, `rms_norm_eps`, RoPE fields,
`vocab_size`, `draft_vocab_size`, `target_hidden_size` when it differs, optionally
`eagle_config.eagle_aux_hidden_state_layer_ids` and `norm_before_residual`) and safetensors with
`fc.weight`, `midlayer.{hidden_norm,input_layernorm,post_attention_layernorm}.weight`,
`midlayer.self_attn.{q,k,v,o}_proj.weight`, `midlayer.mlp.{gate,up,down}_proj.weight`, `norm.weight`,
`lm_head.weight`, `d2t`, `t2d` and optionally `embed_tokens.weight`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax.cache import KVCache
from specjax.errors import ConversionError, MissingWeightError, ModelNotFoundError, WeightShapeError

from .family import rope_from_hf, rope_to_hf
from .transformer import (Norm, RopeConfig, TransformerConfig, _attention, _attention_blocked, _init, _masks, _project,
                          _rope_tables, _rotate, attention_block)

ARCHITECTURES = ("LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM")


def default_taps(num_layers: int) -> tuple[int, ...]:
    """The community's tapped layers for a target of L layers: the inputs of layers 2, L // 2, L - 3."""
    return (2, num_layers // 2, num_layers - 3)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Eagle3Config:
    """Static description of one head (hashable)."""

    dim: int  # D
    target_dim: int  # E, the width of each tapped target hidden state
    mlp_dim: int  # F
    num_heads: int  # N
    num_kv_heads: int  # K
    head_dim: int  # H
    vocab_size: int  # V, the target's vocabulary (t2d's length)
    draft_vocab_size: int  # Vd
    rope: RopeConfig
    norm_eps: float = 1e-6
    taps: tuple[int, ...] = ()  # target layers whose inputs are fused; () = default_taps(L) of the target
    num_taps: int = 3  # n, the fc input is n * E wide
    norm_before_residual: bool = False
    own_embedding: bool = False  # the checkpoint carries embed_tokens.weight (else the target's is used)
    max_context: int | None = None

    def __post_init__(self):
        if self.taps and len(self.taps) != self.num_taps:
            raise ConversionError(f"eagle3: {len(self.taps)} taps {self.taps} for an fc over {self.num_taps} "
                                  "hidden states")
        if self.num_heads % self.num_kv_heads:
            raise ConversionError(f"eagle3: num_heads={self.num_heads} is not a multiple of "
                                  f"num_kv_heads={self.num_kv_heads}")
        if not 1 <= self.draft_vocab_size <= self.vocab_size:
            raise ConversionError(f"eagle3: draft_vocab_size {self.draft_vocab_size} must be in [1, vocab_size = "
                                  f"{self.vocab_size}]")

    @property
    def layer(self) -> TransformerConfig:
        """The decoder layer's knobs, in the form the shared transformer pieces read."""
        return TransformerConfig(family="eagle3", vocab_size=self.draft_vocab_size, dim=self.dim,
                                 mlp_dim=self.mlp_dim, num_layers=1, num_heads=self.num_heads,
                                 num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, norm="rms",
                                 norm_eps=self.norm_eps, rope=self.rope, tie_embeddings=False)

    def taps_for(self, num_layers: int) -> tuple[int, ...]:
        return tuple(self.taps) if self.taps else default_taps(num_layers)


class Buffer(nnx.Variable):
    """A non-trainable array of the head (the draft -> target id map)."""


class Eagle3Head(nnx.Module):
    """One EAGLE-3 head; see the module docstring for what it computes."""

    def __init__(self, cfg: Eagle3Config, *, dtype=jnp.float32, rngs: nnx.Rngs, target_ids=None):
        self.config = cfg
        self.dtype = jnp.dtype(dtype)
        D, E, F, N, K, H = cfg.dim, cfg.target_dim, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        lcfg = cfg.layer
        self.fc = nnx.Param(_init(rngs, (cfg.num_taps * E, D), dtype), axes=(None, "embed"))
        self.embed_norm = Norm(D, lcfg, dtype=dtype, rngs=rngs)  # the checkpoint's input_layernorm
        self.hidden_norm = Norm(D, lcfg, dtype=dtype, rngs=rngs)
        self.q = nnx.Param(_init(rngs, (2 * D, N, H), dtype), axes=(None, "q_heads", "head_dim"))
        self.k = nnx.Param(_init(rngs, (2 * D, K, H), dtype), axes=(None, "kv_heads", "head_dim"))
        self.v = nnx.Param(_init(rngs, (2 * D, K, H), dtype), axes=(None, "kv_heads", "head_dim"))
        self.o = nnx.Param(_init(rngs, (N, H, D), dtype), axes=("q_heads", "head_dim", "embed"))
        self.mlp_norm = Norm(D, lcfg, dtype=dtype, rngs=rngs)  # the checkpoint's post_attention_layernorm
        self.gate = nnx.Param(_init(rngs, (D, F), dtype), axes=("embed", "mlp"))
        self.up = nnx.Param(_init(rngs, (D, F), dtype), axes=("embed", "mlp"))
        self.down = nnx.Param(_init(rngs, (F, D), dtype), axes=("mlp", "embed"))
        self.final_norm = Norm(D, lcfg, dtype=dtype, rngs=rngs)
        self.lm_head = nnx.Param(_init(rngs, (D, cfg.draft_vocab_size), dtype), axes=("embed", "vocab"))
        if target_ids is None:
            target_ids = np.arange(cfg.draft_vocab_size)
        self.target_ids = Buffer(jnp.asarray(target_ids, jnp.int32))  # [Vd] draft id i -> target id
        if cfg.own_embedding:
            self.embed = nnx.Param(_init(rngs, (cfg.vocab_size, D), dtype), axes=("vocab", "embed"))

    def init_cache(self, batch: int, size: int, dtype=None) -> KVCache:
        cfg = self.config
        return KVCache.zeros(layers=1, batch=batch, size=size, kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                             dtype=dtype or self.dtype)

    def embed_tokens(self, tokens_bt):
        """The head's own token embedding [B,T,D] (only when the checkpoint carries one)."""
        return jnp.take(self.embed.value, tokens_bt, axis=0)

    def fuse(self, taps_nbte):
        """The target's tapped hidden states [n,B,T,E] -> fused features [B,T,D] (`fc` over their
        concatenation, low layer first)."""
        x_bte = jnp.concatenate(list(taps_nbte.astype(self.dtype)), axis=-1)
        return _project("bte,ed->btd", x_bte, self.fc.value)

    def attention_inputs(self, embeds_btd, hidden_btd, positions_bt):
        """The layer up to its attention: -> (q [B,T,N,H], k [B,T,K,H], v [B,T,K,H] with RoPE at
        `positions`, the residual [B,T,D])."""
        cfg = self.config
        hidden_btd = hidden_btd.astype(self.dtype)
        e_btd = self.embed_norm(embeds_btd.astype(self.dtype))
        h_btd = self.hidden_norm(hidden_btd)
        residual_btd = h_btd if cfg.norm_before_residual else hidden_btd
        x_btc = jnp.concatenate([e_btd, h_btd], axis=-1)  # [B,T,2D]
        q_btnh = _project("btc,cnh->btnh", x_btc, self.q.value)
        k_btkh = _project("btc,ckh->btkh", x_btc, self.k.value)
        v_btkh = _project("btc,ckh->btkh", x_btc, self.v.value)
        cos_bth, sin_bth = _rope_tables(cfg.rope, cfg.head_dim, positions_bt)
        return _rotate(q_btnh, cos_bth, sin_bth), _rotate(k_btkh, cos_bth, sin_bth), v_btkh, residual_btd

    def after_attention(self, residual_btd, attn_btnh):
        """The rest of the layer: output projection, residual, MLP and its residual -> out [B,T,D]."""
        a_btd = residual_btd + _project("btnh,nhd->btd", attn_btnh.astype(self.dtype), self.o.value)
        m_btd = self.mlp_norm(a_btd)
        act_btf = jax.nn.silu(_project("btd,df->btf", m_btd, self.gate.value)) * _project(
            "btd,df->btf", m_btd, self.up.value)
        return a_btd + _project("btf,fd->btd", act_btf, self.down.value)

    def step(self, embeds_btd, hidden_btd, positions_bt, cache: KVCache):
        """The decoder layer over T entries: entry t pairs `hidden` (fused target features, or the
        head's own previous output) with the embedding of the next token, at `positions` (< 0: padding,
        nothing written). -> (out [B,T,D] before the final norm, cache)."""
        q_btnh, k_btkh, v_btkh, residual_btd = self.attention_inputs(embeds_btd, hidden_btd, positions_bt)
        cache = cache.write(0, k_btkh, v_btkh, positions_bt)
        block = attention_block(cache.size, positions_bt.shape[1])
        if block:
            attn_btnh = _attention_blocked(q_btnh, cache, 0, positions_bt, 0, block, self.config.layer)
        else:
            mask_bts, _ = _masks(positions_bt, cache.size, None)
            attn_btnh = _attention(q_btnh, cache.keys(0), cache.values(0), mask_bts, self.config.layer)
        return self.after_attention(residual_btd, attn_btnh), cache

    def logits(self, out_btd):
        """Draft-vocabulary logits [B,T,Vd], float32, from the layer's output."""
        return _project("btd,dv->btv", self.final_norm(out_btd.astype(self.dtype)), self.lm_head.value, jnp.float32)


def random_head(cfg: Eagle3Config, *, seed: int = 0, dtype=jnp.float32, target_ids=None,
                scale: float = 1.0) -> Eagle3Head:
    """A randomly initialised head (weights N(0, 0.02) times `scale`, norms 1). `target_ids` [Vd]: the
    draft vocabulary as target ids (default: the first Vd ids)."""
    head = Eagle3Head(cfg, dtype=dtype, rngs=nnx.Rngs(seed), target_ids=target_ids)
    if scale != 1.0:
        graphdef, params, rest = nnx.split(head, nnx.Param, ...)
        params = jax.tree.map(lambda x: (x * scale).astype(x.dtype) if x.ndim >= 2 else x, params)
        head = nnx.merge(graphdef, params, rest)
    return head


def head_config_for(target_cfg: TransformerConfig, *, draft_vocab_size: int | None = None,
                    taps: tuple[int, ...] = ()) -> Eagle3Config:
    """The usual head shape for a target: the target's width, heads, MLP width and RoPE."""
    return Eagle3Config(
        dim=target_cfg.dim, target_dim=target_cfg.dim, mlp_dim=target_cfg.mlp_dim, num_heads=target_cfg.num_heads,
        num_kv_heads=target_cfg.num_kv_heads, head_dim=target_cfg.head_dim, vocab_size=target_cfg.vocab_size,
        draft_vocab_size=draft_vocab_size or target_cfg.vocab_size, norm_eps=target_cfg.norm_eps,
        rope=target_cfg.rope or RopeConfig(theta=10000.0), taps=tuple(taps), max_context=target_cfg.max_context)


# -- the community checkpoint layout ------------------------------------------------------------

def config_from_hf(hf: dict, origin: str = "config.json") -> Eagle3Config:
    """An EAGLE-3 `config.json` dict -> Eagle3Config (`ConversionError` naming what does not fit)."""
    archs = hf.get("architectures") or []
    if not any(a in ARCHITECTURES for a in archs):
        raise ConversionError(f"{origin}: architectures {archs} is not an EAGLE-3 head (expected one of "
                              f"{', '.join(ARCHITECTURES)})")
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size"):
        if hf.get(key) is None:
            raise ConversionError(f"{origin}: EAGLE-3 config is missing {key!r}")
    layers = hf.get("num_hidden_layers", 1)
    if layers != 1:
        raise ConversionError(f"{origin}: num_hidden_layers = {layers}; only one-layer EAGLE-3 heads are supported")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConversionError(f"{origin}: hidden_act {act!r} is not supported (expected 'silu')")
    D, N = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    eagle = hf.get("eagle_config") or {}
    taps = tuple(int(t) for t in (eagle.get("eagle_aux_hidden_state_layer_ids") or ()))
    return Eagle3Config(
        dim=D, target_dim=int(hf.get("target_hidden_size") or D), mlp_dim=int(hf["intermediate_size"]),
        num_heads=N, num_kv_heads=int(hf.get("num_key_value_heads") or N), head_dim=int(hf.get("head_dim") or D // N),
        vocab_size=int(hf["vocab_size"]), draft_vocab_size=int(hf.get("draft_vocab_size") or hf["vocab_size"]),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope=rope_from_hf(hf), taps=taps, num_taps=len(taps) or 3,
        norm_before_residual=bool(hf.get("norm_before_residual", False)),
        max_context=hf.get("max_position_embeddings"))


def config_to_hf(cfg: Eagle3Config) -> dict:
    """Eagle3Config -> the community `config.json` dict."""
    hf = {
        "architectures": [ARCHITECTURES[0]], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": cfg.dim, "intermediate_size": cfg.mlp_dim, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "num_hidden_layers": 1,
        "rms_norm_eps": cfg.norm_eps, "vocab_size": cfg.vocab_size,
        "draft_vocab_size": cfg.draft_vocab_size, "tie_word_embeddings": False, **rope_to_hf(cfg.rope, "eagle3"),
    }
    if cfg.target_dim != cfg.dim:
        hf["target_hidden_size"] = cfg.target_dim
    if cfg.taps:
        hf["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(cfg.taps), "use_aux_hidden_state": True}
    if cfg.norm_before_residual:
        hf["norm_before_residual"] = True
    if cfg.max_context is not None:
        hf["max_position_embeddings"] = cfg.max_context
    return hf


def _weight_layout(cfg: Eagle3Config):
    """checkpoint key -> (torch shape, param name, torch -> ours, ours -> torch)."""
    D, E, F, N, K, H = cfg.dim, cfg.target_dim, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def heads_in(h):  # nn.Linear [h*H, 2D] <-> [2D, h, H]
        return (lambda a: a.reshape(h, H, 2 * D).transpose(2, 0, 1)), (lambda w: w.transpose(1, 2, 0).reshape(h * H, 2 * D))

    t = (lambda a: a.T), (lambda w: w.T)
    same = (lambda a: a), (lambda w: w)
    layout = {
        "fc.weight": ((D, cfg.num_taps * E), "fc", *t),
        "midlayer.hidden_norm.weight": ((D,), "hidden_norm.scale", *same),
        "midlayer.input_layernorm.weight": ((D,), "embed_norm.scale", *same),
        "midlayer.self_attn.q_proj.weight": ((N * H, 2 * D), "q", *heads_in(N)),
        "midlayer.self_attn.k_proj.weight": ((K * H, 2 * D), "k", *heads_in(K)),
        "midlayer.self_attn.v_proj.weight": ((K * H, 2 * D), "v", *heads_in(K)),
        "midlayer.self_attn.o_proj.weight": ((D, N * H), "o", lambda a: a.reshape(D, N, H).transpose(1, 2, 0),
                                             lambda w: w.transpose(2, 0, 1).reshape(D, N * H)),
        "midlayer.post_attention_layernorm.weight": ((D,), "mlp_norm.scale", *same),
        "midlayer.mlp.gate_proj.weight": ((F, D), "gate", *t),
        "midlayer.mlp.up_proj.weight": ((F, D), "up", *t),
        "midlayer.mlp.down_proj.weight": ((D, F), "down", *t),
        "norm.weight": ((D,), "final_norm.scale", *same),
        "lm_head.weight": ((cfg.draft_vocab_size, D), "lm_head", *t),
    }
    if cfg.own_embedding:
        layout["embed_tokens.weight"] = ((cfg.vocab_size, D), "embed", *same)
    return layout


def _get(module, dotted: str):
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


# Heads shipped inside the package (models/heads/NAME), usable by name wherever a head directory is:
# `--drafter eagle:NAME`, `load_eagle(NAME)`. name -> the built-in target it was trained for.
BUILTIN_HEADS = {"smollm2-135m-instruct-eagle3": "smollm2-135m-instruct"}


def head_path(name_or_dir) -> Path:
    """A built-in head's name -> its directory in the package; anything else -> itself as a path."""
    if isinstance(name_or_dir, str) and name_or_dir in BUILTIN_HEADS:
        return Path(__file__).parent / "heads" / name_or_dir
    return Path(name_or_dir)


def load_eagle(path, *, dtype=jnp.float32) -> Eagle3Head:
    """A head directory in the community layout, or a built-in head's name (BUILTIN_HEADS) ->
    Eagle3Head (weights in `dtype`)."""
    from .sources.hf_dir import HFDirCheckpoint

    directory = head_path(path)
    if not directory.is_dir():
        raise ModelNotFoundError(f"EAGLE-3 head directory {str(directory)!r} does not exist")
    ckpt = HFDirCheckpoint(directory)
    if not ckpt.keys():
        raise ModelNotFoundError(f"{directory} has no .safetensors weights")
    names = {k.removeprefix("model."): k for k in ckpt.keys()}  # some exporters prefix "model."
    cfg = config_from_hf(ckpt.config, str(directory / "config.json"))
    if "embed_tokens.weight" in names:
        cfg = dataclasses.replace(cfg, own_embedding=True)
    layout = _weight_layout(cfg)
    Vd, V = cfg.draft_vocab_size, cfg.vocab_size
    if "d2t" in names:
        d2t = np.asarray(ckpt.tensor(names["d2t"])).astype(np.int64)
        if d2t.shape != (Vd,):
            raise WeightShapeError("d2t", (Vd,), d2t.shape, ckpt.origin)
        target_ids = np.arange(Vd) + d2t
    elif Vd == V:
        target_ids = np.arange(V)
    else:
        raise MissingWeightError("d2t", ckpt.origin)
    if target_ids.min() < 0 or target_ids.max() >= V or len(np.unique(target_ids)) != Vd:
        raise ConversionError(f"{ckpt.origin}: d2t must map the {Vd} draft ids to distinct target ids in [0, {V}) "
                              f"(target id = i + d2t[i]); got ids in [{target_ids.min()}, {target_ids.max()}] with "
                              f"{Vd - len(np.unique(target_ids))} repeats")
    if "t2d" in names:
        t2d = np.asarray(ckpt.tensor(names["t2d"])).astype(bool)
        if t2d.shape != (V,):
            raise WeightShapeError("t2d", (V,), t2d.shape, ckpt.origin)
        if t2d.sum() != Vd or not t2d[target_ids].all():
            raise ConversionError(f"{ckpt.origin}: t2d marks {int(t2d.sum())} target ids, and not the {Vd} that d2t "
                                  "maps to")
    head = nnx.eval_shape(lambda: Eagle3Head(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    for key, (shape, name, to_ours, _) in layout.items():
        if key not in names:
            raise MissingWeightError(key, ckpt.origin)
        got = tuple(ckpt.shape(names[key]))
        if got != shape:
            raise WeightShapeError(key, shape, got, ckpt.origin)
        _get(head, name).value = jnp.asarray(to_ours(np.asarray(ckpt.tensor(names[key]), np.float32)), dtype)
    head.target_ids.value = jnp.asarray(target_ids, jnp.int32)
    return head


def save_eagle(head: Eagle3Head, path, *, dtype="float32") -> Path:
    """Write `head` as a community-layout directory: config.json and model.safetensors (weights in
    `dtype`: float32, float16 or bfloat16; d2t int64, t2d bool)."""
    from safetensors.numpy import save_file

    from .convert import storage_dtype

    store = storage_dtype(dtype, "save_eagle")
    cfg = head.config
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {key: np.ascontiguousarray(from_ours(np.asarray(_get(head, name).value, np.float32)).astype(store))
               for key, (_, name, _, from_ours) in _weight_layout(cfg).items()}
    target_ids = np.asarray(head.target_ids.value, np.int64)
    tensors["d2t"] = target_ids - np.arange(cfg.draft_vocab_size)
    t2d = np.zeros((cfg.vocab_size,), bool)
    t2d[target_ids] = True
    tensors["t2d"] = t2d
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n")
    return directory
