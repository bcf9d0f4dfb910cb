"""EAGLE-3 drafter: a feature-level head that reads the target's hidden states, inside the loop's jit.

Axes: B batch, P padded prompt length, S buffer slots, G proposals per round, n tapped layers,
E the target's width, D the head's width, V the target's vocabulary, Vd the draft vocabulary.

The head's KV cache holds one entry per committed position t < length - 1: the target's fused
features at t with the token at t + 1 (the head input at t is shifted by one token). Its state also
keeps `out`, the head's output at the newest entry (position length - 2), whose logits give the first
proposal of the next round.

  prefill: one head pass over the prompt, entries (f_t, x_{t+1}) with x_P the first committed token.
  propose: proposal 1 from `out`; then G - 1 single-entry steps under `lax.scan`, step j feeding the
           head's own previous output with proposal j at position length - 2 + j (slots past the
           committed entries; the next observe overwrites them).
  observe: one head pass over the verify pass's G + 1 positions, entries written for exactly the
           committed ones (per row), `out` taken at the last of them.

Exactness: every proposal is drawn from the head's warped distribution over the draft vocabulary
(temperature, top-k, top-p applied there), and q is that distribution scattered into the target's
vocabulary (zero elsewhere); greedy rows take the draft argmax (a point mass). Draft ids that map
at or past the target's usable vocabulary are never drawn.

What the drafter relies on from the head module (`specjax.models.Eagle3Head` is one): `fuse(taps
[n,B,T,E]) -> [B,T,D]`, `step(embeds [B,T,D], hidden [B,T,D], positions [B,T], cache) -> (out
[B,T,D], cache)`, `logits(out) -> [B,T,Vd]` float32, `init_cache(batch, size)`, `target_ids` [Vd]
and, when `config.own_embedding`, `embed_tokens(tokens)`; otherwise the target's
`embed_tokens(tokens)` (its raw token embedding) is used.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from specjax import sampling as sampling_lib
from specjax.cache import KVCache
from specjax.errors import IncompatibleDraftError
from specjax.lm import LM
from specjax.rejection import Proposal
from specjax.sampling import RowSampling


@struct.dataclass
class EagleState:
    cache: KVCache  # the head's own, one layer, S slots
    out: jax.Array  # [B,D] the head's output (before its final norm) at the newest committed entry

    def logical_axes(self) -> "EagleState":
        return EagleState(cache=self.cache.logical_axes(), out=("batch", None))


def draw_reduced(u_b, logits_bd, target_ids_d, sampling: RowSampling, vocab_size: int | None, V: int):
    """One proposal per row from draft-vocabulary logits [B,Vd] -> (target ids [B], q [B,V]).

    A sampled row draws from its warped distribution over the draft vocabulary with its uniform
    u_b[b]; q is that distribution placed at the target ids (zero elsewhere). A greedy row takes the
    draft argmax; its q is the point mass. Draft ids mapping to target ids >= vocab_size are masked."""
    if vocab_size is not None:
        logits_bd = jnp.where(target_ids_d < vocab_size, logits_bd, -jnp.inf)
    B = logits_bd.shape[0]
    ids_b = target_ids_d[sampling_lib.argmax(logits_bd)]
    point_bv = jax.nn.one_hot(ids_b, V, dtype=jnp.float32)

    def sampled(x):
        q_bd = sampling_lib.warp(x, sampling)  # point masses for greedy rows
        drawn_b = target_ids_d[sampling_lib.inverse_cdf(u_b, q_bd)]
        q_bv = jnp.zeros((B, V), jnp.float32).at[:, target_ids_d].set(q_bd)
        return jnp.where(sampling.greedy, ids_b, drawn_b), q_bv

    return jax.lax.cond(jnp.all(sampling.greedy), lambda x: (ids_b, point_bv), sampled, logits_bd)


@dataclasses.dataclass(frozen=True)
class EagleDrafter:
    head: LM  # the head's static half (graphdef and Eagle3Config)
    target: LM  # the target's static half (for its token embedding)
    taps: tuple[int, ...]  # the target layers the head reads, in the order its fc concatenates them
    name: str = "eagle"
    may_abstain: bool = False
    default_cost = 0.05  # a one-layer head over a pruned vocabulary (measured 0.015-0.03 on SmolLM2)

    def _embed(self, head, target_params, tokens_bt):
        if head.config.own_embedding:
            return head.embed_tokens(tokens_bt)
        return self.target.module(target_params).embed_tokens(tokens_bt)

    def init(self, draft_params, target_params, batch: int, size: int) -> EagleState:
        head = self.head.module(draft_params)
        return EagleState(cache=head.init_cache(batch, size), out=jnp.zeros((batch, head.config.dim), head.dtype))

    def prefill(self, draft_params, target_params, dstate: EagleState, prefill) -> EagleState:
        head = self.head.module(draft_params)
        tokens_bp, positions_bp = prefill.tokens, prefill.positions
        P = tokens_bp.shape[1]
        last_b = jnp.maximum((positions_bp >= 0).sum(axis=1) - 1, 0)  # the last prompt position
        next_bp = jnp.concatenate([tokens_bp[:, 1:], jnp.zeros_like(tokens_bp[:, :1])], axis=1)
        next_bp = jnp.where(jnp.arange(P) == last_b[:, None], prefill.first[:, None], next_bp)
        out_bpd, cache = head.step(self._embed(head, target_params, next_bp), head.fuse(prefill.taps), positions_bp,
                                   dstate.cache)
        out_bd = jnp.take_along_axis(out_bpd, last_b[:, None, None], axis=1)[:, 0]
        return EagleState(cache=cache, out=out_bd)

    def propose(self, draft_params, target_params, state, keys, gamma, sampling, vocab_size):
        head = self.head.module(draft_params)
        dstate: EagleState = state.draft
        target_ids_d = head.target_ids.value
        V = self.target.config.vocab_size
        u_gb = sampling_lib.uniform(keys, (gamma,)).T
        first_b, first_q = draw_reduced(u_gb[0], head.logits(dstate.out[:, None])[:, 0], target_ids_d, sampling,
                                        vocab_size, V)
        pos_b = jnp.where(state.done, -1, state.lengths - 1)

        def step(carry, u_b):
            cache, out_bd, prev_b, pos_b = carry
            emb_b1d = self._embed(head, target_params, prev_b[:, None])
            out_b1d, cache = head.step(emb_b1d, out_bd[:, None], pos_b[:, None], cache)
            tok_b, q_bv = draw_reduced(u_b, head.logits(out_b1d)[:, 0], target_ids_d, sampling, vocab_size, V)
            return (cache, out_b1d[:, 0], tok_b, jnp.where(pos_b < 0, -1, pos_b + 1)), (tok_b, q_bv)

        (cache, _, _, _), (rest_gb, rest_q) = jax.lax.scan(step, (dstate.cache, dstate.out, first_b, pos_b), u_gb[1:])
        tokens_bg = jnp.concatenate([first_b[:, None], rest_gb.T], axis=1)
        q_bgv = jnp.concatenate([first_q[:, None], jnp.swapaxes(rest_q, 0, 1)], axis=1)
        return Proposal(tokens_bg, q_bgv), state.replace(draft=dstate.replace(cache=cache))

    def observe(self, draft_params, target_params, dstate: EagleState, observation) -> EagleState:
        head = self.head.module(draft_params)
        tokens_bt = observation.tokens  # [B,G+1]: newest committed token, then the proposals
        T = tokens_bt.shape[1]
        j_t = jnp.arange(T)
        # entry j pairs the features at positions[j] with the token after it: proposal j + 1 while
        # accepted, then the token the rule drew
        next_bt = jnp.concatenate([tokens_bt[:, 1:], jnp.zeros_like(tokens_bt[:, :1])], axis=1)
        next_bt = jnp.where(j_t == observation.accepted[:, None], observation.next_tokens[:, None], next_bt)
        committed_b = observation.committed
        positions_bt = jnp.where(j_t < committed_b[:, None], observation.positions, -1)
        out_btd, cache = head.step(self._embed(head, target_params, jnp.maximum(next_bt, 0)),
                                   head.fuse(observation.taps), positions_bt, dstate.cache)
        newest_bd = jnp.take_along_axis(out_btd, jnp.maximum(committed_b - 1, 0)[:, None, None], axis=1)[:, 0]
        return EagleState(cache=cache, out=jnp.where((committed_b > 0)[:, None], newest_bd, dstate.out))


def eagle_drafter(head_module, target_module) -> tuple[EagleDrafter, Any]:
    """(drafter, params) for a loaded head over a target module; `IncompatibleDraftError` naming the
    mismatch when the head was built for another target."""
    hc, tc = head_module.config, target_module.config
    taps = hc.taps_for(tc.num_layers)
    L = tc.num_layers
    if len(set(taps)) != len(taps) or not all(0 <= t <= L for t in taps):
        where = "its config" if hc.taps else f"the default (2, L // 2, L - 3) for L = {L}"
        raise IncompatibleDraftError(f"EAGLE-3 head taps {taps} (from {where}) must be distinct layers in [0, {L}] "
                                     "of the target")
    if hc.target_dim != tc.dim:
        raise IncompatibleDraftError(f"EAGLE-3 head reads target hidden states of width {hc.target_dim} "
                                     f"({hc.num_taps} x {hc.target_dim} into its fc); the target's hidden size is {tc.dim}")
    if not hc.own_embedding and hc.dim != tc.dim:
        raise IncompatibleDraftError(f"EAGLE-3 head of hidden size {hc.dim} has no embedding of its own, and the "
                                     f"target's embedding is {tc.dim} wide")
    if hc.vocab_size > tc.vocab_size:
        raise IncompatibleDraftError(f"EAGLE-3 head vocabulary {hc.vocab_size} exceeds the target's {tc.vocab_size}")
    max_id = int(jnp.max(head_module.target_ids.value))
    if max_id >= tc.vocab_size:
        raise IncompatibleDraftError(f"EAGLE-3 head maps a draft id to target id {max_id}, past the target's "
                                     f"vocabulary of {tc.vocab_size}")
    head_lm, params = LM.split(head_module)
    return EagleDrafter(head_lm, LM.split(target_module)[0], tuple(taps)), params
