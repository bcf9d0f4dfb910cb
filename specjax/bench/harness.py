"""`specjax bench CONFIG`: benchmark sweeps driven by a YAML file, with peers, tables and plots.

A config (see configs/bench/*.yaml) names:
  target, dtype          the model (a built-in name, HF dir, .gguf or converted dir)
  drafters               drafter strings (`specjax.drafters.registry`): "ngram:NMAX[:NMIN]",
                         "layerskip:K", "model:PATH", and the bench-only "model:truncate:K" (a copy
                         of the target's first K layers as a separate draft model, see `drafts`)
  gammas, sampling       sweeps over G and over sampling settings ({temperature, top_k, top_p, min_p})
  suites                 prompt suites by name (`specjax.bench.prompts`: humaneval, humaneval-raw, chat)
  prompts_per_suite, max_new_tokens, repeats, seed
  chat_template          false to send prompts as raw text (base models)
  cost_ratios            measure c, v and the predicted speedup for every point (default true)
  peers                  {transformers: true, gamma: G, repeats: N}: transformers greedy generate and its
                         assisted generation (prompt lookup; assistant model for model:truncate:K drafters
                         and for model:DIR drafters that are HF directories, e.g. a distilled draft)
  batch_sweep            {drafter, gamma, batches: [...], suite, max_new_tokens, repeats}
  auto_sweep             {drafters: [...], suites: [...], batches: [...], gammas: [...] (or {drafter: [...]}),
                         prompts, max_new_tokens, repeats}: per suite, drafter and batch size, plain decoding, gamma="auto" and (at
                         batch 1) every fixed G: is auto never slower than plain, and as fast as the best G?
  markdown               {file: BENCHMARKS.md, section: NAME}: refresh that section in place

Writes OUT/results.json (every figure), OUT/results.md (the tables) and OUT/*.png (plots).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
import warnings
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import jax
import yaml
from tqdm.auto import tqdm

from specjax import metrics
from specjax.bench import measure as micro
from specjax.bench import report
from specjax.bench.drafts import DraftModels, truncated_layers
from specjax.bench.prompts import load_suite, suite_names
from specjax.bench.runner import batches, measure, measure_many, ttft_ms
from specjax.config import SamplingConfig
from specjax.drafters import registry
from specjax.errors import ConfigError
from specjax.report import memory
from specjax.sampler import Sampler, encode_prompts

MEMORY_CONTEXT = 512  # the memory figures are for a cache of this many prompt slots + max_new_tokens
SWEEP_GAMMA = 4  # G of the batch sweep unless it names one


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
    interleave: bool = False  # time each suite x sampling's calls in turn: baseline, then every drafter and G
    peers: dict = dataclasses.field(default_factory=dict)
    batch_sweep: dict = dataclasses.field(default_factory=dict)
    auto_sweep: dict = dataclasses.field(default_factory=dict)
    markdown: dict = dataclasses.field(default_factory=dict)
    name: str = "bench"

    def __post_init__(self):
        """Refuse a bad drafter string, G, suite name, sampling setting or a mistyped key of a
        nested table before any model is loaded."""
        for table, value, allowed in (("sampling", None, SAMPLING_KEYS), ("peers", self.peers, PEER_KEYS),
                                      ("batch_sweep", self.batch_sweep, SWEEP_KEYS),
                                      ("auto_sweep", self.auto_sweep, AUTO_KEYS),
                                      ("markdown", self.markdown, MARKDOWN_KEYS)):
            for entry in self.sampling if value is None else [value]:
                if not isinstance(entry, dict):
                    raise ConfigError(f"{table}: expected a mapping, got {entry!r}")
                unknown = sorted(set(entry) - allowed)
                if unknown:
                    raise ConfigError(f"{table}: unknown keys {unknown} in {entry!r}; known: {sorted(allowed)}")
        for s in self.sampling:
            SamplingConfig.make(s.get("temperature", 0.0), s.get("top_k"), s.get("top_p"), s.get("min_p"))  # range checks
        sweep = self.batch_sweep
        if sweep and "drafter" not in sweep:
            raise ConfigError("batch_sweep needs a 'drafter'")
        auto = self.auto_sweep
        for text in self.drafters + ([sweep["drafter"]] if sweep else []) + list(auto.get("drafters", [])):
            truncated_layers(registry.parse(text))  # a ConfigError naming the string
        auto_gammas = auto.get("gammas", [])
        if isinstance(auto_gammas, dict):
            unknown = sorted(set(auto_gammas) - set(auto.get("drafters", [])))
            if unknown:
                raise ConfigError(f"auto_sweep gammas name drafters that are not in its drafters: {unknown}")
            auto_gammas = [g for gs in auto_gammas.values() for g in gs]
        for name in ("batches", "prompts", "max_new_tokens", "repeats"):
            values = auto.get(name, [])
            for v in (values if isinstance(values, list) else [values]):
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ConfigError(f"auto_sweep {name} must be integers >= 1, got {v!r}")
        if auto and (not isinstance(auto.get("drafters"), list) or not isinstance(auto.get("suites", []), list)):
            raise ConfigError("auto_sweep drafters and suites must be lists")
        for g in self.gammas + ([sweep.get("gamma", SWEEP_GAMMA)] if sweep else []) + list(auto_gammas):
            if not isinstance(g, int) or g < 1:
                raise ConfigError(f"G must be an integer >= 1, got {g!r}")
        known = suite_names()
        if auto and not auto.get("drafters"):
            raise ConfigError("auto_sweep needs 'drafters'")
        for suite in self.suites + ([sweep["suite"]] if "suite" in sweep else []) + list(auto.get("suites", [])):
            if suite not in known:
                raise ConfigError(f"unknown prompt suite {suite!r}; choose from {', '.join(known)}")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "BenchConfig":
        try:
            data = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"bench config {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"bench config {path}: cannot read it ({err})") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"bench config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        fields = dataclasses.fields(cls)
        known = {f.name for f in fields}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        missing = [f.name for f in fields if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in data]
        if missing:
            raise ConfigError(f"{path}: missing keys {missing}")
        data.setdefault("name", Path(path).stem)
        return cls(**data)


SAMPLING_KEYS = frozenset({"temperature", "top_k", "top_p", "min_p"})
PEER_KEYS = frozenset({"transformers", "gamma", "repeats"})
SWEEP_KEYS = frozenset({"drafter", "gamma", "batches", "max_new_tokens", "suite", "repeats"})
AUTO_KEYS = frozenset({"drafters", "suites", "batches", "gammas", "prompts", "max_new_tokens", "repeats"})
MARKDOWN_KEYS = frozenset({"file", "section"})


def sampling_label(s: dict) -> str:
    if not s.get("temperature"):
        return "greedy"
    parts = [f"T={s['temperature']}"] + [f"{k}={s[k]}" for k in ("top_k", "top_p", "min_p") if s.get(k)]
    return " ".join(parts)


class Samplers:
    """One `Sampler` per (drafter string, G) for the target, built on first use: a drafter is
    resolved (and a draft model loaded) once per run. EOS is ignored, so every call emits exactly
    max_new_tokens per row."""

    def __init__(self, target, dtype: str | None):
        self.target, self.drafts = target, DraftModels(target, dtype)
        self.built: dict[tuple, Sampler] = {}

    def __call__(self, drafter: str | None = None, gamma: int | str = 0) -> Sampler:
        key = (drafter, gamma if drafter is not None else 0)
        if key not in self.built:
            from specjax.models import load_eagle

            g = gamma if gamma == "auto" else max(gamma, 1)
            self.built[key] = Sampler(self.target, drafter, gamma=g, eos_ids=(), load_model=self.drafts,
                                      load_head=lambda path: load_eagle(path, dtype=self.target.module.dtype))
        return self.built[key]


def run(cfg: BenchConfig, out_dir: str | os.PathLike) -> dict:
    from specjax.models import load

    if cfg.peers.get("transformers") and (find_spec("torch") is None or find_spec("transformers") is None):
        raise ConfigError("peers: transformers needs torch and transformers (pip install 'specjax[test]')")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    suites = {s: load_suite(s, cfg.prompts_per_suite) for s in cfg.suites}
    if not cfg.chat_template:
        suites = {s: (prompts, False) for s, (prompts, _) in suites.items()}
    target = load(cfg.target, dtype=cfg.dtype, progress=False)
    samplers = Samplers(target, cfg.dtype)
    samplings = [dict(s) for s in cfg.sampling]
    results: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "jax_backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]},
        "points": [], "peers": [], "batch_sweep": [],
    }
    total = len(suites) * len(samplings) * (1 + len(cfg.drafters) * len(cfg.gammas))
    bar = tqdm(total=total, desc=f"bench {cfg.name}", unit="point")
    timers: dict[int, micro.StepTimer] = {}
    for suite, (prompts, chat) in suites.items():
        for s in samplings:
            sampling = SamplingConfig.make(s.get("temperature", 0.0), s.get("top_k"), s.get("top_p"), s.get("min_p"))
            common = dict(batch=cfg.batch, sampling=sampling, max_new_tokens=cfg.max_new_tokens, repeats=cfg.repeats,
                          chat=chat, seed=cfg.seed)
            ar = samplers()
            pairs = [(spec, g) for spec in cfg.drafters for g in cfg.gammas]
            timed = measure_many([ar] + [samplers(spec, g) for spec, g in pairs], prompts, **common) \
                if cfg.interleave else [measure(ar, prompts, **common)]
            base = timed[0]
            base.update(suite=suite, sampling=sampling_label(s), drafter="autoregressive",
                        ttft_ms=ttft_ms(ar, prompts, **common))
            _add_decode_rate(base, cfg)
            results["points"].append(base)
            bar.update()
            for n, (spec, g) in enumerate(pairs):
                bar.set_postfix_str(f"{suite} {sampling_label(s)} {spec} G={g}")
                sampler = samplers(spec, g)
                point = timed[1 + n] if cfg.interleave else measure(sampler, prompts, **common)
                point.update(suite=suite, sampling=sampling_label(s), drafter=spec,
                             speedup=point["tokens_per_s"] / base["tokens_per_s"],
                             ttft_ms=ttft_ms(sampler, prompts, **common))
                _add_decode_rate(point, cfg)
                both = point["decode_tokens_per_s"], base["decode_tokens_per_s"]
                point["decode_speedup"] = both[0] / both[1] if None not in both else None
                _add_formulas(point, sampler, sampling, cfg, timers)
                point["memory"] = memory(sampler.lm, sampler.params, sampler.drafter, sampler.draft_params,
                                         batch=cfg.batch, length=MEMORY_CONTEXT + cfg.max_new_tokens)
                results["points"].append(point)
                bar.update()
    bar.close()
    if cfg.peers.get("transformers"):
        results["peers"] = _peers(cfg, samplers, suites)
    if cfg.batch_sweep:
        results["batch_sweep"] = _batch_sweep(cfg, samplers)
    if cfg.auto_sweep:
        results["auto_sweep"] = _auto_sweep(cfg, samplers)
    results["wall_s"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    if find_spec("matplotlib") is not None:
        report.plots(results, out)
    else:  # the figures are all in results.json; only the pictures need matplotlib
        warnings.warn("matplotlib is not installed: no plots written (pip install matplotlib)", stacklevel=2)
    (out / "results.md").write_text(report.markdown(results, out, link_base=out))
    if cfg.markdown.get("file"):
        doc = Path(cfg.markdown["file"])
        md = report.markdown(results, out, link_base=doc.absolute().parent)
        report.refresh_section(doc, cfg.markdown.get("section", cfg.name), md)
    return results


def _add_decode_rate(point: dict, cfg: BenchConfig) -> None:
    """Tokens per second of the decode phase alone: the prefill (TTFT, which also emits each row's
    first token) taken out of every call, leaving the program's `run` loop. The formulas model this
    phase only."""
    groups = point["groups"]
    seconds = point["run_s"] - groups * point["ttft_ms"] / 1000
    tokens = point["tokens"] - groups * cfg.batch
    point["decode_tokens_per_s"] = tokens / seconds if seconds > 0 else None


def _add_formulas(point: dict, sampler: Sampler, sampling: SamplingConfig, cfg: BenchConfig,
                  timers: dict) -> None:
    a, gamma = point["acceptance_rate"], sampler.gamma
    if a is not None:
        point["predicted_tokens_per_round"] = metrics.expected_tokens_per_round(a, gamma)
    if not cfg.cost_ratios:
        return
    if cfg.batch not in timers:
        timers[cfg.batch] = micro.StepTimer(sampler.lm, sampler.params, batch=cfg.batch)
    steps = timers[cfg.batch].measure([gamma])  # re-timed next to this point's own run
    d = micro.drafter_time(sampler, batch=cfg.batch, sampling=sampling, target_step_s=steps["target_step_s"])
    point.update(c=d["c"], v=steps["v"][gamma], target_step_ms=steps["target_step_s"] * 1000,
                 propose_ms=d["propose_s"] * 1000)
    if a is not None:
        point["predicted_speedup"] = metrics.predicted_speedup(a, gamma, d["c"], steps["v"][gamma])


def _peers(cfg: BenchConfig, samplers: Samplers, suites: dict) -> list[dict]:
    """transformers on the same model, prompts (token ids) and lengths, at batch 1, greedy; and the
    specjax side of each comparison, measured right here under the same conditions."""
    import torch

    from specjax.bench import peers
    from specjax.models import BUILTIN
    from specjax.models.hub import resolve

    torch.set_num_threads(os.cpu_count() or 1)
    hf = peers.load_hf(resolve(cfg.target) if cfg.target in BUILTIN else cfg.target, cfg.dtype)
    gamma = cfg.peers.get("gamma", max(cfg.gammas))
    repeats = cfg.peers.get("repeats", cfg.repeats)
    n = cfg.max_new_tokens
    specs = [registry.parse(d) for d in cfg.drafters]
    lookup = [s for s in specs if s.kind == "ngram"][:1]
    assistants = {s.text: peers.truncated_copy(hf, k) for s in specs if (k := truncated_layers(s)) is not None}
    # a draft model exported as an HF directory (`specjax distill`, kind draft_model): transformers loads it
    assistants.update({s.text: peers.load_hf(s.name, cfg.dtype) for s in specs
                       if s.kind == "model" and truncated_layers(s) is None and s.name
                       and (Path(s.name) / "config.json").is_file()})
    entries = [("transformers greedy", "autoregressive", {}),
               (f"transformers prompt lookup (G={gamma})", "ngram", {"prompt_lookup_num_tokens": gamma})]
    entries += [(f"transformers assistant {text} (G={gamma})", text,
                 {"assistant_model": model, "num_assistant_tokens": gamma, "num_assistant_tokens_schedule": "constant"})
                for text, model in assistants.items()]
    ours = [("specjax autoregressive", "autoregressive", None)]
    ours += [(f"specjax {s.text} (G={gamma})", "ngram", s.text) for s in lookup]
    ours += [(f"specjax {text} (G={gamma})", text, text) for text in assistants]
    rows = []
    for suite, (prompts, chat) in suites.items():
        ids = encode_prompts(samplers.target.tokenizer, prompts, chat=chat)
        for label, kind, kwargs in tqdm(entries, desc=f"peers {suite}", unit="run", leave=False):
            r = peers.measure_generate(hf, ids, max_new_tokens=n, repeats=repeats, **kwargs)
            rows.append(dict(r, suite=suite, peer=label, kind=kind, gamma=gamma if kwargs else 0))
        for label, kind, drafter in ours:
            r = measure(samplers(drafter, gamma), ids, max_new_tokens=n, repeats=repeats, seed=cfg.seed)
            rows.append(dict(r, suite=suite, peer=label, kind=kind))
    return rows


def _batch_sweep(cfg: BenchConfig, samplers: Samplers) -> list[dict]:
    bs = cfg.batch_sweep
    suite = bs.get("suite", cfg.suites[0])
    prompts, chat = load_suite(suite, None)
    chat = chat and cfg.chat_template
    gamma = bs.get("gamma", SWEEP_GAMMA)
    ar, spec = samplers(), samplers(bs["drafter"], gamma)
    rows = []
    for b in tqdm(bs.get("batches", [1, 2, 4, 8, 16, 32, 64]), desc="batch sweep", unit="batch"):
        group = batches(prompts, b)[0]
        common = dict(batch=b, max_new_tokens=bs.get("max_new_tokens", 64), repeats=bs.get("repeats", 1),
                      chat=chat, seed=cfg.seed)
        base, point = measure(ar, group, **common), measure(spec, group, **common)
        rows.append({"batch": b, "drafter": bs["drafter"], "gamma": gamma, "suite": suite,
                     "ar_tokens_per_s": base["tokens_per_s"], "spec_tokens_per_s": point["tokens_per_s"],
                     "speedup": point["tokens_per_s"] / base["tokens_per_s"],
                     "acceptance_rate": point["acceptance_rate"],
                     "mean_tokens_per_round": point["mean_tokens_per_round"]})
    return rows


def _auto_sweep(cfg: BenchConfig, samplers: Samplers) -> list[dict]:
    """Per suite, batch size and drafter: plain decoding, gamma="auto", and at batch 1 every fixed G of
    `gammas`; greedy, EOS ignored. With `interleave: true` every sampler of a (suite, batch) point is
    timed in turn, repeat by repeat (`measure_many`), so the ratios to plain decoding hold within a
    burst of load. Rows of {suite, batch, drafter, mode ("plain", "auto", "G=g"),
    tokens_per_s, speedup over plain at the same batch and suite, a, tokens/round, mean window}."""
    sw = cfg.auto_sweep
    n = sw.get("prompts", cfg.prompts_per_suite)
    common = dict(max_new_tokens=sw.get("max_new_tokens", 48), repeats=sw.get("repeats", 1), seed=cfg.seed)
    jobs = []
    for suite in sw.get("suites", cfg.suites):
        for b in sw.get("batches", [1, 2, 4, 8, 16, 32, 64]):
            jobs.append((suite, b, None, 0))
            for d in sw["drafters"]:
                jobs.append((suite, b, d, "auto"))
                if b == 1:
                    gammas = sw.get("gammas", [])
                    jobs += [(suite, b, d, g) for g in (gammas.get(d, []) if isinstance(gammas, dict) else gammas)]
    rows, plain, timed = [], {}, {}
    for suite, b, drafter, gamma in tqdm(jobs, desc="auto sweep", unit="point"):
        prompts, chat = load_suite(suite, None)
        group = prompts[:max(n, b)] if b == 1 else batches(prompts, b)[0]
        call = dict(batch=b, chat=chat and cfg.chat_template, **common)
        if not cfg.interleave:
            point = measure(samplers(drafter, gamma), group, **call)
        else:  # the first job of a (suite, batch) times every sampler of that point in turn
            if (suite, b) not in timed:
                specs = [(d, g) for s_, b_, d, g in jobs if (s_, b_) == (suite, b)]
                timed[suite, b] = dict(zip(specs, measure_many([samplers(d, g) for d, g in specs], group, **call)))
            point = timed[suite, b][drafter, gamma]
        mode = "plain" if drafter is None else ("auto" if gamma == "auto" else f"G={gamma}")
        if drafter is None:
            plain[suite, b] = point["tokens_per_s"]
        rows.append({"suite": suite, "batch": b, "drafter": drafter or "plain", "mode": mode,
                     "tokens_per_s": point["tokens_per_s"], "speedup": point["tokens_per_s"] / plain[suite, b],
                     "compile_s": point["compile_s"],
                     **{k: point.get(k) for k in ("acceptance_rate", "mean_tokens_per_round", "mean_window",
                                                  "plain_rounds", "acceptance_by_position")}})
    return rows
