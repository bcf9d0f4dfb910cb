"""Typed errors. Every message names the thing that is wrong (a key, a file, an argument)."""

from __future__ import annotations


class SpecJaxError(Exception):
    """Base class of every error specjax raises on purpose."""


class ConfigError(SpecJaxError, ValueError):
    """An argument or setting is outside its allowed range."""


class ConversionError(SpecJaxError, ValueError):
    """A checkpoint cannot be turned into a specjax model."""


class UnknownArchitectureError(ConversionError):
    """The checkpoint's architecture / model_type has no model family in specjax."""


class MissingWeightError(ConversionError):
    """A weight the model needs is absent from the checkpoint."""

    def __init__(self, key: str, origin: str):
        self.key, self.origin = key, origin
        super().__init__(f"missing weight {key!r} in {origin}")


class UnexpectedWeightError(ConversionError):
    """The checkpoint holds weights the model has no place for."""

    def __init__(self, keys: list[str], origin: str):
        self.keys, self.origin = list(keys), origin
        shown = ", ".join(repr(k) for k in self.keys[:8])
        more = f" (and {len(self.keys) - 8} more)" if len(self.keys) > 8 else ""
        super().__init__(f"unexpected weight(s) {shown}{more} in {origin}")


class WeightShapeError(ConversionError):
    """A weight has a different shape than the config implies."""

    def __init__(self, key: str, expected: tuple, got: tuple, origin: str):
        self.key, self.expected, self.got, self.origin = key, tuple(expected), tuple(got), origin
        super().__init__(
            f"weight {key!r} in {origin} has shape {self.got}, expected {self.expected} from the config"
        )


class UnsupportedGGUFTypeError(ConversionError):
    """A GGUF tensor uses a quantization type specjax does not dequantize."""

    def __init__(self, tensor: str, qtype: str, origin: str, supported: list[str]):
        self.tensor, self.qtype, self.origin = tensor, qtype, origin
        super().__init__(
            f"GGUF tensor {tensor!r} in {origin} has unsupported type {qtype}; "
            f"supported types: {', '.join(supported)}"
        )


class CorruptFileError(ConversionError):
    """A weight file is truncated or not in the format its name says."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        super().__init__(f"cannot read {self.path}: {reason}")


class ModelNotFoundError(SpecJaxError, LookupError):
    """A model name or path resolves to nothing."""


class IncompatibleDraftError(ConfigError):
    """A draft model whose vocabulary does not match the target's."""
