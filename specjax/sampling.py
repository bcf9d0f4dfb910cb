"""Logits -> warped probabilities, and sampling from them, with settings per batch row.

The same `warp` is applied to target and drafter logits, in the order temperature, top-k, top-p,
min-p, so the rejection rule compares two distributions built the same way. Greedy (temperature 0) is the
point mass on the argmax. Axes: B batch (leading), any further axes, V vocabulary last.

Settings are runtime values (`RowSampling`: one temperature, top-k, top-p, min-p and greedy flag per row),
so a sweep over them reuses one compiled program and each row of a batch may sample differently;
nothing about them is static. A greedy row divides by temperature 1, never by its 0, and takes the
argmax. Functions also take one `SamplingConfig` for every row, for convenience.

Top-k and top-p never sort the vocabulary: their thresholds are found by bisection over the ordered
bit patterns of the float32 logits (vectorised passes of a count or a masked sum), and each filter
runs only when some row uses it (`lax.cond`). Over a large vocabulary the passes do not read every
id. Top-k with k <= CAND_BLOCKS bisects over the CAND_BLOCKS groups of CAND_WIDTH ids with the largest
maxima, which provably gives the same threshold (16,384 ids, not 262,144). Top-p first locates the
bin of a value histogram (scatter-adds) its edge falls in, then bisects over that bin's ids alone
(a few dozen), with the mass above the bin as the base; guards send a row whose bin cannot serve it
(crowded by exact ties) to the bisection over all ids. Min-p needs no search: p_i >= min_p * p_max
is exp(logit_i - logit_max) >= min_p, one pass; it commutes with top-k (both keep an upper set of
logits) and runs after top-p, whose kept set depends on the mass it sees. All three keep the largest
logit, so one exp pass serves top-p, min-p and the final normalisation.

Randomness is per row: `keys` is an array of B keys, one per row, so what row b draws depends
only on its own key and its own logits (running it alone with that key draws the same).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from specjax.config import SamplingConfig
from specjax.errors import ConfigError



@struct.dataclass
class RowSampling:
    """Sampling settings per row, as arrays [B] (or scalars, applying to every row)."""

    temperature: jax.Array  # [B] float32, > 0 (1 for greedy rows, which never divide by it)
    top_k: jax.Array  # [B] int32, 0 = off
    top_p: jax.Array  # [B] float32, 1 = off
    top_q: jax.Array  # [B] float32: 1 - top_p, computed in float64 (the mass a nucleus leaves out)
    min_p: jax.Array  # [B] float32, 0 = off
    greedy: jax.Array  # [B] bool

    def logical_axes(self) -> "RowSampling":
        b = ("batch",)
        return self.replace(temperature=b, top_k=b, top_p=b, top_q=b, greedy=b, min_p=b)

    @classmethod
    def of(cls, configs: SamplingConfig | Sequence[SamplingConfig], batch: int | None = None, *,
           vocab_size: int | None = None) -> "RowSampling":
        """Host-side arrays from one config for all `batch` rows or a list with one per row (rows past
        the list, e.g. batch padding, are greedy). top_k >= vocab_size is the same as off."""
        if isinstance(configs, SamplingConfig):
            configs = [configs] * (batch if batch is not None else 1)
        configs = list(configs)
        for i, c in enumerate(configs):
            if not isinstance(c, SamplingConfig):
                raise ConfigError(f"sampling[{i}] must be a SamplingConfig, got {type(c).__name__}")
        B = len(configs) if batch is None else batch
        if len(configs) > B:
            raise ConfigError(f"{len(configs)} sampling settings for a batch of {B} rows")
        temperature = np.ones((B,), np.float32)
        top_k = np.zeros((B,), np.int32)
        top_p = np.ones((B,), np.float32)
        top_q = np.zeros((B,), np.float32)
        min_p = np.zeros((B,), np.float32)
        greedy = np.ones((B,), bool)
        for i, c in enumerate(configs):
            t = np.float32(c.temperature)
            if t == 0:  # greedy (also a positive temperature too small for float32: it would divide by 0)
                continue
            greedy[i], temperature[i] = False, t
            if c.top_k is not None and (vocab_size is None or c.top_k < vocab_size):
                top_k[i] = c.top_k
            if c.top_p is not None:
                top_p[i], top_q[i] = c.top_p, 1.0 - c.top_p  # the difference in float64, then rounded
            if c.min_p is not None:
                min_p[i] = c.min_p
        return cls(temperature=temperature, top_k=top_k, top_p=top_p, top_q=top_q, greedy=greedy, min_p=min_p)


def rows(s: SamplingConfig | RowSampling) -> RowSampling:
    """One `SamplingConfig` as scalar `RowSampling` values (applying to every row); a RowSampling as is."""
    if isinstance(s, RowSampling):
        return s
    one = RowSampling.of(s, 1)
    return jax.tree.map(lambda x: jnp.asarray(x[0]), one)


def _per_row(x_b: jax.Array, like: jax.Array) -> jax.Array:
    """x [B] (or a scalar) shaped to broadcast against like [B, ..., V]."""
    x_b = jnp.asarray(x_b)
    return jnp.reshape(x_b, x_b.shape + (1,) * (like.ndim - x_b.ndim))


def mask_vocab(logits_v: jax.Array, vocab_size: int | None) -> jax.Array:
    """Send ids >= vocab_size (padding rows of the embedding) to -inf."""
    if vocab_size is None or vocab_size >= logits_v.shape[-1]:
        return logits_v
    ids = jnp.arange(logits_v.shape[-1])
    return jnp.where(ids < vocab_size, logits_v, -jnp.inf)


def _ordered(x: jax.Array) -> jax.Array:
    """float32 -> uint32 keys in the same order (-inf lowest), so thresholds can be found bit by bit."""
    u = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where((u >> 31) == 1, ~u, u | jnp.uint32(0x80000000))


def _row_reduce(x: jax.Array, op, reduce) -> jax.Array:
    """Reduce over the last axis, keepdims: halved by elementwise `op` while the length is even and
    above 256, then one `reduce`. XLA's CPU backend vectorises the elementwise steps and fuses the
    input's producer into the first (a plain reduction reads a materialised copy of it: a select
    before a min cost ~0.5 ms over [5, 262,144]); for sums the pairwise order also rounds less."""
    while x.shape[-1] > 256 and x.shape[-1] % 2 == 0:
        half = x.shape[-1] // 2
        x = op(x[..., :half], x[..., half:])
    return reduce(x, axis=-1, keepdims=True)


def _row_sum(x: jax.Array) -> jax.Array:
    """Sum over the last axis, keepdims (`_row_reduce`)."""
    return _row_reduce(x, jnp.add, jnp.sum)


def _largest_key(pred, shape) -> jax.Array:
    """Per position, the largest uint32 key T with pred(T) true, for a pred that holds for every key up
    to some point and for none above it: 32 steps that each fix one bit, from the top
    (`_largest_key_from` over every key)."""
    return _largest_key_from(pred, jnp.zeros(shape, jnp.uint32), jnp.full(shape, 0xFFFFFFFF, jnp.uint32))


def _largest_key_from(pred, lo, span) -> jax.Array:
    """The largest key T in [lo, lo + span] with pred(T) true, for pred true at lo and, above, true up
    to some point and false after it (per position; lo, span uint32 [..., 1], lo + span no overflow):
    bit by bit over the offset T - lo, as many steps as the widest span has bits (often far fewer than 32)."""
    bits = 32 - jax.lax.clz(jnp.max(span)).astype(jnp.int32)

    def step(i, d):
        candidate = d | (jnp.uint32(1) << (bits - 1 - i).astype(jnp.uint32))
        return jnp.where((candidate <= span) & pred(lo + candidate), candidate, d)

    return lo + jax.lax.fori_loop(0, bits, step, jnp.zeros(lo.shape, jnp.uint32))


CAND_WIDTH = 128  # ids per block of the candidate search
CAND_BLOCKS = 128  # blocks (those with the largest maxima) the top-k fast path searches


def _in_groups(v, fill=0):
    """[..., V] -> [..., CAND_WIDTH, nb]: group g (column g) holds ids g, g + nb, g + 2 nb, ...; the
    padding ids hold `fill`."""
    V = v.shape[-1]
    nb = -(-V // CAND_WIDTH)
    padded = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, nb * CAND_WIDTH - V)], constant_values=fill)
    return padded.reshape(v.shape[:-1] + (CAND_WIDTH, nb))


def _candidate_blocks(key, n: int):
    """The n groups of CAND_WIDTH ids whose largest keys are the largest, and the largest key outside
    them. Group g holds ids g, g + nb, g + 2 nb, ... (strided, so the group maxima are an elementwise
    max over CAND_WIDTH rows of nb keys). key [..., V] -> (group ids [..., n], outside max [..., 1],
    grouped keys [..., W, nb]). Padding ids get key 0, below every number's key. Ties between group
    maxima are broken by group id; nothing below depends on how.

    The n-th largest group maximum tau is found by the same bisection (over nb values); the groups
    above it, then those equal to it in id order, make up n, whose ids a small scatter lists."""
    kb = _in_groups(key)
    nb = kb.shape[-1]
    gmax = jnp.max(kb, axis=-2)  # [..., nb]
    tau = _largest_key(lambda t: jnp.sum(gmax >= t, axis=-1, keepdims=True) >= n, gmax.shape[:-1] + (1,))
    above = gmax > tau
    tie = gmax == tau
    need = n - jnp.sum(above, axis=-1, keepdims=True)
    chosen = above | (tie & (jnp.cumsum(tie, axis=-1) <= need))  # exactly n per row
    slot = jnp.where(chosen, jnp.cumsum(chosen, axis=-1) - 1, n)  # n: a dropped write
    rows = gmax.reshape(-1, nb)
    ids = jax.vmap(lambda sl: jnp.zeros((n + 1,), jnp.int32).at[sl].set(jnp.arange(nb, dtype=jnp.int32)))(
        slot.reshape(rows.shape))[:, :n].reshape(gmax.shape[:-1] + (n,))
    outside = jnp.max(jnp.where(chosen, jnp.uint32(0), gmax), axis=-1, keepdims=True)
    return ids, outside, kb


def _gather_blocks(xb, ids):
    """xb [..., W, nb], ids [..., n] -> the chosen groups, flattened [..., W * n]."""
    got = jnp.take_along_axis(xb, ids[..., None, :], axis=-1)
    return got.reshape(got.shape[:-2] + (-1,))


def _survivor_groups(x, e):
    """The CAND_BLOCKS groups of ids with the largest maxima, gathered: logits x (padding -inf) and
    e [..., CAND_WIDTH * CAND_BLOCKS], and held [..., 1]: no finite logit lies outside them. After a
    top-k with k <= CAND_BLOCKS it holds every survivor unless more than CAND_BLOCKS groups hold ids
    tied at the k-th value."""
    ids, outside, _ = _candidate_blocks(_ordered(x), CAND_BLOCKS)
    held = outside <= _ordered(jnp.float32(-jnp.inf))
    return _gather_blocks(_in_groups(x, -jnp.inf), ids), _gather_blocks(_in_groups(e), ids), held


def _use_candidates(V: int) -> bool:
    return -(-V // CAND_WIDTH) > CAND_BLOCKS


def _or_full(on, ok, fast, full):
    """`fast` where `ok`, else `full()`: computed only when some active row lacks the fast answer."""
    return jax.lax.cond(jnp.any(on & ~ok), lambda: jnp.where(ok, fast, full()), lambda: fast)


def _top_k_mask(logits_v, s: RowSampling):
    """Keep each row's k largest logits (ties with the k-th kept); rows with k = 0 untouched.

    No sort: the k-th largest value is the largest key T with at least k logits >= T, found by
    bisection over the ordered bit patterns (32 counting passes). For k <= CAND_BLOCKS the passes
    run over the CAND_BLOCKS blocks with the largest maxima only: the k-th largest value of that
    union is the k-th largest overall. (Were an id >= the k-th value v outside it, its block's
    maximum would be >= v, so every chosen block's would be too: that is CAND_BLOCKS >= k ids >= v
    in the union. Otherwise all ids >= v, at least k of them, are in it. Either way the union holds
    k ids >= v, and it holds nothing the whole vocabulary does not.) Larger k: all V ids."""
    V = logits_v.shape[-1]
    k = _per_row(jnp.where(s.greedy, 0, s.top_k), logits_v)
    on = (k > 0) & (k < V)

    def kth_of(keys, rows_k):
        return _largest_key(lambda t: _row_sum((keys >= t).astype(jnp.int32)) >= rows_k, keys.shape[:-1] + (1,))

    def apply(x):
        key = _ordered(x)
        if not _use_candidates(V):
            kth = kth_of(key, k)
        else:
            ids, _, kb = _candidate_blocks(key, CAND_BLOCKS)
            small = k <= CAND_BLOCKS
            fast = kth_of(_gather_blocks(kb, ids), k)
            kth = _or_full(on, small, fast, lambda: kth_of(key, k))
        return jnp.where(on & (key < kth), -jnp.inf, x)

    return jax.lax.cond(jnp.any(on), apply, lambda x: x, logits_v)


def _top_p_edge(x, top, e, s: RowSampling):
    """Per row, the key at or below which top-p drops ids (0: none; every number's key is above 0):
    keep the smallest set of highest-probability ids whose mass reaches p (ties at the edge kept), i.e.
    id i is kept iff the mass of the ids strictly above it is below p. Rows with p = 1 untouched. x:
    logits [..., V] (-inf: excluded); top: their max; e = exp(x - top), the unnormalised probabilities.

    No sort: the mass above a key T, M(T), falls as T rises, so the largest T with M(T) >= p (the
    edge) is found by bisection over the ordered bit patterns (masked sums), and exactly the ids
    above it are kept (in exact arithmetic the set a sorted cumulative sum gives). For p > 1/2 the
    same T is found from the other side, as the largest T whose tail mass (ids at or below T) is at
    most q = 1 - p: a float32 sum of the small tail resolves steps of its size where a sum near 1
    cannot (with p = 0.999 over 262,144 ids the tail's ids carry ~1e-9 each, below float32's
    resolution at 1), and q is formed in float64 on the host (`RowSampling.top_q`).

    Over a large vocabulary the bisection does not read all V ids: a histogram of the mass over value
    bins (`_edge_bin`) finds the bin the edge lies in, and the bisection runs over that bin's ids
    alone (gathered through EDGE_GROUPS groups of ids), with the mass above (or below) the bin as its
    base: one id or a few on a peaked row, ~30-60 on a flat one at V = 262,144. Rows whose edge bin is
    too crowded for the groups (many exactly tied logits) search all their ids (all V, or after a
    small top-k the gathered groups that hold every survivor).

    p is at least float32's smallest normal number (XLA:CPU flushes subnormals), so a top_p that rounds
    to 0 or a subnormal in float32 keeps the top id (and its ties), as any p below the top id's
    probability does."""
    V = x.shape[-1]
    p = _per_row(jnp.where(s.greedy, 1.0, jnp.maximum(s.top_p, jnp.finfo(jnp.float32).tiny)), x)
    q = _per_row(jnp.asarray(s.top_q, jnp.float32), x)
    on = p < 1.0
    tail = p > 0.5

    def edge_of(keys, probs, tail_base=0.0, head_base=0.0, start=None, span=None):  # the largest T with M(T) >= p
        def reaches(t):  # M(T) >= p, from the head or (p > 1/2) from the tail; bases: mass outside `keys`
            side = (keys > t) != tail  # the tail side is key <= t
            mass = jnp.sum(jnp.where(side, probs, 0.0), axis=-1, keepdims=True)
            return jnp.where(tail, tail_base + mass <= q, head_base + mass >= p)

        if start is None:
            return _largest_key(reaches, keys.shape[:-1] + (1,))
        return _largest_key_from(reaches, start, span)

    def search_over(xx, ee):  # the edge over ids xx (logits) and ee (their exp), all or a superset of the kept
        total = jnp.sum(ee, axis=-1, keepdims=True)
        if xx.shape[-1] // CAND_WIDTH <= EDGE_GROUPS:  # a small vocabulary: bisect over all ids
            return edge_of(_ordered(xx), ee / total)
        hk, hp, head_base, tail_base, start, span, ok = _edge_bin(xx, top, ee, total, p, q, tail)
        span = jnp.where(on, span, 0)  # rows with top-p off add no bisection steps
        return _or_full(on, ok, edge_of(hk, hp, tail_base, head_base, start, span),
                        lambda: edge_of(_ordered(xx), ee / total))

    def narrowed():
        """Every top-p row ran top-k with k <= CAND_BLOCKS before (Gemma 3's defaults: top-k 64, top-p
        0.95), so its finite logits are a few dozen ids: search the groups holding them, if they do."""
        xg, eg, held = _survivor_groups(x, e)
        return jax.lax.cond(jnp.all(~on | held), lambda: search_over(xg, eg), lambda: search_over(x, e))

    def search():
        if not _use_candidates(V):
            edge = search_over(x, e)
        else:
            k = _per_row(jnp.where(s.greedy, 0, s.top_k), x)
            after_top_k = jnp.all(~on | ((k > 0) & (k <= CAND_BLOCKS) & (k < V)))
            edge = jax.lax.cond(after_top_k, narrowed, lambda: search_over(x, e))
        return jnp.where(on, edge, 0)

    return jax.lax.cond(jnp.any(on), search, lambda: jnp.zeros(x.shape[:-1] + (1,), jnp.uint32))


EDGE_BINS = 32768  # value bins of the histogram that locates a row's top-p edge
EDGE_GROUPS = 64  # candidate groups (of CAND_WIDTH ids) that must hold the edge bin's ids


def _edge_bin(x, top, e, total, p, q, tail):
    """The ids of the histogram bin holding each row's top-p edge, gathered through candidate groups
    of ids, for a bisection over a few dozen ids instead of all V. x: logits [..., V]; top: their
    max; e = exp(x - top) and total its sum (the probabilities are e / total). -> (keys, probs
    [..., CAND_WIDTH * EDGE_GROUPS]: the bin's ids, others key 0 and mass 0; head base: the mass above
    the bin; tail base: the mass below it; start, span [..., 1]: the edge is a key in
    [start, start + span]; ok [..., 1]: the answer is exact for this row).

    Bins: b(x) = floor((clip(x, min, max) - min) * (EDGE_BINS - 1) / (max - min)) over the finite
    logits' range. Each float operation is monotone, so b is non-decreasing in x: every bin is an
    interval of the key order and ties share a bin (-inf ids, of no mass, fall in bin 0 but are not
    its ids). One scatter-add gives each bin's mass; `_crossing` finds the bin where M crosses p (head:
    the last bin whose suffix mass reaches p, so the mass above it is below p and the edge T lies
    between its smallest key - 1 and its largest; tail: the first bin whose prefix mass exceeds q).
    For T in that range M(T) is the mass above the bin plus the bin's ids above T (the tail alike),
    which the bisection over the gathered ids computes. The bin's ids are gathered when at most
    EDGE_GROUPS groups hold them; rows where more do (many exactly tied logits), or whose bins cannot
    be formed (min = max, an overflowing range), are not ok."""
    finite = jnp.isfinite(x)
    lo = _row_reduce(jnp.where(finite, x, jnp.inf), jnp.minimum, jnp.min)
    span = top - lo
    formed = jnp.isfinite(span) & (span > 0)
    lo, hi = jnp.where(formed, lo, 0.0), jnp.where(formed, top, 0.0)
    scale = jnp.where(formed, (EDGE_BINS - 1) / jnp.where(formed, span, 1.0), 0.0)
    b = jnp.clip(((jnp.clip(x, lo, hi) - lo) * scale).astype(jnp.int32), 0, EDGE_BINS - 1)  # (a NaN's bin too)
    rows, er = b.reshape(-1, b.shape[-1]), e.reshape(-1, b.shape[-1])
    hist = jnp.concatenate([_histogram(rows[c], er[c]) for c in _chunks(rows.shape[0], HIST_SCATTERS)])
    mass = hist.reshape(b.shape[:-1] + (EDGE_BINS,)) / total
    at, head_base, tail_base, found = _crossing(mass, p, q, tail)
    inside = _in_groups((b == at) & finite)  # [..., CAND_WIDTH, nb]
    ids, used, fits = _groups_holding(jnp.any(inside, axis=-2), EDGE_GROUPS)
    slots = jnp.broadcast_to(used[..., None, :], used.shape[:-1] + (CAND_WIDTH, EDGE_GROUPS))  # `_gather_blocks`' layout
    held = _gather_blocks(inside, ids) & slots.reshape(used.shape[:-1] + (-1,))  # each bin id once
    hk = jnp.where(held, _ordered(_gather_blocks(_in_groups(x), ids)), jnp.uint32(0))
    hp = jnp.where(held, _gather_blocks(_in_groups(e), ids) / total, 0.0)
    # The bisection's predicate at either end of the bin, as it computes them: true below the bin's
    # keys and false at its largest key, so the edge it returns lies in the bin whatever the rounding.
    inner = jnp.sum(hp, axis=-1, keepdims=True)
    brackets = jnp.where(tail, (tail_base <= q) & (tail_base + inner > q), (head_base < p) & (head_base + inner >= p))
    smallest = jnp.min(jnp.where(held, hk, jnp.uint32(0xFFFFFFFF)), axis=-1, keepdims=True)
    largest = jnp.max(hk, axis=-1, keepdims=True)
    ok = formed & found & fits & brackets & (largest >= smallest)
    start = jnp.where(ok, smallest - 1, 0)  # smallest >= 1: every number's key is
    return hk, hp, head_base, tail_base, start, jnp.where(ok, largest - 1 - start, 0), ok


HIST_SCATTERS = 4  # independent scatter-adds the histogram's rows are split into (XLA may run them side by side)


def _chunks(n: int, k: int) -> list[slice]:
    """[0, n) in at most k contiguous slices of near-equal length."""
    k = max(1, min(n, k))
    bounds = [n * i // k for i in range(k + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(k)]


def _histogram(bins, weights):
    """bins int32 [R, V] in [0, EDGE_BINS), weights [R, V] -> per-row sums of the weights by bin [R, EDGE_BINS]:
    one scatter-add over the flattened rows (a vmapped one is slower on XLA's CPU backend); `_edge_bin`
    splits the rows into HIST_SCATTERS such calls."""
    R = bins.shape[0]
    flat = (bins + (jnp.arange(R, dtype=jnp.int32) * EDGE_BINS)[:, None]).reshape(-1)
    out = jnp.zeros(R * EDGE_BINS, jnp.float32).at[flat].add(weights.reshape(-1), mode="promise_in_bounds")
    return out.reshape(R, EDGE_BINS)


def _crossing(mass, p, q, tail):
    """Where the running mass over the bins crosses p: head, the last bin whose suffix mass (bins at
    or above it) reaches p; tail, the first bin whose prefix mass exceeds q. In two levels (bins in
    blocks of 128: the block, then the bin inside it), so only running sums over 128 values are taken
    (XLA's CPU cumsum over 16,384 values costs ~0.6 ms). mass [..., nbins] ->
    (bin [..., 1], head base: the mass of the bins above it, tail base: of those below it, found [..., 1])."""
    n = mass.shape[-1]
    w = 128 if n % 128 == 0 else n
    blocks = mass.reshape(mass.shape[:-1] + (n // w, w))
    totals = jnp.sum(blocks, axis=-1)  # [..., n // w]
    suffix_t = jnp.flip(jnp.cumsum(jnp.flip(totals, -1), axis=-1), -1)  # blocks >= j
    prefix_t = jnp.cumsum(totals, axis=-1)  # blocks <= j
    block = jnp.where(tail, jnp.sum(prefix_t <= q, axis=-1, keepdims=True),
                      jnp.sum(suffix_t >= p, axis=-1, keepdims=True) - 1)
    at_block = jnp.clip(block, 0, n // w - 1)
    none = [(0, 0)] * (totals.ndim - 1)
    above_block = jnp.take_along_axis(jnp.pad(suffix_t, none + [(0, 1)]), at_block + 1, axis=-1)
    below_block = jnp.take_along_axis(jnp.pad(prefix_t, none + [(1, 0)]), at_block, axis=-1)
    inner = jnp.take_along_axis(blocks, at_block[..., None], axis=-2)[..., 0, :]  # [..., w]
    suffix = above_block + jnp.flip(jnp.cumsum(jnp.flip(inner, -1), axis=-1), -1)  # bins >= b
    prefix = below_block + jnp.cumsum(inner, axis=-1)  # bins <= b
    within = jnp.where(tail, jnp.sum(prefix <= q, axis=-1, keepdims=True),
                       jnp.sum(suffix >= p, axis=-1, keepdims=True) - 1)
    found = (block >= 0) & (block < n // w) & (within >= 0) & (within < w)
    i = jnp.clip(within, 0, w - 1)
    head_base = jnp.take_along_axis(jnp.pad(suffix, none + [(0, 1)]), i + 1, axis=-1)
    head_base = jnp.where(i + 1 < w, head_base, above_block)
    tail_base = jnp.take_along_axis(jnp.pad(prefix, none + [(1, 0)]), i, axis=-1)
    tail_base = jnp.where(i > 0, tail_base, below_block)
    return at_block * w + i, head_base, tail_base, found


def _groups_holding(has, n: int):
    """The first n groups (in id order) with has [..., nb] true -> (group ids [..., n], used [..., n]:
    the slot names such a group (the unused slots name group 0, which the caller must not read as
    another copy of it), fits [..., 1]: no group with has true was left out)."""
    nb = has.shape[-1]
    count = jnp.cumsum(has.astype(jnp.int32), axis=-1)  # nb values: a few thousand at most
    slot = jnp.where(has & (count <= n), count - 1, n)  # n: a dropped write
    rows = slot.reshape(-1, nb)
    ids = jax.vmap(lambda sl: jnp.zeros((n + 1,), jnp.int32).at[sl].set(jnp.arange(nb, dtype=jnp.int32)))(rows)
    used = jnp.arange(n, dtype=jnp.int32) < count[..., -1:]
    return ids[:, :n].reshape(has.shape[:-1] + (n,)), used, count[..., -1:] <= n


def _warped(logits_v: jax.Array, s: RowSampling, vocab_size: int | None):
    """-> (logits after temperature and top-k [..., V], e = exp(logits - their max), keep [..., V] bool:
    the ids top-p and min-p leave). Every filter keeps the largest logit, so that max is the max of
    the warped logits too, and one exp pass serves top-p, min-p and the final normalisation.

    Min-p keeps the ids whose probability is at least min_p times the largest one's (the largest
    always kept): e >= min_p, the ratio being the same before and after renormalising. It commutes
    with top-k (both keep an upper set of logits) and runs after top-p, whose kept set depends on
    the mass it sees; rows with min_p = 0 untouched."""
    x = mask_vocab(logits_v.astype(jnp.float32), vocab_size)
    x = _top_k_mask(x / _per_row(jnp.where(s.greedy, 1.0, s.temperature), x), s)
    top = jnp.max(x, axis=-1, keepdims=True)
    e = jnp.exp(x - jnp.where(top == -jnp.inf, 0.0, top))  # a NaN (or +inf) logit makes every e NaN: no silent answer
    edge = _top_p_edge(x, top, e, s)
    min_p = _per_row(jnp.where(s.greedy, 0.0, s.min_p), x)
    return x, e, (_ordered(x) > edge) & ~(e < min_p)  # (NaN kept: it shows in the output)


def warp_logits(logits_v: jax.Array, s: SamplingConfig | RowSampling, vocab_size: int | None = None) -> jax.Array:
    """Filtered, temperature-scaled logits (float32); -inf marks excluded ids. Greedy rows are
    scaled by 1 (use `warp` or `sample` for their point mass)."""
    x, _, keep = _warped(logits_v, rows(s), vocab_size)
    return jnp.where(keep, x, -jnp.inf)


def _sampled_mass(logits_v, s: RowSampling, vocab_size):
    """The warped distribution, unnormalised: exp(warped logits - their max), 0 where excluded."""
    _, e, keep = _warped(logits_v, s, vocab_size)
    return jnp.where(keep, e, 0.0)


def warp(logits_v: jax.Array, s: SamplingConfig | RowSampling, vocab_size: int | None = None) -> jax.Array:
    """Probabilities [..., V] of the warped distribution (a one-hot argmax for greedy rows)."""
    s = rows(s)

    def point(x):
        return jax.nn.one_hot(greedy(x, vocab_size), x.shape[-1], dtype=jnp.float32)

    def sampled(x):
        mass = _sampled_mass(x, s, vocab_size)
        probs = mass / jnp.sum(mass, axis=-1, keepdims=True)
        # The argmax only when some row is greedy: it costs as much as the softmax over a large vocabulary.
        return jax.lax.cond(jnp.any(s.greedy), lambda: jnp.where(_per_row(s.greedy, x), point(x), probs), lambda: probs)

    return jax.lax.cond(jnp.all(s.greedy), point, sampled, logits_v)


def argmax(x: jax.Array) -> jax.Array:
    """jnp.argmax over the last axis (the first index of the largest value; a NaN counts as the
    largest, as there) as two plain reductions, a max and a min over indices, which XLA's CPU
    backend vectorises: its fused (value, index) reduction took 3.1 ms over [5, 262,144] against
    0.6 ms for this. -> int32 [...]."""
    m = jnp.max(x, axis=-1, keepdims=True)
    hit = (x == m) | (jnp.isnan(x) & jnp.isnan(m)) if jnp.issubdtype(x.dtype, jnp.floating) else x == m
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(hit, iota, x.shape[-1]), axis=-1)


def last_index(mask: jax.Array) -> jax.Array:
    """The last index where `mask` holds along the last axis (-1 where it never does) -> int32 [...]."""
    iota = jax.lax.broadcasted_iota(jnp.int32, mask.shape, mask.ndim - 1)
    return jnp.max(jnp.where(mask, iota, -1), axis=-1)


def greedy(logits_v: jax.Array, vocab_size: int | None = None) -> jax.Array:
    return argmax(mask_vocab(logits_v, vocab_size))


def row_keys(key: jax.Array, batch: int) -> jax.Array:
    """One PRNG key per row [batch] from one key: row b gets fold_in(key, b)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))


CDF_BLOCK = 256  # inverse_cdf's block width: a running sum over V / 256 block totals, then over one block


def inverse_cdf(u: jax.Array, probs_v: jax.Array) -> jax.Array:
    """The id drawn by uniform u [...] in [0, 1) from probabilities [..., V] (rows need not be
    normalised): the first id whose cumulative mass exceeds u times the total. One uniform per draw,
    no noise over the vocabulary; the running sum is two-level (block totals, then within the chosen
    block), so the cost is linear in V. An id of zero mass is never drawn: should rounding leave
    no id past the target inside the chosen block (or past the total), the last id with mass there
    is taken."""
    V = probs_v.shape[-1]
    nb = -(-V // CDF_BLOCK)
    pad = nb * CDF_BLOCK - V
    blocks = jnp.pad(probs_v, [(0, 0)] * (probs_v.ndim - 1) + [(0, pad)]).reshape(probs_v.shape[:-1] + (nb, CDF_BLOCK))
    cum_n = jnp.cumsum(jnp.sum(blocks, axis=-1), axis=-1)  # [..., nb]
    target = u * cum_n[..., -1]
    j = jnp.minimum(jnp.sum(cum_n <= target[..., None], axis=-1), nb - 1)  # the block holding the draw
    before = jnp.where(j > 0, jnp.take_along_axis(cum_n, jnp.maximum(j - 1, 0)[..., None], axis=-1)[..., 0], 0.0)
    inner = jnp.take_along_axis(blocks, j[..., None, None], axis=-2)[..., 0, :]  # [..., CDF_BLOCK]
    i = jnp.sum(before[..., None] + jnp.cumsum(inner, axis=-1) <= target[..., None], axis=-1)
    last_in_block = last_index(inner > 0) % CDF_BLOCK  # (none: the block's last id, as ever)
    ids = j * CDF_BLOCK + jnp.minimum(i, last_in_block)
    last = last_index(probs_v > 0) % V
    return jnp.where(jnp.take_along_axis(probs_v, jnp.minimum(ids, V - 1)[..., None], axis=-1)[..., 0] > 0,
                     ids, last).astype(jnp.int32)


def uniform(keys, shape: tuple[int, ...]) -> jax.Array:
    """Uniforms [B, *shape], row b from keys[b]."""
    return jax.vmap(lambda k: jax.random.uniform(k, shape))(keys)


def split_keys(keys_b: jax.Array, n: int) -> tuple[jax.Array, ...]:
    """Each row's key split in n: -> n key arrays [B]."""
    split_bn = jax.vmap(lambda k: jax.random.split(k, n))(keys_b)
    return tuple(split_bn[:, i] for i in range(n))


def _draw_uniforms(keys, batch_shape) -> jax.Array:
    """One uniform per draw: per row from B keys, or all of batch_shape from a single key."""
    if jnp.ndim(keys) == 0:
        return jax.random.uniform(keys, batch_shape)
    return uniform(keys, batch_shape[1:])


def sample(keys, logits_v: jax.Array, s: SamplingConfig | RowSampling, vocab_size: int | None = None) -> jax.Array:
    """Draw ids [B, ...] from the warped distribution of logits [B, ..., V] (the argmax for greedy
    rows) by inverse CDF: one uniform per draw, from each row's key (or all from one key)."""
    s = rows(s)

    def sampled(x):
        drawn = inverse_cdf(_draw_uniforms(keys, x.shape[:-1]), _sampled_mass(x, s, vocab_size))
        return jax.lax.cond(jnp.any(s.greedy), lambda: jnp.where(_per_row(s.greedy, drawn), greedy(x, vocab_size), drawn),
                            lambda: drawn)

    return jax.lax.cond(jnp.all(s.greedy), lambda x: greedy(x, vocab_size), sampled, logits_v)


def sample_probs(keys, probs_v: jax.Array) -> jax.Array:
    """Draw ids [B, ...] from explicit probabilities [B, ..., V] (rows need not be normalised)."""
    return inverse_cdf(_draw_uniforms(keys, probs_v.shape[:-1]), probs_v)
