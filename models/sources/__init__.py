"""Checkpoint sources: every supported weight format seen as HF-named tensors plus an HF config dict.

`open_checkpoint` picks the reader for a source:
  - an in-memory transformers model, or a `(state_dict, config)` pair  -> `state_dict.py`;
  - a `.gguf` file (by suffix, or by its `GGUF` magic bytes)            -> `gguf.py`;
  - a directory with config.json and *.safetensors (single or sharded)  -> `hf_dir.py`;
  - a directory with config.json and pytorch_model*.bin                 -> `torch_bin.py`.

Each reader returns an object satisfying `Checkpoint`, which is all the converter uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from specjax.errors import ModelNotFoundError

from ..tokenizer import Tokenizer
from .hf_dir import HFDirCheckpoint, read_config
from .state_dict import StateDictCheckpoint
from .torch_bin import TorchBinCheckpoint

__all__ = ["Checkpoint", "open_checkpoint"]


@runtime_checkable
class Checkpoint(Protocol):
    """What the converter reads from a source; nothing else about a source is relied upon.

    Keys are HF state-dict names (`model.layers.3.self_attn.q_proj.weight`), whatever names the
    file itself uses; shapes and tensors are in HF's layout.
    """

    config: dict
    """The HF config dict (`config.json` contents, or its equivalent) that picks the family."""

    origin: str
    """The file, directory or object the weights come from, as named in error messages."""

    def keys(self) -> list[str]:
        """Every tensor name in the source, including ones the model may not use."""
        ...

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of tensor `key`; lazy sources answer without reading the values."""
        ...

    def tensor(self, key: str) -> np.ndarray:
        """The values of tensor `key`, as an array `np.asarray(..., np.float32)` accepts exactly."""
        ...

    def tokenizer(self) -> Tokenizer | None:
        """The tokenizer the source carries, or None when it carries none."""
        ...


def _is_gguf(path: Path) -> bool:
    if path.suffix == ".gguf":
        return True
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def open_checkpoint(source) -> Checkpoint:
    """A transformers model, a (state_dict, config) pair, a .gguf path or an HF directory -> its reader."""
    if hasattr(source, "state_dict") and hasattr(source, "config"):  # a transformers model
        return StateDictCheckpoint(source.state_dict(), source.config.to_dict(),
                                   origin=f"in-memory {type(source).__name__}")
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], dict):
        state, config = source
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        return StateDictCheckpoint(state, config, origin="state dict")
    path = Path(source)
    if _is_gguf(path):
        from .gguf import GGUFCheckpoint  # gguf is only imported when a GGUF file is read

        return GGUFCheckpoint(path)
    if not path.exists():
        raise ModelNotFoundError(f"no model at {path}")
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is neither a model directory nor a .gguf file")
    # The config is read before the weights are looked for, so a directory missing both is
    # reported by its missing config.json.
    config = read_config(path)
    if list(path.glob("*.safetensors")):
        return HFDirCheckpoint(path, config)
    if list(path.glob("pytorch_model*.bin")):
        return TorchBinCheckpoint(path, config)
    raise ModelNotFoundError(f"{path} has no *.safetensors or pytorch_model.bin weights")
