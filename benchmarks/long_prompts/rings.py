"""Gemma 3 270M's sliding-window layers in ring buffers: KV-cache bytes against the buffer length
(the memory report, nothing allocated), and an end-to-end check on a real long prompt: greedy decoding
with the rings (the default chunked prefill) gives the tokens of the same call without them (a
one-pass prefill, whose slack makes the rings as large as the buffer, so none are built).

    python benchmarks/long_prompts/rings.py [--prompt 1500] [--new 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from run import prompt_ids  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", type=int, default=1500)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/long_prompts")
    args = ap.parse_args()
    from specjax import loop, report
    from specjax.lm import LM
    from specjax.models import load
    from specjax.sampler import bucket, size_bucket

    target = load("gemma3-270m", progress=False)
    lm, params = LM.split(target.module)
    cfg = lm.config
    print(f"gemma3-270m: {cfg.num_layers} layers, {sum(k == 'local' for k in cfg.kinds)} local "
          f"(window {cfg.sliding_window}), {cfg.num_kv_heads} kv head(s) of {cfg.head_dim}")
    rows = []
    for length in (1024, 4096, 8192, 32768):
        slack = loop.Decoder(lm=lm, size=length).ring_slack(length)  # a long prompt: one 256-token chunk
        full = report.memory(lm, params, batch=1, length=length)
        ring = report.memory(lm, params, batch=1, length=length, ring_slack=slack)
        rows.append({"slots": length, "slack": slack, "full_cache_bytes": full["target_cache_bytes"],
                     "ring_cache_bytes": ring["target_cache_bytes"], "ring_bytes": ring["target_ring_bytes"]})
        print(json.dumps(rows[-1]), flush=True)

    ids = prompt_ids(target.tokenizer, args.prompt)
    prompt = np.zeros((1, bucket(len(ids), 16)), np.int32)
    prompt[0, :len(ids)] = ids
    batch = loop.Batch.make(prompt, [len(ids)], max_new_tokens=args.new)
    size = max(size_bucket(len(ids) + args.new + 1), prompt.shape[1])
    out = {}
    for name, chunk in (("rings", 256), ("full", 0)):
        dec = loop.Decoder(lm=lm, size=size, prefill_chunk=chunk)
        t0 = time.perf_counter()
        state = jax.jit(loop.generate, static_argnums=0)(dec, params, None, batch)
        toks = np.asarray(state.tokens[0, len(ids):int(state.lengths[0])])
        cache = jax.eval_shape(lambda p: lm.init_cache(p, 1, size, ring_slack=dec.ring_slack(prompt.shape[1])), params)
        out[name] = {"tokens": toks.tolist(), "s": time.perf_counter() - t0,
                     "cache_bytes": report.nbytes(cache), "ring_size": int(getattr(cache, "ring_size", 0))}
        print(name, json.dumps({k: v for k, v in out[name].items() if k != "tokens"}), flush=True)
    same = out["rings"]["tokens"] == out["full"]["tokens"]
    print(f"prompt {len(ids)} tokens, {args.new} greedy tokens, buffer {size} slots: same tokens with and without "
          f"rings: {same}; text: {target.tokenizer.decode(out['rings']['tokens'])!r}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "rings.json").write_text(json.dumps({"memory": rows, "decode": out, "same_tokens": same},
                                                          indent=1))
    print("| buffer slots | full cache MB | with rings MB | of which rings MB |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['slots']:,} | {r['full_cache_bytes'] / 1e6:.1f} | {r['ring_cache_bytes'] / 1e6:.1f} | "
              f"{r['ring_bytes'] / 1e6:.1f} |")


if __name__ == "__main__":
    main()
