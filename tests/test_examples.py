"""The examples run as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _run(name: str):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / name)], env=env, capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_own_jit_example():
    assert "== specjax.generate" in _run("own_jit.py")


@pytest.mark.slow  # make test-all; kept out of make test for its 12-minute budget
def test_sharded_example():
    assert _run("sharded.py").count("same tokens as one device") == 3


@pytest.mark.slow  # make test-all; kept out of make test for its 12-minute budget
@pytest.mark.real
def test_generate_example():
    assert "ngram:3" in _run("generate.py")
