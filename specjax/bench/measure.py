"""Micro-measurements for the formulas: target step time, verify cost ratio v, drafter cost ratio c.

  target step   one jitted target forward of T = 1 token per row, on a cache of `size` slots
  v             (G + 1)-token verify time / 1-token step time
  c             drafter `propose` time for G proposals / (G * target step time)

Each figure is the median of `repeats` timed calls after a warm-up call (which compiles).
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp

from specjax import loop
from specjax.config import SamplingConfig
from specjax.lm import LM


def _median_time(fn, *args, repeats: int = 20) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _state(lm: LM, params, batch: int, size: int, context: int, gamma: int, vocab: int) -> loop.SpecState:
    """A decode state whose rows hold `context` committed tokens of a repeating pattern."""
    tokens = (jnp.arange(size)[None] * 7 % min(vocab, 97)).astype(jnp.int32)
    tokens = jnp.broadcast_to(tokens, (batch, size))
    lengths = jnp.full((batch,), context, jnp.int32)
    cache = lm.init_cache(params, batch, size)
    return loop.SpecState(tokens=tokens, lengths=lengths, prompt_lengths=lengths, done=jnp.zeros((batch,), bool),
                          cache=cache.rollback(lengths - 1), draft=None, key=jax.random.key(0),
                          steps=jnp.zeros((), jnp.int32), stats=loop.SpecStats.zeros(batch, gamma))


class StepTimer:
    """Times the target's 1-token step and its (G+1)-token verify. The jitted forwards are built
    once; `measure` re-times them, so every benchmark point gets figures taken next to its own run
    (the machine is shared: a figure measured once at the start can be stale by the end)."""

    def __init__(self, target, *, batch: int, size: int = 512, context: int = 256):
        self.lm, self.params = LM.split(target.module)
        self.batch, self.context = batch, context
        lm = self.lm

        @functools.partial(jax.jit, static_argnames=("T",))
        def forward(params, cache, T):  # returns the cache too, as the decode loop does
            tokens = jnp.ones((batch, T), jnp.int32)
            positions = jnp.broadcast_to(context - 1 + jnp.arange(T), (batch, T))
            return lm.apply(params, tokens, positions, cache)

        self.forward = forward
        self.cache = lm.init_cache(self.params, batch, size).rollback(jnp.full((batch,), context - 1))

    def measure(self, gammas, repeats: int = 20) -> dict:
        """-> {"target_step_s": t1, "verify_s": {G: t}, "v": {G: t / t1}}."""
        t1 = _median_time(lambda: self.forward(self.params, self.cache, 1), repeats=repeats)
        verify = {g: _median_time(lambda g=g: self.forward(self.params, self.cache, g + 1), repeats=repeats)
                  for g in gammas}
        return {"target_step_s": t1, "verify_s": verify, "v": {g: t / t1 for g, t in verify.items()}}


def drafter_time(target, drafter, draft_params, *, batch: int, gamma: int, sampling: SamplingConfig,
                 target_step_s: float, size: int = 512, context: int = 256, repeats: int = 20) -> dict:
    """-> {"propose_s": t, "c": t / (G * target step)} for one drafter and G."""
    lm, params = LM.split(target.module)
    vocab = lm.config.vocab_size
    state = _state(lm, params, batch, size, context, gamma, vocab)
    state = state.replace(draft=drafter.init(draft_params, params, batch, size))

    @jax.jit
    def propose(draft_params, params, state):  # everything returned, so no draft work is dead code
        return drafter.propose(draft_params, params, state, jax.random.key(1), gamma, sampling, None)

    t = _median_time(propose, draft_params, params, state, repeats=repeats)
    return {"propose_s": t, "c": t / (gamma * target_step_s)}
