"""The command line: convert a model directory, generate from it as JSON, and clean errors."""

from __future__ import annotations

import json

import pytest

from specjax.cli import main


def test_convert_then_generate_json(hf_dir, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(hf_dir), "--out", str(out)]) == 0
    assert (out / "specjax_config.json").exists() and (out / "params").is_dir()
    capsys.readouterr()

    assert main(["generate", "--target", str(out), "--prompt", "hello world", "--max-new-tokens", "6", "--json"]) == 0
    converted = json.loads(capsys.readouterr().out)
    assert main(["generate", "--target", str(hf_dir), "--prompt", "hello world", "--max-new-tokens", "6", "--json"]) == 0
    direct = json.loads(capsys.readouterr().out)

    assert set(converted) >= {"tokens", "text", "prompt_tokens", "stats", "timing"}
    assert 1 <= len(converted["tokens"][0]) <= 6
    assert converted["tokens"] == direct["tokens"]
    assert isinstance(converted["text"][0], str)
    assert converted["timing"]["compile_s"] > 0 and converted["timing"]["run_s"] > 0  # the module's first compile


def test_cli_errors_are_clean(capsys):
    assert main(["generate", "--target", "no-such-model", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["generate", "--target", "x", "--temperature", "hot"])
    # a bad drafter string is named before any model is loaded
    assert main(["generate", "--target", "no-such-model", "--drafter", "ngram:x", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "'ngram:x'" in err and "no-such-model" not in err
    assert main(["generate", "--target", "t", "--draft", "d", "--drafter", "ngram:2", "--prompt", "x"]) == 2
    assert "both name a drafter" in capsys.readouterr().err


def test_generate_with_draft_model_reports_statistics(hf_dir, capsys):
    args = ["generate", "--target", str(hf_dir), "--prompt", "hello world", "--prompt", "the lazy dog",
            "--max-new-tokens", "8", "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(args + ["--draft", str(hf_dir), "--gamma", "3"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["tokens"] == plain["tokens"]  # greedy: speculative == autoregressive
    stats = spec["stats"]
    assert stats["acceptance_rate"] == 1.0 and len(stats["acceptance_by_position"]) == 3
    assert {"rounds", "drafted", "accepted", "mean_tokens_per_round"} <= set(stats)
