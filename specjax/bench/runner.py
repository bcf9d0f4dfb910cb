"""Measure one benchmark point: a target, a drafter (or none), G, batch size, sampling, prompts.

Timing rules (BENCHMARKS.md relies on them): the first call of every compiled program is a warm-up
that also measures compile time; only later calls are timed, each with `block_until_ready`; the
figure reported is the median over repeats. Tokens per second counts emitted tokens of real
(non-padding) rows, over the wall time of the whole jitted generate call (prefill included).
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

import numpy as np

from specjax import api
from specjax.config import SamplingConfig


def batches(prompts: Sequence, batch: int) -> list[list]:
    """Consecutive groups of `batch` prompts (the last group is topped up from the start)."""
    out = []
    for i in range(0, len(prompts), batch):
        group = list(prompts[i:i + batch])
        while len(group) < batch:
            group.append(prompts[len(group) % len(prompts)])
        out.append(group)
    return out


def measure(target, prompts: Sequence, *, draft=None, gamma: int = 4, batch: int = 1,
            sampling: SamplingConfig | None = None, max_new_tokens: int = 64, repeats: int = 3,
            chat: bool = False, seed: int = 0, eos_ids=None) -> dict[str, Any]:
    """Run every batch of `prompts` `repeats` times (after one warm-up) -> a dict of figures."""
    sampling = sampling or SamplingConfig()
    groups = batches(prompts, batch)
    kwargs = dict(draft=draft, gamma=gamma, sampling=sampling, max_new_tokens=max_new_tokens, chat=chat,
                  eos_ids=eos_ids)
    compile_s, runs = 0.0, []
    accepted = reached = rounds = emitted = 0
    by_pos_acc: list[float] = []
    by_pos_reached: list[float] = []
    for g, group in enumerate(groups):
        warm = api.generate(target, group, seed=seed, **kwargs)
        compile_s += warm.timing["compile_s"]
        for r in range(repeats):
            res = api.generate(target, group, seed=seed + 1 + r, **kwargs)
            tokens = sum(res.stats["new_tokens"])
            runs.append((g, res.timing["run_s"], tokens))
            s = res.stats
            if draft is not None:
                acc_at = np.asarray(s["accepted_at"]).sum(0)
                reach = np.asarray(s["reached_at"]).sum(0)
                accepted += int(acc_at.sum())
                reached += int(reach.sum())
                rounds += sum(s["rounds"])
                emitted += tokens - len(group)  # the prefill's first token is not a round's
                by_pos_acc = list(np.add(by_pos_acc, acc_at)) if by_pos_acc else list(acc_at)
                by_pos_reached = list(np.add(by_pos_reached, reach)) if by_pos_reached else list(reach)
    # per repeat: total tokens and time over all groups
    per_repeat = []
    for r in range(repeats):
        rows = [runs[g * repeats + r] for g in range(len(groups))]
        per_repeat.append((sum(x[1] for x in rows), sum(x[2] for x in rows)))
    tps = [tok / sec for sec, tok in per_repeat]
    lat = [sec / tok * 1000 * batch for sec, tok in per_repeat]  # ms per token of one sequence
    out = {
        "run_s": statistics.median(sec for sec, _ in per_repeat),  # all groups of one repeat
        "tokens": per_repeat[0][1],
        "groups": len(groups),
        "tokens_per_s": statistics.median(tps),
        "tokens_per_s_runs": tps,
        "latency_ms_per_token": statistics.median(lat),
        "compile_s": compile_s,
        "batch": batch, "gamma": gamma if draft is not None else 0, "max_new_tokens": max_new_tokens,
        "prompts": len(prompts), "repeats": repeats,
    }
    if draft is not None:
        out["acceptance_rate"] = accepted / reached if reached else None
        out["mean_tokens_per_round"] = emitted / rounds if rounds else None
        out["acceptance_by_position"] = [float(a / r) if r else None for a, r in zip(by_pos_acc, by_pos_reached)]
    return out
