"""Frozen, keyword-only settings. Hashable, so they are static arguments of the jitted loops."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from specjax.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How logits become a distribution: temperature, then top-k, then top-p.

    temperature == 0 means greedy (argmax). top_k=None / top_p=None switch those filters off.
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if not (self.temperature >= 0.0):
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise ConfigError(f"top_p must be in (0, 1] or None, got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def make(cls, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None) -> "SamplingConfig":
        return cls(temperature=float(temperature), top_k=top_k or None, top_p=top_p if top_p not in (None, 1.0) else None)


GREEDY = SamplingConfig()


def cache_dir() -> Path:
    """specjax's cache directory (reassembled model files, compiled programs): $SPECJAX_CACHE, else
    ~/.cache/specjax."""
    return Path(os.environ.get("SPECJAX_CACHE", Path.home() / ".cache" / "specjax"))
