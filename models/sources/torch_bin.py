"""An HF model directory with PyTorch weights: config.json plus `pytorch_model.bin`, or several
shards listed by `pytorch_model.bin.index.json`.

The files are pickles; they are read with `torch.load(weights_only=True)`, which refuses any
object other than tensors and plain containers, so a malicious file cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from specjax.errors import ConversionError, CorruptFileError

from ..tokenizer import Tokenizer
from .hf_dir import directory_tokenizer, read_config


def torch_to_numpy(t) -> np.ndarray:
    """A torch tensor -> a numpy array on the host; bfloat16 (which numpy lacks) becomes float32."""
    t = t.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
        t = t.float()  # exact: every bfloat16 is a float32
    return t.numpy()


class TorchBinCheckpoint:
    """pytorch_model.bin (single or sharded), loaded whole into host memory on open."""

    def __init__(self, directory: str | Path, config: dict | None = None):
        self.directory = Path(directory)
        try:
            import torch
        except ImportError as err:
            raise ConversionError(
                f"{self.directory} holds pytorch_model.bin weights; reading them needs torch "
                "(pip install torch) or a safetensors copy"
            ) from err
        self.origin = str(self.directory)
        self.config = read_config(self.directory) if config is None else config
        index = self.directory / "pytorch_model.bin.index.json"
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = ["pytorch_model.bin"]
        self._tensors = {}
        for name in files:
            path = self.directory / name
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as err:  # UnpicklingError for forbidden objects, RuntimeError for truncation
                raise CorruptFileError(str(path), f"{type(err).__name__}: {err}") from err
            if not isinstance(state, dict):
                raise CorruptFileError(str(path), "does not hold a state dict")
            self._tensors.update(state)

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def tensor(self, key: str) -> np.ndarray:
        return torch_to_numpy(self._tensors[key])

    def tokenizer(self) -> Tokenizer | None:
        return directory_tokenizer(self.directory)
