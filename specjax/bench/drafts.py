"""Draft models for the bench: the `load_model` callback that `specjax.drafters.registry` calls for
the NAME of a `model:NAME` drafter string.

NAME is what `specjax.models.load` takes (a built-in name, HF dir, .gguf or converted dir), or the
bench-only form `truncate:K`: a copy of the target's first K blocks with its final norm and head, a
same-tokenizer draft model that transformers can use as its assistant model too.
"""

from __future__ import annotations

from typing import Any

from specjax.drafters import registry
from specjax.errors import ConfigError

TRUNCATE = "truncate:"


def truncated_layers(spec: registry.DrafterSpec) -> int | None:
    """K of a `model:truncate:K` spec; None for any other drafter."""
    if spec.kind != "model" or not spec.name.startswith(TRUNCATE):
        return None
    text = spec.name[len(TRUNCATE):]
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"drafter {spec.text!r}: expected model:truncate:K with an integer K >= 1")
    return int(text)


class DraftModels:
    """`load_model(name)` for one target: each draft model is loaded (or truncated) once and reused."""

    def __init__(self, target, dtype: str | None = None):
        self.target, self.dtype = target, dtype
        self.loaded: dict[str, Any] = {}

    def __call__(self, name: str):
        if name not in self.loaded:
            from specjax.models import load, truncate

            layers = truncated_layers(registry.parse(f"model:{name}"))
            if layers is not None:
                self.loaded[name] = truncate(self.target, layers)
            else:
                self.loaded[name] = load(name, dtype=self.dtype, progress=False)
        return self.loaded[name]
