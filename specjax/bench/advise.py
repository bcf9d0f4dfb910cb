"""`specjax advise`: which drafter and window to use, on your prompts, on this machine, per batch size.

    specjax advise --target smollm2-135m-instruct --drafters ngram:3:1,layerskip:0-11,18-29,eagle:NAME
        [--prompts FILE | --suite chat] [--count 6] [--gamma-max 8] [--batches 1,2,4,8,16,32,64]
        [--measure 1,2,4,8] [--max-new-tokens 64] [--out DIR]

Per candidate drafter:
  1. a short greedy run at G = G_max, batch 1, on the prompts gives P(proposal j accepted) for every
     draft position j (`accepted_at[j] / rounds`: rounds where proposals 0..j were all accepted, so a
     prompt lookup row without a match counts as a rejection), hence the expected tokens of a round
     at any window: E(G) = 1 + sum_{j<G} P(proposal j accepted);
  2. the costs of a round of width G at batch B come from the calibration file (`specjax calibrate`,
     run here for a candidate that has none: round(G) = drafting + verifying G proposals, in plain
     steps; c and v as measured there);
  3. predicted speedup(G, B) = E(G) / round_B(G) for G = 1..G_max and every batch size; the
     recommendation per batch size is the (drafter, G) with the largest, or plain decoding when
     none exceeds 1;
  4. measured speedup: whole calls at the smallest batch size (1 by default) for every G of --measure and each drafter's own best G,
     and at every batch size for its recommendation (against plain decoding in the same run).

The report (markdown on stdout, and OUT/advice.json, OUT/advice.md, OUT/advice.png with --out)
ranks the drafters by measured speedup at the smallest batch size and says whether their acceptance rate or their
cost (latency) ranked them the same way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MEASURE_GAMMAS = (1, 2, 4, 8)


def expected_tokens(accepted_at: list[int], rounds: int, gamma: int) -> float:
    """E(G) = 1 + sum_{j<G} P(proposal j accepted), from a run at a window of at least G."""
    return 1.0 + sum(accepted_at[j] for j in range(gamma)) / rounds


def _rank(values: dict[str, float]) -> list[str]:
    return sorted(values, key=lambda k: -values[k])


def advise(target: str, drafters: list[str], prompts: list[tuple[str, bool]], *, gamma_max: int = 8,
           batches=None, measure_gammas=MEASURE_GAMMAS, max_new_tokens: int = 64, dtype: str | None = None,
           calibration: str | None = None, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    from specjax import policy as P
    from specjax.bench import calibrate as cal
    from specjax.bench.runner import batches as groups_of, measure
    from specjax.models import load, load_eagle
    from specjax.sampler import Sampler, model_label

    from specjax import validate
    from specjax.errors import ConfigError

    batches = sorted(batches or P.CALIBRATION_BATCHES)
    validate.integer("--max-new-tokens", max_new_tokens, low=1)
    if max_new_tokens <= gamma_max:
        raise ConfigError(f"--max-new-tokens {max_new_tokens} leaves no room for rounds of G = {gamma_max}; "
                          f"give at least {gamma_max + 1}")
    b0 = batches[0]
    model = load(target, dtype=dtype, progress=progress)
    loaders = dict(load_model=lambda name: load(name, dtype=dtype, progress=progress),
                   load_head=lambda p: load_eagle(p, dtype=model.module.dtype))
    texts = [t for t, _ in prompts]
    chat = all(c for _, c in prompts)
    common = dict(max_new_tokens=max_new_tokens, repeats=1, chat=chat)
    plain = Sampler(model, None, eos_ids=())
    base = {b0: measure(plain, groups_of(texts, b0)[0] if b0 > 1 else texts, batch=b0, **common)["tokens_per_s"]}
    report = {"target": target, "prompts": len(texts), "gamma_max": gamma_max, "batches": batches, "drafters": {}}
    for d in tqdm(drafters, desc="advise", unit="drafter", disable=not progress):
        probe = Sampler(model, d, gamma=gamma_max, eos_ids=(), **loaders)
        run = measure(probe, texts, batch=1, **common)
        rounds, accepted_at = run["rounds_total"], run["accepted_at_total"]
        if not rounds:
            raise ConfigError(f"{d}: the probe run made no speculation rounds; use more --max-new-tokens")
        E = {g: expected_tokens(accepted_at, rounds, g) for g in range(1, gamma_max + 1)}
        auto = Sampler(model, d, gamma="auto", gamma_max=gamma_max, eos_ids=(), calibration=calibration, **loaders)
        key = P.calibration_key(backend=P.device_identity()[0], device_kind=P.device_identity()[1],
                                model=model_label(auto.lm, auto.params), drafter=auto.draft_label)
        entry = P.load_calibration(calibration).get(key)
        if entry is None or any(str(b) not in entry.get("batches", {}) for b in batches) \
                or any(P.costs_from_entry(entry, b, gamma_max) is None for b in batches):
            _, entry = cal.calibrate(target, d, gamma_max=gamma_max, batches=batches, repeats=3, dtype=dtype,
                                     path=calibration, progress=progress)
        costs = {b: P.costs_from_entry(entry, b, gamma_max).round for b in batches}
        predicted = {b: {g: E[g] / costs[b][g] for g in range(1, gamma_max + 1)} for b in batches}
        row1 = entry["batches"][str(b0)]
        best_g = max(predicted[b0], key=predicted[b0].get)
        measured = {}
        for g in sorted(set(measure_gammas) | {best_g}):
            if g <= gamma_max:
                measured[g] = measure(Sampler(model, d, gamma=g, eos_ids=(), **loaders), groups_of(texts, b0)[0]
                                      if b0 > 1 else texts, batch=b0, **common)["tokens_per_s"] / base[b0]
        report["drafters"][d] = {
            "acceptance_rate": run["acceptance_rate"], "acceptance_by_position": run["acceptance_by_position"],
            "p_accepted_at": [x / rounds for x in accepted_at], "expected_tokens": E,
            "c": row1.get("c"), "v": row1.get("v"), "round_costs": costs, "predicted": predicted,
            "measured_speedup": measured, "calibration": key}
    # recommendations per batch size, and their measured speedup
    recommend = {}
    for b in batches:
        options = [(p, d, g) for d, r in report["drafters"].items() for g, p in r["predicted"][b].items()]
        p, d, g = max(options)
        recommend[b] = {"drafter": d, "gamma": g, "predicted": p} if p > 1.0 else {"drafter": None, "gamma": 0,
                                                                                  "predicted": 1.0}
    for b, rec in tqdm(recommend.items(), desc="check recommendations", unit="batch", disable=not progress):
        group = groups_of(texts, b)[0] if b > 1 else texts
        if b not in base:
            base[b] = measure(plain, group, batch=b, **common)["tokens_per_s"]
        if rec["drafter"] is None:
            rec["measured"] = 1.0
        elif b == b0 and rec["gamma"] in report["drafters"][rec["drafter"]]["measured_speedup"]:
            rec["measured"] = report["drafters"][rec["drafter"]]["measured_speedup"][rec["gamma"]]
        else:
            s = Sampler(model, rec["drafter"], gamma=rec["gamma"], eos_ids=(), **loaders)
            rec["measured"] = measure(s, group, batch=b, **common)["tokens_per_s"] / base[b]
        rec["error"] = rec["predicted"] / rec["measured"] - 1.0
    report["recommend"] = recommend
    report["plain_tokens_per_s"] = base
    # which figure ranked the drafters as the measurement did (batch 1)
    r = report["drafters"]
    by = {"measured": _rank({d: max(x["measured_speedup"].values()) for d, x in r.items()}),
          "predicted": _rank({d: max(x["predicted"][batches[0]].values()) for d, x in r.items()}),
          "acceptance": _rank({d: x["acceptance_rate"] or 0.0 for d, x in r.items()}),
          "latency": _rank({d: -min((x["c"] or {}).values() or [0.0]) for d, x in r.items()})}
    report["rankings"] = by
    report["ranking_agrees"] = {k: v == by["measured"] for k, v in by.items() if k != "measured"}
    return report


def markdown(rep: dict) -> str:
    lines = [f"Target `{rep['target']}`, {rep['prompts']} prompts, greedy, G up to {rep['gamma_max']}.", "",
             f"| drafter | a | P(accepted) by position | c | predicted at B={rep['batches'][0]} (G: x) | "
             f"measured at B={rep['batches'][0]} (G: x) |",
             "|---|---|---|---|---|---|"]
    b1 = rep["batches"][0]
    for d, r in rep["drafters"].items():
        pos = ", ".join(f"{x:.2f}" for x in r["p_accepted_at"])
        c = ", ".join(f"{g}: {x:.3f}" for g, x in (r["c"] or {}).items())
        pred = ", ".join(f"{g}: {x:.2f}" for g, x in r["predicted"][b1].items())
        meas = ", ".join(f"{g}: {x:.2f}" for g, x in r["measured_speedup"].items())
        a = "-" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.3f}"
        lines.append(f"| {d} | {a} | {pos} | {c} | {pred} | {meas} |")
    lines += ["", "| batch | recommended | predicted | measured | predicted / measured - 1 |", "|---|---|---|---|---|"]
    for b, rec in rep["recommend"].items():
        name = "plain decoding" if rec["drafter"] is None else f"{rec['drafter']}, G = {rec['gamma']}"
        lines.append(f"| {b} | {name} | {rec['predicted']:.2f}x | {rec['measured']:.2f}x | {rec['error']:+.1%} |")
    rk = rep["rankings"]
    lines += ["", f"Ranking at batch {b1} by measured speedup: {', '.join(rk['measured'])}. "
              + "; ".join(f"by {k}: {', '.join(rk[k])} ({'same' if rep['ranking_agrees'][k] else 'different'})"
                          for k in ("predicted", "acceptance", "latency")) + "."]
    return "\n".join(lines) + "\n"


def plot(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    b1 = rep["batches"][0]
    for i, (d, r) in enumerate(rep["drafters"].items()):
        color = f"C{i}"
        gs = sorted(r["predicted"][b1], key=int)
        ax.plot([int(g) for g in gs], [r["predicted"][b1][g] for g in gs], color=color, label=f"{d} predicted")
        ms = sorted(r["measured_speedup"], key=int)
        ax.scatter([int(g) for g in ms], [r["measured_speedup"][g] for g in ms], color=color, marker="x",
                   label=f"{d} measured")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("G")
    ax.set_ylabel(f"speedup over plain, batch {b1}")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def add_arguments(p) -> None:
    p.add_argument("--target", required=True)
    p.add_argument("--drafters", required=True, help="comma-separated drafter strings; separate with ';' when a "
                   "drafter string itself has commas (layerskip:0-11,18-29)")
    p.add_argument("--prompts", default=None, help="a prompt file (YAML with prompts:, JSONL, or one per line)")
    p.add_argument("--suite", default="chat", help="a shipped suite when --prompts is not given (default chat)")
    p.add_argument("--count", type=int, default=6, help="prompts to use (default 6)")
    p.add_argument("--gamma-max", type=int, default=8)
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,2,4,8,16,32,64)")
    p.add_argument("--measure", default="1,2,4,8", help="windows measured at batch 1 (default 1,2,4,8)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--calibration", default=None, help="calibration file (default $SPECJAX_CACHE/calibration.json)")
    p.add_argument("--out", default=None, help="write advice.json, advice.md and advice.png here")


def _ints(flag: str, text: str) -> list[int]:
    from specjax import validate
    from specjax.errors import ConfigError

    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated integers, got {text!r}") from None
    return [validate.integer(flag, v, low=1) for v in values]


def split_drafters(text: str) -> list[str]:
    """"a,b,c" -> [a, b, c]; with ';' present, ';' separates (layer lists contain commas)."""
    from specjax.drafters import registry

    parts = [p.strip() for p in (text.split(";") if ";" in text else text.split(",")) if p.strip()]
    for p in parts:
        registry.parse(p)
    return parts


def run_cli(args) -> int:
    from specjax import validate
    from specjax.distill.data import load_prompts

    drafters = split_drafters(args.drafters)
    validate.integer("--count", args.count, low=1)
    validate.integer("--gamma-max", args.gamma_max, low=1)
    batches = _ints("--batches", args.batches) if args.batches else None
    gammas = _ints("--measure", args.measure)
    sources = [args.prompts] if args.prompts else [{"suite": args.suite}]
    prompts = load_prompts(sources)[:args.count]
    rep = advise(args.target, drafters, prompts, gamma_max=args.gamma_max, batches=batches, measure_gammas=gammas,
                 max_new_tokens=args.max_new_tokens, dtype=args.dtype, calibration=args.calibration)
    md = markdown(rep)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "advice.json").write_text(json.dumps(rep, indent=1, default=float))
        (out / "advice.md").write_text(md)
        plot(rep, out / "advice.png")
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="specjax advise")
    add_arguments(parser)
    sys.exit(run_cli(parser.parse_args()))
