"""Distil SmolLM2's 4-layer draft model under each divergence, and export its untrained start.

    python benchmarks/distill_divergences/run.py DATA_DIR OUT [MINUTES BATCH LENGTH]

DATA_DIR: a distillation data set (e.g. distill/smollm2-eagle3/data from
`specjax distill configs/distill/smollm2_eagle3.yaml`; a draft model reads its tokens only). For each
of the four divergences, `configs/distill/smollm2_draft.yaml` is trained on it for the same
wall-clock budget (`train_minutes`, so each divergence gets the same compute) and exported to OUT/<divergence>/draft; OUT/before/draft is the same architecture before
distillation (the target's blocks 0, 10, 19, 29, embedding, final norm and LM head, copied). Training
time and the process's peak resident memory go to OUT/summary.json; acceptance is measured after by
`specjax bench configs/bench/distill_divergences.yaml`.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from pathlib import Path


def main() -> None:
    data, out = Path(sys.argv[1]).absolute(), Path(sys.argv[2]).absolute()
    minutes, batch, length = sys.argv[3:6] if len(sys.argv) >= 6 else ("7", "4", "256")
    minutes, batch, length = float(minutes), int(batch), int(length)
    from specjax.distill.draft import init_draft
    from specjax.distill.losses import DIVERGENCES
    from specjax.distill.train import Recipe, run
    from specjax.models import load
    from specjax.models.export import save_hf

    recipe = Recipe.from_yaml("configs/distill/smollm2_draft.yaml")
    target = load(recipe.target, dtype=recipe.dtype, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    save_hf(init_draft(target, recipe.draft_layers), out / "before" / "draft", dtype=recipe.export_dtype)
    report = {"minutes": minutes, "batch": batch, "length": length, "data": str(data), "runs": {}}
    for divergence in DIVERGENCES:
        r = dataclasses.replace(recipe, divergence=divergence, steps=10**6, train_minutes=minutes, batch=batch,
                                length=length, heldout_prompts=(), eval_every=10**6, checkpoint_every=10**6)
        d = out / divergence
        d.mkdir(exist_ok=True)
        if not (d / "data").exists():
            (d / "data").symlink_to(data)
        started = time.perf_counter()
        summary = run(r, d, target=target)
        log = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
        train = [x for x in log if x["event"] == "train"]
        report["runs"][divergence] = {
            "seconds": time.perf_counter() - started, "steps": summary["step"], "export": summary.get("export"),
            "first": train[0], "last": train[-1],
            "heldout": [x for x in log if x["event"] == "eval"][-1],
            "peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        print(divergence, json.dumps(report["runs"][divergence]), flush=True)
        (out / "summary.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
