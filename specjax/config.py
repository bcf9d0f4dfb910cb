"""Frozen, keyword-only settings. Hashable, so they are static arguments of the jitted loops."""

from __future__ import annotations

import dataclasses

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    """Static shape and stopping settings of one compiled decode loop."""

    max_new_tokens: int
    eos_ids: tuple[int, ...] = ()
    vocab_size: int | None = None  # ids >= vocab_size (embedding padding) are never sampled

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
