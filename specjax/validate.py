"""Checks at the boundary of the public API (`Sampler`, `generate`, the CLI): a bad value is refused
up front with a `ConfigError` that names the argument, what it must be, and what it got.

Integers are Python or numpy integers (bools and floats are refused, not truncated); floats are
real, finite numbers; prompts are a string, a list of token ids, a list of those, or a 2-D integer
array. Seeds are integers in [0, 2**32): JAX keys hold 32 bits, so larger seeds would silently
coincide with smaller ones.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from specjax.errors import ConfigError

SEED_LIMIT = 2**32


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}..." if len(text) > 60 else text


def integer(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """`value` as an int: a Python or numpy integer (not a bool, not a float) within [low, high]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {_describe(value)} ({type(value).__name__})")
    value = int(value)
    if low is not None and value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be <= {high}, got {value}")
    return value


def real(name: str, value: Any) -> float:
    """`value` as a float: a finite Python or numpy real number (not a bool, not a string)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {_describe(value)} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value}")
    return value


def seed(name: str, value: Any) -> int:
    return integer(name, value, low=0, high=SEED_LIMIT - 1)


def token_ids(where: str, ids: Any, vocab_size: int | None = None) -> list[int]:
    """A list of integer token ids (numpy integers accepted; floats, bools and bytes refused)."""
    if isinstance(ids, (bytes, bytearray, str)):
        raise ConfigError(f"{where} must be text or a list of integer token ids, got {type(ids).__name__}")
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ConfigError(f"{where} must be a 1-D integer array of token ids, got {ids.ndim}-D {ids.dtype}")
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)):
        raise ConfigError(f"{where} must be text or a list of integer token ids, got {type(ids).__name__}")
    out = []
    for j, t in enumerate(ids):
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise ConfigError(f"{where}: token {j} must be an integer id, got {_describe(t)} ({type(t).__name__})")
        t = int(t)
        if t < 0 or (vocab_size is not None and t >= vocab_size):
            bound = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
            raise ConfigError(f"{where}: token {j} is {t}, outside {bound}")
        out.append(t)
    return out


def prompts(value: Any) -> list:
    """Normalise the accepted prompt shapes to a list of prompts, each a str or a list of ints:
    one string, one list of ids, a list (or tuple) of strings / id lists, or a 2-D integer array."""
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.integer) or value.ndim not in (1, 2):
            raise ConfigError(f"prompts as an array must be 1-D or 2-D integer token ids, got {value.ndim}-D "
                              f"{value.dtype}")
        value = value.tolist() if value.ndim == 2 else [value.tolist()]
    if isinstance(value, str):
        return [value]
    if isinstance(value, (bytes, bytearray)):
        raise ConfigError("prompts must be text (str) or token ids, got bytes; decode it first")
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"prompts must be a string, a list of token ids, a list of those, or a 2-D integer "
                          f"array, got {type(value).__name__}")
    if not value:
        raise ConfigError("prompts is empty")
    if all(isinstance(t, (int, np.integer)) and not isinstance(t, (bool, np.bool_)) for t in value):
        return [list(value)]
    out = []
    for i, p in enumerate(value):
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, (list, tuple, np.ndarray)):
            out.append(token_ids(f"prompt {i}", p))
        else:
            raise ConfigError(f"prompt {i} must be a string or a list of integer token ids, got "
                              f"{_describe(p)} ({type(p).__name__})")
    return out


def text(where: str, value: str) -> str:
    """A prompt string that can be encoded (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ConfigError(f"{where} is not valid Unicode text (character {err.start} is a lone surrogate "
                          f"{value[err.start]!r})") from None
    return value
