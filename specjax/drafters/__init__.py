"""Draft strategies behind one interface (see `base`): a draft model, layer skip, prompt lookup;
`registry` parses drafter strings."""

from .base import Drafter, Observation, Stateless, TargetPrefill, draw
from .layerskip import SharedCacheLayerSkip, layer_skip, parse_layers
from .model import ModelDrafter
from .ngram import NGramDrafter
from .registry import DrafterSpec, Resolved, parse, resolve

__all__ = ["Drafter", "DrafterSpec", "ModelDrafter", "NGramDrafter", "Observation", "Resolved",
           "SharedCacheLayerSkip", "Stateless", "TargetPrefill", "draw", "layer_skip", "parse", "parse_layers",
           "resolve"]
