"""specjax.models: Flax NNX model families and their HF -> Flax converters.

Checkpoint readers live in `sources`, the conversion in `convert`, saved converted models in
`store`, built-in model names in `hub`.

    from specjax.models import load
    model = load("smollm2-135m-instruct")        # or an HF dir, a .gguf file, a transformers model
"""

from .convert import FAMILIES, LoadedModel, family_for, load, truncate
from .hub import BUILTIN
from .store import load_converted, save
from .tokenizer import Tokenizer
from .transformer import RopeConfig, Transformer, TransformerConfig

__all__ = [
    "BUILTIN", "FAMILIES", "LoadedModel", "RopeConfig", "Tokenizer", "Transformer", "TransformerConfig",
    "family_for", "load", "load_converted", "save", "truncate",
]
