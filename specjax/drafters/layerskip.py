"""Layer skip (self-speculative decoding): the draft is a subset of the target's own blocks, its
final norm and its head, running on the target's weights (no second copy in memory).

Two ways to give the draft its keys and values, both implemented (`cache="shared"` / `"own"`):

- shared (the default): the draft reads and writes the target's KV cache. For committed positions
  it attends to the target's verified entries; for the tokens it drafts it writes entries of its own
  blocks into the target cache's next slots, which the verify pass then overwrites. No extra cache
  memory, no draft prefill, and no re-sync step: each round is exactly G single-token draft steps.
  For a prefix of the layers (the first K) this is the same computation as a private cache, because
  block j's keys and values at committed positions are identical in draft and target. For other
  subsets the draft sees the target's (better informed) entries instead of its own.
- own: a private cache for the subset, filled at prefill and re-synced each round on the two newest
  tokens (a T = 2 step), as a separate draft model would be. Costs K/L of the target's cache memory,
  a prefill over the prompt and one extra token of work per round.

Measured on SmolLM2-135M-Instruct (BENCHMARKS.md, "Layer skip: sharing the target's cache or keeping
its own"): with the same blocks, acceptance is the same for a prefix and the shared cache is faster
per round, so it is the default. Exactness holds either way: the rule only needs the distribution
the proposals came from.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from specjax.drafters.base import Stateless, rollout
from specjax.drafters.model import ModelDrafter
from specjax.errors import ConfigError
from specjax.lm import LM


@dataclasses.dataclass(frozen=True)
class SharedCacheLayerSkip(Stateless):
    lm: LM  # the target's static half
    layers: tuple[int, ...]
    name: str = "layerskip"
    may_abstain: bool = False

    @property
    def default_cost(self) -> float:
        return len(self.layers) / self.lm.config.num_layers

    def propose(self, draft_params, target_params, state, keys, gamma, sampling, vocab_size):
        def apply(tokens_bt, positions_bt, cache):
            logits_btv, cache, _ = self.lm.forward(target_params, tokens_bt, positions_bt, cache, layers=self.layers)
            return logits_btv, cache

        idx_b = jnp.maximum(state.lengths - 1, 0)
        newest_b = jnp.take_along_axis(state.tokens, idx_b[:, None], axis=1)[:, 0]
        pos_b = jnp.where(state.done, -1, state.lengths - 1)
        logits_b1v, cache = apply(newest_b[:, None], pos_b[:, None], state.cache)
        start_b = jnp.where(pos_b < 0, -1, pos_b + 1)
        proposal, cache = rollout(apply, cache, logits_b1v[:, 0], start_b, keys, gamma, sampling, vocab_size)
        return proposal, state.replace(cache=cache)


def parse_layers(spec: str, num_layers: int) -> tuple[int, ...]:
    """"K" -> the first K blocks; "0-9,20-29" or "0,1,2,5" -> that subset (sorted, unique)."""
    spec = spec.strip()
    try:
        if spec.isdigit():
            k = int(spec)
            layers = tuple(range(k))
        else:
            ids: set[int] = set()
            for part in spec.split(","):
                lo, _, hi = part.partition("-")
                ids.update(range(int(lo), int(hi or lo) + 1))
            layers = tuple(sorted(ids))
    except ValueError as err:
        raise ConfigError(f"layer-skip layers {spec!r}: expected K, or ranges like 0-9,20-29") from err
    if not layers or layers[0] < 0 or layers[-1] >= num_layers:
        raise ConfigError(f"layer-skip layers {spec!r} must lie in [0, {num_layers}) and not be empty")
    return layers


def layer_skip(lm: LM, layers: tuple[int, ...], cache: str = "shared"):
    """The layer-skip drafter over the target `lm` (params are the target's)."""
    if cache == "shared":
        return SharedCacheLayerSkip(lm, tuple(layers))
    if cache == "own":
        return ModelDrafter(lm, layers=tuple(layers), shares_target_params=True, name="layerskip-own")
    raise ConfigError(f"layer-skip cache must be 'shared' or 'own', got {cache!r}")
