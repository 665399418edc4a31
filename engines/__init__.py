"""Engine formats behind one interface (see ``base.Engine``)."""
from .base import COMPONENT_IO, Engine

__all__ = ["COMPONENT_IO", "Engine"]
