"""Decode-step attention against the buffer size and the occupied length: SmolLM2-135M-Instruct,
plain greedy decoding of 64 tokens after a prompt of P tokens into a buffer of S slots, dense attention
(every slot under a mask: the engine before blocked attention) against blocked attention (key blocks
up to the highest occupied position only). Decode tokens/s: 63 tokens over the time of the call that
generates 64 less the time of the call that generates 1 (prefill plus one step; max_new_tokens is a
runtime value, so both run one compiled program). Medians over repeats after a compiling call; the
two variants alternate within each repeat, in one process (this machine is noisy).

    python benchmarks/long_prompts/decode.py [--cases 30:256,30:4096,2000:3072] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from run import prompt_ids  # noqa: E402  (the same real text as the time-to-first-token table)


def compile_for(lm, params, batch, size: int, dense: bool):
    from specjax import loop
    from specjax.models import transformer

    blocks = transformer.ATTN_BLOCKS
    transformer.ATTN_BLOCKS = () if dense else blocks
    jax.clear_caches()  # loop.generate is jitted on the decoder alone: trace it again with these blocks
    try:
        dec = loop.Decoder(lm=lm, size=size)
        return jax.jit(lambda d, p, b: loop.generate(d, p, None, b), static_argnums=0).lower(dec, params, batch).compile()
    finally:
        transformer.ATTN_BLOCKS = blocks


def timed(compiled, params, batch) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    state = compiled(params, batch)
    tokens = np.asarray(jax.block_until_ready(state.tokens))
    return time.perf_counter() - t0, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="30:256,30:1024,30:4096,1000:1536,2000:3072",
                    help="PROMPT_TOKENS:BUFFER_SLOTS, comma-separated")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/long_prompts")
    args = ap.parse_args()
    from specjax import loop
    from specjax.lm import LM
    from specjax.models import load
    from specjax.sampler import bucket

    target = load("smollm2-135m-instruct", progress=False)
    lm, params = LM.split(target.module)
    rows = []
    for case in args.cases.split(","):
        n, size = map(int, case.split(":"))
        ids = prompt_ids(target.tokenizer, n)
        prompt = np.zeros((1, bucket(n, 16)), np.int32)
        prompt[0, :n] = ids
        long = loop.Batch.make(prompt, [n], max_new_tokens=args.new)
        short = loop.Batch.make(prompt, [n], max_new_tokens=1)
        programs = {name: compile_for(lm, params, long, size, name == "dense") for name in ("dense", "blocked")}
        times = {name: [] for name in programs}
        outputs = {}
        for name, compiled in programs.items():  # the compiling call's first run, untimed
            timed(compiled, params, long)
        for _ in range(args.repeats):
            for name, compiled in programs.items():
                t_long, outputs[name] = timed(compiled, params, long)
                t_short, _ = timed(compiled, params, short)
                times[name].append((args.new - 1) / max(t_long - t_short, 1e-9))
        row = {"prompt": n, "slots": size, **{f"{k}_tok_s": statistics.median(v) for k, v in times.items()},
               "runs": times, "same_tokens": bool(np.array_equal(outputs["dense"], outputs["blocked"]))}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode.json").write_text(json.dumps({"backend": jax.default_backend(), "rows": rows}, indent=1))
    print("| prompt tokens | buffer slots | dense tok/s | blocked tok/s | blocked / dense | same tokens |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['prompt']} | {r['slots']} | {r['dense_tok_s']:.1f} | {r['blocked_tok_s']:.1f} | "
              f"{r['blocked_tok_s'] / r['dense_tok_s']:.2f}x | {'yes' if r['same_tokens'] else 'no'} |")


if __name__ == "__main__":
    main()
