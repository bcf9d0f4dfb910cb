"""Micro-measurements for the formulas: target step time, verify cost ratio v, drafter cost ratio c.

  target step   one jitted target forward of T = 1 token per row, on a cache of `size` slots
  v             (G + 1)-token verify time / 1-token step time
  c             drafter `propose` time for G proposals (the loop's `draft` step) / (G * target step time),
                timed as PROPOSALS_PER_CALL proposals inside one `lax.fori_loop` per call: work XLA hoists
                out of a loop (once per call, e.g. a bfloat16 table converted for a gather) is then
                amortised as the decode loop amortises it, instead of charged to every proposal

Each figure is the median of `repeats` timed calls after a warm-up call (which compiles). Every
jitted function returns all it computed (logits and cache), so XLA cannot drop any of the work.
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from specjax import loop
from specjax.config import SamplingConfig
from specjax.lm import LM
from specjax.sampler import Sampler

SIZE = 512  # cache slots of every timed call
PROPOSALS_PER_CALL = 8
CONTEXT = 256  # committed tokens per row before the timed step


def _median_time(fn, *args, repeats: int = 20) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def context_tokens(batch: int, length: int, vocab: int) -> np.ndarray:
    """[batch, length] ids of a repeating pattern: the committed text every timed call follows."""
    return np.broadcast_to(np.arange(length) * 7 % min(vocab, 97), (batch, length)).astype(np.int32)


class StepTimer:
    """Times the target's 1-token step and its (G+1)-token verify. The jitted forwards are built
    once; `measure` re-times them, so every benchmark point gets figures taken next to its own run
    (the machine is shared: a figure measured once at the start can be stale by the end)."""

    def __init__(self, lm: LM, params, *, batch: int, size: int = SIZE, context: int = CONTEXT):
        self.lm, self.params = lm, params

        @functools.partial(jax.jit, static_argnames=("T",))
        def forward(params, cache, T):  # -> (logits, cache, taps), as the decode loop's passes
            tokens_bt = jnp.ones((batch, T), jnp.int32)
            positions_bt = jnp.broadcast_to(context - 1 + jnp.arange(T), (batch, T))
            return lm.forward(params, tokens_bt, positions_bt, cache)

        self.forward = forward
        self.cache = lm.init_cache(params, batch, size)  # slots are positions: any may be written

    def measure(self, gammas, repeats: int = 20) -> dict:
        """-> {"target_step_s": t1, "verify_s": {G: t}, "v": {G: t / t1}}."""
        t1 = _median_time(lambda: self.forward(self.params, self.cache, 1), repeats=repeats)
        verify = {g: _median_time(lambda g=g: self.forward(self.params, self.cache, g + 1), repeats=repeats)
                  for g in gammas}
        return {"target_step_s": t1, "verify_s": verify, "v": {g: t / t1 for g, t in verify.items()}}


def drafter_time(sampler: Sampler, *, batch: int, sampling: SamplingConfig, target_step_s: float,
                 size: int = SIZE, context: int = CONTEXT, repeats: int = 20) -> dict:
    """-> {"propose_s": t, "c": t / (G * target step)} for the sampler's drafter and G.

    The state is the one the loop itself builds: `Decoder.start` over `context` prompt tokens
    (the target's prefill, the drafter's `init` and `prefill`), so the drafter proposes from the
    caches it would have mid-decode."""
    gamma = sampler.gamma
    dec = loop.Decoder(lm=sampler.lm, size=size, vocab_size=sampler.vocab_limit, drafter=sampler.drafter, gamma=gamma)
    prompt_bp = context_tokens(batch, context, sampler.vocab_rows)
    batch_in = loop.Batch.make(prompt_bp, np.full((batch,), context, np.int32), sampling=sampling,
                               max_new_tokens=size - context - gamma - 2, key=jax.random.key(0),
                               vocab_size=sampler.vocab_limit)
    if getattr(sampler.drafter, "own_prompt", False):  # a draft with its own tokenizer: a context in its ids
        rows = sampler.drafter.lm.config.vocab_size
        batch_in = batch_in.replace(draft_prompt=jnp.asarray(context_tokens(batch, context, rows)),
                                    draft_lengths=jnp.full((batch,), context, jnp.int32))
    params, draft_params = sampler.params, sampler.draft_params
    state = jax.jit(dec.start)(params, draft_params, batch_in)
    keys_b = jax.random.split(jax.random.key(1), batch)

    @jax.jit
    def propose(draft_params, params, state):  # every proposal feeds the result: no dead code
        def one(_, carry):
            state, total = carry
            proposal, state = loop.draft(dec, params, draft_params, state, keys_b)
            return state, total + proposal.tokens.sum()

        return jax.lax.fori_loop(0, PROPOSALS_PER_CALL, one, (state, jnp.zeros((), jnp.int32)))

    t = _median_time(propose, draft_params, params, state, repeats=max(3, repeats // PROPOSALS_PER_CALL))
    t /= PROPOSALS_PER_CALL
    return {"propose_s": t, "c": t / (gamma * target_step_s)}


def emit(report: dict, table: str, json_path: str | None) -> None:
    """A cost bench's ending: its markdown table on stdout, its report as JSON at `json_path` if given."""
    import json

    print(table)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2)
