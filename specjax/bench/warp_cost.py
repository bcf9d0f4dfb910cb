"""What warping costs against a target step: the sort-free warpers next to a sorting implementation.

    python -m specjax.bench.warp_cost [--target gemma3-270m] [--positions 5] [--repeats 20] [--rounds 3] [--json out.json]

Logits [1, P, V] for the target's vocabulary V (P = 5: the positions one G = 4 round verifies), in
three shapes: "flat" (N(0, 1e-3): the nucleus is most of the vocabulary), "broad" (N(0, 3): still
thousands of ids in a 0.9 nucleus at V = 262,144) and "nucleus" (100 ids with logits 18 down to
10 over an N(0, 1) tail: a language model's usual shape, the nucleus in a few dozen ids). Per sampling setting, the median time of `repeats` calls
after a compiling one, for

  sort-free    `specjax.sampling.warp` with the setting as runtime per-row values (what decoding runs)
  sorting      the textbook way, settings static: top-k by `lax.top_k`, top-p by a full descending
               sort and a cumulative sum, min-p by a max (how `warp` worked before its thresholds
               were found by bisection)

and both as a share of the target's one-token step (`measure.StepTimer`, batch 1, measured in the
same run). The sort-free times are taken in rounds over all cases (`--rounds`, the target step
re-timed at each round's start) and each is the median of its rounds' medians, so a burst of load
on a shared machine skews one round of a case rather than the case. Each row is checked: both implementations give the same probabilities (max abs diff).
"""

from __future__ import annotations

import argparse
import sys
import time

SETTINGS = (
    {"temperature": 1.0},
    {"temperature": 1.0, "top_k": 50},
    {"temperature": 1.0, "top_p": 0.9},
    {"temperature": 1.0, "top_p": 0.95},
    {"temperature": 1.0, "min_p": 0.05},
    {"temperature": 0.7, "top_k": 50, "top_p": 0.95, "min_p": 0.05},
    {"temperature": 1.0, "top_k": 64, "top_p": 0.95},  # Gemma 3's generation defaults
)


def sorting_warp(logits, temperature: float, top_k=None, top_p=None, min_p=None):
    """Probabilities by sorting (static settings): temperature, top-k, top-p, min-p."""
    import jax
    import jax.numpy as jnp

    x = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(x, top_k)[0][..., -1:]
        x = jnp.where(x >= kth, x, -jnp.inf)
    if top_p:
        desc = -jnp.sort(-x, axis=-1)
        probs = jax.nn.softmax(desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs
        edge = jnp.min(jnp.where(before < top_p, desc, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x >= edge, x, -jnp.inf)
    if min_p:
        x = jnp.where(jnp.exp(x - jnp.max(x, axis=-1, keepdims=True)) >= min_p, x, -jnp.inf)
    return jax.nn.softmax(x, axis=-1)


def run(target: str = "gemma3-270m", positions: int = 5, repeats: int = 20, dtype: str = "float32",
        rounds: int = 3) -> dict:
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from specjax import sampling
    from specjax.bench import measure as micro
    from specjax.bench.harness import sampling_label
    from specjax.config import SamplingConfig
    from specjax.lm import LM
    from specjax.models import load

    started = time.perf_counter()
    model = load(target, dtype=dtype, progress=False)
    lm, params = LM.split(model.module)
    V = model.module.config.vocab_size
    timer = micro.StepTimer(lm, params, batch=1)
    rng = np.random.default_rng(0)
    nucleus = rng.normal(size=(1, positions, V))
    nucleus[..., rng.permutation(V)[:100]] = 18.0 + np.linspace(0.0, -8.0, 100)
    shapes = {"flat": rng.normal(size=(1, positions, V)) * 1e-3, "broad": rng.normal(size=(1, positions, V)) * 3.0,
              "nucleus": nucleus}
    sort_free = jax.jit(sampling.warp)
    cases = [(shape, jnp.asarray(values, jnp.float32), s) for shape, values in shapes.items() for s in SETTINGS]
    configs = [jax.tree.map(jnp.asarray, sampling.RowSampling.of(SamplingConfig.coerce(s), 1, vocab_size=V))
               for _, _, s in cases]
    # Rounds over every case (the target step re-timed at each round's start): a case's time is the median
    # of its rounds' medians, so a burst of load on this shared machine hits one round of a case, not all.
    steps, new_ms = [], [[] for _ in cases]
    for _ in range(rounds):
        steps.append(timer.measure([], repeats=repeats)["target_step_s"])
        for i, (shape, logits, s) in enumerate(cases):
            new_ms[i].append(1e3 * micro._median_time(sort_free, logits, configs[i], repeats=repeats))
    step_s = float(np.median(steps))
    rows = []
    for i, (shape, logits, s) in enumerate(cases):  # the sorting warp is slow and settled: timed once
        sorted_fn = jax.jit(functools.partial(sorting_warp, temperature=s["temperature"], top_k=s.get("top_k"),
                                              top_p=s.get("top_p"), min_p=s.get("min_p")))
        t_old = micro._median_time(sorted_fn, logits, repeats=repeats)
        diff = float(jnp.max(jnp.abs(sort_free(logits, configs[i]) - sorted_fn(logits))))
        t_new = float(np.median(new_ms[i])) / 1e3
        rows.append({"shape": shape, "setting": sampling_label(s), "sort_free_ms": 1e3 * t_new, "sorting_ms": 1e3 * t_old,
                     "sort_free_rounds_ms": new_ms[i], "sort_free_share": t_new / step_s, "sorting_share": t_old / step_s,
                     "max_abs_diff": diff})
        print(_row(rows[-1]), file=sys.stderr, flush=True)
    return {"target": target, "vocab": V, "positions": positions, "dtype": dtype, "target_step_ms": 1e3 * step_s,
            "target_steps_ms": [1e3 * t for t in steps], "rounds": rounds,
            "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind), "rows": rows,
            "seconds": time.perf_counter() - started}


def _row(r: dict) -> str:
    return (f"| {r['shape']} | {r['setting']} | {r['sort_free_ms']:.2f} | {100 * r['sort_free_share']:.1f}% | "
            f"{r['sorting_ms']:.2f} | {100 * r['sorting_share']:.1f}% | {r['max_abs_diff']:.1e} |")


def table(report: dict) -> str:
    each = ", ".join(f"{t:.1f}" for t in report.get("target_steps_ms", []))
    head = (f"Target step ({report['target']}, batch 1): {report['target_step_ms']:.1f} ms, the median of its "
            f"timings at each round's start ({each} ms); logits [1, {report['positions']}, {report['vocab']}]; "
            f"sort-free times: the median of {report.get('rounds', 1)} rounds' medians\n\n"
            "| logits | setting | sort-free (ms) | of a target step | sorting (ms) | of a target step | max abs diff |\n"
            "|---|---|---|---|---|---|---|")
    return "\n".join([head] + [_row(r) for r in report["rows"]])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m specjax.bench.warp_cost", description=__doc__.splitlines()[0])
    p.add_argument("--target", default="gemma3-270m")
    p.add_argument("--positions", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)
    report = run(args.target, args.positions, args.repeats, args.dtype, args.rounds)
    from specjax.bench import measure

    measure.emit(report, table(report), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
