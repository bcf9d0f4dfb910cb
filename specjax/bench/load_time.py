"""Load-and-convert time of a built-in model, next to transformers loading the same GGUF.

    python -m specjax.bench.load_time [--model smollm2-135m-instruct] [--repeats 3]

Each figure is the median over repeats, in one process after a warm-up load (so imports and
first-call costs are excluded from all columns alike). Needs torch + transformers (the test extra).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from specjax.models import load, save
    from specjax.models.hub import resolve

    path = resolve(args.model)

    def timed(fn):
        fn()  # warm-up
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        return statistics.median(runs), runs

    specjax_s, specjax_runs = timed(lambda: load(args.model, progress=False))
    with tempfile.TemporaryDirectory() as tmp:
        save(load(args.model, progress=False), tmp, progress=False)
        reload_s, reload_runs = timed(lambda: load(tmp, progress=False))
    hf_s, hf_runs = timed(lambda: AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32))
    result = {
        "model": args.model, "file": path.name, "repeats": args.repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "specjax_gguf_load_convert_s": specjax_s, "specjax_converted_reload_s": reload_s,
        "transformers_gguf_load_s": hf_s,
        "runs": {"specjax": specjax_runs, "specjax_reload": reload_runs, "transformers": hf_runs},
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
