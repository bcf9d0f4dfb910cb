"""Benchmark results -> markdown tables, PNG plots, and an in-place refresh of BENCHMARKS.md."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

DPI = 80


def _f(x, fmt=".2f", dash="-"):
    return dash if x is None else format(x, fmt)


def markdown(results: dict, out_dir: Path, link_base: Path | None = None) -> str:
    cfg, m = results["config"], results["machine"]
    base = Path(os.path.relpath(Path(out_dir).absolute(), Path(link_base).absolute())) if link_base else Path(out_dir)
    if not results["points"] and results.get("auto_sweep"):  # an auto-sweep-only config: its own settings
        sw = cfg["auto_sweep"]
        lines = [f"Config `{cfg['name']}`: target `{cfg['target']}` ({cfg['dtype']}), {sw.get('prompts')} prompts per "
                 f"suite at batch 1 (the first B prompts, topped up, at batch B), {sw.get('max_new_tokens')} new "
                 f"tokens (EOS ignored), {sw.get('repeats', 1)} timed repeat(s) after a warm-up call per point. "
                 f"Machine: {m['machine']}, {m['cpus']} cores, JAX backend `{m['jax_backend']}`. Wall time of the "
                 f"whole run: {results.get('wall_s', 0) / 60:.1f} min.", ""]
        lines += auto_sweep_markdown(results["auto_sweep"])
        for png in sorted(Path(out_dir).glob("*.png")):
            lines.append(f"![{png.stem}]({(base / png.name).as_posix()})")
        return "\n".join(lines) + "\n"
    lines = [
        f"Config `{cfg['name']}`: target `{cfg['target']}` ({cfg['dtype']}), batch {cfg['batch']}, "
        f"{cfg['prompts_per_suite']} prompts per suite, {cfg['max_new_tokens']} new tokens (EOS ignored), "
        f"median of {cfg['repeats']} timed repeats after a warm-up"
        f"{' (each repeat calls the baseline and every drafter in turn)' if cfg.get('interleave') else ''}. "
        f"Machine: {m['machine']}, {m['cpus']} cores, "
        f"JAX backend `{m['jax_backend']}`. Wall time of the whole run: {results.get('wall_s', 0) / 60:.1f} min.",
        "",
        "Columns: speedup = tokens/s over the autoregressive baseline's, whole calls (prefill included); decode "
        "speedup = the same with each call's prefill (TTFT) taken out, the phase the formulas model; a = "
        "acceptance rate (accepted / reached proposals); tokens/round measured, and from the formula "
        "(1 - a^(G+1)) / (1 - a); c = drafter cost per proposal / target step; v = (G+1)-token verify / "
        "1-token step (both re-timed next to each point); predicted = formula / (G c + v); TTFT = prefill + "
        "first token.",
        "",
    ]
    groups = defaultdict(list)
    for p in results["points"]:
        groups[(p["suite"], p["sampling"])].append(p)
    for (suite, sampling), points in groups.items():
        ar = next(p for p in points if p["drafter"] == "autoregressive")
        lines += [f"**{suite}, {sampling}** (autoregressive: {ar['tokens_per_s']:.1f} tokens/s, "
                  f"TTFT {ar.get('ttft_ms', 0):.0f} ms, compile {ar['compile_s']:.1f} s)", "",
                  "| drafter | G | tokens/s | speedup | decode speedup | a | tokens/round | formula | c | v "
                  "| predicted | TTFT ms | compile s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in points:
            if p["drafter"] == "autoregressive":
                continue
            lines.append(
                f"| {p['drafter']} | {p['gamma']} | {p['tokens_per_s']:.1f} | {p['speedup']:.2f}x | "
                f"{_f(p.get('decode_speedup'))}x | "
                f"{_f(p.get('acceptance_rate'), '.3f')} | {_f(p.get('mean_tokens_per_round'))} | "
                f"{_f(p.get('predicted_tokens_per_round'))} | {_f(p.get('c'), '.3f')} | {_f(p.get('v'))} | "
                f"{_f(p.get('predicted_speedup'))}x | {_f(p.get('ttft_ms'), '.0f')} | {p['compile_s']:.1f} |")
        lines.append("")
    if results.get("peers"):
        lines += ["**Side by side with transformers** (same model, prompts, lengths; batch 1, greedy)", "",
                  "| suite | decoder | tokens/s | specjax / transformers |", "|---|---|---|---|"]
        by_suite = defaultdict(list)
        for r in results["peers"]:
            by_suite[r["suite"]].append(r)
        for suite, rows in by_suite.items():
            hf = {r["kind"]: r["tokens_per_s"] for r in rows if r["peer"].startswith("transformers")}
            for r in rows:
                ratio = ""
                if r["peer"].startswith("specjax") and r["kind"] in hf:
                    ratio = f"{r['tokens_per_s'] / hf[r['kind']]:.2f}x"
                lines.append(f"| {suite} | {r['peer']} | {r['tokens_per_s']:.1f} | {ratio} |")
        lines.append("")
    if results.get("batch_sweep"):
        bs = results["batch_sweep"]
        lines += [f"**Batch sweep** ({bs[0]['drafter']}, G={bs[0]['gamma']}, suite {bs[0]['suite']}, greedy): "
                  "speedup over the autoregressive baseline at the same batch size", "",
                  "| batch | autoregressive tokens/s | speculative tokens/s | speedup | a | tokens/round |",
                  "|---|---|---|---|---|---|"]
        for r in bs:
            lines.append(f"| {r['batch']} | {r['ar_tokens_per_s']:.1f} | {r['spec_tokens_per_s']:.1f} | "
                         f"{r['speedup']:.2f}x | {_f(r['acceptance_rate'], '.3f')} | "
                         f"{_f(r['mean_tokens_per_round'])} |")
        lines.append("")
    if results.get("auto_sweep"):
        lines += auto_sweep_markdown(results["auto_sweep"])
    for png in sorted(Path(out_dir).glob("*.png")):
        lines.append(f"![{png.stem}]({(base / png.name).as_posix()})")
    return "\n".join(lines) + "\n"


def auto_sweep_summary(rows: list[dict]) -> list[dict]:
    """Per (suite, drafter): auto's worst speedup over plain across batch sizes, and at batch 1 auto
    against the best fixed G (auto / best)."""
    out = []
    for suite, drafter in sorted({(r["suite"], r["drafter"]) for r in rows if r["mode"] != "plain"}):
        mine = [r for r in rows if (r["suite"], r["drafter"]) == (suite, drafter)]
        auto = [r for r in mine if r["mode"] == "auto"]
        worst = min(auto, key=lambda r: r["speedup"]) if auto else None
        fixed1 = [r for r in mine if r["batch"] == 1 and r["mode"].startswith("G=")]
        best = max(fixed1, key=lambda r: r["speedup"]) if fixed1 else None
        auto1 = next((r for r in auto if r["batch"] == 1), None)
        out.append({"suite": suite, "drafter": drafter, "worst_auto": worst and worst["speedup"],
                    "worst_batch": worst and worst["batch"], "auto_b1": auto1 and auto1["speedup"],
                    "best_fixed": best and best["speedup"], "best_mode": best and best["mode"],
                    "auto_vs_best": auto1["speedup"] / best["speedup"] if auto1 and best else None})
    return out


def auto_sweep_markdown(rows: list[dict]) -> list[str]:
    batches = sorted({r["batch"] for r in rows})
    lines = ["**gamma = auto against plain decoding and fixed windows** (greedy; speedup = tokens/s over plain "
             "decoding at the same batch size and suite, whole calls; mean window = the verify width the policy "
             "chose, averaged over rounds; 0 = a plain step)", "",
             "| suite | drafter | " + " | ".join(f"B={b}" for b in batches) + " | best fixed G at B=1 | auto / best |",
             "|---|---|" + "---|" * len(batches) + "---|---|"]
    summary = {(s["suite"], s["drafter"]): s for s in auto_sweep_summary(rows)}
    for (suite, drafter), s in summary.items():
        cells = []
        for b in batches:
            r = next((r for r in rows if (r["suite"], r["drafter"], r["batch"], r["mode"]) ==
                      (suite, drafter, b, "auto")), None)
            cells.append(f"{r['speedup']:.2f}x (w {_f(r.get('mean_window'), '.1f')})" if r else "-")
        best = f"{s['best_mode']} {s['best_fixed']:.2f}x" if s["best_fixed"] else "-"
        lines.append(f"| {suite} | {drafter} | " + " | ".join(cells) + f" | {best} | {_f(s['auto_vs_best'])} |")
    lines += ["", "| suite | drafter | batch | mode | tokens/s | speedup | a | tokens/round | mean window | "
              "plain rounds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['suite']} | {r['drafter']} | {r['batch']} | {r['mode']} | {r['tokens_per_s']:.1f} | "
                     f"{r['speedup']:.2f}x | {_f(r.get('acceptance_rate'), '.3f')} | "
                     f"{_f(r.get('mean_tokens_per_round'))} | {_f(r.get('mean_window'))} | "
                     f"{r.get('plain_rounds') if r.get('plain_rounds') is not None else '-'} |")
    return lines + [""]


def figures(results: dict) -> dict[str, Any]:
    """The plots of `results` as matplotlib figures, by file stem (only those with data to show):
    speedup_vs_gamma, acceptance_by_position, predicted_vs_measured, speedup_vs_batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, Any] = {}
    points = [p for p in results["points"] if p["drafter"] != "autoregressive"]
    if points:
        keys = sorted({(p["suite"], p["sampling"]) for p in points})
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
        for ax, (suite, sampling) in zip(axes[0], keys):
            for drafter in sorted({p["drafter"] for p in points}):
                here = [p for p in points if (p["suite"], p["sampling"], p["drafter"]) == (suite, sampling, drafter)]
                ps = sorted(here, key=lambda p: p["gamma"])
                ax.plot([p["gamma"] for p in ps], [p["speedup"] for p in ps], marker="o", label=drafter)
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_title(f"{suite}, {sampling}", fontsize=9)
            ax.set_xlabel("G")
            ax.set_ylabel("speedup over autoregressive")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        out["speedup_vs_gamma"] = fig

        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for drafter in sorted({p["drafter"] for p in points}):
            ps = [p for p in points if p["drafter"] == drafter and p["acceptance_by_position"]]
            if not ps:
                continue
            best = max(ps, key=lambda p: p["gamma"])
            pos = best["acceptance_by_position"]
            ax.plot(range(1, len(pos) + 1), [v if v is not None else float("nan") for v in pos], marker="o",
                    label=f"{drafter} ({best['suite']}, {best['sampling']})")
        ax.set_xlabel("draft position")
        ax.set_ylabel("P(accepted | earlier accepted)")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=6)
        fig.tight_layout()
        out["acceptance_by_position"] = fig

        pred = [p for p in points if p.get("predicted_speedup") is not None]
        if pred:
            fig, ax = plt.subplots(figsize=(3.8, 3.4))
            for drafter in sorted({p["drafter"] for p in pred}):
                ps = [p for p in pred if p["drafter"] == drafter]
                ax.scatter([p["predicted_speedup"] for p in ps], [p.get("decode_speedup") or p["speedup"] for p in ps],
                           label=drafter, s=14)
            hi = max(max(p["predicted_speedup"] for p in pred),
                     max(p.get("decode_speedup") or p["speedup"] for p in pred)) * 1.1
            ax.plot([0, hi], [0, hi], color="grey", lw=0.8, ls="--")
            ax.set_xlabel("predicted speedup tau / (G c + v)")
            ax.set_ylabel("measured decode speedup")
            ax.legend(fontsize=6)
            fig.tight_layout()
            out["predicted_vs_measured"] = fig
    if results.get("batch_sweep"):
        bs = results["batch_sweep"]
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.plot([r["batch"] for r in bs], [r["speedup"] for r in bs], marker="o")
        ax.set_xscale("log", base=2)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("batch size")
        ax.set_ylabel("speedup over autoregressive")
        ax.set_title(f"{bs[0]['drafter']}, G={bs[0]['gamma']}", fontsize=9)
        fig.tight_layout()
        out["speedup_vs_batch"] = fig
    if results.get("auto_sweep"):
        rows = results["auto_sweep"]
        suites = sorted({r["suite"] for r in rows})
        fig, axes = plt.subplots(1, len(suites), figsize=(4 * len(suites), 3.2), squeeze=False)
        for ax, suite in zip(axes[0], suites):
            for drafter in sorted({r["drafter"] for r in rows if r["suite"] == suite and r["mode"] == "auto"}):
                rs = sorted((r for r in rows if (r["suite"], r["drafter"], r["mode"]) == (suite, drafter, "auto")),
                            key=lambda r: r["batch"])
                ax.plot([r["batch"] for r in rs], [r["speedup"] for r in rs], marker="o", label=f"{drafter} auto")
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.axhline(0.97, color="red", lw=0.6, ls=":")
            ax.set_xscale("log", base=2)
            ax.set_title(suite, fontsize=9)
            ax.set_xlabel("batch size")
            ax.set_ylabel("speedup over plain")
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        out["auto_vs_batch"] = fig
    return out


def plots(results: dict, out_dir: Path) -> list[Path]:
    """Write every figure of `results` to OUT_DIR/STEM.png (DPI dots per inch) -> the paths."""
    import matplotlib.pyplot as plt

    written = []
    for stem, fig in figures(results).items():
        path = Path(out_dir) / f"{stem}.png"
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        written.append(path)
    return written


def refresh_section(file: Path, section: str, body: str) -> None:
    """Replace the text between `<!-- bench:SECTION:start -->` and `<!-- bench:SECTION:end -->`."""
    start, end = f"<!-- bench:{section}:start -->", f"<!-- bench:{section}:end -->"
    text = file.read_text() if file.exists() else ""
    block = f"{start}\n{body}{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    file.write_text(text)
