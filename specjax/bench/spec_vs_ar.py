"""Batch-1 speculative decoding against the autoregressive baseline on a built-in model.

    python -m specjax.bench.spec_vs_ar [--target smollm2-135m-instruct] [--draft-layers 24]
        [--gammas 1 2 4] [--max-new-tokens 128] [--repeats 3]

The draft is a same-tokenizer draft model: a copy of the target's first `--draft-layers` layers
with its final norm and head. Prints one JSON object (every figure) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

from specjax.bench.runner import measure

CHAT_PROMPTS = [
    "Explain how photosynthesis works in simple terms.",
    "Write a short poem about the sea.",
    "What are three tips for learning a new language?",
    "Describe the water cycle.",
    "Write a Python function that reverses a string.",
]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--draft-layers", type=int, default=24)
    p.add_argument("--gammas", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from specjax.models import load, truncate

    target = load(args.target, progress=False)
    draft = truncate(target, args.draft_layers)
    common = dict(batch=1, max_new_tokens=args.max_new_tokens, repeats=args.repeats, chat=True, eos_ids=())
    rows = {"autoregressive": measure(target, CHAT_PROMPTS, **common)}
    for g in args.gammas:
        rows[f"draft {args.draft_layers} layers, G={g}"] = measure(target, CHAT_PROMPTS, draft=draft, gamma=g, **common)
    base = rows["autoregressive"]["tokens_per_s"]
    result = {"target": args.target, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "settings": vars(args), "rows": rows}
    print(json.dumps(result, indent=1))
    print("\n| decoder | tokens/s | speedup | acceptance | tokens/round | compile s |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        acc = r.get("acceptance_rate")
        tpr = r.get("mean_tokens_per_round")
        print(f"| {name} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / base:.2f}x | "
              f"{'-' if acc is None else f'{acc:.3f}'} | {'-' if tpr is None else f'{tpr:.2f}'} | "
              f"{r['compile_s']:.1f} |")
    return result


if __name__ == "__main__":
    main()
