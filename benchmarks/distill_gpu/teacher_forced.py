"""Teacher-forced agreement of an EAGLE-3 head on a prompt suite (a diagnostic, not a bench).

    python benchmarks/distill_gpu/teacher_forced.py HEAD [SUITE] [PROMPTS] [TOKENS]

The target answers the suite's first PROMPTS prompts greedily (TOKENS new tokens); one target pass
extracts its features; the head, fed the true features (and, for unroll step u > 0, its own outputs
as in training), predicts each response token. Prints the top-1 agreement with the target's argmax
per unroll step over positions whose target argmax is in the draft vocabulary (the metric training
logs as acc0..acc3), averaged over sequences.
"""

from __future__ import annotations

import sys
import tempfile

import jax.numpy as jnp
import numpy as np


def main() -> None:
    head_path = sys.argv[1]
    suite = sys.argv[2] if len(sys.argv) > 2 else "chat"
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 12
    tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 96
    from specjax import api
    from specjax.bench.prompts import load_suite
    from specjax.distill import data
    from specjax.distill.eagle import ttt_loss
    from specjax.models import load, load_eagle

    target = load("smollm2-135m-instruct", progress=False)
    head = load_eagle(head_path)
    prompts, chat = load_suite(suite, count)
    res = api.generate(target, prompts, max_new_tokens=tokens, chat=chat)
    seqs = [(list(p), list(t)) for p, t in zip(res.prompt_tokens, res.tokens)]
    directory = data.extract(target, seqs, tempfile.mkdtemp(), taps=tuple(head.config.taps), top_k=8, progress=False)
    ids = np.asarray(head.target_ids.value)
    index = np.full((target.module.config.vocab_size,), -1, np.int32)
    index[ids] = np.arange(len(ids))
    length = max(len(p) + len(r) for p, r in seqs)
    agree: dict[str, list[float]] = {}
    for row in range(len(seqs)):
        batch = data.Dataset(directory, [row]).batch(np.random.default_rng(0), 1, length)
        _, metrics = ttt_loss(head, target.module.embed.value, {k: jnp.asarray(v) for k, v in batch.items()},
                              steps=4, draft_index_v=jnp.asarray(index))
        for key, value in metrics.items():
            if key.startswith("acc"):
                agree.setdefault(key, []).append(float(value))
    print({key: round(float(np.mean(v)), 3) for key, v in agree.items()})


if __name__ == "__main__":
    main()
