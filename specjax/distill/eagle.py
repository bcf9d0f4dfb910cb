"""Training an EAGLE-3 head: the training-time-test (TTT) unroll and its loss.

Axes: B sequences, T tokens per sequence, n taps, E the target's width, D the head's width, Vd the
draft vocabulary, k the stored top-k of the target's logits, U unroll steps.

A sequence x_0 .. x_{T-1} comes with the target's tapped features f_t and its top-k logits at every
position. Entry t (t = 0 .. T-2) is the head's input at position t: features f_t with the embedding
of x_{t+1}. Unroll step 0 computes every entry from the target's features (causal attention over
the entries) and predicts x_{t+2}, whose target distribution sits at position t + 1. Step u > 0
feeds each entry the head's own step u - 1 output in place of f_{t+u}, with token x_{t+1+u} at
position t + u, and predicts x_{t+2+u}: exactly what `drafters.eagle` computes at draft step u + 1.
Its query attends to the step-0 entries at positions <= t (the committed context, keyed by target
features) and to its own entries of steps 1 .. u at index t (the draft's own earlier steps), which
is the draft cache of decoding.

The loss at step u and entry t is the soft cross-entropy between the target's distribution at
position t + 1 + u, restricted to the draft vocabulary (from its stored top-k logits), and the
head's distribution over the draft vocabulary, weighted by decay**u; entries count when the
predicted token lies in the response (or anywhere past the first token with `on_prompt`), exists,
and the target's top token is in the draft vocabulary (elsewhere only the residual can produce it:
nothing to learn).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_MASKED = -1e30


def ttt_outputs(head, embed_table, taps_nbte, tokens_bt, steps: int):
    """The head's outputs [U, B, T-1, D] (before its final norm) for U = `steps` unroll steps.
    embed_table [V, D]: the token embedding the head uses (the target's, or its own)."""
    B, T = tokens_bt.shape
    E1 = T - 1
    t_e = jnp.arange(E1)
    positions_be = jnp.broadcast_to(t_e, (B, E1))
    hidden_bed = head.fuse(taps_nbte[:, :, :E1])
    causal_ee = t_e[None, :] <= t_e[:, None]  # [query, key]
    keys, values, outs = [], [], []
    scale = head.config.head_dim ** -0.5
    for u in range(steps):
        shifted_bt = jnp.concatenate([tokens_bt[:, 1 + u:], jnp.zeros((B, u), tokens_bt.dtype)], axis=1)[:, :E1]
        emb_bed = jnp.take(embed_table, shifted_bt, axis=0)
        q_benh, k_bekh, v_bekh, residual_bed = head.attention_inputs(emb_bed, hidden_bed, positions_be + u)
        N, K = q_benh.shape[2], k_bekh.shape[2]
        q_bekrh = q_benh.reshape(B, E1, K, N // K, -1).astype(jnp.float32)
        keys.append(k_bekh.astype(jnp.float32))
        values.append(v_bekh.astype(jnp.float32))
        s0_bkreE = jnp.einsum("bekrh,bskh->bkres", q_bekrh, keys[0]) * scale
        s0_bkreE = jnp.where(causal_ee[None, None, None], s0_bkreE, _MASKED)
        # the query's own earlier draft steps 1 .. u, one key each at its own index
        sd_bkreU = jnp.stack([jnp.einsum("bekrh,bekh->bkre", q_bekrh, kk) for kk in keys[1:]], axis=-1) * scale \
            if u else jnp.zeros(s0_bkreE.shape[:-1] + (0,), jnp.float32)
        probs = jax.nn.softmax(jnp.concatenate([s0_bkreE, sd_bkreU], axis=-1), axis=-1)
        attn_bekrh = jnp.einsum("bkres,bskh->bekrh", probs[..., :E1], values[0])
        for j, vv in enumerate(values[1:]):
            attn_bekrh = attn_bekrh + probs[..., E1 + j].transpose(0, 3, 1, 2)[..., None] * vv[:, :, :, None, :]
        out_bed = head.after_attention(residual_bed, attn_bekrh.reshape(B, E1, N, -1))
        outs.append(out_bed)
        hidden_bed = out_bed
    return jnp.stack(outs)


def ttt_loss(head, embed_table, batch, *, steps: int, decay: float = 0.8, draft_index_v=None, on_prompt: bool = False):
    """-> (loss, metrics). batch: tokens [B,T], taps [n,B,T,E], topk_ids / topk_logits [B,T,k] (the
    target's top-k at every position; -inf for none), prompt_lengths [B], lengths [B].
    draft_index_v [V]: draft id of each target id, -1 outside the draft vocabulary."""
    tokens_bt = batch["tokens"]
    B, T = tokens_bt.shape
    E1 = T - 1
    outs = ttt_outputs(head, embed_table, batch["taps"], tokens_bt, steps)
    t_e = jnp.arange(E1)
    total, weights, metrics = 0.0, 0.0, {}
    for u in range(steps):
        logq_bed = jax.nn.log_softmax(head.logits(outs[u]), axis=-1)
        pos_be = t_e[None] + 1 + u  # the target position whose distribution is predicted
        src = jnp.minimum(pos_be, T - 1)
        ids_bek = jnp.take_along_axis(batch["topk_ids"], src[..., None], axis=1)
        vals_bek = jnp.take_along_axis(batch["topk_logits"], src[..., None], axis=1).astype(jnp.float32)
        didx_bek = draft_index_v[ids_bek]
        in_draft = didx_bek >= 0
        # the target's distribution restricted to the draft vocabulary (its top-k part of it)
        target_bek = jnp.where(in_draft, vals_bek, _MASKED)  # finite: a row with none in draft stays NaN-free
        draft_bek = jnp.take_along_axis(logq_bed, jnp.maximum(didx_bek, 0), axis=-1)
        # soft cross-entropy against the head's log q over the whole draft vocabulary
        p_bek = jax.nn.softmax(target_bek, axis=-1)
        ce_be = -jnp.sum(jnp.where(in_draft, p_bek * draft_bek, 0.0), axis=-1)
        top_in_draft = in_draft[..., 0]  # top-k comes sorted: entry 0 is the target's argmax
        first = 1 if on_prompt else batch["prompt_lengths"][:, None]  # the first predicted token that counts
        valid_be = ((pos_be + 1 >= first) & (pos_be + 1 < batch["lengths"][:, None])
                    & top_in_draft)
        count = jnp.maximum(valid_be.sum(), 1)
        step_loss = jnp.sum(jnp.where(valid_be, ce_be, 0.0)) / count
        agree = (jnp.argmax(logq_bed, axis=-1) == jnp.where(top_in_draft, didx_bek[..., 0], -1))
        metrics[f"acc{u}"] = jnp.sum(agree & valid_be) / count
        metrics[f"loss{u}"] = step_loss
        total = total + decay ** u * step_loss
        weights += decay ** u
    return total / weights, metrics
