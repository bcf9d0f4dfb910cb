"""`specjax calibrate`: what a speculation round of each width costs on this machine, stored for gamma="auto".

    specjax calibrate --target smollm2-135m-instruct --drafter ngram:3:1 [--gamma-max 16]
        [--batches 1,2,4,8,16,32,64] [--repeats 5] [--dtype float32] [--file PATH]

For every batch size B and every width W the auto policy compiles (0, 1, 2, 4, ..., G_max), on a
cache of 512 slots with 256 committed tokens per row (`specjax.bench.measure`):

  round(W)   the loop's own adaptive round fixed at width W (draft W proposals, verify W + 1 positions,
             the rule, commit, the drafter's observe), `rounds_per_call(B)` of them in one `lax.fori_loop`,
             divided by a step of plain decoding (`loop.ar_step`, the same number in one loop): round(0)
             is above 1 for a drafter that works in every round (an EAGLE head observes every token)
  v(W)       the target's (W+1)-token forward / its 1-token forward (`measure.StepTimer`)
  c(W)       (round(W) - the (W+1)-token forward) / (W x the 1-token forward): what drafting, the rule
             and the bookkeeping add per proposal

The costs the policy reads are round(W) (widths between the compiled ones interpolated).
They are stored under (backend, device kind, target, drafter) in the calibration file
($SPECJAX_CACHE/calibration.json), with the smallest batch size at which no window pays even at
acceptance 0.9 (from there on, gamma="auto" decodes plainly). Greedy rounds are timed: sampled
rounds add the warping of G + 1 target distributions (see `specjax.bench.warp_cost`).
"""

from __future__ import annotations

import argparse
import datetime
import sys

ROUNDS_PER_CALL = 8  # at batch 1; fewer at larger batches (a round there takes up to seconds)


def rounds_per_call(batch: int) -> int:
    return max(1, ROUNDS_PER_CALL // max(1, batch // 4))


def round_times(sampler, *, batch: int, widths, repeats: int = 5) -> dict:
    """Seconds per adaptive round at each fixed width (0: a plain step of the speculative program), and
    per step of plain decoding ("plain"), batch rows mid-decode."""
    import jax
    import numpy as np

    from specjax import loop
    from specjax.bench import measure as micro
    from specjax.config import GREEDY
    from specjax.policy import Policy

    G = sampler.gamma
    prompt_bp = micro.context_tokens(batch, micro.CONTEXT, sampler.vocab_rows)
    batch_in = loop.Batch.make(prompt_bp, np.full((batch,), micro.CONTEXT, np.int32), sampling=GREEDY,
                               max_new_tokens=micro.SIZE - micro.CONTEXT - G - 2, key=jax.random.key(0),
                               vocab_size=sampler.vocab_limit)

    def decoder(w):
        return loop.Decoder(lm=sampler.lm, size=micro.SIZE, vocab_size=sampler.vocab_limit, drafter=sampler.drafter,
                            gamma=G, policy=Policy(widths=(w,), round_cost=(1.0,)))

    params, dparams = sampler.params, sampler.draft_params
    state = jax.jit(decoder(0).start)(params, dparams, batch_in)
    out = {}
    n = rounds_per_call(batch)
    for w in widths:
        dec = decoder(w)

        @jax.jit
        def rounds(params, dparams, state, dec=dec):  # params as arguments: never folded into the program
            return jax.lax.fori_loop(0, n, lambda i, s: loop.adaptive_round(dec, params, dparams, s), state)

        out[w] = micro._median_time(rounds, params, dparams, state, repeats=repeats) / n
    plain = loop.Decoder(lm=sampler.lm, size=micro.SIZE, vocab_size=sampler.vocab_limit)
    plain_state = jax.jit(plain.start)(params, None, batch_in)

    @jax.jit
    def steps(params, state):
        return jax.lax.fori_loop(0, n, lambda i, s: loop.ar_step(plain, params, s), state)

    out["plain"] = micro._median_time(steps, params, plain_state, repeats=repeats) / n
    return out


def interpolate(values: dict[int, float], gamma_max: int) -> list[float]:
    """Values at every W in 0..gamma_max, linear between the measured widths."""
    import numpy as np

    xs = sorted(values)
    return [float(np.interp(w, xs, [values[x] for x in xs])) for w in range(gamma_max + 1)]


def calibrate(target: str, drafter: str, *, gamma_max: int | None = None, batches=None, repeats: int = 5,
              dtype: str | None = None, path: str | None = None, progress: bool = True) -> tuple[str, dict]:
    """Measure and store -> (calibration key, entry)."""
    from tqdm.auto import tqdm

    from specjax import policy as P, validate
    from specjax.bench import measure as micro
    from specjax.drafters import registry
    from specjax.models import load, load_eagle
    from specjax.sampler import Sampler, model_label

    registry.parse(drafter)
    batches = list(batches or P.CALIBRATION_BATCHES)
    for b in batches:
        validate.integer("--batches", b, low=1)
    model = load(target, dtype=dtype, progress=progress)
    sampler = Sampler(model, drafter, gamma="auto", gamma_max=gamma_max, eos_ids=(),
                      load_model=lambda name: load(name, dtype=dtype, progress=progress),
                      load_head=lambda p: load_eagle(p, dtype=model.module.dtype))
    G = sampler.gamma
    widths = P.widths_for(G)
    entry = {"target": target, "drafter": drafter, "gamma_max": G, "widths": list(widths),
             "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "repeats": repeats, "batches": {}}
    bar = tqdm(batches, desc=f"calibrate {drafter}", unit="batch", disable=not progress)
    for b in bar:
        rounds = round_times(sampler, batch=b, widths=widths, repeats=repeats)
        steps = micro.StepTimer(sampler.lm, sampler.params, batch=b).measure([w for w in widths if w], repeats=repeats)
        t0, t1 = rounds.pop("plain"), steps["target_step_s"]
        c = {w: (rounds[w] - steps["verify_s"][w]) / (w * t1) for w in widths if w}
        entry["batches"][str(b)] = {
            "round": interpolate({w: t / t0 for w, t in rounds.items()}, G),
            "round_ms": {str(w): t * 1000 for w, t in rounds.items()},
            "plain_step_ms": t0 * 1000,
            "target_step_ms": t1 * 1000,
            "v": {str(w): x for w, x in steps["v"].items()},
            "c": {str(w): x for w, x in c.items()},
        }
        bar.set_postfix_str(f"B={b}: round(G_max)/step {rounds[G] / t0:.2f}")
    limit = P.fallback_batch(entry)
    entry["fallback_batch"] = limit
    backend, kind = P.device_identity()
    key = P.calibration_key(backend=backend, device_kind=kind, model=model_label(sampler.lm, sampler.params),
                            drafter=sampler.draft_label)
    P.save_calibration(key, entry, path)
    return key, entry


def table(entry: dict) -> str:
    widths = [w for w in entry["widths"] if w]
    head = "| batch | step ms | " + " | ".join(f"round({w})" for w in entry["widths"]) + " | " + \
        " | ".join(f"v({w})" for w in widths) + " | " + " | ".join(f"c({w})" for w in widths) + " |"
    lines = [head, "|" + "---|" * (2 + len(entry["widths"]) + 2 * len(widths))]
    for b, r in sorted(entry["batches"].items(), key=lambda kv: int(kv[0])):
        cells = [b, f"{r['target_step_ms']:.1f}"] + [f"{r['round'][w]:.2f}" for w in entry["widths"]]
        cells += [f"{r['v'][str(w)]:.2f}" for w in widths] + [f"{r['c'][str(w)]:.3f}" for w in widths]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nround(W): one round of width W / one step of plain decoding (what gamma='auto' weighs); "
                 f"plain decoding from batch {entry['fallback_batch']}" if entry["fallback_batch"] else
                 "\nround(W): one round of width W / one step of plain decoding; no batch size measured loses at every window")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="specjax calibrate")
    add_arguments(p)
    args = p.parse_args(argv)
    return run_cli(args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="built-in model name, HF dir, .gguf or converted dir")
    p.add_argument("--drafter", required=True, help="a drafter string, e.g. ngram:3:1, layerskip:12, "
                   "eagle:smollm2-135m-instruct-eagle3")
    p.add_argument("--gamma-max", type=int, default=None, help="largest window (default 8; 16 for prompt lookup)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,2,4,8,16,32,64)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--file", default=None, help="calibration file (default $SPECJAX_CACHE/calibration.json)")


def run_cli(args) -> int:
    from specjax import validate
    from specjax.errors import ConfigError
    from specjax.policy import calibration_path

    try:
        batches = [int(x) for x in args.batches.split(",")] if args.batches else None
    except ValueError:
        raise ConfigError(f"--batches must be comma-separated integers, got {args.batches!r}") from None
    validate.integer("--repeats", args.repeats, low=1)
    if args.gamma_max is not None:
        validate.integer("--gamma-max", args.gamma_max, low=1)
    key, entry = calibrate(args.target, args.drafter, gamma_max=args.gamma_max, batches=batches,
                           repeats=args.repeats, dtype=args.dtype, path=args.file)
    print(table(entry))
    print(f"stored as {key!r} in {args.file or calibration_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
