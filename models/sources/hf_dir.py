"""An HF model directory with safetensors weights: config.json plus one `.safetensors` file, or
several listed by `model.safetensors.index.json`; tensors are read lazily with numpy (no torch).

Also reads what any HF directory may carry beside its weights: `config.json`, and the tokenizer
(`tokenizer.json` with `tokenizer_config.json` / `generation_config.json`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from specjax.errors import CorruptFileError, ModelNotFoundError

from ..tokenizer import Tokenizer


def read_config(directory: Path) -> dict:
    """`directory/config.json` as a dict; a missing or malformed file raises naming the path."""
    config_path = directory / "config.json"
    if not config_path.exists():
        raise ModelNotFoundError(f"{directory} has no config.json (an HF model directory needs one)")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CorruptFileError(str(config_path), f"invalid JSON ({err})") from err


def directory_tokenizer(directory: Path) -> Tokenizer | None:
    """The tokenizer of an HF directory, or None when it has no tokenizer.json."""
    if not (directory / "tokenizer.json").exists():
        return None
    return Tokenizer.from_hf_dir(directory)


class HFDirCheckpoint:
    """config.json plus one or more .safetensors files, read lazily with numpy."""

    def __init__(self, directory: str | Path, config: dict | None = None):
        from safetensors import SafetensorError, safe_open

        self.directory = Path(directory)
        self.origin = str(self.directory)
        self.config = read_config(self.directory) if config is None else config
        index = self.directory / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.directory.glob("*.safetensors"))
        # key -> (open handle, file path, safetensors dtype name)
        self._where: dict[str, tuple[Any, str, str]] = {}
        for name in files:
            path = self.directory / name
            if not path.exists():
                raise CorruptFileError(str(path), "listed in the index but missing")
            try:
                handle = safe_open(str(path), framework="numpy")
                keys = list(handle.keys())
            except (SafetensorError, OSError) as err:
                raise CorruptFileError(str(path), str(err)) from err
            for key in keys:
                self._where[key] = (handle, str(path), handle.get_slice(key).get_dtype())

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        handle, _, _ = self._where[key]
        return tuple(handle.get_slice(key).get_shape())

    def tensor(self, key: str) -> np.ndarray:
        handle, path, dtype = self._where[key]
        try:
            if dtype == "BF16":  # numpy has no bfloat16; read through jax, which does
                from safetensors import safe_open

                return np.asarray(safe_open(path, framework="flax").get_tensor(key)).astype(np.float32)
            return handle.get_tensor(key)
        except Exception as err:
            raise CorruptFileError(path, f"tensor {key!r} could not be read ({err})") from err

    def tokenizer(self) -> Tokenizer | None:
        return directory_tokenizer(self.directory)
