"""Train the SmolLM2 EAGLE-3 head on a lent GPU within a fixed slot, and pack what comes back.

    python benchmarks/distill_gpu/run.py RECIPE OUT_DIR PACK_DIR SECONDS

Data generation and feature extraction run first (`train.run(..., stop_after=0)`); training then
gets the time left until SECONDS after the start, less a margin for the export
(`train_minutes` overridden). The exported head, vocabulary report, logs and the self-written
prompts are packed as one tar in <= 15 MB parts under PACK_DIR (the device tool returns files of at
most 16 MB). Stage times go to stdout.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tarfile
import time
from pathlib import Path

START = time.time()


def say(msg: str) -> None:
    print(f"[{time.time() - START:7.1f}s] {msg}", flush=True)


def main() -> None:
    recipe_path, out, pack, seconds = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
    import jax

    say(f"jax {jax.__version__} devices {jax.devices()}")
    from specjax.distill.train import Recipe, run
    from specjax.models import load

    recipe = Recipe.from_yaml(recipe_path)
    target = load(recipe.target, dtype=recipe.dtype, progress=False)
    say("target loaded")
    run(recipe, out, target=target, stop_after=0, progress=False)  # data and vocabulary only
    say("data ready: " + " | ".join(line for line in (out / "log.jsonl").read_text().splitlines()[-2:]))
    left = seconds - (time.time() - START) - 45.0  # export, held-out loss, packing
    minutes = max(left / 60.0, 0.5)
    say(f"training for {minutes:.2f} min")
    summary = run(dataclasses.replace(recipe, train_minutes=minutes), out, target=target, progress=False)
    summary.pop("draft", None)
    say("trained: " + json.dumps(summary))
    pack.mkdir(parents=True, exist_ok=True)
    tar = pack / "head.tar"
    with tarfile.open(tar, "w") as t:
        for name in ("head", "vocab.json", "log.jsonl", "summary.json", "self_prompts.yaml"):
            if (out / name).exists():
                t.add(out / name, arcname=name)
    data = tar.read_bytes()
    tar.unlink()
    part = 15 * 2**20
    for i in range(0, len(data), part):
        (pack / f"head.tar.{i // part:02d}").write_bytes(data[i:i + part])
    say(f"packed {len(data) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
