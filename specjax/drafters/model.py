"""Draft model: a second, smaller language model with the target's tokenizer, with its own KV cache.

Each round it re-syncs on the two newest committed tokens, then runs G - 1 single-token steps under
`lax.scan`, drawing each proposal from its own warped distribution.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specjax.drafters.base import draw, last_two
from specjax.lm import LM


@dataclasses.dataclass(frozen=True)
class ModelDrafter:
    lm: LM
    name: str = "model"

    def init(self, draft_params, batch: int, size: int):
        return self.lm.init_cache(draft_params, batch, size)

    def prefill(self, draft_params, target_params, cache, prompt_bp, positions_bp):
        _, cache = self.lm.module(draft_params).hidden(prompt_bp, positions_bp, cache)
        return cache

    def propose(self, draft_params, target_params, cache, state, key, gamma, sampling, vocab_size):
        tokens_b2, positions_b2 = last_two(state)
        logits_b2v, cache = self.lm.apply(draft_params, tokens_b2, positions_b2, cache)
        keys = jax.random.split(key, gamma)
        first_b, first_q = draw(keys[0], logits_b2v[:, 1], sampling, vocab_size)

        def step(carry, key_i):
            cache, prev_b, pos_b = carry
            logits_b1v, cache = self.lm.apply(draft_params, prev_b[:, None], pos_b[:, None], cache)
            tok_b, q_bv = draw(key_i, logits_b1v[:, 0], sampling, vocab_size)
            return (cache, tok_b, jnp.where(pos_b < 0, -1, pos_b + 1)), (tok_b, q_bv)

        start_b = jnp.where(positions_b2[:, 1] < 0, -1, positions_b2[:, 1] + 1)
        (cache, _, _), (rest_gb, rest_q) = jax.lax.scan(step, (cache, first_b, start_b), keys[1:])
        tokens_bg = jnp.concatenate([first_b[:, None], rest_gb.T], axis=1)
        if first_q is None:
            return tokens_bg, None, cache
        q_bgv = jnp.concatenate([first_q[:, None], jnp.swapaxes(rest_q, 0, 1)], axis=1)
        return tokens_bg, q_bgv, cache
