"""Compilations and compile seconds for a sweep of sampling settings and lengths, in one process,
and the compile time of a second process that finds the programs on disk.

    python -m specjax.bench.compile_sweep [--target smollm2-135m-instruct] [--drafters none ngram:3 ...]
                                          [--second-process] [--json out.json]

The sweep is 5 temperatures (greedy included) x 3 top-p values x 4 max_new_tokens values in one
buffer bucket, 60 calls per drafter on one prompt, through one `Sampler` per drafter; it reports
the programs compiled (`timing.compilations`), their compile seconds, and the run seconds. The
persistent compilation cache is pointed at a fresh temporary directory for the sweep, so its
figures are cold. With --second-process, two `specjax generate` processes run one after the
other on a shared, initially empty cache directory (different temperature and length, same
bucket), and their reported compile seconds are compared.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

TEMPERATURES = [0.0, 0.5, 0.7, 0.9, 1.0]
TOP_P = [1.0, 0.9, 0.8]
LENGTHS = [16, 17, 18, 20]  # S = 48 with the 16-token prompt bucket, with or without a drafter (G = 4)
PROMPT = "Write a short poem about the sea."


def sweep(target, drafter: str, gamma: int = 4) -> dict:
    from specjax.config import SamplingConfig
    from specjax.sampler import Sampler

    s = Sampler(target, None if drafter == "none" else drafter, gamma=gamma)
    compilations, compile_s, run_s = 0, 0.0, 0.0
    started = time.perf_counter()
    for t, p, n in itertools.product(TEMPERATURES, TOP_P, LENGTHS):
        r = s([PROMPT], sampling=SamplingConfig.make(t, None, p), max_new_tokens=n, seed=1)
        compilations += r.timing["compilations"]
        compile_s += r.timing["compile_s"]
        run_s += r.timing["run_s"]
    return {"drafter": drafter, "calls": len(TEMPERATURES) * len(TOP_P) * len(LENGTHS), "compilations": compilations,
            "compile_s": round(compile_s, 2), "run_s": round(run_s, 2),
            "wall_s": round(time.perf_counter() - started, 2)}


def second_process(target: str, drafter: str, cache: str) -> dict:
    """Two CLI processes on one cache directory: -> their compile seconds and the ratio."""
    env = dict(os.environ, SPECJAX_CACHE=cache)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = []
    for temperature, n in (("0", "16"), ("0.8", "20")):
        cmd = [sys.executable, "-m", "specjax.cli", "generate", "--target", target, "--prompt", PROMPT, "--json",
               "--max-new-tokens", n, "--temperature", temperature]
        if drafter != "none":
            cmd += ["--drafter", drafter]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        out.append(json.loads(proc.stdout)["timing"]["compile_s"])
    return {"drafter": drafter, "first_compile_s": round(out[0], 3), "second_compile_s": round(out[1], 3),
            "ratio": round(out[1] / out[0], 3)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--drafters", nargs="+", default=["none", "ngram:3", "layerskip:0-11,18-29"])
    parser.add_argument("--second-process", action="store_true", help="also time a second CLI process")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SPECJAX_CACHE"] = tmp  # a cold persistent cache for the sweep
        from specjax.models import load

        target = load(args.target, progress=False)
        results = {"sweep": [], "second_process": []}
        for d in args.drafters:
            row = sweep(target, d)
            print(json.dumps(row), flush=True)
            results["sweep"].append(row)
    if args.second_process:
        for d in args.drafters:
            with tempfile.TemporaryDirectory() as tmp:
                row = second_process(args.target, d, tmp)
            print(json.dumps(row), flush=True)
            results["second_process"].append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
