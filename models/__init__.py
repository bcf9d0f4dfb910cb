"""specjax.models: Flax NNX model families and their HF -> Flax converters.

Checkpoint readers live in `sources`, the conversion in `convert`, saved converted models in
`store`, built-in model names in `hub`.

    from specjax.models import load
    model = load("smollm2-135m-instruct")        # or an HF dir, a .gguf file, a transformers model
    head = load_eagle("path/to/eagle3-head")      # an EAGLE-3 draft head in the community layout
"""

from .eagle3 import BUILTIN_HEADS, Eagle3Config, Eagle3Head, head_config_for, head_path, load_eagle, random_head, save_eagle
from .convert import FAMILIES, LoadedModel, family_for, load, truncate
from .hub import BUILTIN
from .store import load_converted, save
from .tokenizer import Tokenizer
from .transformer import RopeConfig, Transformer, TransformerConfig

__all__ = [
    "BUILTIN", "BUILTIN_HEADS", "Eagle3Config", "Eagle3Head", "FAMILIES", "LoadedModel", "RopeConfig", "Tokenizer", "Transformer", "TransformerConfig",
    "family_for", "head_config_for", "head_path", "load", "load_converted", "load_eagle", "random_head", "save", "save_eagle",
    "truncate",
]
