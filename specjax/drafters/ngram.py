"""Prompt lookup: propose the tokens that followed the latest earlier occurrence of the context's tail.

Per row, for n from `nmax` down to `nmin`, the last n committed tokens are searched for in the
committed buffer (prompt and everything generated so far), as a fixed-shape comparison of shifted
views on device. The longest n with a match wins; among its matches the most recent one. Up to G
tokens that followed it (and that are themselves committed) are proposed as point masses. A row
with no match proposes nothing (-1), and nothing is proposed after an EOS token.
"""

from __future__ import annotations

import dataclasses

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

    def __post_init__(self):
        if not 1 <= self.nmin <= self.nmax:
            raise ConfigError(f"ngram sizes must satisfy 1 <= NMIN <= NMAX, got NMAX={self.nmax} NMIN={self.nmin}")

    def propose(self, draft_params, target_params, state, keys, gamma, sampling, vocab_size):
        tokens_bg, _ = lookup(state.tokens, state.lengths, gamma, nmax=self.nmax, nmin=self.nmin,
                              eos_be=state.eos_ids)
        return Proposal(jnp.where(state.done[:, None], -1, tokens_bg)), state


def lookup(tokens_bs, lengths_b, gamma: int, *, nmax: int, nmin: int = 1, eos_be=None):
    """-> (proposals [B,G] with -1 where there is none, match length n [B] (0 = no match)).

    eos_be [B,E]: each row's EOS ids (-1 = unused slot); nothing is proposed after one."""
    B, S = tokens_bs.shape
    L_b1 = lengths_b[:, None]
    cont_start_b = jnp.full((B,), -1, jnp.int32)
    found_n_b = jnp.zeros((B,), jnp.int32)
    for n in range(nmax, nmin - 1, -1):
        if n >= S:
            continue
        tail_bn = jnp.take_along_axis(tokens_bs, jnp.clip(L_b1 - n + jnp.arange(n), 0, S - 1), axis=1)
        W = S - n + 1  # candidate match starts s = 0 .. S - n
        match_bw = jnp.ones((B, W), bool)
        for k in range(n):
            match_bw &= tokens_bs[:, k:k + W] == tail_bn[:, k:k + 1]
        s_w = jnp.arange(W)
        # the match must end before the tail's last token, so that a committed continuation exists
        usable_bw = match_bw & (s_w + n <= L_b1 - 1) & (L_b1 >= n + 1)
        latest_b = jnp.max(jnp.where(usable_bw, s_w, -1), axis=1)
        take_b = (found_n_b == 0) & (latest_b >= 0)
        cont_start_b = jnp.where(take_b, latest_b + n, cont_start_b)
        found_n_b = jnp.where(take_b, n, found_n_b)
    pos_bg = cont_start_b[:, None] + jnp.arange(gamma)
    props_bg = jnp.take_along_axis(tokens_bs, jnp.clip(pos_bg, 0, S - 1), axis=1)
    ok_bg = (found_n_b[:, None] > 0) & (pos_bg < L_b1)
    if eos_be is not None:
        eos_bg = (props_bg[:, :, None] == jnp.asarray(eos_be)[:, None, :]).any(axis=-1) & ok_bg
        ok_bg &= (jnp.cumsum(eos_bg, axis=1) - eos_bg) == 0  # the EOS itself may be proposed, not beyond
    return jnp.where(ok_bg, props_bg, -1).astype(jnp.int32), found_n_b
