"""Draft model: a second language model with the target's tokenizer, with its own KV cache.

Each round it re-syncs on the two newest committed tokens (one forward of T = 2), then runs G - 1
single-token steps under `lax.scan`, drawing each proposal from its own warped distribution.
With `layers` and `shares_target_params`, the same machinery runs a subset of the target's own
blocks with a cache of its own (the "own cache" variant of the layer-skip drafter).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from specjax.drafters.base import Stateless, last_two, rollout
from specjax.lm import LM


@dataclasses.dataclass(frozen=True)
class ModelDrafter(Stateless):
    lm: LM
    layers: tuple[int, ...] | None = None  # run only these blocks (None: all of the draft model)
    shares_target_params: bool = False  # True: the blocks are the target's (no draft params)
    target_vocab: int | None = None  # pad / cut q to the target's vocabulary when it differs
    name: str = "model"
    may_abstain: bool = False
    must_observe = True  # its cache re-syncs on the two newest tokens only

    def _params(self, draft_params, target_params):
        return target_params if self.shares_target_params else draft_params

    def init(self, draft_params, target_params, batch: int, size: int):
        layers = None if self.layers is None else len(self.layers)
        return self.lm.init_cache(self._params(draft_params, target_params), batch, size, layers=layers)

    def prefill(self, draft_params, target_params, cache, prefill):
        last_b = jnp.zeros((prefill.tokens.shape[0],), jnp.int32)  # one row of logits, unused
        _, cache, _ = self.lm.prefill_at(self._params(draft_params, target_params), prefill.tokens, prefill.positions,
                                         cache, last_b, chunk=prefill.chunk, layers=self.layers)  # chunked as the target
        return cache

    def propose(self, draft_params, target_params, state, keys, gamma, sampling, vocab_size):
        params = self._params(draft_params, target_params)

        def apply(tokens_bt, positions_bt, cache):
            logits_btv, cache, _ = self.lm.forward(params, tokens_bt, positions_bt, cache, layers=self.layers)
            return logits_btv, cache

        tokens_b2, positions_b2 = last_two(state)
        logits_b2v, cache = apply(tokens_b2, positions_b2, state.draft)
        start_b = jnp.where(positions_b2[:, 1] < 0, -1, positions_b2[:, 1] + 1)
        proposal, cache = rollout(apply, cache, logits_b2v[:, 1], start_b, keys, gamma, sampling, vocab_size)
        q_bgv = proposal.q
        if q_bgv is not None and self.target_vocab is not None and q_bgv.shape[-1] != self.target_vocab:
            extra = self.target_vocab - q_bgv.shape[-1]  # ids past the shared vocabulary have q = 0
            q_bgv = jnp.pad(q_bgv, ((0, 0), (0, 0), (0, extra))) if extra > 0 else q_bgv[..., :self.target_vocab]
            proposal = proposal.replace(q=q_bgv)
        return proposal, state.replace(draft=cache)
