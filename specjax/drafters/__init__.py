"""Draft strategies behind one interface (see `base.Drafter`)."""

from .base import Drafter, draw
from .model import ModelDrafter

__all__ = ["Drafter", "ModelDrafter", "draw"]
