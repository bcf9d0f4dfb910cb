"""Weights already in memory: a transformers model's `state_dict()` with its config, or a state
dict (torch tensors or arrays) given with its config. Such a source carries no tokenizer.
"""

from __future__ import annotations

import numpy as np

from ..tokenizer import Tokenizer
from .torch_bin import torch_to_numpy


class StateDictCheckpoint:
    """A dict of HF-named tensors (torch or array-like) and the HF config dict that describes them."""

    def __init__(self, state: dict, config: dict, origin: str):
        self._tensors, self.config, self.origin = dict(state), dict(config), origin

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def tensor(self, key: str) -> np.ndarray:
        value = self._tensors[key]
        return torch_to_numpy(value) if hasattr(value, "detach") else np.asarray(value)

    def tokenizer(self) -> Tokenizer | None:
        return None  # a state dict and its config say nothing about the vocabulary's text
