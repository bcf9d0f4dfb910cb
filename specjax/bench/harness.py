"""`specjax bench CONFIG`: benchmark sweeps driven by a YAML file, with peers, tables and plots.

A config (see configs/bench/*.yaml) names:
  target, dtype          the model (a built-in name, HF dir, .gguf or converted dir)
  drafters               "ngram:NMAX[:NMIN]", "layerskip:K", "model:truncate:K" (a copy of the
                         target's first K layers as a separate draft model), or "model:PATH"
  gammas, sampling       sweeps over G and over sampling settings ({temperature, top_k, top_p})
  suites, prompts_per_suite, max_new_tokens, repeats, seed
  chat_template          false to send prompts as raw text (base models)
  cost_ratios            measure c, v and the predicted speedup for every point (default true)
  peers                  {transformers: true, batch: 1}: transformers greedy generate and its assisted
                         generation (prompt lookup; assistant model for model:truncate:K drafters)
  batch_sweep            {drafter, gamma, batches: [...], suite, max_new_tokens, repeats}
  markdown               {file: BENCHMARKS.md, section: NAME}: refresh that section in place

Writes OUT/results.json (every figure), OUT/results.md (the tables) and OUT/*.png (plots).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import yaml
from tqdm.auto import tqdm

from specjax import api, metrics
from specjax.bench import measure as micro
from specjax.bench.prompts import load_suite
from specjax.bench.runner import batches, measure
from specjax.config import SamplingConfig
from specjax.errors import ConfigError


@dataclasses.dataclass
class BenchConfig:
    target: str
    drafters: list[str]
    gammas: list[int]
    dtype: str = "float32"
    sampling: list[dict] = dataclasses.field(default_factory=lambda: [{"temperature": 0.0}])
    suites: list[str] = dataclasses.field(default_factory=lambda: ["humaneval", "chat"])
    prompts_per_suite: int = 4
    max_new_tokens: int = 96
    repeats: int = 2
    batch: int = 1
    seed: int = 0
    chat_template: bool = True  # False: send every suite as raw text (base models, tokenizers without one)
    cost_ratios: bool = True
    peers: dict = dataclasses.field(default_factory=dict)
    batch_sweep: dict = dataclasses.field(default_factory=dict)
    markdown: dict = dataclasses.field(default_factory=dict)
    name: str = "bench"

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "BenchConfig":
        data = yaml.safe_load(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        data.setdefault("name", Path(path).stem)
        return cls(**data)


def sampling_label(s: dict) -> str:
    if not s.get("temperature"):
        return "greedy"
    parts = [f"T={s['temperature']}"] + [f"{k}={s[k]}" for k in ("top_k", "top_p") if s.get(k)]
    return " ".join(parts)


def make_draft(spec: str, target, cache: dict):
    """A drafter spec of the config -> what `api.generate(draft=...)` takes."""
    if spec.startswith("model:"):
        if spec not in cache:
            from specjax.models import load, truncate

            rest = spec[len("model:"):]
            if rest.startswith("truncate:"):
                cache[spec] = truncate(target, int(rest.split(":")[1]))
            else:
                cache[spec] = load(rest, progress=False)
        return cache[spec]
    return spec


def run(cfg: BenchConfig, out_dir: str | os.PathLike) -> dict:
    from specjax.models import load

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    target = load(cfg.target, dtype=cfg.dtype, progress=False)
    drafts: dict = {}
    suites = {s: load_suite(s, cfg.prompts_per_suite) for s in cfg.suites}
    if not cfg.chat_template:
        suites = {s: (prompts, False) for s, (prompts, _) in suites.items()}
    samplings = [dict(s) for s in cfg.sampling]
    results: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "jax_backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]},
        "points": [], "peers": [], "batch_sweep": [],
    }
    total = len(suites) * len(samplings) * (1 + len(cfg.drafters) * len(cfg.gammas))
    bar = tqdm(total=total, desc=f"bench {cfg.name}", unit="point")
    steps_cache: dict = {}
    for suite, (prompts, chat) in suites.items():
        for s in samplings:
            sampling = SamplingConfig.make(s.get("temperature", 0.0), s.get("top_k"), s.get("top_p"))
            common = dict(batch=cfg.batch, sampling=sampling, max_new_tokens=cfg.max_new_tokens, repeats=cfg.repeats,
                          chat=chat, seed=cfg.seed, eos_ids=())
            base = measure(target, prompts, **common)
            base.update(suite=suite, sampling=sampling_label(s), drafter="autoregressive",
                        ttft_ms=_ttft_ms(target, prompts, chat, sampling, cfg))
            _add_decode_rate(base, cfg)
            results["points"].append(base)
            bar.update()
            for spec in cfg.drafters:
                draft = make_draft(spec, target, drafts)
                for g in cfg.gammas:
                    bar.set_postfix_str(f"{suite} {sampling_label(s)} {spec} G={g}")
                    point = measure(target, prompts, draft=draft, gamma=g, **common)
                    point.update(suite=suite, sampling=sampling_label(s), drafter=spec,
                                 speedup=point["tokens_per_s"] / base["tokens_per_s"],
                                 ttft_ms=_ttft_ms(target, prompts, chat, sampling, cfg, draft, g))
                    _add_decode_rate(point, cfg)
                    both = point["decode_tokens_per_s"], base["decode_tokens_per_s"]
                    point["decode_speedup"] = both[0] / both[1] if None not in both else None
                    _add_formulas(point, target, draft, spec, g, sampling, cfg, steps_cache)
                    point["memory"] = api.memory_report(target, draft, batch=cfg.batch,
                                                        length=512 + cfg.max_new_tokens)
                    results["points"].append(point)
                    bar.update()
    bar.close()
    if cfg.peers.get("transformers"):
        results["peers"] = _peers(cfg, target, suites, drafts)
    if cfg.batch_sweep:
        results["batch_sweep"] = _batch_sweep(cfg, target, drafts)
    results["wall_s"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    from specjax.bench import report

    report.plots(results, out)
    (out / "results.md").write_text(report.markdown(results, out, link_base=out))
    if cfg.markdown.get("file"):
        doc = Path(cfg.markdown["file"])
        md = report.markdown(results, out, link_base=doc.absolute().parent)
        report.refresh_section(doc, cfg.markdown.get("section", cfg.name), md)
    return results


def _add_decode_rate(point: dict, cfg: BenchConfig) -> None:
    """Tokens per second of the decode phase alone: the prefill (TTFT, which also emits each row's
    first token) taken out of every call. The formulas model this phase only."""
    groups = point["groups"]
    seconds = point["run_s"] - groups * point["ttft_ms"] / 1000
    tokens = point["tokens"] - groups * cfg.batch
    point["decode_tokens_per_s"] = tokens / seconds if seconds > 0 else None


def _ttft_ms(target, prompts, chat, sampling, cfg, draft=None, gamma: int = 4) -> float:
    """Time to first token: the whole jitted call with max_new_tokens = 1, i.e. the prefill of the
    target (and of the drafter, if it has one) plus the first token; compile excluded."""
    kwargs = dict(sampling=sampling, max_new_tokens=1, chat=chat, eos_ids=(), draft=draft, gamma=gamma)
    runs = []
    for p in prompts:
        api.generate(target, [p], **kwargs)  # compiles this prompt's bucket if needed
        runs += [api.generate(target, [p], **kwargs).timing["run_s"] for _ in range(max(1, cfg.repeats))]
    return statistics.median(runs) * 1000


def _add_formulas(point, target, draft, spec, gamma, sampling, cfg, steps_cache) -> None:
    a = point.get("acceptance_rate")
    if a is not None:
        point["predicted_tokens_per_round"] = metrics.expected_tokens_per_round(min(max(a, 0.0), 1.0), gamma)
    if not cfg.cost_ratios:
        return
    if cfg.batch not in steps_cache:
        steps_cache[cfg.batch] = micro.StepTimer(target, batch=cfg.batch)
    steps = steps_cache[cfg.batch].measure([gamma])  # re-timed next to this point's own run
    drafter, dparams, _ = api.resolve_drafter(draft, target)
    d = micro.drafter_time(target, drafter, dparams, batch=cfg.batch, gamma=gamma, sampling=sampling,
                           target_step_s=steps["target_step_s"])
    point.update(c=d["c"], v=steps["v"][gamma], target_step_ms=steps["target_step_s"] * 1000,
                 propose_ms=d["propose_s"] * 1000)
    if a is not None:
        point["predicted_speedup"] = metrics.predicted_speedup(min(max(a, 0.0), 1.0), gamma, d["c"], steps["v"][gamma])


def _peers(cfg: BenchConfig, target, suites, drafts: dict) -> list[dict]:
    """transformers on the same model, prompts (token ids) and lengths, at batch 1."""
    import torch

    from specjax.bench import peers
    from specjax.models import BUILTIN
    from specjax.models.hub import resolve

    torch.set_num_threads(os.cpu_count() or 1)
    source = resolve(cfg.target) if cfg.target in BUILTIN else cfg.target
    hf = peers.load_hf(source, cfg.dtype)
    rows = []
    gamma = cfg.peers.get("gamma", max(cfg.gammas))
    repeats = cfg.peers.get("repeats", cfg.repeats)
    assistants = [d for d in cfg.drafters if d.startswith("model:truncate:")]
    for suite, (prompts, chat) in suites.items():
        ids = api.encode_prompts(target.tokenizer, prompts, chat=chat)
        n = cfg.max_new_tokens
        entries = [("transformers greedy", "autoregressive", {}),
                   (f"transformers prompt lookup (G={gamma})", "ngram", {"prompt_lookup_num_tokens": gamma})]
        for spec in assistants:
            entries.append((f"transformers assistant {spec} (G={gamma})", spec,
                            {"assistant_model": peers.truncated_copy(hf, int(spec.split(":")[-1])),
                             "num_assistant_tokens": gamma, "num_assistant_tokens_schedule": "constant"}))
        for label, kind, kwargs in tqdm(entries, desc=f"peers {suite}", unit="run", leave=False):
            r = peers.measure_generate(hf, ids, max_new_tokens=n, repeats=repeats, **kwargs)
            r.update(suite=suite, peer=label, kind=kind, gamma=gamma if kwargs else 0)
            rows.append(r)
        # the specjax side of each comparison, measured right here under the same conditions
        greedy = SamplingConfig()
        ours = measure(target, ids, max_new_tokens=n, repeats=repeats, eos_ids=())
        rows.append(dict(ours, suite=suite, peer="specjax autoregressive", kind="autoregressive", gamma=0))
        for spec in [d for d in cfg.drafters if d.startswith("ngram")][:1] + assistants:
            draft = make_draft(spec, target, drafts)
            r = measure(target, ids, draft=draft, gamma=gamma, sampling=greedy, max_new_tokens=n, repeats=repeats,
                        eos_ids=())
            rows.append(dict(r, suite=suite, peer=f"specjax {spec} (G={gamma})",
                             kind="ngram" if spec.startswith("ngram") else spec, gamma=gamma))
    return rows


def _batch_sweep(cfg: BenchConfig, target, drafts) -> list[dict]:
    bs = cfg.batch_sweep
    suite = bs.get("suite", cfg.suites[0])
    prompts, chat = load_suite(suite, None)
    chat = chat and cfg.chat_template
    draft = make_draft(bs["drafter"], target, drafts)
    rows = []
    for b in tqdm(bs.get("batches", [1, 2, 4, 8, 16, 32, 64]), desc="batch sweep", unit="batch"):
        group = batches(prompts, b)[0]
        common = dict(batch=b, max_new_tokens=bs.get("max_new_tokens", 64), repeats=bs.get("repeats", 1),
                      chat=chat, seed=cfg.seed, eos_ids=())
        ar = measure(target, group, **common)
        sp = measure(target, group, draft=draft, gamma=bs.get("gamma", 4), **common)
        rows.append({"batch": b, "drafter": bs["drafter"], "gamma": bs.get("gamma", 4), "suite": suite,
                     "ar_tokens_per_s": ar["tokens_per_s"], "spec_tokens_per_s": sp["tokens_per_s"],
                     "speedup": sp["tokens_per_s"] / ar["tokens_per_s"],
                     "acceptance_rate": sp.get("acceptance_rate"),
                     "mean_tokens_per_round": sp.get("mean_tokens_per_round")})
    return rows

