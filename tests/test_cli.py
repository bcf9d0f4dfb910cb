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
    # an EAGLE-3 head directory that is not one is named before any model is loaded
    assert main(["generate", "--target", "no-such-model", "--drafter", "eagle:/no/such/head", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "'/no/such/head' is neither an EAGLE-3 head directory" in err and "no-such-model" not in err


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


def test_a_second_process_loads_the_compiled_programs_from_the_persistent_cache(hf_dir, tmp_path):
    """Two `specjax generate` processes, same model and buckets, different temperature and length:
    the first writes the compiled programs under $SPECJAX_CACHE, the second reads them back and adds
    nothing."""
    import os
    import subprocess
    import sys

    def run(*extra, cache):
        env = dict(os.environ, SPECJAX_CACHE=str(cache), JAX_COMPILATION_CACHE_DIR="")
        cmd = [sys.executable, "-m", "specjax.cli", "generate", "--target", str(hf_dir), "--prompt", "hello world",
               "--drafter", "ngram:2", "--json", *extra]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def entries(cache):
        return sorted(p.name for p in (cache / "jax-compile").iterdir()) if (cache / "jax-compile").exists() else []

    cache = tmp_path / "cache"
    first = run("--max-new-tokens", "6", cache=cache)
    written = entries(cache)
    assert first["timing"]["compilations"] == 1 and len(written) > 0
    second = run("--max-new-tokens", "9", "--temperature", "0.8", cache=cache)
    assert second["timing"]["compilations"] == 1  # built in this process, from executables on disk
    assert entries(cache) == written, "the second process compiled programs the first had already stored"
    assert len(second["tokens"][0]) <= 9


def test_the_compile_cache_switch(tmp_path, monkeypatch):
    import os

    import jax

    from specjax import cli, sampler

    monkeypatch.setenv("SPECJAX_CACHE", str(tmp_path))
    monkeypatch.setenv("SPECJAX_COMPILE_CACHE", "0")
    assert sampler.enable_compile_cache() is None
    monkeypatch.setenv("SPECJAX_COMPILE_CACHE", "1")
    assert sampler.enable_compile_cache() == jax.config.jax_compilation_cache_dir  # the test session's own: kept
    configured = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)  # as in a process nobody configured
    try:
        assert sampler.enable_compile_cache() == str(tmp_path / "jax-compile")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax-compile")
    finally:
        jax.config.update("jax_compilation_cache_dir", configured)
    # --no-compile-cache turns it off for the whole process (read by every Sampler it builds)
    seen = []
    monkeypatch.setattr(cli, "_cmd_generate", lambda args: seen.append(os.environ["SPECJAX_COMPILE_CACHE"]) or 0)
    assert cli.main(["generate", "--target", "t", "--no-compile-cache"]) == 0
    assert cli.main(["generate", "--target", "t"]) == 0 and seen == ["0", "0"]  # off stays off


BAD_GENERATE = [
    (["--seed", str(2**32)], "--seed must be <= 4294967295"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--gamma", "0"], "--gamma must be >= 1"),
    (["--temperature", "inf"], "temperature must be finite"),
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--top-p", "0"], r"top_p must be in \(0, 1\]"),
    (["--top-k", "-2"], "top_k must be >= 0"),
    (["--mesh", "0x1"], "--mesh sizes must be >= 1, got '0x1'"),
    (["--mesh=-1x-1"], "--mesh sizes must be >= 1"),
    (["--mesh", "2by2"], "--mesh must look like DATAxMODEL"),
    (["--num-processes", "2"], "multi-host runs need --coordinator, --num-processes and --process-id together"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id must be <= 1"),
    (["--drafter", "ngram:3:1:7"], "expected ngram:NMAX"),
    (["--verify", "stepwise"], "--verify stepwise needs a drafter"),
    (["--local-devices", "0"], "--local-devices must be >= 1"),
    (["--gamma", "fast"], "--gamma must be an integer >= 1 or 'auto'"),
    (["--gamma", "auto"], "--gamma auto needs a drafter"),
    (["--drafter", "ngram:2", "--gamma", "4", "--gamma-max", "8"], "--gamma-max bounds --gamma auto"),
    (["--drafter", "ngram:2", "--gamma", "auto", "--gamma-max", "0"], "--gamma-max must be >= 1"),
]


@pytest.mark.parametrize("extra,message", BAD_GENERATE)
def test_generate_arguments_are_checked_before_any_model_loads(capsys, extra, message):
    import re

    assert main(["generate", "--target", "no-such-model", "--prompt", "x", *extra]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "no-such-model" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(capsys):
    from specjax.errors import ConfigError

    with pytest.raises(ConfigError, match="--gamma must be >= 1"):
        main(["--debug", "generate", "--target", "t", "--prompt", "x", "--gamma", "0"])


def test_non_utf8_stdin_is_refused_clearly(capsys, monkeypatch):
    import io
    import sys

    class Stdin:
        buffer = io.BytesIO(b"caf\xe9 au lait")

    monkeypatch.setattr(sys, "stdin", Stdin())
    assert main(["generate", "--target", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "stdin is not UTF-8 text (byte 3" in err and "Traceback" not in err


def test_output_paths_are_checked_before_converting(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["convert", "no-such-model", "--out", str(blocker)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert main(["convert", "no-such-model", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot write there" in err and "no-such-model" not in err


@pytest.mark.parametrize("content,message", [(None, "no such file"), ("a: [1, 2", "not valid YAML"),
                                             ("- 1\n- 2\n", "expected a mapping"),
                                             ("target: x\nunknown_key: 1\n", "unknown keys")])
def test_bad_bench_configs_are_named(tmp_path, capsys, content, message):
    path = tmp_path / "cfg.yaml"
    if content is not None:
        path.write_text(content)
    assert main(["bench", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err


def test_demo_gives_the_sampler_loaders_for_model_and_eagle_drafters(monkeypatch, capsys):
    """`specjax demo --drafter eagle:NAME` (or model:NAME) needs the loaders `generate` passes; without
    them the Sampler refuses the drafter string (a bug found running the shipped head in the demo)."""
    import specjax.models
    import specjax.sampler

    seen = []

    class Recorder:
        def __init__(self, target, draft=None, **kwargs):
            seen.append((draft, kwargs))
            if draft is not None:
                raise SystemExit(0)

        def __call__(self, *args, **kwargs):
            return None

    monkeypatch.setattr(specjax.sampler, "Sampler", Recorder)
    monkeypatch.setattr(specjax.models, "load", lambda *a, **k: None)
    for drafter in ("eagle:smollm2-135m-instruct-eagle3", "model:some-draft"):
        with pytest.raises(SystemExit):
            main(["demo", "--target", "t", "--drafter", drafter])
        draft, kwargs = seen[-1]
        assert draft == drafter and callable(kwargs.get("load_head")) and callable(kwargs.get("load_model"))


@pytest.mark.slow  # make test-all (the test budget); calibrate-then-advise below runs the auto sampler
def test_generate_with_gamma_auto_reports_the_windows(hf_dir, capsys):
    args = ["generate", "--target", str(hf_dir), "--prompt", "hello world hello world", "--max-new-tokens", "8",
            "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(args + ["--drafter", "ngram:2", "--gamma", "auto", "--gamma-max", "4"]) == 0
    auto = json.loads(capsys.readouterr().out)
    assert auto["tokens"] == plain["tokens"]
    assert auto["stats"]["mean_window"] is not None and auto["stats"]["plain_rounds"] >= 0


def test_calibrate_then_advise_on_a_tiny_model(hf_dir, tmp_path, capsys, monkeypatch):
    """calibrate stores per-batch round costs that the auto policy then reads; advise reads them,
    predicts, measures and recommends (tiny sizes: this checks the plumbing, not the figures)."""
    from specjax import policy

    cal = str(tmp_path / "cal.json")
    assert main(["calibrate", "--target", str(hf_dir), "--drafter", "ngram:2", "--gamma-max", "1", "--batches", "1,2",
                 "--repeats", "1", "--file", cal]) == 0  # two batch sizes: the entry keeps both
    out = capsys.readouterr().out
    assert "| batch |" in out and "stored as" in out
    (key, entry), = policy.load_calibration(cal).items()
    assert key.endswith("|ngram:2:1") and set(entry["batches"]) == {"1", "2"} and entry["widths"] == [0, 1]
    for row in entry["batches"].values():
        # every round is divided by a step of plain decoding (tiny-model times are noise: no bound on them)
        assert len(row["round"]) == 2 and all(x > 0 for x in row["round"]) and row["plain_step_ms"] > 0
        for w in ("0", "1"):
            assert row["round"][int(w)] == pytest.approx(row["round_ms"][w] / row["plain_step_ms"])
        assert set(row["v"]) == set(row["c"]) == {"1"}
    from specjax.bench import calibrate as calibrate_module

    def measured_again(*a, **k):
        raise AssertionError("advise calibrated a drafter whose calibration was on file")

    monkeypatch.setattr(calibrate_module, "calibrate", measured_again)
    out_dir = tmp_path / "advice"
    prompts = tmp_path / "prompts.yaml"  # the tiny tokenizer has no chat template
    prompts.write_text("chat: false\nprompts:\n  - hello world hello world\n  - the lazy dog the lazy dog\n")
    assert main(["advise", "--target", str(hf_dir), "--drafters", "ngram:2:1", "--prompts", str(prompts),
                 "--count", "2", "--gamma-max", "1", "--batches", "1,2", "--measure", "1", "--max-new-tokens", "6",
                 "--calibration", cal, "--out", str(out_dir)]) == 0
    report = json.loads((out_dir / "advice.json").read_text())
    assert set(report["recommend"]) == {"1", "2"} and (out_dir / "advice.png").exists()
    r = report["drafters"]["ngram:2:1"]
    assert r["calibration"] == key  # read, not measured again
    assert "1" in r["measured_speedup"] and len(r["p_accepted_at"]) == 1
    assert "Ranking at batch 1" in capsys.readouterr().out
    assert main(["calibrate", "--target", str(hf_dir), "--drafter", "ngram:2", "--batches", "1,x"]) == 2
    assert "--batches must be comma-separated integers" in capsys.readouterr().err
