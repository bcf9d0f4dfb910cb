"""The decode loop as pure functions: prefill, then a `lax.while_loop` of rounds until every row is done.

Axes: B batch, P padded prompt length, S buffer/cache slots, G proposals per round, V vocabulary,
N tokens offered to `commit` in one step, n tapped layers, D the target's model width.

Invariants of `SpecState`, per row b:
  tokens[b, :lengths[b]] is the prompt followed by everything emitted so far;
  the target cache holds keys/values for the first lengths[b] - 1 tokens (all but the newest, which
  the next forward pass feeds); nothing is written for rows that are done.

A speculation round (`spec_round`) is four named steps: `draft` (the drafter proposes G tokens),
`verify` (one target pass over the newest token and the G proposals), `accept` (the rule of
`specjax.rejection` decides a prefix per row) and `commit` (append, update statistics, let the
drafter observe what was verified). Without a drafter, `ar_step` is the autoregressive baseline
built from the same pieces. `Decoder` holds every static setting in one frozen, hashable object;
everything a request may change (prompts, sampling settings, max_new_tokens, EOS ids, keys) is a
runtime value of `Batch`, per row, so one compiled program serves any of them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from specjax import rejection, sampling
from specjax.cache import KVCache
from specjax.config import GREEDY, SamplingConfig
from specjax.drafters.base import Observation, TargetPrefill
from specjax.errors import ConfigError
from specjax.lm import LM, PREFILL_CHUNK
from specjax.policy import Adapt
from specjax.rejection import Proposal, Verdict
from specjax.sampling import RowSampling, row_keys


@struct.dataclass
class SpecStats:
    rounds: jax.Array  # [B] rounds (target verify passes) while the row was active
    drafted: jax.Array  # [B] proposals made (absent proposals of an abstaining drafter excluded)
    accepted: jax.Array  # [B] proposals accepted
    accepted_at: jax.Array  # [B, G] rounds in which proposal i was accepted
    reached_at: jax.Array  # [B, G] rounds in which proposal i existed and 0..i-1 were accepted

    @classmethod
    def zeros(cls, batch: int, gamma: int) -> "SpecStats":
        z = jnp.zeros((batch,), jnp.int32)
        zg = jnp.zeros((batch, gamma), jnp.int32)
        return cls(rounds=z, drafted=z, accepted=z, accepted_at=zg, reached_at=zg)

    def logical_axes(self) -> "SpecStats":
        b, bg = ("batch",), ("batch", None)
        return SpecStats(rounds=b, drafted=b, accepted=b, accepted_at=bg, reached_at=bg)


@struct.dataclass
class Batch:
    """The runtime inputs of one decode call, one row per request (all arrays lead with B).

    Row b's sampled tokens are drawn with keys[b] only, so they do not depend on the other rows:
    the same row run alone with the same key draws the same tokens."""

    prompt: jax.Array  # [B,P] int32, right-padded prompts
    lengths: jax.Array  # [B] int32, prompt lengths
    active: jax.Array  # [B] bool, False for batch padding rows (they stay done)
    keys: jax.Array  # [B] PRNG keys, one per row
    sampling: RowSampling  # [B] temperature, top-k, top-p, greedy
    max_new_tokens: jax.Array  # [B] int32
    eos_ids: jax.Array  # [B,E] int32, -1 = unused slot
    draft_prompt: Any = None  # [B,Pd] int32: the prompts in a draft's own tokenizer (drafters with `own_prompt`)
    draft_lengths: Any = None  # [B] int32

    def logical_axes(self) -> "Batch":
        b = ("batch",)
        own = self.draft_prompt is not None
        return self.replace(prompt=("batch", "seq"), lengths=b, active=b, keys=b, max_new_tokens=b,
                            eos_ids=("batch", None), draft_prompt=("batch", None) if own else None,
                            draft_lengths=b if own else None)

    @classmethod
    def make(cls, prompt_bp, lengths_b, *, max_new_tokens, sampling=GREEDY, eos_ids=(), key=None, keys=None,
             active=None, eos_slots: int | None = None, vocab_size: int | None = None) -> "Batch":
        """Broadcast per-call settings to rows: `max_new_tokens` an int or one per row; `sampling` a
        SamplingConfig or one per row; `eos_ids` a tuple for every row or one tuple per row; `keys`
        [B] or one `key` (row b gets fold_in(key, b)); `active` defaults to all rows."""
        prompt_bp = jnp.asarray(prompt_bp, jnp.int32)
        B = prompt_bp.shape[0]
        if keys is None:
            key = jax.random.key(0) if key is None else key
            keys = row_keys(key, B)
        per_row = eos_ids and not isinstance(eos_ids[0], (int, np.integer))
        eos_rows = [tuple(e) for e in eos_ids] if per_row else [tuple(eos_ids)] * B
        E = eos_slots if eos_slots is not None else max(1, max(len(e) for e in eos_rows))
        eos_be = np.full((B, E), -1, np.int32)
        for b, e in enumerate(eos_rows):
            eos_be[b, :len(e)] = e
        rs = RowSampling.of(sampling if isinstance(sampling, SamplingConfig) else list(sampling), B,
                            vocab_size=vocab_size)
        return cls(prompt=prompt_bp, lengths=jnp.asarray(lengths_b, jnp.int32),
                   active=jnp.ones((B,), bool) if active is None else jnp.asarray(active, bool), keys=keys,
                   sampling=jax.tree.map(jnp.asarray, rs),
                   max_new_tokens=jnp.broadcast_to(jnp.asarray(max_new_tokens, jnp.int32), (B,)),
                   eos_ids=jnp.asarray(eos_be))


@struct.dataclass
class SpecState:
    tokens: jax.Array  # [B, S] int32
    lengths: jax.Array  # [B] int32, tokens in the buffer
    prompt_lengths: jax.Array  # [B] int32
    done: jax.Array  # [B] bool
    cache: KVCache  # the target's
    draft: Any  # the drafter's state (None for autoregressive decoding)
    keys: jax.Array  # [B] PRNG keys, one per row
    sampling: RowSampling  # [B] each row's sampling settings
    max_new_tokens: jax.Array  # [B] int32
    eos_ids: jax.Array  # [B,E] int32, -1 = unused slot
    steps: jax.Array  # [] int32, target forward passes after prefill
    stats: SpecStats
    adapt: Any = None  # `policy.Adapt` under gamma="auto" (the window policy's running estimates), else None

    @property
    def size(self) -> int:
        return self.tokens.shape[1]

    def logical_axes(self) -> "SpecState":
        """Logical axis names of this type's own arrays; `cache`, `draft`, `sampling` and `stats` declare theirs."""
        b = ("batch",)
        return self.replace(tokens=("batch", "seq"), lengths=b, prompt_lengths=b, done=b, keys=b, max_new_tokens=b,
                            eos_ids=("batch", None), steps=())


VERIFY_MODES = ("batched", "stepwise")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Decoder:
    """Everything static about one compiled decode program (hashable: the jit's static argument).

    drafter=None (and gamma=0) is plain autoregressive decoding. `size` (S) is the token buffer and
    cache length: a row stops when its next step would not fit, so S must leave room for the
    longest prompt, its max_new_tokens and, with a drafter, G + 1 slots of headroom. `vocab_size`:
    ids at or above it (embedding padding) are never sampled. `rule` is `rejection.accept` (tests
    substitute a deliberately wrong one). Sampling settings, max_new_tokens and EOS ids are not
    here: they are runtime values of `Batch`.

    verify: "batched" (default) checks the G proposals in one (G+1)-token target pass. "stepwise"
    runs G+1 one-token passes instead, the very computation of plain decoding's steps, so greedy
    output equals plain greedy output bit for bit in any dtype and on any backend; it costs about
    G+1 target steps per round (a debugging and trust mode, not a fast one; see README, "Exactness,
    per dtype").

    policy: a `specjax.policy.Policy` for gamma="auto": each round verifies one of its compiled widths
    (0 = a plain step), chosen in the loop from running acceptance estimates (`adaptive_round`);
    `gamma` is then the largest window G_max and bounds the widths.
    """

    lm: LM
    size: int
    vocab_size: int | None = None
    drafter: Any = None
    gamma: int = 0
    rule: Callable = rejection.accept
    verify: str = "batched"
    policy: Any = None
    prefill_chunk: int = PREFILL_CHUNK

    def __post_init__(self):
        if not isinstance(self.prefill_chunk, int) or self.prefill_chunk < 0:
            raise ConfigError(f"prefill_chunk must be an integer >= 0 (0: one pass), got {self.prefill_chunk!r}")
        if self.verify not in VERIFY_MODES:
            raise ConfigError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {self.verify!r}")
        if self.drafter is None:
            if self.gamma != 0:
                raise ConfigError(f"gamma must be 0 without a drafter, got {self.gamma}")
            if self.policy is not None:
                raise ConfigError("a window policy (gamma='auto') needs a drafter")
            return
        if not isinstance(self.gamma, int) or self.gamma < 1:
            raise ConfigError(f"gamma must be an integer >= 1, got {self.gamma!r}")
        taps, L = tuple(self.drafter.taps), self.lm.config.num_layers
        if len(set(taps)) != len(taps) or not all(isinstance(t, int) and 0 <= t <= L for t in taps):
            raise ConfigError(f"drafter {self.drafter.name!r} asks for taps {taps}: they must be distinct layer "
                              f"indices in [0, {L}] (the input of block i; {L} = the last block's output)")
        if self.size < self.gamma + 2:
            raise ConfigError(f"buffer size {self.size} leaves no room for a round of G = {self.gamma}")
        if self.policy is not None:
            widths = self.policy.widths
            if max(widths) > self.gamma:
                raise ConfigError(f"policy widths {widths} exceed the window bound G = {self.gamma}")
            if 0 in widths and widths != (0,) and getattr(self.drafter, "must_observe", False):
                raise ConfigError(f"drafter {self.drafter.name!r} must see every round (its own cache re-syncs on "
                                  f"the two newest tokens): a policy for it cannot include width 0, got {widths}")

    def ring_slack(self, prompt_len: int) -> int:
        """The most positions one call writes ahead of the committed length: a prefill pass (one chunk,
        or the whole prompt bucket in one pass) or a round's G + 1. Sliding-window layers keep ring
        buffers of window + this many slots (`Transformer.init_cache`)."""
        chunk = self.prefill_chunk if self.prefill_chunk and prompt_len > self.prefill_chunk else prompt_len
        return max(chunk, self.gamma + 1)

    @property
    def headroom(self) -> int:
        return 0 if self.drafter is None else self.gamma + 1

    @property
    def taps(self) -> tuple[int, ...]:
        return () if self.drafter is None else tuple(self.drafter.taps)

    def start(self, params, draft_params, batch: Batch) -> SpecState:
        """Prefill the target (and the drafter) and commit the first token of every active row."""
        return start(self, params, draft_params, batch)

    def run(self, params, draft_params, state: SpecState) -> SpecState:
        """The `lax.while_loop`: rounds until every row is done (EOS, max_new_tokens, a full buffer)."""

        if self.policy is not None:
            return adaptive_run(self, params, draft_params, state)

        if self.drafter is not None and self.drafter.may_abstain:
            return abstain_run(self, params, draft_params, state)

        def body(state: SpecState) -> SpecState:
            if self.drafter is None:
                return ar_step(self, params, state)
            return spec_round(self, params, draft_params, state)

        return jax.lax.while_loop(not_finished, body, state)

    def generate(self, params, draft_params, batch: Batch) -> SpecState:
        """`start`, then `run`: the whole decode as one pure function (jit it, or call it in a jit)."""
        return self.run(params, draft_params, self.start(params, draft_params, batch))


def commit(state: SpecState, new_bn: jax.Array, count_b: jax.Array, headroom: int = 0):
    """Append new_bn[b, :count_b[b]] to every row that is not done; -> (state, emitted_b).

    A row's block is cut after its first EOS and at its max_new_tokens; the row is then done. A row
    is also done when fewer than `headroom` + 1 free slots remain (its next step would not fit).
    """
    B, N = new_bn.shape
    j_n = jnp.arange(N)
    offered_bn = j_n < count_b[:, None]
    eos_bn = (new_bn[:, :, None] == state.eos_ids[:, None, :]).any(axis=-1) & offered_bn  # -1 never matches
    upto_eos_b = jnp.where(eos_bn.any(axis=1), jnp.argmax(eos_bn, axis=1) + 1, N)
    budget_b = state.max_new_tokens - (state.lengths - state.prompt_lengths)
    emitted_b = jnp.minimum(jnp.minimum(count_b, upto_eos_b), jnp.maximum(budget_b, 0))
    emitted_b = jnp.where(state.done, 0, emitted_b)

    size = state.size
    slot_bn = jnp.where(j_n < emitted_b[:, None], state.lengths[:, None] + j_n, size)  # size: dropped
    rows_bn = jnp.broadcast_to(jnp.arange(B)[:, None], (B, N))
    tokens = state.tokens.at[rows_bn, slot_bn].set(new_bn.astype(jnp.int32), mode="drop")
    lengths = state.lengths + emitted_b

    hit_eos_b = (eos_bn & (j_n < emitted_b[:, None])).any(axis=1)
    out_of_budget_b = lengths - state.prompt_lengths >= state.max_new_tokens
    full_b = lengths + headroom >= size
    done = state.done | hit_eos_b | out_of_budget_b | full_b
    return state.replace(tokens=tokens, lengths=lengths, done=done), emitted_b


def newest_tokens(state: SpecState) -> jax.Array:
    """The last token of every row [B] (the one the target cache has not seen yet)."""
    idx_b = jnp.maximum(state.lengths - 1, 0)
    return jnp.take_along_axis(state.tokens, idx_b[:, None], axis=1)[:, 0]


def prompt_positions(prompt_lengths_b, active_b, P: int) -> jax.Array:
    """Positions [B,P] of right-padded prompts; -1 marks padding and inactive rows."""
    t_p = jnp.arange(P)
    return jnp.where((t_p < prompt_lengths_b[:, None]) & active_b[:, None], t_p, -1)


def not_finished(state: SpecState):
    return ~jnp.all(state.done)


def start(dec: Decoder, params, draft_params, batch: Batch) -> SpecState:
    """Allocate the buffers, prefill the target (and the drafter) and commit the first token."""
    prompt_bp = batch.prompt.astype(jnp.int32)
    B, P = prompt_bp.shape
    lm = dec.lm
    keys_b, first_keys_b = sampling.split_keys(batch.keys, 2)
    state = SpecState(
        tokens=jnp.zeros((B, dec.size), jnp.int32).at[:, :P].set(prompt_bp),
        lengths=batch.lengths.astype(jnp.int32),
        prompt_lengths=batch.lengths.astype(jnp.int32),
        done=~batch.active,
        cache=lm.init_cache(params, B, dec.size, ring_slack=dec.ring_slack(P)),
        draft=None,
        keys=keys_b,
        sampling=batch.sampling,
        max_new_tokens=batch.max_new_tokens.astype(jnp.int32),
        eos_ids=batch.eos_ids.astype(jnp.int32),
        steps=jnp.zeros((), jnp.int32),
        stats=SpecStats.zeros(B, dec.gamma),
        adapt=None if dec.policy is None else Adapt.zeros(B, dec.gamma),
    )
    positions_bp = prompt_positions(state.prompt_lengths, batch.active, P)
    last_b = jnp.maximum(state.prompt_lengths - 1, 0)
    logits_bv, cache, taps_nbpd = lm.prefill_at(params, prompt_bp, positions_bp, state.cache, last_b, taps=dec.taps,
                                                chunk=dec.prefill_chunk)
    first_b = sampling.sample(first_keys_b, logits_bv, state.sampling, dec.vocab_size)
    state = state.replace(cache=cache)
    state, _ = commit(state, first_b[:, None], jnp.ones_like(first_b), dec.headroom)
    if dec.drafter is None:
        return state
    dstate = dec.drafter.init(draft_params, params, B, dec.size)
    prefill = TargetPrefill(tokens=prompt_bp, positions=positions_bp, taps=taps_nbpd, first=first_b,
                            chunk=dec.prefill_chunk, draft_tokens=batch.draft_prompt, draft_lengths=batch.draft_lengths)
    return state.replace(draft=dec.drafter.prefill(draft_params, params, dstate, prefill))


@struct.dataclass
class Verified:
    """The target's verify pass over one round."""

    tokens: jax.Array  # [B,G+1] the newest committed token, then the G proposals (absent ones as 0)
    positions: jax.Array  # [B,G+1] (-1 for rows that are done)
    logits: jax.Array  # [B,G+1,V] float32
    taps: jax.Array  # [n,B,G+1,D]


def draft(dec: Decoder, params, draft_params, state: SpecState, keys_b) -> tuple[Proposal, SpecState]:
    """Step 1: the drafter proposes G tokens per row (keys_b [B]: one key per row)."""
    return dec.drafter.propose(draft_params, params, state, keys_b, dec.gamma, state.sampling, dec.vocab_size)


def verify(dec: Decoder, params, state: SpecState, proposal: Proposal, *, may_skip: bool = True,
           skip: bool = False) -> tuple[Verified, KVCache]:
    """Step 2: one target pass over [newest committed token, G proposals] -> (Verified, cache).

    Absent proposals (-1) are fed as token 0: causality keeps them from affecting any logits that
    the acceptance rule reads. When the drafter may abstain and no row proposed anything, a plain
    one-token step replaces the (G+1)-token pass (its outputs padded to G+1 positions); may_skip=False
    leaves that `lax.cond` out (adaptive rounds: the policy already verifies width 0 when no row has a
    proposal, and a conditional over the cache costs a copy of it); skip=True takes the one-token step
    without asking (`abstain_run` has decided it outside)."""
    draft_bg = proposal.tokens
    G = draft_bg.shape[1]
    tokens_bg1 = jnp.concatenate([newest_tokens(state)[:, None], jnp.maximum(draft_bg, 0)], axis=1)
    positions_bg1 = state.lengths[:, None] - 1 + jnp.arange(G + 1)
    positions_bg1 = jnp.where(state.done[:, None], -1, positions_bg1)

    def full(_):
        if dec.verify == "stepwise":
            return _stepwise_forward(dec, params, tokens_bg1, positions_bg1, state.cache)
        return dec.lm.forward(params, tokens_bg1, positions_bg1, state.cache, taps=dec.taps)

    def single(_):
        logits_b1v, cache, taps_nb1d = dec.lm.forward(params, tokens_bg1[:, :1], positions_bg1[:, :1], state.cache,
                                                       taps=dec.taps)
        pad_g = ((0, 0), (0, G), (0, 0))
        return jnp.pad(logits_b1v, pad_g), cache, jnp.pad(taps_nb1d, ((0, 0),) + pad_g)

    if skip:
        logits_bgv, cache, taps_nbgd = single(None)
    elif may_skip and dec.drafter is not None and dec.drafter.may_abstain and G > 0:
        logits_bgv, cache, taps_nbgd = jax.lax.cond(jnp.any((draft_bg[:, 0] >= 0) & ~state.done), full, single, None)
    else:
        logits_bgv, cache, taps_nbgd = full(None)
    return Verified(tokens=tokens_bg1, positions=positions_bg1, logits=logits_bgv, taps=taps_nbgd), cache


def _stepwise_forward(dec: Decoder, params, tokens_bt, positions_bt, cache: KVCache):
    """`lm.forward` over T tokens as T one-token passes in a `lax.scan` (the shapes of `ar_step`)."""

    def one(cache, xs):
        tokens_b, positions_b = xs
        logits_b1v, cache, taps_nb1d = dec.lm.forward(params, tokens_b[:, None], positions_b[:, None], cache,
                                                      taps=dec.taps)
        return cache, (logits_b1v[:, 0], taps_nb1d[:, :, 0])

    cache, (logits_tbv, taps_tnbd) = jax.lax.scan(one, cache, (tokens_bt.T, positions_bt.T))
    return logits_tbv.transpose(1, 0, 2), cache, taps_tnbd.transpose(1, 2, 0, 3)


def accept(dec: Decoder, keys_b, state: SpecState, proposal: Proposal, verified: Verified) -> Verdict:
    """Step 3: the acceptance rule decides, per row, how many proposals to keep and the next token."""
    return dec.rule(keys_b, proposal, verified.logits, state.sampling, dec.vocab_size)


def commit_round(dec: Decoder, params, draft_params, state: SpecState, verified: Verified, verdict: Verdict,
                 cache: KVCache, observe: bool = True) -> SpecState:
    """Step 4: append each row's block, update the statistics, let the drafter observe the round.

    A round narrower than G (an adaptive round of width W < G) is committed and observed at its own
    width; its statistics are counted in the G-wide counters."""
    G, W = dec.gamma, verdict.proposed.shape[1]
    active_b1 = ~state.done[:, None]
    n_b = jnp.where(active_b1[:, 0], verdict.accepted, 0)
    j_g = jnp.arange(G)
    present_bg = jnp.pad(verdict.proposed, ((0, 0), (0, G - W))) & active_b1
    stats = state.stats
    stats = stats.replace(
        rounds=stats.rounds + active_b1[:, 0],
        drafted=stats.drafted + present_bg.sum(axis=1),
        accepted=stats.accepted + n_b,
        accepted_at=stats.accepted_at + ((j_g < n_b[:, None]) & active_b1),
        reached_at=stats.reached_at + ((j_g <= n_b[:, None]) & present_bg),
    )
    state = state.replace(cache=cache, steps=state.steps + 1, stats=stats)
    state, emitted_b = commit(state, verdict.tokens, verdict.count, headroom=dec.headroom)
    if not observe:
        return state
    next_b = jnp.take_along_axis(verdict.tokens, verdict.accepted[:, None], axis=1)[:, 0]
    observation = Observation(tokens=verified.tokens, proposed=present_bg[:, :W], positions=verified.positions,
                              taps=verified.taps, accepted=n_b, committed=emitted_b,
                              next_tokens=jnp.where(active_b1[:, 0], next_b, -1))
    return state.replace(draft=dec.drafter.observe(draft_params, params, state.draft, observation))


def spec_round(dec: Decoder, params, draft_params, state: SpecState) -> SpecState:
    """One speculation round: draft -> verify -> accept -> commit."""
    keys_b, k_draft_b, k_accept_b = sampling.split_keys(state.keys, 3)
    proposal, state = draft(dec, params, draft_params, state.replace(keys=keys_b), k_draft_b)
    verified, cache = verify(dec, params, state, proposal)
    verdict = accept(dec, k_accept_b, state, proposal, verified)
    return commit_round(dec, params, draft_params, state, verified, verdict, cache)


def abstain_run(dec: Decoder, params, draft_params, state: SpecState) -> SpecState:
    """The decode loop of a drafter that may abstain (prompt lookup) at a fixed G: the rounds of
    `spec_round`, each drafted first; a round in which no row proposed anything is one plain step
    instead of a (G+1)-token pass. Run as a chain of two while loops (plain steps while nobody
    proposes, full rounds while somebody does), not as a `lax.cond` per round, which made XLA copy the
    KV cache twice every round (see `adaptive_run`)."""

    def prepare(state):
        keys_b, k_draft_b, k_accept_b = sampling.split_keys(state.keys, 3)
        proposal, state = draft(dec, params, draft_params, state.replace(keys=keys_b), k_draft_b)
        full = jnp.any((proposal.tokens[:, 0] >= 0) & ~state.done)
        return state, (proposal, k_accept_b, full)

    def round_of(full: bool):
        def body(carry):
            state, (proposal, k_accept_b, _) = carry
            verified, cache = verify(dec, params, state, proposal, may_skip=False, skip=not full)
            verdict = accept(dec, k_accept_b, state, proposal, verified)
            return prepare(commit_round(dec, params, draft_params, state, verified, verdict, cache))

        return body

    return _chain(prepare(state), [round_of(False), round_of(True)], lambda carry: carry[1][2].astype(jnp.int32))


@struct.dataclass
class Pending:
    """What an adaptive round fixes before its width is known: the round's draft and accept keys, a
    proposes-once drafter's G_max proposals (else [B, 0]) and the chosen index into the policy's widths."""

    k_draft: jax.Array  # [B] keys
    k_accept: jax.Array  # [B] keys
    full: jax.Array  # [B, G] int32 (prompt lookup: its proposals, -1 where none) or [B, 0]
    index: jax.Array  # int32 scalar


def _proposes_once(dec: Decoder) -> bool:
    return getattr(dec.drafter, "proposes_once", False) and dec.policy.widths != (0,)


def prepare_round(dec: Decoder, params, draft_params, state: SpecState) -> tuple[SpecState, Pending]:
    """The start of an adaptive round: split its keys, let a drafter whose proposals are nearly free
    (`proposes_once`, prompt lookup) draft G_max, so the policy sees how many each row has, and choose
    the width from the estimates so far."""
    policy, G = dec.policy, dec.gamma
    B = state.tokens.shape[0]
    keys_b, k_draft_b, k_accept_b = sampling.split_keys(state.keys, 3)
    state = state.replace(keys=keys_b)
    if _proposes_once(dec):
        full, state = draft(dec, params, draft_params, state, k_draft_b)
        if full.q is not None:  # choosing W after drafting is exact only for point masses
            raise ConfigError(f"drafter {dec.drafter.name!r} sets proposes_once but its proposals are sampled")
        tokens_bg = full.tokens.astype(jnp.int32)
        available_b = jnp.sum(tokens_bg >= 0, axis=1)
    else:
        tokens_bg = jnp.zeros((B, 0), jnp.int32)
        available_b = jnp.full((B,), G, jnp.int32)
    remaining_b = state.max_new_tokens - (state.lengths - state.prompt_lengths)
    index = policy.choose(state.adapt, available_b, ~state.done, state.steps, remaining_b)
    return state, Pending(k_draft=k_draft_b, k_accept=k_accept_b, full=tokens_bg, index=index)


def round_at_width(dec: Decoder, params, draft_params, state: SpecState, pending: Pending, W: int) -> SpecState:
    """One adaptive round at the static width W: draft W proposals (prompt lookup: the first W of its
    G_max), verify W + 1 positions, apply the rule (W = 0: one plain step through the same rule), commit
    and let the drafter observe at width W (so a narrow round costs the drafter's `observe` no more than
    it verified; only the statistics are G_max wide), and fold the round into the policy's estimates."""
    policy, G = dec.policy, dec.gamma
    B = state.tokens.shape[0]
    plain_only = policy.widths == (0,)  # the batch fallback: this program never drafts
    active_b = ~state.done
    if W == 0:
        proposal = Proposal(jnp.zeros((B, 0), jnp.int32))
    elif _proposes_once(dec):
        proposal = Proposal(pending.full[:, :W])
    else:
        proposal, state = dec.drafter.propose(draft_params, params, state, pending.k_draft, W, state.sampling,
                                              dec.vocab_size)
    verified, cache = verify(dec, params, state, proposal, may_skip=False)
    verdict = accept(dec, pending.k_accept, state, proposal, verified)
    after = commit_round(dec, params, draft_params, state, verified, verdict, cache, observe=not plain_only)
    proposed_bg = jnp.pad(verdict.proposed, ((0, 0), (0, G - W)))
    return after.replace(adapt=policy.update(state.adapt, verdict.accepted, proposed_bg, active_b, jnp.int32(W)))


def adaptive_round(dec: Decoder, params, draft_params, state: SpecState) -> SpecState:
    """One round under gamma="auto" on its own: `prepare_round`, then the chosen width's branch of a
    `lax.switch` (`round_at_width`). The decode loop runs `adaptive_run` instead, which gives the same
    rounds without the conditional; this form times one round of a fixed width (`specjax calibrate`,
    where the one-branch switch is no conditional either)."""
    state, pending = prepare_round(dec, params, draft_params, state)
    branches = [functools.partial(round_at_width, dec, params, draft_params, pending=pending, W=W)
                for W in dec.policy.widths]
    return jax.lax.switch(pending.index, [lambda s, f=f: f(state=s) for f in branches], state)


def adaptive_run(dec: Decoder, params, draft_params, state: SpecState) -> SpecState:
    """The decode loop under gamma="auto". Its body is a chain of loops, one per compiled width, each
    running rounds of its width for as long as the policy keeps choosing it (zero times when it does
    not); the outer loop repeats the chain until every row is done. The rounds are exactly
    `adaptive_round`'s, one after another.

    Why not one `lax.switch` per round: XLA copies every buffer that a conditional's branch updates in
    place (the KV cache above all) on each entry into the branch, and again into the loop's carry
    after it: two copies of the whole cache every round, 12% of a batch-4 SmolLM2 step and growing
    with batch and cache size. A while loop updates its carry in place, so a chain of loops costs no
    copy at all, whatever the policy chooses."""

    def round_of(W: int):
        def body(carry):
            state, pending = carry
            return prepare_round(dec, params, draft_params, round_at_width(dec, params, draft_params, state, pending, W))

        return body

    return _chain(prepare_round(dec, params, draft_params, state), [round_of(W) for W in dec.policy.widths],
                  lambda carry: carry[1].index)


def _chain(first, bodies, index_of) -> SpecState:
    """Loops instead of a conditional per round: the outer `lax.while_loop` (until every row is done)
    runs a chain of inner loops, loop i running `bodies[i]` while `index_of(carry) == i`. first and
    every body's result: (SpecState, what the next round has fixed, its index among them)."""

    def loop(i: int, body):
        def chosen(carry):
            return (index_of(carry) == i) & not_finished(carry[0])

        return lambda carry: jax.lax.while_loop(chosen, body, carry)

    loops = [loop(i, body) for i, body in enumerate(bodies)]

    def chain(carry):
        for run in loops:
            carry = run(carry)
        return carry

    state, _ = jax.lax.while_loop(lambda carry: not_finished(carry[0]), chain, first)
    return state


def ar_step(dec: Decoder, params, state: SpecState) -> SpecState:
    """One autoregressive step: feed each row's newest token, sample the next, commit it."""
    pos_b = jnp.where(state.done, -1, state.lengths - 1)
    logits_b1v, cache, _ = dec.lm.forward(params, newest_tokens(state)[:, None], pos_b[:, None], state.cache)
    keys_b, sub_b = sampling.split_keys(state.keys, 2)
    next_b = sampling.sample(sub_b, logits_b1v[:, 0], state.sampling, dec.vocab_size)
    state = state.replace(cache=cache, keys=keys_b, steps=state.steps + 1)
    state, _ = commit(state, next_b[:, None], jnp.ones_like(next_b))
    return state


@functools.partial(jax.jit, static_argnums=0)
def generate(dec: Decoder, params, draft_params, batch: Batch) -> SpecState:
    """`Decoder.generate` jitted with the decoder as its static argument (no mesh, nothing donated;
    `specjax.sampler` compiles the same functions with shardings and a donated state)."""
    return dec.generate(params, draft_params, batch)
