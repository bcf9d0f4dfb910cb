"""Prompt lookup: propose the tokens that followed the latest earlier occurrence of the context's tail.

Per row, for n from `nmax` down to `nmin`, the last n committed tokens are searched for in the
committed buffer (prompt and everything generated so far), as a fixed-shape comparison of shifted
views on device. The longest n with a match wins; among its matches the most recent one. Up to G
tokens that followed it (and that are themselves committed) are proposed as point masses. A row
with no match proposes nothing (-1), and nothing is proposed after an EOS token.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specjax.drafters.base import Stateless
from specjax.errors import ConfigError
from specjax.rejection import Proposal


@dataclasses.dataclass(frozen=True)
class NGramDrafter(Stateless):
    nmax: int = 3
    nmin: int = 1
    name: str = "ngram"
    may_abstain: bool = True
    proposes_once = True
    default_cost = 0.0

    def __post_init__(self):
        if not 1 <= self.nmin <= self.nmax:
            raise ConfigError(f"ngram sizes must satisfy 1 <= NMIN <= NMAX, got NMAX={self.nmax} NMIN={self.nmin}")

    def propose(self, draft_params, target_params, state, keys, gamma, sampling, vocab_size):
        tokens_bg, _ = lookup(state.tokens, state.lengths, gamma, nmax=self.nmax, nmin=self.nmin,
                              eos_be=state.eos_ids)
        return Proposal(jnp.where(state.done[:, None], -1, tokens_bg)), state


def lookup(tokens_bs, lengths_b, gamma: int, *, nmax: int, nmin: int = 1, eos_be=None):
    """-> (proposals [B,G] with -1 where there is none, match length n [B] (0 = no match)).

    For every place e a continuation could start (e <= L - 1, so it is committed), the length of the
    match ending just before e is counted backwards against the row's tail, one token per step of a
    `lax.fori_loop` capped at min(nmax, S): device work grows with nmax, trace size does not. The
    longest match (at least nmin) wins; among equally long ones, the latest.

    eos_be [B,E]: each row's EOS ids (-1 = unused slot); nothing is proposed after one."""
    B, S = tokens_bs.shape
    L_b1 = lengths_b[:, None]
    e_s = jnp.arange(S)  # a match occupies [e - n, e); its continuation starts at e

    def extend(j, carry):  # does the match ending before e also agree j tokens back?
        alive_bs, run_bs = carry
        back_b1 = L_b1 - 1 - j
        tail_b1 = jnp.take_along_axis(tokens_bs, jnp.clip(back_b1, 0, S - 1), axis=1)
        here_s = e_s - 1 - j
        cand_bs = jnp.take_along_axis(tokens_bs, jnp.broadcast_to(jnp.clip(here_s, 0, S - 1), (B, S)), axis=1)
        alive_bs = alive_bs & (here_s >= 0) & (back_b1 >= 0) & (cand_bs == tail_b1)
        return alive_bs, run_bs + alive_bs

    usable_bs = (e_s >= 1) & (e_s <= L_b1 - 1)
    _, run_bs = jax.lax.fori_loop(0, min(nmax, S), extend, (usable_bs, jnp.zeros((B, S), jnp.int32)))
    found_n_b = jnp.max(run_bs, axis=1)
    found_n_b = jnp.where(found_n_b >= nmin, found_n_b, 0)
    latest_b = jnp.max(jnp.where((run_bs >= found_n_b[:, None]) & (found_n_b[:, None] > 0), e_s, -1), axis=1)
    cont_start_b = jnp.where(found_n_b > 0, latest_b, -1)
    pos_bg = cont_start_b[:, None] + jnp.arange(gamma)
    props_bg = jnp.take_along_axis(tokens_bs, jnp.clip(pos_bg, 0, S - 1), axis=1)
    ok_bg = (found_n_b[:, None] > 0) & (pos_bg < L_b1)
    if eos_be is not None:
        eos_bg = (props_bg[:, :, None] == jnp.asarray(eos_be)[:, None, :]).any(axis=-1) & ok_bg
        ok_bg &= (jnp.cumsum(eos_bg, axis=1) - eos_bg) == 0  # the EOS itself may be proposed, not beyond
    return jnp.where(ok_bg, props_bg, -1).astype(jnp.int32), found_n_b
