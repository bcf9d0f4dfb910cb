"""The draft vocabulary: the N most frequent target tokens of the training data, and its maps.

Axes: V the target's vocabulary, Vd = N the draft vocabulary.

`target_ids` [Vd] lists the kept target ids in increasing order (draft id i is target id
target_ids[i], i.e. d2t[i] = target_ids[i] - i in the community layout), `t2d` [V] marks them.
Coverage is the share of target tokens (counted with repeats) that the draft vocabulary contains:
on held-out data it bounds how often a draft can propose the right token at all.
"""

from __future__ import annotations

import numpy as np


def count_tokens(sequences, vocab_size: int) -> np.ndarray:
    """Occurrences [V] of every target id in `sequences` (iterables of ids)."""
    counts = np.zeros((vocab_size,), np.int64)
    for seq in sequences:
        ids = np.asarray(seq, np.int64)
        if ids.size:
            if ids.min() < 0 or ids.max() >= vocab_size:
                raise ValueError(f"token ids must lie in [0, {vocab_size}); got [{ids.min()}, {ids.max()}]")
            counts += np.bincount(ids, minlength=vocab_size)
    return counts


def most_frequent(counts: np.ndarray, size: int, *, always=()) -> np.ndarray:
    """The `size` most frequent ids (ties: the smaller id first), plus `always` (e.g. EOS ids, which
    end every response), sorted -> target_ids [Vd]."""
    V = counts.shape[0]
    if not 1 <= size <= V:
        raise ValueError(f"draft vocabulary size {size} must lie in [1, {V}]")
    forced = sorted({int(i) for i in always if 0 <= int(i) < V})
    order = np.lexsort((np.arange(V), -counts))  # by count descending, then id ascending
    rest = [int(i) for i in order if int(i) not in set(forced)][:size - len(forced)]
    return np.sort(np.asarray(forced + rest, np.int64))


def maps(target_ids: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (d2t [Vd] int64 offsets: target id = i + d2t[i], t2d [V] bool)."""
    target_ids = np.asarray(target_ids, np.int64)
    t2d = np.zeros((vocab_size,), bool)
    t2d[target_ids] = True
    return target_ids - np.arange(len(target_ids)), t2d


def coverage(counts: np.ndarray, target_ids: np.ndarray) -> float:
    """Share of the counted tokens that are in the draft vocabulary (1.0 for no tokens)."""
    total = counts.sum()
    return float(counts[np.asarray(target_ids)].sum() / total) if total else 1.0
