"""The decoder-only transformer every model family is an instance of, as a Flax NNX module.

Axis vocabulary (used in every einsum string and shape comment):
  B batch, T tokens in this call, S cache slots, L layers, D model width, N query heads,
  K kv heads, R query heads per kv head (N = K * R), H head dim, F MLP width, V vocabulary,
  P learned positions.

The families (llama, qwen, gemma3, gpt2) differ only in the knobs of `TransformerConfig`: which
norm, which activation, biases, q/k norms, Gemma's sandwich norms, RoPE or learned positions,
sliding-window layers. Layers are stored stacked (every block parameter has a leading L axis) and
run under one `lax.scan`, so compile time does not grow with depth and any subset of the layers can
run on its own (the layer-skip drafter) without copying weights.

The forward pass is the language-model contract of `specjax.lm`: `hidden(tokens[B,T], positions[B,T],
cache, layers=, taps=) -> (hidden[B,T,D], cache, taps[n,B,T,D])`, then `logits(hidden)`; calling the
module gives `(logits[B,T,V], cache)`. A position < 0 marks padding: it writes nothing to the cache
and its outputs are garbage.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax.cache import KVCache

_MASKED = -1e30  # finite, so a fully masked (padding) query gives a uniform softmax instead of NaN


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeConfig:
    """Rotary embedding of one layer kind. `kind` follows transformers' rope_type names."""

    theta: float
    kind: Literal["default", "linear", "llama3", "factors"] = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192
    freq_factors: tuple[float, ...] = ()  # "factors": one divisor per frequency (llama.cpp's rope_freqs)

    def inv_freq(self, head_dim: int) -> np.ndarray:
        """Inverse frequencies [H/2], float32, computed as transformers does."""
        exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
        inv = (1.0 / (np.float32(self.theta) ** exponent)).astype(np.float32)
        if self.kind == "linear":
            inv = inv / np.float32(self.factor)
        elif self.kind == "factors":
            inv = (inv / np.asarray(self.freq_factors, np.float32)).astype(np.float32)
        elif self.kind == "llama3":
            low_wavelen = self.original_max_positions / self.low_freq_factor
            high_wavelen = self.original_max_positions / self.high_freq_factor
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > low_wavelen, inv / self.factor, inv)
            smooth = (self.original_max_positions / wavelen - self.low_freq_factor) / (
                self.high_freq_factor - self.low_freq_factor
            )
            smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            inv = np.where(medium, smoothed, scaled).astype(np.float32)
        return inv


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Static description of one decoder. Hashable, so models can be static jit arguments."""

    family: str
    vocab_size: int  # V, rows of the embedding (may exceed the tokenizer's vocabulary)
    dim: int  # D
    mlp_dim: int  # F
    num_layers: int  # L
    num_heads: int  # N
    num_kv_heads: int  # K
    head_dim: int  # H
    norm: Literal["rms", "rms_offset", "layer"] = "rms"  # rms_offset: Gemma's x * (1 + w)
    norm_eps: float = 1e-6
    mlp: Literal["gated", "plain"] = "gated"
    activation: Literal["silu", "gelu_tanh", "gelu"] = "silu"
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sandwich_norm: bool = False  # Gemma: extra norms after attention and after the MLP
    position: Literal["rope", "learned"] = "rope"
    max_positions: int | None = None  # P, for learned positions
    max_context: int | None = None  # the context length the checkpoint declares (max_position_embeddings)
    rope: RopeConfig | None = None  # global layers
    rope_local: RopeConfig | None = None  # sliding-window layers, when they differ
    sliding_window: int | None = None
    layer_kinds: tuple[str, ...] = ()  # "global" or "local" per layer; empty means all global
    embed_scale: float | None = None  # Gemma multiplies embeddings by sqrt(D)
    attn_scale: float | None = None  # defaults to H ** -0.5
    attn_softcap: float | None = None
    final_softcap: float | None = None
    tie_embeddings: bool = True

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.layer_kinds and len(self.layer_kinds) != self.num_layers:
            raise ValueError(f"layer_kinds has {len(self.layer_kinds)} entries for {self.num_layers} layers")
        if self.position == "rope" and self.rope is None:
            raise ValueError("a rope model needs a RopeConfig")
        if self.position == "learned" and not self.max_positions:
            raise ValueError("a model with learned positions needs max_positions")

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.layer_kinds or ("global",) * self.num_layers

    @property
    def context_length(self) -> int | None:
        """The most positions a sequence may use: the learned positions, else the declared context
        length (None when the checkpoint declares none)."""
        if self.position == "learned":
            return self.max_positions if self.max_context is None else min(self.max_positions, self.max_context)
        return self.max_context

    @property
    def has_local_layers(self) -> bool:
        return self.sliding_window is not None and "local" in self.kinds


def _init(rngs: nnx.Rngs, shape, dtype, scale=0.02):
    return (scale * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Norm(nnx.Module):
    """RMSNorm (plain or Gemma's 1 + w) or LayerNorm over the last axis, computed in float32."""

    def __init__(self, width: int, cfg: TransformerConfig, *, dtype, rngs: nnx.Rngs):
        self.kind, self.eps = cfg.norm, cfg.norm_eps
        fill = 0.0 if cfg.norm == "rms_offset" else 1.0
        self.scale = nnx.Param(jnp.full((width,), fill, dtype), axes=("norm",))
        if cfg.norm == "layer":
            self.bias = nnx.Param(jnp.zeros((width,), dtype), axes=("norm",))

    def __call__(self, x):
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        if self.kind == "layer":
            mean = x32.mean(-1, keepdims=True)
            var = jnp.square(x32 - mean).mean(-1, keepdims=True)
            y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
            return (y * self.scale.value.astype(jnp.float32) + self.bias.value.astype(jnp.float32)).astype(dtype)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        if self.kind == "rms_offset":
            return (y * (1.0 + self.scale.value.astype(jnp.float32))).astype(dtype)
        # Llama casts back to the activation dtype before scaling (matters in bf16 only).
        return self.scale.value * y.astype(dtype)


def _sixteen_bit(*arrays) -> bool:
    return any(jnp.dtype(a.dtype).itemsize == 2 for a in arrays)


def _project(eq: str, x, w, out_dtype=None):
    """`jnp.einsum(eq, x, w)` of activations x [B,T,...] (B*T rows) with a weight w,
    accumulated in float32 and returned in `out_dtype` (x's dtype by default).

    With 16-bit weights a single row is computed as two (the second all zeros, then dropped): XLA:CPU
    multiplies one bfloat16 row with a matrix-vector kernel that is ~10x slower than its two-row
    kernel and rounds differently from the multi-row kernel of a (G+1)-token verify pass; from two
    rows on (up to at least 32 here) each row's result does not depend on how many rows there are, so
    a one-token decode step and a verify pass compute the same numbers. float32 weights keep the
    one-row kernel: it streams the weights at the memory bandwidth, and two rows cost SmolLM2's plain
    decoding ~20% of its speed on the 2-core CPU (BENCHMARKS.md, "Plain decoding"); a one-token pass
    then rounds like a verify pass only up to float32 rounding, so greedy speculative output equals
    plain greedy output except after a proven near-tie (`tests/test_spec_real.py`), and bit for bit
    with `verify="stepwise"`."""
    if x.shape[0] * x.shape[1] == 1 and _sixteen_bit(x, w):
        return _project(eq, jnp.concatenate([x, jnp.zeros_like(x)], axis=0), w, out_dtype)[:1]
    return jnp.einsum(eq, x, w, preferred_element_type=jnp.float32).astype(out_dtype or x.dtype)


def _activation(name: str, x):
    if name == "silu":
        return jax.nn.silu(x)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    return jax.nn.gelu(x, approximate=False)


class Block(nnx.Module):
    """One pre-norm decoder layer: attention with a KV cache, then the MLP."""

    def __init__(self, cfg: TransformerConfig, *, dtype, rngs: nnx.Rngs):
        D, F, N, K, H = cfg.dim, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.attn_norm = Norm(D, cfg, dtype=dtype, rngs=rngs)
        self.q = nnx.Param(_init(rngs, (D, N, H), dtype), axes=("embed", "q_heads", "head_dim"))
        self.k = nnx.Param(_init(rngs, (D, K, H), dtype), axes=("embed", "kv_heads", "head_dim"))
        self.v = nnx.Param(_init(rngs, (D, K, H), dtype), axes=("embed", "kv_heads", "head_dim"))
        self.o = nnx.Param(_init(rngs, (N, H, D), dtype), axes=("q_heads", "head_dim", "embed"))
        if cfg.qkv_bias:
            self.q_bias = nnx.Param(jnp.zeros((N, H), dtype), axes=("q_heads", "head_dim"))
            self.k_bias = nnx.Param(jnp.zeros((K, H), dtype), axes=("kv_heads", "head_dim"))
            self.v_bias = nnx.Param(jnp.zeros((K, H), dtype), axes=("kv_heads", "head_dim"))
        if cfg.out_bias:
            self.o_bias = nnx.Param(jnp.zeros((D,), dtype), axes=("embed",))
        if cfg.qk_norm:
            self.q_norm = Norm(H, cfg, dtype=dtype, rngs=rngs)
            self.k_norm = Norm(H, cfg, dtype=dtype, rngs=rngs)
        if cfg.sandwich_norm:
            self.post_attn_norm = Norm(D, cfg, dtype=dtype, rngs=rngs)
            self.post_mlp_norm = Norm(D, cfg, dtype=dtype, rngs=rngs)
        self.mlp_norm = Norm(D, cfg, dtype=dtype, rngs=rngs)
        if cfg.mlp == "gated":
            self.gate = nnx.Param(_init(rngs, (D, F), dtype), axes=("embed", "mlp"))
        self.up = nnx.Param(_init(rngs, (D, F), dtype), axes=("embed", "mlp"))
        self.down = nnx.Param(_init(rngs, (F, D), dtype), axes=("mlp", "embed"))
        if cfg.mlp_bias:
            self.up_bias = nnx.Param(jnp.zeros((F,), dtype), axes=("mlp",))
            self.down_bias = nnx.Param(jnp.zeros((D,), dtype), axes=("embed",))

    def __call__(self, x_btd, rope_cs, attend, positions_bt, cache: KVCache, layer, cfg: TransformerConfig):
        """attend(q [B,T,N,H], cache, layer) -> [B,T,N,H]: attention over the cache after this call's
        keys and values are written (dense under a mask, or blocked; see `Transformer.hidden`)."""
        h_btd = self.attn_norm(x_btd)
        q_btnh = _project("btd,dnh->btnh", h_btd, self.q.value)
        k_btkh = _project("btd,dkh->btkh", h_btd, self.k.value)
        v_btkh = _project("btd,dkh->btkh", h_btd, self.v.value)
        if cfg.qkv_bias:
            q_btnh = q_btnh + self.q_bias.value
            k_btkh = k_btkh + self.k_bias.value
            v_btkh = v_btkh + self.v_bias.value
        if cfg.qk_norm:
            q_btnh, k_btkh = self.q_norm(q_btnh), self.k_norm(k_btkh)
        if rope_cs is not None:
            cos_bth, sin_bth = rope_cs
            q_btnh, k_btkh = _rotate(q_btnh, cos_bth, sin_bth), _rotate(k_btkh, cos_bth, sin_bth)
        cache = cache.write(layer, k_btkh, v_btkh, positions_bt)
        attn_btnh = attend(q_btnh, cache, layer)
        o_btd = _project("btnh,nhd->btd", attn_btnh, self.o.value)
        if cfg.out_bias:
            o_btd = o_btd + self.o_bias.value
        if cfg.sandwich_norm:
            o_btd = self.post_attn_norm(o_btd)
        x_btd = x_btd + o_btd

        h_btd = self.mlp_norm(x_btd)
        up_btf = _project("btd,df->btf", h_btd, self.up.value)
        if cfg.mlp_bias:
            up_btf = up_btf + self.up_bias.value
        if cfg.mlp == "gated":
            act_btf = _activation(cfg.activation, _project("btd,df->btf", h_btd, self.gate.value)) * up_btf
        else:
            act_btf = _activation(cfg.activation, up_btf)
        m_btd = _project("btf,fd->btd", act_btf, self.down.value)
        if cfg.mlp_bias:
            m_btd = m_btd + self.down_bias.value
        if cfg.sandwich_norm:
            m_btd = self.post_mlp_norm(m_btd)
        return x_btd + m_btd, cache


def _rotate(x_btnh, cos_bth, sin_bth):
    """Rotary embedding in the rotate-half layout of HF checkpoints."""
    half = x_btnh.shape[-1] // 2
    x32 = x_btnh.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos_bth[:, :, None, :] + rotated * sin_bth[:, :, None, :]
    return out.astype(x_btnh.dtype)


def _rope_tables(rope: RopeConfig, head_dim: int, positions_bt):
    inv_freq = jnp.asarray(rope.inv_freq(head_dim))  # [H/2]
    angles_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq
    angles_bth = jnp.concatenate([angles_bth, angles_bth], axis=-1)
    return jnp.cos(angles_bth), jnp.sin(angles_bth)


def _attention(q_btnh, k_bskh, v_bskh, mask_bts, cfg: TransformerConfig):
    """Dense attention of T queries over all S slots under an explicit mask [B,T,S]."""
    B, T, N, H = q_btnh.shape
    K = k_bskh.shape[2]
    if T * (N // K) == 1 and _sixteen_bit(q_btnh, k_bskh):  # one query row per kv head: two, as in `_project`
        pad = ((0, 0), (0, 1))
        out_b2nh = _attention(jnp.pad(q_btnh, pad + ((0, 0), (0, 0))), k_bskh, v_bskh, jnp.pad(mask_bts, pad + ((0, 0),)),
                              cfg)
        return out_b2nh[:, :1]
    q_btkrh = q_btnh.reshape(B, T, K, N // K, H)
    scores_bkrts = _scores(q_btkrh, k_bskh, cfg)
    scores_bkrts = jnp.where(mask_bts[:, None, None], scores_bkrts, _MASKED)
    probs_bkrts = jax.nn.softmax(scores_bkrts, axis=-1).astype(q_btnh.dtype)
    out_btkrh = jnp.einsum("bkrts,bskh->btkrh", probs_bkrts, v_bskh.astype(q_btnh.dtype),
                           preferred_element_type=jnp.float32)
    return out_btkrh.astype(q_btnh.dtype).reshape(B, T, N, H)


def _scores(q_btkrh, k_bskh, cfg: TransformerConfig):
    """Scaled (and soft-capped) float32 attention scores [B,K,R,T,S]."""
    scale = cfg.attn_scale if cfg.attn_scale is not None else q_btkrh.shape[-1] ** -0.5
    scores_bkrts = jnp.einsum("btkrh,bskh->bkrts", q_btkrh, k_bskh.astype(q_btkrh.dtype),
                              preferred_element_type=jnp.float32) * scale
    if cfg.attn_softcap is not None:
        scores_bkrts = jnp.tanh(scores_bkrts / cfg.attn_softcap) * cfg.attn_softcap
    return scores_bkrts


# Cache blocks visited by blocked attention, largest first: a block must divide the cache size S, and a
# cache of at most one block is attended densely. () turns blocked attention off (tests and benchmarks
# compare against dense attention that way; it is read when a program is traced, so clear JAX's caches
# after changing it).
ATTN_BLOCKS = (256, 128, 64)  # 32 made SmolLM2 decoding at S = 192 slower than dense; 64 is even


def attention_block(size: int, tokens: int) -> int:
    """The key-block length blocked attention uses for a call of `tokens` queries into a cache of `size`
    slots, or 0 for dense attention: caches of one block or less, and calls that fill the whole
    buffer (a training or data-generation pass: every slot is its own token, nothing to skip but the
    causal triangle, and dense attention is differentiable in reverse mode, the block loop is not)."""
    if tokens >= size:
        return 0
    return next((b for b in ATTN_BLOCKS if size % b == 0 and size > b), 0)


def _attention_blocked(q_btnh, cache: KVCache, layer, positions_bt, window, block: int, cfg: TransformerConfig):
    """Attention of T queries over one cache layer that visits only the key blocks some query can see:
    blocks from the one holding the lowest slot a query's window reaches (`window`: a traced int, 0 for
    none) to the one holding the highest query position, with an online (running max and sum) softmax,
    so the work follows the occupied length instead of the buffer size S and no [T,S] score tensor
    exists. Masking is by position as in `_attention` (slot s holds position s).

    Exactness: a block in which every slot is masked for a query (a row whose context ends before a
    longer row's, a verify pass's later positions) leaves that query's running max, sum and output
    bit for bit unchanged (its weights are exp(-1e30 - max) = 0 and the rescale factor is exp(0) = 1),
    and a masked block before the first visible one is zeroed by the rescale, so a query's result does
    not depend on the other queries or rows of the call, as with the dense mask. Within float rounding
    (the sum is taken block by block) it equals `_attention`."""
    B, T, N, H = q_btnh.shape
    K = cache.k.shape[3]
    R = N // K
    if T * R == 1 and _sixteen_bit(q_btnh, cache.k):  # two query rows, as in `_project`
        pad = ((0, 0), (0, 1))
        out = _attention_blocked(jnp.pad(q_btnh, pad + ((0, 0), (0, 0))), cache, layer,
                                 jnp.pad(positions_bt, pad, constant_values=-1), window, block, cfg)
        return out[:, :1]
    # rows r * T + t of one matrix per kv head: the layout XLA:CPU multiplies fastest (2x the einsum
    # over the [B,T,K,R,H] view in a probe), set up once per call, outside the block loop
    q_bkqh = q_btnh.reshape(B, T, K, R, H).transpose(0, 2, 3, 1, 4).reshape(B, K, R * T, H)
    scale = cfg.attn_scale if cfg.attn_scale is not None else H ** -0.5
    valid_bt = positions_bt >= 0
    last = jnp.max(jnp.where(valid_bt, positions_bt, -1))
    first = jnp.min(jnp.where(valid_bt, positions_bt, jnp.iinfo(jnp.int32).max))
    lowest = jnp.where(window > 0, jnp.maximum(first - window + 1, 0), 0)
    lo, hi = jnp.minimum(lowest, last) // block, last // block + 1  # last < 0 (all padding): no block
    pos_bt1 = positions_bt[..., None]

    def body(masked: bool, j, carry):
        max_bkq, sum_bkq, acc_bkqh = carry
        start = j * block
        k_bskh, v_bskh = cache.block(layer, start, block)
        scores_bkqs = jnp.einsum("bkqh,bksh->bkqs", q_bkqh, k_bskh.astype(q_btnh.dtype).transpose(0, 2, 1, 3),
                                 preferred_element_type=jnp.float32) * scale
        if cfg.attn_softcap is not None:
            scores_bkqs = jnp.tanh(scores_bkqs / cfg.attn_softcap) * cfg.attn_softcap
        if masked:
            slots_s = start + jnp.arange(block)
            seen_bts = (slots_s <= pos_bt1) & valid_bt[..., None]
            seen_bts = seen_bts & ((window <= 0) | (slots_s > pos_bt1 - window))
            seen_b1qs = jnp.broadcast_to(seen_bts[:, None, None], (B, 1, R, T, block)).reshape(B, 1, R * T, block)
            scores_bkqs = jnp.where(seen_b1qs, scores_bkqs, _MASKED)
        new_max_bkq = jnp.maximum(max_bkq, scores_bkqs.max(axis=-1))
        rescale_bkq = jnp.exp(max_bkq - new_max_bkq)
        weights_bkqs = jnp.exp(scores_bkqs - new_max_bkq[..., None])
        sum_bkq = sum_bkq * rescale_bkq + weights_bkqs.sum(axis=-1)
        acc_bkqh = acc_bkqh * rescale_bkq[..., None] + jnp.einsum(
            "bkqs,bksh->bkqh", weights_bkqs.astype(q_btnh.dtype), v_bskh.astype(q_btnh.dtype).transpose(0, 2, 1, 3),
            preferred_element_type=jnp.float32)
        return new_max_bkq, sum_bkq, acc_bkqh

    init = (jnp.full((B, K, R * T), -jnp.inf, jnp.float32), jnp.zeros((B, K, R * T), jnp.float32),
            jnp.zeros((B, K, R * T, H), jnp.float32))
    # Blocks [a, b) are visible to every query of the call (inside every window, before every
    # position): no mask to build or apply (a fifth of a block's time). Masked blocks run before and
    # after them, in ascending order as always; a block's numbers do not depend on which loop ran it.
    a = jnp.clip(jnp.where(window > 0, -(-(last - window + 1) // block), 0), lo, hi)
    b = jnp.clip((first + 1) // block, a, hi)
    carry = jax.lax.fori_loop(lo, a, functools.partial(body, True), init)
    carry = jax.lax.fori_loop(a, b, functools.partial(body, False), carry)
    _, sum_bkq, acc_bkqh = jax.lax.fori_loop(b, hi, functools.partial(body, True), carry)
    out_bkqh = acc_bkqh / jnp.maximum(sum_bkq, 1e-30)[..., None]  # all padding: zeros, not NaN
    out_bkrth = out_bkqh.reshape(B, K, R, T, H)
    return out_bkrth.transpose(0, 3, 1, 2, 4).astype(q_btnh.dtype).reshape(B, T, N, H)


def _masks(positions_bt, size: int, window: int | None):
    """Causal mask [B,T,S] over cache slots (slot s holds position s), optionally windowed."""
    slots_s = jnp.arange(size)
    pos_bt1 = positions_bt[..., None]
    causal_bts = (slots_s <= pos_bt1) & (pos_bt1 >= 0)
    if window is None:
        return causal_bts, causal_bts
    return causal_bts, causal_bts & (slots_s > pos_bt1 - window)


def _ring_mask(positions_bt, ring_size: int, window: int):
    """The mask [B,T,W] of a sliding-window layer's ring buffer (slot s holds the newest position
    congruent to s mod W that was written): the position slot s holds for a query at p, given the
    ring's size bound (`specjax.cache`), is p - ((p - s) mod W), visible when within the window."""
    slots_s = jnp.arange(ring_size)
    pos_bt1 = positions_bt[..., None]
    held_bts = pos_bt1 - jnp.mod(pos_bt1 - slots_s, ring_size)
    return (held_bts > pos_bt1 - window) & (held_bts >= 0) & (pos_bt1 >= 0)


class Transformer(nnx.Module):
    """A decoder-only language model; see the module docstring for the contract."""

    def __init__(self, cfg: TransformerConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.dtype = jnp.dtype(dtype)
        self.embed = nnx.Param(_init(rngs, (cfg.vocab_size, cfg.dim), dtype), axes=("vocab", "embed"))
        if cfg.position == "learned":
            self.pos_embed = nnx.Param(_init(rngs, (cfg.max_positions, cfg.dim), dtype), axes=("positions", "embed"))

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, axis_name=None)
        def make_blocks(rngs):
            return Block(cfg, dtype=dtype, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.final_norm = Norm(cfg.dim, cfg, dtype=dtype, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = nnx.Param(_init(rngs, (cfg.dim, cfg.vocab_size), dtype), axes=("embed", "vocab"))

    def init_cache(self, batch: int, size: int, dtype=None, *, layers: int | None = None,
                   ring_slack: int | None = None) -> KVCache:
        """An empty cache for all layers, or for `layers` of them (a layer-subset draft's own cache).

        ring_slack: the most positions any call will write ahead of the committed length (the decoder
        passes its prefill pass length and G + 1). Given it, the sliding-window layers of a full cache
        keep ring buffers of window + ring_slack slots instead of `size` (when that is smaller), so
        their memory is bounded by the window; attention over them is exact under that bound."""
        cfg = self.config
        ring = {}
        if ring_slack is not None and layers is None and cfg.has_local_layers:
            ring_size = cfg.sliding_window + max(int(ring_slack), 1)
            if ring_size < size:
                ring = dict(ring_layers=tuple(i for i, kind in enumerate(cfg.kinds) if kind == "local"),
                            window=cfg.sliding_window, ring_size=ring_size)
        return KVCache.zeros(
            layers=cfg.num_layers if layers is None else layers, batch=batch, size=size,
            kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, dtype=dtype or self.dtype, **ring,
        )

    def with_kv_heads(self, kv_heads: int) -> "Transformer":
        """The same model with every kv head repeated kv_heads / K times: identical outputs, a cache
        with kv_heads heads. Used to shard grouped-query attention over more devices than K."""
        cfg = self.config
        if kv_heads % cfg.num_kv_heads or cfg.num_heads % kv_heads:
            raise ValueError(f"kv_heads={kv_heads} must be a multiple of {cfg.num_kv_heads} dividing {cfg.num_heads}")
        repeat = kv_heads // cfg.num_kv_heads
        new_cfg = dataclasses.replace(cfg, num_kv_heads=kv_heads)
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(new_cfg, dtype=self.dtype, rngs=nnx.Rngs(0))))
        pure = nnx.to_pure_dict(nnx.state(self, nnx.Param))
        blocks = dict(pure["blocks"])
        for name, axis in (("k", 2), ("v", 2), ("k_bias", 1), ("v_bias", 1)):  # [L, D, K, H] / [L, K, H]
            if name in blocks:
                blocks[name] = jnp.repeat(blocks[name], repeat, axis=axis)
        pure["blocks"] = blocks
        nnx.replace_by_pure_dict(abstract, pure)
        return nnx.merge(graphdef, abstract)

    def embed_tokens(self, tokens_bt):
        """Raw token embeddings [B,T,D]: rows of the embedding table, without Gemma's scale or learned
        positions (what an EAGLE-3 head shares with its target)."""
        return jnp.take(self.embed.value, tokens_bt, axis=0)

    def hidden(self, tokens_bt, positions_bt, cache: KVCache, *, layers: int | tuple[int, ...] | None = None,
               taps: tuple[int, ...] = ()):
        """Run blocks and the final norm: -> (hidden [B,T,D], cache, taps [n_taps,B,T,D]).

        layers: None for all blocks, an int k for the first k, or a tuple of block indices (a
        layer-skip draft). Block j uses cache layer j when the cache has every layer, else cache
        layer i for the i-th block run (a cache sized for the subset).
        taps: block indices whose *input* (the residual stream before the block) is also returned,
        in the order given; the index after the last block run (L for a full run) is that block's
        output before the final norm.
        With no taps the third result is an empty [0,B,T,D] array and nothing extra is computed."""
        cfg = self.config
        x_btd = jnp.take(self.embed.value, tokens_bt, axis=0)
        if cfg.embed_scale is not None:
            x_btd = x_btd * jnp.asarray(cfg.embed_scale, x_btd.dtype)
        if cfg.position == "learned":
            pos_bt = jnp.clip(positions_bt, 0, cfg.max_positions - 1)
            x_btd = x_btd + jnp.take(self.pos_embed.value, pos_bt, axis=0)

        B, T = tokens_bt.shape
        block = attention_block(cache.size, T)
        if not block:
            global_bts, local_bts = _masks(positions_bt, cache.size, cfg.sliding_window)
        rings = bool(cache.ring_layers)
        if rings:
            ring_bts = _ring_mask(positions_bt, cache.ring_size, cache.window)
            only_rings = cache.k.shape[0] == 0
        rope_global = rope_local = None
        if cfg.position == "rope":
            rope_global = _rope_tables(cfg.rope, cfg.head_dim, positions_bt)
            rope_local = _rope_tables(cfg.rope_local, cfg.head_dim, positions_bt) if cfg.rope_local else rope_global
        is_local_l = jnp.asarray([kind == "local" for kind in cfg.kinds])

        block_def, block_state = nnx.split(self.blocks)
        if layers is None:
            layers = cfg.num_layers
        layer_ids = tuple(range(layers)) if isinstance(layers, int) else tuple(layers)
        own_cache = cache.num_layers != cfg.num_layers
        if own_cache and cache.num_layers != len(layer_ids):
            raise ValueError(f"cache has {cache.num_layers} layers; running {len(layer_ids)} of {cfg.num_layers}")
        cache_ids = tuple(range(len(layer_ids))) if own_cache else layer_ids
        taps = tuple(int(t) for t in taps)
        # a tap is the input of a block that runs, or the output of the last block that runs (its index + 1)
        after = layer_ids[-1] + 1
        missing = [t for t in taps if t not in layer_ids and t != after]
        if missing or len(set(taps)) != len(taps):
            raise ValueError(f"taps {list(taps)} must be distinct inputs of the blocks that run ({layer_ids}) "
                             f"or {after}, the output of the last one; not {missing}")
        n_taps = len(taps)
        taps_nbtd = jnp.zeros((n_taps, B, T, cfg.dim), x_btd.dtype)

        def step(carry, ids):
            x_btd, cache, taps_nbtd, stacked = carry
            layer, cache_layer, slot = ids
            if n_taps:  # store this block's input at its tap slot (slot == n_taps: dropped)
                taps_nbtd = taps_nbtd.at[slot].set(x_btd, mode="drop")
            # The stacked weights ride in the carry behind an optimisation barrier, so XLA cannot hoist
            # work on the whole stack out of the loop: XLA:CPU computes a dynamic slice of bfloat16 in
            # float32, and with the weights loop-invariant it converted the entire [L, ...] stack to
            # float32 on every forward pass (bf16 decoding ran at ~0.3x of f32); behind the barrier
            # the conversion fuses into the slice of the one layer that runs.
            stacked = jax.lax.optimization_barrier(stacked)
            block_module = nnx.merge(block_def, jax.tree.map(lambda a: a[layer], stacked))
            local = is_local_l[layer]
            # with rings the sliding-window layers attend over their ring (below); the full cache's
            # layers are all global
            windowed = local & (not rings)
            if block:
                window = jnp.where(windowed, cfg.sliding_window, 0) if cfg.has_local_layers else 0

                def attend(q_btnh, cache, cache_layer):
                    return _attention_blocked(q_btnh, cache, cache_layer, positions_bt, window, block, cfg)
            else:
                mask_bts = jnp.where(windowed, local_bts, global_bts) if cfg.has_local_layers else global_bts

                def attend(q_btnh, cache, cache_layer):
                    return _attention(q_btnh, cache.keys(cache_layer), cache.values(cache_layer), mask_bts, cfg)
            if rings:
                full_attend = attend

                def attend(q_btnh, cache, cache_layer):
                    def ring():
                        return _attention(q_btnh, cache.ring_keys(cache_layer), cache.ring_values(cache_layer),
                                          ring_bts, cfg)
                    if only_rings:
                        return ring()
                    return jax.lax.cond(cache.is_ring(cache_layer), ring, lambda: full_attend(q_btnh, cache, cache_layer))
            rope_cs = None
            if rope_global is not None:
                if rope_local is rope_global:
                    rope_cs = rope_global
                else:
                    rope_cs = jax.tree.map(lambda g, l: jnp.where(local, l, g), rope_global, rope_local)
            x_btd, cache = block_module(x_btd, rope_cs, attend, positions_bt, cache, cache_layer, cfg)
            return (x_btd, cache, taps_nbtd, stacked), None

        slots = tuple(taps.index(j) if j in taps else n_taps for j in layer_ids)
        xs = (jnp.asarray(layer_ids, jnp.int32), jnp.asarray(cache_ids, jnp.int32), jnp.asarray(slots, jnp.int32))
        (x_btd, cache, taps_nbtd, _), _ = jax.lax.scan(step, (x_btd, cache, taps_nbtd, block_state), xs)
        if after in taps:
            taps_nbtd = taps_nbtd.at[taps.index(after)].set(x_btd)
        return self.final_norm(x_btd), cache, taps_nbtd

    def logits(self, hidden_btd):
        """Project hidden states to float32 logits [B,T,V]: the LM head accumulates and returns float32
        whatever the params' dtype (bfloat16 logits would be quantised to steps of 1/8 near 30, where
        a one-token and a (G+1)-token pass can round the top two apart)."""
        cfg = self.config
        if cfg.tie_embeddings:
            logits_btv = _project("btd,vd->btv", hidden_btd, self.embed.value, jnp.float32)
        else:
            logits_btv = _project("btd,dv->btv", hidden_btd, self.lm_head.value, jnp.float32)
        if cfg.final_softcap is not None:
            logits_btv = jnp.tanh(logits_btv / cfg.final_softcap) * cfg.final_softcap
        return logits_btv

    def __call__(self, tokens_bt, positions_bt, cache: KVCache, *, layers: int | tuple[int, ...] | None = None):
        hidden_btd, cache, _ = self.hidden(tokens_bt, positions_bt, cache, layers=layers)
        return self.logits(hidden_btd), cache
