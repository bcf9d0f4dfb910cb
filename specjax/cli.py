"""The `specjax` command line: generate, convert, demo, bench, calibrate, advise, distill.

The CLI is where the engine and the model zoo meet: it resolves model names and paths with
`specjax.models` and hands the loaded models to the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from specjax.errors import SpecJaxError


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None,
                   help="keep ids with probability >= MIN_P times the most likely one's (after top-k and top-p)")
    p.add_argument("--seed", type=int, default=0)


def _read_stdin() -> str:
    from specjax.errors import ConfigError

    raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"the prompt on stdin is not UTF-8 text (byte {err.start}: {raw[err.start:err.start + 1]!r}); "
                          "convert it to UTF-8 or pass --prompt") from None
    if not text.strip():
        raise ConfigError("no prompt: give --prompt TEXT or text on stdin")
    return text


def _check_generate_args(args):
    """Everything about a generate call that needs no model, checked before one loads -> (sampling, drafter)."""
    from specjax import validate
    from specjax.config import SamplingConfig
    from specjax.drafters import registry
    from specjax.errors import ConfigError

    sampling = SamplingConfig.make(args.temperature, args.top_k, args.top_p, args.min_p)
    validate.integer("--max-new-tokens", args.max_new_tokens, low=1)
    from specjax.policy import parse_gamma

    args.gamma = parse_gamma(args.gamma, name="--gamma")
    if args.gamma_max is not None:
        validate.integer("--gamma-max", args.gamma_max, low=1)
        if args.gamma != "auto":
            raise ConfigError("--gamma-max bounds --gamma auto; with a fixed --gamma leave it out")
    validate.seed("--seed", args.seed)
    if args.drafter and args.draft:
        raise ConfigError(f"--draft {args.draft!r} and --drafter {args.drafter!r} both name a drafter; give one")
    drafter = args.drafter or (f"model:{args.draft}" if args.draft else None)
    if drafter is not None:
        spec = registry.parse(drafter)  # a bad drafter string fails before any model is loaded
        if spec.kind == "eagle":
            from specjax.models.eagle3 import BUILTIN_HEADS, head_path

            if not (head_path(spec.name) / "config.json").is_file():
                from specjax.errors import ModelNotFoundError

                raise ModelNotFoundError(f"--drafter {drafter!r}: {spec.name!r} is neither an EAGLE-3 head directory "
                                         f"(no config.json there) nor a built-in head ({', '.join(BUILTIN_HEADS)})")
    if args.gamma == "auto" and drafter is None:
        raise ConfigError("--gamma auto needs a drafter (--drafter)")
    if args.verify == "stepwise" and drafter is None:
        raise ConfigError("--verify stepwise needs a drafter (--drafter); plain decoding has no verify pass")
    if args.mesh:
        _parse_mesh(args.mesh)
    multi = (args.coordinator, args.num_processes, args.process_id)
    if any(x is not None for x in multi) and not all(x is not None for x in multi):
        raise ConfigError("multi-host runs need --coordinator, --num-processes and --process-id together "
                          f"(got coordinator={args.coordinator}, num-processes={args.num_processes}, "
                          f"process-id={args.process_id})")
    if args.num_processes is not None:
        validate.integer("--num-processes", args.num_processes, low=1)
        validate.integer("--process-id", args.process_id, low=0, high=args.num_processes - 1)
    if args.local_devices is not None:
        validate.integer("--local-devices", args.local_devices, low=1)
    return sampling, drafter


def _cmd_generate(args) -> int:
    from specjax.models import load
    from specjax.sampler import Sampler

    sampling, drafter = getattr(args, "checked", None) or _check_generate_args(args)
    prompts = args.prompt or [_read_stdin()]
    start = time.perf_counter()
    target = load(args.target, dtype=args.dtype, progress=not args.json)
    mesh = None
    if args.mesh:
        import jax

        from specjax.errors import ConfigError
        from specjax.sharding import make_mesh

        data, model = _parse_mesh(args.mesh)
        if data * model != jax.device_count():
            raise ConfigError(f"--mesh {args.mesh} asks for {data * model} devices; this run has {jax.device_count()} "
                              "(all processes' devices; on CPU --local-devices N exposes N)")
        mesh = make_mesh(data, model)
    sampler = Sampler(target, drafter, gamma=args.gamma, mesh=mesh, verify=args.verify, gamma_max=args.gamma_max,
                      **_loaders(target, args.dtype, progress=not args.json))
    load_s = time.perf_counter() - start
    result = sampler(prompts, sampling=sampling, max_new_tokens=args.max_new_tokens, seed=args.seed, chat=args.chat)
    result.timing["load_s"] = load_s
    if args.json:
        print(result.to_json())
        return 0
    for prompt, text in zip(prompts, result.text or []):
        print(f"### prompt\n{prompt}\n### {args.target}\n{text}\n")
    t, s = result.timing, result.stats
    spec = ""
    if "acceptance_rate" in s and s["acceptance_rate"] is not None:
        spec = f"acceptance {s['acceptance_rate']:.2f}, {s['mean_tokens_per_round']:.2f} tokens/round; "
        if s.get("mean_window") is not None:
            spec += f"mean window {s['mean_window']:.2f}, {s['plain_rounds']} plain rounds; "
    if s.get("draft_vocabulary"):
        v = s["draft_vocabulary"]
        spec += (f"draft vocabulary: {v['shared_tokens']:,} of its {v['draft_text_tokens']:,} tokens shared with the "
                 f"target's {v['target_text_tokens']:,} (map {v['table_bytes'] / 2**20:.1f} MiB); ")
    print(f"[{sum(s['new_tokens'])} tokens, {t['tokens_per_s']:.1f} tok/s; {spec}"
          f"load {load_s:.1f}s, compile {t['compile_s']:.1f}s ({t['compilations']} programs), run {t['run_s']:.2f}s]",
          file=sys.stderr)
    return 0


def _parse_mesh(text: str) -> tuple[int, int]:
    from specjax.errors import ConfigError

    try:
        data, model = (int(x) for x in text.lower().split("x"))
    except ValueError as err:
        raise ConfigError(f"--mesh must look like DATAxMODEL (e.g. 2x4), got {text!r}") from err
    if data < 1 or model < 1:
        raise ConfigError(f"--mesh sizes must be >= 1, got {text!r}")
    return data, model


def _cmd_convert(args) -> int:
    from specjax.models import load, save
    from specjax.models.convert import iter_params

    _check_writable_dir("--out", args.out)
    start = time.perf_counter()
    model = load(args.source, dtype=args.dtype, progress=True)
    out = save(model, args.out, progress=True)
    n_params = sum(int(v.size) for _, v in iter_params(model))
    print(f"converted {model.name} ({model.config.family}, {n_params:,} parameters, {args.dtype}) "
          f"to {out} in {time.perf_counter() - start:.1f}s")
    return 0


def _check_writable_dir(flag: str, path: str) -> None:
    """Refuse, before any work, an output directory that cannot be created or written."""
    from pathlib import Path

    from specjax.errors import ConfigError

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{flag} {path}: exists and is not a directory")
    existing = next((p for p in [target, *target.parents] if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write there ({existing} is not a writable directory)")


def _cmd_bench(args) -> int:
    from specjax.bench.harness import BenchConfig, run

    cfg = BenchConfig.from_yaml(args.config)
    out_dir = args.out or f"benchmarks/{cfg.name}"
    _check_writable_dir("--out", out_dir)
    out = run(cfg, out_dir)
    print(f"wrote {out_dir}/results.json, results.md and plots "
          f"({len(out['points'])} points, {out['wall_s'] / 60:.1f} min)")
    return 0


def _cmd_calibrate(args) -> int:
    from specjax.bench.calibrate import run_cli

    return run_cli(args)


def _cmd_advise(args) -> int:
    from specjax.bench.advise import run_cli

    return run_cli(args)


def _cmd_distill(args) -> int:
    from specjax.distill.train import Recipe, run

    recipe = Recipe.from_yaml(args.config)
    out_dir = args.out or f"distill/{recipe.name}"
    _check_writable_dir("--out", out_dir)
    summary = run(recipe, out_dir)
    summary.pop("draft", None)
    print(json.dumps(summary, indent=2))
    if "export" in summary:
        kind = "eagle" if recipe.kind == "eagle3" else "model"
        print(f"trained draft: --drafter {kind}:{summary['export']}")
    return 0


DEMO_PROMPT = (
    "Fix the spelling mistakes in this text and change nothing else. Reply with the corrected text only.\n\n"
    "The printing press was invented by Johannes Gutenberg around 1440. Before its invention, books were "
    "copied by hand, wich was slow and expensive. Gutenberg's press used movable metal type, so a page could "
    "be set once and printed many times. Within fifty years, presses were working in more than two hundred "
    "citys across Europe, and millions of books had been printed. Knowledge spread faster than ever before, "
    "and the cost of a book fell so far that ordinary people could afford to own one."
)


def _loaders(target, dtype, *, progress: bool) -> dict:
    """The Sampler's loaders for `model:NAME` and `eagle:DIR` drafter strings (a head in the target's dtype)."""
    from specjax.models import load, load_eagle

    return {"load_model": lambda name: load(name, dtype=dtype, progress=progress),
            "load_head": lambda path: load_eagle(path, dtype=target.module.dtype)}


def _cmd_demo(args) -> int:
    """Plain and speculative decoding of one prompt, side by side, after one warm-up call each."""
    from specjax import validate
    from specjax.drafters import registry
    from specjax.models import load
    from specjax.sampler import Sampler

    from specjax.policy import parse_gamma

    validate.integer("--max-new-tokens", args.max_new_tokens, low=1)
    args.gamma = parse_gamma(args.gamma, name="--gamma")
    registry.parse(args.drafter)
    target = load(args.target, progress=True)
    runs = {}
    for name, drafter in (("plain", None), (f"speculative ({args.drafter}, G = {args.gamma})", args.drafter)):
        gamma = args.gamma if drafter is not None else 4  # plain decoding has no window
        sampler = Sampler(target, drafter, gamma=gamma, **_loaders(target, None, progress=True))
        first = sampler([args.prompt], max_new_tokens=args.max_new_tokens, chat=True)  # compiles
        timed = sampler([args.prompt], max_new_tokens=args.max_new_tokens, chat=True)
        runs[name] = (first, timed)
    (plain_name, (_, plain)), (spec_name, (_, spec)) = runs.items()
    print(f"### prompt\n{args.prompt}\n\n### {args.target}\n{spec.text[0]}\n")
    width = max(len(plain_name), len(spec_name))
    for name, (first, r) in runs.items():
        extra = ""
        if r.stats.get("acceptance_rate") is not None:
            extra = (f", acceptance {r.stats['acceptance_rate']:.2f}, "
                     f"{r.stats['mean_tokens_per_round']:.2f} tokens per target pass")
            if r.stats.get("mean_window") is not None:
                extra += f", mean window {r.stats['mean_window']:.1f}"
        print(f"{name:<{width}}  {r.timing['tokens_per_s']:6.1f} tok/s ({sum(r.stats['new_tokens'])} tokens in "
              f"{r.timing['run_s']:.2f} s; compiled in {first.timing['compile_s']:.1f} s){extra}")
    same = plain.tokens == spec.tokens
    print(f"speedup {spec.timing['tokens_per_s'] / plain.timing['tokens_per_s']:.2f}x; the two outputs are "
          f"{'identical, token for token' if same else 'DIFFERENT'}")
    return 0 if same else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specjax", description="Exact speculative decoding in JAX.")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt")
    g.add_argument("--target", required=True,
                   help="built-in model name (smollm2-135m-instruct, gemma3-270m), HF dir, .gguf file or converted dir")
    g.add_argument("--drafter", help="model:NAME (a draft model with the target's tokenizer: built-in name, HF dir, "
                   ".gguf or converted dir) | layerskip:K (the target's first K layers; or layerskip:0-9,20-29; "
                   "append :own for a private KV cache) | ngram:NMAX[:NMIN] (prompt lookup) | eagle:DIR (an EAGLE-3 head "
                   "directory in the community layout: config.json + safetensors). "
                   "Omit for plain autoregressive decoding")
    g.add_argument("--draft", help="shorthand for --drafter model:DRAFT")
    g.add_argument("--gamma", default="4", help="proposals per speculation round (G), default 4; or auto: each round "
                   "picks its window (0 = a plain step) from running acceptance estimates and the costs `specjax "
                   "calibrate` measured (stated defaults without them)")
    g.add_argument("--gamma-max", type=int, default=None, help="the largest window under --gamma auto (default 8; "
                   "16 for prompt lookup)")
    g.add_argument("--verify", default="batched", choices=["batched", "stepwise"],
                   help="batched (default): one (G+1)-token target pass per round; stepwise: G+1 one-token passes, "
                   "bit for bit the computation of plain decoding (greedy output equal to plain greedy in any dtype), "
                   "about G+1 target steps per round")
    g.add_argument("--prompt", action="append", help="prompt text (repeat for a batch); default: stdin")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="params dtype (default: float32, or the dtype a converted directory was saved in)")
    g.add_argument("--json", action="store_true", help="print one JSON object with text, token ids, statistics and "
                   "timings (compile_s, compilations: programs this call compiled)")
    g.add_argument("--no-compile-cache", action="store_true",
                   help="do not read or write compiled programs on disk (default: kept under $SPECJAX_CACHE/jax-compile; "
                   "also SPECJAX_COMPILE_CACHE=0)")
    g.add_argument("--mesh", help="shard over a DATAxMODEL device mesh, e.g. 1x8 (all processes' devices)")
    g.add_argument("--coordinator", help="multi-host: coordinator address HOST:PORT (or $SPECJAX_COORDINATOR)")
    g.add_argument("--num-processes", type=int, help="multi-host: number of processes (or $SPECJAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, help="multi-host: this process's id (or $SPECJAX_PROCESS_ID)")
    g.add_argument("--local-devices", type=int, help="CPU only: number of local CPU devices to expose")
    _add_sampling(g)
    g.set_defaults(func=_cmd_generate)

    c = sub.add_parser("convert", help="convert a checkpoint to specjax params (orbax)")
    c.add_argument("source", help="built-in model name, HF model dir or .gguf file")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    c.set_defaults(func=_cmd_convert)

    d = sub.add_parser("demo", help="plain and speculative decoding of one prompt side by side")
    d.add_argument("--target", default="smollm2-135m-instruct")
    d.add_argument("--drafter", default="ngram:3", help="default ngram:3 (prompt lookup)")
    d.add_argument("--gamma", default="8", help="G, or auto")
    d.add_argument("--max-new-tokens", type=int, default=128)
    d.add_argument("--prompt", default=DEMO_PROMPT, help="default: a text to correct (the output repeats the input, "
                   "where prompt lookup pays)")
    d.set_defaults(func=_cmd_demo)

    b = sub.add_parser("bench", help="run a benchmark suite from a YAML config (see configs/bench/)")
    b.add_argument("config", help="YAML config, e.g. configs/bench/smollm2.yaml")
    b.add_argument("--out", default=None, help="output directory (default: benchmarks/<config name>)")
    b.set_defaults(func=_cmd_bench)

    k = sub.add_parser("calibrate", help="measure what speculation rounds of each width cost on this machine, per "
                       "batch size, for --gamma auto (stored in $SPECJAX_CACHE/calibration.json)")
    from specjax.bench.calibrate import add_arguments as _calibrate_arguments

    _calibrate_arguments(k)
    k.set_defaults(func=_cmd_calibrate)

    a = sub.add_parser("advise", help="which drafter and window to use on your prompts, per batch size: acceptance "
                       "by position, c, v, predicted and measured speedups, a recommendation and a plot")
    from specjax.bench.advise import add_arguments as _advise_arguments

    _advise_arguments(a)
    a.set_defaults(func=_cmd_advise)

    t = sub.add_parser("distill", help="train a draft on the target's own outputs from a YAML recipe "
                       "(see configs/distill/)")
    t.add_argument("config", help="YAML recipe, e.g. configs/distill/smollm2_eagle3.yaml")
    t.add_argument("--out", default=None, help="output directory (default: distill/<recipe name>); a run found "
                   "there resumes")
    t.set_defaults(func=_cmd_distill)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":  # before multi-host setup and the compile cache; reused by the command
            args.checked = _check_generate_args(args)
        if args.command == "generate":  # multi-host flags or the SPECJAX_/JAX_ environment variables
            from specjax.sharding import distributed_init

            from specjax.sampler import enable_compile_cache

            if args.no_compile_cache:  # every Sampler of this process reads it
                os.environ["SPECJAX_COMPILE_CACHE"] = "0"
            else:
                enable_compile_cache()  # before anything compiles, so loading the model hits the cache too
            started = distributed_init(args.coordinator, args.num_processes, args.process_id, args.local_devices)
            if not started and args.local_devices:
                import jax

                jax.config.update("jax_num_cpu_devices", args.local_devices)
        return args.func(args)
    except SpecJaxError as err:
        if args.debug:
            raise
        print(f"specjax: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specjax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
