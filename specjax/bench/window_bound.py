"""How fast any window policy could be: the clairvoyant bound for gamma="auto" on a set of prompts.

    python -m specjax.bench.window_bound [--target smollm2-135m-instruct] [--drafter ngram:3:1]
        [--suite grounded] [--count 16] [--max-new-tokens 256] [--gamma 16] [--ignore-eos] [--json FILE]

A greedy run at a fixed window G records, per row, how many proposals each round accepted (from the
counters `accepted_at`: rounds with at least j + 1 accepted). Greedy decoding emits the same tokens
whatever the windows, and a round that accepts k proposals emits k + 1 tokens at any width >= k, so
a policy that knew k before each round would run the same rounds with the cheapest width that
holds k: width k (any width), or the smallest compiled width >= k (`policy.widths_for`), a round
with k = 0 being one plain step. Its time in plain steps is the sum of those rounds' costs
(`specjax calibrate` for this machine, batch 1, else the policy's stated defaults), and
  bound = emitted tokens / that time            (prefill left out: the bound is generous)
against which the measured speedup of `--gamma auto` (or of any fixed G) can be read. Rounds that
accepted all G proposals might have accepted more with a wider window: G caps the bound.
"""

from __future__ import annotations

import argparse
import json
import sys


def round_counts(accepted_at: list[int], rounds: int) -> list[int]:
    """Per-position acceptance counters of one row -> rounds that accepted exactly k proposals, k = 0..G."""
    ge = [rounds] + list(accepted_at)  # ge[k]: rounds with at least k accepted
    return [ge[k] - ge[k + 1] for k in range(len(ge) - 1)] + [ge[-1]]


def bound(exact: list[int], round_cost: list[float], widths: tuple[int, ...] | None = None) -> float:
    """Steps a clairvoyant policy spends on rounds with exact[k] rounds accepting k proposals:
    each at width k (or the smallest of `widths` >= k); round_cost[W] in plain steps."""
    total = 0.0
    for k, n in enumerate(exact):
        w = k if widths is None else min(x for x in widths if x >= k)
        total += n * round_cost[w]
    return total


def main(argv=None) -> int:
    from specjax import policy as P
    from specjax.bench.prompts import load_suite
    from specjax.models import load
    from specjax.sampler import Sampler, model_label

    p = argparse.ArgumentParser(prog="python -m specjax.bench.window_bound", description=__doc__.split("\n")[0])
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--drafter", default="ngram:3:1")
    p.add_argument("--suite", default="grounded")
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--gamma", type=int, default=16)
    p.add_argument("--ignore-eos", action="store_true", help="emit exactly --max-new-tokens per prompt")
    p.add_argument("--costs", default=None, help="round costs in plain steps at some widths, e.g. "
                   "1:1.08,2:1.11,4:1.2,8:1.44,16:1.8 (interpolated; round(0) = 1); default: the calibration")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    model = load(args.target, progress=False)
    texts, chat = load_suite(args.suite, args.count)
    sampler = Sampler(model, args.drafter, gamma=args.gamma, **({"eos_ids": ()} if args.ignore_eos else {}))
    costs, entry = P.resolve_costs(model=model_label(sampler.lm, sampler.params), drafter=sampler.draft_label, batch=1,
                                   gamma_max=args.gamma,
                                   draft_cost=float(getattr(sampler.drafter, "default_cost", P.DEFAULT_DRAFT_COST)))
    cost, source = list(costs.round), costs.source
    if args.costs:
        import numpy as np

        pairs = sorted((int(w), float(c)) for w, c in (x.split(":") for x in args.costs.split(",")))
        cost = np.interp(range(args.gamma + 1), [0] + [w for w, _ in pairs], [1.0] + [c for _, c in pairs]).tolist()
        source = f"given: {args.costs}"
    widths = P.widths_for(args.gamma)
    emitted = any_w = compiled = fixed = 0.0
    rows = []
    for text in texts:
        r = sampler([text], max_new_tokens=args.max_new_tokens, chat=chat)
        s = r.stats
        exact = round_counts(s["accepted_at"][0], s["rounds"][0])
        e = s["new_tokens"][0] - 1  # the prefill's token is not a round's
        rows.append({"new_tokens": s["new_tokens"][0], "rounds": s["rounds"][0], "accepted_exactly": exact,
                     "bound": e / bound(exact, cost) if e else None})
        emitted += e
        any_w += bound(exact, cost)
        compiled += bound(exact, cost, widths)
        fixed += s["rounds"][0] * cost[args.gamma]
    out = {"target": args.target, "drafter": args.drafter, "suite": args.suite, "prompts": len(texts),
           "max_new_tokens": args.max_new_tokens, "ignore_eos": args.ignore_eos, "gamma": args.gamma,
           "costs": source, "round_cost": cost, "emitted": emitted,
           "tokens_per_round": emitted / sum(r["rounds"] for r in rows),
           "bound_any_width": emitted / any_w, "bound_compiled_widths": emitted / compiled,
           "predicted_fixed_gamma": emitted / fixed, "rows": rows}
    print(f"{args.drafter} on {args.suite} ({len(texts)} prompts, up to {args.max_new_tokens} new tokens"
          f"{', EOS ignored' if args.ignore_eos else ''}), costs: {source}")
    print(f"  tokens per round at G = {args.gamma}: {out['tokens_per_round']:.2f}; fixed G = {args.gamma} "
          f"predicted {out['predicted_fixed_gamma']:.2f}x")
    print(f"  clairvoyant window: {out['bound_any_width']:.2f}x (any width), {out['bound_compiled_widths']:.2f}x "
          f"(compiled widths {widths}); prefill left out")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
