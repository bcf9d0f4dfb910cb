"""Draft strategies behind one interface (see `base`): a draft model, layer skip, prompt lookup."""

from .base import Drafter, draw
from .layerskip import SharedCacheLayerSkip, layer_skip, parse_layers
from .model import ModelDrafter
from .ngram import NGramDrafter

__all__ = ["Drafter", "ModelDrafter", "NGramDrafter", "SharedCacheLayerSkip", "draw", "layer_skip", "parse_layers"]
