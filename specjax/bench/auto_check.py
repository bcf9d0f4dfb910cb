"""A quick check of gamma="auto" against plain decoding and a fixed window, run side by side.

    python -m specjax.bench.auto_check [REPEATS]

SmolLM2-135M-Instruct (float32), the grounded and chat suites (4 prompts each), batch sizes 1 and 4,
64 new tokens (EOS ignored), greedy. For every point each sampler runs every group of prompts once
as a warm-up, then REPEATS (default 3) timed rounds, interleaved (plain, auto, fixed G, ...), so a
slow phase of this shared machine hits them alike; tokens/s = emitted tokens / wall time of the
whole calls (prefill included); the median over repeats is reported, and its ratio to plain
decoding's. Calibrations in $SPECJAX_CACHE are used where present (`specjax calibrate`).
The full sweep over batch sizes 1..64 is `specjax bench configs/bench/auto.yaml`.
"""

from __future__ import annotations

import json
import statistics
import sys

SAMPLERS = {"plain": (None, 8), "ngram auto": ("ngram:3:1", "auto"), "ngram G=8": ("ngram:3:1", 8),
            "layerskip auto": ("layerskip:0-11,18-29", "auto"),
            "eagle auto": ("eagle:smollm2-135m-instruct-eagle3", "auto")}


def main(argv=None) -> int:
    from specjax.bench.prompts import load_suite
    from specjax.bench.runner import batches
    from specjax.models import load, load_eagle
    from specjax.sampler import Sampler

    argv = sys.argv[1:] if argv is None else argv
    repeats = int(argv[0]) if argv else 3
    model = load("smollm2-135m-instruct", progress=False)
    samplers = {k: Sampler(model, d, gamma=g, eos_ids=(), load_head=lambda p: load_eagle(p))
                for k, (d, g) in SAMPLERS.items()}
    out = {}
    for suite in ("grounded", "chat"):
        texts, chat = load_suite(suite, 4)
        for B in (1, 4):
            groups = batches(texts, B)
            call = dict(max_new_tokens=64, chat=chat)
            tps = {k: [] for k in samplers}
            window = {}
            for s in samplers.values():
                for g in groups:
                    s(g, seed=0, **call)
            for r in range(repeats):
                for k, s in samplers.items():
                    sec = tok = 0.0
                    w = []
                    for g in groups:
                        res = s(g, seed=1 + r, **call)
                        sec += res.timing["run_s"]
                        tok += sum(res.stats["new_tokens"])
                        if res.stats.get("mean_window") is not None:
                            w.append(res.stats["mean_window"])
                    tps[k].append(tok / sec)
                    window[k] = sum(w) / len(w) if w else None
            base = statistics.median(tps["plain"])
            for k in samplers:
                m = statistics.median(tps[k])
                out[f"{suite} B={B} {k}"] = {"tokens_per_s": m, "speedup": m / base, "mean_window": window[k]}
                w = "" if window[k] is None else f"  mean window {window[k]:.2f}"
                print(f"{suite:8s} B={B} {k:15s} {m:6.1f} tok/s  {m / base:.3f}x{w}", flush=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
