"""Speculation statistics and the formulas of Leviathan et al. (2023).

tau(a, G) = (1 - a^(G+1)) / (1 - a): expected tokens per round for acceptance rate a, window G.
speedup(a, G, c, v) = tau / (G*c + v): c = drafter step / target step, v = target (G+1)-token verify
/ target 1-token step (Leviathan's Theorem 3.8 has v = 1).
"""

from __future__ import annotations

import numpy as np


def expected_tokens_per_round(a: float, gamma: int) -> float:
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"acceptance rate must be in [0, 1], got {a}")
    if a == 1.0:
        return float(gamma + 1)
    return (1.0 - a ** (gamma + 1)) / (1.0 - a)


def predicted_speedup(a: float, gamma: int, c: float, v: float = 1.0) -> float:
    return expected_tokens_per_round(a, gamma) / (gamma * c + v)


def summarize(rounds, drafted, accepted, accepted_at, reached_at, emitted, rows: int | None = None) -> dict:
    """Per-row counters (numpy or lists, first `rows` rows) -> per-row lists and aggregates.

    acceptance_rate: the per-token acceptance probability a of the formulas, estimated as accepted
      proposals / proposals that were reached (proposal i is reached when it exists and 0..i-1 were
      accepted; each reached proposal is one Bernoulli(a) trial).
    accepted_per_drafted: accepted / all proposals made (1 - the fraction of drafting wasted).
    mean_tokens_per_round: emitted tokens (bonus included; prefill's first token excluded) / rounds.
    acceptance_by_position[i]: P(proposal i accepted | proposals 0..i-1 accepted).
    """
    rows = len(rounds) if rows is None else rows
    r, d, a = (np.asarray(x)[:rows].astype(np.int64) for x in (rounds, drafted, accepted))
    at = np.asarray(accepted_at)[:rows].astype(np.int64)
    reached = np.asarray(reached_at)[:rows].astype(np.int64)
    e = np.asarray(emitted)[:rows].astype(np.int64)
    G = at.shape[1] if at.ndim == 2 else 0
    total_reached, total_at = reached.sum(0), at.sum(0)
    by_pos = [float(total_at[i] / total_reached[i]) if total_reached[i] else None for i in range(G)]
    return {
        "rounds": r.tolist(), "drafted": d.tolist(), "accepted": a.tolist(), "accepted_at": at.tolist(),
        "reached_at": reached.tolist(),
        "acceptance_rate": float(total_at.sum() / total_reached.sum()) if total_reached.sum() else None,
        "accepted_per_drafted": float(a.sum() / d.sum()) if d.sum() else None,
        "mean_tokens_per_round": float(e.sum() / r.sum()) if r.sum() else None,
        "acceptance_by_position": by_pos,
    }
