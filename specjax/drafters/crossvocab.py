"""A draft model with another tokenizer, exact under sampling: token-level intersection (TLI).

The draft proposes only tokens that both vocabularies spell with the same bytes (the
intersection), so each proposal is also one target token; the rejection rule is unchanged and the
output follows the target's distribution (Timor et al., ICML 2025).

On the host, once per (target, draft) pair (`build_vocab_map`):
  d2t [Vd]   the target id spelling the same bytes as draft id d, or -1 (outside the intersection)
  t2d [Vt]   the inverse: the draft id of target id t, or -1
  enc        every target token's draft encoding, ragged: ids enc_flat[enc_start[t] : + enc_len[t]]
             (the matched draft id alone for a token in the intersection; otherwise the draft's own
             merges over the token's bytes, which may take up to `max_len` draft tokens)

In the jitted loop, per round: the draft's logits are restricted to the intersection (ids with
d2t = -1 get -inf), warped like the target's and drawn from (`base.rollout`); proposals are mapped
to target ids through d2t, and q over the target vocabulary is the draft's distribution moved to
the matching target ids (zero elsewhere), so `q` is exactly what each proposal was drawn from.

The draft keeps its own token sequence (`CrossState`): its prompt is tokenised by its own tokenizer
on the host; then every committed target token appends its draft encoding (accepted proposals
are one draft token each and were already drafted). A row's sequence therefore advances by a
variable number of draft tokens per round while every shape stays fixed: the buffer holds
`slack` times the target's, and tokens not yet in the draft's cache are fed in chunks of
`FEED` tokens by a `lax.while_loop` (one chunk in almost every round). A row whose buffer is full
stops proposing (plain decoding from there on; still exact).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from specjax.drafters.base import Stateless, rollout
from specjax.errors import IncompatibleDraftError
from specjax.lm import LM
from specjax.rejection import Proposal

FEED = 2  # draft tokens per chunk when the draft catches up with the committed text
MIN_SHARED = 0.5  # the intersection must hold at least this share of the draft's text tokens


@dataclasses.dataclass(frozen=True, eq=False)
class VocabMap:
    """The host tables matching a draft vocabulary with a target's (see the module docstring)."""

    d2t: np.ndarray  # [Vd] int32
    t2d: np.ndarray  # [Vt] int32
    enc_start: np.ndarray  # [Vt] int32
    enc_len: np.ndarray  # [Vt] int32
    enc_flat: np.ndarray  # [N] int32
    shared: int  # tokens in the intersection
    draft_text: int  # draft ids that stand for text (not special, not unused)
    target_text: int

    @property
    def max_len(self) -> int:
        return int(self.enc_len.max()) if self.enc_len.size else 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.d2t, self.t2d, self.enc_start, self.enc_len, self.enc_flat))

    def encode(self, target_ids: Sequence[int]) -> list[int]:
        """The draft encoding of target tokens: their encodings one after another."""
        out: list[int] = []
        for t in target_ids:
            s = int(self.enc_start[t])
            out += self.enc_flat[s:s + int(self.enc_len[t])].tolist()
        return out

    def tables(self) -> dict[str, jax.Array]:
        """The device arrays the drafter reads inside the loop (part of its params)."""
        flat = self.enc_flat if self.enc_flat.size else np.zeros((1,), np.int32)
        return {"d2t": jnp.asarray(self.d2t), "t2d": jnp.asarray(self.t2d), "enc_start": jnp.asarray(self.enc_start),
                "enc_len": jnp.asarray(self.enc_len), "enc_flat": jnp.asarray(flat)}

    def summary(self) -> dict:
        return {"shared_tokens": self.shared, "draft_text_tokens": self.draft_text,
                "target_text_tokens": self.target_text, "max_draft_tokens_per_target_token": self.max_len,
                "table_bytes": self.nbytes}


def _first_ids(spelled: Sequence[bytes | None], fallback: set[int]) -> dict[bytes, int]:
    """bytes -> the id that spells them: the lowest id, a byte-fallback token (<0xNN>) only when no
    ordinary token spells the same byte."""
    out: dict[bytes, int] = {}
    for i, b in enumerate(spelled):
        if b is None or not b:
            continue
        if b not in out or (out[b] in fallback and i not in fallback):
            out[b] = i
    return out


def build_vocab_map(target_bytes: Sequence[bytes | None], draft_bytes: Sequence[bytes | None],
                    encode_in_draft: Callable[[list[bytes]], list[list[int]]], *, target_rows: int,
                    draft_rows: int, target_special: dict[int, str] | None = None,
                    draft_special: dict[int, str] | None = None, target_fallback: set[int] = frozenset(),
                    draft_fallback: set[int] = frozenset()) -> VocabMap:
    """Match two vocabularies by the bytes their tokens stand for -> VocabMap.

    target_bytes / draft_bytes: per id, the bytes (None for special or unused ids), e.g.
    `Tokenizer.token_bytes()`; encode_in_draft: bytes -> draft ids spelling them, for many at once
    (`Tokenizer.encode_bytes_many`); *_rows: the embeddings' rows (>= the tokenizers' sizes: padding
    rows map to nothing); *_special: special tokens' text, matched when identical (e.g. both have
    "<eos>"); *_fallback: byte-fallback ids, used for the map only when no other token spells the byte."""
    if len(target_bytes) > target_rows or len(draft_bytes) > draft_rows:
        raise IncompatibleDraftError(f"a tokenizer has more tokens than its embedding has rows (target "
                                     f"{len(target_bytes)} > {target_rows} or draft {len(draft_bytes)} > {draft_rows})")
    t_ids, d_ids = _first_ids(target_bytes, set(target_fallback)), _first_ids(draft_bytes, set(draft_fallback))
    d2t = np.full((draft_rows,), -1, np.int32)
    t2d = np.full((target_rows,), -1, np.int32)
    for b, t in t_ids.items():
        d = d_ids.get(b)
        if d is not None:
            d2t[d], t2d[t] = t, d
    shared = int((t2d >= 0).sum())
    special_d = {text: i for i, text in (draft_special or {}).items()}
    enc: list[list[int]] = [[] for _ in range(target_rows)]
    todo = []
    for t in range(target_rows):
        if t2d[t] >= 0:
            enc[t] = [int(t2d[t])]
        elif target_special and t in target_special:
            enc[t] = [special_d[target_special[t]]] if target_special[t] in special_d else []
        elif t < len(target_bytes) and target_bytes[t]:
            todo.append(t)
    for t, ids in zip(todo, encode_in_draft([target_bytes[t] for t in todo]) if todo else []):
        enc[t] = [int(i) for i in ids]
    lens = np.asarray([len(e) for e in enc], np.int32)
    starts = np.zeros((target_rows,), np.int32)
    starts[1:] = np.cumsum(lens)[:-1]
    flat = np.asarray([i for e in enc for i in e], np.int32)
    return VocabMap(d2t=d2t, t2d=t2d, enc_start=starts, enc_len=lens, enc_flat=flat, shared=shared,
                    draft_text=sum(1 for b in draft_bytes if b), target_text=sum(1 for b in target_bytes if b))


def tokenizer_vocab_map(target_tok, draft_tok, *, target_rows: int, draft_rows: int) -> VocabMap:
    """`build_vocab_map` for two `specjax.models.Tokenizer`s."""

    def special(tok):
        return {i: tok.token(i) for i in tok.special_ids()}

    return build_vocab_map(target_tok.token_bytes(), draft_tok.token_bytes(), draft_tok.encode_bytes_many,
                           target_rows=target_rows, draft_rows=draft_rows, target_special=special(target_tok),
                           draft_special=special(draft_tok), target_fallback=target_tok.byte_fallback_ids(),
                           draft_fallback=draft_tok.byte_fallback_ids())


def check_shared(vmap: VocabMap, minimum: float = MIN_SHARED) -> None:
    """Refuse a pair whose intersection holds less than `minimum` of the draft's text tokens."""
    share = vmap.shared / max(1, vmap.draft_text)
    if share < minimum:
        raise IncompatibleDraftError(
            f"the draft and target vocabularies share {vmap.shared} tokens, {share:.0%} of the draft's "
            f"{vmap.draft_text}: below the minimum of {minimum:.0%} for a draft with another tokenizer")


@struct.dataclass
class CrossState:
    """The draft's own token sequence and cache, per row."""

    cache: Any  # the draft model's KVCache over its own positions
    tokens: jax.Array  # [B,Sd] int32: prompt (draft tokenizer), then the draft encoding of committed tokens
    length: jax.Array  # [B] int32 tokens in the sequence (beyond: scratch, e.g. this round's proposals)
    cached: jax.Array  # [B] int32 of them in the draft's cache

    def logical_axes(self) -> "CrossState":
        return self.replace(tokens=("batch", None), length=("batch",), cached=("batch",))


@dataclasses.dataclass(frozen=True)
class CrossVocabDrafter(Stateless):
    """A draft model with its own tokenizer (see the module docstring). Params:
    {"model": the draft's params, **VocabMap.tables()}."""

    lm: LM
    max_len: int  # the longest draft encoding of one target token
    target_vocab: int  # rows of the target's vocabulary (q's last axis)
    slack: int = 2  # the draft's buffer holds slack x the target's buffer (+ max_len + 2)
    vocab: VocabMap | None = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    tokenizer: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    name: str = "model"
    may_abstain: bool = True  # a row whose draft buffer is full proposes nothing
    must_observe = True  # every committed token must reach the draft's sequence through `observe`
    own_prompt = True  # the loop's batch carries the prompt in the draft's tokens (`Batch.draft_prompt`)

    def buffer(self, size: int) -> int:
        return self.slack * size + self.max_len + 2

    def prompt_room(self, size: int, gamma: int) -> int:
        """The longest draft prompt (padding included) a buffer for a target buffer of `size` holds,
        with room for a first round."""
        return self.buffer(size) - self.max_len - gamma - 2

    def init(self, draft_params, target_params, batch: int, size: int):
        Sd = self.buffer(size)
        zeros = jnp.zeros((batch,), jnp.int32)
        return CrossState(cache=self.lm.init_cache(draft_params["model"], batch, Sd),
                          tokens=jnp.zeros((batch, Sd), jnp.int32), length=zeros, cached=zeros)

    def _encoding(self, tables, t_b):
        """Each row's draft encoding of target token t_b -> (ids [B,K], count [B]); K = max_len."""
        K = max(1, self.max_len)
        t_b = jnp.maximum(t_b, 0)
        start_b, n_b = tables["enc_start"][t_b], tables["enc_len"][t_b]
        flat = tables["enc_flat"]
        ids_bk = flat[jnp.clip(start_b[:, None] + jnp.arange(K), 0, flat.shape[0] - 1)]
        return ids_bk, n_b

    @staticmethod
    def _write(tokens_bs, at_b, ids_bk, n_b):
        """tokens with ids_bk[b, :n_b[b]] written from position at_b[b] on (nothing past the buffer)."""
        Sd, K = tokens_bs.shape[1], ids_bk.shape[1]
        idx_bk = jnp.where(jnp.arange(K) < n_b[:, None], at_b[:, None] + jnp.arange(K), Sd)  # Sd: dropped
        rows_bk = jnp.broadcast_to(jnp.arange(ids_bk.shape[0])[:, None], idx_bk.shape)
        return tokens_bs.at[rows_bk, idx_bk].set(ids_bk, mode="drop")

    def _append(self, ds: CrossState, ids_bk, n_b) -> CrossState:
        """Append ids_bk[b, :n_b[b]] to each row's sequence."""
        tokens = self._write(ds.tokens, ds.length, ids_bk, n_b)
        return ds.replace(tokens=tokens, length=jnp.minimum(ds.length + n_b, ds.tokens.shape[1]))

    def prefill(self, draft_params, target_params, ds: CrossState, prefill):
        if prefill.draft_tokens is None:
            raise ValueError("a draft with its own tokenizer needs the prompts in its tokens (Batch.draft_prompt)")
        prompt_bp, lengths_b = prefill.draft_tokens.astype(jnp.int32), prefill.draft_lengths.astype(jnp.int32)
        B, P = prompt_bp.shape
        if P + self.max_len + 2 > ds.tokens.shape[1]:  # shapes are static: this is a trace-time check
            raise ValueError(f"the draft's prompts are {P} tokens wide, more than its buffer of {ds.tokens.shape[1]} "
                             "slots holds; pad them to at most `CrossVocabDrafter.prompt_room(size, gamma)`")
        active_b = prefill.positions[:, 0] >= 0
        j = jnp.arange(P)
        positions_bp = jnp.where((j < lengths_b[:, None]) & active_b[:, None], j, -1)
        _, cache, _ = self.lm.prefill_at(draft_params["model"], prompt_bp, positions_bp, ds.cache,
                                         jnp.zeros((B,), jnp.int32), chunk=prefill.chunk)
        lengths_b = jnp.where(active_b, lengths_b, 0)
        ds = ds.replace(cache=cache, tokens=ds.tokens.at[:, :P].set(prompt_bp), length=lengths_b, cached=lengths_b)
        ids_bk, n_b = self._encoding(draft_params, prefill.first)
        return self._append(ds, ids_bk, jnp.where(active_b, n_b, 0))

    def _catch_up(self, params, ds: CrossState, live_b):
        """Feed the draft every token of its sequence not yet in its cache (from the newest cached one
        on, which is re-written unchanged, so there is always at least one), FEED at a time ->
        (logits [B,Vd] after the last token of the sequence, cache)."""
        Sd = ds.tokens.shape[1]
        start_b = jnp.maximum(ds.cached - 1, 0)
        need_b = jnp.where(live_b, ds.length - start_b, 0)
        chunks = (jnp.max(need_b) + FEED - 1) // FEED
        last_b = ds.length - 1

        def body(carry):
            i, cache, logits_bv = carry
            idx_bf = start_b[:, None] + i * FEED + jnp.arange(FEED)
            valid_bf = (idx_bf < ds.length[:, None]) & live_b[:, None]
            toks_bf = jnp.take_along_axis(ds.tokens, jnp.clip(idx_bf, 0, Sd - 1), axis=1)
            out_bfv, cache, _ = self.lm.forward(params, toks_bf, jnp.where(valid_bf, idx_bf, -1), cache)
            here_b = last_b - (start_b + i * FEED)
            in_chunk_b = live_b & (here_b >= 0) & (here_b < FEED)
            picked_bv = jnp.take_along_axis(out_bfv, jnp.clip(here_b, 0, FEED - 1)[:, None, None], axis=1)[:, 0]
            return i + 1, cache, jnp.where(in_chunk_b[:, None], picked_bv, logits_bv)

        V = self.lm.config.vocab_size
        init = (jnp.zeros((), jnp.int32), ds.cache, jnp.zeros((ds.tokens.shape[0], V), jnp.float32))
        _, cache, logits_bv = jax.lax.while_loop(lambda c: c[0] < chunks, body, init)
        return logits_bv, cache

    def propose(self, draft_params, target_params, state, keys, gamma, sampling, vocab_size):
        ds: CrossState = state.draft
        params = draft_params["model"]
        Sd = ds.tokens.shape[1]
        if draft_params["t2d"].shape[0] != self.target_vocab:
            raise ValueError(f"the vocabulary map covers {draft_params['t2d'].shape[0]} target ids, the target has "
                             f"{self.target_vocab}")
        room_b = ds.length + gamma + 1 <= Sd
        live_b = ~state.done & room_b & (ds.length > 0)
        allowed_v = draft_params["d2t"] >= 0

        def restricted(logits):
            return jnp.where(allowed_v, logits, -jnp.inf)

        def apply(tokens_bt, positions_bt, cache):
            logits_btv, cache, _ = self.lm.forward(params, tokens_bt, positions_bt, cache)
            return restricted(logits_btv), cache

        first_bv, cache = self._catch_up(params, ds, live_b)
        start_b = jnp.where(live_b, ds.length, -1)  # the first proposal's position in the draft's sequence
        proposal, cache = rollout(apply, cache, restricted(first_bv), start_b, keys, gamma, sampling, None)
        d_bg = proposal.tokens
        t_bg = jnp.where(live_b[:, None], draft_params["d2t"][d_bg], -1)
        q_bgt = self._target_q(proposal.q, draft_params["t2d"])
        # this round's proposals go to the scratch part of the sequence; `observe` keeps the accepted ones
        tokens = self._write(ds.tokens, ds.length, d_bg, jnp.where(live_b, gamma, 0))
        ds = ds.replace(cache=cache, tokens=tokens, cached=jnp.where(live_b, ds.length, ds.cached))
        return Proposal(t_bg, q_bgt), state.replace(draft=ds)

    def _target_q(self, q_bgv, t2d):
        """The draft's distributions [B,G,Vd] moved to target ids [B,G,Vt] (zero outside the intersection)."""
        return jnp.where(t2d >= 0, jnp.take(q_bgv, jnp.maximum(t2d, 0), axis=-1), 0.0)

    def observe(self, draft_params, target_params, ds: CrossState, observation):
        G = observation.proposed.shape[1]
        drafted_b = observation.proposed[:, 0]
        kept_b = jnp.minimum(observation.accepted, observation.committed)  # accepted proposals in the buffer
        # the rollout fed proposals 0..G-2 to the draft: the accepted ones among them are cached
        cached_b = jnp.where(drafted_b, ds.cached + jnp.minimum(kept_b, G - 1), ds.cached)
        ds = ds.replace(length=jnp.minimum(ds.length + kept_b, ds.tokens.shape[1]), cached=cached_b)
        ids_bk, n_b = self._encoding(draft_params, observation.next_tokens)
        with_next_b = (observation.committed > observation.accepted) & (observation.next_tokens >= 0)
        return self._append(ds, ids_bk, jnp.where(with_next_b, n_b, 0))
