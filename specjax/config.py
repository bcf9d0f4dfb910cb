"""Frozen, keyword-only settings. Hashable, so they are static arguments of the jitted loops."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from specjax.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How logits become a distribution: temperature, then top-k, then top-p, then min-p.

    temperature == 0 means greedy (argmax); a positive temperature too small to be a float32 number
    (below ~1.4e-45, which rounds to 0) is greedy too. top_k=None or 0, top_p=None and min_p=None or
    0 switch those filters off. min_p keeps the ids whose probability is at least min_p times the
    most likely id's. Values are checked: a finite temperature >= 0, an integer top_k >= 0 (numpy
    integers accepted, floats and bools refused), top_p a number in (0, 1], min_p a number in [0, 1].
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self):
        from specjax import validate

        temperature = validate.real("temperature", self.temperature)
        if temperature < 0.0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        object.__setattr__(self, "temperature", temperature)
        if self.top_k is not None:
            top_k = validate.integer("top_k", self.top_k, low=0)
            object.__setattr__(self, "top_k", top_k or None)  # 0 = off, as in the CLI
        if self.top_p is not None:
            top_p = validate.real("top_p", self.top_p)
            if not 0.0 < top_p <= 1.0:
                raise ConfigError(f"top_p must be in (0, 1] or None, got {top_p}")
            object.__setattr__(self, "top_p", top_p)
        if self.min_p is not None:
            min_p = validate.real("min_p", self.min_p)
            if not 0.0 <= min_p <= 1.0:
                raise ConfigError(f"min_p must be in [0, 1] or None, got {min_p}")
            object.__setattr__(self, "min_p", min_p or None)  # 0 = off

    @classmethod
    def coerce(cls, value, name: str = "sampling") -> "SamplingConfig":
        """A SamplingConfig, or a dict of its fields -> a SamplingConfig; anything else refused."""
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            fields = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - fields)
            if unknown:
                raise ConfigError(f"{name}: unknown keys {unknown}; known: {sorted(fields)}")
            return cls(**value)
        raise ConfigError(f"{name} must be a specjax.SamplingConfig (or a dict of temperature, top_k, top_p, min_p), "
                          f"got {type(value).__name__}")

    @property
    def greedy(self) -> bool:
        return float(np.float32(self.temperature)) == 0.0  # as the engine sees it, in float32

    @classmethod
    def make(cls, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             min_p: float | None = None) -> "SamplingConfig":
        return cls(temperature=temperature, top_k=top_k or None, top_p=top_p if top_p not in (None, 1.0) else None,
                   min_p=min_p or None)


GREEDY = SamplingConfig()


def cache_dir() -> Path:
    """specjax's cache directory (reassembled model files, compiled programs): $SPECJAX_CACHE, else
    ~/.cache/specjax."""
    return Path(os.environ.get("SPECJAX_CACHE", Path.home() / ".cache" / "specjax"))
