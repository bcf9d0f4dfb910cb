"""Small draft models distilled from the target (DistillSpec-style).

A draft model is a separate Transformer of the target's family with few layers: the target's token
embedding, a chosen subset of its blocks (copied, then trained), its final norm and LM head
(`init_draft`). Training matches the draft's next-token distribution to the target's under one of
`losses.DIVERGENCES` at a chosen temperature. The target's logits are computed in the same jitted
step, over the whole vocabulary, so every divergence is exact (reverse KL and total variation need
the target's probability of every token the draft puts mass on, which a stored top-k cannot give).

Axes: B sequences, T tokens, V the vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from specjax.errors import ConfigError
from specjax.distill import losses


def default_layers(num_layers: int, count: int = 4) -> tuple[int, ...]:
    """`count` blocks spread over the target: the first, the last and evenly between."""
    count = max(1, min(count, num_layers))
    return tuple(sorted({int(round(i * (num_layers - 1) / max(count - 1, 1))) for i in range(count)}))


def init_draft(target, layers):
    """-> a draft LoadedModel made of `target`'s embedding, blocks `layers` (in that order), final norm
    and LM head (copies). Shares the target's tokenizer."""
    from specjax.models import LoadedModel
    from specjax.models.convert import select_blocks

    cfg = target.module.config
    layers = tuple(int(i) for i in layers)
    if not layers or any(not 0 <= i < cfg.num_layers for i in layers) or len(set(layers)) != len(layers):
        raise ConfigError(f"draft layers {list(layers)} must be distinct block indices in [0, {cfg.num_layers})")
    return LoadedModel(name=f"{getattr(target, 'name', 'target')}-draft{len(layers)}",
                       module=select_blocks(target.module, layers), tokenizer=getattr(target, "tokenizer", None))


def _logits(module, tokens_bt):
    B, T = tokens_bt.shape
    positions_bt = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    logits_btv, _ = module(tokens_bt, positions_bt, module.init_cache(B, T))
    return logits_btv


def distill_loss(draft_module, target_module, batch, *, divergence: str, temperature: float = 1.0,
                 beta: float = 0.5):
    """-> (loss, metrics). batch: tokens [B,T], prompt_lengths [B], lengths [B]. Position t predicts
    token t + 1; it counts when that token is a response token of the sequence. Metrics: top-1
    agreement with the target and 1 - TV at temperature 1 (the expected acceptance of one sampled
    proposal, Leviathan et al.)."""
    tokens_bt = batch["tokens"]
    B, T = tokens_bt.shape
    p_btv = jax.lax.stop_gradient(_logits(target_module, tokens_bt))
    q_btv = _logits(draft_module, tokens_bt)
    per_bt = losses.divergence(divergence, p_btv, q_btv, temperature, beta)
    nxt = jnp.arange(T)[None] + 1
    valid_bt = (nxt >= batch["prompt_lengths"][:, None]) & (nxt < batch["lengths"][:, None])
    count = jnp.maximum(valid_bt.sum(), 1)
    loss = jnp.sum(jnp.where(valid_bt, per_bt, 0.0)) / count
    agree = jnp.argmax(p_btv, -1) == jnp.argmax(q_btv, -1)
    accept = 1.0 - losses.total_variation(p_btv, q_btv)
    metrics = {"acc0": jnp.sum(agree & valid_bt) / count,
               "accept_t1": jnp.sum(jnp.where(valid_bt, accept, 0.0)) / count}
    return loss, metrics
