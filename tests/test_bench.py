"""The benchmark harness end to end on a tiny model: every field of the JSON, tables, plots, peers."""

from __future__ import annotations

import json

import pytest
import yaml

from specjax.bench import report
from specjax.bench.harness import BenchConfig, run
from specjax.errors import ConfigError

POINT_FIELDS = {"tokens_per_s", "latency_ms_per_token", "compile_s", "acceptance_rate", "mean_tokens_per_round",
                "predicted_tokens_per_round", "acceptance_by_position", "c", "v", "predicted_speedup", "speedup",
                "memory", "suite", "sampling", "drafter", "gamma", "batch", "ttft_ms", "decode_tokens_per_s",
                "decode_speedup"}


def test_harness_end_to_end(hf_dir, tmp_path):
    doc = tmp_path / "BENCH.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:tiny:start -->\nold\n<!-- bench:tiny:end -->\n\nkept\n")
    config = {
        "name": "tiny", "target": str(hf_dir), "drafters": ["ngram:2", "layerskip:3", "model:truncate:2"],
        "gammas": [2, 3], "sampling": [{"temperature": 0.0}, {"temperature": 1.0, "top_k": 5}],
        "suites": ["chat"], "prompts_per_suite": 2, "max_new_tokens": 6, "repeats": 1, "chat_template": False,
        "peers": {"transformers": True, "gamma": 2, "repeats": 1},
        "batch_sweep": {"drafter": "ngram:2", "gamma": 2, "batches": [1, 2], "max_new_tokens": 4},
        "markdown": {"file": str(doc), "section": "tiny"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    run(BenchConfig.from_yaml(path), out)

    results = json.loads((out / "results.json").read_text())
    ar = [p for p in results["points"] if p["drafter"] == "autoregressive"]
    spec = [p for p in results["points"] if p["drafter"] != "autoregressive"]
    assert len(ar) == 2 and len(spec) == 2 * 3 * 2
    assert all(p["ttft_ms"] > 0 and p["tokens_per_s"] > 0 for p in ar)
    for p in spec:
        missing = POINT_FIELDS - set(p)
        assert not missing, f"{p['drafter']} G={p['gamma']}: missing {missing}"
        assert p["c"] >= 0 and p["v"] > 0 and 0 <= p["acceptance_rate"] <= 1
        assert {"target_param_bytes", "target_cache_bytes", "draft_param_bytes", "draft_cache_bytes"} <= set(
            p["memory"])
    layerskip = [p for p in spec if p["drafter"] == "layerskip:3"]
    assert all(p["acceptance_rate"] == 1.0 for p in layerskip if p["sampling"] == "greedy")
    assert all(p["memory"]["draft_param_bytes"] == 0 for p in layerskip)

    peers = {r["peer"] for r in results["peers"]}
    assert {"transformers greedy", "transformers prompt lookup (G=2)", "specjax autoregressive"} <= peers
    assert any(p.startswith("transformers assistant model:truncate:2") for p in peers)
    assert [r["batch"] for r in results["batch_sweep"]] == [1, 2]
    assert all(r["speedup"] > 0 for r in results["batch_sweep"])

    for png in ("speedup_vs_gamma", "speedup_vs_batch", "acceptance_by_position", "predicted_vs_measured"):
        assert (out / f"{png}.png").stat().st_size > 1000
    text = doc.read_text()
    assert "old" not in text and "kept" in text and "| ngram:2 | 2 |" in text
    assert "specjax / transformers" in text and "](out/speedup_vs_gamma.png)" in text


def test_unknown_config_keys_are_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("target: x\ndrafters: []\ngammas: [2]\ngama: 3\n")
    with pytest.raises(ConfigError, match="gama"):
        BenchConfig.from_yaml(path)


def test_refresh_section_appends_when_missing(tmp_path):
    doc = tmp_path / "B.md"
    doc.write_text("# B\n")
    report.refresh_section(doc, "x", "table\n")
    report.refresh_section(doc, "x", "table 2\n")
    text = doc.read_text()
    assert text.count("<!-- bench:x:start -->") == 1 and "table 2" in text and "table\n" not in text
