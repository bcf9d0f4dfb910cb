"""Measure one benchmark point: a `Sampler` (target, drafter or none, G), batch size, sampling, prompts.

Timing rules (BENCHMARKS.md relies on them): the first call of every compiled program is a warm-up
that also measures compile time; only later calls are timed, each with `block_until_ready`; the
figure reported is the median over repeats. Tokens per second counts emitted tokens of real
(non-padding) rows, over the wall time of the whole jitted generate call (prefill included).

Time to first token (`ttft_ms`) is the `start` half of the very programs `measure` runs: placing
the inputs, the prefill of the target (and of the drafter) and the first token.

Speculation statistics are `specjax.report.summarize_rounds` (`metrics.summarize`) over every row
of every timed call.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import jax
import numpy as np

from specjax.config import SamplingConfig
from specjax.report import COUNTERS, summarize_rounds
from specjax.sampler import Sampler, encode_prompts


def batches(prompts: Sequence, batch: int) -> list[list]:
    """Consecutive groups of `batch` prompts (the last group is topped up from the start)."""
    out = []
    for i in range(0, len(prompts), batch):
        group = list(prompts[i:i + batch])
        group += [prompts[j % len(prompts)] for j in range(batch - len(group))]
        out.append(group)
    return out


def measure(sampler: Sampler, prompts: Sequence, *, batch: int = 1, sampling: SamplingConfig | None = None,
            max_new_tokens: int = 64, repeats: int = 3, chat: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run every batch of `prompts` `repeats` times (after one warm-up) -> a dict of figures."""
    return measure_many([sampler], prompts, batch=batch, sampling=sampling, max_new_tokens=max_new_tokens,
                        repeats=repeats, chat=chat, seed=seed)[0]


def measure_many(samplers: Sequence[Sampler], prompts: Sequence, *, batch: int = 1,
                 sampling: SamplingConfig | None = None, max_new_tokens: int = 64, repeats: int = 3,
                 chat: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """`measure` for several samplers with their timed calls interleaved (per batch of prompts and
    repeat, one call of each in turn, after every sampler's warm-up), so a burst of load on a shared
    machine falls on all of them alike and their ratios hold within one run. -> one dict each."""
    sampling = sampling or SamplingConfig()
    groups = batches(prompts, batch)
    call = dict(sampling=sampling, max_new_tokens=max_new_tokens, chat=chat)
    n = len(samplers)
    compile_s = [0.0] * n
    seconds = np.zeros((n, repeats, len(groups)))
    tokens = np.zeros((n, repeats, len(groups)), np.int64)
    rows: list[dict[str, list]] = [{name: [] for name in (*COUNTERS, "new_tokens")} for _ in samplers]
    windows: list[list[tuple[float, int]]] = [[] for _ in samplers]  # gamma="auto": (window x rounds, plain rounds)
    for g, group in enumerate(groups):
        for i, sampler in enumerate(samplers):
            compile_s[i] += sampler(group, seed=seed, **call).timing["compile_s"]
        for r in range(repeats):
            for i, sampler in enumerate(samplers):
                res = sampler(group, seed=seed + 1 + r, **call)
                seconds[i, r, g], tokens[i, r, g] = res.timing["run_s"], sum(res.stats["new_tokens"])
                for name in rows[i]:
                    rows[i][name] += res.stats.get(name, [])
                if res.stats.get("mean_window") is not None:
                    windows[i].append((res.stats["mean_window"] * sum(res.stats["rounds"]), res.stats["plain_rounds"]))
    return [_figures(samplers[i], seconds[i], tokens[i], rows[i], windows[i], compile_s[i], batch=batch,
                     max_new_tokens=max_new_tokens, prompts=len(prompts), repeats=repeats) for i in range(n)]


def _figures(sampler, seconds, tokens, rows, windows, compile_s, *, batch, max_new_tokens, prompts, repeats) -> dict:
    per_repeat = list(zip(seconds.sum(1).tolist(), tokens.sum(1).tolist()))  # all groups of one repeat
    tps = [tok / sec for sec, tok in per_repeat]
    out = {
        "run_s": statistics.median(sec for sec, _ in per_repeat),
        "tokens": per_repeat[0][1],
        "groups": seconds.shape[1],
        "tokens_per_s": statistics.median(tps),
        "tokens_per_s_runs": tps,
        "latency_ms_per_token": statistics.median(sec / tok * 1000 * batch for sec, tok in per_repeat),
        "compile_s": compile_s,
        "batch": batch, "gamma": sampler.gamma, "max_new_tokens": max_new_tokens,
        "prompts": prompts, "repeats": repeats,
    }
    if sampler.drafter is not None:
        summary = summarize_rounds(rows, rows["new_tokens"])
        out.update({k: summary[k] for k in ("acceptance_rate", "accepted_per_drafted", "mean_tokens_per_round",
                                            "acceptance_by_position")})
        out["rounds_total"] = int(sum(rows["rounds"]))
        out["accepted_at_total"] = np.sum(np.asarray(rows["accepted_at"]), axis=0).tolist() if rows["accepted_at"] else []
        if windows:  # gamma="auto": the mean verify width over all rounds, and the rounds that were plain steps
            rounds = sum(rows["rounds"])
            out["mean_window"] = sum(w for w, _ in windows) / rounds if rounds else None
            out["plain_rounds"] = sum(p for _, p in windows)
    return out


def ttft_ms(sampler: Sampler, prompts: Sequence, *, batch: int = 1, sampling: SamplingConfig | None = None,
            max_new_tokens: int = 64, repeats: int = 3, chat: bool = False, seed: int = 0) -> float:
    """Time to first token in ms: the median over the batches of `prompts` and `repeats` of the
    compiled program's `start` alone, for the programs `measure` with the same settings runs (so
    nothing new compiles); a warm-up call first."""
    sampling = sampling or SamplingConfig()
    runs = []
    for group in batches(prompts, batch):
        ids = encode_prompts(sampler.tokenizer, group, chat=chat)
        own = getattr(sampler.drafter, "own_prompt", False)  # a draft with its own tokenizer: as the call does it
        batch_in = sampler.batch(ids, sampling=sampling, max_new_tokens=max_new_tokens, seed=seed,
                                 defer_draft_prompt=own)
        decoder = sampler.decoder(max_new_tokens=max_new_tokens, prompt_len=batch_in.prompt.shape[1],
                                  batch=batch_in.prompt.shape[0])
        if own:
            batch_in = sampler.with_draft_prompt(batch_in, sampler.draft_prompts(group, ids, chat=chat), decoder)
        program, _ = sampler.program(decoder, batch_in)
        args = (sampler.params, sampler.draft_params, batch_in)

        def start():  # `Program.__call__` up to its `run`
            return jax.block_until_ready(program.start(*program.place(*args)))

        start()
        for _ in range(max(1, repeats)):
            began = time.perf_counter()
            start()
            runs.append(time.perf_counter() - began)
    return statistics.median(runs) * 1000
