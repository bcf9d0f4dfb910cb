"""Time to first token against prompt length: SmolLM2-135M-Instruct, one prompt, prefill plus one
greedy token, the prefill in one pass (`prefill_chunk = 0`, the engine before chunking) and in chunks
of 256 tokens (the default), with transformers' forward over the same ids (the same run, this
machine), and the compiled program's temporary memory (XLA's `memory_analysis`: activations and
attention scores; weights and the KV cache are arguments and not counted).

    python benchmarks/long_prompts/run.py [--lengths 250,500,1000,2000,4096] [--repeats 3] [--out DIR]

Writes DIR/results.json and prints a markdown table. Medians over repeats after one compiling call
(compile time reported apart).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np


def prompt_ids(tokenizer, n: int) -> list[int]:
    """n tokens of real text: the bench's HumanEval and chat prompts, concatenated and repeated."""
    from specjax.bench.prompts import load_suite

    text = "\n\n".join(load_suite("humaneval")[0] + load_suite("chat")[0])
    ids = tokenizer.encode(text, add_bos=False)
    return (ids * (n // len(ids) + 1))[:n]


def specjax_ttft(target, ids: list[int], chunk: int, repeats: int, dense: bool = False) -> dict:
    """dense: attention over every cache slot under a mask (the engine before blocked attention)."""
    from specjax import loop
    from specjax.models import transformer
    from specjax.lm import LM
    from specjax.sampler import bucket, size_bucket

    lm, params = LM.split(target.module)
    P = bucket(len(ids), 16)
    prompt = np.zeros((1, P), np.int32)
    prompt[0, :len(ids)] = ids
    batch = loop.Batch.make(prompt, [len(ids)], max_new_tokens=1)
    dec = loop.Decoder(lm=lm, size=max(size_bucket(len(ids) + 2), P), prefill_chunk=chunk)
    fn = jax.jit(lambda d, p, b: loop.generate(d, p, None, b), static_argnums=0)
    blocks = transformer.ATTN_BLOCKS
    transformer.ATTN_BLOCKS = () if dense else blocks
    jax.clear_caches()  # loop.generate is jitted on the decoder alone: trace it again with these blocks
    try:
        t0 = time.perf_counter()
        compiled = fn.lower(dec, params, batch).compile()
    finally:
        transformer.ATTN_BLOCKS = blocks
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state = compiled(params, batch)
        jax.block_until_ready(state.tokens)
        times.append(time.perf_counter() - t0)
    return {"ttft_s": statistics.median(times), "runs": times, "compile_s": compile_s,
            "temp_bytes": int(getattr(mem, "temp_size_in_bytes", -1)), "first": int(state.tokens[0, len(ids)])}


def transformers_ttft(hf, ids: list[int], repeats: int) -> dict:
    import torch

    x = torch.tensor([ids])
    with torch.no_grad():
        hf(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            first = int(hf(x).logits[0, -1].argmax())
            times.append(time.perf_counter() - t0)
    return {"ttft_s": statistics.median(times), "runs": times, "first": first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="250,500,1000,2000,4096")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunks", default="dense0,dense256,0,256",
                    help="prefill chunk sizes (0: one pass); a 'dense' prefix attends over every slot under a mask")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--out", default="benchmarks/long_prompts")
    args = ap.parse_args()
    from specjax.models import load

    target = load("smollm2-135m-instruct", progress=False)
    hf = None
    if not args.no_transformers:
        from specjax.bench.peers import load_hf
        from specjax.models.hub import resolve

        hf = load_hf(resolve("smollm2-135m-instruct"), "float32")
    rows = []
    for n in map(int, args.lengths.split(",")):
        ids = prompt_ids(target.tokenizer, n)
        row = {"tokens": n}
        for c in args.chunks.split(","):
            row[f"chunk{c}"] = specjax_ttft(target, ids, int(c.removeprefix("dense")), args.repeats,
                                            dense=c.startswith("dense"))
        if hf is not None:
            row["transformers"] = transformers_ttft(hf, ids, args.repeats)
        rows.append(row)
        print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "runs"})
                          for k, v in row.items()}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"backend": jax.default_backend(), "rows": rows}, indent=1))
    chunks = [f"chunk{c}" for c in args.chunks.split(",")]
    print("| prompt tokens | " + " | ".join(f"specjax {c} s (temp MB, compile s)" for c in chunks)
          + (" | transformers s | best / transformers" if hf is not None else "") + " |")
    for r in rows:
        cells = [f"{r[c]['ttft_s']:.2f} ({r[c]['temp_bytes'] / 1e6:.0f}, {r[c]['compile_s']:.1f})" for c in chunks]
        if hf is not None:
            best = min(r[c]["ttft_s"] for c in chunks)
            cells += [f"{r['transformers']['ttft_s']:.2f}", f"{best / r['transformers']['ttft_s']:.2f}x"]
        print(f"| {r['tokens']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
