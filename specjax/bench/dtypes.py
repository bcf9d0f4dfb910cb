"""float32 and bfloat16 side by side: plain decoding and every drafter, in one process.

    python -m specjax.bench.dtypes [--target smollm2-135m-instruct] [--drafter ngram:3 ...]
        [--suite humaneval --suite chat] [--prompts-per-suite 2] [--max-new-tokens 96] [--gamma 4]
        [--repeats 3] [--json out.json]

For plain decoding and each drafter, the two dtypes run back to back (float32, then bfloat16), so
each ratio compares figures taken minutes apart on the same machine. Per point: decode tokens/s
(greedy, batch 1, EOS ignored; the median over repeats of all prompts), the acceptance rate a, the
drafter's cost per proposal c and the verify cost v (both relative to the target's one-token step
in the same dtype, timed by `specjax.bench.measure`), and the compile seconds. With --stepwise
the bfloat16 runs are repeated with `verify="stepwise"` (the bit-exact mode) to show its cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

DRAFTERS = ("ngram:3", "layerskip:0-11,18-29", "model:truncate:24")
DTYPES = ("float32", "bfloat16")


def run(target: str = "smollm2-135m-instruct", drafters=DRAFTERS, suites=("humaneval", "chat"),
        prompts_per_suite: int = 2, max_new_tokens: int = 96, gamma: int = 4, repeats: int = 3,
        stepwise: bool = False) -> dict:
    from specjax.bench import measure as micro
    from specjax.bench.drafts import DraftModels
    from specjax.bench.prompts import load_suite
    from specjax.bench.runner import measure
    from specjax.config import SamplingConfig
    from specjax.models import load
    from specjax.sampler import Sampler

    started = time.perf_counter()
    prompts: list[str] = []
    chat = True
    for s in suites:
        texts, chat = load_suite(s, prompts_per_suite)
        prompts += texts
    models = {dt: load(target, dtype=dt, progress=False) for dt in DTYPES}
    drafts = {dt: DraftModels(models[dt], dt) for dt in DTYPES}
    timers = {dt: micro.StepTimer(*_split(models[dt]), batch=1) for dt in DTYPES}
    greedy = SamplingConfig()
    points = []
    modes = [(d, "batched") for d in (None, *drafters)]
    if stepwise:
        modes += [(d, "stepwise") for d in drafters]
    for drafter, verify in modes:
        for dt in DTYPES if verify == "batched" else ("bfloat16",):
            sampler = Sampler(models[dt], drafter, gamma=gamma, eos_ids=(), load_model=drafts[dt], verify=verify)
            point = measure(sampler, prompts, sampling=greedy, max_new_tokens=max_new_tokens, repeats=repeats,
                            chat=chat)
            point.update(drafter=drafter or "plain", dtype=dt, verify=verify)
            if drafter is not None:
                steps = timers[dt].measure([gamma])
                d = micro.drafter_time(sampler, batch=1, sampling=greedy, target_step_s=steps["target_step_s"])
                point.update(c=d["c"], v=steps["v"][gamma], target_step_ms=steps["target_step_s"] * 1000)
            points.append(point)
            print(f"{point['drafter']:24s} {dt:9s} {verify:8s} {point['tokens_per_s']:6.1f} tok/s  "
                  f"a={point.get('acceptance_rate')}  c={point.get('c')}  v={point.get('v')}", file=sys.stderr)
    return {"target": target, "gamma": gamma, "max_new_tokens": max_new_tokens, "prompts": len(prompts),
            "suites": list(suites), "repeats": repeats, "points": points, "wall_s": time.perf_counter() - started}


def _split(model):
    from specjax.lm import LM

    return LM.split(model.module)


def markdown(result: dict) -> str:
    def fmt(x, spec=".2f"):
        return "-" if x is None else format(x, spec)

    by = {(p["drafter"], p["dtype"], p["verify"]): p for p in result["points"]}
    lines = ["| drafter | f32 tok/s | bf16 tok/s | bf16 / f32 | a f32 | a bf16 | c f32 | c bf16 | v f32 | v bf16 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(p["drafter"] for p in result["points"]):
        f, b = by.get((name, "float32", "batched")), by.get((name, "bfloat16", "batched"))
        if f is None or b is None:
            continue
        lines.append(f"| {name if name == 'plain' else f'`{name}`'} | {f['tokens_per_s']:.1f} | {b['tokens_per_s']:.1f} "
                     f"| {b['tokens_per_s'] / f['tokens_per_s']:.2f} | {fmt(f.get('acceptance_rate'))} "
                     f"| {fmt(b.get('acceptance_rate'))} | {fmt(f.get('c'))} | {fmt(b.get('c'))} | {fmt(f.get('v'))} "
                     f"| {fmt(b.get('v'))} |")
    stepwise = [p for p in result["points"] if p["verify"] == "stepwise"]
    if stepwise:
        lines += ["", "| drafter (bf16) | batched verify tok/s | stepwise verify tok/s | stepwise / batched | "
                  "stepwise / plain bf16 |", "|---|---|---|---|---|"]
        plain = by[("plain", "bfloat16", "batched")]["tokens_per_s"]
        for p in stepwise:
            b = by[(p["drafter"], "bfloat16", "batched")]["tokens_per_s"]
            lines.append(f"| `{p['drafter']}` | {b:.1f} | {p['tokens_per_s']:.1f} | {p['tokens_per_s'] / b:.2f} "
                         f"| {p['tokens_per_s'] / plain:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--drafter", action="append", help=f"repeat; default {' '.join(DRAFTERS)}")
    p.add_argument("--suite", action="append", help="prompt suite, repeat; default humaneval and chat")
    p.add_argument("--prompts-per-suite", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stepwise", action="store_true", help="also time bf16 with the stepwise (bit-exact) verify")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args(argv)
    result = run(args.target, tuple(args.drafter or DRAFTERS), tuple(args.suite or ("humaneval", "chat")),
                 args.prompts_per_suite, args.max_new_tokens, args.gamma, args.repeats, args.stepwise)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=float)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
