"""Where greedy outputs part, and proof that they part only at near-ties.

    python -m specjax.bench.divergence [--target smollm2-135m-instruct] [--dtype bfloat16]
        [--drafter ngram:3 --drafter layerskip:0-11,18-29] [--suite humaneval:38 --suite chat:12]
        [--max-new-tokens 128] [--gamma 4] [--bound 0.5] [--json out.json]

Runs plain greedy decoding in float32 and in `--dtype`, and greedy speculative decoding in `--dtype`
with every drafter, one prompt at a time (batch 1, the way a user checks first). Then, for each
prompt, it compares

  - every drafter's output against plain decoding in the same dtype (the exactness claim), and
  - plain decoding in `--dtype` against plain decoding in float32 (the yardstick: what the dtype
    alone changes),

and for each pair of outputs that differ it takes the first token where they part, feeds the
common prefix to the *reference forward* (the float32 model, all positions in one pass) and
reports the two tokens' reference logits. `gap` is how far the reference prefers the token of the
baseline run (plain decoding) over the other; `top2_gap` is the reference's top-1 minus top-2
logit. A divergence is a near-tie when |gap| <= bound; the report says whether every divergence
is one, and how the counts of diverging prompts compare (speculative against plain in the dtype
must not exceed plain in the dtype against float32).

Also reported per divergence: the two tokens' logits from the same one-pass forward in the run's
dtype (`dtype_gap`), i.e. how close the dtype's own model is to a tie there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_DRAFTERS = ("ngram:3", "layerskip:0-11,18-29")
DEFAULT_SUITES = ("humaneval:38", "chat:12")
DEFAULT_BOUND = 0.5  # logits; see README, "Exactness, per dtype"


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where the token lists differ (one ending early counts), or None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


class Reference:
    """One-pass forwards over a token prefix: the float32 reference and the run's dtype."""

    def __init__(self, f32_model, run_model):
        from specjax.lm import LM

        self.lms = {"f32": LM.split(f32_model.module), "run": LM.split(run_model.module)}
        self._fns = {}

    def _fn(self, which: str, size: int):
        if (which, size) not in self._fns:
            lm, _ = self.lms[which]

            @jax.jit
            def fn(params, tokens_1p, last_1):
                positions = jnp.where(jnp.arange(size) <= last_1[:, None], jnp.arange(size), -1)
                cache = lm.init_cache(params, 1, size)
                return lm.forward_at(params, tokens_1p, positions, cache, last_1)[0][0]

            self._fns[which, size] = fn
        return self._fns[which, size]

    def pass_difference(self, ids: Sequence[int], gamma: int, size: int) -> float:
        """How much a one-token pass and a (G+1)-token pass round apart in the run's dtype, with a
        cache of `size` slots (the decode's: how kernels round can depend on it): prefill all but the
        last G+1 tokens of `ids`, then feed those G+1 tokens once as G+1 one-token passes and once
        as one pass; -> the largest |logit difference| over the G+1 positions and the vocabulary."""
        lm, params = self.lms["run"]
        n, T = len(ids), gamma + 1
        key = ("diff", size, n, T)
        if key not in self._fns:
            def fn(params, tokens_n):
                cache = lm.init_cache(params, 1, size)
                _, cache, _ = lm.forward(params, tokens_n[None, :n - T], jnp.arange(n - T)[None], cache)
                tail_t, pos_t = tokens_n[n - T:], jnp.arange(n - T, n)
                batched = lm.forward(params, tail_t[None], pos_t[None], cache)[0][0]

                def one(cache, xs):
                    logits, cache, _ = lm.forward(params, xs[0][None, None], xs[1][None, None], cache)
                    return cache, logits[0, 0]

                _, stepwise = jax.lax.scan(one, cache, (tail_t, pos_t))
                return jnp.max(jnp.abs(batched - stepwise))

            self._fns[key] = jax.jit(fn)
        return float(self._fns[key](params, jnp.asarray(ids, jnp.int32)))

    def next_logits(self, prefix: Sequence[int], which: str) -> np.ndarray:
        """Logits [V] (float32) of the token after `prefix`."""
        from specjax.sampler import bucket

        size = bucket(len(prefix), 16)
        tokens = np.zeros((1, size), np.int32)
        tokens[0, :len(prefix)] = prefix
        _, params = self.lms[which]
        return np.asarray(self._fn(which, size)(params, jnp.asarray(tokens), jnp.asarray([len(prefix) - 1])))


def explain(ref: Reference, tokenizer, prompt_ids, base: list[int], other: list[int], index: int) -> dict:
    """The reference's view of one divergence: `base[index]` (the baseline's token) against
    `other[index]` after the common prefix prompt + base[:index]."""
    prefix = list(prompt_ids) + list(base[:index])
    a = base[index] if index < len(base) else None
    b = other[index] if index < len(other) else None
    out = {"index": index, "base_token": a, "other_token": b,
           "base_text": tokenizer.decode([a]) if a is not None else None,
           "other_text": tokenizer.decode([b]) if b is not None else None}
    f32, run = ref.next_logits(prefix, "f32"), ref.next_logits(prefix, "run")
    top2 = np.sort(f32)[-2:]
    out["top2_gap"] = float(top2[1] - top2[0])
    if a is not None and b is not None:
        out["gap"] = float(f32[a] - f32[b])
        out["dtype_gap"] = float(run[a] - run[b])
        out["ref_logits"] = [float(f32[a]), float(f32[b])]
    else:  # one run stopped (max tokens) where the other did not: nothing to compare token to token
        out["gap"] = out["dtype_gap"] = None
    return out


def compare(ref, tokenizer, prompts_ids, base: list[list[int]], other: list[list[int]], bound: float) -> dict:
    """Diverging prompts between two runs and each divergence explained."""
    divergences = []
    for p, (ids, x, y) in enumerate(zip(prompts_ids, base, other)):
        i = first_divergence(x, y)
        if i is not None:
            divergences.append({"prompt": p, **explain(ref, tokenizer, ids, x, y, i)})
    gaps = [abs(d["gap"]) for d in divergences if d["gap"] is not None]
    return {"diverging_prompts": len(divergences), "max_abs_gap": max(gaps) if gaps else None,
            "all_near_ties": all(d["gap"] is not None and abs(d["gap"]) <= bound for d in divergences),
            "divergences": divergences}


def run(target: str = "smollm2-135m-instruct", dtype: str = "bfloat16", drafters=DEFAULT_DRAFTERS,
        suites=DEFAULT_SUITES, max_new_tokens: int = 128, gamma: int = 4, bound: float = DEFAULT_BOUND,
        verify: str = "batched", progress: bool = True, models=None, prompts=None) -> dict:
    """The whole comparison -> a report (see the module docstring). `models`: an already loaded
    (float32, run dtype) pair of `target` to use instead of loading it. `prompts`: (texts, chat) to
    use instead of `suites`."""
    from specjax.bench.prompts import load_suite
    from specjax.models import load
    from specjax.sampler import MIN_PROMPT_BUCKET, Sampler, bucket, encode_prompts, size_bucket

    started = time.perf_counter()
    if models is not None:
        f32_model, run_model = models
    else:
        f32_model = load(target, dtype="float32", progress=False)
        run_model = f32_model if dtype == "float32" else load(target, dtype=dtype, progress=False)
    tokenizer = run_model.tokenizer
    prompts_ids = []
    for texts, chat in ([prompts] if prompts is not None else
                        [load_suite(name, int(count) if count else None)
                         for name, _, count in (spec.partition(":") for spec in suites)]):
        prompts_ids += encode_prompts(tokenizer, texts, chat=chat)

    def decode(model, drafter, label: str) -> list[list[int]]:
        sampler = Sampler(model, drafter, gamma=gamma, verify=verify)
        outs = []
        for i, ids in enumerate(prompts_ids):
            outs.append(sampler([ids], max_new_tokens=max_new_tokens).tokens[0])
            if progress:
                print(f"\r{drafter or 'plain'} {label}: {i + 1}/{len(prompts_ids)}", end="", file=sys.stderr,
                      flush=True)
        if progress:
            print(file=sys.stderr)
        return outs

    plain32 = decode(f32_model, None, "float32")
    plain = decode(run_model, None, dtype) if run_model is not f32_model else plain32
    ref = Reference(f32_model, run_model)
    # the rounding difference between the two kinds of pass, at the end of each plain output, with
    # the cache size of the speculative decode of that prompt
    diffs = [ref.pass_difference(list(ids) + out, gamma, size_bucket(bucket(len(ids), MIN_PROMPT_BUCKET) + max_new_tokens + gamma + 2))
             for ids, out in zip(prompts_ids, plain) if len(out) > gamma]
    report = {"target": target, "dtype": dtype, "gamma": gamma, "verify": verify, "max_new_tokens": max_new_tokens,
              "suites": list(suites) if prompts is None else ["given"], "prompts": len(prompts_ids), "bound": bound,
              "pass_difference": {"max": max(diffs, default=None), "median": float(np.median(diffs)) if diffs else None},
              "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
              f"plain_{dtype}_vs_float32": compare(ref, tokenizer, prompts_ids, plain32, plain, bound),
              "drafters": {}}
    yardstick = report[f"plain_{dtype}_vs_float32"]["diverging_prompts"]
    for d in drafters:
        result = compare(ref, tokenizer, prompts_ids, plain, decode(run_model, d, dtype), bound)
        result["within_yardstick"] = result["diverging_prompts"] <= yardstick
        report["drafters"][d] = result
    report["holds"] = all(r["within_yardstick"] and r["all_near_ties"] for r in report["drafters"].values())
    report["wall_s"] = time.perf_counter() - started
    return report


def summary(report: dict) -> str:
    dtype = report["dtype"]
    base = report[f"plain_{dtype}_vs_float32"]
    lines = [f"{report['target']}, {report['prompts']} prompts x {report['max_new_tokens']} tokens, G = "
             f"{report['gamma']} ({report['verify']} verify), near-tie bound {report['bound']} ({report['backend']})",
             "| comparison | diverging prompts | max abs gap | every divergence a near-tie |", "|---|---|---|---|"]

    def row(name, r):
        gap = "-" if r["max_abs_gap"] is None else f"{r['max_abs_gap']:.3f}"
        return f"| {name} | {r['diverging_prompts']} | {gap} | {'yes' if r['all_near_ties'] else 'NO'} |"

    lines.append(row(f"plain {dtype} vs plain float32", base))
    for d, r in report["drafters"].items():
        lines.append(row(f"`{d}` {dtype} vs plain {dtype}", r))
    d = report["pass_difference"]
    if d["max"] is not None:
        lines.append(f"one-token vs {report['gamma'] + 1}-token pass, largest |logit difference| per prompt: "
                     f"median {d['median']:.3g}, max {d['max']:.3g}")
    lines.append(f"holds (every drafter: diverging prompts <= plain {dtype} vs float32, every divergence a "
                 f"near-tie): {report['holds']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--drafter", action="append", help=f"repeat; default {' '.join(DEFAULT_DRAFTERS)}")
    p.add_argument("--suite", action="append", help=f"NAME[:COUNT], repeat; default {' '.join(DEFAULT_SUITES)}")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--bound", type=float, default=DEFAULT_BOUND, help="near-tie bound on |gap|, in logits")
    p.add_argument("--verify", default="batched", choices=["batched", "stepwise"])
    p.add_argument("--json", help="write the full report (every divergence) here")
    args = p.parse_args(argv)
    report = run(args.target, args.dtype, tuple(args.drafter or DEFAULT_DRAFTERS), tuple(args.suite or DEFAULT_SUITES),
                 args.max_new_tokens, args.gamma, args.bound, args.verify)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(summary(report))
    return 0 if report["holds"] else 1


if __name__ == "__main__":
    sys.exit(main())
